# laserhost: the two set-up commands are `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SYSTEM_PACKAGES := socat mosquitto openssl chromium  # chromium: the report test opens report.html headless

.PHONY: demo test bench soak sysdeps venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard cython_ext/*.pyx)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "laserhost needs Python 3.11 or newer, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 'setuptools>=64' wheel
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The tests start real socat pty pairs and a real mosquitto. As root we install them;
# otherwise we say, in one line, what to install.
sysdeps:
	@missing=""; \
	for p in $(SYSTEM_PACKAGES); do \
	  command -v $$p >/dev/null 2>&1 || test -x /usr/sbin/$$p || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "laserhost: missing system packages:$$missing; install them with: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q

# The demo needs only mosquitto (for the live console), and goes on without it: sysdeps installs it
# when run as root; otherwise the demo says in one line that it runs without telemetry.
demo: $(STAMP)
	@$(MAKE) -s --no-print-directory sysdeps SYSTEM_PACKAGES=mosquitto 2>/dev/null || true
	$(BIN)/python -m controller.demo

# An hour of device time through real processes, reporting laserd's RSS growth and cycle drift.
soak: $(STAMP) sysdeps
	LASERHOST_SOAK=1 $(BIN)/python -m pytest -q hil_tests/test_soak.py

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info cython_ext/*.c cython_ext/*.so bench/results
