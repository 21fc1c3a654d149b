# `make demo`, `make test` and `make lint` each build .venv and install what they need; `.ci/run`
# runs `make lint` then `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test test-fast lab bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -U pip

$(VENV)/.core: $(PY) pyproject.toml
	$(PIP) install -e .
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) install -e '.[test,notebook,bench]'
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/nbtasks demo

test: $(VENV)/.test
	$(PY) -m pytest -p no:cacheprovider

test-fast: $(VENV)/.test
	$(PY) -m pytest -p no:cacheprovider -m "not kernel and not browser and not slow"

lab: $(VENV)/.test
	$(VENV)/bin/jupyter lab notebooks/quickstart.ipynb

bench: $(VENV)/.test
	for b in throughput latency progress store processes dask_executor soak; do $(PY) benchmarks/$$b.py || exit 1; done

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy nbtasks

clean:
	rm -rf $(VENV) .nbtasks build *.egg-info
