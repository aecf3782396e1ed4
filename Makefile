# Two entry points for a fresh clone:
#   make demo   builds an index of examples/catalogue and routes examples/tasks.jsonl
#   make test   runs every test, the slow ones included
# Both create or update the virtual environment in .venv first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INTEGRATIONS := $(patsubst %/pyproject.toml,%,$(wildcard integrations/*/pyproject.toml))
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

demo: $(STAMP)
	$(PY) examples/route_tasks.py

test: $(STAMP)
	$(PY) -m pytest tests $(INTEGRATIONS)

bench: $(STAMP)
	$(PY) benchmarks/cascade.py

# torch is installed first and pinned to the CPU build: an unpinned torch,
# pulled in by any dependency, would download a multi-GB CUDA build.
$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(INTEGRATIONS))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,demo,plot,serve]' $(foreach dir,$(INTEGRATIONS),-e '$(dir)[test]')
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs
