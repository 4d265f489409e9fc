"""Break-even pruning ratios: from which fraction of zero weights a sparse implementation of a layer
beats the dense one, per metric (cycles, resources, energy), on the chosen target.

ADMM-NN (Ren et al., "ADMM-NN: An Algorithm-Hardware Co-Design Framework of DNNs Using Alternating
Direction Methods of Multipliers", ASPLOS 2019, sec. 5) observed that a pruned layer only pays off
on real hardware above its *break-even pruning ratio* r*: below it, the index storage and the
irregular access of a sparse implementation cost more than the zeros save. Here

    r* = the smallest r in [0, 1) such that cost_sparse(r') <= cost_dense(r') for every r' >= r,

searched on the layer's own weight count (r = zeros / weights), with the costs from edgec's models
(``ratio`` is None when the sparse form costs more at every r < 1). ``cost_dense(r)`` is the
dense implementation of the same pruned layer, so r* answers "given this layer, which form?".

Implementation pairs (docs/break-even.md has the derivations and a worked pynq-z2 example):

- **FPGA, unrolled** (Latency strategy, or ReuseFactor 1): every weight is a constant HLS sees, and
  a zero constant builds no multiplier and no adder input (edgec.cost.resources). The "sparse" form
  is the same design with fewer products, so r* = 0: pruning never costs anything. The saving curve
  is computed from the resource/energy models with the layer's own weight codes (the smallest
  magnitudes zeroed first, as magnitude pruning does). A binary layer is the exception: pruning
  makes it ternary (2-bit weights), whose products and zero handling cost more than XNOR-popcount,
  so its r* is searched like the Resource pair.
- **FPGA, Resource strategy** (ReuseFactor > 1): dense weights in memory, ceil(N / RF) multipliers
  reading every weight (zeros too), against hls4ml's compressed weights
  (``nnet_dense_compressed.h``): the non-zeros, padded to a multiple of RF, each stored as a struct
  ``{index row_index; index col_index; weight}`` with ``index`` an unsigned integer as wide as the
  largest stored index (hls4ml/model/types.py ``CompressedWeightVariable``), ceil(nnz / RF)
  multipliers and an n_out-way scatter of every product (``fill_mult``). Per metric:

  * storage: dense N*w bits, compressed nnz*(w + 2*I) bits -> r*_storage = 2I / (w + 2I);
  * energy per product (edgec.cost.energy): dense m + a + w*b, compressed m + a + (w + 2I)*b with m
    the multiply, a the add and b the block-RAM read energy per bit, so
    r*_energy = 2I*b / (m + a + (w + 2I)*b) (static energy cancels: equal latency at equal RF);
  * cycles: the ReuseFactor loop is the same, so the forms tie (r* = 0, no saving);
  * resources: the sum of the layer's LUT/FF/DSP/BRAM18 fractions of the device, from
    edgec.cost.resources (each resource's own r* is in ``terms``).

  hls4ml 1.3.0 cannot generate compressed layers (HLS4ML_COMPRESSION_WORKS below), and
  has no compressed convolution at all: :func:`choose_implementation` then keeps the layer dense and
  says what compression would save.
- **CPU**: dense float32 SIMD GEMV/GEMM (a roofline of compute and memory traffic) against CSR
  (float32 values, int32 column indices, one row pointer per row), from edgec.cost.cpu. A
  convolution is a GEMM over its ``positions`` output pixels (im2col). "Resources" on the CPU are
  the bytes of weight storage. edgec's TVM path lowers every CPU layer densely, so
  :func:`choose_implementation` says when CSR would have won instead of pretending it is used.
  :func:`measure_cpu_break_even` measures r* on the host (``cpu_sparse_bench.c``).
"""

from __future__ import annotations

import atexit
import json
import math
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgec.cost import cycles as cycles_model
from edgec.cost import energy as energy_model
from edgec.cost import resources as resources_model
from edgec.cost.device import Device
from edgec.cost.layer import LayerConfig
from edgec.errors import OptionError, ToolchainError
from edgec.targets import Target

METRICS = ("cycles", "resources", "energy")
PLACEMENTS = ("fpga", "cpu")
FPGA_UNROLLED = "fpga-unrolled"
FPGA_RESOURCE_DENSE = "fpga-resource-dense"
FPGA_RESOURCE_COMPRESSED = "fpga-resource-compressed"
FPGA_UNROLLED_TERNARY = "fpga-unrolled-ternary"
CPU_DENSE = "cpu-dense"
CPU_SPARSE = "cpu-sparse"

# edgec's CPU path (edgec.backends.tvm) compiles the float32 ONNX graph with TVM's dense operators:
# weights are float32 and every layer is lowered densely (no sparse schedule). Flip this when it
# lowers pruned layers to a sparse kernel.
TVM_LOWERS_SPARSE = False
CPU_VALUE_BYTES = 4  # float32 weights (the TVM path runs the float graph)
CPU_INDEX_BYTES = 4  # int32 column indices and row pointers (scipy.sparse/TVM sparse_dense CSR convention)
# Ratios of the saving curve reported for unrolled layers.
SAVING_CURVE_RATIOS = tuple(round(0.1 * i, 1) for i in range(10))
# The r* search evaluates every weight count up to this many weights, a grid of GRID_POINTS counts
# (then bisection inside the bracket) above; layers whose products are sized by their constants
# (constant census, seconds on big layers) use CENSUS_GRID_POINTS.
EXACT_SEARCH_MAX_WEIGHTS = 4096
GRID_POINTS = 256
CENSUS_GRID_POINTS = 32


@dataclass
class BreakEven:
    """The break-even pruning ratio of one layer for one implementation pair and metric.

    ``ratio``: the smallest fraction of zero weights from which ``sparse_form`` costs at most
    ``dense_form`` (None: never below 1). ``terms``: the formula's terms (sizes, bits, energies)
    and the per-resource ratios. ``curve``: costs of both forms at a few ratios.
    """

    layer: str
    placement: str
    dense_form: str
    sparse_form: str
    metric: str
    ratio: float | None
    terms: dict = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)

    def saving_at(self, ratio: float) -> float | None:
        """Fraction of the dense form's cost the sparse form saves at ``ratio`` (from the curve,
        linearly interpolated; None without a curve)."""
        if not self.curve:
            return None
        rs = [p["ratio"] for p in self.curve]
        dense = np.interp(ratio, rs, [p["dense"] for p in self.curve])
        sparse = np.interp(ratio, rs, [p["sparse"] for p in self.curve])
        return float(1.0 - sparse / dense) if dense else 0.0

    def as_dict(self) -> dict:
        """JSON-ready form (report.json)."""
        return {
            "layer": self.layer,
            "placement": self.placement,
            "dense_form": self.dense_form,
            "sparse_form": self.sparse_form,
            "metric": self.metric,
            "ratio": None if self.ratio is None else round(self.ratio, 6),
            "terms": _jsonable(self.terms),
            "curve": _jsonable(self.curve),
        }


# hls4ml 1.3.0 cannot generate compressed Dense layers for the Vivado/Vitis backends: its config
# template has no `dense_function` for strategy "compressed" (KeyError during conversion; checked
# with a 256x64 layer at 85% zeros, see docs/hls4ml-notes.md). Whether compression would pay off
# is decided per layer by choose_implementation (reported in each layer's
# `implementation` and `break_even_ratio`). When a release fixes it, flip this, give LayerChoice a
# compressed flag where choose_implementation returns fpga-resource-compressed, set hls4ml's
# `Compression: True` for it in hls4ml_backend.lower and pass it to the cost layers (plan_cost_layers).
HLS4ML_COMPRESSION_WORKS = False


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return round(float(value), 9)
    return value


# -- weights at a pruning ratio ---------------------------------------------------------------------


def pruned_codes(codes: np.ndarray, ratio: float) -> np.ndarray:
    """``codes`` with the round(ratio * N) smallest magnitudes set to zero (ties: lowest index
    first); codes that are zero already count towards the ratio."""
    flat = np.asarray(codes, dtype=np.int64).reshape(-1)
    zeros = int(round(min(max(ratio, 0.0), 1.0) * flat.size))
    return _zero_first(flat, np.argsort(np.abs(flat), kind="stable"), zeros).reshape(np.shape(codes))


def _zero_first(flat: np.ndarray, order: np.ndarray, zeros: int) -> np.ndarray:
    out = flat.copy()
    out[order[:zeros]] = 0
    return out


def hls4ml_index_bits(max_index: int) -> int:
    """Width of hls4ml's compressed-weight index type for the largest stored index
    (``int(np.log2(max_idx) + 1)``; 32 when every stored weight sits at index 0)."""
    return int(max_index).bit_length() if max_index > 0 else 32


def compressed_storage(layer: LayerConfig, nonzeros: int) -> dict:
    """hls4ml's compressed weights of ``layer`` with ``nonzeros`` non-zero weights, against its
    dense weight memory (hls4ml/model/types.py ``CompressedWeightVariable``: the non-zeros padded
    with zeros to a multiple of the reuse factor, one ``{row, col, weight}`` struct each, both
    indices as wide as the largest index, here taken as max(n_in, n_out) - 1)."""
    rf = max(1, layer.reuse_factor)
    weights = layer.n_in * layer.n_out
    stored = math.ceil(nonzeros / rf) * rf
    index_bits = hls4ml_index_bits(max(layer.n_in, layer.n_out) - 1)
    entry_bits = layer.weight_bits + 2 * index_bits
    return {
        "weights": weights,
        "nonzeros": nonzeros,
        "stored_entries": stored,
        "padding_entries": stored - nonzeros,
        "index_bits": index_bits,
        "entry_bits": entry_bits,
        "compressed_bits": stored * entry_bits,
        "dense_bits": weights * layer.weight_bits,
        "storage_break_even": 2 * index_bits / entry_bits,
    }


