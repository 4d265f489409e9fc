"""Rewrite onnxruntime-quantized models (QDQ and QOperator formats) into QONNX form.

hls4ml and edgec work on float tensors with QONNX ``Quant`` nodes marking where values are
quantized. onnxruntime's quantization tools instead emit integer tensors:

* QDQ format: ``QuantizeLinear -> DequantizeLinear`` pairs around float ops, and constant integer
  weights/biases behind a ``DequantizeLinear``;
* QOperator format: integer ops (``QLinearConv``, ``QLinearMatMul``, ``QGemm``, ``QLinearAdd``...)
  that dequantize their inputs, compute and requantize their output.

This pass tracks, for every integer activation tensor, a float tensor carrying its dequantized
value (``DequantizeLinear(q) = (q - zero_point) * scale``), and rewrites:

* ``QuantizeLinear(x, s, zp)`` -> ``Quant(x, s, zp, bits)`` (domain ``qonnx.custom_op.general``,
  ``rounding_mode="ROUND"``: numpy's half-to-even rounding, as ONNX specifies); a matching
  ``DequantizeLinear`` then just reads the Quant output. A quantizer whose input already lies on
  the same grid (e.g. after a MaxPool or Flatten of a quantized tensor) is an identity and dropped;
* ``DequantizeLinear`` of a constant: a float initializer, or ``Quant(float weights, s, zp, bits)``
  when it feeds a Conv/MatMul/Gemm weight input, so the weight bit width stays visible;
* QOperator ops -> their float op on the dequantized inputs, followed by a ``Quant`` of the output;
  data-movement ops on integer tensors (MaxPool, Flatten, Reshape...) act on the float tensor.

Exactness: ``Quant(x) = s * (clip(round(x/s + zp)) - zp)`` while ONNX computes
``clip(round(x/s) + zp)``. When the zero point only shifts a standard range (uint8 with zp 0,
int8 with zp -128, ...), the Quant gets zero point 0 and the other signedness, and is exactly
``DequantizeLinear(QuantizeLinear(x))``. With any other zero point, the two differ only where
``x/s`` is a tie (odd zero points) or within float32 rounding of one, giving a rare one-step
difference. QOperator ops requantize an integer accumulator, while the rewritten float op rounds
once in float32: again at most a rare one-step difference.

Nodes that cannot be converted (``DynamicQuantizeLinear``, ``MatMulInteger``, unknown contrib
ops, non-constant scales) are kept with their integer inputs, and the support check names them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from onnx import NodeProto, TensorProto, helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_shapes import InferShapes

log = logging.getLogger(__name__)

QUANT_DOMAIN = "qonnx.custom_op.general"
# Integer element types a QuantizeLinear/DequantizeLinear may use: (bit width, signed).
INTEGER_TYPES = {
    TensorProto.INT8: (8, True),
    TensorProto.UINT8: (8, False),
    TensorProto.INT16: (16, True),
    TensorProto.UINT16: (16, False),
    TensorProto.INT4: (4, True),
    TensorProto.UINT4: (4, False),
}
# Constants (biases) may also be int32: they are only dequantized, never requantized.
CONSTANT_TYPES = {**INTEGER_TYPES, TensorProto.INT32: (32, True)}
# Ops that only move or select values: on an integer tensor they commute with dequantization
# (a positive scale keeps the order, so MaxPool too).
MOVEMENT_OPS = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity")
# com.microsoft ops of the form (X, X_scale, X_zero_point, Y_scale, Y_zero_point) -> float op.
UNARY_QLINEAR = {
    "QLinearSoftmax": "Softmax",
    "QLinearSigmoid": "Sigmoid",
    "QLinearLeakyRelu": "LeakyRelu",
    "QLinearGlobalAveragePool": "GlobalAveragePool",
    "QLinearAveragePool": "AveragePool",
}
BINARY_QLINEAR = {"QLinearAdd": "Add", "QLinearMul": "Mul"}
QOPERATOR_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", *UNARY_QLINEAR, *BINARY_QLINEAR)
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", *QOPERATOR_OPS)
WEIGHT_CONSUMERS = ("Conv", "MatMul", "Gemm")


@dataclass
class Grid:
    """Quantization parameters of an integer tensor, as ONNX states them."""

    scale: np.ndarray  # float32, scalar or 1-D along ``axis``
    zeropt: np.ndarray  # int64, same shape as scale
    bits: int
    signed: bool
    axis: int

    def same_as(self, other: Grid) -> bool:
        """True if both grids quantize identically (same values, types and axis when per-axis)."""
        if (self.bits, self.signed) != (other.bits, other.signed):
            return False
        if self.scale.size > 1 and self.axis != other.axis:
            return False
        return np.array_equal(self.scale, other.scale) and np.array_equal(self.zeropt, other.zeropt)

    def same_values(self, other: Grid) -> bool:
        """True if dequantizing an integer with either grid gives the same value (scale, zero point
        and axis agree; the integer range may differ, e.g. after a Clip narrowed it)."""
        if self.scale.size > 1 and self.axis != other.axis:
            return False
        return np.array_equal(self.scale, other.scale) and np.array_equal(self.zeropt, other.zeropt)

    def quant_params(self, rank: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Scale, zero point and signedness for a QONNX Quant on a tensor of ``rank`` dimensions.

        A zero point that only shifts a standard range becomes 0 with the other signedness, so
        Quant rounds ``x/s`` itself, as QuantizeLinear does (exact, and plain for hls4ml).
        """
        scale = self.scale.astype(np.float32)
        zeropt = self.zeropt.astype(np.float64)
        signed = self.signed
        if np.all(zeropt == zeropt.reshape(-1)[0]):
            z = int(zeropt.reshape(-1)[0])
            lo, hi = _int_range(self.bits, self.signed)
            if (lo - z, hi - z) == _int_range(self.bits, False):
                zeropt, signed = np.zeros_like(zeropt), False
            elif (lo - z, hi - z) == _int_range(self.bits, True):
                zeropt, signed = np.zeros_like(zeropt), True
        if scale.size > 1 and rank > 0:
            shape = [1] * rank
            shape[self.axis % rank] = scale.size
            scale = scale.reshape(shape)
            zeropt = zeropt.reshape(shape)
        elif scale.size == 1:
            scale = scale.reshape(())
        if np.all(zeropt == zeropt.reshape(-1)[0]):  # one zero point (usually 0): a scalar
            zeropt = np.asarray(zeropt.reshape(-1)[0])
        return scale, zeropt.astype(np.float32), signed

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """``(q - zero_point) * scale`` in float32, as onnxruntime's DequantizeLinear computes it."""
        q = np.asarray(q).astype(np.int64)
        scale, zeropt = self.scale.astype(np.float32), self.zeropt
        if scale.size > 1 and q.ndim > 0:
            shape = [1] * q.ndim
            shape[self.axis % q.ndim] = scale.size
            scale, zeropt = scale.reshape(shape), zeropt.reshape(shape)
        return ((q - zeropt).astype(np.float32) * scale).astype(np.float32)


