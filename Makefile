# sockpool — see README.md. `make run` and `make test` set up everything they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ADDR ?= 127.0.0.1:7007
HANDLER ?= sockpool.handlers:echo
PYTEST_ARGS ?=

.PHONY: all deps venv repin run test lint unit integration system clean

all: test

deps:
	@scripts/ensure-deps build run system

# The venv is rebuilt when the project's metadata or the pins change; systemd-python is an
# sdist and compiles against libsystemd-dev, which `deps` installs first. Everything pip
# installs here (pip itself, pytest, ruff, Flask and Starlette for the tests, their
# dependencies, and the setuptools that builds sockpool and systemd-python) is pinned to an
# exact version in constraints.txt, so a new release cannot break `make test` on a clean clone.
$(VENV)/.stamp: pyproject.toml constraints.txt | deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt --upgrade pip
	$(PY) -m pip install -q -c constraints.txt --build-constraint constraints.txt -e '.[test]' ruff
	touch $@

# Move the pins: the newest releases of the same packages (the bench's too, BENCH_PIP in
# mk/bench.mk), written to constraints.txt (review the diff, then `make test`).
REPIN := $(VENV)-repin
repin: | deps
	rm -rf $(REPIN)
	$(PYTHON) -m venv $(REPIN)
	$(REPIN)/bin/python -m pip install -q --upgrade pip setuptools
	$(REPIN)/bin/python -m pip install -q -e '.[test]' ruff $(foreach p,$(BENCH_PIP),'$(p)')
	{ echo "# Exact versions of what \`make venv\` and \`make bench\` install with pip; \`make repin\` moves them."; \
	  $(REPIN)/bin/python -m pip freeze --all --exclude-editable; } > constraints.txt
	rm -rf $(REPIN)

venv: $(VENV)/.stamp

# The echo service, socket-activated exactly as systemd would start it.
run: venv
	@echo "sockpool: waiting on $(ADDR); try: echo hello | nc -N $(subst :, ,$(ADDR))"
	exec systemd-socket-activate -l $(ADDR) --fdname=echo \
	  $(VENV)/bin/sockpool --log-target=stderr $(HANDLER)

lint: venv
	$(VENV)/bin/ruff check service tests bench examples
	$(VENV)/bin/ruff format --check service tests bench examples

test: venv lint
	$(PY) -m pytest $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: venv
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

system: venv
	$(PY) -m pytest tests/system $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist service/*.egg-info .pytest_cache .ruff_cache

# Each larger concern (benchmarks, packaging) keeps its targets beside its files.
-include mk/*.mk
