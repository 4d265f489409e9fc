"""Magnitude pruning, the pruning framework, and pruning carried through build and report."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgec
from edgec.errors import DataError, OptionError
from edgec.frontend.load import load_model
from edgec.passes.prune import PruneContext, parse_prune_spec, run_pruning
from edgec.passes.prune.common import layer_ops, model_outputs, prunable_layers
from edgec.passes.prune.magnitude import MagnitudePruning

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "models" / "digits_cnn.onnx"
EXAMPLE_DATA = REPO / "examples" / "data" / "digits_test.npz"
RECORD_KEYS = {
    "name",
    "params",
    "seconds",
    "ops_before",
    "ops_after",
    "params_before",
    "params_after",
    "accuracy_before",
    "accuracy_after",
    "layers",
}


def test_spec_parsing_and_unknown_methods():
    assert parse_prune_spec("magnitude:sparsity=0.5,scope=global,max_drop=1") == (
        "magnitude",
        {"sparsity": 0.5, "scope": "global", "max_drop": 1},
    )
    assert parse_prune_spec("channels") == ("channels", {})
    with pytest.raises(OptionError):
        parse_prune_spec("magnitude:sparsity")
    with pytest.raises(OptionError):
        run_pruning(load_model(EXAMPLE).model, ["prune-it-all"], PruneContext(None, None))
    with pytest.raises(OptionError):
        MagnitudePruning(None, sparsity=0.5, colour="red")
    with pytest.raises(OptionError):
        MagnitudePruning(None, sparsity=1.5)
    with pytest.raises(DataError):
        MagnitudePruning(PruneContext(None, None), sparsity=0.5, max_drop=1.0)  # max_drop is measured on data


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_reaches_the_sparsity_per_layer_or_globally(scope):
    model = load_model(EXAMPLE).model
    pruned, records = run_pruning(model, [f"magnitude:sparsity=0.6,scope={scope}"], PruneContext(None, None))
    record = records[0]
    assert RECORD_KEYS <= set(record)
    total = sum(ref.get(pruned).size for ref in prunable_layers(pruned))
    zeros = sum(int(np.sum(ref.get(pruned) == 0)) for ref in prunable_layers(pruned))
    assert zeros / total == pytest.approx(0.6, abs=0.01)
    if scope == "layer":
        for entry in record["layers"].values():
            assert entry["sparsity"] == pytest.approx(0.6, abs=0.02)
    assert record["ops_after"] < record["ops_before"] and record["params_after"] < record["params_before"]
    # the smallest weights went: every kept weight is at least as large as every removed one (per layer)
    original = {ref.name: ref.get(model) for ref in prunable_layers(model)}
    for ref in prunable_layers(pruned):
        w, kept = original[ref.name], ref.get(pruned) != 0
        if scope == "layer" and (~kept).any():
            assert np.abs(w[kept]).min() >= np.abs(w[~kept]).max()


def test_max_drop_stops_short_and_says_so():
    data = np.load(EXAMPLE_DATA)
    ctx = PruneContext(data["x"], data["y"])
    model = load_model(EXAMPLE).model
    pruned, records = run_pruning(model, ["magnitude:sparsity=0.9,max_drop=1.0"], ctx)
    record = records[0]
    assert record["metric"] == "accuracy"
    assert (record["accuracy_before"] - record["accuracy_after"]) * 100 <= 1.0 + 1e-9
    assert record["params"]["achieved_sparsity"] < 0.9
    assert any("stopped at sparsity" in note for note in record["notes"])
    # the recorded accuracy is the model's own: recompute it
    assert float(np.mean(model_outputs(pruned, data["x"]).argmax(-1) == data["y"])) == pytest.approx(record["accuracy_after"])


def test_quantized_weights_are_ranked_by_what_the_layer_multiplies(data_dir):
    """TFC_2W2A (2-bit weights, 38% to 92% of them already quantized to zero per layer): weights the
    quantizer maps to zero go first, so a sparsity every layer already has changes nothing."""
    model = load_model(data_dir / "TFC_2W2A.onnx").model
    data = np.load(data_dir / "mnist_test_300.npz")
    before = layer_ops(model)
    same, _ = run_pruning(model, ["magnitude:sparsity=0.05"], PruneContext(None, None))
    assert {k: v["nonzero"] for k, v in layer_ops(same).items()} == {k: v["nonzero"] for k, v in before.items()}
    assert np.array_equal(model_outputs(same, data["x"]), model_outputs(model, data["x"]))
    pruned, records = run_pruning(model, ["magnitude:sparsity=0.8,scope=global,max_drop=1"], PruneContext(data["x"], data["y"]))
    record = records[0]
    assert (record["accuracy_before"] - record["accuracy_after"]) * 100 <= 1.0 + 1e-9
    assert record["ops_after"] <= record["ops_before"]  # this 2-bit net has little left to give without retraining
    assert all(layer_ops(pruned)[k]["nonzero"] <= v["nonzero"] for k, v in before.items())


@pytest.mark.heavy
def test_pruned_zeros_reach_hls4ml_and_the_cost(tmp_path):
    """Build the example unpruned and pruned on a board where it stays unrolled: the generated
    weights carry the zeros and the estimate drops DSPs, MACs and energy."""
    data = np.load(EXAMPLE_DATA)
    dense = edgec.build(EXAMPLE, target="zcu104", output_dir=tmp_path / "dense", data=(data["x"], data["y"]), min_agreement=0.95)
    sparse = edgec.build(
        EXAMPLE,
        target="zcu104",
        output_dir=tmp_path / "sparse",
        data=(data["x"], data["y"]),
        prune=["magnitude:sparsity=0.5"],
        min_agreement=0.95,
    )
    record = sparse.report["passes"][0]
    assert RECORD_KEYS <= set(record) and record["name"] == "magnitude"
    assert sparse.report["verification"]["argmax_agreement"] >= 0.99  # C-sim matches the pruned model
    weights = sorted((tmp_path / "sparse" / "hls" / "firmware" / "weights").glob("w*.txt"))
    values = np.concatenate([np.array(w.read_text().replace(",", " ").split(), dtype=float) for w in weights])
    assert np.mean(values == 0) >= 0.45
    for key in ("dsp",):
        assert sparse.report["totals"]["resources"][key] < dense.report["totals"]["resources"][key]
    assert sparse.report["totals"]["energy_breakdown_uj"]["compute"] < dense.report["totals"]["energy_breakdown_uj"]["compute"]
    conv = [layer for layer in sparse.report["layers"] if layer["op"].startswith("Conv") or layer["op"] == "Dense"]
    assert all(layer["sparsity"] is not None and layer["sparsity"] >= 0.4 for layer in conv)
    assert any(d.startswith("prune magnitude") for d in sparse.report["decisions"])


@pytest.mark.heavy
def test_cli_prune_without_data_uses_data_free_criteria_and_reports_agreement(tmp_path, data_dir):
    out = tmp_path / "mlp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgec",
            "build",
            str(data_dir / "three_layer_keras.onnx"),
            "--prune",
            "magnitude:sparsity=0.3",
            "--prune",
            "magnitude:sparsity=0.5,scope=global",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    first, second = report["passes"][0], report["passes"][1]
    assert first["name"] == second["name"] == "magnitude"
    assert first["metric"] == "agreement on random inputs" and first["accuracy_before"] == 1.0
    assert second["ops_before"] == first["ops_after"] and second["ops_after"] < second["ops_before"]
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgec",
            "build",
            str(data_dir / "three_layer_keras.onnx"),
            "--prune",
            "magnitude:sparsity=0.3,max_drop=1",
            "-o",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 17 and "max_drop is measured on data" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "x").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "edgec", "build", str(data_dir / "three_layer_keras.onnx"), "--prune", "shrink", "-o", str(tmp_path / "y")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 22 and "unknown pruning method" in bad.stderr


@pytest.mark.heavy
def test_channel_pruning_shrinks_the_generated_project(tmp_path):
    """Structured pruning makes hls4ml's layers themselves narrower (not only zero weights)."""
    data = np.load(EXAMPLE_DATA)
    result = edgec.build(
        EXAMPLE, target="pynq-z2", output_dir=tmp_path / "ch", data=(data["x"], data["y"]), prune=["channels:ratio=0.5"], min_agreement=0.95
    )
    record = result.report["passes"][0]
    assert record["name"] == "channels" and record["params_after"] < record["params_before"]
    convs = [layer for layer in result.report["layers"] if layer["op"] == "Conv2D"]
    assert convs[0]["outputs_shape"][-1] == 2 and convs[1]["outputs_shape"][-1] == 4  # 4 -> 2 and 8 -> 4 filters
    assert result.report["verification"]["argmax_agreement"] >= 0.99
    defines = (tmp_path / "ch" / "hls" / "firmware" / "parameters.h").read_text()
    assert "n_filt = 2" in defines
