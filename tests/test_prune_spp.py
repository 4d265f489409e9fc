"""`spp` (Structured Probabilistic Pruning) and the ONNX -> torch translation it fine-tunes with.

Measured on digits_cnn (train on the first 200 samples of digits_test.npz, accuracy on the other
100; unpruned 0.98), defaults (200 steps, 2 Adam updates of 32 per step, lr 5e-3, 100 recovery
steps), seeds 0-4 fine-tuned vs the one-shot schedule:

    column 0.25: 0.94-0.97 vs 0.55    filter 0.25: 0.95-0.96 vs 0.86
    column 0.50: 0.82-0.90 vs 0.21    filter 0.50: 0.89-0.93 vs 0.37
    column 0.75: 0.36-0.61 vs 0.11    filter 0.75: 0.69-0.79 vs 0.24

The assertions below keep wide margins under those numbers (fixed seeds).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgec.errors import OptionError
from edgec.frontend.load import load_model
from edgec.passes.prune import PruneContext, run_pruning
from edgec.passes.prune.common import model_outputs, prunable_layers
from edgec.passes.prune.spp import FLATNESS, INCREMENT, StructuredProbabilisticPruning, spp_increment, target_groups
from edgec.passes.prune.torch_graph import TorchGraph, unsupported_ops

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CNN = ROOT / "examples" / "models" / "digits_cnn.onnx"
DIGITS_DATA = ROOT / "examples" / "data" / "digits_test.npz"
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def digits():
    data = np.load(DIGITS_DATA)
    return data["x"].astype(np.float32), data["y"].astype(np.int64)


@pytest.fixture(scope="module")
def cnn():
    return load_model(DIGITS_CNN).model


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model_outputs(model, x).argmax(-1) == y))


def _zero_groups(model, group: str = "column") -> dict[str, tuple[int, int]]:
    """Per prunable layer: (all-zero groups, groups) of its weights."""
    counts = {}
    for ref in prunable_layers(model):
        weights = np.abs(ref.get(model))
        if group == "column":
            norms = weights.sum(axis=ref.out_axis).reshape(-1)
        else:
            norms = weights.sum(axis=tuple(a for a in range(weights.ndim) if a != ref.out_axis))
        counts[ref.name] = (int(np.sum(norms == 0)), int(norms.size))
    return counts


def _spp(model, x, y, **params):
    prune_pass = StructuredProbabilisticPruning(PruneContext(x, y, seed=params.pop("seed", 0)), **params)
    pruned, _ = prune_pass.apply(model)
    return pruned, prune_pass.record


# -- the schedule's increment ------------------------------------------------------------------


def test_increment_is_the_papers_centrally_symmetric_exponential():
    n, ratio = 36, 0.5
    ranks = np.arange(n)
    delta = spp_increment(ranks, n, ratio)
    assert delta[0] == pytest.approx(INCREMENT)  # A at rank 0
    assert spp_increment(np.array([ratio * n]), n, ratio)[0] == pytest.approx(0.0, abs=1e-12)  # zero at R*N_g
    assert np.all(delta[: int(ratio * n)] > 0) and np.all(delta[int(ratio * n) + 1 :] < 0)
    assert np.all(np.diff(delta) < 0)
    alpha = math.log(2 / FLATNESS) / (ratio * n)
    centre = math.log(1 / FLATNESS) / alpha
    for d in (1.0, 3.5, 7.0):  # point symmetry about (N_c, uA)
        pair = spp_increment(np.array([centre - d, centre + d]), n, ratio)
        assert pair.sum() == pytest.approx(2 * FLATNESS * INCREMENT)
    assert [target_groups(n, r) for n, r in ((9, 0.5), (36, 0.5), (4, 0.9), (10, 0.0))] == [5, 18, 3, 0]


# -- torch translation ---------------------------------------------------------------------------


def test_torch_graph_reproduces_onnxruntime_on_digits_cnn(cnn, digits):
    x, _ = digits
    reference = model_outputs(cnn, x)
    out = TorchGraph(cnn).run(x).reshape(len(x), -1)
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


def test_torch_graph_reproduces_onnxruntime_and_qonnx_on_other_models(digits):
    keras = load_model(DATA / "three_layer_keras.onnx").model
    x = np.random.default_rng(3).standard_normal((64, 16)).astype(np.float32)
    np.testing.assert_allclose(TorchGraph(keras).run(x), model_outputs(keras, x), rtol=1e-5, atol=1e-6)
    brevitas = load_model(DATA / "brevitas_digits_cnn.onnx").model  # QONNX Quant + BatchNormalization
    images = digits[0][:40]
    reference = model_outputs(brevitas, images)
    np.testing.assert_allclose(TorchGraph(brevitas).run(images).reshape(len(images), -1), reference, rtol=1e-5, atol=1e-4)
    assert unsupported_ops(load_model(DATA / "TFC_2W2A.onnx").model)  # Shape/Gather reshapes: one-shot there


# -- SPP with fine-tuning --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def column_runs(cnn, digits):
    x, y = digits
    fine, fine_record = _spp(cnn, x[:200], y[:200], ratio=0.5)
    again, _ = _spp(cnn, x[:200], y[:200], ratio=0.5)
    one_shot, one_shot_record = _spp(cnn, x[:200], None, ratio=0.5)
    return fine, fine_record, again, one_shot, one_shot_record


@pytest.mark.heavy
def test_fine_tuned_spp_prunes_half_the_columns_of_every_layer(column_runs):
    fine, record, _, _, _ = column_runs
    assert record.mode.startswith("fine-tuned (") and "epochs-equivalent" in record.mode
    counts = _zero_groups(fine)
    assert set(counts) == set(record.layers) and len(counts) == 3
    for name, (zero, groups) in counts.items():
        assert zero in (math.floor(0.5 * groups), math.ceil(0.5 * groups)), (name, zero, groups)
        assert record.layers[name]["groups"] == groups and record.layers[name]["pruned_groups"] == zero
    assert counts["/features/features.0/Conv"] == (5, 9)  # 3x3 kernel positions of the single input channel


def test_fine_tuning_beats_the_one_shot_schedule(column_runs, digits):
    fine, _, _, one_shot, one_shot_record = column_runs
    x, y = digits
    assert one_shot_record.mode == "one-shot schedule (no labels)"
    assert _zero_groups(one_shot) == _zero_groups(fine)  # same group counts either way
    fine_accuracy, one_shot_accuracy = _accuracy(fine, x[200:], y[200:]), _accuracy(one_shot, x[200:], y[200:])
    # measured with seed 0: 0.90 vs 0.21 (unpruned 0.98)
    assert fine_accuracy >= 0.75
    assert fine_accuracy >= one_shot_accuracy + 0.3


def test_same_seed_same_masks(column_runs):
    fine, _, again, _, _ = column_runs
    for ref in prunable_layers(fine):
        np.testing.assert_array_equal(ref.get(fine) == 0, ref.get(again) == 0)
        np.testing.assert_allclose(ref.get(fine), ref.get(again), atol=1e-6)


def test_fine_tuning_a_softmax_graph(digits):
    keras = load_model(DATA / "three_layer_keras.onnx").model
    x = np.random.default_rng(0).standard_normal((400, 16)).astype(np.float32)
    y = model_outputs(keras, x).argmax(-1)  # the model's own decisions as labels
    pruned, record = _spp(keras, x[:300], y[:300], ratio=0.5)
    assert record.mode.startswith("fine-tuned")
    assert all(zero == groups // 2 for zero, groups in _zero_groups(pruned).values())
    assert _accuracy(pruned, x[300:], y[300:]) >= 0.8  # measured 0.91 (one-shot: 0.77)


# -- one-shot, filters, the pipeline ------------------------------------------------------------


def test_one_shot_without_labels_or_data(cnn, digits):
    x, _ = digits
    pruned, record = _spp(cnn, None, None, ratio=0.5)
    assert record.mode == "one-shot schedule (no data)"
    with_inputs, other = _spp(cnn, x[:50], None, ratio=0.5)
    assert other.mode == "one-shot schedule (no labels)"
    # data-free SPP on fixed weights = L1 ranking of the columns: the same masks either way
    assert _zero_groups(pruned) == _zero_groups(with_inputs)
    for ref in prunable_layers(pruned):
        np.testing.assert_array_equal(ref.get(pruned) == 0, ref.get(with_inputs) == 0)


def test_filter_groups_zero_whole_filters_and_shrink_the_model(cnn, digits):
    x, y = digits
    pruned, record = _spp(cnn, x[:200], y[:200], ratio=0.5, group="filter")
    assert record.mode.startswith("fine-tuned")
    assert "/classifier/Gemm" not in record.layers  # the output layer keeps its 10 classes
    assert any("keeps every output" in note for note in record.notes)
    expected = {"/features/features.0/Conv": (2, 4), "/features/features.3/Conv": (4, 8)}
    assert {name: (v["pruned_groups"], v["groups"]) for name, v in record.layers.items()} == expected
    try:
        from edgec.passes.prune.channels import remove_zero_channels  # noqa: F401
    except ImportError:
        counts = _zero_groups(pruned, "filter")
        assert {name: counts[name] for name in expected} == expected
        assert any("left in place" in note for note in record.notes)
    else:  # physically removed: half the filters of each conv, half the classifier's inputs
        shapes = {ref.name: ref.get(pruned).shape for ref in prunable_layers(pruned)}
        assert shapes["/features/features.0/Conv"][0] == 2 and shapes["/features/features.3/Conv"][:2] == (4, 2)
        assert shapes["/classifier/Gemm"] == (10, 16)
        assert any(note.startswith("removed all-zero channels") for note in record.notes)
    outputs = model_outputs(pruned, x[200:])
    assert outputs.shape == (100, 10)
    assert float(np.mean(outputs.argmax(-1) == y[200:])) >= 0.8  # measured 0.92


def test_run_pruning_record_and_one_shot_max_drop(cnn, digits):
    x, y = digits
    pruned, records = run_pruning(cnn, ["spp:ratio=0.5,group=filter,steps=100,recover=20"], PruneContext(x[:200], y[:200], seed=1))
    record = records[0]
    assert record["name"] == "spp" and record["mode"].startswith("fine-tuned (")
    assert record["layers"]["/features/features.3/Conv"]["pruned_groups"] == 4
    assert record["params_after"] < record["params_before"] and record["ops_after"] < record["ops_before"]
    # one-shot (agreement metric without labels): max_drop bisects the ratio
    ctx = PruneContext(x[:200], None, seed=0)
    _, records = run_pruning(cnn, ["spp:ratio=0.5,group=filter,max_drop=10"], ctx)
    record = records[0]
    assert record["mode"] == "one-shot schedule (no labels)"
    assert record["params"]["achieved_ratio"] < 0.5
    assert (record["accuracy_before"] - record["accuracy_after"]) * 100 <= 10 + 1e-9


def test_bad_parameters_are_refused():
    with pytest.raises(OptionError):
        StructuredProbabilisticPruning(group="kernel")
    with pytest.raises(OptionError):
        StructuredProbabilisticPruning(ratio=1.0)
    with pytest.raises(OptionError):
        StructuredProbabilisticPruning(steps=0)
    with pytest.raises(OptionError):
        StructuredProbabilisticPruning(unknown=1)
