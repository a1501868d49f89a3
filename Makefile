# jobcompd — every target builds its own virtualenv first (see README).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp

.PHONY: test demo bench-parse bench lint fuzz clean venv dist man

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,lint]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m jobcompd.demo

# Coverage-guided fuzzing (atheris) of the parser, the joining of split records and the encoder.
FUZZ_SECONDS ?= 300
fuzz: $(STAMP)
	$(PY) fuzz/fuzz_record.py $(FUZZ_SECONDS)

bench-parse: $(STAMP)
	$(PY) bench/bench_parse.py

# End to end against a local broker, with kcat and rsyslog baselines (installs them: run as root).
# About 7 minutes on 2 cores; `make bench BENCH_ARGS=--quick` takes about 1 minute.
bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(PY) bench/run_bench.py $(BENCH_ARGS)

# The offline bundle for air-gapped controllers: dist/jobcompd-VERSION-offline.tar.gz (see README).
dist: $(STAMP)
	PYTHON=$(PY) sh packaging/bundle.sh

# Regenerate the man pages from --help and etc/jobcompd.toml (tests/test_man.py checks them).
man: $(STAMP)
	$(PY) man/generate.py

lint: $(STAMP)
	$(VENV)/bin/ruff check jobcompd tests bench fuzz
	$(VENV)/bin/mypy jobcompd

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
