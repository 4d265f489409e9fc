"""Latency and initiation interval of hls4ml layers (Vivado/Vitis backends), in clock cycles.

The structure follows hls4ml's HLS templates (hls4ml/templates/vivado/nnet_utils):
- io_parallel Dense/Conv, Latency strategy: one fully unrolled multiply + adder tree pipelined at
  II = ReuseFactor (nnet_dense_latency.h); a convolution loops over its output pixels, one pixel
  per ReuseFactor cycles (nnet_conv2d_latency.h / _resource.h).
- Resource strategy: the products are split into ReuseFactor groups that a pipelined loop runs
  one per cycle into an accumulator (nnet_dense_resource.h).
- io_stream: every layer is a DATAFLOW process; a convolution reads one input pixel per
  ReuseFactor cycles through line buffers (nnet_conv_stream.h), a Dense reads its whole input,
  computes, then writes (nnet_dense_stream.h).

How many registers a layer's arithmetic needs depends on the clock: HLS chains operations within
one clock period (minus the uncertainty, see edgec.cost.device) and registers between periods.
The delays below are calibrated on the costval synthesis reports (tests/data/costval, Vivado
HLS 2020.1 on an UltraScale+ -2 part at 5 ns; benchmarks/costval_validation.py prints the fit)
and scaled to other parts by ``Device.speed_factor``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgec.cost.device import Device, dsp_slices_for_product
from edgec.cost.layer import LayerConfig, log2ceil

# Combinational delay of one multiplication through a DSP slice at UltraScale+ -2 speed, ns.
# Calibrated: the costval Dense(1->N) designs at 5 ns run multiply + output logic in one cycle
# with HLS estimating a 2.9 ns path (costval truth `estimated_clock_ns`); the DSP48E1 figure is
# calibrated on the costval z7020 Dense(16->5) report, whose products HLS pipelines through the
# DSP registers at 5 ns (7-cycle dense instance, products registered: 7860 FF).
T_MULT_NS = {"DSP48E2": 2.0, "DSP48E1": 2.8}
# Extra delay per additional cascaded DSP slice of a wide product (operands wider than the
# slice's ports, UG579 ch. 2 "wide multiplier" cascades), ns. Calibrated (depthwise2d, 32-bit).
T_MULT_CASCADE_NS = 1.0
# Delay of a 16-bit adder in the fabric, and its growth per extra bit, ns. Calibrated on the
# costval Conv2D (6-level tree of 48 products in 1 extra cycle) and the z7020 Dense(16->5).
T_ADD_NS = 0.9
T_ADD_PER_BIT_NS = 0.02
# A product that does not fit in one period runs through the DSP's own pipeline registers
# (A/B, M and P registers: UG479 ch. 2 / UG579 ch. 2), three cycles.
DSP_PIPELINE_CYCLES = 3
# A look-up table activation registers its address and reads block RAM, whose output is
# registered (UG473/UG573 BRAM read latency 1 + address register): 2 cycles. Calibrated: costval
# Dense+ELU and Dense+Sigmoid (io_parallel) take 2 cycles where Dense+ReLU takes 0.
TABLE_LOOKUP_CYCLES = {"vivado": 2, "vitis": 3}  # Vitis HLS 2023.1/2024.1 baselines: 3
# A divider (average pooling that excludes padding divides by a per-position count) is
# pipelined one quotient bit per stage plus set-up: W + 5 cycles for a W-bit dividend.
# Calibrated: costval AveragePooling1D/2D 'same', 16-bit: 21 cycles.
DIVIDER_EXTRA_CYCLES = 5
# io_stream: reading the input stream and writing the output stream around a layer's
# arithmetic, cycles (nnet_dense_stream.h: DataPrepare loop, compute, ResWrite loop).
STREAM_IO_CYCLES = 2
# io_stream convolution/pooling: line-buffer shift, window read and write around the pipelined
# pixel loop. Calibrated: costval DepthwiseConv1D (32 px -> 35) and DepthwiseConv2D (1024 -> 1028).
STREAM_WINDOW_CYCLES = 3
# io_parallel convolution: im2col gather before and output write after the pixel loop.
# Calibrated: costval Conv2D Resource io_parallel (49 px -> 52).
PARALLEL_CONV_CYCLES = 2
# Vivado HLS builds a divider for it; Vitis HLS (2024.1 baseline: latency 0, no divider logic)
# resolves the per-position counts of the unrolled loop at compile time.
# A DATAFLOW region adds one cycle between processes when a process is not fully pipelined
# (costval z7020 Dense(16->5): instances II 7, design II 8).
DATAFLOW_II_OVERHEAD = 1


@dataclass
class LayerCycles:
    """Cycles of one layer: latency, initiation interval, and (io_stream) the latency a
    following process sees before this one's first output (fill)."""

    latency: int
    ii: int
    fill: int


def _add_ns(bits: int, device: Device) -> float:
    return (T_ADD_NS + T_ADD_PER_BIT_NS * max(bits - 16, 0)) * device.speed_factor


def _mult_ns(layer: LayerConfig, device: Device) -> float:
    slices = max(1, dsp_slices_for_product(layer.input_bits, layer.effective_weight_bits, device.dsp_kind))
    base = T_MULT_NS.get(device.dsp_kind, T_MULT_NS["DSP48E1"])
    return (base + T_MULT_CASCADE_NS * (slices - 1)) * device.speed_factor


