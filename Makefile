# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
# Both create the virtual environment .venv and install telesketch into it on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo lint test test-all bench proto clean gpu-check gpu-extra-check

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

# On a machine with a CUDA device: one prepared script (< 8 minutes): the GPU twins' equality tests
# in-process on the device and the compile check, then bench_gpu.py --quick, then a short table.
# GPU_CHECK_DRY_RUN=1 make gpu-check runs the same script under the CUDA simulator (no device).
gpu-check: $(STAMP)
	[ "$${GPU_CHECK_DRY_RUN:-0}" = 1 ] || $(BIN)/pip install --quiet -e ".[gpu,dev,llm,plot,ray]"
	PYTHON=$(BIN)/python benchmarks/gpu_check.sh

# CI (no GPU): the [gpu] extra resolves (pip install --dry-run) to one CUDA major version, and
# every kernel compiles for sm_80 and sm_90 with the real compiler (no device needed).
# -s: the compile check prints how many kernels and signatures it compiled.
gpu-extra-check: $(STAMP)
	$(BIN)/pytest -q -s -p no:cacheprovider tests/test_gpu_extra.py tests/test_gpu_compile.py

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/telesketch/v1/*.proto

clean:
	rm -rf $(VENV) build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
