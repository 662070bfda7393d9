# securechat: `make certs && make run` serves; `make test` tests. Needs python3 (3.11+).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# sslyze, the TLS scanner of tests/test_tls_scan.py, lives in a venv of its own: it pins
# an old cryptography, and the tests must run with the newest, the one users get. The
# test looks for it at .venv-scan/bin/sslyze.
SCAN_VENV  := .venv-scan
SCAN_STAMP := $(SCAN_VENV)/.installed
SSLYZE     := sslyze>=6.3,<7

.PHONY: certs run cluster test soak chaos abuse bench bench-cluster lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint,cluster]'
	touch $(STAMP)

# Made when missing. If pip cannot install sslyze, `make test` still runs: the scan skips.
$(SCAN_STAMP):
	rm -rf $(SCAN_VENV)
	( $(PYTHON) -m venv $(SCAN_VENV) && \
	  $(SCAN_VENV)/bin/python -m pip install --quiet --disable-pip-version-check '$(SSLYZE)' && \
	  touch $(SCAN_STAMP) ) || \
	{ rm -rf $(SCAN_VENV); echo "could not install $(SSLYZE) in $(SCAN_VENV): tests/test_tls_scan.py will skip"; }

certs: $(STAMP)
	$(BIN)/securechat certs --dir certs --host localhost --host 127.0.0.1

run: certs
	$(BIN)/securechat server --host 127.0.0.1 --cert certs/server.pem --key certs/server.key --data-dir var --init

# A 3-node cluster on this machine, to try one: a throwaway PostgreSQL and Redis and three
# servers on 127.0.0.1:7001-7003 (CLUSTER_PORT=N moves them); Ctrl-C stops it all.
# docs/operations.md, "A cluster", says how to run one for real.
cluster: certs
	$(BIN)/python tests/cluster_up.py

test: $(STAMP) $(SCAN_STAMP)
	$(BIN)/python -m pytest -q

# The full soak: 200 clients with churn for 60 s (the test suite runs a short one).
soak: $(STAMP)
	SECURECHAT_SOAK_CLIENTS=200 SECURECHAT_SOAK_SECONDS=60 $(BIN)/python -m pytest -q -s tests/test_soak.py

# Tries to break "nothing acknowledged is lost" with real processes: >= 20 server kill -9
# (half aimed at queue drains and commit/ack windows), >= 6 recipient-client kill -9, a full
# tmpfs, damaged databases, 256 fds under 400 connections, clock jumps of +-31 days (apt-get
# installs faketime when it can: root). Prints the figures table; JSON in CHAOS_FIGURES.
CHAOS_FIGURES ?= $(VENV)/chaos-figures.json
chaos: $(STAMP)
	@test -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 || test -e /usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1 || \
		( [ "$$(id -u)" = 0 ] && apt-get install -y -qq faketime >/dev/null ) || \
		echo "faketime not installed (apt-get install faketime): the clock-jump scenario will skip"
	SECURECHAT_CHAOS=long SECURECHAT_CHAOS_FIGURES=$(abspath $(CHAOS_FIGURES)) timeout 900 \
		$(BIN)/python -m pytest -q -s -p no:cacheprovider tests/test_chaos.py

# Attacks a real server and a real client and prints what each attack achieved next to the
# limit that should stop it (queue, connection, prekey, publish, registration and login
# floods, half lines, TLS, a hostile server against `client --json`); fails where a limit
# does not hold. Sources across 127.0.0.0/8 only. JSON in ABUSE_FIGURES; docs/abuse.md.
ABUSE_FIGURES ?= $(VENV)/abuse-figures.json
abuse: $(STAMP)
	SECURECHAT_ABUSE=long SECURECHAT_ABUSE_FIGURES=$(abspath $(ABUSE_FIGURES)) timeout 1200 \
		$(BIN)/python -m pytest -q -s -p no:cacheprovider tests/test_abuse.py

# Every target of issue 14, securechat beside ngIRCd over TLS (and a classroom relay where it
# applies): steady (spread and simultaneous) and burst (3 generator processes), each with the
# generator's two write modes; 5,000 logins one after another (and idle memory), connect,
# whispers (opaque and real clients), 2,000 clients in 100 rooms against one room. 3
# interleaved runs each, about 34 minutes (printed at the start); rewrites the targets table,
# the tables and plot in docs/performance.md and the profiles in benchmarks/profiles/.
# Installs ngircd with apt-get if it can (root), else skips it; py-spy with pip, else no
# profiles. The servers listen on 9400-9499 unless BENCH_PORTS says otherwise;
# BENCH_ARGS=--quick for a 3-minute look (then docs/ are rewritten from it too: add --no-write).
BENCH_PORTS ?=
BENCH_ARGS  ?=
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@test -x $(BIN)/py-spy || $(BIN)/python -m pip install --quiet py-spy || \
		echo "py-spy not installed (pip install py-spy): the comparison will not profile"
	@command -v ngircd >/dev/null || test -x /usr/sbin/ngircd || \
		( [ "$$(id -u)" = 0 ] && apt-get install -y -qq ngircd >/dev/null ) || \
		echo "ngircd not installed (apt-get install ngircd): the comparison will skip it"
	$(BIN)/python benchmarks/compare.py $(if $(BENCH_PORTS),--ports $(BENCH_PORTS)) $(BENCH_ARGS)
	$(BIN)/python benchmarks/cluster.py --write $(CLUSTER_BENCH_ARGS)

# Only the cluster part of `make bench` (~4 minutes): one process against one and two
# nodes on PostgreSQL and Redis, and the model of N nodes, into docs/performance.md.
CLUSTER_BENCH_ARGS ?= --repeat 3 --clients 100 --rate 3 --seconds 10
bench-cluster: $(STAMP)
	$(BIN)/python benchmarks/cluster.py --write $(CLUSTER_BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check securechat tests benchmarks
	$(BIN)/mypy --strict securechat

clean:
	rm -rf $(VENV) $(SCAN_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
