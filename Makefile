# Two commands do all the set-up on a fresh machine:
#   make run    the main job: a short GPT-2 training run on the embedded `local` provider
#   make test   the whole test suite (installs sshd, rsync and PostgreSQL when missing and run as root)
# On a machine without a GPU the CPU build of torch is installed; on a GPU box: make TORCH=torch run
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
# pytest-xdist: eight workers, each in a session of its own (tests/conftest.py; docs/ARCHITECTURE.md,
# "How the suite shares two cores"), handed one test at a time, longest first (tests/durations.json,
# tests/plugins/longest_first.py) so that no long test is left to run alone at the end. Most of the
# long tests wait out a budget window: eight of them at once finish sooner than six (docs/PERFORMANCE.md).
PYTEST_ARGS ?= -n 8 --dist load --maxschedchunk 1

.PHONY: setup sysdeps run test durations lint bench clean

$(BIN)/gpurun: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[train,test,plot]'
	touch $@

setup: $(BIN)/gpurun

# Real OpenSSH + rsync are what the transport tests run against; Debian's Chromium is the browser
# the dashboard's test drives (through Playwright, from the test extra: no browser is downloaded); a
# real PostgreSQL server (Debian's `postgresql`: the tests start a throwaway cluster from its
# binaries, tests/fixtures/postgres.py) is what the shared-ledger tests run against.
sysdeps:
	@if [ ! -x /usr/sbin/sshd ] || ! command -v rsync >/dev/null || [ ! -x /usr/bin/chromium ] \
		|| ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server openssh-client rsync chromium postgresql; \
		else echo "sshd/rsync/chromium/postgresql missing: sudo apt-get install openssh-server rsync chromium postgresql" >&2; exit 1; fi; \
	fi

run: setup
	$(BIN)/gpurun launch --provider local --max-usd 0.02 --usd-per-hour 1.2 --yes

# Bytecode caches on, whatever the shell says (PYTHONDONTWRITEBYTECODE=1 on some machines): the suite
# starts some 400 Python processes (CLIs, trainers, guards); without caches each of them compiles its
# imports from source again. One collection first writes every test module's assert-rewritten
# bytecode, which the eight workers then load instead of each rewriting them all (7.6 -> 3.6 CPU-s a
# worker); an error in it is left for the real run to report.
test: setup sysdeps
	$(BIN)/ruff check .
	-PYTHONDONTWRITEBYTECODE= $(BIN)/pytest --collect-only -qq >/dev/null 2>&1
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest $(PYTEST_ARGS)

# Re-measure tests/durations.json (each test's wall time) after adding long tests.
durations: setup sysdeps
	-PYTHONDONTWRITEBYTECODE= $(BIN)/pytest --collect-only -qq >/dev/null 2>&1
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest $(PYTEST_ARGS) --store-durations

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
