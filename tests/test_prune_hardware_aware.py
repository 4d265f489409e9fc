"""``hardware_aware=true`` in the pruning passes: every layer ends dense or at/above its break-even
pruning ratio on the target (edgec.passes.prune.hardware_aware), on the bundled digits CNN
(pynq-z2 plans its second Conv and its Dense layer with the Resource strategy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgec.errors import OptionError
from edgec.frontend.load import load_model
from edgec.passes.prune import PruneContext, run_pruning
from edgec.passes.prune.common import prunable_layers
from edgec.passes.prune.hardware_aware import break_even_ratios, zero_fraction
from edgec.passes.prune.magnitude import MagnitudePruning
from edgec.pipeline.flow import DesignCoster

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "models" / "digits_cnn.onnx"
EXAMPLE_DATA = REPO / "examples" / "data" / "digits_test.npz"
PYNQ = DesignCoster.for_target("pynq-z2")  # the design hardware_aware prunes for, as a build makes it


@pytest.fixture(scope="module")
def digits():
    return load_model(EXAMPLE).model


@pytest.fixture(scope="module")
def ratios(digits):
    found, notes = break_even_ratios(digits, PruneContext(None, None, coster=PYNQ))
    assert not notes
    return {name: be.ratio for name, be in found.items()}


def assert_dense_or_past_break_even(original, pruned, record, ratios) -> None:
    before = {ref.name: ref for ref in prunable_layers(original)}
    for ref in prunable_layers(pruned):
        entry = record["layers"][ref.name]
        assert entry["break_even_ratio"] == pytest.approx(ratios[ref.name], abs=1e-4)
        unchanged = np.array_equal(ref.effective(pruned), before[ref.name].effective(original))
        assert unchanged or zero_fraction(ref, pruned) >= ratios[ref.name] - 1e-9, (ref.name, entry)
        assert "hardware_decision" in entry


def test_the_digits_cnn_has_resource_layers_with_break_even_ratios(ratios):
    """The unrolled first Conv breaks even at 0; the Resource-strategy layers well above the 30%
    the tests prune to (compressed weights need 2 x 6-bit indices per 16-bit weight)."""
    assert ratios["/features/features.0/Conv"] == 0.0
    assert 0.3 < ratios["/features/features.3/Conv"] < 0.6
    assert 0.3 < ratios["/classifier/Gemm"] < 0.6


def test_magnitude_raises_layers_below_break_even_without_data(digits, ratios):
    pruned, records = run_pruning(digits, ["magnitude:sparsity=0.3,hardware_aware=true"], PruneContext(None, None, coster=PYNQ))
    record = records[0]
    assert_dense_or_past_break_even(digits, pruned, record, ratios)
    layers = record["layers"]
    assert layers["/features/features.0/Conv"]["sparsity"] == pytest.approx(0.3, abs=0.02)  # r* = 0: as asked
    for name in ("/features/features.3/Conv", "/classifier/Gemm"):
        assert layers[name]["sparsity"] >= ratios[name] - 1e-9 and layers[name]["hardware_decision"].startswith("raised")
        assert "not checked on data" in layers[name]["hardware_decision"]
    assert any(note.startswith("hardware_aware (pynq-z2") for note in record["notes"])
    # without the option the same pass leaves those layers at 30%
    plain, plain_records = run_pruning(digits, ["magnitude:sparsity=0.3"], PruneContext(None, None, coster=PYNQ))
    assert plain_records[0]["layers"]["/classifier/Gemm"]["sparsity"] == pytest.approx(0.3, abs=0.01)


def test_magnitude_with_max_drop_restores_what_it_cannot_raise(digits, ratios):
    data = np.load(EXAMPLE_DATA)
    ctx = PruneContext(data["x"], data["y"], coster=PYNQ)
    pruned, records = run_pruning(digits, ["magnitude:sparsity=0.3,max_drop=1,hardware_aware=true"], ctx)
    record = records[0]
    assert_dense_or_past_break_even(digits, pruned, record, ratios)
    assert (record["accuracy_before"] - record["accuracy_after"]) * 100 <= 1.0 + 1e-9
    decisions = [record["layers"][name]["hardware_decision"] for name in ("/features/features.3/Conv", "/classifier/Gemm")]
    for decision in decisions:
        assert decision.startswith(("raised", "restored to dense", "kept"))
        if decision.startswith("raised"):
            assert "<= max_drop" in decision


def test_cpu_placement_uses_the_cpu_break_even(digits):
    ctx = PruneContext(None, None, coster=DesignCoster.for_target("pynq-z2", placement={"/classifier/Gemm": "cpu"}))
    found, _ = break_even_ratios(digits, ctx)
    be = found["/classifier/Gemm"]
    assert (be.placement, be.dense_form, be.sparse_form) == ("cpu", "cpu-dense", "cpu-sparse")
    pruned, records = run_pruning(digits, ["magnitude:sparsity=0.3,hardware_aware=true"], ctx)
    entry = records[0]["layers"]["/classifier/Gemm"]
    assert entry["placement"] == "cpu" and entry["implementation_pair"] == ["cpu-dense", "cpu-sparse"]
    assert_dense_or_past_break_even(digits, pruned, records[0], {**{n: b.ratio for n, b in found.items()}})


def test_a_cpu_only_target_places_every_layer_on_the_cpu(digits):
    pruned, records = run_pruning(
        digits, ["magnitude:sparsity=0.3,hardware_aware=true"], PruneContext(None, None, coster=DesignCoster.for_target("x86-64"))
    )
    found, _ = break_even_ratios(digits, PruneContext(None, None, coster=DesignCoster.for_target("x86-64")))
    assert {be.placement for be in found.values()} == {"cpu"}
    assert {entry["placement"] for entry in records[0]["layers"].values()} == {"cpu"}
    assert_dense_or_past_break_even(digits, pruned, records[0], {name: be.ratio for name, be in found.items()})
    assert any(note.startswith("hardware_aware (x86-64") for note in records[0]["notes"])


def test_structured_methods_record_that_there_was_nothing_to_do(digits):
    aware, records = run_pruning(digits, ["channels:ratio=0.3,hardware_aware=true"], PruneContext(None, None, coster=PYNQ))
    plain, _ = run_pruning(digits, ["channels:ratio=0.3"], PruneContext(None, None, coster=PYNQ))
    assert any("nothing to do" in note and "whole channels" in note for note in records[0]["notes"])
    for a, b in zip(prunable_layers(aware), prunable_layers(plain), strict=True):
        assert np.array_equal(a.get(aware), b.get(plain))  # the same smaller model
    _, spp_records = run_pruning(digits, ["spp:ratio=0.3,group=filter,steps=50,hardware_aware=true"], PruneContext(None, None, coster=PYNQ))
    assert any("nothing to do" in note for note in spp_records[0]["notes"])


def test_spp_columns_are_raised_by_whole_columns(digits, ratios):
    pruned, records = run_pruning(
        digits, ["spp:ratio=0.3,group=column,steps=50,hardware_aware=true"], PruneContext(None, None, coster=PYNQ)
    )
    assert_dense_or_past_break_even(digits, pruned, records[0], ratios)
    ref = next(r for r in prunable_layers(pruned) if r.name == "/classifier/Gemm")
    weights = ref.get(pruned)
    rows = np.all(weights == 0, axis=ref.out_axis)  # the Dense layer's input rows are its columns
    assert rows.sum() * weights.shape[ref.out_axis] == np.sum(weights == 0)  # zeros come in whole columns


def test_hardware_aware_takes_booleans_only():
    for value in ("maybe", 1, 0.5):
        with pytest.raises(OptionError, match="hardware_aware"):
            MagnitudePruning(None, sparsity=0.5, hardware_aware=value)
    assert MagnitudePruning(None, sparsity=0.5, hardware_aware=True).hardware_aware
    assert not MagnitudePruning(None, sparsity=0.5).hardware_aware
    with pytest.raises(OptionError, match="hardware_aware"):
        run_pruning(load_model(EXAMPLE).model, ["magnitude:sparsity=0.5,hardware_aware=2"], PruneContext(None, None, coster=PYNQ))


def slow_csr_target(tmp_path: Path) -> str:
    """pynq-z2 with a CSR kernel of 16 cycles per non-zero on its CPU (targets are data: a board file
    given by path), so the Cortex-A9's break-even ratio is well above zero."""
    text = (REPO / "targets" / "pynq-z2.yaml").read_text().replace("name: pynq-z2", "name: pynq-z2-slow-csr")
    text = text.replace("\ncpu:\n", "\ncpu:\n  sparse_cycles_per_nnz: 16\n", 1)
    path = tmp_path / "pynq-z2-slow-csr.yaml"
    path.write_text(text)
    return str(path)