# -- FPGA costs -------------------------------------------------------------------------------------


def _fpga_variant(layer: LayerConfig, codes: np.ndarray, compressed: bool, ternary: bool) -> LayerConfig:
    variant = replace(layer, weight_codes=codes, compressed=compressed)
    if ternary:  # a pruned binary layer: weights -1, 0, +1 in a 2-bit type (bnn-latent's ternary Quant)
        variant = replace(variant, weight_bits=2, binary_weights=False, weight_codes=np.sign(codes).astype(np.int64))
    return variant


def fpga_layer_cost(layer: LayerConfig, device: Device, power: dict) -> dict:
    """Cycles, resources (sum of LUT/FF/DSP/BRAM18 fractions of ``device``) and energy (nJ, without
    the PS-PL transfers, which do not depend on the form) of one layer alone, from the cost models."""
    from edgec.cost.design import _depth

    cyc = cycles_model.layer_cycles(layer, device)
    res = resources_model.layer_resources(layer, device, _depth(cyc, layer))
    census = None
    if layer.weight_codes is not None and not layer.binary_weights:
        constant = layer.strategy != "resource" or layer.reuse_factor <= 1
        census = resources_model.layer_census(layer, device) if constant else None
    energy = energy_model.layer_energy(
        layer,
        power,
        latency_s=cyc.latency * device.clock_ns * 1e-9,
        register_bits=res.ff,
        dsp_products=census.dsp_products if census else None,
        lut_products=census.lut_products if census else None,
    )
    available = device.resources
    fractions = {
        "lut": res.lut / available.lut if available.lut else 0.0,
        "ff": res.ff / available.ff if available.ff else 0.0,
        "dsp": res.dsp / available.dsp if available.dsp else 0.0,
        "bram18": res.bram18 / available.bram18 if available.bram18 else 0.0,
    }
    return {
        "cycles": float(cyc.latency),
        "resources": float(sum(fractions.values())),
        "energy": float(energy.total),
        "lut": float(res.lut),
        "ff": float(res.ff),
        "dsp": float(res.dsp),
        "bram18": float(res.bram18),
        "energy_compute": float(energy.compute),
        "energy_memory": float(energy.memory),
        "energy_static": float(energy.static),
    }


def _unrolled(layer: LayerConfig) -> bool:
    return layer.strategy != "resource" or layer.reuse_factor <= 1


def fpga_forms(layer: LayerConfig) -> tuple[str, str]:
    """The (dense, sparse) implementation pair of a Dense/Conv layer as planned on the FPGA."""
    if _unrolled(layer):
        return FPGA_UNROLLED, FPGA_UNROLLED_TERNARY if layer.binary_weights else FPGA_UNROLLED
    return FPGA_RESOURCE_DENSE, FPGA_RESOURCE_COMPRESSED


# -- CPU costs --------------------------------------------------------------------------------------


def _cpu_spec(target: Target):
    cpu = getattr(target, "cpu", None)
    if cpu is None:
        raise OptionError(f"target {target.name} has no CPU", hint="place the layer on the FPGA, or pick a target with a cpu: section")
    return cpu


def cpu_layer_costs(layer: LayerConfig, nonzeros: int, target: Target) -> dict[str, dict]:
    """Dense (SIMD GEMV/GEMM) and CSR costs of ``layer`` with ``nonzeros`` non-zero weights on the
    target's CPU, per metric (energy in nJ, resources in bytes of weight storage)."""
    from edgec.cost.cpu import cpu_dense_cost, cpu_sparse_cost

    cpu = _cpu_spec(target)
    weights = layer.n_in * layer.n_out
    positions = max(1, layer.positions)
    # im2col: a convolution reads n_in values per output pixel and writes n_out
    activation_bytes = (layer.n_in + layer.n_out) * positions * CPU_VALUE_BYTES
    dense = cpu_dense_cost(weights * positions, weights * CPU_VALUE_BYTES, activation_bytes, cpu, "fp32")
    sparse = cpu_sparse_cost(
        nonzeros * positions, layer.n_out * positions, activation_bytes, cpu, index_bytes=CPU_INDEX_BYTES, value_bytes=CPU_VALUE_BYTES
    )
    dense_bytes = weights * CPU_VALUE_BYTES
    csr_bytes = nonzeros * (CPU_VALUE_BYTES + CPU_INDEX_BYTES) + (layer.n_out + 1) * CPU_INDEX_BYTES
    return {
        "dense": {
            "cycles": float(dense.cycles),
            "resources": float(dense_bytes),
            "energy": float(dense.energy_uj) * 1000.0,
            "latency_us": float(dense.latency_us),
        },
        "sparse": {
            "cycles": float(sparse.cycles),
            "resources": float(csr_bytes),
            "energy": float(sparse.energy_uj) * 1000.0,
            "latency_us": float(sparse.latency_us),
        },
    }


