"""First-order FPGA resource estimate for a Dense/Conv layer, used to pick Strategy and ReuseFactor.

This is the fitting estimate of the build spine; issue 3 calibrates a fuller model against real
synthesis reports. Constants and their sources:
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgec.targets import Target

# DSP48E1 multiplies 25x18 signed operands (UG479, 7 Series DSP48E1 User Guide, ch. 1); DSP48E2
# multiplies 27x18 (UG579, UltraScale DSP48E2 User Guide, ch. 1). A product wider than that needs
# several slices.
DSP_PORTS = {"DSP48E1": (25, 18), "DSP48E2": (27, 18)}
# Vivado HLS maps products with an operand of this many bits or fewer to LUTs rather than a DSP
# (hls4ml paper, Duarte et al., JINST 13 P07027 (2018), sec. 4: "multiplications of ... below 10
# bits are implemented in LUTs"); costval's Dense baselines confirm DSP counts below the
# multiplication count for such layers.
LUT_MULT_MAX_BITS = 10
# A w x i bit LUT multiplier costs about w*i/2 LUT6 (each LUT6 forms two partial-product bits with
# the carry chain; UG474 7 Series CLB User Guide, ch. 2, "multiplier" use of LUT6 + CARRY4).
LUTS_PER_PARTIAL_PRODUCT_BIT = 0.5
# One BRAM18 holds 18 Kib and has read ports up to 36 bits wide in simple dual-port mode
# (UG473, 7 Series Memory Resources, ch. 1).
BRAM18_BITS = 18 * 1024
BRAM18_MAX_WIDTH = 36


@dataclass
class LayerResources:
    dsp: int
    lut: int
    bram18: int


def dsp_per_multiply(weight_bits: int, input_bits: int, dsp_kind: str) -> int:
    """DSP slices one product needs (0 when it goes to LUTs)."""
    if min(weight_bits, input_bits) <= LUT_MULT_MAX_BITS:
        return 0
    a, b = DSP_PORTS.get(dsp_kind, DSP_PORTS["DSP48E1"])
    wide, narrow = max(weight_bits, input_bits), min(weight_bits, input_bits)
    return math.ceil(wide / a) * math.ceil(narrow / b)


def estimate_linear_layer(
    multiplies: int, weights: int, weight_bits: int, input_bits: int, reuse_factor: int, strategy: str, target: Target
) -> LayerResources:
    """Resources of a Dense/Conv kernel with ``multiplies`` products per output computation."""
    parallel = math.ceil(multiplies / reuse_factor)
    per_mult_dsp = dsp_per_multiply(weight_bits, input_bits, target.dsp_kind)
    dsp = parallel * per_mult_dsp
    lut = 0 if per_mult_dsp else int(parallel * weight_bits * input_bits * LUTS_PER_PARTIAL_PRODUCT_BIT)
    bram = 0
    if strategy == "Resource":
        total_bits = weights * weight_bits
        width_bound = math.ceil(parallel * weight_bits / BRAM18_MAX_WIDTH)
        bram = max(math.ceil(total_bits / BRAM18_BITS), width_bound)
    return LayerResources(dsp=dsp, lut=lut, bram18=bram)
