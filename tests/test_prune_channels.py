"""`channels` structured pruning: physical channel removal on real and hand-built models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.infer_shapes import InferShapes

from edgec.errors import OptionError, UnsupportedOpsError
from edgec.frontend.load import load_model
from edgec.passes.prune import PruneContext, run_pruning
from edgec.passes.prune.channels import ChannelPruning, channel_groups, remove_channels, remove_zero_channels
from edgec.passes.prune.common import model_outputs, prunable_layers

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CNN = ROOT / "examples" / "models" / "digits_cnn.onnx"
DIGITS = ROOT / "examples" / "data" / "digits_test.npz"
DATA = Path(__file__).parent / "data"


def digits() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(DIGITS)
    return data["x"].astype(np.float32), data["y"]


def weights(model: ModelWrapper) -> dict[str, np.ndarray]:
    return {ref.name: np.asarray(ref.get(model)) for ref in prunable_layers(model)}


def zero_channels(model: ModelWrapper, layer: str, channels: list[int]) -> None:
    ref = next(r for r in prunable_layers(model) if r.name == layer)
    w = np.array(ref.get(model))
    index = [slice(None)] * w.ndim
    index[ref.out_axis] = channels
    w[tuple(index)] = 0.0
    ref.set(model, w)


def run_ort(model: ModelWrapper, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {model.graph.input[0].name: x})[0]


@pytest.mark.parametrize(
    ("path", "zeroed", "flat"),
    [
        (DIGITS_CNN, {"/features/features.0/Conv": [1], "/features/features.3/Conv": [2, 5]}, False),
        (DATA / "brevitas_digits_cnn.onnx", {"/c1/Conv": [0, 3], "/c2/Conv": [1, 7, 9]}, False),
        (DATA / "brevitas_digits_mlp.onnx", {"/fc1/MatMul": [4, 5, 6, 20]}, True),
    ],
)
def test_removing_zero_channels_keeps_outputs(path: Path, zeroed: dict[str, list[int]], flat: bool) -> None:
    model = load_model(path).model
    for layer, channels in zeroed.items():
        zero_channels(model, layer, channels)
    x, _ = digits()
    x = x[:100].reshape(100, -1) if flat else x[:100]
    before = model_outputs(model, x)
    shapes = {name: w.shape for name, w in weights(model).items()}

    pruned, removed = remove_zero_channels(model)

    assert removed == {layer: len(channels) for layer, channels in zeroed.items()}
    onnx.checker.check_model(pruned.model)
    pruned.transform(InferShapes())
    np.testing.assert_allclose(model_outputs(pruned, x), before, rtol=1e-5, atol=1e-5)
    refs = {r.name: r for r in prunable_layers(pruned)}
    for layer, channels in zeroed.items():
        assert refs[layer].get(pruned).shape[refs[layer].out_axis] == shapes[layer][refs[layer].out_axis] - len(channels)
    assert sum(w.size for w in weights(pruned).values()) < sum(int(np.prod(s)) for s in shapes.values())


def test_zero_channels_through_nhwc_flatten() -> None:
    """Keras export: Conv -> Relu -> Transpose(NHWC) -> Flatten -> Gemm; the removed channel's
    rows are strided in the flattened vector and its relu(bias) constant moves into the bias."""
    model = load_model(DATA / "conv2d_small_keras.onnx").model
    zero_channels(model, "Conv2D__", [1])
    x = np.random.default_rng(0).random((20, 8, 8, 1)).astype(np.float32)
    before = model_outputs(model, x)
    pruned, removed = remove_zero_channels(model)
    assert removed == {"Conv2D__": 1}
    assert weights(pruned)["Gemm_6"].shape == (64, 10)
    np.testing.assert_allclose(model_outputs(pruned, x), before, rtol=1e-5, atol=1e-6)


def _conv(name: str, inp: str, out: str, cin: int, cout: int, rng: np.random.Generator, pad: int = 1) -> tuple:
    w = numpy_helper.from_array(rng.normal(size=(cout, cin, 3, 3)).astype(np.float32), f"{name}_w")
    node = helper.make_node("Conv", [inp, f"{name}_w"], [out], name=name, kernel_shape=[3, 3], pads=[pad] * 4)
    return node, w


def _graph(nodes: list, inits: list, cin: int = 3) -> ModelWrapper:
    graph = helper.make_graph(
        nodes,
        "built",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(proto)
    return ModelWrapper(proto).transform(InferShapes())


def _head(inp: str, channels: int, rng: np.random.Generator) -> tuple[list, list]:
    fc = numpy_helper.from_array(rng.normal(size=(10, channels * 36)).astype(np.float32), "fc_w")
    nodes = [
        helper.make_node("Flatten", [inp], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w"], ["y"], name="fc", transB=1),
    ]
    return nodes, [fc]


def residual_model() -> ModelWrapper:
    """x -> A -> Relu -> B -> Add(B, relu(A)) -> Relu -> Flatten -> Gemm."""
    rng = np.random.default_rng(1)
    a, wa = _conv("A", "x", "a", 3, 8, rng)
    b, wb = _conv("B", "a_relu", "b", 8, 8, rng)
    nodes = [
        a,
        helper.make_node("Relu", ["a"], ["a_relu"], name="relu_a"),
        b,
        helper.make_node("Add", ["b", "a_relu"], ["s"], name="skip"),
        helper.make_node("Relu", ["s"], ["s_relu"], name="relu_s"),
    ]
    head, inits = _head("s_relu", 8, rng)
    return _graph(nodes + head, [wa, wb] + inits)


def concat_model() -> ModelWrapper:
    """x -> (A: 4 ch, B: 6 ch) -> Concat -> Relu -> C -> Relu -> Flatten -> Gemm."""
    rng = np.random.default_rng(2)
    a, wa = _conv("A", "x", "a", 3, 4, rng)
    b, wb = _conv("B", "x", "b", 3, 6, rng)
    c, wc = _conv("C", "cat_relu", "c", 10, 5, rng)
    nodes = [
        a,
        b,
        helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
        helper.make_node("Relu", ["cat"], ["cat_relu"], name="relu_cat"),
        c,
        helper.make_node("Relu", ["c"], ["c_relu"], name="relu_c"),
    ]
    head, inits = _head("c_relu", 5, rng)
    return _graph(nodes + head, [wa, wb, wc] + inits)


def _kept_rows(original: np.ndarray, pruned: np.ndarray) -> list[int]:
    """Which filters (rows of axis 0) of ``original`` survive in ``pruned``."""
    return [int(np.flatnonzero([np.array_equal(original[i], row) for i in range(len(original))])[0]) for row in pruned]


def test_residual_add_couples_producers() -> None:
    model = residual_model()
    groups = channel_groups(model)
    coupled = next(g for g in groups if "A" in g.layers)
    assert coupled.prunable and sorted(coupled.layers) == ["A", "B"] and coupled.channels == 8
    assert not next(g for g in groups if "fc" in g.layers).prunable

    pruning = ChannelPruning(PruneContext(None, None), ratio=0.5)
    pruned = model.transform(pruning)
    onnx.checker.check_model(pruned.model)
    before, after = weights(model), weights(pruned)
    assert after["A"].shape == (4, 3, 3, 3) and after["B"].shape == (4, 4, 3, 3) and after["fc"].shape == (10, 4 * 36)
    kept_a = _kept_rows(before["A"], after["A"])
    kept_b = _kept_rows(before["B"][:, kept_a], after["B"])  # B's inputs are A's kept channels
    assert kept_a == kept_b  # the same channel indices left both producers
    # the dropped channels are the ones with the smallest summed L1 norm over A and B
    norms = np.abs(before["A"]).reshape(8, -1).sum(1) + np.abs(before["B"]).reshape(8, -1).sum(1)
    assert sorted(set(range(8)) - set(kept_a)) == sorted(np.argsort(norms)[:4].tolist())
    assert pruning.record.layers["A"] == {"channels_before": 8, "channels_after": 4, "channels_removed": 4}
    x = np.random.default_rng(3).normal(size=(1, 3, 6, 6)).astype(np.float32)
    assert run_ort(pruned, x).shape == (1, 10)


def test_residual_removal_equals_zeroed_filters() -> None:
    """Removing coupled channels is exactly zeroing those filters of both producers."""
    model = residual_model()
    drop = [1, 4, 6]
    zeroed = ModelWrapper(model.model.__deepcopy__())
    zero_channels(zeroed, "A", drop)
    zero_channels(zeroed, "B", drop)
    pruned = remove_channels(model, "B", drop)  # either producer names the group
    onnx.checker.check_model(pruned.model)
    x = np.random.default_rng(4).normal(size=(1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run_ort(pruned, x), run_ort(zeroed, x), rtol=1e-5, atol=1e-5)
    assert weights(pruned)["A"].shape[0] == weights(pruned)["B"].shape[0] == 5


def test_concat_maps_offsets_into_consumer() -> None:
    model = concat_model()
    before = weights(model)
    pruned = model.transform(ChannelPruning(PruneContext(None, None), ratio=0.5))
    onnx.checker.check_model(pruned.model)
    after = weights(pruned)
    assert after["A"].shape[0] == 2 and after["B"].shape[0] == 3 and after["C"].shape == (3, 5, 3, 3)
    kept_a, kept_b = _kept_rows(before["A"], after["A"]), _kept_rows(before["B"], after["B"])
    # C reads exactly the surviving channels: A's, then B's shifted by A's 4 channels
    columns = np.take(before["C"], kept_a + [4 + i for i in kept_b], axis=1)
    assert len(set(_kept_rows(columns, after["C"]))) == 3
    x = np.random.default_rng(5).normal(size=(1, 3, 6, 6)).astype(np.float32)
    assert run_ort(pruned, x).shape == (1, 10)
    # zeroing then removing B's channel 2 changes nothing
    zeroed = ModelWrapper(model.model.__deepcopy__())
    zero_channels(zeroed, "B", [2])
    np.testing.assert_allclose(run_ort(remove_channels(zeroed, "B", [2]), x), run_ort(zeroed, x), rtol=1e-5, atol=1e-5)


def test_unfollowable_consumer_leaves_layer_alone() -> None:
    """Conv -> Softmax over channels: removing a channel would change every other channel's
    value, so the layer is not pruned and the note says why."""
    rng = np.random.default_rng(6)
    a, wa = _conv("A", "x", "a", 3, 4, rng)
    head, inits = _head("soft", 4, rng)
    model = _graph([a, helper.make_node("Softmax", ["a"], ["soft"], name="softmax", axis=1)] + head, [wa] + inits)
    with pytest.raises(UnsupportedOpsError, match="Softmax"):
        remove_channels(model, "A", [0])
    pruning = ChannelPruning(PruneContext(None, None), ratio=0.5)
    pruned = model.transform(pruning)
    np.testing.assert_array_equal(weights(pruned)["A"], weights(model)["A"])
    assert any(note.startswith("A: not pruned") and "Softmax" in note for note in pruning.record.notes)


@pytest.mark.parametrize(("ratio", "scope"), [(0.25, "layer"), (0.5, "layer"), (0.75, "layer"), (0.5, "global")])
def test_ratio_is_fraction_of_channels_removed(ratio: float, scope: str) -> None:
    model = load_model(DIGITS_CNN).model
    pruning = ChannelPruning(PruneContext(None, None), ratio=ratio, scope=scope)
    pruned = model.transform(pruning)
    onnx.checker.check_model(pruned.model)
    after = weights(pruned)
    counts = {"/features/features.0/Conv": 4, "/features/features.3/Conv": 8}
    if scope == "layer":
        for layer, channels in counts.items():
            assert after[layer].shape[0] == channels - min(round(ratio * channels), channels - 1)
            assert pruning.record.layers[layer]["channels_after"] == after[layer].shape[0]
    else:
        removed = sum(channels - after[layer].shape[0] for layer, channels in counts.items())
        assert removed == round(ratio * sum(counts.values()))
    assert after["/classifier/Gemm"].shape[0] == 10  # the output width stays
    assert any("/classifier/Gemm: not pruned" in note for note in pruning.record.notes)


def test_min_channels_is_kept() -> None:
    model = load_model(DIGITS_CNN).model
    pruned = model.transform(ChannelPruning(PruneContext(None, None), ratio=0.9, min_channels=3))
    assert weights(pruned)["/features/features.0/Conv"].shape[0] == 3


def test_max_drop_is_respected_on_digits() -> None:
    model = load_model(DIGITS_CNN).model
    x, y = digits()
    ctx = PruneContext(x, y)
    pruned, records = run_pruning(model, ["channels:ratio=0.75,max_drop=2"], ctx)
    record = records[0]
    assert (record["accuracy_before"] - record["accuracy_after"]) * 100 <= 2 + 1e-9
    assert record["params"]["achieved_ratio"] < 0.75
    assert any("stopped at ratio" in note for note in record["notes"])
    assert record["ops_after"] <= record["ops_before"]


def test_run_pruning_record_and_accuracy() -> None:
    model = load_model(DIGITS_CNN).model
    x, y = digits()
    pruned, records = run_pruning(model, ["channels:ratio=0.5"], PruneContext(x, y))
    record = records[0]
    assert record["name"] == "channels" and record["mode"] == "one-shot"
    assert record["ops_after"] < record["ops_before"] and record["params_after"] < record["params_before"]
    conv1 = record["layers"]["/features/features.0/Conv"]
    assert conv1["channels_before"] == 4 and conv1["channels_after"] == 2 and conv1["ops_after"] < conv1["ops_before"]
    assert record["layers"]["/features/features.3/Conv"]["channels_after"] == 4
    assert 0.0 <= record["accuracy_after"] <= record["accuracy_before"]
    assert run_ort(pruned, x[:1]).shape == (1, 10)


def test_bad_specs_raise_option_error() -> None:
    model = load_model(DIGITS_CNN).model
    for spec in ["channels:ratio=0.5,bogus=1", "channels:norm=l3", "channels:ratio=1.5", "channels:scope=everywhere", "channels:ratio"]:
        with pytest.raises(OptionError):
            run_pruning(model, [spec], PruneContext(None, None))
