"""Mixed-precision search (`mixed:max_drop=P,...`): never worse than the best uniform width that keeps
the budget (its uniform points are `fixed:bits=N` itself), seeded reproducibility, the recorded
frontier and explored set, the reported cost being the build's, the time budget, the exact
per-kernel widths, and a bit-exact build of a kernel-wise result through the CLI.

Most tests search a small model built here with onnx.helper: scikit-learn's digits pooled to 4x4
(16 inputs), a fixed random ReLU layer of 24 units and a ridge-regression readout (an "extreme
learning machine", no training loop), so a search takes a few seconds. Measured with the
spec of ``tiny_searches`` (bits 6..2, max_drop=2, objective=luts): float 71.3%, uniform 6 bit
74.7% at 14,741 LUT (the only feasible uniform width; 5 bit: 67.0%), mixed 6/5/4 (two layers and the
output quantizer) 70.7% at 13,423 LUT.

On the bundled models benchmarks/quantization.py checks the same criterion (see its results JSON).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.general.quant import quant as qonnx_quant
from sklearn.datasets import load_digits

from edgec.errors import OptionError
from edgec.frontend.load import load_model
from edgec.passes.quant.fixed import FixedPointQuantization
from edgec.passes.quant.mixed import MixedPrecision, pareto_frontier
from edgec.passes.quant.registry import parse_quant_spec, run_quantization
from edgec.pipeline.estimate import estimate
from edgec.pipeline.flow import DesignCoster

ROOT = Path(__file__).parent.parent
DIGITS_CNN = ROOT / "examples" / "models" / "digits_cnn.onnx"
DIGITS_DATA = ROOT / "examples" / "data" / "digits_test.npz"
TINY_SPEC = "mixed:max_drop=2,objective=luts,bits=6,5,4,3,2,restarts=2,seed=5"
COST_KEYS = ("lut", "dsp", "ff", "bram18", "latency_us", "energy_uj")


def digits_elm(hidden: int = 24, seed: int = 0) -> tuple[ModelWrapper, np.ndarray, np.ndarray]:
    """A 16-``hidden``-10 MLP on 4x4-pooled digits (random ReLU layer, ridge readout) and 300
    samples it was not fitted on."""
    digits = load_digits()
    x = (digits.images.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(-1, 16) / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(16, hidden)) / 2).astype(np.float32)
    b1 = (rng.normal(size=hidden) / 2).astype(np.float32)
    features = np.hstack([np.maximum(x[:1000] @ w1 + b1, 0), np.ones((1000, 1), np.float32)])
    readout = np.linalg.solve(features.T @ features + 3.0 * np.eye(hidden + 1), features.T @ np.eye(10)[y[:1000]]).astype(np.float32)
    w2, b2 = readout[:-1], readout[-1]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="dense1"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="bias1"),
        helper.make_node("Relu", ["a1"], ["h1"], name="relu1"),
        helper.make_node("MatMul", ["h1", "w2"], ["m2"], name="dense2"),
        helper.make_node("Add", ["m2", "b2"], ["y"], name="bias2"),
    ]
    initializers = [numpy_helper.from_array(a, name) for a, name in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    graph = helper.make_graph(
        nodes,
        "digits_elm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return ModelWrapper(model), x[1000:1300], y[1000:1300]


@pytest.fixture(scope="module")
def tiny():
    return digits_elm()


@pytest.fixture(scope="module")
def tiny_searches(tiny):
    """The same seeded search, twice."""
    model, x, y = tiny
    return [run_quantization(model, [TINY_SPEC], x, y) for _ in range(2)]


@pytest.mark.heavy
def test_result_is_never_worse_than_the_best_feasible_uniform_width(tiny_searches):
    _, records = tiny_searches[0]
    record = records[0]
    search = record["search"]
    assert record["name"] == "mixed" and record["metric"] == "accuracy" and record["changed"]
    assert search["stopped"] == "converged"
    # every candidate width was evaluated on every unit, and costed
    assert [set(p["widths"].values()) for p in search["uniform"]] == [{b} for b in (6, 5, 4, 3, 2)]
    assert all("lut" in p for p in search["uniform"])
    # the budget holds on the data the pass saw, and the record's own measurement agrees
    chosen = search["chosen"]
    assert chosen["feasible"] and chosen["drop_points"] <= 2.0
    assert (record["accuracy_before"] - record["accuracy_after"]) * 100 <= 2.0 + 1e-9
    assert chosen["accuracy"] == pytest.approx(record["accuracy_after"])
    feasible_uniform = [p for p in search["uniform"] if p["feasible"]]
    assert feasible_uniform
    assert chosen["lut"] <= min(p["lut"] for p in feasible_uniform)
    # on this model it is strictly cheaper, with kernels of different widths
    assert chosen["lut"] < min(p["lut"] for p in feasible_uniform)
    assert len(set(chosen["widths"].values())) > 1
    # the types follow the chosen widths
    for layer, bits in chosen["widths"].items():
        if layer in record["layers"]:
            assert record["layers"][layer]["weight"].startswith(f"fixed<{bits},")


@pytest.mark.heavy
@pytest.mark.parametrize("objective, key", [("energy", "energy_uj"), ("latency", "latency_us"), ("dsp", "dsp")])
def test_other_objectives_are_never_worse_than_uniform(tiny, objective, key):
    model, x, y = tiny
    _, records = run_quantization(model, [f"mixed:max_drop=2,objective={objective},bits=6,4,3,restarts=0"], x, y)
    search = records[0]["search"]
    secondary = {"luts": "lut", "energy": "energy_uj"}[search["secondary"]]

    def rank(point: dict) -> tuple:  # the search's order: objective, then the secondary cost, then accuracy
        return (point[key], point[secondary], -point["accuracy"])

    chosen = search["chosen"]
    assert chosen["feasible"] and chosen["objective"] == chosen[key]
    assert rank(chosen) <= min(rank(p) for p in search["uniform"] if p["feasible"])


def test_uniform_points_are_fixed_bits_n(tiny, tiny_searches):
    """All units (layers and the output quantizer) at N bits is `fixed:bits=N`, byte for byte, so
    the search compares itself with exactly what uniform PTQ gives."""
    model, x, y = tiny
    mixed_model, records = run_quantization(model, ["mixed:bits=5,max_drop=100"], x, y)
    fixed_model, fixed_records = run_quantization(model, ["fixed:bits=5"], x, y)
    assert mixed_model.model.SerializeToString() == fixed_model.model.SerializeToString()
    assert records[0]["accuracy_after"] == fixed_records[0]["accuracy_after"]
    # the uniform points of a real search: same accuracy and cost as fixed:bits=N
    search = tiny_searches[0][1][0]["search"]
    point = next(p for p in search["uniform"] if set(p["widths"].values()) == {6})
    fixed6, fixed6_records = run_quantization(model, ["fixed:bits=6"], x, y)
    assert point["accuracy"] == pytest.approx(fixed6_records[0]["accuracy_after"])
    totals = estimate(fixed6.model, target="pynq-z2", data=(x, None))["totals"]
    assert point["lut"] == totals["resources"]["lut"]
    assert point["energy_uj"] == pytest.approx(totals["energy_uj"], rel=1e-9)


def test_search_is_reproducible_with_a_seed(tiny_searches):
    (model_a, rec_a), (model_b, rec_b) = tiny_searches
    search_a = {k: v for k, v in rec_a[0]["search"].items() if k != "seconds"}
    search_b = {k: v for k, v in rec_b[0]["search"].items() if k != "seconds"}
    assert search_a == search_b
    assert model_a.model.SerializeToString() == model_b.model.SerializeToString()
    assert search_a["seed"] == 5


def test_frontier_and_explored_set(tiny_searches):
    search = tiny_searches[0][1][0]["search"]
    units = [u["label"] for u in search["units"]]
    assert units == ["dense1", "dense2", "output"]
    assert search["units"][-1]["kind"] == "output" and search["units"][-1]["tensors"]
    explored = search["explored"]
    assert search["explored_columns"] == ["eval", "phase", "widths", "accuracy", "objective", "feasible"]
    assert len(explored) == search["evaluations"] > len(search["uniform"])
    assert [e[0] for e in explored] == list(range(1, len(explored) + 1))
    assert {e[1] for e in explored} >= {"uniform", "greedy", "local"}
    # every feasible point was costed, and only costed points reach the frontier
    assert all(e[4] is not None for e in explored if e[5])
    assert search["costed"] == sum(e[4] is not None for e in explored)
    frontier = search["frontier"]
    assert len(frontier) >= 3
    objectives = [p["objective"] for p in frontier]
    accuracies = [p["accuracy"] for p in frontier]
    assert objectives == sorted(objectives) and accuracies == sorted(accuracies) and len(set(accuracies)) == len(accuracies)
    costed = [(e[3], e[4]) for e in explored if e[4] is not None]
    for point in frontier:
        assert set(point["widths"]) == set(units)
        assert set(COST_KEYS) <= set(point)
        assert [
            point["eval"],
            point["phase"],
            list(point["widths"].values()),
            point["accuracy"],
            point["objective"],
            point["feasible"],
        ] in explored
        # no explored point is at least as accurate and strictly cheaper
        assert not any(a >= point["accuracy"] and o < point["objective"] for a, o in costed)
    # the chosen point is the cheapest feasible one explored
    chosen = search["chosen"]
    assert chosen["objective"] == min(e[4] for e in explored if e[5])
    # the greedy path starts at the widest point; the local searches end no worse than they start
    assert set(search["path"][0]["widths"].values()) == {6}
    for local in search["local_searches"]:
        assert local["end"]["objective"] <= local["start"]["objective"] and local["end"]["feasible"]


def test_pareto_frontier_keeps_only_costed_non_dominated_points():
    from edgec.passes.quant.mixed import Point

    def point(index, accuracy, objective):
        costs = None if objective is None else {k: 0 for k in COST_KEYS}
        return Point((8,), accuracy, 0.0, True, index, "test", costs, objective, 0.0)

    points = [point(1, 0.9, 10.0), point(2, 0.95, 12.0), point(3, 0.93, 13.0), point(4, 0.99, None), point(5, 0.95, 11.0)]
    assert [p.index for p in pareto_frontier(points)] == [1, 5]


def test_reported_cost_is_the_builds(tiny, tiny_searches):
    """The figures in the record are those a build on the same data gets: same target, options and
    calibration data (the search's cheaper calibration is checked against them)."""
    _, x, _ = tiny
    model, records = tiny_searches[0]
    search = records[0]["search"]
    totals = estimate(model.model, target="pynq-z2", data=(x, None))["totals"]
    chosen = search["chosen"]
    assert chosen["lut"] == totals["resources"]["lut"] and chosen["dsp"] == totals["resources"]["dsp"]
    assert chosen["latency_us"] == pytest.approx(totals["latency_us"]) and chosen["energy_uj"] == pytest.approx(totals["energy_uj"])
    assert search["cost_check"]["build_samples"] == 128 and search["cost_check"]["agrees"] is True


def test_design_options_reach_the_cost(tiny):
    """With the build's design options (here: one reuse factor for every layer) candidates are
    costed as that build would be."""
    from edgec.pipeline.design import DesignOptions

    model, x, y = tiny
    options = DesignOptions(reuse_factor=4)
    search_pass = MixedPrecision(x, y=y, progress=None, coster=DesignCoster.for_target("pynq-z2", options), max_drop=100, bits=[5])
    quantized = model.transform(search_pass)
    chosen = search_pass.record.extra["search"]["chosen"]
    totals = estimate(quantized.model, target="pynq-z2", data=(x, None), options=options)["totals"]
    assert chosen["latency_us"] == pytest.approx(totals["latency_us"]) and chosen["lut"] == totals["resources"]["lut"]
    default = estimate(quantized.model, target="pynq-z2", data=(x, None))["totals"]
    assert default["latency_us"] < totals["latency_us"]  # reuse factor 4 is slower than the configurator's choice


@pytest.mark.heavy
def test_progress_and_time_budget(tiny):
    model, x, y = tiny
    lines: list[str] = []
    search_pass = MixedPrecision(x, y=y, progress=lines.append, max_drop=2, restarts=1000, search_seconds=2)
    quantized = model.transform(search_pass)
    search = search_pass.record.extra["search"]
    assert search["stopped"] == "time budget"  # 1000 restarts do not fit in 2 s
    assert search["seconds"] >= 2
    assert any("search_seconds=2 reached" in note for note in search_pass.record.notes)
    assert len(lines) == search["evaluations"] >= 1 and lines[0].startswith("mixed: eval 1 (uniform), widths 8/8/8,")
    assert search["chosen"]["feasible"]
    assert any(n.op_type == "Quant" for n in quantized.graph.node)


def test_without_labels_it_bounds_agreement(tiny):
    model, x, _ = tiny
    quantized, records = run_quantization(model, ["mixed:max_drop=5,bits=7,6,objective=energy,restarts=0"], x, None)
    record = records[0]
    search = record["search"]
    assert record["metric"] == "agreement" and search["metric"] == "agreement"
    assert record["accuracy_before"] == 1.0 and record["accuracy_after"] >= 0.95
    assert search["chosen"]["energy_uj"] <= min(p["energy_uj"] for p in search["uniform"] if p["feasible"])


@pytest.mark.heavy
def test_kernel_widths_are_exact_and_build_bit_exactly(tiny, tmp_path):
    """qonnx's Quant takes a scalar bit width only, so per-kernel widths live in per-channel scales
    under the widest kernel's width: each kernel's levels stay within its own width. The CLI builds
    the chosen model of a kernel-wise search and its C simulation matches qonnx execution bit for
    bit (measured: 4/5/5 bits for the three kernel groups of each layer, output 4 bits, 11,954 LUT
    against 12,689 for uniform 5 bit)."""
    with pytest.raises(ValueError):  # why the bit width stays scalar
        qonnx_quant(np.ones((3, 2)), np.array([[0.5, 0.25]]), np.array(0.0), np.array([[8.0, 4.0]]), 1, 1, "ROUND")
    model, x, y = tiny
    model.save(str(tmp_path / "digits_elm.onnx"))
    np.savez(tmp_path / "digits.npz", x=x, y=y)
    out = tmp_path / "mixed"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgec",
            "build",
            str(tmp_path / "digits_elm.onnx"),
            "--data",
            str(tmp_path / "digits.npz"),
            "-o",
            str(out),
            "--quantize",
            "mixed:max_drop=2,objective=luts,granularity=kernel,groups=3,bits=5,4,restarts=0",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "mixed: eval 1 (uniform)," in proc.stderr
    report = json.loads((out / "report.json").read_text())
    record = report["passes"][0]
    assert record["name"] == "mixed" and record["params"]["bits"] == [5, 4]
    search = record["search"]
    assert search["stopped"] == "converged"
    assert [u["label"] for u in search["units"]] == [f"dense{k}/g{g}" for k in (1, 2) for g in range(3)] + ["output"]
    assert search["chosen"]["drop_points"] <= 2.0
    assert search["chosen"]["lut"] <= min(p["lut"] for p in search["uniform"] if p["feasible"])
    split = {name: entry["weight_bits"] for name, entry in record["layers"].items() if isinstance(entry["weight_bits"], list)}
    assert split, "expected at least one layer with kernels of different widths"
    for layer, widths in split.items():  # each kernel group's channels carry its width
        for unit in search["units"][:-1]:
            if unit["layer"] == layer:
                assert {widths[c] for c in unit["channels"]} == {search["chosen"]["widths"][unit["label"]]}
    ver = report["verification"]
    assert ver["reference"] == "qonnx execution"
    assert ver["bit_exact"] is True and ver["max_lsb_error"] == 0
    # the report's cost is the one the search reported for its choice
    assert report["totals"]["resources"]["lut"] == search["chosen"]["lut"]


def test_per_kernel_widths_live_in_per_channel_scales():
    """A layer with kernels of different widths: one quantizer at the widest width, and each
    kernel's integer levels within its own width (narrow range: |level| <= 2^(b-1) - 1)."""
    x = np.load(DIGITS_DATA)["x"]
    widths = [8, 3, 5, 4, 8, 2, 6, 4]
    fixed = FixedPointQuantization(x, layer_bits={"/features/features.3/Conv": widths}, bits=8)
    model = load_model(DIGITS_CNN).model.transform(fixed)
    conv = next(n for n in model.graph.node if n.name == "/features/features.3/Conv")
    quant = model.find_producer(conv.input[1])
    assert quant.op_type == "Quant" and float(model.get_initializer(quant.input[3])) == 8.0
    weights = model.get_initializer(quant.input[0]).astype(np.float64)
    scale = model.get_initializer(quant.input[1]).astype(np.float64)
    assert scale.shape == (8, 1, 1, 1)
    levels = np.abs(np.round(weights / scale)).reshape(8, -1).max(axis=1)
    assert np.all(levels <= 2 ** (np.asarray(widths) - 1) - 1)
    assert np.all(levels > 2 ** (np.asarray(widths) - 2) - 1)  # and each scale is the finest that fits
    assert fixed.record.layers["/features/features.3/Conv"]["weight_bits"] == widths
    # the activation the layer reads takes its widest width; the other layers keep 8 bits
    assert fixed.record.layers["/features/features.3/Conv"]["input"].startswith("ufixed<8,")


def test_specs_and_bad_options(tiny):
    model, x, y = tiny
    assert parse_quant_spec("mixed:bits=8,6,4,max_drop=1") == ("mixed", {"bits": [8, 6, 4], "max_drop": 1})
    for spec in (
        "mixed:objective=speed",
        "mixed:granularity=tensor",
        "mixed:bits=8,1",
        "mixed:bits=8,8",
        "mixed:max_drop=-1",
        "mixed:search_seconds=0",
        "mixed:target=nope",
        "mixed:seed=1.5",
        "mixed:width=3",
        "mixed:restarts=-1",
        "mixed:restarts=1.5",
        "mixed:progress=1",
        "mixed:coster=1",
    ):
        with pytest.raises(OptionError):
            run_quantization(model, [spec], x, y)
