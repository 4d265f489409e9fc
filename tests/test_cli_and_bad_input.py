"""The CLI's contract: clear one-line errors with distinct exit codes, and no half-written folders."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgec", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def assert_clean_failure(proc, code, *fragments):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert line.count("\n") == 0, line
    for fragment in fragments:
        assert fragment in line


def dense_model(n_in=4, n_out=3, dynamic=None, names=None):
    names = names or {}
    x = names.get("x", "x")
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n_in, n_out)).astype(np.float32), names.get("w", "w"))
    b = numpy_helper.from_array(np.zeros(n_out, np.float32), names.get("b", "b"))
    dims = ["N", dynamic or n_in] if dynamic else ["N", n_in]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [x, w.name], ["mm"], name=names.get("mm", "mm")),
            helper.make_node("Add", ["mm", b.name], ["y"], name=names.get("add", "add")),
            helper.make_node("Relu", ["y"], [names.get("out", "out")], name=names.get("relu", "relu")),
        ],
        "g",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(names.get("out", "out"), TensorProto.FLOAT, ["N", n_out])],
        initializer=[w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_missing_file(tmp_path):
    proc = run("build", tmp_path / "nope.onnx", "-o", tmp_path / "out")
    assert_clean_failure(proc, 10, "no such file")
    assert not (tmp_path / "out").exists()


def test_not_onnx(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("hello, this is not a model\n")
    assert_clean_failure(run("build", bad, "-o", tmp_path / "out"), 11, "not an ONNX model")


def test_truncated_onnx(tmp_path, data_dir):
    data = (data_dir / "three_layer_keras.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    assert_clean_failure(run("build", cut, "-o", tmp_path / "out"), 12, "truncated")


@pytest.mark.heavy
def test_unsupported_ops_are_all_listed(tmp_path):
    graph = helper.make_graph(
        [
            helper.make_node("Resize", ["x", "", "scales"], ["r"], name="upsample_1"),
            helper.make_node("ConvTranspose", ["r", "w"], ["y"], name="deconv_1"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 10, 10])],
        initializer=[
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
            numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w"),
        ],
    )
    path = tmp_path / "unsupported.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    # on the FPGA alone (--place fpga) every op hls4ml lacks is listed at once; --place auto would run them on the CPU
    proc = run("build", path, "--place", "fpga", "-o", tmp_path / "out")
    assert_clean_failure(proc, 13, "upsample_1", "Resize", "deconv_1", "ConvTranspose", "--place auto")
    assert not (tmp_path / "out").exists()
    inspect = run("inspect", path)
    assert inspect.returncode == 0 and "cannot lower" in inspect.stdout


def test_non_batch_dynamic_dimension(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(dense_model(dynamic="features"), path)
    assert_clean_failure(run("build", path, "-o", tmp_path / "out"), 14, "dynamic dimension 'features'", "x")


@pytest.mark.heavy
def test_model_too_large_for_target(tmp_path):
    path = tmp_path / "huge.onnx"
    onnx.save(dense_model(n_in=2048, n_out=2048), path)
    proc = run("build", path, "--target", "arty-a7-100t", "-o", tmp_path / "out")
    assert_clean_failure(proc, 15, "does not fit arty-a7-100t")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.edgec-*"))


@pytest.mark.heavy
def test_existing_output_needs_force(tmp_path, data_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run("build", data_dir / "bnn_model_fc_1layer.onnx", "-o", out)
    assert_clean_failure(proc, 16, "already exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"
    forced = run("build", data_dir / "bnn_model_fc_1layer.onnx", "-o", out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (out / "keep.txt").exists() and (out / "report.json").is_file()


@pytest.mark.heavy
def test_verification_failure_exits_3_and_names_layer(tmp_path, data_dir):
    # 4-bit types cannot carry this MLP: the build must fail verification, name a layer, leave nothing.
    proc = run("build", data_dir / "three_layer_keras.onnx", "--width", "4", "-o", tmp_path / "out")
    assert_clean_failure(proc, 3, "first diverging layer")
    assert not (tmp_path / "out").exists()


@pytest.mark.heavy
def test_hostile_names_are_sanitized(tmp_path):
    names = {
        "x": "in'put; rm -rf /",
        "w": '../../w eight"',
        "b": "b;ias",
        "mm": "mat mul'; DROP",
        "add": "../add",
        "relu": 're"lu',
        "out": "out put;",
    }
    path = tmp_path / "weird names.onnx"
    onnx.save(dense_model(names=names), path)
    out = tmp_path / "out"
    proc = run("build", path, "-o", out)
    assert proc.returncode == 0, proc.stderr
    generated = [
        p
        for p in (out / "hls").rglob("*")
        if p.suffix in (".cpp", ".h", ".tcl", ".sh") and "nnet_utils" not in p.parts and "ap_types" not in p.parts
    ]
    assert generated
    for file in generated:
        text = file.read_text(errors="replace")
        for raw in ("rm -rf", "DROP", "../../w eight", "../add", "in'put", "b;ias", "out put;"):
            assert raw not in text, (file, raw)


@pytest.mark.heavy
def test_targets_and_inspect(data_dir):
    proc = run("targets")
    assert proc.returncode == 0
    for board, part in [
        ("pynq-z2", "xc7z020clg400-1"),
        ("zcu104", "xczu7ev"),
        ("ultra96v2", "xczu3eg"),
        ("kv260", "xck26"),
        ("arty-a7-100t", "xc7a100t"),
    ]:
        assert board in proc.stdout and part in proc.stdout
    info = run("inspect", data_dir / "TFC_2W2A.onnx")
    assert info.returncode == 0
    assert "weights int2" in info.stdout and "every op can be lowered" in info.stdout


@pytest.mark.heavy
def test_simulate_reports_agreement_and_accuracy(tmp_path, data_dir):
    out = tmp_path / "b"
    assert run("build", data_dir / "TFC_2W2A.onnx", "-o", out, "--data", data_dir / "mnist_test_300.npz").returncode == 0
    proc = run("simulate", out, "--data", data_dir / "mnist_test_300.npz")
    assert proc.returncode == 0, proc.stderr
    assert "argmax agreement with qonnx execution 100.00%" in proc.stdout and "accuracy" in proc.stdout
    bad = run("simulate", tmp_path, "--data", data_dir / "mnist_test_300.npz")
    assert_clean_failure(bad, 21, "not an edgec build folder")


@pytest.mark.heavy
@pytest.mark.parametrize("payload", ["wrong_shape", "not_numpy"])
def test_bad_data_file(tmp_path, data_dir, payload):
    data = tmp_path / "d.npz"
    if payload == "wrong_shape":
        np.savez(data, x=np.zeros((3, 5), np.float32))
    else:
        data.write_text("nope")
    assert_clean_failure(run("build", data_dir / "bnn_model_fc_1layer.onnx", "--data", data, "-o", tmp_path / "o"), 17)
