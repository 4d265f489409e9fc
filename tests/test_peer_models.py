"""Every real model from other projects builds, compiles with g++ and agrees with the reference."""

import json
import subprocess
import sys

import numpy as np
import pytest

import edgec

PEERS = ["three_layer_keras", "three_layer_pytorch", "conv2d_small_keras", "bnn_model_fc_1layer"]


@pytest.mark.heavy
@pytest.mark.parametrize("name", PEERS)
def test_peer_model_builds_and_verifies(name, data_dir, tmp_path):
    result = edgec.build(data_dir / f"{name}.onnx", target="pynq-z2", output_dir=tmp_path / name)
    ver = result.report["verification"]
    assert ver["decisive_agreement"] == 1.0  # (the build itself refuses below 0.99)
    if name != "three_layer_pytorch":  # its outputs are near-uniform on random inputs: ties (see below)
        assert ver["argmax_agreement"] >= 0.99
    assert ver["n_samples"] == 200
    if name == "bnn_model_fc_1layer":  # a quantized model: the C-sim is on the quantized reference's grid
        assert ver["bit_exact"] is True and ver["max_lsb_error"] == 0
    else:
        assert ver["bit_exact"] is None and ver["max_lsb_error"] is None  # float models have no grid to be exact on
    assert (
        tmp_path
        / name
        / "hls"
        / "firmware"
        / f"{result.report['layers'] and json.loads((tmp_path / name / 'edgec.json').read_text())['project_name']}.cpp"
    ).is_file()
    assert (tmp_path / name / "model.edgec.onnx").is_file()
    assert list((tmp_path / name / "hls" / "firmware").glob("*.so"))
    assert (tmp_path / name / "hls" / "build_prj.tcl").is_file()


@pytest.mark.heavy
def test_tfc_2w2a_csim_accuracy_equals_qonnx_on_mnist(data_dir, tmp_path):
    out = tmp_path / "tfc"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgec",
            "build",
            str(data_dir / "TFC_2W2A.onnx"),
            "--data",
            str(data_dir / "mnist_test_300.npz"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    ver = report["verification"]
    assert ver["reference"] == "qonnx execution"
    assert ver["accuracy_simulated"] == ver["accuracy_reference"]
    assert ver["accuracy_reference"] > 0.95
    assert ver["argmax_agreement"] == 1.0
    # the BatchNorm + 2-bit quantizer pairs were lowered exactly
    exact = [p for p in report["passes"] if p["name"] == "edgec.ExactRequantization"][0]
    assert len([d for d in exact["details"] if "layer" in d]) == 3
    assert "accuracy reference" in proc.stdout


def test_bnn_output_is_bit_exact(data_dir, tmp_path):
    result = edgec.build(data_dir / "bnn_model_fc_1layer.onnx", output_dir=tmp_path / "bnn")
    assert result.report["verification"]["max_abs_error"] == 0.0
    x = np.array([[0.3, -1.2, 0.7]], dtype=np.float32)
    assert set(np.unique(result.predict(x))) <= {-1.0, 1.0}


@pytest.mark.heavy
def test_near_ties_are_told_apart_from_disagreements(data_dir, tmp_path):
    # three_layer_pytorch gives near-uniform probabilities on random inputs (median top-2 margin
    # ~3e-3): classes closer than one step of the exponential table are ties, not errors.
    result = edgec.build(data_dir / "three_layer_pytorch.onnx", output_dir=tmp_path / "t")
    ver = result.report["verification"]
    assert ver["max_abs_error"] < 2e-3
    assert ver["near_ties"] == round((1 - ver["argmax_agreement"]) * ver["n_samples"])
    assert ver["decisive_agreement"] == 1.0


def test_compare_counts_only_resolvable_disagreements():
    from edgec.verify import compare

    ref = np.array([[0.5, 0.4999, 0.0], [0.9, 0.1, 0.0], [0.2, 0.7, 0.1]])
    sim = np.array([[0.49, 0.5, 0.0], [0.1, 0.9, 0.0], [0.2, 0.7, 0.1]])
    result = compare(ref, sim, np.array([0, 0, 1]), resolution=1e-3)
    assert result["argmax_agreement"] == 1 / 3
    assert result["near_ties"] == 1
    assert result["decisive_agreement"] == 0.5
    assert result["accuracy_reference"] == 1.0 and result["accuracy_simulated"] == 1 / 3
