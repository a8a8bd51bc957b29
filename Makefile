# Without an active virtual environment, the project makes its own (.venv, with python3) and uses
# it: a stock Debian or Ubuntu has no `python` and refuses pip installs into the system Python.
PIP_FLAGS ?=
ifdef VIRTUAL_ENV
PYTHON ?= python
VENV :=
else
PYTHON ?= .venv/bin/python
VENV := .venv/bin/python
endif

.PHONY: install demo test test-fast

.venv/bin/python:
	@command -v python3 >/dev/null || { echo "autoprune: error: python3 not found; install Python 3.10 or newer (Debian/Ubuntu: apt-get install python3 python3-venv)" >&2; exit 2; }
	@python3 -c "import ensurepip, venv" 2>/dev/null || { echo "autoprune: error: python3 cannot create a virtual environment here; install the python3-venv package (Debian/Ubuntu: apt-get install python3-venv) or activate a virtual environment first" >&2; exit 2; }
	python3 -m venv .venv

install: $(VENV)
	$(PYTHON) -m pip install $(PIP_FLAGS) -e ".[test]"

demo: install
	$(PYTHON) -m autoprune search --budget-flops 50%

test: install
	$(PYTHON) -m pytest -q

# Everything that needs neither Ray nor long training: the inner loop while editing.
test-fast: install
	$(PYTHON) -m pytest -q -m "not ray and not slow"
