# psd: `make run` starts the daemon on an embedded store, `make test` runs every test.
# Both install what they need on a fresh machine (Debian packages, a venv in .venv/, NSQ in .tools/).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test unit deps system-deps bench clean

run: $(STAMP)
	PYTHONPATH=. $(VENV)/bin/twistd -n --pidfile= psd

test: system-deps $(STAMP) nsq
	PYTHONPATH=. $(PY) -m twisted.trial -j2 tests

unit: $(STAMP)
	PYTHONPATH=. $(PY) -m twisted.trial tests.test_buckets tests.test_validation tests.test_coalesce tests.test_writer tests.test_web \
		tests.test_series tests.test_leaderboard tests.test_compat tests.test_fastjson \
		tests.test_nsq_framing tests.test_nsq_messages tests.test_nsq_protocol tests.test_nsq_consumer

deps: $(STAMP)

$(STAMP): setup.py requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
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
