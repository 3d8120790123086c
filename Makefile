# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: venv
	$(PY) -m scipion_gain.demo

test: venv
	$(PY) -m pytest -ra tests

bench: venv
	$(PY) benchmarks/estimator_speed.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
