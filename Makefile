# The two commands of the README. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/parity_adatape

.PHONY: demo test clean-venv

$(VENV)/.installed: setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m adatape.main --config=configs/parity/adatape.py --workdir=$(WORKDIR)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 tests

clean-venv:
	rm -rf $(VENV)