# -- the search -------------------------------------------------------------------------------------


def _search_nonzeros(cost_at, weights: int, exact_max: int, grid_points: int) -> int | None:
    """The largest non-zero count n* such that the sparse form costs at most the dense one at every
    count from 1 to n* (None: not even at 1). ``cost_at(n) -> (dense, sparse)``. Every count is
    evaluated up to ``exact_max`` weights; above, a grid, then bisection inside the bracket."""
    if weights <= exact_max:
        grid = list(range(1, weights + 1))
    else:
        grid = sorted({int(round(v)) for v in np.linspace(1, weights, grid_points)})
    cache: dict[int, bool] = {}

    def ok(n: int) -> bool:
        if n not in cache:
            dense, sparse = cost_at(n)
            cache[n] = sparse <= dense * (1 + 1e-12)
        return cache[n]

    best_index = -1
    for index, n in enumerate(grid):
        if not ok(n):
            break
        best_index = index
    if best_index < 0:
        return None
    if best_index == len(grid) - 1:
        return weights
    lo, hi = grid[best_index], grid[best_index + 1]  # ok(lo), not ok(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _ratio_from_nonzeros(nonzeros: int | None, weights: int) -> float | None:
    return None if nonzeros is None else 1.0 - nonzeros / weights


def _check(layer: LayerConfig, placement: str, metric: str) -> None:
    if placement not in PLACEMENTS:
        raise OptionError(f"unknown placement '{placement}' for layer {layer.name}", hint=f"use one of: {', '.join(PLACEMENTS)}")
    if metric not in METRICS:
        raise OptionError(f"unknown break-even metric '{metric}' for layer {layer.name}", hint=f"use one of: {', '.join(METRICS)}")
    if not layer.is_linear or layer.n_in * layer.n_out == 0:
        raise OptionError(
            f"layer {layer.name} ({layer.op}) has no weights to prune", hint="break-even ratios exist for Dense/Conv layers only"
        )


def _base_codes(layer: LayerConfig) -> np.ndarray:
    """The layer's weight codes (a placeholder of ones where a layer carries none: the resource
    and CPU forms depend only on the count of non-zeros)."""
    if layer.weight_codes is not None:
        return np.asarray(layer.weight_codes, dtype=np.int64)
    return np.ones((layer.n_in, layer.n_out), dtype=np.int64)


