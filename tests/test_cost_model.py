"""Cost models: estimates against real synthesis reports, on every target, and the CLI contract."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec.pipeline.costval import FIGURES, load_cases, summarize, validate_case
from edgec.pipeline.design import DesignOptions
from edgec.pipeline.estimate import estimate
from edgec.targets import load_target, target_names

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "models" / "digits_cnn.onnx"
PEERS = ["three_layer_keras", "three_layer_pytorch", "conv2d_small_keras", "bnn_model_fc_1layer", "TFC_2W2A"]
LAYER_COST_KEYS = {"cycles", "ii", "latency_ns", "resources", "energy_nj"}
TOTAL_KEYS = {"cycles", "latency_us", "ii", "throughput_fps", "resources", "utilization", "energy_uj", "edp"}


@pytest.mark.heavy
def test_estimates_match_the_costval_synthesis_reports(data_dir):
    """Each of the 24 real HLS reports: latency within max(2 cycles, 15%), LUT/FF/DSP within 25%
    on at least 80% of designs (issue 3's aim); every design is estimated."""
    cases = load_cases(data_dir / "costval" / "cases.json")
    assert len(cases) == 24
    rows = [validate_case(case, data_dir / "costval" / "models") for case in cases]
    summary = summarize(rows)
    for figure in ("latency", "lut", "ff", "dsp"):
        assert summary[figure]["within_aim"] >= 0.8, (figure, summary[figure], [r["id"] for r in rows if not r["within"][figure]])
    # the structure, not only the fit: a Conv2D's II is its 49 output pixels, a depthwise stream
    # conv reads its 1024 pixels, and the divider of an exclusive average pool shows up
    by_id = {r["id"]: r for r in rows}
    assert by_id["Vivado-2020.1-conv2d_io_parallel-Resource-same-channels_last"]["estimate"]["ii"] == 49
    assert by_id["Vivado-2020.1-depthwise2d_io_stream"]["estimate"]["latency"] >= 1024
    same = by_id["Vivado-2020.1-pooling-channels_last-same-AveragePooling2D"]["estimate"]
    valid = by_id["Vivado-2020.1-pooling-channels_last-valid-AveragePooling2D"]["estimate"]
    assert same["latency"] > 15 and same["lut"] > 5 * valid["lut"]
    assert set(FIGURES) <= set(rows[0]["estimate"])


@pytest.mark.heavy
@pytest.mark.parametrize("target", [name for name in target_names() if load_target(name).has_fpga])
def test_every_layer_of_the_example_and_peers_is_estimated_on_every_target(target, data_dir):
    for model in [EXAMPLE] + [data_dir / f"{name}.onnx" for name in PEERS]:
        report = estimate(model, target=target)
        assert report["layers"], model
        for layer in report["layers"]:
            assert LAYER_COST_KEYS <= set(layer), (model, layer["name"])
            assert layer["cycles"] >= 0 and layer["ii"] >= 1 and layer["energy_nj"] >= 0
        totals = report["totals"]
        assert TOTAL_KEYS <= set(totals)
        assert totals["cycles"] >= 0 and totals["energy_uj"] > 0 and totals["throughput_fps"] > 0  # a tiny design can be combinational
        assert totals["resources"]["lut"] > 0
        assert report["cost_model"]["version"] and report["cost_model"]["sources"]
        assert totals["edp"] == pytest.approx(totals["energy_uj"] * totals["latency_us"], rel=1e-6)


@pytest.mark.heavy
def test_estimate_cli_json_is_only_json_and_carries_the_totals():
    proc = subprocess.run(
        [sys.executable, "-m", "edgec", "estimate", str(EXAMPLE), "--target", "pynq-z2", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(proc.stdout)
    assert isinstance(report["totals"]["cycles"], int)
    assert set(report["totals"]["resources"]) == {"lut", "ff", "dsp", "bram18"}
    assert report["layers"] and report["verification"] is None


def test_overrides_reproduce_a_published_configuration(data_dir):
    model = data_dir / "costval" / "models" / "Vivado-2020.1-report_dense16to5_relu_stream_z7020.onnx"
    base = estimate(model, target="zcu104", options=DesignOptions(precision="fixed<16,6>", io_type="io_stream"))
    z7020 = estimate(
        model, target="zcu104", options=DesignOptions(part="xc7z020clg400-1", clock_ns=5, precision="fixed<16,6>", io_type="io_stream")
    )
    assert z7020["target"]["part"] == "xc7z020clg400-1" and z7020["totals"]["available"]["dsp"] == 220
    # the slower 7-series part pipelines the products through the DSP registers: more cycles
    assert z7020["totals"]["cycles"] > base["totals"]["cycles"]
    serial = estimate(model, target="zcu104", options=DesignOptions(precision="fixed<16,6>", strategy="resource", reuse_factor=16))
    dense = next(layer for layer in serial["layers"] if layer["op"] == "MatMul")
    assert dense["reuse_factor"] == 16 and dense["ii"] == 16
    full = next(layer for layer in base["layers"] if layer["op"] == "MatMul")
    assert dense["resources"]["dsp"] < full["resources"]["dsp"]


@pytest.mark.heavy
def test_bad_overrides_are_refused_with_an_exit_code():
    for args, code in (
        (["--part", "xc9z999"], 22),
        (["--precision", "fixed<16"], 22),
        (["--reuse-factor", "0"], 22),
        (["--clock-ns", "0"], 22),
    ):
        proc = subprocess.run([sys.executable, "-m", "edgec", "estimate", str(EXAMPLE), *args], capture_output=True, text=True)
        assert proc.returncode == code, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("edgec: error:")


def _dense_model(weights: np.ndarray) -> onnx.ModelProto:
    n_in, n_out = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9)


def test_zero_weights_are_free_where_the_implementation_skips_them():
    rng = np.random.default_rng(0)
    weights = rng.uniform(-1, 1, (32, 16))
    pruned = weights * (rng.uniform(size=weights.shape) > 0.5)
    fixed = DesignOptions(precision="fixed<16,6>")
    dense, sparse = estimate(_dense_model(weights), "zcu104", options=fixed), estimate(_dense_model(pruned), "zcu104", options=fixed)
    assert dense["layers"][0]["strategy"] == "Latency" and dense["layers"][0]["reuse_factor"] == 1
    # Latency strategy: constant zeros vanish, with their DSPs, adders and energy
    assert sparse["totals"]["resources"]["dsp"] < 0.7 * dense["totals"]["resources"]["dsp"]
    assert sparse["totals"]["energy_breakdown_uj"]["compute"] < 0.8 * dense["totals"]["energy_breakdown_uj"]["compute"]
    assert sparse["layers"][0]["sparsity"] == pytest.approx(float(np.mean(pruned == 0)), abs=0.01)
    # Resource strategy with weights in memory: every product is computed, zero or not
    serial = DesignOptions(precision="fixed<16,6>", strategy="resource", reuse_factor=4)
    dense_r, sparse_r = estimate(_dense_model(weights), "zcu104", options=serial), estimate(_dense_model(pruned), "zcu104", options=serial)
    assert sparse_r["totals"]["resources"]["dsp"] == dense_r["totals"]["resources"]["dsp"]
    assert sparse_r["totals"]["energy_breakdown_uj"]["memory"] == pytest.approx(dense_r["totals"]["energy_breakdown_uj"]["memory"])


def test_a_design_over_the_board_is_flagged():
    weights = np.random.default_rng(1).uniform(-1, 1, (256, 128))
    report = estimate(
        _dense_model(weights), target="pynq-z2", options=DesignOptions(strategy="latency", reuse_factor=1, precision="fixed<16,6>")
    )
    assert report["totals"]["utilization"]["dsp"] > 1.0
    assert any("DSP" in w and "exceeds" in w for w in report["warnings"])
    # left to itself, the configurator raises the reuse factor until the design fits
    fitted = estimate(_dense_model(weights), target="pynq-z2")
    assert fitted["totals"]["utilization"]["dsp"] <= 1.0
    assert fitted["layers"][0]["reuse_factor"] > 1


@pytest.mark.heavy
def test_build_reports_the_same_cost_as_estimate(data_dir, tmp_path):
    model = data_dir / "three_layer_keras.onnx"
    built = edgec.build(
        model, target="pynq-z2", output_dir=tmp_path / "b", data=np.random.default_rng(0).uniform(-1, 1, (64, 16)).astype(np.float32)
    )
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report == built.report
    for layer in report["layers"]:
        assert LAYER_COST_KEYS <= set(layer)
    assert TOTAL_KEYS <= set(report["totals"]) and report["cost_model"]["sources"]
    est = estimate(model, target="pynq-z2", data=np.random.default_rng(0).uniform(-1, 1, (64, 16)).astype(np.float32))
    assert est["totals"]["cycles"] == report["totals"]["cycles"]
    assert est["totals"]["resources"] == report["totals"]["resources"]
    summary = (tmp_path / "b" / "summary.txt").read_text()
    assert "inferences/s" in summary and "uJ per inference" in summary and "bottleneck:" in summary
    assert report["totals"]["bottleneck"] in {layer["name"] for layer in report["layers"]}


@pytest.mark.heavy
def test_build_with_overrides_reproduces_the_published_design(data_dir, tmp_path):
    """hls4ml's z7020 report design: Dense(16->5)+ReLU, io_stream, fixed<16,6> everywhere, 5 ns, Vivado."""
    model = data_dir / "costval" / "models" / "Vivado-2020.1-report_dense16to5_relu_stream_z7020.onnx"
    flags = [
        "--target",
        "zcu104",
        "--part",
        "xc7z020clg400-1",
        "--clock-ns",
        "5",
        "--backend",
        "vivado",
        "--io-type",
        "io_stream",
        "--precision",
        "fixed<16,6>",
    ]
    out = tmp_path / "z7020"
    proc = subprocess.run([sys.executable, "-m", "edgec", "build", str(model), *flags, "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    tcl = (out / "hls" / "project.tcl").read_text()
    assert 'set part "xc7z020clg400-1"' in tcl and "set clock_period 5" in tcl and 'set backend "vivado"' in tcl
    defines = (out / "hls" / "firmware" / "defines.h").read_text()
    assert "accum_t;" in defines and "ap_fixed<16,6> Dense_MatMul_0_accum_t" in defines
    assert "ap_fixed<16,6>, 5*1> Dense_MatMul_0_result_t" in defines
    report = json.loads((out / "report.json").read_text())
    est = json.loads(
        subprocess.run(
            [sys.executable, "-m", "edgec", "estimate", str(model), *flags, "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert report["totals"]["cycles"] == est["totals"]["cycles"] and report["totals"]["resources"] == est["totals"]["resources"]
    # the published synthesis: 10 cycles, II 8, 73 DSP (tests/data/costval)
    assert abs(report["totals"]["cycles"] - 10) <= 2 and abs(report["totals"]["resources"]["dsp"] - 73) <= 0.25 * 73


@pytest.mark.parametrize("target", [name for name in target_names() if not load_target(name).has_fpga])
def test_cpu_only_boards_estimate_every_node_on_the_cpu(target, data_dir):
    report = estimate(EXAMPLE, target=target)
    assert report["target"]["part"] is None and report["target"]["cpu"]["name"]
    assert [layer["placement"] for layer in report["layers"]] == ["cpu"] * len(report["layers"])
    totals = report["totals"]
    assert totals["latency_us"] > 0 and totals["energy_uj"] > 0
    assert totals["latency_us"] == pytest.approx(sum(layer["latency_ns"] for layer in report["layers"]) / 1000, rel=1e-3)
    conv = [layer for layer in report["layers"] if layer["op"] == "Conv"]
    assert len(conv) == 2 and all(layer["macs"] > 0 and layer["cycles"] > 0 for layer in conv)
