# psd: `make run` starts the daemon on an embedded store, `make test` runs every test.
# Both install what they need on a fresh machine (Debian packages, a venv in .venv/, NSQ in .tools/).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test unit deps system-deps bench clean

# The settings file: CONFIG=path, else conf/settings.toml when it exists, else the defaults; ARGS= adds options.
CONFIG ?= $(wildcard conf/settings.toml)

run: $(STAMP)
	$(VENV)/bin/twistd -n --pidfile= psd $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

test: system-deps $(STAMP) nsq
	PYTHONPATH=. $(PY) -m twisted.trial -j2 tests

unit: $(STAMP)
	PYTHONPATH=. $(PY) -m twisted.trial tests.test_buckets tests.test_validation tests.test_coalesce tests.test_writer tests.test_web \
		tests.test_series tests.test_leaderboard tests.test_compat tests.test_fastjson \
		tests.test_nsq_framing tests.test_nsq_messages tests.test_nsq_protocol tests.test_nsq_consumer

deps: $(STAMP)

$(STAMP): setup.py requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing psd's dependencies into $(VENV) (about 20 s on a fresh machine)"
	$(PY) -m pip install --progress-bar off --upgrade pip
	$(PY) -m pip install --progress-bar off -r requirements-dev.txt
	@echo "installing psd itself into $(VENV), editable: .venv/bin/twistd psd runs this checkout"
	$(PY) -m pip install --progress-bar off --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	touch $(STAMP)

# redis-server (integration tests) and wrk (benchmarks) from Debian's packages.
system-deps:
	@if ! command -v redis-server >/dev/null || ! command -v wrk >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server wrk >/dev/null; \
	fi

bench: system-deps $(STAMP) nsq
	PYTHONPATH=. $(PY) bench/run.py

clean:
	rm -rf $(VENV) .tools _trial_temp* build dist *.egg-info

include mk/nsq.mk
