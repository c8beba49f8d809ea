"""`vllm-para` command line: `vllm-para train ...`, `vllm-para base [NAME]` (see `--help` of each).

Runs in: the `vllm-para` command (not a vLLM process).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": "vllm_para.training.train", "base": "vllm_para.base_model"}
    if not argv or argv[0] not in commands:
        print(f"usage: vllm-para {{{','.join(commands)}}} [options]   "
              "(try: vllm-para train --help, vllm-para base --help)")
        return 2
    import importlib

    return importlib.import_module(commands[argv[0]]).main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
