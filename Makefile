# `make demo` sets everything up and builds the bundled example for pynq-z2; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup lint clean benchmark chromium cross

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP) cross
	$(VENV)/bin/edgec targets
	$(VENV)/bin/edgec inspect examples/models/digits_cnn.onnx
	$(VENV)/bin/edgec estimate examples/models/digits_cnn.onnx --target pynq-z2
	$(VENV)/bin/edgec build examples/models/digits_cnn.onnx --target pynq-z2 --data examples/data/digits_test.npz -o build/digits_cnn --force
	# the same CNN with a LogSoftmax head (examples/make_partitioned_example.py): FPGA + the board's CPU (TVM, ARM library in cpu/)
	$(VENV)/bin/edgec build examples/models/digits_cnn_logsoftmax.onnx --target pynq-z2 --data examples/data/digits_test.npz -o build/digits_cnn_logsoftmax --force

# headless Chromium renders report.html in tests/test_html_report.py (Debian package; needs root for apt-get)
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)

# Debian's ARM cross compilers link the CPU partitions' TVM libraries for the boards (edgec/backends/tvm.py:
# ARMv7 hard-float for the Zynq-7000's Cortex-A9, AArch64 for the UltraScale+ A53s and the Raspberry Pi 4; needs root for apt-get)
cross:
	command -v arm-linux-gnueabihf-g++ >/dev/null && command -v aarch64-linux-gnu-g++ >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++-arm-linux-gnueabihf g++-aarch64-linux-gnu)

test: $(STAMP) chromium cross
	$(VENV)/bin/ruff check edgec tests benchmarks examples
	$(PY) -m pytest -q tests

benchmark: $(STAMP)
	$(PY) benchmarks/edgec_vs_hls4ml.py
	$(PY) benchmarks/costval_validation.py --table
	$(PY) benchmarks/pruning.py --table
	$(PY) benchmarks/quantization.py --table
	$(PY) benchmarks/partition.py --table
	$(PY) benchmarks/cpu_break_even.py --table

clean:
	rm -rf build .pytest_cache
