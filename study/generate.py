"""Greedy generation for the study, one engine per call (run as a subprocess:
`python -m study.generate SPEC.json`).

Engines:
* `para`: ONE vLLM engine with every PARA adapter of the spec loaded through
  this plugin (`additional_config["para"]["modules"]`); requests of all adapters
  and of the base model (adapter None) are mixed in one `generate` call.
* `lora`: ONE vLLM engine with vLLM's multi-LoRA (`enable_lora`), all LoRA
  adapters mixed in one call.
* `transformers`: (IA)^3 (PEFT) and BitFit, which vLLM cannot serve, through
  transformers' batched greedy `generate`, one adapter at a time.

Greedy decoding; a request stops at EOS or at a token containing a newline
(the tasks answer on one line) or after its `max_tokens`.

SPEC: {"engine", "base", "adapters": {name: dir}, "requests": [{"key", "prompt",
"adapter", "max_tokens"}], "out": path, "max_lora_rank"?}. Writes JSONL
`{"key", "text", "token_ids"}` to `out` and a `<out>.meta.json` with timings.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ENGINE_KWARGS = dict(dtype="float32", gpu_memory_utilization=0.2, max_model_len=512, seed=0)


def stop_token_ids(tokenizer) -> list[int]:
    """EOS and every token whose text contains a newline."""
    ids = {tokenizer.eos_token_id}
    for tok_id in range(len(tokenizer)):
        if "\n" in tokenizer.decode([tok_id]):
            ids.add(tok_id)
    return sorted(i for i in ids if i is not None)


def _vllm_generate(spec: dict, stops: list[int]) -> list[dict]:
    from vllm import LLM, SamplingParams

    reqs = spec["requests"]
    kwargs = dict(ENGINE_KWARGS, max_num_seqs=spec.get("max_num_seqs", 64),
                  enforce_eager=spec.get("enforce_eager", False))
    if spec["engine"] == "para":
        names = sorted(spec["adapters"])
        llm = LLM(model=spec["base"], additional_config={"para": {
            "modules": spec["adapters"], "max_adapters": max(1, len(names)), "max_rank": spec.get("max_rank", 64)}},
            **kwargs)
        params = [SamplingParams(max_tokens=r["max_tokens"], temperature=0.0, stop_token_ids=stops,
                                 extra_args={"para_adapter": r["adapter"]} if r["adapter"] else None) for r in reqs]
        outs = llm.generate([r["prompt"] for r in reqs], params, use_tqdm=False)
    elif spec["engine"] == "lora":
        from vllm.lora.request import LoRARequest

        names = sorted(spec["adapters"])
        ids = {n: i + 1 for i, n in enumerate(names)}
        llm = LLM(model=spec["base"], enable_lora=True, max_loras=min(8, len(names)), max_cpu_loras=len(names),
                  max_lora_rank=spec.get("max_lora_rank", 16), **kwargs)
        params = [SamplingParams(max_tokens=r["max_tokens"], temperature=0.0, stop_token_ids=stops) for r in reqs]
        loras = [LoRARequest(r["adapter"], ids[r["adapter"]], spec["adapters"][r["adapter"]]) if r["adapter"] else None
                 for r in reqs]
        outs = llm.generate([r["prompt"] for r in reqs], params, lora_request=loras, use_tqdm=False)
    else:
        raise ValueError(spec["engine"])
    return [{"key": r["key"], "text": o.outputs[0].text, "token_ids": list(o.outputs[0].token_ids)}
            for r, o in zip(reqs, outs)]


def _hf_generate(spec: dict, stops: list[int], batch_size: int = 32) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vllm_para.training.baselines import BITFIT_CONFIG_FILE, BitFit

    tok = AutoTokenizer.from_pretrained(spec["base"])
    results: dict[str, dict] = {}
    by_adapter: dict[str | None, list[dict]] = {}
    for r in spec["requests"]:
        by_adapter.setdefault(r["adapter"], []).append(r)
    for name, reqs in by_adapter.items():
        model = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=torch.float32).eval()
        if name is not None:
            path = Path(spec["adapters"][name])
            if (path / BITFIT_CONFIG_FILE).is_file():
                BitFit.load(model, path)
            else:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(path)).eval()
        reqs = sorted(reqs, key=lambda r: len(r["prompt"]))
        for i in range(0, len(reqs), batch_size):
            chunk = reqs[i:i + batch_size]
            encoded = [tok(r["prompt"])["input_ids"] for r in chunk]
            width = max(map(len, encoded))
            ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, e in enumerate(encoded):
                ids[b, width - len(e):] = torch.tensor(e)
                mask[b, width - len(e):] = 1
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                                     max_new_tokens=max(r["max_tokens"] for r in chunk), eos_token_id=stops,
                                     pad_token_id=tok.pad_token_id)
            for b, r in enumerate(chunk):
                new = out[b, width:].tolist()[: r["max_tokens"]]
                cut = next((j for j, t in enumerate(new) if t in stops), None)
                kept = new if cut is None else new[: cut + 1]
                text_ids = kept if cut is None else kept[:-1]
                results[r["key"]] = {"key": r["key"], "text": tok.decode(text_ids, skip_special_tokens=True),
                                     "token_ids": kept}
    return [results[r["key"]] for r in spec["requests"]]


def run(spec: dict) -> dict:
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(int(os.environ.get("VLLM_PARA_THREADS", "2")))
    start = time.time()
    stops = stop_token_ids(AutoTokenizer.from_pretrained(spec["base"]))
    if spec["engine"] in ("para", "lora"):
        rows = _vllm_generate(spec, stops)
    elif spec["engine"] == "transformers":
        rows = _hf_generate(spec, stops)
    else:
        raise ValueError(f"unknown engine {spec['engine']!r}")
    out = Path(spec["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    meta = {"engine": spec["engine"], "requests": len(rows), "adapters": len(spec["adapters"]),
            "generated_tokens": sum(len(r["token_ids"]) for r in rows), "seconds": round(time.time() - start, 1)}
    Path(str(out) + ".meta.json").write_text(json.dumps(meta) + "\n")
    return meta


if __name__ == "__main__":
    print(json.dumps(run(json.loads(Path(sys.argv[1]).read_text()))))
