"""Corrupt PARA adapter directories, generated from one good adapter.

    cases = generate_corruptions(good_dir, out_dir)      # >= 200, deterministic
    for case in cases:                                   # each a path under out_dir
        with pytest.raises(PARAConfigError) as e:        # PARAAdapterError when case.error says so
            load_adapter(case.path, base_shape=shape)
        assert case.expect in str(e.value).lower()

    good = generate_valid_variants(good_dir, out_dir)    # must still load

Every case is a path you can hand to anything that loads adapters (the
loader, `--para-modules`, `POST /v1/load_para_adapter`): usually a directory
holding a broken `para_config.json` / `adapter_model.safetensors`; a few are a
missing path or a plain file instead of a directory. Some cases hold symlinks
(pointing outside the case directory, dangling, or looping): copy cases with
`shutil.copytree(src, dst, symlinks=True)` or pass them in place.

Used by tests/test_adapter_fuzz.py (the loader) and by runtime-load HTTP tests.
No vLLM import; needs torch and safetensors only.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

CONFIG_FILE = "para_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

INT_FIELDS = ("num_hidden_layers", "hidden_size", "q_size", "kv_size", "intermediate_size", "r")
SHAPE_FIELDS = INT_FIELDS[:-1]
KINDS = {"down": "vg.down.weight", "up": "vg.up.weight", "bias": "vg.up.bias"}
DEFAULTS = {"r": 12, "targets": ["q", "v", "u"], "pooling": "last", "activation": "gelu", "peft_type": "PARA"}
ONE_MB = 1 << 20
DELETE = object()


@dataclass(frozen=True)
class Corruption:
    """One corrupt adapter.

    name: unique, filesystem-safe; path: out_dir/name (a directory, except the
    few cases about the directory itself); expect: a lowercase substring the
    loader's error message must contain; error: "config" when the config is at
    fault (`PARAConfigError` is enough), "adapter" when the loader must raise
    `PARAAdapterError` (weights, tensors, the directory itself)."""

    name: str
    path: Path
    expect: str
    error: str = "config"


@dataclass(frozen=True)
class ValidVariant:
    """An adapter directory that differs from the good one only in ways the
    loader must accept (other float dtypes, in-directory symlinks, formatting)."""

    name: str
    path: Path


class _Builder:
    def __init__(self, good_dir: Path, out_dir: Path, seed: int):
        self.good = Path(good_dir)
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.config: dict[str, Any] = json.loads((self.good / CONFIG_FILE).read_text())
        self.tensors: dict[str, torch.Tensor] = load_file(str(self.good / WEIGHTS_FILE))
        self.weights_bytes = (self.good / WEIGHTS_FILE).read_bytes()
        self.layers = int(self.config["num_hidden_layers"])
        self.cases: list[Corruption] = []
        # Files outside every case directory, for symlinks to point at.
        self.outside = self.out / "_outside"
        if self.outside.exists():
            shutil.rmtree(self.outside)
        self.outside.mkdir()
        shutil.copy(self.good / CONFIG_FILE, self.outside / CONFIG_FILE)
        shutil.copy(self.good / WEIGHTS_FILE, self.outside / WEIGHTS_FILE)

    # ------------------------------------------------------------ helpers
    def path(self, name: str) -> Path:
        if any(c.name == name for c in self.cases):
            raise AssertionError(f"duplicate corruption name {name!r}")
        p = self.out / name
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.exists():
            shutil.rmtree(p)
        return p

    def add(self, name: str, path: Path, expect: str, error: str = "config") -> None:
        assert expect == expect.lower(), expect
        self.cases.append(Corruption(name, path, expect, error))

    def clone(self, name: str) -> Path:
        d = self.path(name)
        shutil.copytree(self.good, d, symlinks=True)
        return d

    def config_text(self, name: str, text: str | bytes, expect: str) -> None:
        d = self.clone(name)
        target = d / CONFIG_FILE
        if isinstance(text, str):
            target.write_text(text, encoding="utf-8", errors="surrogatepass")
        else:
            target.write_bytes(text)
        self.add(name, d, expect)

    def config_obj(self, name: str, obj: Any, expect: str, error: str = "config") -> None:
        d = self.clone(name)
        (d / CONFIG_FILE).write_text(json.dumps(obj), encoding="utf-8", errors="surrogatepass")
        self.add(name, d, expect, error)

    def config_edit(self, name: str, expect: str, error: str = "config", **changes: Any) -> None:
        cfg = dict(self.config)
        for key, value in changes.items():
            if value is DELETE:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        self.config_obj(name, cfg, expect, error)

    def weights_bytes_case(self, name: str, data: bytes, expect: str = "safetensors") -> None:
        d = self.clone(name)
        (d / WEIGHTS_FILE).write_bytes(data)
        self.add(name, d, expect, "adapter")

    def tensors_case(self, name: str, edit: Callable[[dict[str, torch.Tensor]], None], expect: str) -> None:
        tensors = {k: v.clone() for k, v in self.tensors.items()}
        edit(tensors)
        d = self.clone(name)
        save_file(tensors, str(d / WEIGHTS_FILE))
        self.add(name, d, expect, "adapter")

    def header(self, header: Any, data: bytes = b"", length: int | None = None) -> bytes:
        raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
        return struct.pack("<Q", len(raw) if length is None else length) + raw + data

    @staticmethod
    def tname(layer: int, kind: str) -> str:
        return f"layers.{layer}.{KINDS[kind]}"

    # ------------------------------------------------------------- config
    def config_fields(self) -> None:
        bad_values: list[tuple[str, Any]] = [
            ("str_number", "12"),
            ("str_garbage", "abc"),
            ("empty_str", ""),
            ("unicode", "\u5341\u4e8c"),
            ("float_fraction", 12.5),
            ("true", True),
            ("false", False),
            ("negative", -1),
            ("very_negative", -(10**12)),
            ("zero", 0),
            ("huge", 10**12),
            ("huge_1e30", 10**30),
            ("null", None),
            ("list", [12]),
            ("object", {"value": 12}),
            ("nan", float("nan")),
            ("inf", float("inf")),
        ]
        for field in INT_FIELDS:
            good = self.config.get(field, DEFAULTS.get(field))
            for label, value in bad_values:
                self.config_edit(f"cfg_{field}_{label}", f"{field}:", **{field: value})
            self.config_edit(f"cfg_{field}_float_integral", f"{field}:", **{field: float(good)})
            # an int with more digits than Python parses from text
            text = json.dumps({**self.config, field: 0}).replace(f'"{field}": 0', f'"{field}": 1{"0" * 5000}')
            self.config_text(f"cfg_{field}_5000_digits", text, "json")
            if field == "r":
                # a valid rank that is not the weights' rank
                self.config_edit("cfg_r_mismatch", "shape", "adapter", r=good + 1)
                self.config_edit("cfg_r_max", "shape", "adapter", r=4096)
                self.config_edit("cfg_r_over_max", "r:", r=4097)
                if good != DEFAULTS["r"]:
                    self.config_edit("cfg_r_missing", "shape", "adapter", r=DELETE)
            else:
                self.config_edit(f"cfg_{field}_missing", f"{field}:", **{field: DELETE})
                # a valid size that is not the base model's
                self.config_edit(f"cfg_{field}_mismatch", f"{field}={good + 1}", **{field: good + 1})
                if good != 1:
                    self.config_edit(f"cfg_{field}_mismatch_small", f"{field}=1", **{field: 1})

    def config_strings(self) -> None:
        targets = list(self.config.get("targets", DEFAULTS["targets"]))
        for label, value in [
            ("empty", []),
            ("duplicate", targets + targets[:1]),
            ("unknown", ["q", "x"]),
            ("unknown_o", ["o"]),
            ("uppercase", [t.upper() for t in targets]),
            ("string", "".join(targets)),
            ("int", 3),
            ("null", None),
            ("nested", [targets]),
            ("ints", [1, 2]),
            ("object", {t: 1 for t in targets}),
            ("unicode", ["\u0071\u0301"]),
            ("all_plus_dup", ["q", "k", "v", "g", "u", "u"]),
            ("bool", [True]),
            ("long_list", ["q"] * 1000),
        ]:
            self.config_edit(f"cfg_targets_{label}", "targets", targets=value)
        others = [t for t in ("q", "k", "v", "g", "u") if t not in targets]
        if others:  # a valid target list the weights were not trained for
            self.config_edit("cfg_targets_other", "shape", "adapter", targets=targets + others[:1])
        if len(targets) > 1:
            self.config_edit("cfg_targets_fewer", "shape", "adapter", targets=targets[:-1])
        if sorted(targets) != sorted(DEFAULTS["targets"]):
            self.config_edit("cfg_targets_missing", "shape", "adapter", targets=DELETE)

        for label, value in [("max", "max"), ("empty", ""), ("int", 1), ("null", None), ("upper", "LAST"),
                             ("list", ["last"]), ("unicode", "l\u0101st"), ("cls", "cls")]:
            self.config_edit(f"cfg_pooling_{label}", "pooling", pooling=value)
        for label, value in [("relu", "relu"), ("upper", "GELU"), ("null", None), ("int", 3), ("tanh", "gelu_tanh")]:
            self.config_edit(f"cfg_activation_{label}", "activation", activation=value)
        for label, value in [("lora", "LORA"), ("lower", "para"), ("empty", ""), ("null", None), ("int", 1)]:
            self.config_edit(f"cfg_peft_type_{label}", "peft_type", peft_type=value)
        for label, value in [("missing", DELETE), ("int", 123), ("null", None), ("list", ["x"]), ("object", {}),
                             ("bool", True), ("5000_chars", "m" * 5000)]:
            self.config_edit(f"cfg_base_model_{label}", "base_model_name_or_path", base_model_name_or_path=value)

    def config_extra_keys(self) -> None:
        for label, key, value in [
            ("lora_alpha", "lora_alpha", 16),
            ("empty_key", "", 1),
            ("unicode_key", "\u00fcber", 1),
            ("control_key", "a\x00b\x1b[31m", 1),
            ("long_key", "k" * 300, 1),
            ("nested_value", "extra", {"a": [{"b": [1, 2, {"c": None}]}]}),
            ("deep_value_200", "extra", json.loads("[" * 200 + "]" * 200)),
            ("null_value", "rank", None),
        ]:
            self.config_edit(f"cfg_extra_{label}", "extra inputs", **{key: value})

    def config_surrogates(self) -> None:
        # JSON "\ud800" escapes decode to lone surrogates, which no UTF-8 consumer can print
        self.config_edit("cfg_surrogate_key", "surrogate", **{"\ud800": 1})
        self.config_edit("cfg_surrogate_base_model", "surrogate", base_model_name_or_path="tiny\udc80")
        self.config_edit("cfg_surrogate_target", "surrogate", targets=["\udfff"])

    def config_files(self) -> None:
        good_text = json.dumps(self.config)
        for label, data, expect in [
            ("empty", b"", "json"),
            ("whitespace", b"  \n\t \n", "json"),
            ("text", b"this is not json", "json"),
            ("truncated", good_text[: len(good_text) // 2].encode(), "json"),
            ("trailing_garbage", (good_text + " trailing").encode(), "json"),
            ("two_objects", (good_text + good_text).encode(), "json"),
            ("single_quotes", good_text.replace('"', "'").encode(), "json"),
            ("comment", ("// comment\n" + good_text).encode(), "json"),
            ("nul_bytes", b"\x00" * 64, "json"),
            ("invalid_utf8", b'{"r": "\xff\xfe\xfd"}', "json"),
            ("latin1", good_text.replace("PARA", "P\u00c4RA").encode("latin-1"), "json"),
            ("utf16", good_text.encode("utf-16"), "json"),
            ("utf8_encoded_surrogate", good_text.replace("PARA", "PARA\ud800").encode("utf-8", "surrogatepass"),
             "json"),
            ("utf8_bom", b"\xef\xbb\xbf" + good_text.encode(), "json"),
            ("random_bytes", bytes(self.rng.randrange(256) for _ in range(512)), "json"),
            ("deep_array_30000", b"[" * 30000 + b"]" * 30000, "json"),
            ("deep_object_10000", b'{"a":' * 10000 + b"1" + b"}" * 10000, "json"),
            ("deep_unclosed", b"[" * 60000, "json"),
            ("over_1mb_padding", good_text.encode() + b" " * ONE_MB, "too large"),
            ("huge_10mb", b"[" + b"0," * (5 * ONE_MB) + b"0]", "too large"),
        ]:
            self.config_text(f"cfg_file_{label}", data, expect)
        for label, obj in [("list", [self.config]), ("null", None), ("string", "PARA"), ("number", 12),
                           ("true", True), ("empty_list", [])]:
            self.config_obj(f"cfg_file_json_{label}", obj, "object")
        self.config_obj("cfg_file_empty_object", {}, "base_model_name_or_path")
        # a later duplicate key wins in JSON parsers
        dup = good_text[:-1] + ', "r": 999999}'
        self.config_text("cfg_file_duplicate_key", dup, "r:")
        for label, field in [("base_model", "base_model_name_or_path"), ("pooling", "pooling"),
                             ("extra", "notes"), ("targets_item", "targets")]:
            value = "x" * ONE_MB if field != "targets" else ["x" * ONE_MB]
            self.config_edit(f"cfg_file_1mb_{label}", "too large", **{field: value})

        d = self.clone("cfg_missing")
        (d / CONFIG_FILE).unlink()
        self.add("cfg_missing", d, "missing")
        d = self.clone("cfg_is_directory")
        (d / CONFIG_FILE).unlink()
        (d / CONFIG_FILE).mkdir()
        self.add("cfg_is_directory", d, "directory")
        d = self.clone("cfg_wrong_name")
        (d / CONFIG_FILE).rename(d / "adapter_config.json")
        self.add("cfg_wrong_name", d, "missing")

    # ------------------------------------------------------------ symlinks
    def symlinks(self) -> None:
        for fname, short, error in [(CONFIG_FILE, "cfg", "config"), (WEIGHTS_FILE, "weights", "adapter")]:
            name = f"{short}_symlink_outside"
            d = self.clone(name)
            (d / fname).unlink()
            (d / fname).symlink_to((self.outside / fname).resolve())
            self.add(name, d, "symlink", error)

            name = f"{short}_symlink_outside_relative"
            d = self.clone(name)
            (d / fname).unlink()
            (d / fname).symlink_to(Path("..") / self.outside.name / fname)
            self.add(name, d, "symlink", error)

            name = f"{short}_symlink_dotdot_escape"  # into the dir, then out again
            d = self.clone(name)
            (d / fname).unlink()
            (d / fname).symlink_to(Path(".") / ".." / self.outside.name / fname)
            self.add(name, d, "symlink", error)

            name = f"{short}_symlink_dangling_outside"
            d = self.clone(name)
            (d / fname).unlink()
            (d / fname).symlink_to(self.outside.resolve() / "does-not-exist")
            self.add(name, d, "symlink", error)

            name = f"{short}_symlink_dangling_inside"
            d = self.clone(name)
            (d / fname).unlink()
            (d / fname).symlink_to("does-not-exist")
            self.add(name, d, "symlink", error)

            name = f"{short}_symlink_loop"
            d = self.clone(name)
            (d / fname).unlink()
            (d / fname).symlink_to(fname)
            self.add(name, d, "symlink", error)

            name = f"{short}_symlink_to_parent"
            d = self.clone(name)
            (d / fname).unlink()
            (d / fname).symlink_to("..")
            self.add(name, d, "symlink", error)

            name = f"{short}_symlink_to_self_dir"
            d = self.clone(name)
            (d / fname).unlink()
            (d / fname).symlink_to(".")
            self.add(name, d, "directory", error)

            name = f"{short}_symlinked_subdir_outside"  # a file reached through a symlinked subdirectory
            d = self.clone(name)
            (d / fname).unlink()
            (d / "sub").symlink_to(self.outside.resolve())
            (d / fname).symlink_to(Path("sub") / fname)
            self.add(name, d, "symlink", error)

    # ------------------------------------------------------------- weights
    def weights_files(self) -> None:
        d = self.clone("weights_missing")
        (d / WEIGHTS_FILE).unlink()
        self.add("weights_missing", d, "missing", "adapter")

        d = self.clone("weights_is_directory")
        (d / WEIGHTS_FILE).unlink()
        (d / WEIGHTS_FILE).mkdir()
        self.add("weights_is_directory", d, "directory", "adapter")

        for suffix in ("bin", "pt"):
            name = f"weights_pickle_{suffix}_instead"
            d = self.clone(name)
            (d / WEIGHTS_FILE).unlink()
            torch.save(self.tensors, d / f"adapter_model.{suffix}")
            self.add(name, d, "pickle", "adapter")
        d = self.clone("weights_pickle_renamed")
        (d / WEIGHTS_FILE).unlink()
        torch.save(self.tensors, d / WEIGHTS_FILE)
        self.add("weights_pickle_renamed", d, "safetensors", "adapter")

        d = self.clone("weights_wrong_name")
        (d / WEIGHTS_FILE).rename(d / "model.safetensors")
        self.add("weights_wrong_name", d, "missing", "adapter")

        for label, data in [
            ("empty", b""),
            ("one_byte", b"\x00"),
            ("seven_bytes", b"\x01" * 7),
            ("zero_header", struct.pack("<Q", 0)),
            ("text", b"this is not a safetensors file at all"),
            ("random_1k", bytes(self.rng.randrange(256) for _ in range(1024))),
            ("all_ff", b"\xff" * 4096),
            ("pickle_bytes", b"\x80\x04\x95" + bytes(64)),
            ("zip_magic", b"PK\x03\x04" + bytes(128)),
            ("gguf_magic", b"GGUF" + bytes(128)),
            ("trailing_garbage", self.weights_bytes + b"garbage"),
            ("doubled", self.weights_bytes * 2),
        ]:
            self.weights_bytes_case(f"weights_bytes_{label}", data)

    def safetensors_headers(self) -> None:
        name0 = self.tname(0, "bias")
        size = int(self.tensors[name0].numel())
        body = bytes(4 * size)
        ok = {name0: {"dtype": "F32", "shape": [size], "data_offsets": [0, 4 * size]}}
        for label, length in [("u64_max", 2**64 - 1), ("2e63", 2**63), ("1e9", 10**9), ("100mb_plus", 100 * ONE_MB + 1),
                              ("past_end", 4096)]:
            self.weights_bytes_case(f"st_header_len_{label}", self.header(ok, body, length=length))
        self.weights_bytes_case("st_header_len_short", self.header(ok, body, length=10))
        for label, hdr in [
            ("huge_shape", {name0: {"dtype": "F32", "shape": [10**12, 10**12], "data_offsets": [0, 4 * size]}}),
            ("overflow_shape", {name0: {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 16]}}),
            ("huge_offsets", {name0: {"dtype": "F32", "shape": [size], "data_offsets": [0, 10**15]}}),
            ("u64_max_offsets", {name0: {"dtype": "F32", "shape": [size], "data_offsets": [2**64 - 16, 2**64 - 1]}}),
            ("offsets_past_file", {name0: {"dtype": "F32", "shape": [size * 4], "data_offsets": [0, 16 * size]}}),
            ("reversed_offsets", {name0: {"dtype": "F32", "shape": [size], "data_offsets": [4 * size, 0]}}),
            ("negative_offsets", {name0: {"dtype": "F32", "shape": [size], "data_offsets": [-4, 4 * size - 4]}}),
            ("negative_shape", {name0: {"dtype": "F32", "shape": [-size], "data_offsets": [0, 4 * size]}}),
            ("float_shape", {name0: {"dtype": "F32", "shape": [size + 0.5], "data_offsets": [0, 4 * size]}}),
            ("unknown_dtype", {name0: {"dtype": "Q9", "shape": [size], "data_offsets": [0, 4 * size]}}),
            ("dtype_null", {name0: {"dtype": None, "shape": [size], "data_offsets": [0, 4 * size]}}),
            ("missing_offsets", {name0: {"dtype": "F32", "shape": [size]}}),
            ("metadata_not_str", {"__metadata__": {"format": 1}, **ok}),
            ("metadata_list", {"__metadata__": ["pt"], **ok}),
            ("header_list", [ok]),
            ("header_string", "PARA"),
            ("tensor_not_object", {name0: [0, 1, 2]}),
            ("size_mismatch", {name0: {"dtype": "F32", "shape": [size + 1], "data_offsets": [0, 4 * size]}}),
        ]:
            self.weights_bytes_case(f"st_header_{label}", self.header(hdr, body))
        raw = json.dumps(ok).encode()
        self.weights_bytes_case("st_header_not_json", self.header(b"{" + raw[1:-1] + b",,}", body))
        self.weights_bytes_case("st_header_not_utf8", self.header(b'{"\xff\xfe": 1}' + b" " * 8, body))
        self.weights_bytes_case("st_header_nested_10000", self.header(b"[" * 10000 + b"]" * 10000, body))

    def truncations(self) -> None:
        data = self.weights_bytes
        header_end = 8 + struct.unpack("<Q", data[:8])[0]
        offsets = {0, 1, 4, 7, 8, 9, 16, header_end // 2, header_end - 2, header_end - 1, header_end,
                   header_end + 1, header_end + 4, (header_end + len(data)) // 2, len(data) - 4, len(data) - 1}
        while len(offsets) < min(40, len(data) - 1):
            offsets.add(self.rng.randrange(1, len(data)))
        for off in sorted(o for o in offsets if 0 <= o < len(data)):
            self.weights_bytes_case(f"st_truncated_at_{off}", data[:off])

    # ------------------------------------------------------------- tensors
    def tensor_names(self) -> None:
        last = self.layers - 1
        for kind in KINDS:
            for layer in sorted({0, last}):
                n = self.tname(layer, kind)
                self.tensors_case(f"tn_missing_{kind}_l{layer}", lambda t, n=n: t.pop(n), "missing tensor")
        self.tensors_case("tn_all_missing", lambda t: t.clear(), "missing tensor")
        extra = self.tensors[self.tname(0, "down")]
        for label, new in [
            ("extra_layer", self.tname(self.layers, "down")),
            ("extra_lm_head", "lm_head.weight"),
            ("extra_unicode", "layers.0.vg.d\u00f6wn.weight"),
            ("extra_long_name", "x" * 10000),
            ("extra_lora", "layers.0.lora_A.weight"),
        ]:
            self.tensors_case(f"tn_{label}", lambda t, new=new: t.__setitem__(new, extra.clone()), "unexpected tensor")

        def rename(fn: Callable[[str], str]) -> Callable[[dict[str, torch.Tensor]], None]:
            def edit(t: dict[str, torch.Tensor]) -> None:
                items = list(t.items())
                t.clear()
                t.update({fn(k): v for k, v in items})
            return edit

        self.tensors_case("tn_prefixed", rename(lambda k: "base_model.model." + k), "missing tensor")
        self.tensors_case("tn_kind_typo", rename(lambda k: k.replace("down.weight", "down.weights")), "missing tensor")
        self.tensors_case("tn_zero_padded_index", rename(lambda k: k.replace("layers.0.", "layers.00.")),
                          "missing tensor")

        def shift(k: str) -> str:
            _, i, rest = k.split(".", 2)
            return f"layers.{int(i) + 1}.{rest}"

        self.tensors_case("tn_layers_shifted", rename(shift), "missing tensor")

        def swap_down_up(t: dict[str, torch.Tensor]) -> None:  # right names, tensors of the other kind
            t[self.tname(0, "down")], t[self.tname(0, "up")] = t[self.tname(0, "up")], t[self.tname(0, "down")]
        self.tensors_case("tn_down_up_swapped", swap_down_up, "shape")

    def shapes(self) -> None:
        last = self.layers - 1
        for kind in KINDS:
            for layer in sorted({0, last}):
                n = self.tname(layer, kind)
                shape = tuple(self.tensors[n].shape)
                variants: list[tuple[str, tuple[int, ...]]] = []
                for dim in range(len(shape)):
                    variants.append((f"dim{dim}_plus1", shape[:dim] + (shape[dim] + 1,) + shape[dim + 1:]))
                    variants.append((f"dim{dim}_minus1", shape[:dim] + (shape[dim] - 1,) + shape[dim + 1:]))
                    variants.append((f"dim{dim}_zero", shape[:dim] + (0,) + shape[dim + 1:]))
                if len(shape) == 2:
                    variants.append(("transposed", shape[::-1]))
                    variants.append(("flattened", (shape[0] * shape[1],)))
                variants.append(("extra_leading_dim", (1,) + shape))
                variants.append(("extra_trailing_dim", shape + (1,)))
                variants.append(("scalar", ()))
                for label, new in variants:
                    self.tensors_case(f"shape_{kind}_l{layer}_{label}",
                                      lambda t, n=n, new=new: t.__setitem__(n, torch.ones(new)), "shape")
        self.tensors_case("shape_down_all_layers_wrong",
                          lambda t: t.update({self.tname(i, "down"): torch.ones(1, 1) for i in range(self.layers)}),
                          "shape")

    def dtypes(self) -> None:
        for kind in KINDS:
            n = self.tname(0, kind)
            for dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool, torch.float64):
                label = str(dtype).removeprefix("torch.")
                self.tensors_case(f"dtype_{kind}_{label}",
                                  lambda t, n=n, dtype=dtype: t.__setitem__(n, t[n].to(dtype)), "dtype")

    def non_finite(self) -> None:
        last = self.layers - 1
        for kind in KINDS:
            n = self.tname(last, kind)
            for label, value in [("nan", float("nan")), ("inf", float("inf")), ("neg_inf", float("-inf"))]:
                def edit(t, n=n, value=value):
                    flat = t[n].view(-1)
                    flat[self.rng.randrange(flat.numel())] = value
                self.tensors_case(f"nonfinite_{kind}_{label}", edit, "nan")
        for dtype in (torch.float16, torch.bfloat16):
            n = self.tname(0, "up")
            label = str(dtype).removeprefix("torch.")

            def edit(t, n=n, dtype=dtype):
                t.update({k: v.to(dtype) for k, v in t.items()})
                t[n].view(-1)[0] = float("nan")
            self.tensors_case(f"nonfinite_up_{label}_nan", edit, "nan")
            n = self.tname(0, "down")

            def overflow(t, n=n, dtype=dtype):  # finite in float64, inf once stored in 16 bits
                big = t[n].double()
                big.view(-1)[1] = 1e39 if dtype == torch.bfloat16 else 1e6
                t[n] = big.to(dtype)
            self.tensors_case(f"nonfinite_down_{label}_overflow", overflow, "nan")
        self.tensors_case("nonfinite_all_nan",
                          lambda t: t.update({k: torch.full_like(v, float("nan")) for k, v in t.items()}), "nan")

    # ----------------------------------------------------------- directory
    def directories(self) -> None:
        p = self.path("dir_missing")
        self.add("dir_missing", p, "not a directory", "adapter")
        p = self.path("dir_is_file")
        p.write_bytes(self.weights_bytes)
        self.add("dir_is_file", p, "not a directory", "adapter")
        p = self.path("dir_is_config_file")
        shutil.copy(self.good / CONFIG_FILE, p)
        self.add("dir_is_config_file", p, "not a directory", "adapter")
        p = self.path("dir_dangling_symlink")
        p.symlink_to(self.out.resolve() / "no-such-adapter")
        self.add("dir_dangling_symlink", p, "not a directory", "adapter")
        p = self.path("dir_symlink_loop")
        p.symlink_to("dir_symlink_loop")
        self.add("dir_symlink_loop", p, "not a directory", "adapter")
        p = self.path("dir_empty")
        p.mkdir()
        self.add("dir_empty", p, "missing")
        p = self.path("dir_nested_adapter")  # the adapter one level down
        p.mkdir()
        shutil.copytree(self.good, p / "adapter")
        self.add("dir_nested_adapter", p, "missing")


def generate_corruptions(good_dir: Path, out_dir: Path, seed: int = 0) -> list[Corruption]:
    """Write the corrupt variants of the adapter in `good_dir` under `out_dir`.

    Deterministic for a given good adapter and seed. `good_dir` must be a
    loadable adapter; `out_dir` is created (existing cases are overwritten)."""
    b = _Builder(Path(good_dir), Path(out_dir), seed)
    b.config_fields()
    b.config_strings()
    b.config_extra_keys()
    b.config_surrogates()
    b.config_files()
    b.symlinks()
    b.weights_files()
    b.safetensors_headers()
    b.truncations()
    b.tensor_names()
    b.shapes()
    b.dtypes()
    b.non_finite()
    b.directories()
    return b.cases


def generate_valid_variants(good_dir: Path, out_dir: Path) -> list[ValidVariant]:
    """Adapters that must still load: the good one copied, re-encoded, or
    reached through symlinks that stay inside the adapter directory."""
    good_dir, out_dir = Path(good_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(good_dir / WEIGHTS_FILE))
    config = json.loads((good_dir / CONFIG_FILE).read_text())
    variants: list[ValidVariant] = []

    def fresh(name: str) -> Path:
        d = out_dir / name
        if d.is_symlink() or d.is_file():
            d.unlink()
        elif d.exists():
            shutil.rmtree(d)
        shutil.copytree(good_dir, d, symlinks=True)
        variants.append(ValidVariant(name, d))
        return d

    fresh("good_copy")
    for dtype in (torch.float16, torch.bfloat16):
        d = fresh(f"good_{str(dtype).removeprefix('torch.')}")
        save_file({k: v.to(dtype) for k, v in tensors.items()}, str(d / WEIGHTS_FILE))
    d = fresh("good_compact_json_reordered")
    (d / CONFIG_FILE).write_text(json.dumps(dict(sorted(config.items())), separators=(",", ":")))
    d = fresh("good_pretty_json_trailing_newlines")
    (d / CONFIG_FILE).write_text(json.dumps(config, indent=8) + "\n\n\n")
    d = fresh("good_symlinks_inside")
    (d / "blobs").mkdir()
    for fname in (CONFIG_FILE, WEIGHTS_FILE):
        (d / fname).rename(d / "blobs" / fname)
        (d / fname).symlink_to(Path("blobs") / fname)
    d = fresh("good_with_stray_files")
    (d / "README.md").write_text("notes\n")
    (d / "adapter_model.bin").write_bytes(b"\x80\x04 ignored: the safetensors file is present")
    link = out_dir / "good_dir_symlink"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(good_dir.resolve(), target_is_directory=True)
    variants.append(ValidVariant("good_dir_symlink", link))
    return variants


@contextlib.contextmanager
def swapping_with_fifo(path: Path, scratch: Path, pause: float = 0.0):
    """While the block runs, a thread swaps `path` (a regular file) with a FIFO and back, by
    rename, over and over: a real race for loaders that check a file and then open it by name."""
    regular, spare_regular, spare_fifo = scratch / "regular.bin", scratch / "r2", scratch / "f2"
    shutil.copy(path, regular)
    shutil.copy(regular, spare_regular)
    os.mkfifo(spare_fifo)
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            os.replace(spare_fifo, path)  # a FIFO now
            os.mkfifo(spare_fifo)
            time.sleep(pause)
            os.replace(spare_regular, path)  # a regular file again
            shutil.copy(regular, spare_regular)
            time.sleep(pause)

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    try:
        yield
    finally:
        stop.set()
        swapper.join(5)
