# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
# Both create the virtual environment .venv and install telesketch into it on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,llm,plot,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/telesketch demo

test: $(STAMP)
	$(BIN)/pytest -m "not slow" -q

test-all: $(STAMP)
	$(BIN)/pytest -q

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/telesketch/v1/*.proto

clean:
	rm -rf $(VENV) build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
