"""LUT, FF, DSP and BRAM18 of hls4ml layers (Vivado/Vitis backends).

Multiplications: with the Latency strategy (and Resource at ReuseFactor 1) every weight is a
constant HLS sees, so each product is built for its constant: zero costs nothing, a power of two
is wiring, a constant with at most two non-zero signed digits (canonical signed digit form) or
below 2^4 becomes one or two fabric adders, any other goes to a DSP slice (as many slices as the
operand widths need). This is what makes hls4ml's DSP counts fall below the multiply count
(costval README) and what makes pruned (zero) weights free there. With the Resource strategy
and ReuseFactor > 1 the weights live in memory and every product is a variable multiplier.

Everything else is counted per operator in the fabric (adders, comparators, multiplexers,
dividers, table look-ups, stream FIFOs) with per-bit costs from the device architecture
(UG474/UG574 CLB user guides: a LUT6 plus carry logic per adder bit) and factors calibrated on
the costval synthesis reports (Vivado HLS 2020.1, VU13P, 5 ns; see benchmarks/costval_validation.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgec.cost.cycles import DSP_PIPELINE_CYCLES, adder_levels_per_first_cycle, dsp_pipelined_multiply
from edgec.cost.device import DSP_PORTS, Device, dsp_slices_for_product  # noqa: F401 (DSP_PORTS: re-exported)
from edgec.cost.layer import LayerConfig

# Variable x variable products with an operand this narrow go to LUTs (hls4ml paper, Duarte et
# al., JINST 13 P07027 (2018), sec. 4: multiplications below ~10 bits are implemented in LUTs).
LUT_MULT_MAX_BITS = 10
# Constant products built from adders instead of a DSP: at most this many non-zero canonical
# signed digits, or a magnitude below 2^CONST_LUT_MAX_MAGNITUDE_BITS. Calibrated: costval Dense
# (uniform weights, 92-96% of products on DSPs) and Conv2D (normal(0, 0.05) weights, 48%).
CONST_LUT_MAX_DIGITS = 2
CONST_LUT_MAX_MAGNITUDE_BITS = 4
# One adder bit = one LUT6 + carry-chain bit (UG474 7 Series CLB, ch. 2; UG574 UltraScale CLB).
LUT_PER_ADDER_BIT = 1.0
# A variable LUT multiplier of w x i bits costs about w*i/2 LUT6 (two partial-product bits per
# LUT6 with the carry chain: UG474 ch. 2).
LUTS_PER_PARTIAL_PRODUCT_BIT = 0.5
# Per output value of a Dense/Conv: truncating/rounding the accumulator into the result type and
# the sign handling around the DSP output, LUT per result bit. Calibrated: costval Dense(1->64)
# with an identity activation (602 LUT).
LUT_PER_OUTPUT_BIT = 0.45
# ReLU: sign test and a 2:1 multiplexer per bit plus result slicing, LUT per bit. Calibrated:
# costval Dense(1->64)+ReLU minus Dense(1->64)+identity, io_parallel and io_stream (25-30 LUT/16 bit).
LUT_PER_RELU_BIT = 1.7
# 2-input max (pooling): a comparator (1 LUT/bit carry chain) and a 2:1 multiplexer (1 LUT/bit).
# Calibrated: costval MaxPooling1D/2D (29-31 LUT per 16-bit max).
LUT_PER_MAX_BIT = 1.9
# Average pooling adds in a widened sum. Calibrated: costval AveragePooling valid (18-23 LUT per
# 16-bit add).
LUT_PER_POOL_ADD_BIT = 1.25
# A pipelined W-bit divider: (W + 5) stages of a W-bit subtract-and-select. Calibrated: costval
# AveragePooling 'same' (about 470 LUT and 714 FF per 16-bit divider).
LUT_PER_DIVIDER_CELL = 1.4
FF_PER_DIVIDER_STAGE_BIT = 2.0
# Table activations: index arithmetic (scale, offset, clamp) per element, LUT per input bit.
# Calibrated: costval Dense(1->64) + sigmoid (145 LUT/element) and + ELU (63 LUT/element).
TABLE_INDEX_LUT_PER_BIT = {"sigmoid": 9.0, "tanh": 9.0, "elu": 4.0, "selu": 5.0, "softsign": 9.0, "softplus": 9.0, "softmax": 12.0}
# A block RAM has two ports (UG473 7 Series Memory Resources ch. 1; UG573 UltraScale), so two
# elements share one copy of a table; one BRAM18 holds 18 Kib and is at most 36 bits wide (simple
# dual-port mode, UG473 ch. 1 "Block RAM port aspect ratios").
BRAM_PORTS = 2
BRAM18_BITS = 18 * 1024
BRAM18_MAX_WIDTH = 36
# io_stream FIFOs between processes (depth 1-2 in hls4ml's streams), LUT and FF per bit of
# stream width. Vivado HLS builds them from LUT shift registers; Vitis HLS from registers.
# Calibrated: costval io_stream minus io_parallel Dense(1->64) designs (Vivado 2020.1: ~3400 LUT
# and ~300 FF for a 64 x 16-bit stream; Vitis 2023.1/2024.1 baselines: ~1070 LUT, 2048 FF).
LUT_PER_FIFO_BIT = {"vivado": 3.3, "vitis": 1.05}
FF_PER_FIFO_BIT = {"vivado": 0.28, "vitis": 2.0}
# io_stream convolution window: the kernel window registers are shifted and selected each pixel,
# LUT per window bit. Calibrated: costval DepthwiseConv1D/2D io_stream.
LUT_PER_WINDOW_BIT = 2.0
# io_parallel convolution: output registers written once per pixel through a 2:1 multiplexer,
# LUT per output bit (UG474 ch. 2: a LUT6 per 2:1 mux bit).
# Calibrated: costval Conv2D Resource io_parallel (86.8 k LUT Vivado 2020.1, 61.3 k Vitis 2024.1).
LUT_PER_OUTPUT_WRITE_BIT = 1.0
# Memories at most this deep go to distributed (LUT) RAM, 64 bits per LUT6 (UG474 ch. 2: a LUT6 is
# a 64x1 RAM); HLS implements shallow arrays that way rather than spend a BRAM18 (1024 x 18) on
# a few words (UG902, "Arrays": RAM core selection by size).
LUTRAM_MAX_DEPTH = 64
LUTRAM_BITS_PER_LUT = 64
# Shift-register line buffers (ap_shift_reg) pack 32 bits of depth per LUT (SRLC32E, UG474 ch. 2).
SRL_BITS_PER_LUT = 32
# Control of one layer (loop counters, handshakes) and of the design (ap_ctrl), LUT and FF.
# Calibrated: costval Dense(1->2) designs.
LUT_PER_LAYER_CONTROL = 20
FF_PER_LAYER_CONTROL_STREAM = 10
LUT_PER_DESIGN_CONTROL = 40
FF_PER_DESIGN_CONTROL = 2
# io_parallel designs register the top-level input array: the costval io_parallel designs report
# FF = input bits + 2 when nothing else is pipelined (e.g. 18 FF for one 16-bit input), with
# Vivado and Vitis HLS alike; Vitis HLS skips it when the design is not fully pipelined (II > 1;
# its Conv2D baseline reports 8.6 k FF for a 37.6 k-bit input).


@dataclass
class LayerResources:
    """Resources of one layer."""

    lut: int
    ff: int
    dsp: int
    bram18: int

    def as_dict(self) -> dict[str, int]:
        return {"lut": self.lut, "ff": self.ff, "dsp": self.dsp, "bram18": self.bram18}


def dsp_per_multiply(weight_bits: int, input_bits: int, dsp_kind: str, bound_to_dsp: bool = False) -> int:
    """DSP slices one variable product needs (0 when it goes to LUTs). A product bound to DSP
    slices (``bound_to_dsp``) takes a slice however narrow it is."""
    if min(weight_bits, input_bits) <= LUT_MULT_MAX_BITS and not bound_to_dsp:
        return 0
    return dsp_slices_for_product(weight_bits, input_bits, dsp_kind)


def csd_digits(values: np.ndarray) -> np.ndarray:
    """Non-zero digits of each integer in canonical signed-digit form (non-adjacent form)."""
    n = np.abs(np.asarray(values, dtype=np.int64)).copy()
    digits = np.zeros(n.shape, dtype=np.int64)
    while np.any(n):
        odd = (n & 1) == 1
        # a ...11 tail becomes +1 carry and a -1 digit (except 3 = 4 - 1 ties to 2 + 1)
        take_minus = odd & ((n & 3) == 3) & (n != 3)
        digits += odd
        n = np.where(take_minus, n + 1, np.where(odd, n - 1, n))
        n >>= 1
    return digits


@dataclass
class ProductCensus:
    """How the products of a constant-weight layer are built."""

    dsp: int  # DSP slices
    dsp_products: int
    lut_products: int
    lut: int  # LUTs of the products built in the fabric
    free: int  # zeros and powers of two
    lut_product_slices: int = 0  # DSP slices the fabric-built products would take if bound to DSPs

    def bound_to_dsp(self) -> ProductCensus:
        """The same products with those HLS would build in the fabric bound to DSP slices
        (``LayerChoice.products_on_dsp``: UG902 RESOURCE core=DSP48 / UG1399 BIND_OP impl=dsp on
        the product). Zeros and powers of two stay free: HLS folds them before binding."""
        return ProductCensus(
            dsp=self.dsp + self.lut_product_slices,
            dsp_products=self.dsp_products + self.lut_products,
            lut_products=0,
            lut=0,
            free=self.free,
        )


def constant_products(codes: np.ndarray, input_bits: int, weight_bits: int, dsp_kind: str) -> ProductCensus:
    """Census of the products x * c for every constant c in ``codes`` (see module docstring)."""
    flat = np.asarray(codes, dtype=np.int64).reshape(-1)
    magnitude = np.abs(flat)
    digits = csd_digits(flat)
    free = (magnitude == 0) | ((digits == 1) & (flat > 0))
    negated_shift = (digits == 1) & (flat < 0)
    in_lut = ~free & ~negated_shift & ((digits <= CONST_LUT_MAX_DIGITS) | (magnitude < 2**CONST_LUT_MAX_MAGNITUDE_BITS))
    on_dsp = ~free & ~negated_shift & ~in_lut
    const_bits = np.where(magnitude > 0, np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int64) + 2, 1)
    # one adder per extra signed digit, as wide as the shifted input; a negation for -2^k
    adder_bits = (np.maximum(digits - 1, 1) * (input_bits + const_bits))[in_lut].sum()
    lut = adder_bits * LUT_PER_ADDER_BIT + negated_shift.sum() * input_bits * LUT_PER_ADDER_BIT
    slices_by_bits = {int(b): dsp_slices_for_product(input_bits, int(b), dsp_kind) for b in np.unique(const_bits)}
    slices = np.array([slices_by_bits[int(b)] for b in const_bits[on_dsp]], dtype=np.int64)
    fabric = in_lut | negated_shift
    return ProductCensus(
        dsp=int(slices.sum()),
        dsp_products=int(on_dsp.sum()),
        lut_products=int(fabric.sum()),
        lut=int(round(float(lut))),
        free=int(free.sum()),
        lut_product_slices=int(sum(slices_by_bits[int(b)] for b in const_bits[fabric])),
    )


def layer_census(layer: LayerConfig, device: Device) -> ProductCensus:
    """``constant_products`` of a layer's weights, computed once per layer and DSP kind (the
    configurator re-costs the same layers at many reuse factors), with the fabric-built products
    on DSP slices when the layer's products are bound to them."""
    key = (layer.input_bits, layer.weight_bits, device.dsp_kind)
    cache = layer.__dict__.setdefault("_census_cache", {})
    if key not in cache:
        cache[key] = constant_products(layer.weight_codes, layer.input_bits, layer.weight_bits, device.dsp_kind)
    return cache[key].bound_to_dsp() if layer.products_on_dsp else cache[key]


