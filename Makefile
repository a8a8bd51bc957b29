PYTHON ?= python
PIP_FLAGS ?=

.PHONY: install demo test

install:
	$(PYTHON) -m pip install $(PIP_FLAGS) -e ".[test]"

demo: install
	autoprune search --budget-flops 50%

test: install
	$(PYTHON) -m pytest -q
