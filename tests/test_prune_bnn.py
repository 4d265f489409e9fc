"""`bnn-latent` pruning on real BNNs: the Brevitas MNIST MLP BNN (examples/train_mnist_bnn.py) and
the hls4ml one-layer Brevitas BNN, run under qonnx execution and lowered through hls4ml."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import qonnx.core.onnx_exec as oxe
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.infer_shapes import InferShapes

import edgec
from edgec.errors import DataError, OptionError
from edgec.frontend.load import load_model
from edgec.passes.prune import PruneContext, run_pruning
from edgec.passes.prune.bnn_latent import BinaryLayer, BnnLatentPruning, parse_ladder, ternarize
from edgec.passes.prune.common import MAX_EVAL_SAMPLES, model_outputs, prunable_layers


def mnist_bnn(data_dir: Path) -> tuple[ModelWrapper, np.ndarray, np.ndarray]:
    """The MNIST BNN and its 1,000 held-out evaluation images (pixel values 0..255) with labels."""
    data = np.load(data_dir / "mnist_bnn_eval.npz")
    return load_model(data_dir / "mnist_bnn_mlp.onnx").model, data["x"].astype(np.float32), data["y"].astype(np.int64)


def assert_ternary(original: ModelWrapper, pruned: ModelWrapper, record: dict) -> None:
    """Each pruned layer multiplies by {-s, 0, +s}: its kept weights are the binary weights they
    were, and the zeros are exactly the smallest-|latent| weights of the original layer."""
    before = {ref.name: ref for ref in prunable_layers(original)}
    for ref in prunable_layers(pruned):
        entry = record["layers"][ref.name]
        if not entry["ternary"]:
            assert ref.binary
            continue
        assert ref.quant.op_type == "Quant" and not ref.binary
        old = before[ref.name]
        scale = float(np.asarray(original.get_initializer(old.quant.input[1])).reshape(-1)[0])
        effective, binary = ref.effective(pruned), old.effective(original)
        assert set(np.unique(effective)) <= {-scale, 0.0, scale}
        assert np.all((effective == 0) | (effective == binary))  # kept weights unchanged
        zeros = effective == 0
        assert zeros.sum() == entry["pruned_weights"] and entry["chosen_ratio"] == round(zeros.mean(), 4)
        latent = np.abs(old.get(original))
        assert latent[~zeros].min() >= latent[zeros].max()  # pruned by |latent|, smallest first


def hls_products(build_dir: Path) -> list[str]:
    """The nnet::product each layer of a build's hls4ml project uses, in order."""
    import re

    text = (build_dir / "hls" / "firmware" / "parameters.h").read_text()
    return re.findall(r"nnet::product::(\w+)<", text)


@pytest.mark.heavy
def test_mnist_bnn_lowers_to_xnor_popcount_bit_exactly(data_dir, tmp_path):
    model, x, y = mnist_bnn(data_dir)
    result = edgec.build(model.model, target="pynq-z2", output_dir=tmp_path / "bnn", data=(x[:400], y[:400]))
    ver = result.report["verification"]
    assert ver["bit_exact"] is True and ver["argmax_agreement"] == 1.0
    # 8-bit input x binary weights: sign flips only; binary x binary: xnor + popcount (hls4ml's
    # both_binary with its 2*popcount - n correction); binary x float-scaled weights: sign flips
    assert hls_products(tmp_path / "bnn") == ["weight_binary", "both_binary", "data_binary"]
    assert [layer["precision"]["weight"] for layer in result.report["layers"] if layer["op"] == "Dense"][:2] == ["uint<1>", "uint<1>"]


@pytest.mark.heavy
def test_mnist_bnn_prunes_within_half_a_point_and_builds(data_dir, tmp_path):
    model, x, y = mnist_bnn(data_dir)
    pruned, records = run_pruning(model, ["bnn-latent:ratio=0.5,max_drop=0.5"], PruneContext(x, y))
    record = records[0]
    assert record["mode"] == "sensitivity-allocated" and record["metric"] == "accuracy"
    drop = (record["accuracy_before"] - record["accuracy_after"]) * 100
    reduction = 1 - record["ops_after"] / record["ops_before"]
    assert drop <= 0.5 + 1e-9
    assert reduction >= 0.45  # the goal: >= 45% fewer binary ops at <= 0.5 pt, no retraining
    assert record["ops_before"] == 784 * 256 + 256 * 256 + 256 * 10
    # the reported accuracy is what qonnx execution of the pruned model gives
    n = min(len(x), MAX_EVAL_SAMPLES)
    assert np.mean(model_outputs(pruned, x[:n]).argmax(-1) == y[:n]) == pytest.approx(record["accuracy_after"])
    for name, entry in record["layers"].items():
        assert len(entry["ladder"]) == 19 and set(entry["ladder"]) >= {"0.1", "0.5", "0.9"}
        assert entry["binary_ops_after"] == entry["ops_after"] <= entry["binary_ops_before"] == entry["ops_before"], name
    assert sum(e["binary_ops_after"] for e in record["layers"].values()) == record["ops_after"]
    assert_ternary(model, pruned, record)
    assert not [n for n in pruned.graph.node if n.op_type == "BipolarQuant" and pruned.get_initializer(n.input[0]) is not None]

    # hls4ml lowering of the ternary model, verified by C simulation against qonnx execution
    result = edgec.build(pruned.model, target="pynq-z2", output_dir=tmp_path / "pruned", data=(x[:400], y[:400]))
    ver = result.report["verification"]
    assert ver["reference"] == "qonnx execution"
    assert ver["argmax_agreement"] >= 0.99
    assert ver["accuracy_simulated"] == pytest.approx(ver["accuracy_reference"], abs=0.005)
    assert ver["bit_exact"] is True
    # ternary weights on the 8-bit input use hls4ml's weight_ternary product (no multipliers); the
    # binary-input layers keep data_binary (hls4ml's weight_ternary would multiply the 0/1 code)
    products = hls_products(tmp_path / "pruned")
    assert products[0] == "weight_ternary" and "mult" not in products[:2], products