def _linear(layer: LayerConfig, device: Device, depth: int) -> LayerResources:
    rf = max(1, layer.reuse_factor)
    dsp_pipelined = dsp_pipelined_multiply(layer, device)
    census = None
    n_products = layer.n_in * layer.n_out
    lut = ff = dsp = bram = 0
    constant_weights = layer.strategy != "resource" or rf == 1
    if layer.binary_weights:
        # XNOR + popcount: about one LUT per product bit pair (hls4ml binary dense)
        lut += n_products // rf
    elif constant_weights and layer.weight_codes is not None:
        census = layer_census(layer, device)
        scale = 1.0 / rf  # hls4ml shares multipliers across RF cycles
        dsp += math.ceil(census.dsp * scale)
        lut += math.ceil(census.lut * scale)
    elif layer.compressed:
        # nnet_dense_compressed.h: ceil(non-zeros / RF) multipliers, weights stored with indices
        nonzero_products = max(layer.nonzero_weights, 1)
        parallel = math.ceil(nonzero_products / rf)
        per = dsp_per_multiply(layer.weight_bits, layer.input_bits, device.dsp_kind, layer.products_on_dsp)
        dsp += parallel * per
        if per == 0:
            lut += int(parallel * layer.weight_bits * layer.input_bits * LUTS_PER_PARTIAL_PRODUCT_BIT)
        index_bits = 2 * max(1, (max(layer.n_in, layer.n_out) - 1).bit_length())
        total_bits = nonzero_products * (layer.weight_bits + index_bits)
        bram = max(math.ceil(total_bits / BRAM18_BITS), math.ceil(parallel * (layer.weight_bits + index_bits) / BRAM18_MAX_WIDTH))
        # the scatter of each product to its output accumulator: an n_out-way demultiplexer
        lut += int(parallel * layer.accum_bits * math.ceil(layer.n_out / 4))
    else:
        parallel = math.ceil(n_products / rf)
        per = dsp_per_multiply(layer.weight_bits, layer.input_bits, device.dsp_kind, layer.products_on_dsp)
        dsp += parallel * per
        if per == 0:
            lut += int(parallel * layer.weight_bits * layer.input_bits * LUTS_PER_PARTIAL_PRODUCT_BIT)
        # weights partitioned into `parallel` memories RF words deep, read once per cycle
        # (nnet_dense_resource.h); shallow ones become LUT RAM, deep ones block RAM
        total_bits = n_products * layer.weight_bits
        if rf > 1 and rf <= LUTRAM_MAX_DEPTH:
            lut += math.ceil(total_bits / LUTRAM_BITS_PER_LUT)
        elif rf > 1:
            width_bound = math.ceil(parallel * layer.weight_bits / BRAM18_MAX_WIDTH)
            bram = max(math.ceil(total_bits / BRAM18_BITS), width_bound)
    nonzero = layer.nonzero_weights
    # adder tree: (non-zero terms - 1) adds per output, plus a bias add where the bias is non-zero
    terms_per_output = nonzero / max(layer.n_out, 1)
    adds = max(terms_per_output - 1, 0) * layer.n_out / rf + layer.nonzero_bias
    lut += int(adds * layer.accum_bits * LUT_PER_ADDER_BIT)
    lut += int(layer.n_out * layer.result_bits * LUT_PER_OUTPUT_BIT)
    # pipeline registers: each registered stage holds the partial sums in flight; a product
    # pipelined through the DSP's registers keeps its full width for DSP_PIPELINE_CYCLES stages
    if dsp_pipelined and constant_weights and layer.weight_codes is not None and not layer.binary_weights:
        ff += int(DSP_PIPELINE_CYCLES * census.dsp_products * (layer.input_bits + layer.effective_weight_bits) / rf)
        depth = max(depth - DSP_PIPELINE_CYCLES, 0)
    if depth > 0:
        # the first register holds the partial sums left after the adder levels chained behind
        # the product within one period; later registers fewer
        levels = adder_levels_per_first_cycle(layer, device)
        partial = max(1.0, terms_per_output / 2**levels)
        ff += int(sum(max(1.0, partial / 2 ** min(stage, 60)) for stage in range(depth)) * layer.n_out * layer.accum_bits / rf)
    if constant_weights and census is not None:
        # a product wider than one slice cascades through registered slices
        slices_per_product = census.dsp / census.dsp_products if census.dsp_products else 1
        if slices_per_product > 1:
            ff += int(census.dsp_products * (slices_per_product - 1) * (layer.input_bits + layer.effective_weight_bits) / rf)
    if layer.kind in ("conv", "depthwise"):
        if layer.io_type == "io_stream":
            # line buffers: (kernel rows - 1) image rows of every channel, in shift registers
            line_bits = (layer.kernel_rows - 1) * layer.in_width * layer.channels * layer.input_bits + layer.n_in * (
                layer.channels if layer.kind == "depthwise" else 1
            ) * layer.input_bits
            lut += math.ceil(line_bits / SRL_BITS_PER_LUT)
            window_bits = layer.n_in * (layer.channels if layer.kind == "depthwise" else 1) * layer.input_bits
            lut += int(window_bits * LUT_PER_WINDOW_BIT)
            ff += window_bits + layer.n_out * layer.result_bits
        else:
            # im2col: each window slot is picked from every output position (a positions:1 mux),
            # and every output register is written from the shared result bus (a 2:1 mux per bit)
            window = layer.n_in * (layer.channels if layer.kind == "depthwise" else 1)
            mux_luts_per_bit = math.ceil(layer.positions / 4)  # LUT6 = 4:1 mux (UG474 ch. 2)
            lut += window * layer.input_bits * mux_luts_per_bit
            lut += layer.out_elems * layer.result_bits * LUT_PER_OUTPUT_WRITE_BIT
            ff += window * layer.input_bits
    return LayerResources(lut=lut, ff=ff, dsp=dsp, bram18=bram)


