"""report.md and plots of a study run (`study.run`)."""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from . import get_task
from .base import MULTI

MAIN_ORDER = ("base", "para", "lora_matched", "lora_r8", "ia3", "bitfit")
NAMES = {"base": "base model (no adapter)", "para": "PARA r=12 q,v,u last",
         "lora_matched": "LoRA matched params (q,v,up)", "lora_r8": "LoRA r=8 (q,v)", "ia3": "(IA)^3",
         "bitfit": "BitFit"}


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    if not values:
        return float("nan"), None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _fmt(values: list[float]) -> str:
    m, s = _mean_std(values)
    if math_isnan(m):
        return "-"
    return f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")


def math_isnan(x: float) -> bool:
    return x != x


def _cells(rows, split="test", scope="per-task", group="main"):
    """(method, task) -> [values over seeds] of the task's headline metric, selected rate only."""
    out = defaultdict(list)
    for r in rows:
        if r["split"] != split or not r["selected"] or r["group"] != group:
            continue
        if r["method"] != "base" and r["scope"] != scope:
            continue
        if r["metric"] != get_task(r["task"]).metric:
            continue
        out[(r["method"], r["task"])].append(r["value"])
    return out


def _params(rows) -> dict[str, int]:
    out = {}
    for r in rows:
        if r["scope"] in ("per-task", "-"):
            out.setdefault(r["method"], r["trainable_params"])
    return out


def _table(cells, methods, tasks, params, engines) -> list[str]:
    head = "| method | trainable params | engine | " + " | ".join(tasks) + " | mean |"
    lines = [head, "|" + "---|" * (len(tasks) + 4)]
    for m in methods:
        if not any((m, t) in cells for t in tasks):
            continue
        vals = [cells.get((m, t), []) for t in tasks]
        per_seed_mean = _seed_means(vals)
        lines.append(f"| {NAMES.get(m, m)} | {params.get(m, 0):,} | {engines.get(m, '')} | "
                     + " | ".join(_fmt(v) for v in vals) + f" | {_fmt(per_seed_mean)} |")
    return lines


def _seed_means(vals: list[list[float]]) -> list[float]:
    """Mean over tasks, per seed (seeds aligned by position)."""
    n = min((len(v) for v in vals), default=0)
    return [statistics.mean(v[i] for v in vals) for i in range(n)] if n and all(vals) else []


def _engines(rows) -> dict[str, str]:
    return {r["method"]: r["engine"] for r in rows}


def _grid_line(cfg) -> str:
    """What this run trained and what was cut from the full grid (every method x task x seed)."""
    seeded = "every method" if cfg.seed_methods is None else ", ".join(cfg.seed_methods) + " only"
    multi = ("none" if not cfg.multitask else
             "every method" if cfg.multi_methods is None else ", ".join(cfg.multi_methods))
    low = (f"{', '.join(cfg.low_data_methods)} on the first {', '.join(map(str, cfg.low_data))} training examples"
           if cfg.low_data else "not run")
    abl = (f"{', '.join(cfg.ablations)} on {', '.join(cfg.ablation_tasks)}, seeds {list(cfg.ablation_seeds)}"
           if cfg.ablations else "not run")
    return (f"Grid: seeds beyond the first for {seeded}; multi-task adapters: {multi}"
            f"{'' if cfg.multi_seeds else ' (first seed only)'}; low-data axis: {low}; ablations: {abl}. "
            f"Training dtype: {'bfloat16 autocast' if cfg.use_bf16 else 'float32'}"
            f"{' (bf16=auto: this CPU has no native bfloat16)' if cfg.bf16 == 'auto' and not cfg.use_bf16 else ''}.\n")


