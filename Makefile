# The two commands a newcomer needs: `make demo` and `make test`.
# DATABASE_URL / REDIS_URL unset -> a private PostgreSQL and Redis are started under var/ and stopped after.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
WITH_SERVICES := $(BIN)/python -m sopweb.embedded run --
export PATH := $(BIN):$(PATH)

.PHONY: demo test venv services-stop clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	mkdir -p static/vendor
	cp "$$($(BIN)/python -c 'import plotly, pathlib; print(pathlib.Path(plotly.__file__).parent / "package_data" / "plotly.min.js")')" static/vendor/plotly.min.js
	touch $@

# The demo shows the fleet learning: every published version goes straight to the robots (SOP's continuous mode).
demo: export ROLLOUT_MODE ?= continuous
demo: venv
	$(WITH_SERVICES) sh -c 'python manage.py ensure_database && python manage.py migrate --noinput && python manage.py prepare_demo && exec honcho start'

test: venv
	$(WITH_SERVICES) python -m pytest $(PYTEST_ARGS)

services-stop:
	$(BIN)/python -m sopweb.embedded stop

clean:
	rm -rf $(VENV) var
