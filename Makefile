# The two entry points of the README.  Each does its own set-up.
.PHONY: setup demo demo-httpd test check lint bench docs clean

PY := .venv/bin/python
# Tests share one kernel cache across the session; CI starts empty.
export UKL_BUILD_CACHE ?= $(CURDIR)/.cache/ukl-build

setup:
	bash scripts/setup.sh

# Build example_apps/hello into a unikernel and boot it under QEMU (TCG).
# The app exits with status 3 on purpose; the demo checks that it did.
demo: setup
	$(PY) -m ukl_build build example_apps/hello
	$(PY) -m ukl_build run example_apps/hello --accel tcg --timeout 120; \
	  status=$$?; echo "demo: the unikernel exited with status $$status (expected 3)"; \
	  test $$status -eq 3

# Build the HTTP server, boot it with port 8080 forwarded, fetch a page, stop it.
demo-httpd: setup
	bash scripts/demo-httpd.sh

# The whole suite (what CI runs): two workers, since QEMU under TCG uses one core and
# boots can run beside each other and beside kernel builds (tests/conftest.py says
# which tests stay together).  WORKERS=0 runs it in one process.
WORKERS ?= 2
XDIST = $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadgroup --no-loadscope-reorder)

test: lint
	$(PY) -m pytest -v --durations=40 $(XDIST)

# The edit-compile loop: lint, types and the unit tests; no kernel tree, build or boot.
check: lint
	$(PY) -m pytest -q -m "not kernel"

lint: setup
	$(PY) -m ruff check ukl_build tests benchmarks
	$(PY) -m mypy

# UKL vs user mode (vs Debian's cloud kernel), side by side; see docs/performance.md.
bench: setup
	$(PY) -m benchmarks all --json benchmarks/results.json

docs: setup
	$(PY) -m ukl_build schema > docs/configuration.md

clean:
	rm -rf .venv .cache build example_apps/*/build example_apps/*/dist
