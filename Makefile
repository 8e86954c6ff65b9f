# The README's commands. Each creates .venv on first use, with PYTHON
# (default python3; 3.11, 3.12 and 3.13 are supported), and installs the
# package with every extra the tests need (images: TensorFlow and TFDS).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/parity_adatape
# Parity at length 16 for 3000 steps: a run of about a minute on a
# 2-core CPU that the Transformer of the same size cannot learn (README).
DEMO_CONFIG ?= configs/parity/adatape.py:seq_len=16,steps=3000
LINTED := adatape configs experiments launch tests

.PHONY: demo test lint format clean-venv check-python

check-python:
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 11) <= v <= (3, 13) else "error: PYTHON=$(PYTHON) is Python %d.%d; adatape needs 3.11, 3.12 or 3.13 (e.g. make PYTHON=python3.12 ...)" % v)'

$(VENV)/.installed: setup.py | check-python
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,images]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m adatape.main --config=$(DEMO_CONFIG) --workdir=$(WORKDIR)

# --dist loadfile keeps each test module on one worker, so a module's
# fixtures (a trained run shared by its tests) are built once, not once per
# worker (the xdist_group marks cannot do that under pytest 9).
test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# pyink (Google's formatter: 2-space indents, 80 columns; pyproject.toml)
# must leave every file unchanged, and pylint (.pylintrc) find nothing.
lint: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[lint]'
	$(PY) -m pyink --check $(LINTED)
	$(PY) -m pylint --rcfile=.pylintrc $(LINTED)

format: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[lint]'
	$(PY) -m pyink $(LINTED)

clean-venv:
	rm -rf $(VENV)