def _fpga_break_even(layer: LayerConfig, target: Target, device: Device, metrics: tuple[str, ...]) -> dict[str, BreakEven]:
    power = target.power or {}
    codes = _base_codes(layer)
    flat = codes.reshape(-1)
    order = np.argsort(np.abs(flat), kind="stable")
    weights = flat.size
    dense_form, sparse_form = fpga_forms(layer)
    ternary = layer.binary_weights
    costs: dict[tuple[str, int], dict] = {}

    def cost(form: str, nonzeros: int) -> dict:
        key = (form, nonzeros)
        if key not in costs:
            if form == "dense":
                # The Resource-strategy dense form reads and multiplies every weight from memory, zeros
                # included (nnet_dense_resource.h): its hardware does not depend on the values, so it is
                # costed without zeros (edgec.cost.resources would otherwise drop adder inputs for zeros).
                # A binary layer's dense form is the unpruned XNOR layer.
                dense_codes = np.where(codes == 0, 1, codes) if dense_form == FPGA_RESOURCE_DENSE else codes
                variant = replace(layer, weight_codes=dense_codes, compressed=False)
            else:
                pruned = _zero_first(flat, order, weights - nonzeros).reshape(codes.shape)
                variant = _fpga_variant(layer, pruned, compressed=sparse_form == FPGA_RESOURCE_COMPRESSED, ternary=ternary)
            costs[key] = fpga_layer_cost(variant, device, power)
        return costs[key]

    results: dict[str, BreakEven] = {}
    curve_ratios = SAVING_CURVE_RATIOS + (0.95, 0.99)
    curve_counts = sorted({max(1, weights - int(round(r * weights))) for r in curve_ratios}, reverse=True)
    terms_common = {
        "weights": weights,
        "n_in": layer.n_in,
        "n_out": layer.n_out,
        "positions": layer.positions,
        "weight_bits": layer.weight_bits,
        "input_bits": layer.input_bits,
        "accum_bits": layer.accum_bits,
        "strategy": layer.strategy,
        "reuse_factor": layer.reuse_factor,
        "part": device.part,
        "clock_ns": device.clock_ns,
    }
    if sparse_form == FPGA_UNROLLED:
        # r* = 0: a zero constant builds no product and no adder input, so the pruned design is the
        # same design minus those products. The curve shows what pruning saves.
        for metric in metrics:
            curve = []
            base = cost("dense", weights)[metric]
            for n in curve_counts:
                value = cost("sparse", n)[metric]
                curve.append({"ratio": 1.0 - n / weights, "dense": base, "sparse": value, "saving": 1.0 - value / base if base else 0.0})
            terms = {
                **terms_common,
                "rule": "unrolled layer: zero weights are constants HLS removes (no multiplier, no adder input), so r* = 0",
                "zero_weights_now": int(weights - np.count_nonzero(flat)),
                "curve_from": "the layer's weight codes, smallest magnitudes zeroed first",
            }
            results[metric] = BreakEven(layer.name, "fpga", dense_form, sparse_form, metric, 0.0, terms, curve)
        return results

    grid_points = CENSUS_GRID_POINTS if ternary else GRID_POINTS
    exact_max = 256 if ternary else EXACT_SEARCH_MAX_WEIGHTS
    for metric in metrics:

        def dense_sparse(n: int, metric: str = metric) -> tuple[float, float]:
            return cost("dense", n)[metric], cost("sparse", n)[metric]

        nonzeros = _search_nonzeros(dense_sparse, weights, exact_max, grid_points)
        ratio = _ratio_from_nonzeros(nonzeros, weights)
        terms = dict(terms_common)
        if sparse_form == FPGA_RESOURCE_COMPRESSED:
            storage = compressed_storage(layer, weights if nonzeros is None else nonzeros)
            terms.update(
                {
                    "index_bits": storage["index_bits"],
                    "entry_bits": storage["entry_bits"],
                    "dense_storage_bits": storage["dense_bits"],
                    "storage_break_even": storage["storage_break_even"],
                    "multipliers_dense": math.ceil(weights / max(1, layer.reuse_factor)),
                    "hls4ml_has_compressed_form": layer.op == "MatMul" and layer.kind == "dense",
                }
            )
            terms.update(_energy_terms(layer, power, storage["index_bits"]))
            if nonzeros is not None:
                terms["multipliers_compressed_at_break_even"] = math.ceil(nonzeros / max(1, layer.reuse_factor))
                terms["compressed_storage_bits_at_break_even"] = storage["compressed_bits"]
            if metric == "cycles":
                terms["note"] = "the ReuseFactor loop is the same for both forms: they tie at every ratio"
        else:
            terms["rule"] = (
                "binary layer: pruning makes it ternary (2-bit weights, zero products dropped) against the unpruned XNOR-popcount layer"
            )
        if metric == "resources":
            per_resource = {}
            for key in ("lut", "ff", "dsp", "bram18"):
                found = _search_nonzeros(
                    lambda n, key=key: (cost("dense", n)[key], cost("sparse", n)[key]), weights, exact_max, grid_points
                )
                per_resource[key] = _ratio_from_nonzeros(found, weights)
            terms["per_resource_break_even"] = per_resource
        curve = []
        for n in curve_counts:
            dense_value, sparse_value = dense_sparse(n)
            curve.append(
                {
                    "ratio": 1.0 - n / weights,
                    "dense": dense_value,
                    "sparse": sparse_value,
                    "saving": 1.0 - sparse_value / dense_value if dense_value else 0.0,
                }
            )
        results[metric] = BreakEven(layer.name, "fpga", dense_form, sparse_form, metric, ratio, terms, curve)
    return results


def _energy_terms(layer: LayerConfig, power: dict, index_bits: int) -> dict:
    """The per-product energies of the Resource pair (edgec.cost.energy, at the board's process
    node) and the closed-form energy break-even 2I*b / (m + a + (w + 2I)*b)."""
    power = {**energy_model.DEFAULT_POWER, **(power or {})}
    scale = energy_model.process_factor(power)
    m = energy_model.mult_pj(layer.input_bits, layer.weight_bits) * energy_model.FPGA_DSP_GAP_ASSUMED * scale
    a = energy_model.add_pj(layer.accum_bits) * energy_model.FPGA_LOGIC_GAP * scale
    b = float(power["bram_read_pj_per_bit"])
    w = layer.weight_bits
    return {
        "mult_pj": m,
        "add_pj": a,
        "bram_pj_per_bit": b,
        "energy_break_even_closed_form": 2 * index_bits * b / (m + a + (w + 2 * index_bits) * b),
    }


