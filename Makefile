# sockpool — see README.md. `make run` and `make test` set up everything they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ADDR ?= 127.0.0.1:7007
HANDLER ?= sockpool.handlers:echo
PYTEST_ARGS ?=

.PHONY: all deps venv run test lint unit integration system clean

all: test

deps:
	@scripts/ensure-deps build run system

# The venv is rebuilt when the project's metadata changes; systemd-python is an sdist
# and compiles against libsystemd-dev, which `deps` installs first.
$(VENV)/.stamp: pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' ruff
	touch $@

venv: $(VENV)/.stamp

# The echo service, socket-activated exactly as systemd would start it.
run: venv
	@echo "sockpool: waiting on $(ADDR); try: echo hello | nc -N $(subst :, ,$(ADDR))"
	exec systemd-socket-activate -l $(ADDR) --fdname=echo \
	  $(VENV)/bin/sockpool --log-target=stderr $(HANDLER)

lint: venv
	$(VENV)/bin/ruff check service tests bench
	$(VENV)/bin/ruff format --check service tests bench

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
