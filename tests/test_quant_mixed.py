"""Mixed-precision search (`mixed:max_drop=P,...`) on the digits CNN: the accuracy budget, seeded
reproducibility, the recorded frontier, the time budget, the cost against uniform 8-bit, the exact
per-kernel widths, and a bit-exact build of the chosen model through the CLI.

Measured on pynq-z2 estimates (benchmarks/quantization.py, passes on the digits training split):
uniform 8 bit 29.8 k LUT at 99.6%; ``mixed:max_drop=1,objective=luts`` chooses 8/5/8 bits
(conv1/conv2/fc), 24.7 k LUT at 98.7%. On examples/data/digits_test.npz the kernel-wise search
(3 groups per layer, max_drop=2) reaches 19.1 k LUT against 23.2 k for uniform 8 bit with
per-channel scales, and its C simulation is bit-exact against qonnx execution.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from qonnx.custom_op.general.quant import quant as qonnx_quant

from edgec.errors import OptionError
from edgec.frontend.load import load_model
from edgec.passes.quant.fixed import FixedPointQuantization
from edgec.passes.quant.mixed import MixedPrecision
from edgec.passes.quant.registry import parse_quant_spec, run_quantization

ROOT = Path(__file__).parent.parent
DIGITS_CNN = ROOT / "examples" / "models" / "digits_cnn.onnx"
DIGITS_DATA = ROOT / "examples" / "data" / "digits_test.npz"


@pytest.fixture(scope="module")
def digits():
    data = np.load(DIGITS_DATA)
    return data["x"], data["y"]


@pytest.fixture(scope="module")
def layer_search(digits):
    """The same seeded layer-wise search, twice."""
    x, y = digits
    spec = "mixed:max_drop=1,objective=luts,seed=3,search_seconds=90"
    return [run_quantization(load_model(DIGITS_CNN).model, [spec], x, y) for _ in range(2)]


def test_search_respects_max_drop_and_beats_uniform_8_bit(layer_search):
    _, records = layer_search[0]
    record = records[0]
    search = record["search"]
    assert record["name"] == "mixed" and record["metric"] == "accuracy" and record["changed"]
    # the budget holds on the data the pass saw, and the record's measurement agrees with the search's
    assert (record["accuracy_before"] - record["accuracy_after"]) * 100 <= 1.0 + 1e-9
    assert search["chosen"]["drop_points"] <= 1.0 and search["chosen"]["feasible"]
    assert search["chosen"]["accuracy"] == pytest.approx(record["accuracy_after"])
    assert search["baseline"] == pytest.approx(record["accuracy_before"])
    assert search["stopped"] == "converged"
    # the start point is uniform 8-bit (= fixed:bits=8); the chosen point is cheaper on the objective
    uniform8 = search["uniform"][0]
    assert set(uniform8["widths"].values()) == {8}
    assert search["chosen"]["lut"] < uniform8["lut"]
    assert search["chosen"]["objective"] == search["chosen"]["lut"]
    # it is at least as cheap as every uniform width that keeps the budget
    feasible_uniform = [p["lut"] for p in search["uniform"] if p["feasible"]]
    assert search["chosen"]["lut"] <= min(feasible_uniform)
    # the frontier: several points, accuracy rising with cost, each with its widths and costs
    frontier = search["frontier"]
    assert len(frontier) >= 3
    assert [p["objective"] for p in frontier] == sorted(p["objective"] for p in frontier)
    assert [p["accuracy"] for p in frontier] == sorted(p["accuracy"] for p in frontier)
    for point in frontier:
        assert set(point["widths"]) == {u["label"] for u in search["units"]}
        assert {"lut", "dsp", "latency_us", "energy_uj"} <= set(point)
    # the per-layer types follow the chosen widths (weights and the activations they read)
    for layer, bits in search["chosen"]["widths"].items():
        assert record["layers"][layer]["weight_bits"] == bits
        assert record["layers"][layer]["weight"].startswith(f"fixed<{bits},")


def test_search_is_reproducible_with_a_seed(layer_search):
    (model_a, rec_a), (model_b, rec_b) = layer_search
    strip = ("seconds",)
    search_a = {k: v for k, v in rec_a[0]["search"].items() if k not in strip}
    search_b = {k: v for k, v in rec_b[0]["search"].items() if k not in strip}
    assert search_a == search_b
    assert model_a.model.SerializeToString() == model_b.model.SerializeToString()


def test_time_budget_stops_the_search(digits):
    x, y = digits
    lines: list[str] = []
    search_pass = MixedPrecision(x, y=y, progress=lines.append, max_drop=1, granularity="kernel", groups=4, search_seconds=2)
    model = load_model(DIGITS_CNN).model
    started = time.perf_counter()
    quantized = model.transform(search_pass)
    elapsed = time.perf_counter() - started
    search = search_pass.record.extra["search"]
    assert search["stopped"] == "time budget"
    assert elapsed < 2 + 8  # the budget plus the evaluation under way and the final quantization
    assert any("search_seconds=2 reached" in note for note in search_pass.record.notes)
    assert len(lines) == search["evaluations"] >= 1 and lines[0].startswith("mixed: eval 1,")
    assert search["chosen"]["feasible"]
    assert any(n.op_type == "Quant" for n in quantized.graph.node)


def test_kernel_widths_are_exact_and_build_bit_exactly(tmp_path):
    """qonnx's Quant takes a scalar bit width only, so per-kernel widths live in per-channel scales
    under the widest kernel's width: each kernel's levels stay within its own width. The CLI builds
    the chosen model and its C simulation matches qonnx execution bit for bit."""
    with pytest.raises(ValueError):  # why the bit width stays scalar
        qonnx_quant(np.ones((3, 2)), np.array([[0.5, 0.25]]), np.array(0.0), np.array([[8.0, 4.0]]), 1, 1, "ROUND")
    out = tmp_path / "mixed"
    proc = subprocess.run(
        [sys.executable, "-m", "edgec", "build", str(DIGITS_CNN), "--data", str(DIGITS_DATA), "-o", str(out),
         "--quantize", "mixed:max_drop=2,objective=luts,granularity=kernel,groups=3,bits=8,6,5,4,3,search_seconds=100"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "mixed: eval 1," in proc.stderr
    report = json.loads((out / "report.json").read_text())
    record = report["passes"][0]
    assert record["name"] == "mixed" and record["params"]["bits"] == [8, 6, 5, 4, 3]
    search = record["search"]
    assert search["chosen"]["drop_points"] <= 2.0 and search["chosen"]["lut"] < search["uniform"][0]["lut"]
    split = {name: entry["weight_bits"] for name, entry in record["layers"].items() if isinstance(entry["weight_bits"], list)}
    assert split, "expected at least one layer with kernels of different widths"
    ver = report["verification"]
    assert ver["reference"] == "qonnx execution"
    assert ver["bit_exact"] is True and ver["max_lsb_error"] == 0


def test_per_kernel_widths_live_in_per_channel_scales(digits):
    """A layer with kernels of different widths: one quantizer at the widest width, and each
    kernel's integer levels within its own width (narrow range: |level| <= 2^(b-1) - 1)."""
    x, _ = digits
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


def test_without_labels_it_bounds_agreement(digits):
    x, _ = digits
    model, records = run_quantization(load_model(DIGITS_CNN).model, ["mixed:max_drop=1,bits=8,4,objective=energy"], x, None)
    record = records[0]
    assert record["metric"] == "agreement" and record["search"]["metric"] == "agreement"
    assert record["accuracy_before"] == 1.0 and record["accuracy_after"] >= 0.99
    assert record["search"]["chosen"]["energy_uj"] <= record["search"]["uniform"][0]["energy_uj"]


def test_specs_and_bad_options(digits):
    x, y = digits
    assert parse_quant_spec("mixed:bits=8,6,4,max_drop=1") == ("mixed", {"bits": [8, 6, 4], "max_drop": 1})
    model = load_model(DIGITS_CNN).model
    for spec in ("mixed:objective=speed", "mixed:granularity=tensor", "mixed:bits=8,1", "mixed:bits=8,8", "mixed:max_drop=-1",
                 "mixed:search_seconds=0", "mixed:target=nope", "mixed:seed=1.5", "mixed:width=3"):
        with pytest.raises(OptionError):
            run_quantization(model, [spec], x, y)
