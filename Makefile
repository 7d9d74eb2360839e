# Two commands do all the set-up on a fresh machine: `make demo` (the main job on the embedded default)
# and `make test`. Both create the virtual environment first if it is missing.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# Every pip call keeps torch at the CPU-compatible pin (an unconstrained resolve pulls CUDA wheels).
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test venv clean
demo: $(VENV)/.installed
	$(PY) -m uda_dist.train

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[test,sweep]"
	touch $@

clean:
	rm -rf $(VENV) outputs *.egg-info