def _feeds_weight_input(model: ModelWrapper, tensor: str) -> bool:
    """Whether ``tensor`` is the weight operand of a Conv/MatMul/Gemm, directly or through the
    Transpose/Reshape exporters put between (Brevitas QCDQ: ``DequantizeLinear -> Transpose -> MatMul``)."""
    for _ in range(4):
        consumers = model.find_consumers(tensor) or []
        if any(c.op_type in WEIGHT_CONSUMERS and len(c.input) > 1 and c.input[1] == tensor for c in consumers):
            return True
        if len(consumers) != 1 or consumers[0].op_type not in ("Transpose", "Reshape", "Flatten", "Unsqueeze"):
            return False
        tensor = consumers[0].output[0]
    return False


def _narrowest(grid: Grid, raw: np.ndarray) -> Grid:
    """The grid of constant integers ``raw`` with the fewest bits that hold them (Brevitas QCDQ stores
    4-bit weights as int8 clipped to [-7, 7]): a Quant of the float weights at that width is exact."""
    q = np.asarray(raw).astype(np.int64)
    if q.size == 0 or np.any(grid.zeropt != 0):
        return grid
    for bits in range(2, grid.bits):
        lo, hi = _int_range(bits, grid.signed)
        if q.min() >= lo and q.max() <= hi:
            return Grid(grid.scale, grid.zeropt, bits, grid.signed, grid.axis)
    return grid


def _fold_constant_clips(model: ModelWrapper) -> set[str]:
    """Clip of a constant integer tensor (Brevitas QCDQ weights: ``Clip(int8 W) -> DequantizeLinear``)
    evaluated into the constant, keeping its integer type. Returns the clipped constants' names."""
    folded: set[str] = set()
    for node in list(model.graph.node):
        if node.op_type != "Clip" or not node.input:
            continue
        raw = model.get_initializer(node.input[0])
        if raw is None or not np.issubdtype(np.asarray(raw).dtype, np.integer):
            continue
        bounds = [model.get_initializer(name) if name else None for name in list(node.input[1:3]) + [""] * (3 - len(node.input))]
        if any(name and bound is None for name, bound in zip(list(node.input[1:3]), bounds)):
            continue
        attrs = _attrs(node)
        lo = bounds[0] if bounds[0] is not None else attrs.get("min")
        hi = bounds[1] if bounds[1] is not None else attrs.get("max")
        clipped = np.asarray(raw)
        if lo is not None:
            clipped = np.maximum(clipped, np.asarray(lo).astype(clipped.dtype))
        if hi is not None:
            clipped = np.minimum(clipped, np.asarray(hi).astype(clipped.dtype))
        model.set_initializer(node.output[0], clipped.astype(np.asarray(raw).dtype))
        model.graph.node.remove(node)
        folded.add(node.output[0])
    return folded


