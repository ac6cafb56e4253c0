# The two commands a newcomer needs: `make demo` and `make test`.
# DATABASE_URL / REDIS_URL unset -> a private PostgreSQL and Redis are started under var/ and stopped after.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
WITH_SERVICES := $(BIN)/python -m sopweb.embedded run --
export PATH := $(BIN):$(PATH)

.PHONY: demo test venv system-deps services-stop clean check-lerobot

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	mkdir -p static/vendor
	cp "$$($(BIN)/python -c 'import plotly, pathlib; print(pathlib.Path(plotly.__file__).parent / "package_data" / "plotly.min.js")')" static/vendor/plotly.min.js
	touch $@

# Debian packages the product needs beside Python: Chromium for the browser tests, OSMesa for offscreen MuJoCo
# rendering of replays on machines without a GPU. Installed when missing (as root, or with password-less sudo).
SYSTEM_PACKAGES := chromium libosmesa6
system-deps:
	@missing=""; \
	for pkg in $(SYSTEM_PACKAGES); do dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "ok installed" || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "Missing Debian packages:$$missing. Install them with: sudo apt-get install -y$$missing" >&2; exit 1; fi; \
	  echo "Installing Debian packages:$$missing"; \
	  $$SUDO apt-get install -y --no-install-recommends $$missing >/dev/null || \
	    { $$SUDO apt-get update -qq && $$SUDO apt-get install -y --no-install-recommends $$missing >/dev/null; }; \
	fi

# The demo shows the fleet learning: every published version goes straight to the robots (SOP's continuous mode).
# ROLLOUT_MODE only seeds the mode: once a supervisor switches it on the Rollouts page, the database keeps that
# choice (and any freeze) across restarts, so a restarted demo runs as they left it.
demo: export ROLLOUT_MODE ?= continuous
# Demo mode: seed_demo may create the demo accounts (known, printed passwords) and the web process serves only on a
# loopback address (accounts/demo.py).
demo: export SOPWEB_DEMO = 1
demo: venv system-deps
	$(WITH_SERVICES) sh -c 'python manage.py reset_metrics && python manage.py ensure_database && python manage.py migrate --noinput && python manage.py prepare_demo && python manage.py demo_robot && exec honcho start'

test: venv system-deps
	lint-imports --no-cache
	$(WITH_SERVICES) sh bin/test-suite $(PYTEST_ARGS)

# The real lerobot 0.4 opens an exported dataset (tests/lerobot_check.py). Its virtualenv is separate: lerobot pins
# a torch of its own (requirements-lerobot.txt). Not part of `make test`.
LEROBOT_VENV := var/lerobot-venv
$(LEROBOT_VENV)/.installed: requirements-lerobot.txt
	test -x $(LEROBOT_VENV)/bin/python || $(PYTHON) -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-lerobot.txt
	touch $@

check-lerobot: venv system-deps $(LEROBOT_VENV)/.installed
	LEROBOT_PYTHON=$(abspath $(LEROBOT_VENV))/bin/python $(WITH_SERVICES) python -m pytest -p no:xdist -p no:cacheprovider -s tests/lerobot_check.py

services-stop:
	$(BIN)/python -m sopweb.embedded stop

clean:
	rm -rf $(VENV) var