def _cpu_break_even(layer: LayerConfig, target: Target, metrics: tuple[str, ...]) -> dict[str, BreakEven]:
    cpu = _cpu_spec(target)
    weights = layer.n_in * layer.n_out
    costs: dict[int, dict] = {}

    def cost(nonzeros: int) -> dict:
        if nonzeros not in costs:
            costs[nonzeros] = cpu_layer_costs(layer, nonzeros, target)
        return costs[nonzeros]

    results = {}
    curve_counts = sorted({max(1, weights - int(round(r * weights))) for r in SAVING_CURVE_RATIOS + (0.95, 0.99)}, reverse=True)
    for metric in metrics:

        def dense_sparse(n: int, metric: str = metric) -> tuple[float, float]:
            c = cost(n)
            return c["dense"][metric], c["sparse"][metric]

        nonzeros = _search_nonzeros(dense_sparse, weights, EXACT_SEARCH_MAX_WEIGHTS, GRID_POINTS)
        terms = {
            "weights": weights,
            "rows": layer.n_out,
            "cols": layer.n_in,
            "positions": layer.positions,
            "cpu": cpu.name,
            "cores_used": 1,
            "value_bytes": CPU_VALUE_BYTES,
            "index_bytes": CPU_INDEX_BYTES,
            "dense_weight_bytes": weights * CPU_VALUE_BYTES,
            "storage_break_even": 1.0
            - (weights * CPU_VALUE_BYTES - (layer.n_out + 1) * CPU_INDEX_BYTES) / (weights * (CPU_VALUE_BYTES + CPU_INDEX_BYTES)),
            "tvm_lowers_sparse": TVM_LOWERS_SPARSE,
        }
        for key in ("fp32_macs_per_cycle", "dram_bandwidth_gbs", "active_power_w", "sparse_cycles_per_nnz", "clock_mhz"):
            if getattr(cpu, key, None) is not None:
                terms[key] = getattr(cpu, key)
        curve = []
        for n in curve_counts:
            dense_value, sparse_value = dense_sparse(n)
            curve.append(
                {
                    "ratio": 1.0 - n / weights,
                    "dense": dense_value,
                    "sparse": sparse_value,
                    "saving": 1.0 - sparse_value / dense_value if dense_value else 0.0,
                }
            )
        results[metric] = BreakEven(layer.name, "cpu", CPU_DENSE, CPU_SPARSE, metric, _ratio_from_nonzeros(nonzeros, weights), terms, curve)
    return results


def break_even_table(
    layer: LayerConfig, target: Target, device: Device | None, placement: str = "fpga", metrics: tuple[str, ...] = METRICS
) -> dict[str, BreakEven]:
    """:class:`BreakEven` of ``layer`` for every metric in ``metrics`` (costs are shared between
    metrics, so this is cheaper than one :func:`layer_break_even` call per metric)."""
    for metric in metrics:
        _check(layer, placement, metric)
    if placement == "cpu":
        return _cpu_break_even(layer, target, tuple(metrics))
    if not getattr(target, "has_fpga", True):
        raise OptionError(f"layer {layer.name}: target {target.name} has no FPGA", hint="place the layer on the CPU (placement='cpu')")
    if device is None:
        raise OptionError(
            f"layer {layer.name}: an FPGA placement needs the target's device", hint="pass edgec.cost.device.device_for(target)"
        )
    return _fpga_break_even(layer, target, device, tuple(metrics))


def layer_break_even(
    layer: LayerConfig, target: Target, device: Device | None, placement: str = "fpga", metric: str = "energy"
) -> BreakEven:
    """The break-even pruning ratio of a Dense/Conv ``layer`` (as planned: strategy, reuse factor,
    types) on ``target`` for ``placement`` (fpga | cpu) and ``metric`` (cycles | resources | energy).
    See the module docstring for the implementation pairs and formulas."""
    return break_even_table(layer, target, device, placement, (metric,))[metric]


def _percent(value: float) -> str:
    return f"{value * 100:.0f}%"


