"""sockpool's benchmark harness: load generator, peer servers, scenarios, report.

Run everything with `make bench` (results in bench/results/), a seconds-long check
with `make bench-smoke`. Nothing here is imported by sockpool itself.
"""
