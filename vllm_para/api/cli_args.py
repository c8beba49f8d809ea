"""PARA flags on vLLM's own command line (`vllm serve --help` lists them).

Runs in: the API server (`vllm serve` argument parsing).
"""

from __future__ import annotations

import argparse
import functools

from vllm_para.common.settings import (
    ADDITIONAL_CONFIG_KEY,
    PARASettingsError,
    parse_module_specs,
)

HELP = {
    "enable_para": "Serve PARA adapters (arXiv 2502.01033) on this base model. Requests select one by "
    "`model` name or `vllm_xargs: {\"para_adapter\": NAME}`.",
    "para_modules": "PARA adapters to load at start-up, as NAME=PATH pairs (PATH holds para_config.json and "
    "adapter_model.safetensors).",
    "max_para_adapters": "Device slots for adapters' vector-generator weights (LRU-swapped; more adapters "
    "than slots still works); 8 when unset.",
    "max_para_rank": "Largest VG rank r an adapter may have; 64 when unset.",
    "para_adapter_dir": "Directory of adapters loaded on first use: a request for model NAME loads DIR/NAME/ "
    "(validated like a start-up adapter; 404 if absent, 400 if invalid).",
    "max_cpu_para_adapters": "Host-cache bound for adapters loaded from --para-adapter-dir (least recently used "
    "first, never one with requests in flight); unbounded when unset.",
    "para_load_timeout": "Seconds allowed to read one adapter's files (admin or first-use load); a read that "
    "takes longer (a stuck network mount) fails that load with 400, other requests go on; 5 when unset.",
    "max_para_pages": "Side-buffer pages: sequences holding PARA vectors, running or preempted (a PARA request "
    "waits for a free page); 2 x --max-num-seqs when unset.",
}
# flag (without --) -> (PARASettings key, argparse type); --para-modules and --enable-para are special
VALUE_FLAGS: dict[str, tuple[str, type]] = {
    "max-para-adapters": ("max_adapters", int),
    "max-para-rank": ("max_rank", int),
    "para-adapter-dir": ("adapter_dir", str),
    "max-cpu-para-adapters": ("max_cpu_adapters", int),
    "max-para-pages": ("max_pages", int),
    "para-load-timeout": ("load_timeout_s", float),
}


def add_para_args(parser):
    group = parser.add_argument_group("PARA", "PARA adapter serving (vllm-para plugin)")
    group.add_argument("--enable-para", action="store_true", default=False, help=HELP["enable_para"])
    group.add_argument("--para-modules", nargs="+", metavar="NAME=PATH", default=None, help=HELP["para_modules"])
    for flag, (_, kind) in VALUE_FLAGS.items():
        group.add_argument(f"--{flag}", type=kind, default=None, help=HELP[flag.replace("-", "_")],
                           **({"metavar": "DIR"} if kind is str else {}))
    return parser


def fold_para_args(args: argparse.Namespace, engine_args) -> None:
    """Move the PARA flags into `engine_args.additional_config["para"]`."""
    enabled = getattr(args, "enable_para", False)
    given = {"--para-modules": getattr(args, "para_modules", None),
             **{f"--{flag}": getattr(args, flag.replace("-", "_"), None) for flag in VALUE_FLAGS}}
    if not enabled:
        used = [flag for flag, value in given.items() if value is not None]
        if used:
            raise PARASettingsError(f"{', '.join(used)} given without --enable-para; add --enable-para.")
        return
    additional = dict(engine_args.additional_config or {})
    para = dict(additional.get(ADDITIONAL_CONFIG_KEY) or {})
    if args.para_modules:
        para["modules"] = {**para.get("modules", {}), **parse_module_specs(args.para_modules)}
    for flag, (key, _) in VALUE_FLAGS.items():
        if given[f"--{flag}"] is not None:
            para[key] = given[f"--{flag}"]
    additional[ADDITIONAL_CONFIG_KEY] = para
    engine_args.additional_config = additional
    # Extra API-server processes (--api-server-count > 1, vLLM's default under data
    # parallelism) rebuild their engine args from this namespace before any plugin is
    # loaded there: give them the folded config, not flags only PARA's hook understands.
    if hasattr(args, "additional_config"):
        args.additional_config = additional


def _wrap_add_cli_args(original):
    @functools.wraps(original)
    def add_cli_args(parser):
        return add_para_args(original(parser))

    return add_cli_args


def _wrap_from_cli_args(original):
    @functools.wraps(original)
    def from_cli_args(cls, args):
        engine_args = original(cls, args)
        fold_para_args(args, engine_args)
        return engine_args

    return from_cli_args
