# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
# Both create the virtual environment .venv and install telesketch into it on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo lint test test-all bench proto clean gpu-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,llm,plot,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/telesketch demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/pytest -m "not slow" -q --durations=20

test-all: $(STAMP)
	$(BIN)/pytest -q

# On a machine with a CUDA device: the GPU twins' equality tests in-process on the device (the
# simulator copies are skipped), the compile check, then a short benchmark table (< 8 minutes).
gpu-check: $(STAMP)
	$(BIN)/pip install --quiet -e ".[gpu,dev,llm,plot,ray]"
	$(BIN)/python -c "from telesketch.gpu.core import backend; print('GPU backend:', backend().name, backend().device_name())"
	$(BIN)/pytest -q -m gpu -k "in_process or compile" tests/
	cd benchmarks && ../$(BIN)/python bench_gpu.py --quick

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/telesketch/v1/*.proto

clean:
	rm -rf $(VENV) build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
