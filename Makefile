# make demo · make test · make bench — each creates .venv on a fresh machine and installs first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/unimed demo --out demo-out

test: install
	$(PY) -m pytest -q

BENCHES := ingest ingest_ray loader loss train leakage scrub eval

bench: install  # every stage's benchmark, full sizes; `make bench QUICK=--quick` for the minute-long sizes
	@set -e; for b in $(BENCHES); do \
	  if [ -f benchmarks/$$b.py ]; then $(PY) benchmarks/$$b.py $(QUICK) --json benchmarks/out/$$b.json; fi; \
	done

lint: install  # the linter, the formatter (check only; `ruff format` rewrites) and the type checker on the seams
	$(VENV)/bin/ruff check unimed tests benchmarks train
	$(VENV)/bin/ruff format --check unimed tests benchmarks train
	$(VENV)/bin/mypy

clean:
	rm -rf demo-out benchmarks/out .pytest_cache
