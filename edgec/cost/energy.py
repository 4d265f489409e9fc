"""Energy per inference of an hls4ml design, per layer: arithmetic, memory, I/O and static.

Arithmetic energies are Horowitz's 45 nm figures (ISSCC 2014), interpolated by operand width,
scaled to the target's process node and voltage (dynamic energy ~ C V^2 with C ~ feature size)
and multiplied by the FPGA-over-ASIC gap (Kuon & Rose, IEEE TCAD 2007). Block-RAM reads and
PS<->PL transfers use the board's own per-bit energies, and static power comes from the board
file (targets/<board>.yaml, ``power:``). docs/energy-sources.md gives every source and caveat.

A product whose constant weight is zero is never built (edgec.cost.resources), so it costs no
energy; with the Resource strategy and ReuseFactor > 1 the weights are read from memory and every
product is computed, zeros included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgec.cost.layer import LayerConfig

# Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm 0.9 V:
# integer add 8 bit 0.03 pJ, 32 bit 0.1 pJ (linear in width between them);
# integer multiply 8 bit 0.2 pJ, 32 bit 3.1 pJ (~ width_a x width_b: 0.2/64 = 0.0031, 3.1/1024 = 0.0030 pJ).
ADD_PJ_8, ADD_PJ_32 = 0.03, 0.1
MULT_PJ_PER_PARTIAL_PRODUCT = 3.1 / (32 * 32)
HOROWITZ_NODE_NM, HOROWITZ_VDD = 45.0, 0.9
# Kuon & Rose, "Measuring the gap between FPGAs and ASICs", IEEE TCAD 26(2), 2007: dynamic power of
# LUT/FF logic ~14x an ASIC's at the same node. Hard DSP slices close most of that gap; the paper's
# abstract says only that hard blocks make the gap smaller, so edgec ASSUMES 4x for DSP products.
FPGA_LOGIC_GAP = 14.0
FPGA_DSP_GAP_ASSUMED = 4.0
# A register write of one bit ~ a quarter of a one-bit add (assumption; FF clock and data toggling),
# charged for pipeline registers and stream FIFOs.
REGISTER_BIT_FRACTION_OF_ADD = 0.25
# Defaults when a board file has no power section (a Zynq-7000-class device, pynq-z2's figures).
DEFAULT_POWER = {
    "process_nm": 28,
    "vccint_v": 1.0,
    "pl_static_w": 0.073,
    "ps_static_w": 0.041,
    "pspl_bus_bits": 64,
    "pspl_energy_pj_per_bit": 30.0,
    "bram_read_pj_per_bit": 0.76,
}


def process_factor(power: dict) -> float:
    """Dynamic-energy scale from Horowitz's 45 nm / 0.9 V to the board's node and core voltage."""
    node = float(power.get("process_nm", DEFAULT_POWER["process_nm"]))
    vdd = float(power.get("vccint_v", DEFAULT_POWER["vccint_v"]))
    return (node / HOROWITZ_NODE_NM) * (vdd / HOROWITZ_VDD) ** 2


def static_power_w(power: dict) -> float:
    """Static power drawn while an inference runs: programmable logic plus the processing system."""
    power = {**DEFAULT_POWER, **(power or {})}
    return float(power["pl_static_w"]) + float(power["ps_static_w"])


def add_pj(bits: float) -> float:
    """One integer add of ``bits`` bits at 45 nm (ASIC)."""
    return ADD_PJ_8 + (ADD_PJ_32 - ADD_PJ_8) * (bits - 8) / 24.0 if bits >= 8 else ADD_PJ_8 * bits / 8.0


def mult_pj(a_bits: int, b_bits: int) -> float:
    """One integer a x b-bit multiply at 45 nm (ASIC)."""
    return MULT_PJ_PER_PARTIAL_PRODUCT * a_bits * b_bits


@dataclass
class LayerEnergy:
    """Energy of one layer per inference, nJ."""

    compute: float
    memory: float
    io: float
    static: float

    @property
    def total(self) -> float:
        return self.compute + self.memory + self.io + self.static

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in (("compute", self.compute), ("memory", self.memory), ("io", self.io), ("static", self.static))}


def _compute_pj(layer: LayerConfig, dsp_products: int | None, lut_products: int | None) -> float:
    """Arithmetic of one inference at 45 nm, with the FPGA gap applied (pJ)."""
    fpga_add = FPGA_LOGIC_GAP
    if layer.is_linear:
        constant = layer.strategy != "resource" or layer.reuse_factor <= 1
        nonzero = layer.nonzero_weights if constant or layer.compressed else layer.n_in * layer.n_out
        per_position_adds = max(nonzero - layer.n_out, 0) + layer.nonzero_bias
        if layer.binary_weights:
            mults_pj = nonzero * add_pj(1) * FPGA_LOGIC_GAP
        elif constant and dsp_products is not None and lut_products is not None:
            # DSP products at the hard-block gap, LUT products (shift-adds) as adds
            mults_pj = dsp_products * mult_pj(layer.input_bits, layer.weight_bits) * FPGA_DSP_GAP_ASSUMED
            mults_pj += lut_products * add_pj(layer.input_bits + layer.weight_bits) * fpga_add
        else:
            mults_pj = nonzero * mult_pj(layer.input_bits, layer.weight_bits) * FPGA_DSP_GAP_ASSUMED
        adds_pj = per_position_adds * add_pj(layer.accum_bits) * fpga_add
        return (mults_pj + adds_pj) * layer.positions
    elems = layer.out_elems
    if layer.kind in ("pool", "global_pool"):
        ops = max(layer.pool_size - 1, 0) * elems
        pj = ops * add_pj(layer.result_bits) * fpga_add
        if layer.variable_divisor:
            pj += elems * (layer.result_bits + 5) * add_pj(layer.result_bits) * fpga_add
        return pj
    if layer.kind == "batchnorm":
        nonzero = float(np.mean(np.asarray(layer.weight_codes) != 0)) if layer.weight_codes is not None else 1.0
        return elems * (
            nonzero * mult_pj(layer.input_bits, layer.weight_bits or layer.result_bits) * FPGA_DSP_GAP_ASSUMED
            + add_pj(layer.result_bits) * fpga_add
        )
    if layer.kind == "activation" and (layer.activation or "linear") == "linear":
        return 0.0
    # activations, merges, quantizers: about one add-sized operation per element
    return elems * add_pj(layer.result_bits) * fpga_add * max(layer.merge_inputs - 1, 1)


def layer_energy(
    layer: LayerConfig,
    power: dict,
    latency_s: float,
    register_bits: int,
    dsp_products: int | None = None,
    lut_products: int | None = None,
    is_first: bool = False,
    is_last: bool = False,
) -> LayerEnergy:
    """Energy of one inference through ``layer`` (nJ). ``latency_s`` is its share of the design's
    latency (for static energy); ``register_bits`` the flip-flops it clocks."""
    power = {**DEFAULT_POWER, **(power or {})}
    scale = process_factor(power)
    compute_pj = _compute_pj(layer, dsp_products, lut_products) * scale
    compute_pj += register_bits * add_pj(1) * REGISTER_BIT_FRACTION_OF_ADD * FPGA_LOGIC_GAP * scale
    memory_pj = 0.0
    bram_pj = float(power["bram_read_pj_per_bit"])
    if layer.is_linear and layer.compressed:
        index_bits = 2 * max(1, (max(layer.n_in, layer.n_out) - 1).bit_length())
        memory_pj += layer.nonzero_weights * (layer.weight_bits + index_bits) * bram_pj * layer.positions
    elif layer.is_linear and layer.strategy == "resource" and layer.reuse_factor > 1:
        memory_pj += layer.n_in * layer.n_out * layer.weight_bits * bram_pj  # every weight read once per position
        memory_pj *= layer.positions
    if layer.table_size:
        memory_pj += layer.out_elems * layer.table_bits * bram_pj
    io_pj = 0.0
    bus = float(power["pspl_energy_pj_per_bit"])
    if is_first:
        io_pj += layer.in_elems * layer.input_bits * bus
    if is_last:
        io_pj += layer.out_elems * layer.result_bits * bus
    static_nj = static_power_w(power) * latency_s * 1e9
    return LayerEnergy(compute=compute_pj / 1000.0, memory=memory_pj / 1000.0, io=io_pj / 1000.0, static=static_nj)