def choose_implementation(
    layer: LayerConfig,
    pruning_ratio: float,
    target: Target,
    device: Device | None,
    placement: str = "fpga",
    metric: str = "energy",
    be: BreakEven | None = None,
) -> tuple[str, str, BreakEven]:
    """(implementation, reason, break-even) for ``layer`` pruned to ``pruning_ratio`` (fraction of
    zero weights): the cheaper form for ``metric`` that edgec can generate, and a sentence saying
    why -- including what a form edgec cannot generate (hls4ml 1.3.0's compressed weights, a CSR
    kernel on the CPU) would have saved. ``be``: the layer's break-even for ``metric`` when the
    caller already has it (from :func:`break_even_table`), so it is not searched again."""
    be = be if be is not None else layer_break_even(layer, target, device, placement, metric)
    where = f"on {target.name} ({metric})"
    pruned = f"pruned {_percent(pruning_ratio)}"
    if be.sparse_form == FPGA_UNROLLED:
        return (
            FPGA_UNROLLED,
            f"unrolled (Latency strategy): zero weights are constants HLS removes, so pruning pays off at any ratio (r* = 0); {pruned}",
            be,
        )
    if be.ratio is None:
        form = FPGA_RESOURCE_DENSE if placement == "fpga" else CPU_DENSE
        if be.sparse_form == FPGA_UNROLLED_TERNARY:
            form = FPGA_UNROLLED
        return form, f"{pruned}: the sparse form ({be.sparse_form}) never costs less {where}; pruning this layer saves nothing here", be
    saving = be.saving_at(pruning_ratio) or 0.0
    dense_form = be.dense_form
    if pruning_ratio < be.ratio or saving <= 0.0:
        if pruning_ratio < be.ratio:
            reason = f"{pruned} < r* {_percent(be.ratio)} {where}: pruning here saves nothing; prune >= r* or not at all"
        else:
            reason = (
                f"{pruned} >= r* {_percent(be.ratio)} {where}, but the sparse form saves nothing ({be.terms.get('note', 'equal cost')})"
            )
        return dense_form, reason, be
    gain = f"{_percent(saving)} {metric}"
    if be.sparse_form == FPGA_UNROLLED_TERNARY:
        return FPGA_UNROLLED, f"{pruned} >= r* {_percent(be.ratio)} {where}: the ternary layer saves {gain} over the binary one", be
    if be.sparse_form == FPGA_RESOURCE_COMPRESSED:
        if not be.terms.get("hls4ml_has_compressed_form", False):
            return (
                dense_form,
                (
                    f"{pruned} >= r* {_percent(be.ratio)} {where}: compressed weights would save {gain}, "
                    "but hls4ml has compressed weights for Dense layers only; kept dense"
                ),
                be,
            )
        if not HLS4ML_COMPRESSION_WORKS:
            return (
                dense_form,
                (
                    f"{pruned} >= r* {_percent(be.ratio)} {where}: compressed weights would save {gain}, "
                    "but hls4ml 1.3.0 cannot generate compressed Dense layers (KeyError 'dense_function'); kept dense"
                ),
                be,
            )
        return FPGA_RESOURCE_COMPRESSED, f"{pruned} >= r* {_percent(be.ratio)} {where}: compressed weights save {gain}", be
    # CPU
    if not TVM_LOWERS_SPARSE:
        return (
            CPU_DENSE,
            (
                f"{pruned} >= r* {_percent(be.ratio)} {where}: a CSR kernel would save {gain}, "
                "but edgec's TVM path lowers CPU layers densely"
            ),
            be,
        )
    return CPU_SPARSE, f"{pruned} >= r* {_percent(be.ratio)} {where}: CSR saves {gain}", be


# -- measurement on the host CPU --------------------------------------------------------------------

BENCH_SOURCE = Path(__file__).with_name("cpu_sparse_bench.c")
# -fopenmp-simd honours the kernels' `omp simd` pragmas (vectorized reductions) without OpenMP threads.
BENCH_FLAGS = ("-O3", "-fopenmp-simd")
DEFAULT_MEASURE_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99)
# A timing sample runs its kernel for about this long (long enough for clock_gettime's resolution and
# short enough that a 16-ratio sweep of a 1024x1024 layer stays within about a second).
SAMPLE_NS = 100_000
# The two kernels must compute the same product: float32 sums in a different order differ by a few
# units in the last place of the partial sums (|x|, |w| <= 1).
MAX_RESULT_DIFFERENCE_PER_TERM = 1e-6
_compiled: dict[str, Path] = {}


def _compiler() -> str:
    for name in ("gcc", "cc"):
        found = shutil.which(name)
        if found:
            return found
    raise ToolchainError("no C compiler (gcc) found to measure the CPU break-even ratio", hint="install gcc (apt-get install gcc)")


def bench_flags(march: str = "native") -> list[str]:
    """The compiler flags of the benchmark for ``-march=<march>``."""
    return [*BENCH_FLAGS[:1], f"-march={march}", *BENCH_FLAGS[1:]]