def _elementwise(layer: LayerConfig, device: Device, depth: int) -> LayerResources:
    bits = layer.result_bits
    elems = layer.out_elems
    # io_stream processes one packet (the channels of one pixel) at a time
    parallel = layer.channels if layer.io_type == "io_stream" and layer.positions > 1 else elems
    lut = ff = bram = dsp = 0
    if layer.kind == "activation":
        act = layer.activation or ""
        if act in ("relu", "prelu", "thresholded_relu", "hard_sigmoid"):
            lut += int(parallel * bits * LUT_PER_RELU_BIT)
        elif act == "leaky_relu":
            lut += int(parallel * bits * (LUT_PER_RELU_BIT + LUT_PER_ADDER_BIT))
        elif layer.table_size:
            lut += int(parallel * layer.input_bits * TABLE_INDEX_LUT_PER_BIT.get(act, 9.0))
            per_table = math.ceil(layer.table_size * layer.table_bits / BRAM18_BITS)
            bram += math.ceil(parallel / BRAM_PORTS) * per_table
            # table output registered alongside the passed-through input (ELU keeps x)
            # (io_stream keeps about half: calibrated, costval ELU/sigmoid io_stream vs io_parallel)
            ff += int(parallel * bits * (2 if act in ("elu", "selu") else 1) * (0.5 if layer.io_type == "io_stream" else 1.0))
        elif act and act != "linear":
            lut += int(parallel * bits * LUT_PER_RELU_BIT)
    elif layer.kind == "pool" or layer.kind == "global_pool":
        outputs = layer.channels if layer.io_type == "io_stream" else elems
        ops = max(layer.pool_size - 1, 0) * outputs
        if layer.pool_op == "max":
            lut += int(ops * bits * LUT_PER_MAX_BIT)
        else:
            lut += int(ops * bits * LUT_PER_POOL_ADD_BIT)
            if layer.variable_divisor and device.backend == "vivado":  # Vitis needs no divider (edgec.cost.cycles)
                stages = bits + 5
                lut += int(outputs * stages * bits * LUT_PER_DIVIDER_CELL)
                ff += int(outputs * stages * (FF_PER_DIVIDER_STAGE_BIT * bits + 2))
        if layer.io_type == "io_stream" and layer.kind == "pool":
            lut += math.ceil(layer.in_width * layer.channels * layer.input_bits / SRL_BITS_PER_LUT)
    elif layer.kind == "batchnorm":
        # one constant multiply per element (per-channel or scalar constants) and a shift add
        codes = layer.weight_codes if layer.weight_codes is not None else np.full(1, 3)
        census = constant_products(codes, layer.input_bits, layer.weight_bits or bits, device.dsp_kind)
        repeat = parallel / codes.size
        dsp += math.ceil(census.dsp * repeat)
        lut += int(census.lut * repeat + parallel * bits * LUT_PER_ADDER_BIT)
    elif layer.kind == "bias":
        lut += int(parallel * bits * LUT_PER_ADDER_BIT)
    elif layer.kind == "merge":
        lut += int(parallel * bits * LUT_PER_ADDER_BIT * max(layer.merge_inputs - 1, 1))
    elif layer.kind == "quantizer":
        lut += int(parallel * bits * LUT_PER_ADDER_BIT)
    if depth > 0 and not layer.table_size and not layer.variable_divisor and layer.io_type != "io_stream":
        ff += depth * parallel * bits
    return LayerResources(lut=lut, ff=ff, dsp=dsp, bram18=bram)