def _int_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _attrs(node: NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _elem_type(model: ModelWrapper, name: str) -> int | None:
    """The element type of a tensor (initializer or value info), or None if unknown."""
    for init in model.graph.initializer:
        if init.name == name:
            return init.data_type
    vi = model.get_tensor_valueinfo(name)
    if vi is not None and vi.type.tensor_type.elem_type:
        return vi.type.tensor_type.elem_type
    return None


class ConvertQDQToQONNX(Transformation):
    """Rewrite QuantizeLinear/DequantizeLinear pairs and QOperator ops into QONNX Quant form.

    ``records`` lists each conversion: ``{"kind": ..., "node": ..., ...}`` with kinds
    ``quantizer`` (QuantizeLinear -> Quant), ``identity-quantizer`` (dropped: input already on its
    grid), ``pair`` (DequantizeLinear reading a converted quantizer), ``weight`` (constant
    DequantizeLinear -> Quant of float weights), ``constant`` (-> float initializer),
    ``qoperator`` (QLinear op -> float op + Quant), ``movement`` (op moved to the float tensor),
    ``output`` (an integer graph output now carries its dequantized float value) and ``kept``
    (left as it was, with the reason).
    """

    def __init__(self, clipped: set[str] | None = None) -> None:
        """``clipped``: constant integer tensors a Clip narrowed (their weight quantizers take the
        fewest bits that hold them)."""
        super().__init__()
        self.records: list[dict] = []
        self._clipped = set(clipped or ())

    # -- helpers -------------------------------------------------------------------------------

    def _grid(
        self, model: ModelWrapper, node: NodeProto, scale_in: str, zp_in: str | None, int_tensor: str | None, axis: int = 1
    ) -> Grid | None:
        """The grid of a (De)QuantizeLinear-style operand, or None if not constant/not integer."""
        scale = model.get_initializer(scale_in) if scale_in else None
        if scale is None:
            return None
        elem = None
        zeropt = None
        if zp_in:
            zeropt = model.get_initializer(zp_in)
            if zeropt is None:
                return None
            elem = _elem_type(model, zp_in)
        if elem is None and int_tensor is not None:
            elem = _elem_type(model, int_tensor)
        if elem is None:
            elem = _attrs(node).get("output_dtype", TensorProto.UINT8) or TensorProto.UINT8
        constant = int_tensor is not None and model.get_initializer(int_tensor) is not None
        if elem not in (CONSTANT_TYPES if constant else INTEGER_TYPES):
            return None
        bits, signed = CONSTANT_TYPES[elem]
        scale = np.asarray(scale, dtype=np.float32)
        zeropt = np.zeros(scale.shape, dtype=np.int64) if zeropt is None else np.asarray(zeropt).astype(np.int64)
        if zeropt.shape != scale.shape:
            if zeropt.size != 1:
                return None
            zeropt = np.full(scale.shape, int(zeropt.reshape(-1)[0]), dtype=np.int64)
        if scale.ndim > 1 or (scale.size > 1 and scale.ndim != 1) or np.any(scale <= 0):
            return None
        if _attrs(node).get("block_size", 0):
            return None
        return Grid(scale, zeropt, bits, signed, axis)

    def _const_init(self, model: ModelWrapper, name: str, value: np.ndarray) -> str:
        new = self._fresh(model, name)
        model.set_initializer(new, np.asarray(value, dtype=np.float32))
        return new

    def _fresh(self, model: ModelWrapper, base: str) -> str:
        name = base
        index = 0
        while name in self._names:
            index += 1
            name = f"{base}_{index}"
        self._names.add(name)
        return name

    def _quant_node(self, model: ModelWrapper, source: str, out: str, grid: Grid, rank: int, name: str) -> NodeProto:
        scale, zeropt, signed = grid.quant_params(rank)
        s_name = self._const_init(model, f"{out}_scale", scale)
        z_name = self._const_init(model, f"{out}_zeropt", zeropt)
        b_name = self._const_init(model, f"{out}_bitwidth", np.array(grid.bits, dtype=np.float32))
        quant = helper.make_node(
            "Quant",
            [source, s_name, z_name, b_name],
            [out],
            name=name,
            domain=QUANT_DOMAIN,
            signed=int(signed),
            narrow=0,
            rounding_mode="ROUND",
        )
        self._quant_nodes[out] = quant
        return quant

    def _rank(self, model: ModelWrapper, tensor: str) -> int:
        shape = model.get_tensor_shape(tensor)
        return len(shape) if shape is not None else 0

    def _resolve(self, name: str) -> str:
        while name in self._alias:
            name = self._alias[name]
        return name

    def _float_operand(self, model: ModelWrapper, name: str, grid: Grid | None, weight: bool, emit: list[NodeProto]) -> str | None:
        """The float tensor holding ``DequantizeLinear(name)`` on ``grid``, or None if unknown."""
        if grid is None:
            return None
        if name in self._ints:
            floated, known = self._ints[name]
            return floated if known.same_values(grid) else None
        raw = model.get_initializer(name)
        if raw is None:
            return None
        values = grid.dequantize(raw)
        if not weight:
            return self._const_init(model, f"{name}_float", values)
        if name in self._clipped:  # QCDQ weights: the Clip said how many bits they use
            grid = _narrowest(grid, raw)
        float_w = self._const_init(model, f"{name}_float", values)
        out = self._fresh(model, f"{name}_quant")
        emit.append(self._quant_node(model, float_w, out, grid, values.ndim, name=self._fresh(model, f"{name}_Quant")))
        return out

    def _requantize(
        self, model: ModelWrapper, node: NodeProto, float_op: NodeProto, y: str, grid: Grid | None, emit: list[NodeProto]
    ) -> None:
        """Emit ``float_op`` (output already named) and the Quant of its output as integer tensor ``y``."""
        emit.append(float_op)
        raw_out = float_op.output[0]
        if grid is None:  # float output (QGemm without y_scale)
            self._alias[y] = raw_out
            return
        out = self._fresh(model, f"{y}_quant")
        emit.append(
            self._quant_node(model, raw_out, out, grid, self._rank(model, y), name=self._fresh(model, f"{node.name or node.op_type}_Quant"))
        )
        self._ints[y] = (out, grid)
        self._on_grid[out] = grid

    # -- conversions ---------------------------------------------------------------------------

    def _convert(self, model: ModelWrapper, node: NodeProto, emit: list[NodeProto]) -> str | None:
        """Convert one node, appending new nodes to ``emit``; return None or why it was kept."""
        op = node.op_type
        ins = list(node.input) + [""] * 9
        axis = int(_attrs(node).get("axis", 1))
        if op == "QuantizeLinear":
            grid = self._grid(model, node, ins[1], ins[2] or None, None, axis)
            if grid is None:
                return "non-constant scale/zero point or unsupported integer type"
            source = self._resolve(ins[0])
            if source in self._ints:
                return "input is not a float tensor"
            known = self._on_grid.get(source)
            if known is not None and known.same_as(grid):
                self._ints[node.output[0]] = (source, grid)
                self.records.append({"kind": "identity-quantizer", "node": node.name, "tensor": node.output[0]})
                return None
            out = self._fresh(model, f"{node.output[0]}_float")
            emit.append(
                self._quant_node(
                    model,
                    source,
                    out,
                    grid,
                    self._rank(model, node.input[0]),
                    name=self._fresh(model, node.name or f"{node.output[0]}_Quant"),
                )
            )
            self._ints[node.output[0]] = (out, grid)
            self._on_grid[out] = grid
            self.records.append(
                {"kind": "quantizer", "node": node.name, "tensor": node.output[0], "quant": out, "bits": grid.bits, "signed": grid.signed}
            )
            return None
        if op == "DequantizeLinear":
            grid = self._grid(model, node, ins[1], ins[2] or None, ins[0], axis)
            if grid is None:
                return "non-constant scale/zero point or unsupported integer type"
            if ins[0] in self._ints:
                floated = self._float_operand(model, ins[0], grid, False, emit)
                if floated is None:
                    return "dequantizes with other parameters than its quantizer"
                self._alias[node.output[0]] = floated
                self.records.append({"kind": "pair", "node": node.name, "tensor": ins[0]})
                return None
            if model.get_initializer(ins[0]) is None:
                return "input is neither constant nor produced by a converted quantizer"
            weight = grid.bits <= 16 and _feeds_weight_input(model, node.output[0])
            floated = self._float_operand(model, ins[0], grid, weight, emit)
            self._alias[node.output[0]] = floated
            self.records.append({"kind": "weight" if weight else "constant", "node": node.name, "tensor": ins[0], "bits": grid.bits})
            return None
        if op == "Clip" and ins[0] in self._ints:
            return self._convert_integer_clip(model, node, ins)
        if op in MOVEMENT_OPS and ins[0] in self._ints:
            floated, grid = self._ints[ins[0]]
            out = self._fresh(model, f"{node.output[0]}_float")
            moved = helper.make_node(op, [floated, *node.input[1:]], [out], name=self._fresh(model, f"{node.name or op}_float"))
            moved.attribute.extend(node.attribute)
            emit.append(moved)
            self._ints[node.output[0]] = (out, grid)
            self._on_grid[out] = grid
            self.records.append({"kind": "movement", "node": node.name, "op": op})
            return None
        if op in QOPERATOR_OPS:
            why = self._convert_qoperator(model, node, ins, emit)
            if why is None:
                self.records.append({"kind": "qoperator", "node": node.name, "op": op})
            return why
        return "not a quantization op"

    def _convert_integer_clip(self, model: ModelWrapper, node: NodeProto, ins: list[str]) -> str | None:
        """QuantizeLinear -> Clip -> DequantizeLinear (Brevitas QCDQ, and qonnx's QuantToQCDQ) writes a
        quantizer narrower than its integer type: the clip range is folded into the Quant's bit width
        and narrow flag when it is one (a symmetric or narrow signed range, or [0, 2^b - 1])."""
        floated, grid = self._ints[ins[0]]
        quant = self._quant_nodes.get(floated)
        if quant is None or len(model.find_consumers(ins[0]) or []) != 1:
            return "clips a quantized tensor that other nodes read too"
        attrs = _attrs(node)
        lo = model.get_initializer(ins[1]) if ins[1] else attrs.get("min")
        hi = model.get_initializer(ins[2]) if ins[2] else attrs.get("max")
        if lo is None or hi is None or np.size(lo) != 1 or np.size(hi) != 1 or np.any(grid.zeropt != 0):
            return "clip bounds are not constant scalars on a zero-point-0 grid"
        lo, hi = float(np.asarray(lo).reshape(-1)[0]), float(np.asarray(hi).reshape(-1)[0])
        if lo != round(lo) or hi != round(hi):
            return "clip bounds are not integers"
        lo, hi = int(lo), int(hi)
        full_lo, full_hi = _int_range(grid.bits, grid.signed)
        lo, hi = max(lo, full_lo), min(hi, full_hi)
        narrowed = None
        for bits in range(1, grid.bits + 1):
            for narrow in (0, 1):
                for signed in (True, False):
                    b_lo, b_hi = _int_range(bits, signed)
                    b_lo, b_hi = (b_lo + narrow, b_hi) if signed else (b_lo, b_hi - narrow)
                    if (b_lo, b_hi) == (lo, hi) and narrowed is None:
                        narrowed = (bits, signed, narrow)
        if narrowed is None:
            return f"clip range [{lo}, {hi}] is not a b-bit integer range"
        bits, signed, narrow = narrowed
        model.set_initializer(quant.input[3], np.array(bits, dtype=np.float32))
        for attr in quant.attribute:
            if attr.name == "signed":
                attr.i = int(signed)
            elif attr.name == "narrow":
                attr.i = int(narrow)
        narrowed_grid = Grid(grid.scale, grid.zeropt, bits, signed, grid.axis)
        self._ints[node.output[0]] = (floated, narrowed_grid)
        self._on_grid[floated] = narrowed_grid
        for record in self.records:
            if record.get("quant") == floated:
                record.update({"bits": bits, "signed": signed, "narrow": bool(narrow)})
        self.records.append({"kind": "clip", "node": node.name, "tensor": node.output[0], "bits": bits})
        return None

    def _convert_qoperator(self, model: ModelWrapper, node: NodeProto, ins: list[str], emit: list[NodeProto]) -> str | None:
        op = node.op_type
        attrs = _attrs(node)
        y = node.output[0]
        local: list[NodeProto] = []
        raw_out = self._fresh(model, f"{y}_raw")
        name = self._fresh(model, f"{node.name or op}_float")
        if op in ("QLinearConv", "QLinearMatMul", "QGemm"):
            x_grid = self._grid(model, node, ins[1], ins[2] or None, ins[0])
            w_rank = self._rank(model, ins[3])
            trans_b = int(attrs.get("transB", 0))
            w_axis = {"QLinearConv": 0, "QLinearMatMul": w_rank - 1 if w_rank else 1, "QGemm": 0 if trans_b else 1}[op]
            w_grid = self._grid(model, node, ins[4], ins[5] or None, ins[3], w_axis)
            if op == "QGemm":
                y_grid = self._grid(model, node, ins[7], ins[8] or None, None) if ins[7] else None
                bias_in = ins[6]
            else:
                y_grid = self._grid(model, node, ins[6], ins[7] or None, None)
                bias_in = ins[8] if op == "QLinearConv" else ""
            if x_grid is None or w_grid is None or (y_grid is None and op != "QGemm") or (op == "QGemm" and ins[7] and y_grid is None):
                return "non-constant scale/zero point or unsupported integer type"
            if x_grid.scale.size != 1:
                return "per-axis input quantization"
            x_f = self._float_operand(model, ins[0], x_grid, False, local)
            w_f = self._float_operand(model, ins[3], w_grid, True, local)
            if x_f is None or w_f is None:
                return "inputs are not produced by converted quantizers"
            inputs = [x_f, w_f]
            if bias_in:
                bias = model.get_initializer(bias_in)
                if bias is None:
                    return "non-constant bias"
                alpha = np.float32(attrs.get("alpha", 1.0)) if op == "QGemm" else np.float32(1.0)
                bias_scale = (x_grid.scale.astype(np.float32) * w_grid.scale.astype(np.float32) * alpha).astype(np.float32)
                values = (np.asarray(bias).astype(np.int64).astype(np.float32) * bias_scale).astype(np.float32)
                inputs.append(self._const_init(model, f"{bias_in}_float", values))
            if op == "QLinearConv":
                float_op = helper.make_node("Conv", inputs, [raw_out], name=name)
                float_op.attribute.extend(node.attribute)
            elif op == "QLinearMatMul":
                float_op = helper.make_node("MatMul", inputs, [raw_out], name=name)
            else:
                kept = {k: v for k, v in attrs.items() if k in ("alpha", "transA", "transB")}
                float_op = helper.make_node("Gemm", inputs, [raw_out], name=name, beta=1.0, **kept)
            emit.extend(local)
            self._requantize(model, node, float_op, y, y_grid, emit)
            return None
        if op in BINARY_QLINEAR:
            a_grid = self._grid(model, node, ins[1], ins[2] or None, ins[0])
            b_grid = self._grid(model, node, ins[4], ins[5] or None, ins[3])
            y_grid = self._grid(model, node, ins[6], ins[7] or None, None)
            if a_grid is None or b_grid is None or y_grid is None:
                return "non-constant scale/zero point or unsupported integer type"
            a_f = self._float_operand(model, ins[0], a_grid, False, local)
            b_f = self._float_operand(model, ins[3], b_grid, False, local)
            if a_f is None or b_f is None:
                return "inputs are not produced by converted quantizers"
            emit.extend(local)
            self._requantize(model, node, helper.make_node(BINARY_QLINEAR[op], [a_f, b_f], [raw_out], name=name), y, y_grid, emit)
            return None
        # unary com.microsoft ops: (X, X_scale, X_zero_point, Y_scale, Y_zero_point)
        if int(attrs.pop("channels_last", 0)):
            return "channels-last layout"
        x_grid = self._grid(model, node, ins[1], ins[2] or None, ins[0])
        y_grid = self._grid(model, node, ins[3], ins[4] or None, None)
        if x_grid is None or y_grid is None:
            return "non-constant scale/zero point or unsupported integer type"
        if op == "QLinearSoftmax":
            rank = self._rank(model, ins[0])
            softmax_axis = int(attrs.get("axis", -1 if int(attrs.get("opset", 13)) >= 13 else 1))
            if int(attrs.pop("opset", 13)) < 13 and softmax_axis % max(rank, 1) != rank - 1:
                return "opset < 13 Softmax over several axes"
            attrs["axis"] = softmax_axis
        x_f = self._float_operand(model, ins[0], x_grid, False, local)
        if x_f is None:
            return "input is not produced by a converted quantizer"
        emit.extend(local)
        self._requantize(model, node, helper.make_node(UNARY_QLINEAR[op], [x_f], [raw_out], name=name, **attrs), y, y_grid, emit)
        return None

    # -- driver --------------------------------------------------------------------------------

    def apply(self, model: ModelWrapper):
        graph = model.graph
        self._ints: dict[str, tuple[str, Grid]] = {}  # integer tensor -> (float tensor with its dequantized value, grid)
        self._on_grid: dict[str, Grid] = {}  # float tensor -> grid it lies on exactly
        self._alias: dict[str, str] = {}  # float tensor -> float tensor now carrying the same value
        self._quant_nodes: dict[str, NodeProto] = {}  # output -> Quant node this pass made
        self._names = {t for n in graph.node for t in list(n.input) + list(n.output)}
        self._names |= {i.name for i in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
        new_nodes: list[NodeProto] = []
        for node in list(graph.node):
            emit: list[NodeProto] = []
            handled = node.op_type in QUANTIZED_OPS or (node.op_type in (*MOVEMENT_OPS, "Clip") and node.input[0] in self._ints)
            why = self._convert(model, node, emit) if handled else "not a quantization op"
            if why is not None and node.op_type in QUANTIZED_OPS:
                self.records.append({"kind": "kept", "node": node.name, "op": node.op_type, "reason": why})
            elif why is None:
                pass
            elif node.op_type in MOVEMENT_OPS:
                source = self._resolve(node.input[0])
                if source in self._on_grid:  # a float reshape/pool of a quantized tensor stays on its grid
                    self._on_grid[node.output[0]] = self._on_grid[source]
            new_nodes.append(node)
            new_nodes.extend(emit)
        for node in new_nodes:
            for i, name in enumerate(node.input):
                if name in self._alias:
                    node.input[i] = self._resolve(name)
        outputs = self._retarget_outputs(model)
        del graph.node[:]
        graph.node.extend(new_nodes)
        self._remove_dead(model)
        produced = {o for n in graph.node for o in n.output}
        for record in [r for r in self.records if r["kind"] == "quantizer" and r["quant"] not in produced]:
            self.records.remove(record)  # its consumers were kept in integer form: the Quant was unused
        for old, new in outputs:
            self._rename(model, new, old)
        self._tidy(model)
        return model, False

    def _retarget_outputs(self, model: ModelWrapper) -> list[tuple[str, str]]:
        """Point graph outputs at their float tensors; return (output name, float tensor) pairs."""
        pairs = []
        for vi in model.graph.output:
            name = vi.name
            if name in self._ints:
                floated = self._ints[name][0]
                was = vi.type.tensor_type.elem_type
                self.records.append({"kind": "output", "tensor": name, "was": TensorProto.DataType.Name(was) if was else "integer"})
            elif name in self._alias:
                floated = self._resolve(name)
            else:
                continue
            vi.name = floated
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
            pairs.append((name, floated))
        return pairs

    def _remove_dead(self, model: ModelWrapper) -> None:
        graph = model.graph
        outputs = {o.name for o in graph.output}
        while True:
            used = {i for n in graph.node for i in n.input} | outputs
            dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
            if not dead:
                break
            for node in dead:
                graph.node.remove(node)

    def _rename(self, model: ModelWrapper, old: str, new: str) -> None:
        """Rename tensor ``old`` to ``new`` (the graph output's original name) if ``new`` is free."""
        graph = model.graph
        if old == new or any(new in n.output for n in graph.node):
            return
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
            for i, name in enumerate(node.output):
                if name == old:
                    node.output[i] = new
        for vi in graph.output:
            if vi.name == old:
                vi.name = new

    def _tidy(self, model: ModelWrapper) -> None:
        """Drop unused initializers and stale value infos; fix the opset imports."""
        graph = model.graph
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        for init in list(graph.initializer):
            if init.name not in used:
                graph.initializer.remove(init)
        produced = {o for n in graph.node for o in n.output}
        del_vi = [vi for vi in graph.value_info if vi.name not in produced]
        for vi in del_vi:
            graph.value_info.remove(vi)
        if model.model.ir_version < 4:  # IR 3 shape inference ignores initializers that are not graph inputs
            model.model.ir_version = 7
        domains = {n.domain for n in graph.node}
        if QUANT_DOMAIN in domains and not any(o.domain == QUANT_DOMAIN for o in model.model.opset_import):
            model.model.opset_import.append(helper.make_opsetid(QUANT_DOMAIN, 1))
        for imp in list(model.model.opset_import):
            if imp.domain == "com.microsoft" and "com.microsoft" not in domains:
                model.model.opset_import.remove(imp)


def has_quantized_ops(model: ModelWrapper) -> bool:
    """True if the graph holds QuantizeLinear/DequantizeLinear or QOperator nodes."""
    return any(n.op_type in QUANTIZED_OPS for n in model.graph.node)


def summarize(records: list[dict]) -> list[str]:
    """Load notes describing a :class:`ConvertQDQToQONNX` run."""
    count = {
        kind: sum(1 for r in records if r["kind"] == kind)
        for kind in ("quantizer", "identity-quantizer", "pair", "weight", "constant", "qoperator")
    }
    qops = sorted({r["op"] for r in records if r["kind"] == "qoperator"})
    notes = []
    if count["qoperator"]:
        notes.append(
            f"onnxruntime QOperator model: {count['qoperator']} integer op(s) ({', '.join(qops)}) rewritten as float ops on dequantized "
            "inputs with a QONNX Quant on their output"
        )
    quantizers = count["quantizer"] + count["identity-quantizer"]
    if quantizers or count["pair"]:
        notes.append(
            ("" if count["qoperator"] else "QDQ model (QuantizeLinear/DequantizeLinear pairs, as onnxruntime and Brevitas write them): ")
            + f"{quantizers} QuantizeLinear/{count['pair']} DequantizeLinear node(s) converted to "
            f"{count['quantizer']} QONNX Quant node(s)"
            + (
                f" ({count['identity-quantizer']} requantizing an already quantized tensor dropped as identities)"
                if count["identity-quantizer"]
                else ""
            )
        )
    if count["weight"] or count["constant"]:
        notes.append(
            f"{count['weight'] + count['constant']} constant DequantizeLinear(s) folded: {count['weight']} weight tensor(s) kept as QONNX Quant "
            f"of their float values, {count['constant']} to float constants"
        )
    clips = [r for r in records if r["kind"] == "clip"]
    if clips:
        notes.append(
            f"{len(clips)} Clip(s) between QuantizeLinear and DequantizeLinear (QCDQ) folded into their quantizer's bit width "
            f"({', '.join(sorted({str(r['bits']) + '-bit' for r in clips}))})"
        )
    for r in records:
        if r["kind"] == "output":
            notes.append(f"output '{r['tensor']}' was {r['was']}: it is now the dequantized float value")
    kept = [r for r in records if r["kind"] == "kept"]
    if kept:
        notes.append(
            "quantization op(s) left unconverted: " + "; ".join(f"{r['node'] or r['op']} ({r['op']}: {r['reason']})" for r in kept)
        )
    return notes


def _conv_integer_as_float(model: ModelWrapper) -> int:
    """``ConvInteger(x_q, W_q, x_zp, w_zp)`` (onnxruntime's dynamic quantization of convolutions) as
    ``Conv(float(x_q) - x_zp, float(W_q - w_zp))``: the same integer sums, in float32 (exact below
    2^24), which the CPU backend (TVM has no ConvInteger) and hls4ml both lower. The int32 result's
    consumer (a Cast to float) reads a float, as before. Returns how many were rewritten."""
    rewritten = 0
    for node in list(model.graph.node):
        if node.op_type != "ConvInteger":
            continue
        weight = model.get_initializer(node.input[1])
        if weight is None:
            continue
        ins = list(node.input) + [""] * (4 - len(node.input))
        w_zp = model.get_initializer(ins[3]) if ins[3] else np.zeros(1)
        if w_zp is None:
            continue
        w_zp = np.asarray(w_zp, dtype=np.float32)
        if w_zp.size > 1:
            w_zp = w_zp.reshape(-1, *([1] * (weight.ndim - 1)))
        centered = (np.asarray(weight, dtype=np.float32) - w_zp).astype(np.float32)
        w_name = model.make_new_valueinfo_name()
        model.set_initializer(w_name, centered)
        x_float = model.make_new_valueinfo_name()
        new_nodes = [helper.make_node("Cast", [ins[0]], [x_float], name=f"{node.name}_x_float", to=TensorProto.FLOAT)]
        source = x_float
        if ins[2]:
            zp_float, shifted = model.make_new_valueinfo_name(), model.make_new_valueinfo_name()
            new_nodes += [
                helper.make_node("Cast", [ins[2]], [zp_float], name=f"{node.name}_zp_float", to=TensorProto.FLOAT),
                helper.make_node("Sub", [x_float, zp_float], [shifted], name=f"{node.name}_center"),
            ]
            source = shifted
        conv = helper.make_node("Conv", [source, w_name], list(node.output), name=node.name)
        conv.attribute.extend(node.attribute)
        new_nodes.append(conv)
        index = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        for offset, new in enumerate(new_nodes):
            model.graph.node.insert(index + offset, new)
        for vi in list(model.graph.value_info):
            if vi.name in node.output:
                model.graph.value_info.remove(vi)
        rewritten += 1
    return rewritten


def convert_quantized_onnx(model: ModelWrapper, notes: list[str]) -> ModelWrapper:
    """Load hook: convert an onnxruntime QDQ/QOperator model to QONNX form, adding notes."""
    if not has_quantized_ops(model):
        return model
    if _conv_integer_as_float(model):
        notes.append("ConvInteger (onnxruntime dynamic quantization) computed as a float Conv of the centered integers (same sums)")
        model = model.transform(InferShapes())
    transform = ConvertQDQToQONNX(clipped=_fold_constant_clips(model))
    model = model.transform(transform)
    model = model.transform(InferShapes())
    notes.extend(summarize(transform.records))
    log.debug("QDQ/QOperator conversion: %s", transform.records)
    return model
