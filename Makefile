# `make demo`, `make test` and `make lint` each build .venv and install what they need (through
# dev.py, which does the same on Windows: `python dev.py test`); `.ci/run` runs `make lint` then
# `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast lab bench lint clean

# Kept as file targets for scripts that build the environment only (`make .venv/.test`).
$(VENV)/.core: pyproject.toml
	$(PYTHON) dev.py setup core

$(VENV)/.test: pyproject.toml
	$(PYTHON) dev.py setup test

demo:
	$(PYTHON) dev.py demo

test:
	$(PYTHON) dev.py test

test-fast:
	$(PYTHON) dev.py test -m "not kernel and not browser and not slow"

lab: $(VENV)/.test
	$(VENV)/bin/jupyter lab notebooks/quickstart.ipynb

bench: $(VENV)/.test
	for b in throughput latency progress store processes dask_executor soak; do $(PY) benchmarks/$$b.py || exit 1; done

lint:
	$(PYTHON) dev.py lint

clean:
	rm -rf $(VENV) .nbtasks build *.egg-info