def test_peer_bnn_without_labels_uses_agreement(data_dir, tmp_path):
    model = load_model(data_dir / "bnn_model_fc_1layer.onnx").model
    shape = model.get_tensor_shape(model.graph.input[0].name)
    x = np.random.default_rng(0).choice([-1.0, 1.0], size=(64, *shape[1:])).astype(np.float32)
    pruned, records = run_pruning(model, ["bnn-latent:ratio=0.5"], PruneContext(x, None))
    record = records[0]
    assert record["mode"] == "sensitivity-allocated" and record["metric"] == "agreement"
    assert record["accuracy_before"] == 1.0 and 0.0 <= record["accuracy_after"] <= 1.0
    assert record["ops_before"] == 12 and record["ops_after"] == 6
    assert_ternary(model, pruned, record)
    # still valid QONNX: shapes infer, qonnx executes it, and the Quant yields the ternary weights
    checked = pruned.transform(InferShapes())
    quant = next(n for n in checked.graph.node if n.op_type == "Quant" and n.name.endswith("_ternary"))
    context = oxe.execute_onnx(checked, {checked.graph.input[0].name: x[:1]}, return_full_exec_context=True)
    ref = prunable_layers(checked)[0]
    np.testing.assert_array_equal(context[quant.output[0]], ref.effective(checked))
    assert np.all(np.isin(model_outputs(pruned, x), [-1.0, 1.0]))
    result = edgec.build(pruned.model, output_dir=tmp_path / "peer", data=x)
    assert result.report["verification"]["argmax_agreement"] == 1.0


def test_data_free_mode_prunes_every_binary_layer_uniformly(data_dir):
    model, x, y = mnist_bnn(data_dir)
    pruned, records = run_pruning(model, ["bnn-latent:ratio=0.3"], PruneContext(None, None))
    record = records[0]
    assert record["mode"] == "data-free uniform"
    assert record["accuracy_before"] is None and record["metric"] is None
    assert {e["chosen_ratio"] for e in record["layers"].values()} == {0.3}
    assert all("ladder" not in e for e in record["layers"].values())
    assert 1 - record["ops_after"] / record["ops_before"] == pytest.approx(0.3, abs=1e-3)
    assert_ternary(model, pruned, record)
    accuracy = np.mean(model_outputs(pruned, x).argmax(-1) == y)
    assert accuracy > 0.95  # 30% of the smallest-|latent| weights cost little even without data
    with pytest.raises(DataError):
        run_pruning(model, ["bnn-latent:ratio=0.3,max_drop=0.5"], PruneContext(None, None))


def test_ternary_quant_reproduces_sign_at_any_scale(data_dir):
    model = load_model(data_dir / "bnn_model_fc_1layer.onnx").model
    ref = prunable_layers(model)[0]
    model.set_initializer(ref.quant.input[1], np.asarray([0.375], dtype=np.float32))
    binary = ref.effective(model)
    order = np.argsort(np.abs(ref.get(model)).reshape(-1))
    ternarize(model, ref, order[:5])
    context = oxe.execute_onnx(model.transform(InferShapes()), {model.graph.input[0].name: np.ones((1, 3), np.float32)}, True)
    weights = context[ref.quant.output[0]]
    expected = binary.reshape(-1).copy()
    expected[order[:5]] = 0.0
    np.testing.assert_array_equal(weights.reshape(-1), expected)
    assert set(np.unique(weights)) == {-0.375, 0.0, 0.375}


def test_allocation_spends_the_op_budget_where_it_is_cheap():
    ladder = (0.25, 0.5, 0.75)
    big = BinaryLayer("big", "w_big", np.arange(1000), 1000, 1, {0.25: 0.0, 0.5: 0.1, 0.75: 2.0}, dict.fromkeys(ladder, 0.0))
    small = BinaryLayer("small", "w_small", np.arange(100), 100, 1, {0.25: 1.0, 0.5: 3.0, 0.75: 9.0}, dict.fromkeys(ladder, 0.0))
    ratios = BnnLatentPruning.allocate([big, small], 0.4 * 1100)
    assert ratios == {"big": 0.44, "small": 0.0}
    assert BnnLatentPruning.allocate([big, small], 1100) == {"big": 0.75, "small": 0.75}  # the ladder's top: short of the target


def test_parameters_are_checked():
    assert parse_ladder(None)[0] == 0.05 and parse_ladder(None)[-1] == 0.95
    assert parse_ladder("0.1:0.9:0.2") == (0.1, 0.3, 0.5, 0.7, 0.9)
    assert parse_ladder(0.25) == (0.25, 0.5, 0.75)
    for bad in ({"ratio": 1.5}, {"ladder": "a:b"}, {"ladder": 0}, {"seed": "x"}, {"sparsity": 0.5}):
        with pytest.raises(OptionError):
            BnnLatentPruning(None, **bad)
