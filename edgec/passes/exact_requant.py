"""Exact lowering of `quantized layer -> (bias/BatchNorm/affine) -> Quant|BipolarQuant` chains.

hls4ml's fused BatchNorm+sign is wrong and float BatchNorm parameters are not representable in
fixed point, so low-bit networks drift from the reference. This pass proves exactness instead:

1. The layer's inputs come from a quantizer with a power-of-two scale and its weights from a
   constant quantizer, so every output channel's accumulator is an integer in a known range.
2. The reference chain (the model's own BatchNorm/affine ops and quantizer, executed by qonnx) is
   evaluated on *every* integer in that range, giving the exact output level for each one.
3. A linear program finds, per channel, the affine map ``a*acc + b`` with the widest margin to every
   rounding boundary; ``a`` and ``b`` are then rounded to the fewest fractional bits that still
   reproduce the level table exactly (checked in integer arithmetic).
4. The chain is replaced by ``MatMul/Conv(W') -> bias -> quantizer`` whose weights and bias lie on a
   power-of-two grid, so hls4ml's fixed-point arithmetic computes it without error.

This plays the role of FINN's integer thresholds, in a form hls4ml can lower.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import qonnx.core.onnx_exec as oxe
from onnx import TensorProto, helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.general.quant import quant as qonnx_quant
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_shapes import InferShapes

from edgec.passes.fold_affine import linear_channel_info
from edgec.passes.graph_utils import is_power_of_two, remove_nodes, single_consumer

log = logging.getLogger(__name__)

# Elementwise ops the chain may hold: evaluated exactly as the model computes them, so anything
# monotone per channel works (the LP below rejects a chain that is not an affine step function).
CHAIN_OPS = ("Add", "Sub", "Mul", "Div", "BatchNormalization", "Relu")
GRID_PRESERVING_OPS = ("MaxPool", "Reshape", "Flatten", "Transpose")
EXACT_MARK = "edgec:exact-requantized"  # in the layer's doc_string: its weights may be wide but exact
MAX_TABLE_ROWS = 1 << 20  # enumerate at most ~1M accumulator values per layer
MAX_FRACTION_BITS = 30


def _quant_params(model: ModelWrapper, node) -> dict | None:
    """Constant parameters of a Quant/BipolarQuant node, or None if any is not constant."""
    if node.op_type == "BipolarQuant":
        scale = model.get_initializer(node.input[1])
        if scale is None:
            return None
        return {"kind": "bipolar", "scale": np.asarray(scale, dtype=np.float64)}
    if node.op_type != "Quant":
        return None
    values = [model.get_initializer(i) for i in node.input[1:4]]
    if any(v is None for v in values):
        return None
    scale, zeropt, bits = (np.asarray(v, dtype=np.float64) for v in values)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    rounding = attrs.get("rounding_mode", b"ROUND")
    rounding = rounding.decode() if isinstance(rounding, bytes) else rounding
    return {
        "kind": "int",
        "scale": scale,
        "zeropt": zeropt,
        "bits": int(bits.reshape(-1)[0]),
        "signed": bool(attrs.get("signed", 1)),
        "narrow": bool(attrs.get("narrow", 0)),
        "rounding": rounding.upper(),
    }


def _level_range(p: dict) -> tuple[int, int]:
    """Smallest and largest integer level a quantizer produces."""
    if p["kind"] == "bipolar":
        return -1, 1
    bits, signed, narrow = p["bits"], p["signed"], p["narrow"]
    if signed:
        lo = -(2 ** (bits - 1)) + (1 if narrow else 0)
        hi = 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1 - (1 if narrow else 0)
    return lo, hi


def _scalar_po2(scale: np.ndarray) -> float | None:
    flat = np.unique(scale.reshape(-1))
    if flat.size == 1 and is_power_of_two(flat[0]):
        return float(flat[0])
    return None


def _weight_integers(model: ModelWrapper, weight_tensor: str):
    """(integer weights, per-element scale) for a weight produced by a constant quantizer node."""
    producer = model.find_producer(weight_tensor)
    if producer is None or producer.op_type not in ("Quant", "BipolarQuant"):
        return None
    if len(model.find_consumers(weight_tensor) or []) != 1:
        return None  # shared weights: rescaling them for one layer would change the other
    raw = model.get_initializer(producer.input[0])
    p = _quant_params(model, producer)
    if raw is None or p is None:
        return None
    raw = raw.astype(np.float64)
    if p["kind"] == "bipolar":
        ints = np.where(raw >= 0, 1.0, -1.0)
        scale = np.broadcast_to(p["scale"], raw.shape)
    else:
        if np.any(p["zeropt"] != 0):
            return None
        q = qonnx_quant(raw, p["scale"], p["zeropt"], np.asarray(p["bits"], dtype=np.float64), p["signed"], p["narrow"], p["rounding"])
        scale = np.broadcast_to(p["scale"], raw.shape)
        ints = np.round(q / scale)
    return ints, np.asarray(scale, dtype=np.float64), producer


def _chain_model(model: ModelWrapper, chain: list, quant_node, in_tensor: str, rows: int, shape_tail: list[int]):
    """A standalone ONNX model holding just the chain and the quantizer, batch = ``rows``."""
    nodes = [onnx.NodeProto() for _ in chain + [quant_node]]
    inits = []
    for copy, orig in zip(nodes, chain + [quant_node]):
        copy.CopyFrom(orig)
        for name in orig.input:
            value = model.get_initializer(name)
            if value is not None and name not in {i.name for i in inits}:
                inits.append(onnx.numpy_helper.from_array(value, name))
    out = quant_node.output[0]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info(in_tensor, TensorProto.FLOAT, [rows, *shape_tail])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [rows, *shape_tail])],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=list(model.model.opset_import))
    return ModelWrapper(proto).transform(InferShapes())


def _segment_rows(levels: np.ndarray) -> np.ndarray:
    """Indices where a level run starts or ends (enough to pin an affine map, by linearity)."""
    change = np.flatnonzero(np.diff(levels) != 0)
    keep = np.unique(np.concatenate([[0, levels.size - 1], change, change + 1]))
    return keep


def _bounds(levels: np.ndarray, p: dict, lo_level: int, hi_level: int) -> tuple[np.ndarray, np.ndarray]:
    """Open interval (low, high) the pre-quantizer value must fall in, per row."""
    levels = levels.astype(np.float64)
    if p["kind"] == "bipolar":  # sign: y >= 0 -> +1
        low = np.where(levels > 0, 0.0, -np.inf)
        high = np.where(levels > 0, np.inf, 0.0)
        return low, high
    if p["rounding"] == "FLOOR":
        low, high = levels.copy(), levels + 1.0
    else:  # ROUND (half to even): keep strictly away from the .5 ties
        low, high = levels - 0.5, levels + 0.5
    low[levels <= lo_level] = -np.inf
    high[levels >= hi_level] = np.inf
    return low, high


def _solve_channel(acc: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[float, float, int] | None:
    """Fixed-point (a, b, fraction bits) with low < a*acc + b < high on every row, or None."""
    from scipy.optimize import linprog

    # Variables a, b, margin; maximize margin subject to low + m <= a*acc + b <= high - m.
    rows_a, rows_b = [], []
    finite_lo, finite_hi = np.isfinite(low), np.isfinite(high)
    for i in np.flatnonzero(finite_lo):
        rows_a.append([-acc[i], -1.0, 1.0])
        rows_b.append(-low[i])
    for i in np.flatnonzero(finite_hi):
        rows_a.append([acc[i], 1.0, 1.0])
        rows_b.append(high[i])
    if not rows_a:
        return 0.0, 0.0, 0
    res = linprog(
        c=[0.0, 0.0, -1.0],
        A_ub=np.array(rows_a),
        b_ub=np.array(rows_b),
        bounds=[(None, None), (None, None), (None, 1.0)],
        method="highs",
    )
    if not res.success or res.x[2] <= 0:
        return None
    a, b = float(res.x[0]), float(res.x[1])
    acc_int = acc.astype(np.int64)
    for frac in range(0, MAX_FRACTION_BITS + 1):
        unit = 2**frac
        a_int, b_int = int(round(a * unit)), int(round(b * unit))
        # Exact check in integers: low*unit < a_int*acc + b_int < high*unit (bounds are multiples of 0.5).
        y2 = 2 * (a_int * acc_int + b_int)
        ok_lo = np.all(~finite_lo | (y2 > np.where(finite_lo, np.round(2 * low * unit), 0)))
        ok_hi = np.all(~finite_hi | (y2 < np.where(finite_hi, np.round(2 * high * unit), 0)))
        if ok_lo and ok_hi:
            return a_int / unit, b_int / unit, frac
    return None


def _unit_slope(acc: np.ndarray, low: np.ndarray, high: np.ndarray, sol: tuple[float, float, int]) -> tuple[float, float, int] | None:
    """The same sign decision as ``sol`` with slope +-1: ``sign(a*acc + b) = sign(acc + b/a)`` for a > 0
    (and flipped for a < 0), so a bipolar output keeps its layer's +-1 weights and only the bias
    (the threshold) moves. The bias is rounded to the fewest fraction bits that keep every row
    strictly inside its bounds. None if no such bias exists within MAX_FRACTION_BITS."""
    a, b, _ = sol
    if a == 0:
        return None
    sign = 1.0 if a > 0 else -1.0
    threshold = b / abs(a)
    for frac in range(0, MAX_FRACTION_BITS + 1):
        unit = 2**frac
        b_q = round(threshold * unit) / unit
        y = sign * acc + b_q
        if np.all((y > low) & (y < high)):
            return sign, b_q, frac
    return None


class ExactRequantization(Transformation):
    """Replace quantized-layer -> affine chain -> quantizer with an exact fixed-point equivalent."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict] = []
        self._skipped: set[str] = set()
        self._done: set[str] = set()

    def apply(self, model: ModelWrapper):
        for q_node in list(model.graph.node):
            if q_node.op_type not in ("Quant", "BipolarQuant") or q_node.name in self._skipped | self._done:
                continue
            if model.get_initializer(q_node.input[0]) is not None:
                continue  # a weight quantizer
            if self._try(model, q_node):
                self._done.add(q_node.name)
                return model, True
            self._skipped.add(q_node.name)
        return model, False

    def _try(self, model: ModelWrapper, q_node) -> bool:
        p_out = _quant_params(model, q_node)
        if p_out is None:
            return False
        s_out = _scalar_po2(p_out["scale"])
        if s_out is None or (p_out["kind"] == "int" and np.any(p_out["zeropt"] != 0)):
            return self._skip(q_node, "output quantizer scale is not a single power of two")
        if p_out["kind"] == "bipolar" and s_out != 1.0:
            return self._skip(q_node, "bipolar quantizer with a non-unit scale")
        # Walk back through the affine chain to a MatMul/Conv.
        chain = []
        tensor = q_node.input[0]
        producer = model.find_producer(tensor)
        # an intermediate quantizer (onnxruntime's unfused MatMul -> QDQ -> bias Add) is one more step of
        # the chain: the chain is evaluated as the model computes it, so its rounding is in the level table
        while producer is not None and (
            producer.op_type in CHAIN_OPS or (producer.op_type == "Quant" and _quant_params(model, producer) is not None)
        ):
            if single_consumer(model, producer.output[0]) is None:
                return False
            consts = [i for i in producer.input[1:] if model.get_initializer(i) is not None]
            if len(consts) != len(producer.input) - 1:
                return False
            chain.insert(0, producer)
            tensor = producer.input[0]
            producer = model.find_producer(tensor)
        layer = producer
        if layer is None or layer.op_type not in ("MatMul", "Conv"):
            return False
        if single_consumer(model, layer.output[0]) is None:
            return False
        conv_bias = None
        if layer.op_type == "Conv" and len(layer.input) > 2 and layer.input[2]:
            conv_bias = model.get_initializer(layer.input[2])
            if conv_bias is None:
                return self._skip(q_node, "convolution bias is not constant")
        # The layer's input must come from an activation quantizer with a power-of-two scale, possibly
        # through ops that keep values on its grid (max-pooling picks one of them; reshapes move them).
        in_q = model.find_producer(layer.input[0])
        while in_q is not None and in_q.op_type in GRID_PRESERVING_OPS and in_q.input:
            in_q = model.find_producer(in_q.input[0])
        p_in = _quant_params(model, in_q) if in_q is not None and in_q.op_type in ("Quant", "BipolarQuant") else None
        if p_in is None:
            return self._skip(q_node, "layer input is not quantized")
        s_in = _scalar_po2(p_in["scale"])
        if s_in is None or (p_in["kind"] == "int" and np.any(p_in["zeropt"] != 0)):
            return self._skip(q_node, "layer input scale is not a single power of two")
        wq = _weight_integers(model, layer.input[1])
        if wq is None:
            return self._skip(q_node, "weights are not produced by a constant quantizer")
        w_int, w_scale, w_quant_node = wq
        info = linear_channel_info(model, layer, require_constant=False)
        if info is None:
            return False
        channels, axis, rank = info
        # Per-output-channel weight scale.
        if layer.op_type == "MatMul":
            w_cols = w_int.reshape(-1, channels)
            scale_cols = w_scale.reshape(-1, channels)
        else:
            w_cols = w_int.reshape(channels, -1).T
            scale_cols = w_scale.reshape(channels, -1).T
        if not np.all(scale_cols == scale_cols[:1]):
            return self._skip(q_node, "weight scale varies within an output channel")
        s_w = scale_cols[0]
        lmin, lmax = _level_range(p_in)
        lo = np.minimum(w_cols * lmin, w_cols * lmax).sum(axis=0)
        hi = np.maximum(w_cols * lmin, w_cols * lmax).sum(axis=0)
        if layer.op_type == "Conv":  # zero padding contributes 0, inside [lo, hi] already
            lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
        acc_lo, acc_hi = int(lo.min()), int(hi.max())
        rows = acc_hi - acc_lo + 1
        if rows > MAX_TABLE_ROWS:
            return self._skip(q_node, f"accumulator range {rows} too large to enumerate")
        acc = np.arange(acc_lo, acc_hi + 1, dtype=np.float64)
        # Evaluate the reference chain on every accumulator value for every channel at once.
        shape_tail = [channels] if layer.op_type == "MatMul" else [channels, 1, 1]
        real = (acc.reshape(-1, 1) * (s_in * s_w).reshape(1, -1)).astype(np.float32)
        if conv_bias is not None:  # the convolution adds its bias in float32 before the chain
            real = (real + np.asarray(conv_bias, dtype=np.float32).reshape(1, -1)).astype(np.float32)
        chain_in = real.reshape(rows, *shape_tail)
        cm = _chain_model(model, chain, q_node, layer.output[0], rows, shape_tail)
        out = oxe.execute_onnx(cm, {layer.output[0]: chain_in})[q_node.output[0]]
        levels = np.asarray(out, dtype=np.float64).reshape(rows, channels) / s_out
        if not np.allclose(levels, np.round(levels)):
            return self._skip(q_node, "quantizer output is not on its integer grid")
        levels = np.round(levels)
        qlo, qhi = _level_range(p_out)
        a = np.zeros(channels)
        b = np.zeros(channels)
        frac_bits = 0
        for c in range(channels):
            valid = (acc >= lo[c]) & (acc <= hi[c])
            acc_c, lev_c = acc[valid], levels[valid, c]
            keep = _segment_rows(lev_c)
            low, high = _bounds(lev_c[keep], p_out, qlo, qhi)
            sol = _solve_channel(acc_c[keep], low, high)
            if sol is None:
                return self._skip(q_node, f"channel {c} is not an affine step function")
            if p_out["kind"] == "bipolar":  # a sign only needs a threshold: keep binary weights +-1 (xnor/popcount in hls4ml)
                sol = _unit_slope(acc_c[keep], low, high, sol) or sol
            a[c], b[c], f = sol
            frac_bits = max(frac_bits, f)
        # New weights/bias in real units: y_real = s_out * (a * acc + b), acc = W_int . (x / s_in).
        pre_scale = (s_out if p_out["kind"] == "int" else 1.0) / s_in
        bias = (s_out if p_out["kind"] == "int" else 1.0) * b
        if layer.op_type == "MatMul":
            new_w = (w_cols * (a * pre_scale).reshape(1, -1)).reshape(w_int.shape)
        else:
            new_w = (w_cols * (a * pre_scale).reshape(1, -1)).T.reshape(w_int.shape)
        if not np.array_equal(new_w.astype(np.float32).astype(np.float64), new_w):
            return self._skip(q_node, "rescaled weights are not exact in float32")
        # From here on the graph changes: the layer takes W' and a bias, the chain goes away.
        w_name = model.make_new_valueinfo_name()
        model.set_initializer(w_name, new_w.astype(np.float32))
        layer.input[1] = w_name
        layer.doc_string = EXACT_MARK
        model.graph.node.remove(w_quant_node)  # it fed only this layer (checked in _weight_integers)
        remove_nodes(model, chain)
        b_name = model.make_new_valueinfo_name()
        model.set_initializer(b_name, bias.astype(np.float32))
        if layer.op_type == "MatMul":
            mid = model.make_new_valueinfo_name()
            add = helper.make_node("Add", [mid, b_name], [q_node.input[0]], name=f"{layer.name}_exact_bias")
            layer.output[0] = mid
            model.graph.node.insert(list(model.graph.node).index(layer) + 1, add)
        else:
            if len(layer.input) > 2:
                layer.input[2] = b_name  # the old bias is inside the new affine map
            else:
                layer.input.append(b_name)
            layer.output[0] = q_node.input[0]
        self.records.append(
            {
                "layer": layer.name,
                "quantizer": q_node.name,
                "replaced": [n.op_type for n in chain],
                "accumulator_range": [acc_lo, acc_hi],
                "fraction_bits": frac_bits,
            }
        )
        log.info("exact requantization: %s -> %s (%d fraction bits)", layer.name, q_node.name, frac_bits)
        return True

    def _skip(self, q_node, reason: str) -> bool:
        self.records.append({"quantizer": q_node.name, "skipped": reason})
        return False