def _base_line(base: Path) -> str:
    from vllm_para.base_model import MANIFEST

    if (base / MANIFEST).is_file():  # a real base (vllm_para.base_model)
        m = json.loads((base / MANIFEST).read_text())
        return (f"Base model: `{m['name']}`, a real pretrained model ({m['gguf_file']} from the PyPI package "
                f"{m['source_package']}=={m['source_version']}, sha256 {m['gguf_sha256'][:16]}..., {m['license']}), "
                "dequantized to float32 by `vllm-para base`.\n")
    info = json.loads((base / "pretrain_info.json").read_text())
    return (f"Base model: `{base.name}` ({info['parameters']:,} parameters, Llama-shaped, "
            f"{info['recipe']['num_hidden_layers']} layers, hidden {info['recipe']['hidden_size']}), pretrained "
            f"locally on {info['tokens_seen']:,} tokens of the synthetic corpus in {info['seconds']:.0f} s "
            f"(final loss {info['loss_last50']:.3f}).\n")


def write_report(run_dir: Path, cfg, base: Path, rows, chosen, ref, vectors, data, preds, jobs, infos, timings) -> Path:
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    tasks = list(cfg.tasks)
    params = _params(rows)
    engines = _engines(rows)
    metric_names = ", ".join(f"{t}: {get_task(t).metric}" for t in tasks)
    L = []
    L.append(f"# Do adapters help? Study run `{run_dir.name}`\n")
    L.append(_base_line(base))
    L.append(f"Data: {cfg.n_train} training, {cfg.n_val} validation and {cfg.n_test} test examples per task; "
             "splits share no entities and no templates. "
             f"Budget per adapter: {cfg.steps} optimizer steps of batch {cfg.batch_size} "
             f"(multi-task adapter: {cfg.multi_steps} steps on all tasks mixed), cosine schedule, "
             f"learning rate picked per method and task on the validation split from {dict(cfg.lr_grid)}. "
             f"Seeds: {list(cfg.seeds)}. Greedy decoding. Metrics (test, %): {metric_names}.\n")
    L.append(_grid_line(cfg))
    L.append("Engines: `vllm` = all PARA and (IA)^3 adapters and the base model in ONE vLLM engine (this plugin; "
             "(IA)^3 as static PARA vectors); `vllm-lora` = all LoRA adapters in ONE vLLM engine (vLLM "
             "multi-LoRA); `transformers` = BitFit, which vLLM does not serve, through transformers' `generate`.\n")

    # ---- main table
    cells = _cells(rows)
    L.append("## Per-task adapters (test)\n")
    L.append("Mean ± standard deviation over seeds (no ± where one seed ran).\n")
    L += _table(cells, MAIN_ORDER, tasks, params, engines)
    L.append("")
    _bar_plot(cells, [m for m in MAIN_ORDER if any((m, t) in cells for t in tasks)], tasks, plots / "per_task.png",
              "Per-task adapters: test metric by task and method")
    L.append("![per-task](plots/per_task.png)\n")

    multi = _cells(rows, scope="multi-task")
    if any(k[0] != "base" for k in multi):
        L.append(f"## One multi-task adapter on all {len(tasks)} tasks mixed (test)\n")
        L += _table(multi, MAIN_ORDER, tasks, params, engines)
        L.append("")
        _bar_plot(multi, [m for m in MAIN_ORDER if any((m, t) in multi for t in tasks)], tasks,
                  plots / "multi_task.png", "Multi-task adapter: test metric by task and method")
        L.append("![multi-task](plots/multi_task.png)\n")

    # ---- comparisons
    L.append("## PARA against each baseline\n")
    L += _comparison(cells, multi, tasks)
    L.append("")

    # ---- ablations
    for group, title in (("r", "Rank r"), ("pooling", "Pooling"), ("targets", "Targets")):
        ab = _cells(rows, group=group)
        if not ab:
            continue
        main = {k: v for k, v in cells.items() if k[0] == "para"}
        ab.update(main)
        labels = sorted({k[0] for k in ab}, key=_ablation_order)
        L.append(f"## Ablation: {title} (PARA, test)\n")
        L += _table(ab, labels, [t for t in tasks if any((lab, t) in ab for lab in labels)], params, engines)
        L.append("")
        if group == "r":
            _r_plot(ab, labels, tasks, plots / "ablation_r.png")
            L.append("![r](plots/ablation_r.png)\n")
        else:
            _bar_plot(ab, labels, tasks, plots / f"ablation_{group}.png", f"PARA ablation: {title.lower()}")
            L.append(f"![{group}](plots/ablation_{group}.png)\n")
        if group == "pooling":
            L.append("First-token pooling reads the BOS token's state, identical for every prompt: its vectors "
                     "are constant (the static control; served as an adapter with W_up = 0 and b_up = those "
                     "vectors, exactly equivalent).\n")

    # ---- low-data axis
    low = _cells(rows, group="low_data")
    if low:
        L += _low_data_section(low, cells, cfg, tasks, params, engines, plots)

    # ---- generation length
    L += _generation_length(rows, jobs, chosen, data, preds, plots)

    # ---- vectors
    if vectors:
        L += _vectors_section(vectors, jobs, plots)

    # ---- LR selection
    L.append("## Learning-rate selection (validation, seed 0)\n")
    L.append("| method | scope | "
             + " | ".join(f"lr {lr:g}" for lr in sorted({float(r['lr']) for r in rows if r['lr'] != ''})) + " |")
    lrs = sorted({float(r["lr"]) for r in rows if r["lr"] != ""})
    L.append("|---|---|" + "---|" * len(lrs))
    val = defaultdict(dict)
    split = "val" if cfg.n_val else "test"
    for r in rows:
        if r["split"] == split and r["group"] == "main" and r["method"] != "base" and r["seed"] == cfg.seeds[0] \
                and r["metric"] == get_task(r["task"]).metric:
            scope = "multi" if r["scope"] == "multi-task" else r["task"]
            val[(r["method"], scope)].setdefault(float(r["lr"]), []).append(r["value"])
    for (m, scope), by_lr in sorted(
            val.items(), key=lambda kv: (MAIN_ORDER.index(kv[0][0]) if kv[0][0] in MAIN_ORDER else 99, kv[0][1])):
        pick = chosen.get((m, "multi" if scope == "multi" else scope))
        L.append(f"| {m} | {scope} | " + " | ".join(
            ("**" if lr == pick else "") + (f"{100 * statistics.mean(by_lr[lr]):.1f}" if lr in by_lr else "-")
            + ("**" if lr == pick else "") for lr in lrs) + " |")
    L.append("")

    # ---- reference check
    if ref:
        L.append("## Served = reference\n")
        L.append(f"The first {cfg.reference_prompts} test prompts of every seed-0 PARA adapter (selected rate) were "
                 "generated again with the transformers reference (`PARAReferenceModel.greedy`, same stop tokens): "
                 f"**{ref['identical']}/{ref['compared']} identical** greedy token sequences.\n")
        for mm in ref.get("mismatches", []):
            L.append(f"- differs: `{mm['key']}`: vLLM {mm['vllm']!r} vs reference {mm['reference']!r}")
        L.append("")

    # ---- compute
    L.append("## What ran\n")
    n_jobs = len(jobs)
    train_s = sum(infos[j.id]["seconds"] for j in jobs)
    L.append(f"- {n_jobs} adapters trained ({train_s / 60:.1f} min of training); timings: "
             + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + ".")
    groups = sorted({j.group for j in jobs})
    L.append(f"- Method groups run: {groups}; seeds {list(cfg.seeds)}; ablation seeds {list(cfg.ablation_seeds)}; "
             f"ablation tasks {list(cfg.ablation_tasks)}.")
    missing = [g for g in ("r", "pooling", "targets") if g not in cfg.ablations]
    if missing:
        L.append(f"- Not run in this run: ablations {missing}.")
    if len(cfg.seeds) == 1:
        L.append("- One seed only: no standard deviations; differences of a few points are within seed noise.")
    L.append("")
    path = run_dir / "report.md"
    path.write_text("\n".join(L) + "\n")
    return path


