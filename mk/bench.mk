# Benchmarks (issue 4): `make bench` measures sockpool against its peers on this machine
# and writes bench/results/RESULTS.md and bench/results/bench.png (about 22 minutes on 2 cores);
# `make bench-smoke` runs the same harness for seconds, into bench/results/raw/smoke.
# BENCH_ARGS passes options to `python -m bench.run` (--rounds, --duration, --workers,
# --scenarios, --servers, --no-container; see --help).

BENCH_ARGS ?=
# The peers of issue 13's web scenarios: gunicorn (sync and gthread workers) and uvicorn with
# its C parts (httptools, uvloop); Flask and Starlette come with the test extra. py-spy
# samples the dispatcher for `make bench-profile`.
BENCH_PIP := gunicorn>=22 matplotlib>=3.7 uvicorn[standard]>=0.30 py-spy>=0.4
PROFILE_ARGS ?=

.PHONY: bench bench-smoke bench-deps bench-report bench-profile

bench-deps: venv $(VENV)/.bench-stamp
	@scripts/ensure-deps bench

# Bench-only Python packages go into the venv, not into the project's dependencies, at the
# versions constraints.txt pins (`make repin` moves them with the rest).
$(VENV)/.bench-stamp: $(VENV)/.stamp mk/bench.mk
	$(PY) -m pip install -q -c constraints.txt $(foreach p,$(BENCH_PIP),'$(p)')
	touch $@

bench: bench-deps
	$(PY) -m bench.run $(BENCH_ARGS)

bench-smoke: bench-deps
	$(PY) -m bench.run --smoke --out bench/results/raw/smoke $(BENCH_ARGS)

# Re-render the table and plot from bench/results/results.json without measuring again.
bench-report: bench-deps
	$(PY) -m bench.report bench/results/results.json

# Issue 14: where the dispatcher's CPU per connection goes under echo churn (py-spy flame
# graph and top functions, perf stat/trace/record per connection), sockpool beside the plain
# loop, into bench/results/profile/ (about 2 minutes; its README.md says how to read it).
# PROFILE_ARGS passes options to `python -m bench.profile` (--duration, --workers, --servers).
bench-profile: bench-deps
	$(PY) -m bench.profile $(PROFILE_ARGS)