def dsp_pipelined_multiply(layer: LayerConfig, device: Device) -> bool:
    """Whether HLS runs this layer's products through the DSP pipeline registers."""
    return not layer.binary_weights and _mult_ns(layer, device) > device.effective_period_ns


def arithmetic_depth(layer: LayerConfig, device: Device, terms: int) -> int:
    """Registers between a product and its sum of ``terms`` products (plus bias)."""
    period = device.effective_period_ns
    levels = log2ceil(terms) + (1 if layer.nonzero_bias else 0)
    t_add = _add_ns(layer.accum_bits, device)
    t_mult = _mult_ns(layer, device) if not layer.binary_weights else t_add
    if t_mult <= period:
        return max(0, math.ceil((t_mult + levels * t_add) / period) - 1)
    return DSP_PIPELINE_CYCLES + math.ceil(levels * t_add / period)


def adder_levels_per_first_cycle(layer: LayerConfig, device: Device) -> int:
    """Adder-tree levels HLS chains behind a product before the first pipeline register."""
    room = device.effective_period_ns - (_mult_ns(layer, device) if not dsp_pipelined_multiply(layer, device) else 0.0)
    return max(0, int(room // _add_ns(layer.accum_bits, device)))


def _linear(layer: LayerConfig, device: Device) -> LayerCycles:
    rf = max(1, layer.reuse_factor)
    if layer.strategy == "resource" and rf > 1:
        # RF groups of products accumulate one per cycle, then the last sum is written out.
        per_group_terms = max(1, math.ceil(layer.n_in / rf))
        core = rf + arithmetic_depth(layer, device, per_group_terms) + 1
    else:
        core = arithmetic_depth(layer, device, layer.n_in) + (rf - 1)
    if layer.kind == "dense" and layer.positions == 1:
        if layer.io_type == "io_stream":
            latency = core + STREAM_IO_CYCLES if core > 0 else 1
            return LayerCycles(latency, max(rf, latency if core > 0 else 1), latency)
        return LayerCycles(core, rf, core)
    if layer.io_type == "io_stream":
        streamed = layer.in_positions * rf
        latency = streamed + core + STREAM_WINDOW_CYCLES
        return LayerCycles(latency, latency, core + STREAM_WINDOW_CYCLES)
    pixels = layer.positions * rf
    latency = pixels + core + PARALLEL_CONV_CYCLES
    return LayerCycles(latency, pixels, latency)


def _elementwise(layer: LayerConfig, device: Device) -> LayerCycles:
    """Activations, pooling, batch-norm, merges: pipelined element-wise logic."""
    depth = 0
    if layer.table_size:
        depth = TABLE_LOOKUP_CYCLES[device.backend]
    if layer.kind in ("pool", "global_pool"):
        if layer.pool_op == "avg" and layer.kind == "global_pool":
            depth = math.ceil(
                log2ceil(layer.pool_size) * _add_ns(layer.result_bits + log2ceil(layer.pool_size), device) / device.effective_period_ns
            )
        if layer.variable_divisor and device.backend == "vivado":
            depth += layer.result_bits + DIVIDER_EXTRA_CYCLES
    if layer.kind in ("batchnorm", "bias"):
        mult = _mult_ns(layer, device) if layer.kind == "batchnorm" else 0.0
        depth = max(0, math.ceil((mult + _add_ns(layer.result_bits, device)) / device.effective_period_ns) - 1)
    if layer.io_type == "io_stream":
        if layer.kind in ("pool", "transpose", "pad") or (layer.kind == "global_pool"):
            latency = layer.in_positions + depth + STREAM_WINDOW_CYCLES
            return LayerCycles(latency, latency if layer.kind != "pool" else layer.in_positions, depth + STREAM_WINDOW_CYCLES)
        latency = layer.positions + depth
        return LayerCycles(latency, layer.positions, 1 + depth)
    return LayerCycles(depth, 1, depth)


def layer_cycles(layer: LayerConfig, device: Device) -> LayerCycles:
    """Latency and II of one layer on ``device``."""
    if layer.is_linear:
        return _linear(layer, device)
    return _elementwise(layer, device)


def design_cycles(
    per_layer: list[LayerCycles], io_type: str, layers: list[LayerConfig] | None = None, backend: str = "vivado"
) -> tuple[int, int]:
    """Latency and II of the whole design.

    io_parallel: the layers form one pipeline, latencies add and the slowest layer sets the II.
    io_stream: layers are concurrent DATAFLOW processes; the longest one runs in full while each
    other adds only its fill latency; the II is the slowest process's (+1 for the handshake when
    a process is not fully pipelined).
    """
    if not per_layer:
        return 0, 1
    if io_type != "io_stream":
        return sum(c.latency for c in per_layer), max(c.ii for c in per_layer)
    longest = max(range(len(per_layer)), key=lambda i: per_layer[i].latency)
    latency = per_layer[longest].latency + sum(c.fill for i, c in enumerate(per_layer) if i != longest)
    ii = max(c.ii for c in per_layer)
    if ii > 1:
        ii += DATAFLOW_II_OVERHEAD
    if backend == "vitis" and layers and all(layer.positions == 1 for layer in layers):
        # Vitis HLS does not overlap whole-vector processes: the next inference starts when the
        # last process is done (2023.1/2024.1 baselines: Dense+ReLU II 2 = latency, +ELU II 4).
        ii = max(ii, latency)
    return latency, ii
