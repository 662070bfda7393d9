# securechat: `make certs && make run` serves; `make test` tests. Needs python3 (3.11+).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: certs run test soak lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

certs: $(STAMP)
	$(BIN)/securechat certs --dir certs --host localhost --host 127.0.0.1

run: certs
	$(BIN)/securechat server --host 127.0.0.1 --port 7443 --cert certs/server.pem --key certs/server.key --data-dir var

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The full soak: 200 clients with churn for 60 s (the test suite runs a short one).
soak: $(STAMP)
	SECURECHAT_SOAK_CLIENTS=200 SECURECHAT_SOAK_SECONDS=60 $(BIN)/python -m pytest -q -s tests/test_soak.py

lint: $(STAMP)
	$(BIN)/ruff check securechat tests
	$(BIN)/mypy --strict securechat

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
