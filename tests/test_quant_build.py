"""Quantization through the build: --quantize, and bit-exact C-simulation of quantized models."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgec

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.heavy
def test_cli_quantize_fixed_8_is_bit_exact(tmp_path):
    out = tmp_path / "q8"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgec",
            "build",
            str(REPO / "examples/models/digits_cnn.onnx"),
            "--data",
            str(REPO / "examples/data/digits_test.npz"),
            "--quantize",
            "fixed:bits=8",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    record = report["passes"][0]
    assert record["name"] == "fixed" and record["params"]["bits"] == 8
    assert abs(record["accuracy_before"] - record["accuracy_after"]) <= 0.02
    ver = report["verification"]
    assert ver["reference"] == "qonnx execution"
    assert ver["bit_exact"] is True and ver["max_lsb_error"] == 0
    assert any(line.startswith("quantize fixed:bits=8") for line in report["decisions"])


@pytest.mark.heavy
def test_raw_float_inputs_round_once_like_the_input_quantizer(tmp_path, data_dir):
    """MNIST pixels are not on an 8-bit input quantizer's grid: the C-sim must round them exactly
    as the quantizer does (half to even, once), so the quantized CNN stays bit-exact."""
    data = np.load(data_dir / "mnist_test_300.npz")
    x, y = data["x"].reshape(-1, 1, 28, 28).astype(np.float32), data["y"]
    result = edgec.build(
        REPO / "examples/models/mnist_cnn.onnx", target="zcu104", output_dir=tmp_path / "mnist", data=(x, y), quantize=["fixed:bits=8"]
    )
    ver = result.report["verification"]
    assert ver["bit_exact"] is True and ver["max_lsb_error"] == 0 and ver["argmax_agreement"] == 1.0
