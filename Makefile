# `make demo` sets everything up and builds the bundled example for pynq-z2; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast setup lint clean benchmark chromium cross

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

test: $(STAMP) chromium cross lint
	$(PY) -m pytest -q tests

# the loop while working (under 3 minutes on 2 cores): lint and every test that compiles nothing
# (no hls4ml C simulation, no TVM module) and takes under about 2 s; `make test` runs everything
test-fast: $(STAMP) lint
	$(PY) -m pytest -q -m "not slow and not heavy" tests

# ruff's checks and its formatter, without changing anything (what `make test` and `make test-fast` start with)
lint: $(STAMP)
	$(VENV)/bin/ruff check edgec tests benchmarks examples
	$(VENV)/bin/ruff format --check edgec tests benchmarks examples

benchmark: $(STAMP)
	$(PY) benchmarks/edgec_vs_hls4ml.py
	$(PY) benchmarks/costval_validation.py --table
	$(PY) benchmarks/pruning.py --table
	$(PY) benchmarks/quantization.py --table
	$(PY) benchmarks/partition.py --table
	$(PY) benchmarks/cpu_break_even.py --table

clean:
	rm -rf build .pytest_cache

# ONNX/QONNX corpus (tests/corpus, benchmarks/corpus/README.md): the TensorFlow exporters live in their own venvs
KERAS2 := .venv-keras2
KERAS3 := .venv-keras3
CORPUS_GEN := benchmarks/corpus

.PHONY: corpus corpus-envs

$(KERAS2)/.installed: $(CORPUS_GEN)/requirements-keras2.txt
	rm -rf $(KERAS2)
	$(PYTHON) -m venv $(KERAS2)
	$(KERAS2)/bin/pip install -q --upgrade pip
	$(KERAS2)/bin/pip install -q -r $(CORPUS_GEN)/requirements-keras2.txt
	$(KERAS2)/bin/pip check
	touch $@

$(KERAS3)/.installed: $(CORPUS_GEN)/requirements-keras3.txt
	rm -rf $(KERAS3)
	$(PYTHON) -m venv $(KERAS3)
	$(KERAS3)/bin/pip install -q --upgrade pip
	$(KERAS3)/bin/pip install -q -r $(CORPUS_GEN)/requirements-keras3.txt
	$(KERAS3)/bin/pip check
	touch $@

corpus-envs: $(KERAS2)/.installed $(KERAS3)/.installed

# regenerates every model, data file and the manifest (float/QAT training is seeded), then checks them
corpus: $(STAMP) corpus-envs
	rm -rf tests/corpus/models tests/corpus/data tests/corpus/fragments
	$(PY) $(CORPUS_GEN)/gen_torch.py
	$(PY) $(CORPUS_GEN)/gen_brevitas.py
	$(KERAS2)/bin/python $(CORPUS_GEN)/gen_keras2.py
	$(KERAS2)/bin/python $(CORPUS_GEN)/gen_qkeras.py
	$(KERAS3)/bin/python $(CORPUS_GEN)/gen_keras3.py
	$(PY) $(CORPUS_GEN)/gen_ort_quant.py
	$(PY) $(CORPUS_GEN)/finalize.py
	mkdir -p build
	$(PY) $(CORPUS_GEN)/check_corpus.py > build/corpus-check.json || (cat build/corpus-check.json; exit 1)
	@tail -n 8 build/corpus-check.json
