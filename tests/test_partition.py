"""Partitioned builds: ops hls4ml lacks and layers that do not fit go to the board's CPU (TVM),
the segments are simulated in order (C simulation + TVM host build) and verified against the
reference, and the board libraries are ARM ELF files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec.backends.tvm import elf_machine
from edgec.errors import OptionError, UnsupportedOpsError
from edgec.frontend.load import load_model
from edgec.passes.partition import PlaceNodes, atoms, prepare, split_segments

LAYER_KEYS = {"placement", "implementation", "pruning_ratio", "break_even_ratio"}


def _init(name: str, value: np.ndarray):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def gelu_mlp() -> onnx.ModelProto:
    """Dense 16->32, GELU written with Erf (an op hls4ml lacks), Dense 32->10, Softmax."""
    rng = np.random.default_rng(0)
    inits = [
        _init("w1", rng.normal(0, 0.3, (32, 16))),
        _init("b1", rng.normal(0, 0.1, 32)),
        _init("w2", rng.normal(0, 0.3, (10, 32))),
        _init("b2", rng.normal(0, 0.1, 10)),
        _init("sq", 1 / np.sqrt(2)),
        _init("one", 1.0),
        _init("half", 0.5),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Mul", ["h", "sq"], ["hs"], name="gelu_scale"),
        helper.make_node("Erf", ["hs"], ["he"], name="gelu_erf"),
        helper.make_node("Add", ["he", "one"], ["hp"], name="gelu_add"),
        helper.make_node("Mul", ["h", "hp"], ["hm"], name="gelu_mul"),
        helper.make_node("Mul", ["hm", "half"], ["g"], name="gelu_half"),
        helper.make_node("Gemm", ["g", "w2", "b2"], ["z"], transB=1, name="fc2"),
        helper.make_node("Softmax", ["z"], ["y"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "gelu_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def wide_mlp() -> onnx.ModelProto:
    """Dense 784->512 (401k float weights: more than pynq-z2's block RAM at any reuse factor), ReLU, Dense 512->10."""
    rng = np.random.default_rng(1)
    inits = [
        _init("w1", rng.normal(0, 0.05, (784, 512))),
        _init("b1", np.zeros(512)),
        _init("w2", rng.normal(0, 0.1, (512, 10))),
        _init("b2", np.zeros(10)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="big_fc"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="big_bias"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="small_fc"),
        helper.make_node("Add", ["m2", "b2"], ["y"], name="small_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "wide_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 784])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def cnn_with_resize() -> onnx.ModelProto:
    """Conv-ReLU, a nearest-neighbour Resize (hls4ml's is wrong in C simulation), strided Conv-ReLU, Dense:
    the FPGA segments work channels-last, the CPU segment NCHW."""
    rng = np.random.default_rng(2)
    inits = [
        _init("w1", rng.normal(0, 0.4, (4, 1, 3, 3))),
        _init("b1", rng.normal(0, 0.1, 4)),
        _init("scales", [1, 1, 2, 2]),
        _init("w2", rng.normal(0, 0.3, (6, 4, 3, 3))),
        _init("b2", rng.normal(0, 0.1, 6)),
        _init("w3", rng.normal(0, 0.2, (5, 150))),
        _init("b3", np.zeros(5)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Resize", ["r1", "", "scales"], ["u"], mode="nearest", name="upsample"),
        helper.make_node("Conv", ["u", "w2", "b2"], ["c2"], kernel_shape=[3, 3], strides=[2, 2], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn_resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.heavy
def test_layouts_convert_at_the_seams_of_a_cnn(tmp_path):
    result = edgec.build(cnn_with_resize(), target="pynq-z2", output_dir=tmp_path / "cnn", random_samples=100)
    report = result.report
    segments = report["partition"]["segments"]
    assert [s["placement"] for s in segments] == ["fpga", "cpu", "fpga"] and segments[1]["nodes"] == ["upsample"]
    meta = json.loads((tmp_path / "cnn" / "edgec.json").read_text())
    assert meta["segments"][0]["input_perm"] == [0, 2, 3, 1] and meta["segments"][2]["input_perm"] == [0, 2, 3, 1]  # NCHW -> NHWC in
    # the first FPGA segment hands the CPU NCHW: the seam converts its channels-last output (output_perm), not an FPGA transpose
    assert meta["segments"][1]["input_shape"] == [1, 4, 6, 6] and meta["segments"][1]["output_shape"] == [1, 4, 12, 12]
    assert meta["segments"][0]["output_perm"] == [0, 3, 1, 2]
    assert "Transpose" not in [layer["op"] for layer in report["layers"] if layer["segment"] == "seg0_fpga"]
    ver = report["verification"]
    assert ver["argmax_agreement"] == 1.0 and ver["max_abs_error"] < 0.01


@pytest.fixture(scope="module")
def gelu_build(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gelu") / "build"
    return edgec.build(gelu_mlp(), target="pynq-z2", output_dir=folder)


def test_unsupported_op_in_the_middle_runs_on_the_cpu(gelu_build):
    report = gelu_build.report
    segments = report["partition"]["segments"]
    assert [s["placement"] for s in segments] == ["fpga", "cpu", "fpga"]
    assert segments[1]["nodes"] == ["gelu_scale", "gelu_erf", "gelu_add", "gelu_mul", "gelu_half"]
    assert "hls4ml cannot implement it" in segments[1]["reasons"]["gelu_erf"]
    ver = report["verification"]
    assert ver["simulated_by"] == "C simulation -> TVM host build -> C simulation"
    assert ver["decisive_agreement"] == 1.0 and ver["max_abs_error"] < 0.01
    for layer in report["layers"]:
        assert LAYER_KEYS <= set(layer), layer["name"]
    cpu_layers = [layer for layer in report["layers"] if layer["placement"] == "cpu"]
    assert [layer["name"] for layer in cpu_layers] == segments[1]["nodes"]
    dense = [layer for layer in report["layers"] if layer["op"] == "Dense"]
    assert len(dense) == 2 and all(layer["break_even_ratio"] is not None and layer["implementation"].startswith("fpga") for layer in dense)
    # every implementation choice on the board: an FPGA layer's row also has its r* on the Cortex-A9
    rows = [r for r in report["partition"]["break_even"] if r["placement"] == "fpga"]
    assert len(rows) == 2 and all(set(r["break_even_on_cpu"]) == {"cycles", "resources", "energy"} for r in rows)
    # the fabric is shared: both FPGA segments together stay within the board
    assert all(value <= 1.0 for value in report["totals"]["utilization"].values())
    system = report["partition"]["system"]
    assert system["latency_us"] == pytest.approx(sum(s["latency_us"] for s in report["partition"]["stages"]), rel=1e-6)
    assert system["latency_by_placement_us"]["cpu"] > 0 and system["latency_by_placement_us"]["transfer"] > 0
    assert segments[1]["host_latency_ms"]["median_ms"] > 0


def test_estimate_costs_the_partition_the_build_makes(gelu_build):
    from edgec.pipeline.estimate import estimate

    report = estimate(gelu_mlp(), target="pynq-z2")
    built = gelu_build.report
    assert [s["placement"] for s in report["partition"]["segments"]] == ["fpga", "cpu", "fpga"]
    assert report["totals"]["latency_us"] == pytest.approx(built["totals"]["latency_us"], rel=1e-6)
    assert report["totals"]["energy_uj"] == pytest.approx(built["totals"]["energy_uj"], rel=1e-6)
    assert report["totals"]["resources"] == built["totals"]["resources"]
    assert [layer["placement"] for layer in report["layers"]] == [layer["placement"] for layer in built["layers"]]
    # --place fpga: every op as hls4ml would implement it, with a warning naming the one edgec gives the CPU
    everything = estimate(gelu_mlp(), target="pynq-z2", place="fpga")
    assert "partition" not in everything and any("Erf" in w for w in everything["warnings"])


@pytest.mark.heavy
def test_partitioned_folder_has_board_libraries_and_resimulates(gelu_build, tmp_path):
    folder = gelu_build.output_dir
    assert elf_machine(folder / "cpu" / "seg1_cpu.armv7a.so") == "ARM"
    assert (folder / "hls_seg0_fpga" / "firmware").is_dir() and (folder / "hls_seg2_fpga" / "firmware").is_dir()
    meta = json.loads((folder / "edgec.json").read_text())
    assert [s["placement"] for s in meta["segments"]] == ["fpga", "cpu", "fpga"]
    x = np.random.default_rng(5).normal(size=(20, 16)).astype(np.float32)
    before = gelu_build.predict(x)
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    proc = subprocess.run(
        [sys.executable, "-m", "edgec", "simulate", str(moved), "--data", str(_save(tmp_path, x)), "--output", str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy").reshape(before.shape), before)
    # the board bundle: one AXI-stream IP per FPGA segment in the block design, the ARM library beside the driver
    deploy = folder / "deploy"
    tcl = next(deploy.glob("vivado_*.tcl")).read_text()
    assert "xc7z020clg400-1" in tcl and "seg0_fpga_axis" in tcl and "seg2_fpga_axis" in tcl and "processing_system7" in tcl
    assert elf_machine(deploy / "cpu" / "seg1_cpu.armv7a.so") == "ARM"
    driver = (deploy / "edgec_driver.py").read_text()
    compile(driver, "edgec_driver.py", "exec")
    assert "seg1_cpu.armv7a.so" in driver and gelu_build.report["deploy"]["folder"] == "deploy"
    html = (folder / "report.html").read_text()
    assert 'id="break-even"' in html and 'id="segments"' in html and "seg1_cpu" in html


def _save(tmp_path, x):
    path = tmp_path / "x.npy"
    np.save(path, x)
    return path


def test_place_fpga_refuses_the_op_and_overrides_are_checked(tmp_path):
    with pytest.raises(UnsupportedOpsError, match="gelu_erf"):
        edgec.build(gelu_mlp(), output_dir=tmp_path / "a", place="fpga")
    with pytest.raises(UnsupportedOpsError, match="placed on the FPGA by the user"):
        edgec.build(gelu_mlp(), output_dir=tmp_path / "b", placement={"gelu_erf": "fpga"})
    with pytest.raises(OptionError, match="unknown node"):
        edgec.build(gelu_mlp(), output_dir=tmp_path / "c", placement={"no_such_node": "cpu"})
    assert not any(tmp_path.iterdir())


def test_layer_that_does_not_fit_goes_to_the_cpu(tmp_path):
    result = edgec.build(wide_mlp(), target="pynq-z2", output_dir=tmp_path / "wide", random_samples=60)
    report = result.report
    segments = report["partition"]["segments"]
    assert [s["placement"] for s in segments] == ["cpu", "fpga"]
    assert "big_fc" in segments[0]["nodes"] and "small_fc" in segments[1]["nodes"]
    assert "did not fit the FPGA" in segments[0]["reasons"]["big_fc"]
    assert any("big_fc" in d and "did not fit" in d for d in report["decisions"])
    assert report["verification"]["decisive_agreement"] == 1.0  # (the build itself refuses below 0.99)
    assert elf_machine(tmp_path / "wide" / "cpu" / "seg0_cpu.armv7a.so") == "ARM"
    big = next(layer for layer in report["layers"] if layer["name"] == "big_fc")
    assert big["placement"] == "cpu" and big["implementation"] == "cpu-dense" and big["break_even_ratio"] is not None
    # the CPU layer's break-even row carries r* measured on this machine beside the modelled one
    row = next(r for r in report["partition"]["break_even"] if r["layer"] == "big_fc")
    assert set(row["break_even"]) == {"cycles", "resources", "energy"}
    assert 0.0 < row["measured_host_break_even"]["ratio"] < 1.0


@pytest.mark.heavy
def test_per_node_override_and_quantized_seams(tmp_path, data_dir):
    """TFC-2W2A (QONNX, 2-bit) with its second MatMul forced onto the CPU: quantizers run in TVM
    (exact float rewrites) and the FPGA segments read the CPU's values through their input types."""
    model = load_model(data_dir / "TFC_2W2A.onnx").model
    placed = prepare(model).transform(PlaceNodes("auto", {"MatMul_32": "cpu"}))
    segments = split_segments(placed, atoms(placed))
    assert [s.placement for s in segments] == ["fpga", "cpu", "fpga"]
    mnist = np.load(data_dir / "mnist_test_300.npz")
    result = edgec.build(
        data_dir / "TFC_2W2A.onnx", output_dir=tmp_path / "tfc", data=(mnist["x"][:150], mnist["y"][:150]), placement={"MatMul_32": "cpu"}
    )
    ver = result.report["verification"]
    assert ver["reference"] == "qonnx execution"
    assert ver["argmax_agreement"] == 1.0 and ver["accuracy_simulated"] == ver["accuracy_reference"]


def test_cpu_only_target_builds_the_whole_model_with_tvm(tmp_path):
    from edgec.cli import main

    out = tmp_path / "rpi"
    root = Path(__file__).resolve().parent.parent
    assert (
        main(
            [
                "build",
                str(root / "examples/models/digits_cnn.onnx"),
                "--target",
                "rpi4",
                "--data",
                str(root / "examples/data/digits_test.npz"),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert [s["placement"] for s in report["partition"]["segments"]] == ["cpu"]
    assert report["target"]["part"] is None and report["target"]["cpu"]["name"].startswith("ARM Cortex-A72")
    assert report["verification"]["argmax_agreement"] == 1.0
    assert elf_machine(out / "cpu" / "seg0_cpu.aarch64.so") == "AArch64"
    assert all(layer["placement"] == "cpu" for layer in report["layers"])
    assert "rpi4" in (out / "summary.txt").read_text()
