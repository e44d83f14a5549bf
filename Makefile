# GoHD-JAX: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
# python3.12 on PATH if it runs, else a pyenv-installed 3.12.
PYTHON312 ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo $$p; break; }; done)
PY := $(VENV)/bin/python
WORKDIR ?= workdir/demo
# Exact versions CI tested, every extra resolved together (Linux x86_64, Python 3.12; `make lock`
# refreshes it). Elsewhere, `make test LOCK=` installs from pyproject.toml's ranges instead.
LOCK ?= requirements.lock

.PHONY: demo test test-slow lint bench venv clean help lock

help:
	@echo "make demo       create .venv, install, generate the synthetic demo dataset and print its summary"
	@echo "make test       create or reuse .venv and run the default (fast) test suite"
	@echo "make test-slow  run the slow tests too"
	@echo "make lint       ruff (settings in pyproject.toml)"
	@echo "make bench      run the benchmarks in bench/ (prints tables for BENCHMARKS.md)"
	@echo "make lock       re-resolve requirements.lock (every extra, newest versions in pyproject's ranges)"

$(VENV)/.installed: pyproject.toml $(LOCK)
	@test -n "$(PYTHON312)" || { echo "error: Python 3.12 not found; install it or pass PYTHON312=/path/to/python3.12"; exit 1; }
	@test -x $(PY) || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(LOCK),-c $(LOCK)) -e '.[test]'
	@touch $@

# Not from .installed: that install obeys the old lock, which a new dependency may contradict.
lock:
	@test -x $(PY) || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml --all-extras --python-version 3.12 \
		--python-platform x86_64-manylinux_2_31 --no-header -o requirements.lock

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) launch/demo.py --workdir=$(WORKDIR)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 -rs --durations=25

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadgroup -m ''

bench: $(VENV)/.installed
	$(PY) bench/bench_data.py
	$(PY) bench/bench_trainer.py
	$(PY) bench/bench_animator.py
	$(PY) bench/bench_cpu_kernels.py
	$(PY) bench/bench_preprocess.py
	$(PY) bench/bench_animate.py
	$(PY) bench/bench_motion.py
	$(PY) bench/bench_expression.py

clean:
	rm -rf $(VENV) workdir