def layer_resources(layer: LayerConfig, device: Device, depth: int, is_last: bool = False) -> LayerResources:
    """Resources of one layer; ``depth`` is its pipeline depth from edgec.cost.cycles; the last
    layer writes the design's output port rather than a FIFO."""
    res = _linear(layer, device, depth) if layer.is_linear else _elementwise(layer, device, depth)
    res.lut = int(round(res.lut)) + LUT_PER_LAYER_CONTROL
    res.ff, res.dsp, res.bram18 = int(round(res.ff)), int(res.dsp), int(res.bram18)
    if layer.io_type == "io_stream":
        res.ff += FF_PER_LAYER_CONTROL_STREAM
        if not is_last:
            # the FIFO this layer writes to the next process: one packet wide
            packet = layer.n_out if layer.kind == "dense" and layer.positions == 1 else (layer.out_shape[-1] if layer.out_shape else 1)
            res.lut += int(packet * layer.result_bits * LUT_PER_FIFO_BIT[device.backend])
            res.ff += int(packet * layer.result_bits * FF_PER_FIFO_BIT[device.backend])
    return res


def design_overhead(layers: list[LayerConfig], device: Device, design_ii: int = 1) -> LayerResources:
    """Resources outside the layers: control, and the registered input of io_parallel designs."""
    ff = FF_PER_DESIGN_CONTROL
    if layers and layers[0].io_type != "io_stream" and (device.backend == "vivado" or design_ii <= 1):
        ff += layers[0].in_elems * layers[0].input_bits
    return LayerResources(lut=LUT_PER_DESIGN_CONTROL, ff=ff, dsp=0, bram18=0)
