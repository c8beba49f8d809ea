# Two commands do all set-up on a fresh machine (they create .venv/ if missing).
PY := .venv/bin/python

.PHONY: venv demo test test-fast bench soak

venv:
	@bash scripts/ensure_venv.sh

demo: venv  ## tiny model -> train a PARA adapter -> save -> reload -> generate (reference + vLLM)
	$(PY) examples/demo.py

test: venv  ## the whole test suite (what CI runs)
	$(PY) -m pytest -q tests

test-fast: venv  ## tests that do not start a vLLM engine
	$(PY) -m pytest -q tests -m "not engine and not server"

bench: venv
	$(PY) benchmarks/offline_throughput.py

soak: venv  ## soak one real `vllm serve --enable-para` (not CI): make soak SOAK_ARGS="--requests 300"
	$(PY) benchmarks/soak.py $(SOAK_ARGS)