def test_bnn_latent_raises_or_restores_a_cpu_placed_layer(data_dir, tmp_path):
    """The hls4ml one-layer BNN (12 binary weights) on the CPU of a board with a slow CSR kernel:
    dense untuned TVM code needs 12 / (2 MAC/cycle x 0.062) = 97 cycles, CSR 16 per non-zero + 4 per
    row, so r* = 7/12. bnn-latent's 10% is raised to r* without data, and with max_drop=0
    restored to the binary layer, since raising it changes predictions."""
    model = load_model(data_dir / "bnn_model_fc_1layer.onnx").model
    name = prunable_layers(model)[0].name
    ctx = PruneContext(None, None, coster=DesignCoster.for_target(slow_csr_target(tmp_path), placement={name: "cpu"}))
    found, _ = break_even_ratios(model, ctx)
    assert found[name].placement == "cpu" and found[name].ratio == pytest.approx(7 / 12)
    pruned, records = run_pruning(model, ["bnn-latent:ratio=0.1,hardware_aware=true"], ctx)
    entry = records[0]["layers"][name]
    assert entry["hardware_decision"].startswith("raised") and entry["ternary"]
    ref = prunable_layers(pruned)[0]
    assert zero_fraction(ref, pruned) == pytest.approx(7 / 12) and entry["chosen_ratio"] == pytest.approx(7 / 12, abs=1e-4)
    assert any("pynq-z2-slow-csr" in note for note in records[0]["notes"])

    x = np.random.default_rng(0).choice([-1.0, 1.0], size=(200, *model.get_tensor_shape(model.graph.input[0].name)[1:])).astype(np.float32)
    data_ctx = PruneContext(x, None, coster=ctx.coster)
    pruned, records = run_pruning(model, ["bnn-latent:ratio=0.1,max_drop=0,hardware_aware=true"], data_ctx)
    record = records[0]
    entry = record["layers"][name]
    assert record["accuracy_after"] == pytest.approx(record["accuracy_before"])  # max_drop 0 holds
    # 2 of 12 weights keep every prediction on these inputs; 7 do not: back to the binary layer
    assert entry["hardware_decision"].startswith("restored to dense") and "max_drop" in entry["hardware_decision"]
    assert prunable_layers(pruned)[0].binary and not entry["ternary"]
