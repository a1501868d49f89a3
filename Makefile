# jobcompd — every target builds its own virtualenv first (see README).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp

.PHONY: test test-python demo bench-parse bench lint fuzz clean venv dist man

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py jobcompd/_fastline.c jobcompd/_sendloop.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,lint]'
	touch $(STAMP)

# The reader's tests on the Python path alone first (the compiled reader is optional), then the
# whole suite as installed (with the compiled reader where it was built).
READER_TESTS = tests/test_record.py tests/test_encode.py tests/test_zone.py tests/test_ingest.py
test: $(STAMP)
	JOBCOMPD_PARSER=python $(PY) -m pytest -q -p no:cacheprovider $(READER_TESTS)
	$(PY) -m pytest

# The whole suite on the Python path (what an installation without a C compiler runs).
test-python: $(STAMP)
	JOBCOMPD_PARSER=python $(PY) -m pytest

demo: $(STAMP)
	$(PY) -m jobcompd.demo

# Coverage-guided fuzzing (atheris) of the parser, the joining of split records and the encoder,
# with the compiled reader built with AddressSanitizer (atheris' runtime), so that a read outside
# a line's bytes stops the run; without gcc, the installed reader is fuzzed.
FUZZ_SECONDS ?= 300
FUZZ_BUILD    = build/fuzz
fuzz: $(STAMP)
	@mkdir -p $(FUZZ_BUILD)
	@if gcc -c -fPIC -g -O1 -fsanitize=address -fno-omit-frame-pointer \
	        -I"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
	        jobcompd/_fastline.c -o $(FUZZ_BUILD)/fastline.o \
	    && gcc -shared $(FUZZ_BUILD)/fastline.o -o $(FUZZ_BUILD)/_fastline_asan.so; then \
	    ASAN_OPTIONS=detect_leaks=0:quarantine_size_mb=64 PYTHONMALLOC=malloc \
	    LD_PRELOAD="$$($(PY) -c 'import atheris; print(atheris.path())')/asan_with_fuzzer.so" \
	    JOBCOMPD_FUZZ_FASTLINE=$(FUZZ_BUILD)/_fastline_asan.so $(PY) fuzz/fuzz_record.py $(FUZZ_SECONDS); \
	else \
	    echo "no AddressSanitizer build: fuzzing the installed reader"; \
	    $(PY) fuzz/fuzz_record.py $(FUZZ_SECONDS); \
	fi

bench-parse: $(STAMP)
	$(PY) bench/bench_parse.py

# End to end against a local broker, with kcat and rsyslog baselines (installs them: run as root).
# About 10 minutes on 2 cores; `make bench BENCH_ARGS=--quick` takes about 3 minutes. jobcompd's
# modules are compiled to bytecode first, as an installed package has them (where
# PYTHONDONTWRITEBYTECODE is set, each start would compile them again).
bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(PY) -m compileall -q jobcompd
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
