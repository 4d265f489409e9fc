"""Break-even pruning ratios (edgec.cost.break_even): the model against hand-computed formulas,
monotonicity in the pruning ratio, implementation choices, and the CPU measurement on this host."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from edgec.cost.break_even import (
    CPU_DENSE,
    FPGA_RESOURCE_COMPRESSED,
    FPGA_RESOURCE_DENSE,
    FPGA_UNROLLED,
    FPGA_UNROLLED_TERNARY,
    METRICS,
    break_even_table,
    choose_implementation,
    compressed_storage,
    hls4ml_index_bits,
    layer_break_even,
    measure_cpu_break_even,
    pruned_codes,
)
from edgec.cost.device import device_for
from edgec.cost.layer import LayerConfig
from edgec.errors import OptionError
from edgec.targets import load_target


def dense_layer(
    n_in: int = 16, n_out: int = 8, strategy: str = "resource", reuse_factor: int = 4, weight_bits: int = 8, seed: int = 0
) -> LayerConfig:
    """A Dense layer with random ``weight_bits``-bit weights, 16-bit inputs, 24-bit accumulator."""
    codes = np.random.default_rng(seed).integers(-(2 ** (weight_bits - 1)) + 1, 2 ** (weight_bits - 1), size=(n_in, n_out))
    codes[codes == 0] = 1
    return LayerConfig(
        name="fc",
        kind="dense",
        op="MatMul",
        output_tensor="y",
        in_shape=[n_in],
        out_shape=[n_out],
        strategy=strategy,
        reuse_factor=reuse_factor,
        input_bits=16,
        result_bits=16,
        accum_bits=24,
        weight_bits=weight_bits,
        n_in=n_in,
        n_out=n_out,
        weight_codes=codes,
    )


@pytest.fixture(scope="module")
def pynq():
    target = load_target("pynq-z2")
    return target, device_for(target)


def test_hls4ml_compressed_format_storage(pynq):
    """hls4ml's compressed struct {row, col, weight}: both indices as wide as the largest index
    (16x8 -> largest index 15 -> 4 bits), non-zeros padded to a multiple of the reuse factor."""
    layer = dense_layer()
    assert hls4ml_index_bits(15) == 4 and hls4ml_index_bits(16) == 5 and hls4ml_index_bits(0) == 32
    storage = compressed_storage(layer, 63)
    assert storage["index_bits"] == 4 and storage["entry_bits"] == 8 + 2 * 4
    assert storage["stored_entries"] == 64 and storage["padding_entries"] == 1  # 63 -> next multiple of RF 4
    assert storage["compressed_bits"] == 64 * 16 and storage["dense_bits"] == 128 * 8
    # storage break-even 2I / (w + 2I) = 8 / 16
    assert storage["storage_break_even"] == pytest.approx(0.5)


def test_resource_energy_break_even_matches_the_hand_computed_formula(pynq):
    """16x8 Dense, 8-bit weights, 16-bit inputs, 24-bit accumulator, Resource RF 4 on pynq-z2.

    Per product (Horowitz ISSCC 2014 at 45 nm/0.9 V, scaled to 28 nm/1.0 V by (28/45)(1.0/0.9)^2):
    multiply 3.1/1024 pJ x 16 x 8 x 4 (DSP gap), add (0.03 + 0.07 x 16/24) pJ x 14 (logic gap),
    BRAM 0.76 pJ/bit; dense reads 8 bits, compressed 8 + 2 x 4. r* = 2I b / (m + a + (w + 2I) b),
    rounded up to whole weights (128)."""
    target, device = pynq
    scale = (28 / 45) * (1.0 / 0.9) ** 2
    m = 3.1 / 1024 * 16 * 8 * 4 * scale
    a = (0.03 + 0.07 * 16 / 24) * 14 * scale
    b = 0.76
    closed_form = 2 * 4 * b / (m + a + (8 + 2 * 4) * b)
    assert closed_form == pytest.approx(0.4289, abs=1e-4)
    be = layer_break_even(dense_layer(), target, device, "fpga", "energy")
    assert (be.dense_form, be.sparse_form) == (FPGA_RESOURCE_DENSE, FPGA_RESOURCE_COMPRESSED)
    assert be.terms["energy_break_even_closed_form"] == pytest.approx(closed_form, rel=1e-9)
    assert be.ratio == pytest.approx(math.ceil(closed_form * 128) / 128)
    # at r* the compressed form costs at most the dense one, one weight less pruned it costs more
    assert be.terms["multipliers_dense"] == 32


def test_costs_are_monotone_in_the_pruning_ratio(pynq):
    target, device = pynq
    for strategy, rf in (("resource", 4), ("latency", 1)):
        table = break_even_table(dense_layer(strategy=strategy, reuse_factor=rf), target, device, "fpga")
        assert set(table) == set(METRICS)
        for metric, be in table.items():
            ratios = [p["ratio"] for p in be.curve]
            sparse = [p["sparse"] for p in be.curve]
            assert ratios == sorted(ratios) and ratios[0] == 0.0 and ratios[-1] > 0.9
            assert all(later <= earlier + 1e-9 for earlier, later in zip(sparse, sparse[1:])), (strategy, metric, sparse)
            dense = [p["dense"] for p in be.curve]
            assert max(dense) - min(dense) <= 0.05 * max(dense), (strategy, metric)  # the dense form hardly moves
            # the search agrees with the curve: at and above r* the sparse form is no dearer
            if be.ratio is not None:
                assert all(p["sparse"] <= p["dense"] * (1 + 1e-9) for p in be.curve if p["ratio"] >= be.ratio)


def test_unrolled_layers_break_even_at_zero_and_pruning_saves(pynq):
    target, device = pynq
    table = break_even_table(dense_layer(strategy="latency", reuse_factor=1), target, device, "fpga")
    for metric in METRICS:
        assert table[metric].ratio == 0.0 and table[metric].sparse_form == FPGA_UNROLLED
    saving = {metric: {round(p["ratio"], 2): p["saving"] for p in table[metric].curve} for metric in METRICS}
    assert all(value == 0.0 for value in saving["cycles"].values())  # the adder tree's depth follows n_in
    # half the products gone: about 40% of the LUT/DSP/FF share of the device; energy less, since the
    # board's static power over the layer's latency does not shrink
    assert saving["resources"][0.0] == 0.0 and 0.3 < saving["resources"][0.5] < saving["resources"][0.9]
    assert 0.0 < saving["energy"][0.5] < saving["energy"][0.9] < saving["resources"][0.9]
    form, reason, _ = choose_implementation(dense_layer(strategy="latency", reuse_factor=1), 0.3, target, device)
    assert form == FPGA_UNROLLED and "r* = 0" in reason


def test_binary_layers_compare_the_ternary_form_with_xnor(pynq):
    """Pruning a binary (1-bit) layer makes it ternary: its r* is searched, not assumed 0."""
    target, device = pynq
    layer = dense_layer(strategy="latency", reuse_factor=1, weight_bits=2)
    layer.weight_codes = np.sign(layer.weight_codes)
    layer.weight_bits, layer.binary_weights, layer.input_bits = 1, True, 1
    be = layer_break_even(layer, target, device, "fpga", "energy")
    assert (be.dense_form, be.sparse_form) == (FPGA_UNROLLED, FPGA_UNROLLED_TERNARY)
    assert len({p["dense"] for p in be.curve}) == 1  # the unpruned XNOR-popcount layer
    sparse = [p["sparse"] for p in be.curve]
    assert all(later <= earlier for earlier, later in zip(sparse, sparse[1:]))
    assert be.ratio is not None and 0.0 <= be.ratio < 1.0
    assert all(p["sparse"] <= p["dense"] for p in be.curve if p["ratio"] >= be.ratio)
    assert all(p["sparse"] > p["dense"] for p in be.curve if p["ratio"] < be.ratio)


def test_choose_implementation_says_why(pynq):
    target, device = pynq
    layer = dense_layer()
    r_star = layer_break_even(layer, target, device).ratio
    form, reason, be = choose_implementation(layer, 0.3, target, device)
    assert form == FPGA_RESOURCE_DENSE and be.ratio == r_star
    assert f"pruned 30% < r* {r_star * 100:.0f}% on pynq-z2" in reason and "saves nothing" in reason
    form, reason, _ = choose_implementation(layer, 0.9, target, device)
    # hls4ml 1.3.0 cannot generate compressed layers (edgec.cost.break_even.HLS4ML_COMPRESSION_WORKS)
    assert form == FPGA_RESOURCE_DENSE and "would save" in reason and "hls4ml 1.3.0 cannot generate" in reason
    form, reason, _ = choose_implementation(layer, 0.9, target, device, metric="cycles")
    assert form == FPGA_RESOURCE_DENSE and "saves nothing" in reason  # same ReuseFactor loop: a tie
    conv = dense_layer(n_in=144, n_out=32, reuse_factor=16)
    conv.kind, conv.op, conv.positions = "conv", "Conv", 100
    form, reason, _ = choose_implementation(conv, 0.95, target, device)
    assert form == FPGA_RESOURCE_DENSE and "Dense layers only" in reason


def test_pruned_codes_zero_the_smallest_first():
    codes = np.array([[5, -1], [0, 3]])
    assert pruned_codes(codes, 0.5).tolist() == [[5, 0], [0, 3]]
    assert np.count_nonzero(pruned_codes(codes, 0.0)) == 3  # zeros already there stay


def test_user_mistakes_are_edgec_errors(pynq):
    target, device = pynq
    with pytest.raises(OptionError, match="metric"):
        layer_break_even(dense_layer(), target, device, "fpga", "latency-ish")
    with pytest.raises(OptionError, match="placement"):
        layer_break_even(dense_layer(), target, device, "gpu")
    relu = LayerConfig(name="act", kind="activation", op="Relu", output_tensor="y", in_shape=[8], out_shape=[8])
    with pytest.raises(OptionError, match="act"):
        layer_break_even(relu, target, device)
    with pytest.raises(OptionError, match="positive"):
        measure_cpu_break_even(0, 16)
    with pytest.raises(OptionError, match=r"\[0, 1\)"):
        measure_cpu_break_even(16, 16, ratios=(0.5, 1.0))


def test_cpu_break_even_follows_the_cpu_roofline():
    """x86-64 (this host class), a 256->128 Dense whose weights fit in L2 (no memory term). Measured
    on this host (docs/cpu-backend.md, "Calibration"): untuned TVM dense code reaches 6.1% of the
    8 MAC/cycle SIMD peak, so 32768 MACs take 32768 / (8 x 0.061) = 67,147 cycles; scipy's scalar
    CSR takes 2 cycles per non-zero and 4 per row. CSR is faster even with every weight kept
    (2 x 32768 + 4 x 128 = 66,048 cycles), so r* = 0; with an 8-cycle CSR kernel it breaks even at
    (67,147 - 512) / 8 = 8,329 non-zeros, r* = 1 - 8329 / 32768 = 0.7458."""
    target = load_target("x86-64")
    layer = dense_layer(n_in=256, n_out=128)
    weights = 256 * 128
    table = break_even_table(layer, target, None, "cpu")
    assert table["cycles"].ratio == pytest.approx(0.0, abs=1.5 / weights)
    assert table["energy"].ratio == table["cycles"].ratio  # energy = active power x latency
    # weight storage: 8 bytes per non-zero plus 129 row pointers of 4 bytes against 4 bytes per weight
    assert table["resources"].ratio == pytest.approx(0.5 + 129 * 4 / (32768 * 8), abs=1.5 / weights)
    for metric, be in table.items():
        assert (be.dense_form, be.sparse_form, be.placement) == (CPU_DENSE, "cpu-sparse", "cpu")
        sparse = [p["sparse"] for p in be.curve]
        assert all(later <= earlier for earlier, later in zip(sparse, sparse[1:])), metric
    # a board whose CSR kernel needs 8 cycles per non-zero (cpu: sparse_cycles_per_nnz: 8)
    slow = replace(target, cpu=replace(target.cpu, sparse_cycles_per_nnz=8.0))
    be = layer_break_even(layer, slow, None, "cpu", "cycles")
    assert be.ratio == pytest.approx(0.7458, abs=2 / weights)
    form, reason, _ = choose_implementation(layer, 0.9, slow, None, "cpu", "cycles")
    assert form == CPU_DENSE and "a CSR kernel would save" in reason and "TVM path lowers CPU layers densely" in reason
    form, reason, _ = choose_implementation(layer, 0.5, slow, None, "cpu", "cycles")
    assert form == CPU_DENSE and "saves nothing" in reason
    with pytest.raises(OptionError, match="no FPGA"):
        layer_break_even(layer, target, None, "fpga")


def test_measured_cpu_break_even_on_this_host():
    result = measure_cpu_break_even(256, 256, repeats=5)
    assert result["break_even_ratio"] is not None and 0.0 < result["break_even_ratio"] < 1.0
    assert [p["ratio"] for p in result["curve"]] == sorted(p["ratio"] for p in result["curve"])
    assert all(p["dense_ns"] > 0 and p["sparse_ns"] > 0 for p in result["curve"])
    assert result["curve"][0]["nonzeros"] == 256 * 256 and result["curve"][-1]["nonzeros"] == round(0.01 * 256 * 256)
    assert "-O3" in result["flags"] and "-march=native" in result["flags"]
    assert result["cpu_model"] and result["compiler"]
    conv = measure_cpu_break_even(32, 144, positions=100, ratios=(0.0, 0.5, 0.9), repeats=3)
    assert conv["positions"] == 100 and len(conv["curve"]) == 3
