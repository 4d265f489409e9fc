"""Fixed-point types: choosing widths from value ranges, exact types for exact values."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FixedType:
    """``ap_fixed<width, integer>`` (signed) or ``ap_ufixed`` with rounding/saturation modes."""

    width: int
    integer: int
    signed: bool = True
    rounding: str = "TRN"
    saturation: str = "WRAP"

    @property
    def fractional(self) -> int:
        return self.width - self.integer

    @property
    def max_abs(self) -> float:
        """The largest magnitude the type holds (an upper bound: 2^(I-1) signed, 2^I unsigned)."""
        return 2.0 ** (self.integer - 1) if self.signed else 2.0**self.integer

    def hls4ml(self) -> str:
        """hls4ml's config string, e.g. ``fixed<16,6,RND,SAT>``."""
        kind = "fixed" if self.signed else "ufixed"
        if self.rounding == "TRN" and self.saturation == "WRAP":
            return f"{kind}<{self.width},{self.integer}>"
        return f"{kind}<{self.width},{self.integer},{self.rounding},{self.saturation}>"

    def to_hls4ml_precision(self):
        from hls4ml.model.types import FixedPrecisionType, RoundingMode, SaturationMode

        return FixedPrecisionType(
            width=self.width,
            integer=self.integer,
            signed=self.signed,
            rounding_mode=RoundingMode.from_string(self.rounding),
            saturation_mode=SaturationMode.from_string(self.saturation),
        )


def integer_bits_for(max_abs: float, signed: bool = True) -> int:
    """Integer bits (including sign) so that ``max_abs`` fits."""
    if max_abs <= 0 or not math.isfinite(max_abs):
        return 1 if signed else 0
    bits = math.floor(math.log2(max_abs)) + 1
    return max(bits, 0) + (1 if signed else 0)


def range_type(max_abs: float, width: int, headroom: float = 1.0, rounding: str = "RND", saturation: str = "SAT") -> FixedType:
    """A ``width``-bit type whose integer part covers ``max_abs * headroom``."""
    integer = integer_bits_for(max_abs * headroom)
    integer = min(max(integer, 1), width - 1) if width > 1 else 1
    return FixedType(width, integer, True, rounding, saturation)