def _ablation_order(label: str):
    m = re.search(r"r=(\d+)", label)
    if m:
        return (0, int(m.group(1)))
    if label == "para":
        return (0, 12)
    return (1, label)


def _comparison(cells, multi, tasks) -> list[str]:
    out = []
    for other in ("lora_matched", "lora_r8", "ia3", "bitfit", "base"):
        for scope_name, c in (("per-task", cells), ("multi-task", multi)):
            if other != "base" and not any((other, t) in c for t in tasks):
                continue
            if not any(("para", t) in c for t in tasks):
                continue
            wins, losses, ties = [], [], []
            for t in tasks:
                a, b = c.get(("para", t)), c.get((other, t))
                if not a or not b:
                    continue
                d = statistics.mean(a) - statistics.mean(b)
                entry = f"{t} ({100 * d:+.1f})"
                (wins if d > 0.005 else losses if d < -0.005 else ties).append(entry)
            if wins or losses or ties:
                out.append(f"- vs {NAMES.get(other, other)} ({scope_name}): "
                           f"PARA better on {', '.join(wins) or 'none'}; "
                           f"worse on {', '.join(losses) or 'none'}"
                           + (f"; tied on {', '.join(ties)}" if ties else "") + ".")
            if other == "base":
                break
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar_plot(cells, methods, tasks, path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(tasks)), 3.8))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        xs, ys, es = [], [], []
        for j, t in enumerate(tasks):
            v = cells.get((m, t))
            if not v:
                continue
            mean, std = _mean_std(v)
            xs.append(j + (i - (len(methods) - 1) / 2) * width)
            ys.append(100 * mean)
            es.append(100 * std if std is not None else 0)
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=NAMES.get(m, m))
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks)
    ax.set_ylabel("test metric (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _r_plot(cells, labels, tasks, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    rs = {lab: int(re.search(r"r=(\d+)", lab).group(1)) if "r=" in lab else 12 for lab in labels}
    order = sorted(labels, key=lambda lab: rs[lab])
    for t in tasks:
        pts = [(rs[lab], 100 * statistics.mean(cells[(lab, t)])) for lab in order if (lab, t) in cells]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=t)
    ax.set_xscale("log", base=2)
    ax.set_xticks([4, 8, 12, 24, 48])
    ax.set_xticklabels(["4", "8", "12", "24", "48"])
    ax.set_xlabel("VG bottleneck r")
    ax.set_ylabel("test metric (%)")
    ax.set_title("PARA: rank ablation")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _low_data_section(low, cells, cfg, tasks, params, engines, plots) -> list[str]:
    """Accuracy against the number of training examples (same steps; the rate chosen at n_train, seed 0)."""
    sizes = sorted(cfg.low_data) + [cfg.n_train]
    methods = [m for m in cfg.low_data_methods if any((m, t) in cells for t in tasks)]
    merged = dict(low)
    labels = ["base"] if any(("base", t) in cells for t in tasks) else []
    for m in methods:
        for n in sizes:
            lab = m if n == cfg.n_train else f"{m}[n={n}]"
            if lab == m:
                merged.update({(m, t): cells[(m, t)][:1] for t in tasks if (m, t) in cells})  # seed 0, like the rest
            labels.append(lab)
    merged.update({k: v for k, v in cells.items() if k[0] == "base"})
    L = ["## Low-data axis (test, seed 0)\n",
         f"Each method trained on the first 16 / 64 / ... of the {cfg.n_train} training examples, same "
         f"{cfg.steps} steps of batch {cfg.batch_size} (so more epochs on fewer examples), the learning rate chosen "
         f"at n = {cfg.n_train}. The unmarked row is n = {cfg.n_train}.\n"]
    L += _table(merged, labels, tasks, params, engines)
    L.append("")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for m in methods:
        pts = []
        for n in sizes:
            lab = m if n == cfg.n_train else f"{m}[n={n}]"
            vals = [merged[(lab, t)][0] for t in tasks if (lab, t) in merged]
            if len(vals) == len(tasks):
                pts.append((n, 100 * statistics.mean(vals)))
        if pts:
            ax.plot(*zip(*pts), marker="o", label=NAMES.get(m, m))
    base = [cells[("base", t)][0] for t in tasks if ("base", t) in cells]
    if len(base) == len(tasks):
        ax.axhline(100 * statistics.mean(base), color="gray", linestyle="--", label="base model")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(n) for n in sizes])
    ax.set_xlabel("training examples")
    ax.set_ylabel(f"mean test metric over {len(tasks)} tasks (%)")
    ax.set_title("Low-data axis")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plots / "low_data.png", dpi=110)
    plt.close(fig)
    L.append("![low-data](plots/low_data.png)\n")
    return L


