# Two commands do all the set-up: `make demo` and `make test`. Both create .venv from the
# pinned files if it is missing. TFX 1.16 declares Requires-Python <3.11 although every compiled
# dependency has a cp311 wheel, hence --ignore-requires-python (it cannot go in a requirements file).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: venv test demo bench drift lint clean

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==24.0
	$(PY) -m pip install --ignore-requires-python -r requirements.txt -c constraints.txt
	$(PY) -m pip install --ignore-requires-python --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Lint first, so that CI (.ci/run: make test) checks it too.
test: lint
	$(PY) -m pytest tests

demo: $(STAMP)
	$(VENV)/bin/reloop2 demo --output runs/demo

bench: $(STAMP)
	$(PY) benchmarks/serving_cost.py --output runs/bench/serving_cost.json
	$(PY) benchmarks/serving_benchmark.py --output runs/bench/serving.json
	$(PY) benchmarks/loader_benchmark.py --output runs/bench/loader.json
	$(PY) benchmarks/memory_benchmark.py --output runs/bench/memory.json

drift: $(STAMP)
	bash benchmarks/drift_runs.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
