"""Does a small-batch base ever learn to copy? Pretrain a recipe and run the repeat probe
(`study.pretrain.repeat_probe`) every `--every` updates.

    .venv/bin/python reproduction/induction_onset.py --layers 2 --batch 2 --steps 90000 --every 10000

An induction head shows as the second-half accuracy pulling away from the first half's. Writes
`<out>/onset.json` (the probe curve and the loss at each probe).

    .venv/bin/python reproduction/induction_onset.py --nll ~/.cache/vllm-para/base-*/

instead compares built bases on held-out corpus documents: mean NLL of tokens whose bigram
(previous token, token) already occurred earlier in the document (predictable by in-context
copying) against all other tokens. Over the issue's 10-minute
pretraining budget on purpose: this measures where the onset is, it does not build the study's base.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from study.pretrain import RECIPES, pretrain, repeat_lists, repeat_probe  # noqa: E402


def repeated_bigram_nll(path: Path, documents: list[str], max_len: int = 128) -> tuple[float, float]:
    """(mean NLL of repeated-bigram tokens, of the other tokens) of the base at `path`, from the third token on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    repeated, other = [], []
    for doc in documents:
        ids = tok(doc)["input_ids"][:max_len]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
        seen = set()
        for i in range(2, len(ids)):
            seen.add((ids[i - 2], ids[i - 1]))
            (repeated if (ids[i - 1], ids[i]) in seen else other).append(-logp[i - 1, ids[i]].item())
    return sum(repeated) / len(repeated), sum(other) / len(other)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=90000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--every", type=int, default=10000)
    p.add_argument("--probes", type=int, default=40)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--nll", type=Path, nargs="+", default=None, help="built bases to compare (no training)")
    args = p.parse_args(argv)
    if args.nll:
        from study.corpus import sample_documents

        docs = sample_documents(300, seed=999)[:150]  # seed 999: not the pretraining corpus's draw
        for path in args.nll:
            rep, other = repeated_bigram_nll(path, docs)
            print(f"{path.name}: repeated-bigram tokens NLL {rep:.3f}, other tokens {other:.3f}")
        return 0
    spec = dict(RECIPES["default"], num_hidden_layers=args.layers, batch_size=args.batch, seq_len=args.seq_len,
                steps=args.steps, lr=args.lr, warmup=300)
    lists = repeat_lists(args.probes, random.Random(123))
    curve, start = [], time.time()

    def on_step(step, model, tok):
        if step % args.every == 0 or step == args.steps:
            first, second = repeat_probe(model, tok, lists)
            curve.append(dict(step=step, tokens=step * args.batch * args.seq_len, first=round(first, 4),
                              second=round(second, 4), seconds=round(time.time() - start, 1)))
            print(f"step {step}: repeat first {first:.3f} second {second:.3f}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="induction_onset_"))
    pretrain(work / "model", spec, on_step=on_step)
    info = json.loads((work / "model" / "pretrain_info.json").read_text())
    out = args.out or work
    out.mkdir(parents=True, exist_ok=True)
    result = dict(recipe=spec, curve=curve, loss_curve=info["loss_curve"], seconds=info["seconds"])
    (out / "onset.json").write_text(json.dumps(result, indent=2) + "\n")
    print(out / "onset.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