_EQ = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)\.")


def _generation_length(rows, jobs, chosen, data, preds, plots) -> list[str]:
    if ("arith", "test") not in data.examples or not data.examples[("arith", "test")]:
        return []
    exs = data.examples[("arith", "test")]
    owners = [("base", "base")] + [(j.id, j.label) for j in jobs if j.group == "main" and j.task == "arith"
                                   and chosen.get((j.label, j.task)) == j.lr]
    by_label = defaultdict(lambda: defaultdict(list))
    pos = defaultdict(lambda: defaultdict(list))
    for owner, label in owners:
        texts = preds.texts(owner, "arith", "test", len(exs))
        if texts is None:
            continue
        for text, ex in zip(texts, exs):
            steps = ex.meta["steps"]
            by_label[label][steps].append(get_task("arith").score([text], [ex])["acc"])
            gold = _EQ.findall(ex.completion)
            got = _EQ.findall(text)
            for k in range(len(gold)):
                pos[label][k + 1].append(float(k < len(got) and got[k] == gold[k]))
    if not by_label:
        return []
    steps_all = sorted({s for d in by_label.values() for s in d})
    out = ["## Accuracy against generation length (arithmetic, test)\n",
           "Problems with more steps need longer generations (one equation per step, ~8 tokens each); the vectors "
           "are computed once from the prompt and reused for every generated token. Left: final-number accuracy by "
           "number of steps; right: how often the k-th equation of the generation equals the gold k-th equation.\n",
           "| method | " + " | ".join(f"{s} step{'s' if s > 1 else ''}" for s in steps_all) + " | "
           + " | ".join(f"eq {k}" for k in steps_all) + " |",
           "|---|" + "---|" * (2 * len(steps_all))]
    for label in [m for m in MAIN_ORDER if m in by_label]:
        out.append(f"| {NAMES.get(label, label)} | " + " | ".join(
            f"{100 * statistics.mean(by_label[label][s]):.0f}" if by_label[label][s] else "-"
            for s in steps_all) + " | "
            + " | ".join(f"{100 * statistics.mean(pos[label][k]):.0f}" if pos[label][k] else "-"
                         for k in steps_all) + " |")
    out.append("")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label in [m for m in MAIN_ORDER if m in by_label]:
        axes[0].plot(steps_all, [100 * statistics.mean(by_label[label][s]) for s in steps_all], marker="o",
                     label=NAMES.get(label, label))
        ks = sorted(pos[label])
        axes[1].plot(ks, [100 * statistics.mean(pos[label][k]) for k in ks], marker="o", label=NAMES.get(label, label))
    axes[0].set_xlabel("steps in the problem (longer generation)")
    axes[0].set_ylabel("final-number accuracy (%)")
    axes[1].set_xlabel("equation position k in the generation")
    axes[1].set_ylabel("k-th equation correct (%)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plots / "generation_length.png", dpi=110)
    plt.close(fig)
    out.append("![generation length](plots/generation_length.png)\n")
    return out


def _vectors_section(vectors, jobs, plots) -> list[str]:
    import torch


    out = ["## How much do the vectors vary across prompts?\n",
           "For test prompts, the PARA vectors l of each layer (q, v, u concatenated) from the transformers "
           "reference. `cos dispersion` = 1 - mean pairwise cosine similarity of the adjustments l - 1 (0: every "
           "prompt gets the same direction); `varying share` = mean ||l - mean(l)|| / mean ||l - 1|| (0: a static "
           "adapter; 1: the prompt-dependent part is as large as the whole adjustment).\n",
           "| adapter | prompts of | "
           + " | ".join(f"layer {i} cos disp / varying" for i in range(_n_layers(vectors))) + " |",
           "|---|---|" + "---|" * _n_layers(vectors)]
    ids = {j.id: j for j in jobs}
    for jid, per_task in vectors.items():
        stats = dispersion_stats(per_task)
        for t, layer_rows in stats.items():
            label = ids[jid].label + (" (multi-task)" if ids[jid].task == MULTI else "")
            out.append(f"| {label} | {t} | " + " | ".join(
                f"{r['cos_dispersion']:.3f} / {r['varying_share']:.2f}" for r in layer_rows) + " |")
    out.append("")
    plt = _plt()
    main_ids = [jid for jid in vectors if ids[jid].label == "para" and ids[jid].task != MULTI]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for jid in main_ids:
        for t, layer_rows in dispersion_stats(vectors[jid]).items():
            ax.plot([r["layer"] for r in layer_rows], [r["varying_share"] for r in layer_rows], marker="o", label=t)
    ax.set_xlabel("layer")
    ax.set_ylabel("prompt-varying share of the adjustment")
    ax.set_title("PARA per-task adapters: vector variation across prompts")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plots / "vector_dispersion.png", dpi=110)
    plt.close(fig)
    out.append("![dispersion](plots/vector_dispersion.png)\n")
    multi_ids = [jid for jid in vectors if ids[jid].label == "para" and ids[jid].task == MULTI]
    if multi_ids:
        per_task = vectors[multi_ids[0]]
        feats, labels = [], []
        for t, layers in per_task.items():
            x = torch.cat([v - 1.0 for v in layers], dim=1)
            feats.append(x)
            labels += [t] * x.shape[0]
        X = torch.cat(feats)
        X = X - X.mean(0)
        _, _, V = torch.pca_lowrank(X, q=2, center=False)
        P = (X @ V[:, :2]).numpy()
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        for t in per_task:
            idx = [i for i, lab in enumerate(labels) if lab == t]
            ax.scatter(P[idx, 0], P[idx, 1], s=10, label=t)
        ax.set_title("Multi-task PARA adapter: vectors of test prompts (PCA)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plots / "vector_pca.png", dpi=110)
        plt.close(fig)
        out.append("The multi-task adapter's vectors (all layers, PCA to 2-D), coloured by the prompt's task:\n")
        out.append("![pca](plots/vector_pca.png)\n")
    return out


def _n_layers(vectors) -> int:
    for per_task in vectors.values():
        for layers in per_task.values():
            return len(layers)
    return 0


def dispersion_stats(per_task: dict[str, list]) -> dict[str, list[dict]]:
    """Per task and layer: 1 - mean pairwise cosine of the adjustments (l - 1), and the
    share of the adjustment's norm that varies with the prompt (||l - mean_l|| / ||l - 1||)."""
    import torch

    out = {}
    for t, layers in per_task.items():
        rows = []
        for i, vecs in enumerate(layers):
            adj = vecs - 1.0
            unit = torch.nn.functional.normalize(adj, dim=1)
            sims = unit @ unit.T
            k = sims.shape[0]
            mean_cos = float((sims.sum() - k) / (k * (k - 1))) if k > 1 else 1.0
            varying = float((vecs - vecs.mean(0)).norm(dim=1).mean() / adj.norm(dim=1).mean().clamp_min(1e-12))
            rows.append({"layer": i, "cos_dispersion": 1 - mean_cos, "varying_share": varying})
        out[t] = rows
    return out