def exact_type(values: np.ndarray, max_width: int = 32) -> FixedType | None:
    """The narrowest signed fixed type that holds every value exactly, or None if wider than allowed."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return None
    for frac in range(0, max_width):
        scaled = np.round(values * (2.0**frac))
        if np.all(scaled == values * (2.0**frac)):
            hi, lo = float(scaled.max()), float(scaled.min())
            # signed width w holds [-2^(w-1), 2^(w-1) - 1]
            width = 2
            while not (-(2.0 ** (width - 1)) <= lo and hi <= 2.0 ** (width - 1) - 1):
                width += 1
            if width > max_width:
                return None
            return FixedType(width, width - frac, True)
    return None


def accumulator_type(input_t: FixedType, weight_t: FixedType, n_terms: int, bias_t: FixedType | None = None) -> FixedType:
    """A type that holds a sum of ``n_terms`` products (plus a bias) without any rounding."""
    frac = input_t.fractional + weight_t.fractional
    integer = input_t.integer + weight_t.integer + max(0, math.ceil(math.log2(max(n_terms, 1))))
    if bias_t is not None:
        frac = max(frac, bias_t.fractional)
        integer = max(integer, bias_t.integer) + 1
    return FixedType(integer + frac, integer, True)


_FIXED_SPEC = re.compile(r"^\s*(ap_)?(u?fixed)\s*<\s*(\d+)\s*,\s*(-?\d+)\s*(?:,\s*([A-Z_]+)\s*)?(?:,\s*([A-Z_]+)\s*)?>\s*$")


def parse_fixed(spec: str) -> FixedType:
    """``fixed<W,I>`` / ``ufixed<W,I[,RND[,SAT]]>`` / ``ap_fixed<...>`` -> FixedType (ValueError if malformed)."""
    match = _FIXED_SPEC.match(spec)
    if not match:
        raise ValueError(f"'{spec}' is not a fixed-point type; write it like fixed<16,6> or ufixed<8,0,RND,SAT>")
    _, kind, width, integer, rounding, saturation = match.groups()
    width, integer = int(width), int(integer)
    if not 1 <= width <= 64:
        raise ValueError(f"'{spec}': width must be between 1 and 64")
    return FixedType(width, integer, kind == "fixed", rounding or "TRN", saturation or "WRAP")


# Table-based activations: edgec gives hls4ml's tables this many entries (4 BRAM18 at 18 bits;
# UG473: 18 Kib per BRAM18), and hls4ml's nnet_activation.h tabulates tanh on [-4, 4) and sigmoid
# on [-8, 8), indexing with ``int(x * size / span)``. An input on the grid span / size indexes its
# own entry exactly, so quantizing a table activation's input to that grid (and tabulating the
# quantized output) makes the activation exact.
# ELU tabulates exp(x) - 1 on [-8, 0) (``index = x * size / -8``) and passes x >= 0 through, so its
# input keeps the grid of the table and the range the values have.
ACTIVATION_TABLE_SIZE = 4096
TABLE_SPANS = {"Tanh": 8.0, "Sigmoid": 16.0, "Elu": 8.0}
IDENTITY_ABOVE_ZERO = ("Elu",)


def table_input_type(op_type: str, peak: float = 0.0, output_step_exponent: int | None = None) -> FixedType | None:
    """The signed fixed-point type whose grid is the table's index grid and whose range is the
    table's span, for a table activation (None for others). For ELU, which passes positive inputs
    through, the range also holds ``peak`` (the largest input magnitude calibrated), and the grid
    is no finer than half the step of the quantizer after it (``output_step_exponent``): a grid
    coarser than the table's still indexes exact entries (its steps are whole table steps), and the
    index arithmetic is then as narrow as the quantized values (ELU's slope is at most 1, so the
    output moves by at most a quarter of its step)."""
    span = TABLE_SPANS.get(op_type)
    if span is None:
        return None
    step_exponent = int(round(math.log2(span / ACTIVATION_TABLE_SIZE)))
    integer = int(round(math.log2(span)))  # signed ap_fixed<W, I> holds [-2^(I-1), 2^(I-1)) = [-span/2, span/2)
    if op_type in IDENTITY_ABOVE_ZERO:
        # [-span, span) at least, and the calibrated peak
        integer = max(integer + 1, math.ceil(math.log2(max(peak, 1e-30))) + 1 if peak > 0 else 0)
        if output_step_exponent is not None:
            step_exponent = max(step_exponent, output_step_exponent - 1)
    return FixedType(integer - step_exponent, integer, True)


def input_quantizer_type(model) -> FixedType | None:
    """The exact type of a power-of-two, zero-point-0 QONNX quantizer that alone reads the graph
    input: giving the Input layer that type (round half to even, saturating) converts each float
    input once, as the quantizer does, instead of rounding it onto a calibrated grid first."""
    consumers = model.find_consumers(model.graph.input[0].name) or []
    if len(consumers) != 1 or consumers[0].op_type != "Quant":
        return None
    return quant_node_type(model, consumers[0])


def quant_node_type(model, quant) -> FixedType | None:
    """The exact ap_fixed type of a power-of-two, zero-point-0 QONNX Quant node (its rounding and
    saturation included), or None for other quantizers."""
    scale, zeropt, bits = (model.get_initializer(name) for name in quant.input[1:4])
    if scale is None or zeropt is None or bits is None or np.size(scale) != 1 or np.any(zeropt != 0):
        return None
    exponent = float(np.log2(float(np.asarray(scale).reshape(-1)[0])))
    if exponent != round(exponent):
        return None
    attrs = {a.name: a for a in quant.attribute}
    signed = bool(attrs["signed"].i) if "signed" in attrs else True
    narrow = bool(attrs["narrow"].i) if "narrow" in attrs else False
    width = int(np.asarray(bits).reshape(-1)[0])
    mode = attrs["rounding_mode"].s.decode() if "rounding_mode" in attrs else "ROUND"
    rounding = {"ROUND": "RND_CONV", "FLOOR": "TRN", "ROUND_TO_ZERO": "TRN_ZERO"}.get(mode.upper())
    if rounding is None or width < 1:
        return None
    return FixedType(width, width + int(round(exponent)), signed, rounding, "SAT_SYM" if narrow and signed else "SAT")


# ops that only move values: hls4ml makes them views of their input's variable (io_parallel), so the
# layer in front of them cannot be removed from under them
LAYOUT_OPS = ("Reshape", "Flatten", "Transpose", "Identity", "Squeeze", "Unsqueeze")


def droppable_input_quantizer(model):
    """The QONNX ``Quant`` that alone reads the graph input, when the Input can take its exact type
    (``input_quantizer_type``) and the layer hls4ml makes of it can go: it does not write the graph
    output and no view reads it (an io_parallel reshape is a view of its input's variable). The backend removes that layer and the cost model leaves it out."""
    if input_quantizer_type(model) is None:
        return None
    quant = model.find_consumers(model.graph.input[0].name)[0]
    if quant.output[0] in {o.name for o in model.graph.output}:
        return None
    readers = model.find_consumers(quant.output[0]) or []
    if not readers or any(r.op_type in LAYOUT_OPS for r in readers):
        return None
    return quant
