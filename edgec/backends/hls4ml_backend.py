"""The only module that talks to hls4ml: configure, convert, type, write and compile a project.

hls4ml fuses a bias Add or BatchNorm into the preceding Dense/Conv only while that layer's result
type is left to inference, so edgec converts with inferred types and then sets every type on the
converted graph itself: weights and biases (exact where possible), exact accumulators, and result
types from the calibrated range of the ONNX tensor each hls4ml variable stands for.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper

from edgec.configure import LoweringPlan
from edgec.errors import ToolchainError
from edgec.fixed_point import (
    ACTIVATION_TABLE_SIZE,
    FixedType,
    accumulator_type,
    droppable_input_quantizer,
    exact_type,
    input_quantizer_type,
    quant_node_type,
    range_type,
)
from edgec.targets import Target

log = logging.getLogger(__name__)

LINEAR_CLASSES = ("Dense", "Conv1D", "Conv2D", "PointwiseConv1D", "PointwiseConv2D", "DepthwiseConv1D", "DepthwiseConv2D")
PASS_THROUGH_CLASSES = ("Reshape", "Transpose", "Flatten", "Repack", "Clone", "Concatenate")
FUSABLE_OPS = ("Add", "Sub", "Mul", "Div", "BatchNormalization", "Quant", "BipolarQuant")
QUANTIZER_OPS = ("Quant", "BipolarQuant")
_IDENT = re.compile(r"[^A-Za-z0-9_]")


def sanitize_identifier(name: str, fallback: str = "edgec_model") -> str:
    """A C/C++/Tcl-safe identifier: letters, digits and underscores, not starting with a digit."""
    cleaned = _IDENT.sub("_", name).strip("_")
    cleaned = re.sub(r"_+", "_", cleaned)
    if not cleaned:
        return fallback
    if cleaned[0].isdigit():
        cleaned = f"m_{cleaned}"
    return cleaned[:64]


@dataclass
class HlsLayer:
    """What the report needs to know about one lowered hls4ml layer."""

    name: str
    op: str
    onnx_tensor: str
    input_shape: list[int]
    output_shape: list[int]
    macs: int
    params: int
    precision: dict[str, str]
    strategy: str | None
    reuse_factor: int | None
    choice_reason: str | None = None
    activation: str | None = None  # for Activation layers: sigmoid, tanh, relu...


def _fixed_of(precision) -> FixedType | None:
    from hls4ml.model.types import FixedPrecisionType, IntegerPrecisionType, XnorPrecisionType

    if isinstance(precision, XnorPrecisionType):
        return FixedType(2, 2)  # a bipolar value, +-1
    if isinstance(precision, FixedPrecisionType):
        rounding = getattr(getattr(precision, "rounding_mode", None), "name", "TRN") or "TRN"
        saturation = getattr(getattr(precision, "saturation_mode", None), "name", "WRAP") or "WRAP"
        return FixedType(precision.width, precision.integer, precision.signed, rounding, saturation)
    if isinstance(precision, IntegerPrecisionType):
        return FixedType(precision.width, precision.width, precision.signed)
    return None


def _is_quantizer(layer) -> bool:
    return layer.class_name == "Activation" and (
        layer.get_attr("quantizer") is not None or layer.get_attr("activation") in ("binary_tanh", "ternary_tanh")
    )


# Activations computed exactly in ap_fixed arithmetic (a comparison and, below zero, one product by
# an exactly typed slope): given an exact input and a quantizer's type as output, they round once.
EXACT_SLOPE_ACTIVATIONS = ("leakyrelu", "prelu")


def _exact_slope_activation(layer) -> bool:
    return layer.class_name == "PReLU" or str(layer.get_attr("activation") or "").lower() in EXACT_SLOPE_ACTIVATIONS


def _feeds_quantizer(var: str, consumers: dict[str, list], quantized_output=None) -> bool:
    """Whether ``var`` reaches a quantizer only through layers that move values (Reshape...), or
    through a LeakyReLU/PReLU whose output hls4ml typed with the model's quantizer
    (``quantized_output(layer)``): the producer then hands on its exact sum, rounded once, by the
    quantizer (rounding it to a calibrated type first would round twice and miss the quantized
    reference by an LSB)."""
    readers = consumers.get(var, [])
    for _ in range(8):
        if len(readers) != 1 or readers[0].class_name not in PASS_THROUGH_CLASSES:
            break
        readers = consumers.get(readers[0].outputs[0], [])
    return any(_is_quantizer(c) or (_exact_slope_activation(c) and quantized_output is not None and quantized_output(c)) for c in readers)


def _resolve_tensor(model: ModelWrapper, tensor: str, hls_vars: set[str]) -> str:
    """The ONNX tensor an hls4ml variable really holds, following ops hls4ml fused into its producer."""
    seen = 0
    while seen < 16:
        consumers = model.find_consumers(tensor) or []
        if len(consumers) != 1 or consumers[0].op_type not in FUSABLE_OPS:
            return tensor
        nxt = consumers[0].output[0]
        if nxt in hls_vars:
            return tensor
        tensor = nxt
        seen += 1
    return tensor


def _ap(ftype: FixedType):
    """The backend (ap_fixed) form of a type: converted graphs need it to print C++."""
    from hls4ml.backends.fpga.fpga_types import APTypeConverter

    return APTypeConverter().convert(ftype.to_hls4ml_precision())


def _set_result(layer, ftype: FixedType) -> None:
    """Set a layer's output type on every object hls4ml keeps for it (the layer's variable, the
    graph's variable table and the layer's result_t)."""
    precision = _ap(ftype)
    for out in layer.outputs:  # every output: a Clone has one per reader
        variable = layer.get_output_variable(out)
        if variable is not None:
            variable.type.precision = precision
        graph_var = layer.model.output_vars.get(out)
        if graph_var is not None:
            graph_var.type.precision = precision
    if "result_t" in layer.types:
        layer.types["result_t"].precision = precision


def _set_weight_type(layer, wname: str, ftype: FixedType) -> None:
    """Give one weight its own typedef (hls4ml may share ``model_default_t`` between layers)."""
    var = layer.weights[wname]
    fresh = _named_type(f"{layer.name}_{wname}_t", ftype)
    var.type = fresh
    var.update_precision(fresh.precision)
    layer.set_attr(f"{wname}_t", fresh)


def _named_type(name: str, ftype: FixedType):
    """A fresh backend (ap_fixed) type with its own typedef name."""
    from hls4ml.backends.fpga.fpga_types import APTypeConverter, HLSTypeConverter
    from hls4ml.model.types import NamedType

    converter = HLSTypeConverter(precision_converter=APTypeConverter())
    return converter.convert(NamedType(sanitize_identifier(name), ftype.to_hls4ml_precision()))


# Softmax look-up tables are indexed by the top bits of their input types, so the types decide the
# table resolution (hls4ml nnet_activation.h, softmax_stable). edgec sizes them to the values
# they hold; hls4ml's defaults (fixed<18,8> everywhere) index the 1/sum table in steps of 0.25.
SOFTMAX_TABLE_BITS = 18  # one BRAM18 word (UG473: 18 Kib blocks, 18-bit wide ports)
SOFTMAX_NORM_INTEGER_BITS = 4  # x_max - x saturates at 16: exp(-16) = 1.1e-7, below one table LSB
SOFTMAX_NORM_BITS = 16  # at least the 12 index bits the tables slice off the top
# 12 index bits: exp(-d) steps of 16/4096 (0.4% relative); 1/sum off by < 2^-8 for 10 classes.
# Each table is 4096 x 18 bits = 4 BRAM18.
SOFTMAX_TABLE_SIZE = 4096


# Table-based activations (hls4ml nnet_activation.h): sigmoid tabulates [-8, 8), tanh [-4, 4),
# ELU the negative half-axis, each in table_size steps. The default 1024 entries of fixed<18,8>
# give errors near 5e-3; 4096 entries of a type fitted to the output range bring them near 1e-3.
TABLE_ACTIVATIONS = {  # activation -> (integer bits, signed) of the table values
    "sigmoid": (1, False),  # (0, 1)
    "tanh": (2, True),  # (-1, 1)
    "elu": (2, True),  # (-alpha, 0] for alpha <= 1
}


def _configure_table_activation(layer) -> bool:
    activation = str(layer.get_attr("activation") or "").lower()
    if activation not in TABLE_ACTIVATIONS or "table_t" not in layer.types:
        return False
    integer, signed = TABLE_ACTIVATIONS[activation]
    ftype = FixedType(SOFTMAX_TABLE_BITS, integer, signed, "RND", "SAT")
    layer.set_attr("table_t", _named_type(f"{layer.name}_table_t", ftype))
    layer.set_attr("table_size", ACTIVATION_TABLE_SIZE)
    return True


def _activation_parameter(layer) -> float | None:
    """The scalar parameter (alpha) of a parametrized activation (LeakyReLU, ELU), or None."""
    if "param_t" not in layer.attributes or layer.get_attr("activ_param") is None:
        return None
    try:
        return float(layer.get_attr("activ_param"))
    except (TypeError, ValueError):
        return None


def _exact_activation_parameter(layer) -> None:
    """Give a parametrized activation's alpha a type that holds the model's float32 alpha exactly
    (hls4ml infers one from the value written as a decimal: 0.3 would be off in the last bits),
    and write that float32 value, so ``alpha * x`` is rounded once, into the output type, as the
    reference computes it."""
    alpha = _activation_parameter(layer)
    if alpha is None:
        return
    exact = float(np.float32(alpha))
    ftype = exact_type(np.asarray([exact]), 40)
    if ftype is None:
        return
    if exact >= 0 and ftype.width > 1:  # the same grid and range, without the sign bit
        ftype = FixedType(ftype.width - 1, ftype.integer - 1, False)
    layer.set_attr("activ_param", exact)
    layer.set_attr("param_t", _named_type(f"{layer.name}_param_t", ftype))


def _configure_softmax(layer, width: int) -> None:
    n = int(layer.get_attr("n_slice") or layer.get_attr("n_in"))
    sum_int = int(math.floor(math.log2(max(n, 1)))) + 1  # the sum of n exponentials is in [1, n]
    frac = SOFTMAX_TABLE_BITS - 1
    name = layer.name
    layer.set_attr(
        "inp_norm_t", _named_type(f"{name}_inp_norm_t", FixedType(SOFTMAX_NORM_BITS, SOFTMAX_NORM_INTEGER_BITS, False, "RND", "SAT"))
    )
    layer.set_attr("exp_table_t", _named_type(f"{name}_exp_table_t", FixedType(SOFTMAX_TABLE_BITS, 1, False, "RND", "SAT")))
    layer.set_attr("accum_t", _named_type(f"{name}_accum_t", FixedType(sum_int + frac, sum_int, False, "RND", "SAT")))
    layer.set_attr("inv_inp_t", _named_type(f"{name}_inv_inp_t", FixedType(sum_int + frac, sum_int, False, "TRN", "SAT")))
    layer.set_attr("inv_table_t", _named_type(f"{name}_inv_table_t", FixedType(SOFTMAX_TABLE_BITS, 1, False, "RND", "SAT")))
    layer.set_attr("exp_table_size", SOFTMAX_TABLE_SIZE)
    layer.set_attr("inv_table_size", SOFTMAX_TABLE_SIZE)
    _set_result(layer, FixedType(max(width, 2), 1, False, "RND", "SAT"))  # probabilities in [0, 1]


# hls4ml's sigmoid table covers [-8, 8) (nnet_activation.h): below it the output stays at sigmoid(-8)
SIGMOID_TABLE_FLOOR = 1.0 / (1.0 + math.exp(8.0))


def output_resolution(last_op: str, result_precision: str, reference: np.ndarray, activation: str | None = None) -> np.ndarray:
    """Smallest output difference a design resolves, per sample of ``reference``.

    After a Softmax it is one step of the exponential table (relative to the largest probability);
    otherwise two LSBs of the output type (one for rounding each of the two values compared).
    """
    peak = np.max(np.abs(reference), axis=-1)
    if last_op == "Softmax":
        return peak * (2.0**SOFTMAX_NORM_INTEGER_BITS / SOFTMAX_TABLE_SIZE)
    match = re.search(r"fixed<(\d+),(-?\d+)", result_precision)
    lsb = 2.0 ** -(int(match.group(1)) - int(match.group(2))) if match else 0.0
    if (activation or "").lower() == "sigmoid":  # a table lookup: its step and its clamp at +-8
        lsb = max(lsb, SIGMOID_TABLE_FLOOR, 16.0 / ACTIVATION_TABLE_SIZE / 4.0)
    return np.full(reference.shape[0], 2 * lsb)


def _n_terms(layer) -> int:
    if layer.class_name == "Dense":
        return int(layer.get_attr("n_in"))
    filt = int(layer.get_attr("filt_height", 1) or 1) * int(layer.get_attr("filt_width", 1) or 1)
    if layer.class_name.startswith("Depthwise"):
        return filt  # each output channel sees its own input channel only
    return filt * int(layer.get_attr("n_chan"))


def _is_xnor(precision) -> bool:
    from hls4ml.model.types import XnorPrecisionType

    return isinstance(precision, XnorPrecisionType)


def _both_binary(layer) -> bool:
    return _is_xnor(layer.get_input_variable().type.precision) and _is_xnor(layer.weights["weight"].type.precision)


def _feeds_only_sign(layer) -> bool:
    """Whether every consumer of the layer's output is hls4ml's binary_tanh (a BipolarQuant)."""
    consumers = [other for other in layer.model.get_layers() if layer.outputs[0] in other.inputs]
    return bool(consumers) and all(c.get_attr("activation") == "binary_tanh" for c in consumers)


def _low_bit_weights(layer) -> FixedType | None:
    """Give +-1 weights hls4ml's xnor type and {-1, 0, 1} weights its 2-bit integer type, so the
    layer uses nnet::product::weight_binary / both_binary (xnor + popcount) / weight_ternary, with
    no multiplier (hls4ml's FPGABackend.product_type picks them from the weight type). Returns
    the FixedType the values take for the accumulator arithmetic, or None for other weights.

    Exceptions, where hls4ml's products would compute something else:
    - a binary-input Conv: hls4ml's convolutions accumulate both_binary's 0/1 matches without the
      ``2 * popcount - n`` correction Dense applies (nnet_mult.h ``cast``), so its weights stay
      signed fixed point (data_binary);
    - ternary weights on a binary (0/1-encoded) input: weight_ternary would multiply the 0/1 code;
    - a binary Dense whose threshold (bias) cannot pass through hls4ml's ``ap_int<log2(n)+2>``
      result of ``2 * popcount - n + bias`` without overflow.
    """
    from hls4ml.model.types import IntegerPrecisionType, NamedType, XnorPrecisionType

    weight = layer.weights["weight"]
    data = np.asarray(weight.data, dtype=np.float64)
    if data.size == 0 or not np.all(np.isin(data, (-1.0, 0.0, 1.0))):
        return None
    binary_input = _is_xnor(layer.get_input_variable().type.precision)
    is_dense = layer.class_name == "Dense"
    if np.all(data != 0):
        if binary_input and not is_dense:
            return None
        if binary_input and "bias" in layer.weights:
            n_in = int(layer.get_attr("n_in"))
            bias = np.asarray(layer.weights["bias"].data, dtype=np.float64)
            if not np.array_equal(bias, np.round(bias)):
                if not _feeds_only_sign(layer):
                    return None  # hls4ml's cast to ap_int drops the bias's fraction (toward zero)
                # sign(sum + b) for integer sums and sum + b != 0 (exact_requant keeps every value off 0):
                # sum + b > 0  <=>  sum + ceil(b) - 1 >= 0, which hls4ml's binary_tanh (>= 0) computes exactly.
                bias = np.ceil(bias) - 1.0
                layer.weights["bias"].data = bias.astype(np.float32).reshape(np.shape(layer.weights["bias"].data))
            limit = 2 ** (math.ceil(math.log2(n_in)) + 1) - 1  # ap_int<ceillog2(n_in) + 2>
            if bias.size and float(np.max(np.abs(bias))) + n_in > limit:
                return None
        precision, codes, as_fixed = XnorPrecisionType(), np.where(data >= 0, 1, 0).astype(np.int64), FixedType(2, 2)
    else:
        if binary_input:
            return None
        precision, codes, as_fixed = IntegerPrecisionType(width=2, signed=True), data.astype(np.int64), FixedType(2, 2)
    from hls4ml.backends.fpga.fpga_types import APTypeConverter, HLSTypeConverter

    converter = HLSTypeConverter(precision_converter=APTypeConverter())
    fresh = converter.convert(NamedType(sanitize_identifier(f"{layer.name}_weight_t"), precision))
    weight.data = codes.reshape(data.shape)
    weight.type = fresh
    weight.update_precision(fresh.precision)
    layer.set_attr("weight_t", fresh)
    return as_fixed


def _xnor_popcount_types(layer) -> FixedType:
    """hls4ml's both_binary Dense starts each accumulator at the bias, adds 1 per matching bit
    (popcount) and returns ``2 * acc - n_in`` (nnet_mult.h ``cast``), i.e. ``sum(+-1 products) +
    2 * bias``: so the bias is halved here to keep the model's ``sum + bias``, and the accumulator
    holds ``bias / 2 + popcount`` exactly."""
    n_in = int(layer.get_attr("n_in"))
    bias_var = layer.weights.get("bias")
    half = np.asarray(bias_var.data, dtype=np.float64) / 2.0 if bias_var is not None else np.zeros(1)
    bias_t = exact_type(half, 40) or FixedType(24, 16)
    if bias_var is not None:
        bias_var.data = half.astype(np.float32).reshape(np.shape(bias_var.data))
        _set_weight_type(layer, "bias", bias_t)
    reach = float(np.max(np.abs(half))) + n_in if half.size else float(n_in)
    integer = math.floor(math.log2(max(reach, 1.0))) + 2
    return FixedType(integer + bias_t.fractional, integer, True)


def _exact_thresholds(layer, model: ModelWrapper, in_t: FixedType) -> None:
    """hls4ml's fused sign (``normalize_binary_tanh``) compares its input with thresholds that must
    have the input's own type, and it rounds them down (wrong for ``x >= t`` unless t is on the grid).
    Where edgec folded input preprocessing into a threshold (passes/input_threshold.py), set the
    thresholds to ``ceil(t)`` on the input's grid, typed like the input: exact for every input value."""
    from edgec.passes.input_threshold import THRESHOLD_MARK

    onnx_name = layer.name.removeprefix("bnbt_").removeprefix("bn_")
    node = next((n for n in model.graph.node if n.name == onnx_name), None)
    weight = layer.weights["threshold"]
    if node is not None and THRESHOLD_MARK in (node.doc_string or "") and model.get_initializer(node.input[1]) is not None:
        threshold = np.asarray(model.get_initializer(node.input[1]), dtype=np.float64)
    else:
        threshold = np.asarray(weight.data, dtype=np.float64)
    lsb = 2.0**-in_t.fractional
    grid = np.ceil(threshold / lsb) * lsb  # x >= t  <=>  x >= ceil(t) for x on the grid
    low = -in_t.max_abs if in_t.signed else 0.0
    grid = np.clip(grid, low, in_t.max_abs - lsb)  # a threshold above every input value saturates at the largest
    size = int(np.size(weight.data))
    weight.data = (
        np.broadcast_to(grid.reshape(-1) if grid.size == size else grid.reshape(-1)[:1], (size,))
        .astype(np.float64)
        .reshape(np.shape(weight.data))
        .copy()
    )
    _set_weight_type(layer, "threshold", in_t)


def apply_types(hm, model: ModelWrapper, plan: LoweringPlan) -> None:
    """Set every type of the converted hls4ml graph (see module docstring)."""
    from hls4ml.model.types import XnorPrecisionType

    layers = list(hm.get_layers())
    hls_vars = {out for layer in layers for out in layer.outputs}
    consumers: dict[str, list] = {}
    for layer in layers:
        for inp in layer.inputs:
            consumers.setdefault(inp, []).append(layer)
    current: dict[str, FixedType] = {}

    def calibrated(var: str) -> FixedType | None:
        return plan.tensor_type(_resolve_tensor(model, var, hls_vars))

    def fused_quantizer_type(var: str) -> FixedType | None:
        producer = model.find_producer(_resolve_tensor(model, var, hls_vars))
        return quant_node_type(model, producer) if producer is not None and producer.op_type == "Quant" else None

    def quantized(var: str) -> bool:
        """hls4ml folded one of the model's quantizers into this variable's type: keep it."""
        producer = model.find_producer(_resolve_tensor(model, var, hls_vars))
        return producer is not None and producer.op_type in QUANTIZER_OPS

    for layer in layers:
        cls = layer.class_name
        out = layer.outputs[0]
        in_t = current.get(layer.inputs[0]) if layer.inputs else None
        if cls == "Input":
            chosen = input_quantizer_type(model) or calibrated(out)
            if chosen is not None:
                _set_result(layer, chosen)
        elif cls in LINEAR_CLASSES and in_t is not None:
            choice = plan.layers.get(_onnx_node_for(layer, plan))
            weight = layer.weights["weight"]
            data = np.asarray(weight.data, dtype=np.float64)
            if choice is not None:
                w_t = choice.weight_t
                peak = float(np.max(np.abs(data))) if data.size else 0.0
                if w_t is not None and peak > w_t.max_abs:
                    # hls4ml rescaled the weights after the plan typed them (it folds a float-scale
                    # output quantizer's 1/scale into the layer): type what it will compute with
                    w_t = exact_type(data, plan.width) or range_type(peak, plan.width)
            else:  # a layer the plan does not know (none today): type its weights the same way
                w_t = exact_type(data, plan.width) or range_type(float(np.max(np.abs(data))), plan.width)
            low_bit = None if isinstance(weight.type.precision, XnorPrecisionType) else _low_bit_weights(layer)
            if low_bit is not None:
                w_t = low_bit  # hls4ml's weight_binary / both_binary (xnor-popcount) / weight_ternary products
            elif not isinstance(weight.type.precision, XnorPrecisionType):  # binary weights hls4ml made stay xnor
                _set_weight_type(layer, "weight", w_t)
            bias_t = None
            if "bias" in layer.weights:
                bias = np.asarray(layer.weights["bias"].data, dtype=np.float64)
                bias_t = exact_type(bias, plan.width + 8) or range_type(float(np.max(np.abs(bias))) if bias.size else 0.0, plan.width + 8)
                _set_weight_type(layer, "bias", bias_t)
            acc = accumulator_type(in_t, w_t, _n_terms(layer), bias_t)
            if low_bit is not None and _both_binary(layer):
                acc = _xnor_popcount_types(layer)
            if "accum_t" in layer.types:
                layer.types["accum_t"].precision = _ap(acc)
            feeds_quantizer = _feeds_quantizer(out, consumers, lambda reader: quantized(reader.outputs[0]))
            chosen = acc if feeds_quantizer else calibrated(out)
            if quantized(out):
                # hls4ml folded the model's quantizer into this layer: its type is the quantizer's (hls4ml's
                # PointwiseConv2D replacement drops it, leaving the accumulator type: no rounding, no clipping)
                chosen = fused_quantizer_type(out)
            if chosen is not None:
                _set_result(layer, chosen)
            if choice is not None:
                layer.set_attr("strategy", choice.strategy.lower())
        elif cls in PASS_THROUGH_CLASSES and in_t is not None:
            _set_result(layer, in_t)
        elif _is_quantizer(layer):
            # The model's own quantizer fixed this type. A binary graph output is given a signed
            # +-1 type, since hls4ml's xnor encoding would hand the caller 0 for -1.
            if out in hm.outputs and layer.get_attr("activation") == "binary_tanh":
                _set_result(layer, FixedType(2, 2))
            merged = _fixed_of(layer.get_output_variable().type.precision)
            if _configure_table_activation(layer) and merged is not None:
                # a table activation (tanh, sigmoid) hls4ml merged the model's quantizer into:
                # tabulate the quantized values themselves (rounded once, from double, in the
                # quantizer's own mode), so an input on the table's grid
                # (edgec.fixed_point.table_input_type) gives the exact level
                layer.set_attr("table_t", _named_type(f"{layer.name}_table_t", merged))
        elif cls == "BatchNormalizationQuantizedTanh" and in_t is not None and "threshold" in layer.weights:
            _exact_thresholds(layer, model, in_t)
        elif cls in ("ApplyAlpha", "BatchNormalization"):
            for wname in ("scale", "bias"):
                if wname in layer.weights:
                    data = np.asarray(layer.weights[wname].data, dtype=np.float64)
                    wt = exact_type(data, plan.width + 8) or range_type(float(np.max(np.abs(data))) if data.size else 0.0, plan.width + 8)
                    _set_weight_type(layer, wname, wt)
            chosen = None if quantized(out) else calibrated(out)
            if chosen is not None:
                _set_result(layer, chosen)
        elif cls in ("Pooling1D", "Pooling2D", "GlobalPooling1D", "GlobalPooling2D") and in_t is not None:
            _set_result(layer, in_t)
        elif cls == "Softmax":
            _configure_softmax(layer, plan.width)
        elif _configure_table_activation(layer):
            # hls4ml folds the model's quantizer after a parametrized table activation (ELU) into
            # its output: keep the quantizer's type, and tabulate the quantized values themselves
            # when the table value is the output (alpha 1), so an input on the table's grid gives
            # the exact level
            merged = fused_quantizer_type(out) if quantized(out) else None
            _exact_activation_parameter(layer)
            if merged is not None and _activation_parameter(layer) in (None, 1.0):
                layer.set_attr("table_t", _named_type(f"{layer.name}_table_t", merged))
            chosen = merged or calibrated(out)
            if chosen is not None:
                _set_result(layer, chosen)
        elif cls == "PReLU" and "param" in layer.weights:
            # the slopes exactly as the model's float32 values, so alpha * x is rounded once
            slopes = np.asarray(layer.weights["param"].data, dtype=np.float32).astype(np.float64)
            slope_t = exact_type(slopes, 40)
            if slope_t is not None:
                _set_weight_type(layer, "param", slope_t)
            chosen = fused_quantizer_type(out) if quantized(out) else calibrated(out)
            if chosen is not None:
                _set_result(layer, chosen)
        else:
            _exact_activation_parameter(layer)
            # a quantizer hls4ml folded into this layer (LeakyReLU...) fixes its type
            chosen = fused_quantizer_type(out) if quantized(out) else calibrated(out)
            if chosen is None and in_t is not None:
                chosen = in_t  # a layer hls4ml inserted (e.g. ZeroPadding2D): it only moves values
            if chosen is not None:
                _set_result(layer, chosen)
        final = _fixed_of(layer.get_output_variable().type.precision)
        if final is not None:
            for produced in layer.outputs:  # a Clone (io_stream fan-out) has one output per reader, all of one type
                current[produced] = final


def apply_uniform_precision(hm, precision: FixedType) -> None:
    """Give every result and accumulator the user's one type, as published hls4ml designs made
    with ``default_precision`` have it (hls4ml 1.3 would otherwise infer wider Dense results)."""
    for layer in hm.get_layers():
        if layer.class_name in ("Input", "Softmax") or _is_quantizer(layer):
            continue
        if "accum_t" in layer.types:
            layer.types["accum_t"].precision = _ap(precision)
        if layer.class_name not in PASS_THROUGH_CLASSES:
            _set_result(layer, precision)


def drop_input_quantizer(hm, model: ModelWrapper) -> str | None:
    """Remove the linear-activation layer hls4ml made of the quantizer that alone reads the graph
    input, when ``apply_types`` gave the Input layer that quantizer's exact type
    (``input_quantizer_type``): the float input is then rounded and saturated once, as it enters,
    and the layer would only copy values of one type into the same type. Returns its name."""
    if droppable_input_quantizer(model) is None:
        return None
    layers = list(hm.get_layers())
    inputs = [layer for layer in layers if layer.class_name == "Input"]
    if len(inputs) != 1:
        return None
    readers = [layer for layer in layers if inputs[0].outputs[0] in layer.inputs]
    if len(readers) != 1:
        return None
    quantizer = readers[0]
    if not _is_quantizer(quantizer) or quantizer.get_attr("activation") != "linear" or quantizer.outputs[0] in hm.outputs:
        return None
    if any(quantizer.outputs[0] in layer.inputs and layer.class_name in ("Reshape", "Flatten") for layer in layers):
        # io_parallel reshapes are views of their input's variable: it must stay
        # (droppable_input_quantizer's no-view check rules this out)
        log.debug("kept %s: a reshape reads it", quantizer.name)
        return None
    if str(quantizer.get_output_variable().type.precision) != str(inputs[0].get_output_variable().type.precision):
        return None
    hm.remove_node(quantizer)
    return quantizer.name


def _refresh_templates(hm) -> None:
    """Re-render hls4ml's per-layer C++ config/function snippets after edgec changed the types.

    hls4ml renders them during conversion (as "template" optimizer passes), so they would still
    name the types inferred then.
    """
    from hls4ml.backends.fpga.passes.clone import CloneFunctionTemplate
    from hls4ml.model.optimizer import get_optimizer

    backend = hm.config.backend
    # the io_stream Clone's template is registered apart from the layer templates
    templates = [get_optimizer(name) for name in backend._get_layer_templates()] + [CloneFunctionTemplate()]
    for layer in hm.get_layers():
        for template in templates:
            if template.match(layer):
                template.transform(hm, layer)


DSP_PRODUCT_HEADER = "edgec_products.h"


def bind_products_to_dsp(hm, plan: LoweringPlan) -> list[str]:
    """Give the layers whose ``LayerChoice.products_on_dsp`` is set edgec's DSP-bound product
    (templates/edgec_products.h.j2) in place of hls4ml's ``mult``; returns the hls4ml layers changed.
    Call after ``_refresh_templates`` (it rewrites the rendered config) and write the header with
    ``write_product_header`` after ``hm.write()``."""
    bound = []
    plain = "using product = nnet::product::mult<x_T, y_T>;"
    for layer in hm.get_layers():
        if layer.class_name not in LINEAR_CLASSES:
            continue
        node = _onnx_node_for(layer, plan)
        choice = plan.layers.get(node) if node is not None else None
        if choice is None or not choice.products_on_dsp or not choice.can_bind_products:
            continue
        config = layer.get_attr("config_cpp") or ""
        if plain not in config:
            raise ToolchainError(
                f"layer {layer.name}: cannot bind its products to DSP slices, hls4ml did not give it the plain product",
                hint="check the pinned hls4ml version",
            )
        layer.set_attr("config_cpp", config.replace(plain, "using product = nnet::product::edgec_dsp_mult<x_T, y_T>;"))
        layer.set_attr("include_header", list(layer.get_attr("include_header", []) or []) + [DSP_PRODUCT_HEADER])
        bound.append(layer.name)
    return bound


def write_product_header(project_dir: Path, project_name: str, backend: str) -> None:
    """Write the DSP-bound product class the bound layers' configs name."""
    from edgec.templating import render
    from edgec.version import __version__

    header = project_dir / "firmware" / DSP_PRODUCT_HEADER
    header.write_text(render("edgec_products.h.j2", edgec_version=__version__, project_name=project_name, backend=backend.lower()))


def _make_weights_relocatable(project_dir: Path, project_name: str) -> None:
    """Let the C-sim library find its weight files relative to itself instead of at a fixed path.

    hls4ml bakes the absolute weights folder into the library at compile time, which breaks once
    edgec moves the finished build from its staging folder into place (or a user copies it).
    """
    from edgec.templating import render
    from edgec.version import __version__

    header = project_dir / "firmware" / "edgec_weights_dir.h"
    header.write_text(
        render("edgec_weights_dir.h.j2", edgec_version=__version__, project_name=project_name, fallback_dir="firmware/weights")
    )
    script = project_dir / "build_lib.sh"
    text = script.read_text()
    fixed_dir = 'WEIGHTS_DIR="\\"${BASEDIR}/firmware/weights\\""'
    includes = 'INCFLAGS="-Ifirmware/ap_types/"'
    if fixed_dir not in text or includes not in text:
        raise ToolchainError(
            "hls4ml's build_lib.sh changed: cannot make the weights folder relocatable", hint="check the pinned hls4ml version"
        )
    text = text.replace(fixed_dir, 'WEIGHTS_DIR="edgec_weights_dir()"')
    text = text.replace(includes, 'INCFLAGS="-Ifirmware/ap_types/ -include firmware/edgec_weights_dir.h"')
    script.write_text(text)


def _make_deterministic(hm, model: ModelWrapper, project_dir: Path, project_name: str) -> None:
    """Make the written project the same on every build of the same model and plan, and re-runnable
    from where it ends up. hls4ml stamps each project with a random id (library name, build_lib.sh,
    hls4ml_config.yml) and records the absolute staging folder as ``OutputDir``; edgec derives the
    stamp from the generated firmware itself, writes ``OutputDir: .`` and saves the model the
    project was converted from next to the config (``OnnxModel: <project>.onnx``), so
    ``hls4ml.converters.convert_from_config('hls4ml_config.yml')`` works from inside the folder."""
    import hashlib

    old = str(hm.config.get_config_value("Stamp"))
    digest = hashlib.sha256(model.model.SerializeToString(deterministic=True))
    for path in sorted((project_dir / "firmware").glob("*.h")) + sorted((project_dir / "firmware").glob("*.cpp")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    stamp = digest.hexdigest()[:8]
    hm.config.config["Stamp"] = stamp
    script = project_dir / "build_lib.sh"
    script.write_text(script.read_text().replace(old, stamp))
    config = project_dir / "hls4ml_config.yml"
    lines = []
    for line in config.read_text().splitlines():
        if line.startswith("OutputDir:"):
            line = "OutputDir: ."
        elif line.startswith("Stamp:"):
            line = f"Stamp: {stamp}"
        lines.append(line)
    config.write_text("\n".join(lines) + "\n")
    model.save(str(project_dir / f"{project_name}.onnx"))


def csim_cache_dir() -> Path:
    """Where compiled C-simulation libraries are kept between builds (XDG cache directory)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgec" / "csim"


def _compile_with_cache(hm, project_dir: Path, project_name: str) -> None:
    """hls4ml's compile() without its write() (which would undo edgec's patches), reusing a library
    compiled before for the same project: the stamp is a hash of the model and the generated
    firmware (_make_deterministic), so equal stamps, project names, hls4ml versions and build scripts
    mean byte-equal sources. A rebuild of the same model, or of the same model under other names,
    skips g++."""
    import ctypes
    import hashlib
    import shutil

    import hls4ml

    stamp = str(hm.config.get_config_value("Stamp"))
    library = project_dir / "firmware" / f"{project_name}-{stamp}.so"
    key = hashlib.sha256(
        f"{project_name}|{stamp}|{hls4ml.__version__}|".encode() + (project_dir / "build_lib.sh").read_bytes()
    ).hexdigest()[:24]
    cached = csim_cache_dir() / f"{key}.so"
    if cached.is_file():
        shutil.copyfile(cached, library)
        hm._top_function_lib = ctypes.cdll.LoadLibrary(str(library))
        log.debug("C simulation library reused from %s", cached)
        return
    hm._compile()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.part")
        shutil.copyfile(library, partial)
        partial.replace(cached)
    except OSError as exc:  # a read-only or full cache only costs the next build a compile
        log.debug("could not cache the C simulation library: %s", exc)


def _onnx_node_for(layer, plan: LoweringPlan) -> str | None:
    """The ONNX MatMul/Conv a Dense/Conv layer came from: hls4ml names it ``<Class>_<node>``."""
    matches = [node for node in plan.layers if layer.name == node or layer.name.endswith(f"_{node}")]
    return max(matches, key=len) if matches else None


def _hls_layer_info(layer, plan: LoweringPlan, model: ModelWrapper, hls_vars: set[str]) -> HlsLayer:
    out_var = layer.get_output_variable()
    in_var = layer.get_input_variable() if layer.inputs else None
    macs = params = 0
    if layer.class_name in LINEAR_CLASSES:
        n_terms = _n_terms(layer)
        outputs = int(np.prod(out_var.shape))
        macs = n_terms * outputs if layer.class_name != "Dense" else n_terms * int(layer.get_attr("n_out"))
        params = int(sum(np.asarray(w.data).size for w in layer.weights.values()))
    elif layer.weights:
        params = int(sum(np.asarray(w.data).size for w in layer.weights.values()))
    precision = {}
    for key, type_name in (("weight", "weight_t"), ("bias", "bias_t"), ("result", "result_t"), ("accum", "accum_t")):
        if type_name in layer.types:
            precision[key] = str(layer.types[type_name].precision)
    if "result" not in precision:
        precision["result"] = str(out_var.type.precision)
    is_linear = layer.class_name in LINEAR_CLASSES
    choice = plan.layers.get(_onnx_node_for(layer, plan)) if is_linear else None
    return HlsLayer(
        name=layer.name,
        op=layer.class_name,
        onnx_tensor=_resolve_tensor(model, layer.outputs[0], hls_vars),
        input_shape=[int(d) for d in in_var.shape] if in_var is not None else [int(d) for d in out_var.shape],
        output_shape=[int(d) for d in out_var.shape],
        macs=int(macs),
        params=params,
        precision=precision,
        strategy=(layer.get_attr("strategy") or "latency").capitalize() if is_linear else None,
        reuse_factor=int(layer.get_attr("reuse_factor") or 1) if is_linear else None,
        choice_reason=choice.reason if choice is not None else None,
        activation=str(layer.get_attr("activation")) if layer.class_name == "Activation" and layer.get_attr("activation") else None,
    )


_GCC_ERROR = re.compile(r"^(?P<file>[^:\s]+):(?P<line>\d+):(?:\d+:)?\s*(?:fatal )?error:\s*(?P<message>.*)$")
_GCC_REFERENCE = re.compile(r"(?P<file>[^:\s]*firmware/[A-Za-z0-9_]+\.cpp):(?P<line>\d+):")


def _layer_at(project_dir: Path, source: str, line_number: int) -> str | None:
    """The hls4ml layer a line of the generated top function belongs to: hls4ml ends each layer's
    call with ``// <layer name>``."""
    path = project_dir / source if not Path(source).is_absolute() else Path(source)
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for text in lines[line_number - 1 : line_number + 3]:
        match = re.search(r";\s*//\s*([A-Za-z0-9_]+)\s*$", text)
        if match:
            return match.group(1)
    return None


def compile_failure(output: str, project_dir: Path, project_name: str, max_errors: int = 3) -> str:
    """One line for a failed C-simulation compile: the first compiler errors (deduplicated) and the
    hls4ml layer of the top function they come from."""
    errors: list[str] = []
    layers: list[str] = []
    for text in output.splitlines():
        match = _GCC_ERROR.match(text.strip())
        if match:
            if len(errors) == max_errors:
                break  # g++ names the top-function line before or at each error: later ones belong to later errors
            message = " ".join(match.group("message").split())
            entry = f"{Path(match.group('file')).name}:{match.group('line')}: {message[:240]}"
            if entry not in errors:
                errors.append(entry)
        reference = _GCC_REFERENCE.search(text)
        if reference:
            layer = _layer_at(project_dir, reference.group("file"), int(reference.group("line")))
            if layer and layer not in layers:
                layers.append(layer)
    where = f" in layer {', '.join(layers[:3])}" if layers else ""
    if not errors:
        tail = " | ".join(line.strip() for line in output.strip().splitlines()[-3:])
        return f"g++ could not compile the C simulation of {project_name}{where}: {tail[:400] or 'no compiler output'}"
    return f"g++ could not compile the C simulation of {project_name}{where}: " + " | ".join(errors)


@contextlib.contextmanager
def _quiet():
    """hls4ml prints its progress to stdout; keep it in the log instead of the user's terminal."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer
    for line in buffer.getvalue().splitlines():
        log.debug("hls4ml: %s", line)


class HlsProject:
    """A converted, typed and compiled hls4ml project."""

    def __init__(self, hm, layers: list[HlsLayer], project_dir: Path, project_name: str, timings: dict[str, float]) -> None:
        self.hm = hm
        self.timings = timings
        self.layers = layers
        self.project_dir = project_dir
        self.project_name = project_name

    def output_resolution(self, reference: np.ndarray) -> np.ndarray:
        """Per sample, the smallest output difference the design resolves (see verify.compare)."""
        computing = [layer for layer in self.layers if layer.op not in PASS_THROUGH_CLASSES]
        last = computing[-1] if computing else self.layers[-1]
        return output_resolution(last.op, last.precision.get("result", ""), reference, last.activation)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run the compiled C simulation on a batch in the canonical (hls4ml) layout."""
        flat = np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float64)
        with _quiet():
            y = self.hm.predict(flat)
        return np.asarray(y, dtype=np.float64).reshape(x.shape[0], -1)

    def trace(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Per-layer outputs of the C simulation, keyed by hls4ml layer name."""
        flat = np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float64)
        from edgec.runtime.csim import captured_c_stderr

        with _quiet(), captured_c_stderr():
            _, traces = self.hm.trace(flat)
        return {k: np.asarray(v, dtype=np.float64).reshape(x.shape[0], -1) for k, v in traces.items()}


def lower(
    model: ModelWrapper, plan: LoweringPlan, target: Target, project_dir: Path, project_name: str, backend: str = "vitis"
) -> HlsProject:
    """Convert the canonical model with hls4ml, apply edgec's types, write and compile the project.

    With a user-given precision (``plan.precision``) every type is that one, as in hls4ml's own
    ``default_precision`` designs, and edgec's typing is skipped.
    """
    import time

    import hls4ml

    project_name = sanitize_identifier(project_name)
    hls_backend = "Vivado" if backend.lower() == "vivado" else "Vitis"
    default_precision = plan.precision.hls4ml() if plan.precision is not None else f"fixed<{plan.width},6>"
    start = time.perf_counter()
    with _quiet():
        cfg = hls4ml.utils.config.config_from_onnx_model(
            model, granularity="name", backend=hls_backend, default_precision=default_precision
        )
    cfg["Model"]["Strategy"] = "Latency"
    for layer_cfg in cfg["LayerName"].values():
        layer_cfg["Trace"] = True
    for node, choice in plan.layers.items():
        layer_cfg = cfg["LayerName"].setdefault(node, {})
        precision = layer_cfg.setdefault("Precision", {})
        precision["weight"] = choice.weight_t.hls4ml()
        layer_cfg["Strategy"] = choice.strategy
        layer_cfg["ReuseFactor"] = choice.reuse_factor
    try:
        with _quiet():
            hm = hls4ml.converters.convert_from_onnx_model(
                model,
                output_dir=str(project_dir),
                project_name=project_name,
                hls_config=cfg,
                backend=hls_backend,
                part=target.part,
                clock_period=round(target.clock_period_ns, 3),
                io_type=plan.io_type,
            )
        if plan.precision is None:
            apply_types(hm, model, plan)
            drop_input_quantizer(hm, model)
        else:
            apply_uniform_precision(hm, plan.precision)
        _refresh_templates(hm)
        bound = bind_products_to_dsp(hm, plan)
        converted = time.perf_counter()
        hm.config.config["OnnxModel"] = f"{project_name}.onnx"  # the yml names the model file, not a pickled object
        with _quiet():
            hm.write()
            if bound:
                write_product_header(project_dir, project_name, hls_backend)
            _make_weights_relocatable(project_dir, project_name)
            _make_deterministic(hm, model, project_dir, project_name)
    except Exception as exc:  # hls4ml raises bare Exceptions
        raise ToolchainError(f"hls4ml failed to lower the model: {str(exc).splitlines()[0][:300]}") from exc
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            _compile_with_cache(hm, project_dir, project_name)
    except Exception as exc:  # hls4ml prints g++'s output and raises a bare Exception
        raise ToolchainError(
            compile_failure(output.getvalue(), project_dir, project_name),
            hint="this is a bug in edgec's lowering: please report it with the model; --keep-failed keeps the project",
        ) from exc
    finally:
        for line in output.getvalue().splitlines():
            log.debug("g++: %s", line)
    compiled = time.perf_counter()
    layers = list(hm.get_layers())
    hls_vars = {out for layer in layers for out in layer.outputs}
    info = [_hls_layer_info(layer, plan, model, hls_vars) for layer in layers if layer.class_name != "Input"]
    timings = {"convert": round(converted - start, 3), "compile": round(compiled - converted, 3)}
    return HlsProject(hm, info, project_dir, project_name, timings)