def bench_binary(march: str = "native") -> Path:
    """The compiled benchmark for ``-march=<march>`` (built once per process with the host's gcc,
    into a temporary folder removed at exit)."""
    if march in _compiled and _compiled[march].is_file():
        return _compiled[march]
    if not march.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise OptionError(f"-march={march} is not an architecture name", hint="e.g. native, x86-64, x86-64-v3")
    folder = Path(tempfile.mkdtemp(prefix="edgec-cpu-bench-"))
    atexit.register(shutil.rmtree, folder, True)
    binary = folder / "cpu_sparse_bench"
    command = [_compiler(), *bench_flags(march), "-o", str(binary), str(BENCH_SOURCE), "-lm"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ToolchainError(f"compiling the CPU break-even benchmark failed: {done.stderr.strip()[:500]}", hint=" ".join(command))
    _compiled[march] = binary
    return binary


def compiler_version() -> str:
    """First line of ``gcc --version``."""
    lines = subprocess.run([_compiler(), "--version"], capture_output=True, text=True, check=False).stdout.splitlines()
    return lines[0] if lines else _compiler()


def host_cpu_model() -> str:
    """The host CPU's model name from /proc/cpuinfo (``model name``; ARM: ``Hardware``/``CPU part``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    for key in ("model name", "Hardware", "Model", "cpu model"):
        if fields.get(key):
            return fields[key]
    if fields.get("CPU part"):
        return f"{platform.machine()} CPU part {fields['CPU part']} (implementer {fields.get('CPU implementer', '?')})"
    return platform.processor() or platform.machine()


def _crossing(points: list[dict]) -> float | None:
    """The smallest ratio from which the sparse kernel is at least as fast as the dense one at every
    measured ratio above it, interpolated linearly in sparse/dense between the two bracketing ratios."""
    relative = [p["sparse_over_dense"] for p in points]
    start = None
    for index in range(len(points) - 1, -1, -1):
        if relative[index] <= 1.0:
            start = index
        else:
            break
    if start is None:
        return None
    if start == 0:
        return float(points[0]["ratio"])
    r0, r1 = points[start - 1]["ratio"], points[start]["ratio"]
    q0, q1 = relative[start - 1], relative[start]
    return float(r0 + (q0 - 1.0) / (q0 - q1) * (r1 - r0)) if q0 != q1 else float(r1)


def measure_cpu_break_even(
    rows: int,
    cols: int,
    positions: int = 1,
    ratios: tuple[float, ...] = DEFAULT_MEASURE_RATIOS,
    repeats: int = 7,
    seed: int = 0,
    march: str = "native",
) -> dict:
    """Measure r* of dense float32 GEMV/GEMM against CSR on this host for a layer of ``rows``
    outputs x ``cols`` inputs over ``positions`` columns (1: Dense; output pixels: a convolution as
    im2col GEMM). Random sparsity (seeded), paired timings, median of ``repeats`` pairs per ratio;
    compiled with ``-O3 -march=<march> -fopenmp-simd`` (``native``: this host's full SIMD).

    Returns ``break_even_ratio`` (None if CSR is never faster at the measured ratios), ``curve``
    (per ratio: dense and sparse ns per call, sparse/dense), ``compiler`` and ``flags``,
    ``cpu_model`` (/proc/cpuinfo) and ``kernels`` (what was timed).
    """
    if min(rows, cols, positions, repeats) < 1:
        raise OptionError(f"measure_cpu_break_even: rows={rows}, cols={cols}, positions={positions}, repeats={repeats} must be positive")
    ratios = tuple(sorted(float(r) for r in ratios))
    if not ratios or ratios[0] < 0.0 or ratios[-1] >= 1.0:
        raise OptionError(f"measure_cpu_break_even: ratios {ratios} must lie in [0, 1)")
    binary = bench_binary(march)
    command = [str(binary), str(rows), str(cols), str(positions), str(repeats), str(seed), str(SAMPLE_NS), *(f"{r:.6f}" for r in ratios)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ToolchainError(f"the CPU break-even benchmark failed ({rows}x{cols}x{positions}): {done.stderr.strip()[:300]}")
    result = json.loads(done.stdout)
    tolerance = MAX_RESULT_DIFFERENCE_PER_TERM * cols
    if result["max_abs_diff"] > tolerance:
        raise ToolchainError(
            f"the dense and CSR benchmark kernels disagree by {result['max_abs_diff']:.3g} (> {tolerance:.3g})",
            hint="the compiler may miscompile the benchmark; report it with `gcc --version`",
        )
    curve = [
        {
            "ratio": p["ratio"],
            "nonzeros": p["nonzeros"],
            "dense_ns": p["dense_ns"],
            "sparse_ns": p["sparse_ns"],
            "sparse_over_dense": p["sparse_over_dense"],
        }
        for p in result["points"]
    ]
    return {
        "rows": rows,
        "cols": cols,
        "positions": positions,
        "break_even_ratio": _crossing(curve),
        "curve": curve,
        "repeats": repeats,
        "sample_ns": SAMPLE_NS,
        "seed": seed,
        "compiler": compiler_version(),
        "flags": bench_flags(march),
        "cpu_model": host_cpu_model(),
        "machine": platform.machine(),
        "kernels": "dense: SIMD dot products (GEMV, 4 rows at a time) / SIMD axpy over positions (GEMM); "
        "CSR: scalar, 4 partial sums (SpMV) / SIMD axpy over positions per non-zero (SpMM); float32, int32 indices",
        "max_abs_diff": result["max_abs_diff"],
    }
