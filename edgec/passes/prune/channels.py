"""`channels`: structured pruning that physically removes Conv filters / Dense output neurons.

Each prunable layer's output channels are ranked by the L1 (default) or L2 norm of their
filters (the weights the layer multiplies by, after its weight quantizer) and the weakest
``ratio`` of them are removed per layer (``scope=layer``) or over the whole network by norm
relative to the layer's mean (``scope=global``), keeping at least ``min_channels`` per layer.

Removal propagates through everything downstream of the layer, so the result is a smaller valid
model: the layer's weights, bias and per-channel weight-quantizer parameters; per-channel ops
after it (BatchNormalization, per-channel Mul/Add/Sub/Div, activations, activation quantizers,
pooling, Pad, Dropout/Identity); Flatten/Reshape/Transpose into a Dense layer (the matching
input rows); the consuming Conv's input channels (a depthwise consumer loses the matching
filters too); Concat (indices shifted by the offset of the branch). Layers meeting at a residual
``Add`` form one channel group: the same channels are removed from every producer of the group,
ranked by their summed norms. A layer whose channels reach the model output or an op this pass
cannot follow (Softmax over channels, Shape, unknown ops...) is left alone, with a note.

A removed channel is treated as a filter whose weights are zero: the constant it would still
carry downstream (its bias pushed through BatchNormalization, activations, quantizers...) is
folded into the consumers' biases. That is exact for Dense consumers and unpadded convolutions,
so removing channels whose weights are already zero leaves the outputs unchanged
(:func:`remove_zero_channels` only removes those it can remove exactly).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from onnx import helper, numpy_helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.infer_shapes import InferShapes

from edgec.errors import OptionError, UnsupportedOpsError
from edgec.passes.prune.base import PruningPass
from edgec.passes.prune.common import (
    WEIGHT_QUANTIZERS,
    WeightRef,
    attr,
    largest_within_drop,
    max_drop_points,
    prunable_layers,
)

# Ratio ladder the max_drop search walks (fractions of the target ratio).
LADDER_STEPS = 20

_UNARY = {
    "Relu": lambda n, v: np.maximum(v, 0.0),
    "LeakyRelu": lambda n, v: np.where(v >= 0, v, float(attr(n, "alpha", 0.01)) * v),
    "Sigmoid": lambda n, v: 1.0 / (1.0 + np.exp(-v)),
    "Tanh": lambda n, v: np.tanh(v),
    "HardSigmoid": lambda n, v: np.clip(float(attr(n, "alpha", 0.2)) * v + float(attr(n, "beta", 0.5)), 0.0, 1.0),
    "Elu": lambda n, v: np.where(v >= 0, v, float(attr(n, "alpha", 1.0)) * (np.exp(v) - 1.0)),
    "Softplus": lambda n, v: np.log1p(np.exp(v)),
    "Abs": lambda n, v: np.abs(v),
    "Neg": lambda n, v: -v,
    "Identity": lambda n, v: v,
    "Dropout": lambda n, v: v,
}
_BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Max": np.maximum,
    "Min": np.minimum,
}
_POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool")
_ACT_QUANTS = ("Quant", "BipolarQuant", "Trunc")


@dataclass
class ChannelState:
    """How a tensor carries a channel space: along ``axis`` (of a tensor of rank ``rank``), index
    ``i`` belongs to channel ``owner[i]`` (-1: another layer's channel) and would hold ``val[i]``
    if its channel's filter weights were zero (NaN: not a known constant)."""

    axis: int
    rank: int
    owner: np.ndarray
    val: np.ndarray | None = None

    def same_layout(self, other: ChannelState) -> bool:
        return self.axis == other.axis and self.rank == other.rank and np.array_equal(self.owner, other.owner)


@dataclass
class ChannelPlan:
    """The channel group of a layer: coupled producers, every tensor carrying its channels and
    the nodes to edit."""

    producers: list[WeightRef]
    channels: int
    states: dict[str, ChannelState] = field(default_factory=dict)
    nodes: list = field(default_factory=list)  # component nodes other than producers/consumers, graph order
    consumers: list[tuple[WeightRef, str]] = field(default_factory=list)  # (layer, "dense" | "conv" | "depthwise")


@dataclass
class ChannelGroup:
    """Layers whose output channels must be removed together (coupled through residual Adds)."""

    layers: list[str]
    channels: int
    prunable: bool
    reason: str | None = None


# ----------------------------------------------------------------------------- constants


def _consumers(model: ModelWrapper, tensor: str) -> list:
    return [n for n in model.graph.node if tensor in n.input]


def _is_const(model: ModelWrapper, tensor: str, depth: int = 0) -> bool:
    if not tensor:
        return True
    if model.get_initializer(tensor) is not None:
        return True
    producer = model.find_producer(tensor)
    if producer is None or depth > 3:
        return False
    if producer.op_type == "Constant":
        return True
    if producer.op_type in WEIGHT_QUANTIZERS + ("Transpose",):
        return all(_is_const(model, i, depth + 1) for i in producer.input)
    return False


def const_value(model: ModelWrapper, tensor: str) -> np.ndarray:
    """Value of a constant tensor: initializer, Constant node, or a quantizer/Transpose of constants."""
    init = model.get_initializer(tensor)
    if init is not None:
        return np.asarray(init, dtype=np.float64)
    producer = model.find_producer(tensor)
    if producer is None:
        raise UnsupportedOpsError(f"{tensor} is not a constant")
    if producer.op_type == "Constant":
        return np.asarray(numpy_helper.to_array(attr(producer, "value")), dtype=np.float64)
    inputs = [const_value(model, i) for i in producer.input]
    if producer.op_type == "Transpose":
        return np.transpose(inputs[0], attr(producer, "perm", None))
    return _apply_quant(producer, inputs[0], inputs[1:])


def _apply_quant(node, value: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
    """A QONNX quantizer (Quant, BipolarQuant, Trunc) applied to ``value`` in float64."""
    if node.op_type == "BipolarQuant":
        return np.where(value >= 0, 1.0, -1.0) * params[0]
    if node.op_type == "Quant":
        from qonnx.custom_op.general.quant import quant

        mode = attr(node, "rounding_mode", "ROUND")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        return np.asarray(
            quant(value, *params[:3], signed=int(attr(node, "signed", 1)), narrow=int(attr(node, "narrow", 0)), rounding_mode=mode),
            dtype=np.float64,
        )
    return np.full_like(value, np.nan)


def _uses(model: ModelWrapper, tensor: str) -> int:
    return sum(list(n.input).count(tensor) for n in model.graph.node) + sum(o.name == tensor for o in model.graph.output)


def _slice_const(model: ModelWrapper, node, index: int, from_end: int, keep: np.ndarray, full: int) -> None:
    """Keep ``keep`` along the axis ``from_end`` places from the end of the constant input
    ``index`` of ``node`` (broadcast-aligned); constants of size 1 there are left alone. Shared
    constants are copied first. Follows Constant nodes and quantizer/Transpose chains."""
    tensor = node.input[index]
    if not tensor:
        return
    init = model.get_initializer(tensor)
    producer = None if init is not None else model.find_producer(tensor)
    if init is not None or (producer is not None and producer.op_type == "Constant"):
        value = np.asarray(init) if init is not None else numpy_helper.to_array(attr(producer, "value"))
        axis = value.ndim - from_end
        if axis < 0 or value.shape[axis] == 1:
            return
        if value.shape[axis] != full:
            raise UnsupportedOpsError(f"{node.name or node.op_type}: constant {tensor} has {value.shape[axis]} entries, expected {full}")
        value = np.take(value, keep, axis=axis)
        if _uses(model, tensor) > 1:
            new = model.make_new_valueinfo_name()
            node.input[index] = new
            model.set_initializer(new, value)
        elif init is not None:
            model.set_initializer(tensor, value)
        else:
            for a in producer.attribute:
                if a.name == "value":
                    a.t.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(a.t).dtype), a.t.name))
        return
    if producer is None or producer.op_type not in WEIGHT_QUANTIZERS + ("Transpose",):
        raise UnsupportedOpsError(f"{node.name or node.op_type}: cannot slice input {tensor}")
    if _uses(model, tensor) > 1:
        raise UnsupportedOpsError(f"{tensor} (a shared quantized constant) cannot be sliced for one consumer")
    rank = len(const_value(model, tensor).shape)
    if producer.op_type == "Transpose":
        perm = list(attr(producer, "perm", list(range(rank))[::-1]))
        _slice_const(model, producer, 0, rank - perm[rank - from_end], keep, full)
        return
    for i in range(len(producer.input)):
        _slice_const(model, producer, i, from_end, keep, full)


def _add_to_const(model: ModelWrapper, node, index: int, delta: np.ndarray) -> bool:
    """``node.input[index] += delta`` for a plain (unquantized) constant; False if it is not one."""
    tensor = node.input[index] if index < len(node.input) else ""
    if not tensor:
        return False
    init = model.get_initializer(tensor)
    if init is None:
        return False
    value = np.asarray(init, dtype=np.float64)
    new = (value + delta.reshape((1,) * max(value.ndim - 1, 0) + (-1,)) if value.ndim else value + delta).astype(np.asarray(init).dtype)
    if _uses(model, tensor) > 1:
        name = model.make_new_valueinfo_name()
        node.input[index] = name
        model.set_initializer(name, new)
    else:
        model.set_initializer(tensor, new)
    return True


# ----------------------------------------------------------------------------- tracing


def _rank(model: ModelWrapper, tensor: str, default: int | None = None) -> int | None:
    shape = model.get_tensor_shape(tensor)
    return len(shape) if shape else default


def _along(model: ModelWrapper, tensor: str, state: ChannelState) -> np.ndarray | None:
    """A constant operand as a vector along ``state.axis`` (None if it varies along other axes)."""
    value = const_value(model, tensor)
    size = len(state.owner)
    if value.ndim > state.rank:
        return None
    full = value.reshape((1,) * (state.rank - value.ndim) + value.shape)
    others = [d for i, d in enumerate(full.shape) if i != state.axis]
    if any(d != 1 for d in others):
        return None
    vector = full.reshape(-1)
    if vector.size not in (1, size):
        return None
    return np.broadcast_to(vector, (size,)).astype(np.float64)


def _linear(model: ModelWrapper, node) -> WeightRef | None:
    for ref in prunable_layers(model):
        if ref.node is node:
            return ref
    return None


def _out_channels(model: ModelWrapper, ref: WeightRef) -> int:
    return int(ref.get(model).shape[ref.out_axis])


def _producer_state(model: ModelWrapper, ref: WeightRef) -> ChannelState:
    channels = _out_channels(model, ref)
    if ref.kind == "conv":
        rank = _rank(model, ref.node.output[0], ref.get(model).ndim)
        return ChannelState(1, rank, np.arange(channels))
    rank = _rank(model, ref.node.output[0], 2)
    return ChannelState(rank - 1, rank, np.arange(channels))


def _check_producer(model: ModelWrapper, ref: WeightRef) -> None:
    if ref.kind == "conv" and ref.group != 1:
        raise UnsupportedOpsError(f"{ref.name}: grouped/depthwise convolution outputs follow its input layer")
    if ref.node.op_type == "Gemm" and int(attr(ref.node, "transA", 0)):
        raise UnsupportedOpsError(f"{ref.name}: Gemm with transA")
    if ref.node.op_type == "MatMul" and _rank(model, ref.node.input[1], 2) != 2:
        raise UnsupportedOpsError(f"{ref.name}: batched MatMul weights")


def _trace(model: ModelWrapper, seed: WeightRef) -> ChannelPlan:
    """The channel group of ``seed``: walk every tensor carrying its channels, forward to the
    consumers and backward to coupled producers. Raises UnsupportedOpsError where it can't."""
    _check_producer(model, seed)
    plan = ChannelPlan([seed], _out_channels(model, seed))
    refs = {id(r.node): r for r in prunable_layers(model)}
    handled: set[int] = set()  # nodes walked (layers: as consumers)
    queue: deque[str] = deque()
    outputs = {o.name for o in model.graph.output}

    def assign(tensor: str, state: ChannelState) -> None:
        known = plan.states.get(tensor)
        if known is not None:
            if not known.same_layout(state):
                raise UnsupportedOpsError(f"{tensor}: channels of {seed.name} meet with a different layout")
            return
        plan.states[tensor] = state
        queue.append(tensor)

    def name(node) -> str:
        return node.name or node.op_type

    def dynamic(node) -> list[int]:
        return [i for i, t in enumerate(node.input) if t and not _is_const(model, t)]

    def per_channel(node, state: ChannelState) -> None:
        """Ops that keep the layout: check and give every dynamic input and the output the state."""
        if node.op_type in _POOLS or node.op_type == "BatchNormalization":
            if state.axis != 1 or state.rank < 2:
                raise UnsupportedOpsError(f"{name(node)}: {node.op_type} over channels of {seed.name} on axis {state.axis}")
        if node.op_type == "Pad":
            pads = attr(node, "pads", None)
            if pads is None and len(node.input) > 1 and node.input[1]:
                pads = const_value(model, node.input[1]).astype(int).tolist()
            if len(node.input) > 3 and node.input[3]:
                raise UnsupportedOpsError(f"{name(node)}: Pad with axes")
            if pads is None or pads[state.axis] or pads[state.axis + len(pads) // 2]:
                raise UnsupportedOpsError(f"{name(node)}: pads the channel axis")
        for i in dynamic(node):
            assign(node.input[i], state)
        assign(node.output[0], state)

    def forward(node, tensor: str) -> None:
        state = plan.states[tensor]
        op = node.op_type
        ref = refs.get(id(node))
        if ref is not None:
            if node.input[0] != tensor or tensor in node.input[1:]:
                raise UnsupportedOpsError(f"{name(node)}: channels of {seed.name} reach its weights")
            if ref.kind == "conv":
                if state.axis != 1:
                    raise UnsupportedOpsError(f"{ref.name}: input channels not on axis 1")
                in_channels = len(state.owner)
                if ref.group == 1:
                    plan.consumers.append((ref, "conv"))
                elif ref.group == in_channels and ref.get(model).shape[ref.in_axis] == 1:
                    plan.consumers.append((ref, "depthwise"))
                    mult = _out_channels(model, ref) // in_channels
                    assign(node.output[0], ChannelState(1, state.rank, np.repeat(state.owner, mult)))
                else:
                    raise UnsupportedOpsError(f"{ref.name}: grouped convolution (group={ref.group})")
                return
            if state.axis != state.rank - 1 or (op == "Gemm" and int(attr(node, "transA", 0))):
                raise UnsupportedOpsError(f"{ref.name}: channels of {seed.name} are not its input features")
            plan.consumers.append((ref, "dense"))
            return
        plan.nodes.append(node)
        if op in _UNARY or op in _ACT_QUANTS or op in ("BatchNormalization", "Pad", "Clip", "PRelu") or op in _POOLS:
            if any(_uses(model, o) for o in node.output[1:] if o):
                raise UnsupportedOpsError(f"{name(node)}: {op} uses its extra outputs (training mode)")
            if len(dynamic(node)) != 1 or node.input[0] != tensor:
                raise UnsupportedOpsError(f"{name(node)}: {op} with dynamic parameters")
            per_channel(node, state)
            return
        if op in _BINARY:
            others = [node.input[i] for i in dynamic(node) if node.input[i] != tensor]
            for other in others:
                if model.get_tensor_shape(other) != model.get_tensor_shape(tensor):
                    raise UnsupportedOpsError(f"{name(node)}: {op} broadcasts the channels of {seed.name}")
            per_channel(node, state)
            return
        if op == "Concat":
            axis = int(attr(node, "axis", 1))
            axis = axis + state.rank if axis < 0 else axis
            if axis != state.axis:
                raise UnsupportedOpsError(f"{name(node)}: Concat on axis {axis}, channels on {state.axis}")
            owners = []
            for t in node.input:
                if t == tensor:
                    owners.append(state.owner)
                elif t in plan.states:
                    owners.append(plan.states[t].owner)
                else:
                    shape = model.get_tensor_shape(t)
                    if not shape:
                        raise UnsupportedOpsError(f"{name(node)}: unknown input shape")
                    owners.append(np.full(shape[axis], -1))
            assign(node.output[0], ChannelState(axis, state.rank, np.concatenate(owners)))
            return
        if op == "Transpose":
            perm = list(attr(node, "perm", list(range(state.rank))[::-1]))
            assign(node.output[0], ChannelState(perm.index(state.axis), state.rank, state.owner))
            return
        if op in ("Flatten", "Reshape"):
            shape = model.get_tensor_shape(tensor)
            out_shape = model.get_tensor_shape(node.output[0])
            if op == "Flatten":
                start = int(attr(node, "axis", 1))
                start = start + state.rank if start < 0 else start
            elif shape and out_shape and len(out_shape) <= len(shape) and list(out_shape[:-1]) == list(shape[: len(out_shape) - 1]):
                start = len(out_shape) - 1
            elif state.axis == state.rank - 1 and shape and out_shape and out_shape[-1] == shape[-1] and len(out_shape) <= len(shape):
                assign(node.output[0], ChannelState(len(out_shape) - 1, len(out_shape), state.owner))  # merges leading dims only
                return
            else:
                raise UnsupportedOpsError(f"{name(node)}: Reshape {shape} -> {out_shape} splits the channels of {seed.name}")
            if not shape or state.axis < start:
                raise UnsupportedOpsError(f"{name(node)}: flattens the channels of {seed.name} into the batch")
            dims = list(shape[start:])
            local = state.axis - start
            grid = np.broadcast_to(state.owner.reshape([-1 if i == local else 1 for i in range(len(dims))]), dims).reshape(-1)
            assign(node.output[0], ChannelState(start, start + 1, grid.copy()))
            return
        raise UnsupportedOpsError(f"{name(node)}: channels of {seed.name} feed {op}, which this pass cannot follow")

    def backward(tensor: str) -> None:
        producer = model.find_producer(tensor)
        if producer is None:
            raise UnsupportedOpsError(f"{tensor}: model input shares the channels of {seed.name} (residual from the input)")
        state = plan.states[tensor]
        ref = refs.get(id(producer))
        if ref is not None:  # a layer may read the channels (handled as consumer) and produce them too
            if any(p.node is producer for p in plan.producers):
                return
            _check_producer(model, ref)
            if not ref.kind == "conv" and state.axis != state.rank - 1:
                raise UnsupportedOpsError(f"{ref.name}: coupled on a non-feature axis")
            if not np.array_equal(state.owner, np.arange(plan.channels)) or _out_channels(model, ref) != plan.channels:
                raise UnsupportedOpsError(f"{ref.name}: coupled with {seed.name} but its channels do not line up")
            plan.producers.append(ref)
            return
        if id(producer) in handled:
            return
        handled.add(id(producer))
        op = producer.op_type
        if op in _UNARY or op in _ACT_QUANTS or op in _BINARY or op in _POOLS or op in ("BatchNormalization", "Pad", "Clip", "PRelu"):
            plan.nodes.append(producer)
            per_channel(producer, state)
            return
        raise UnsupportedOpsError(f"{producer.name or op}: channels of {seed.name} are coupled through {op}, which this pass cannot follow")

    plan.states[seed.node.output[0]] = _producer_state(model, seed)
    queue.append(seed.node.output[0])
    while queue:
        tensor = queue.popleft()
        if tensor in outputs:
            raise UnsupportedOpsError(f"{seed.name}: its channels reach the model output {tensor}")
        backward(tensor)
        for node in _consumers(model, tensor):
            if id(node) not in handled:
                handled.add(id(node))
                forward(node, tensor)
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    plan.nodes.sort(key=lambda n: order[id(n)])
    plan.producers.sort(key=lambda r: order[id(r.node)])
    _values(model, plan)
    return plan


def _values(model: ModelWrapper, plan: ChannelPlan) -> None:
    """Fill every state's ``val``: what each index carries when its channel's filters are zero
    (the producer's bias pushed through the per-channel ops), in graph order."""
    for ref in plan.producers:
        state = plan.states[ref.node.output[0]]
        bias = np.zeros(plan.channels)
        if ref.node.op_type in ("Conv", "Gemm") and len(ref.node.input) > 2 and ref.node.input[2]:
            value = const_value(model, ref.node.input[2]).reshape(-1)
            if ref.node.op_type == "Gemm":
                value = value * float(attr(ref.node, "beta", 1.0))
            bias = np.broadcast_to(value, (plan.channels,)).astype(np.float64)
        state.val = bias
    depthwise = {id(ref.node): ref for ref, kind in plan.consumers if kind == "depthwise"}
    members = {id(n) for n in plan.nodes} | set(depthwise)
    for node in model.graph.node:
        if id(node) not in members:
            continue
        out = plan.states[node.output[0]]
        size = len(out.owner)
        unknown = np.full(size, np.nan)

        def val_of(tensor: str, out: ChannelState = out, unknown: np.ndarray = unknown) -> np.ndarray:
            state = plan.states.get(tensor)
            if state is not None:
                return state.val if state.val is not None else unknown
            vector = _along(model, tensor, out)
            return vector if vector is not None else unknown

        op = node.op_type
        with np.errstate(all="ignore"):
            if id(node) in depthwise:
                src = plan.states[node.input[0]]
                mult = size // len(src.owner)
                weight = const_value(model, node.input[1])
                val = np.repeat(src.val, mult) * weight.reshape(size, -1).sum(axis=1)
                if len(node.input) > 2 and node.input[2]:
                    val = val + const_value(model, node.input[2]).reshape(-1)
                if _pads(node):
                    val = np.where(val == 0, 0.0, np.nan)
            elif op in ("Flatten", "Reshape", "Transpose", "Concat"):
                lookup: dict[int, float] = {}
                for t in node.input:
                    if t in plan.states and plan.states[t].val is not None:
                        lookup.update({int(o): float(v) for o, v in zip(plan.states[t].owner, plan.states[t].val, strict=True) if o >= 0})
                val = np.array([lookup.get(int(o), 0.0) for o in out.owner])
            elif op in _UNARY:
                val = _UNARY[op](node, val_of(node.input[0]))
            elif op in _BINARY:
                val = _BINARY[op](val_of(node.input[0]), val_of(node.input[1]))
            elif op == "PRelu":
                base = val_of(node.input[0])
                val = np.where(base >= 0, base, base * val_of(node.input[1]))
            elif op == "Clip":
                base = val_of(node.input[0])
                lo = val_of(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "min", -np.inf)
                hi = val_of(node.input[2]) if len(node.input) > 2 and node.input[2] else attr(node, "max", np.inf)
                val = np.minimum(np.maximum(base, lo), hi)
            elif op == "BatchNormalization":
                gamma, beta, mean, var = (const_value(model, t).reshape(-1) for t in node.input[1:5])
                val = gamma * (val_of(node.input[0]) - mean) / np.sqrt(var + float(attr(node, "epsilon", 1e-5))) + beta
            elif op in _ACT_QUANTS:
                base, params = val_of(node.input[0]), [val_of(t) for t in node.input[1:]]
                val = np.array(
                    [
                        float(_apply_quant(node, np.float64(base[i]), [np.float64(p[i]) for p in params]))
                        if not np.isnan(base[i])
                        else np.nan
                        for i in range(size)
                    ]
                )
            elif op == "AveragePool" and _pads(node) and int(attr(node, "count_include_pad", 0)):
                base = val_of(node.input[0])
                val = np.where(base == 0, 0.0, np.nan)
            elif op == "Pad":
                mode = attr(node, "mode", b"constant")
                mode = mode.decode() if isinstance(mode, bytes) else mode
                fill = float(const_value(model, node.input[2]).reshape(-1)[0]) if len(node.input) > 2 and node.input[2] else 0.0
                base = val_of(node.input[0])
                val = np.where(base == fill, base, np.nan) if mode == "constant" else base
            else:  # pooling, identity-like
                val = val_of(node.input[0])
        out.val = np.asarray(val, dtype=np.float64)


def _pads(node) -> bool:
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return any(attr(node, "pads", [0])) or auto not in ("NOTSET", "VALID")


def channel_groups(model: ModelWrapper) -> list[ChannelGroup]:
    """Every prunable layer's channel group (coupled producers through residual Adds), with the
    reason where its channels cannot be removed."""
    groups: list[ChannelGroup] = []
    seen: set[str] = set()
    for ref in prunable_layers(model):
        if ref.name in seen:
            continue
        try:
            plan = _trace(model, ref)
        except UnsupportedOpsError as exc:
            seen.add(ref.name)
            groups.append(ChannelGroup([ref.name], _out_channels(model, ref), False, str(exc)))
            continue
        names = [p.name for p in plan.producers]
        seen.update(names)
        groups.append(ChannelGroup(names, plan.channels, True))
    return groups


def _find(model: ModelWrapper, layer_name: str) -> WeightRef:
    for ref in prunable_layers(model):
        if ref.name == layer_name:
            return ref
    raise OptionError(f"no prunable layer named {layer_name}")


def _exact(model: ModelWrapper, plan: ChannelPlan, drop: np.ndarray) -> bool:
    """Whether removing ``drop`` is exactly the same as zeroing those filters."""
    for ref, kind in plan.consumers:
        state = plan.states[ref.node.input[0]]
        mask = np.isin(state.owner, drop)
        vals = state.val[mask] if state.val is not None else np.array([np.nan])
        if kind == "depthwise" or not np.any(vals != 0):
            continue
        if np.any(np.isnan(vals)) or (kind == "conv" and _pads(ref.node)):
            return False
    return True


def _fold(model: ModelWrapper, ref: WeightRef, state: ChannelState, mask: np.ndarray) -> None:
    """Add the removed inputs' constant contribution to the consumer's bias."""
    vals = np.nan_to_num(state.val[mask]) if state.val is not None else np.zeros(int(mask.sum()))
    if not np.any(vals != 0):
        return
    node = ref.node
    weight = const_value(model, node.input[1])
    if ref.kind == "conv":
        taps = weight.reshape(weight.shape[0], weight.shape[1], -1).sum(axis=2)  # (O, I)
        delta = taps[:, mask] @ vals
    else:
        oriented = weight.T if node.op_type == "Gemm" and int(attr(node, "transB", 0)) else weight  # (I, O)
        delta = vals @ oriented[mask, :]
        if node.op_type == "Gemm":
            delta = delta * float(attr(node, "alpha", 1.0))
    if node.op_type == "Conv":
        if len(node.input) > 2 and node.input[2]:
            if _add_to_const(model, node, 2, delta):
                return
        else:
            name = model.make_new_valueinfo_name()
            model.set_initializer(name, delta.astype(np.float32))
            if len(node.input) > 2:
                node.input[2] = name
            else:
                node.input.append(name)
            return
        delta = delta.reshape((-1,) + (1,) * (weight.ndim - 2))  # quantized bias: an Add after the layer
    if node.op_type == "Gemm":
        beta = float(attr(node, "beta", 1.0))
        if len(node.input) > 2 and node.input[2]:
            value = const_value(model, node.input[2])
            if value.size == 1:
                model.set_initializer(node.input[2], np.full(delta.shape, float(value.reshape(-1)[0]), dtype=np.float32))
            if beta and _add_to_const(model, node, 2, delta / beta):
                return
        elif beta:
            name = model.make_new_valueinfo_name()
            model.set_initializer(name, (delta / beta).astype(np.float32))
            node.input.append(name)
            return
    consumers = _consumers(model, node.output[0])
    if node.op_type == "MatMul" and len(consumers) == 1 and consumers[0].op_type == "Add":
        add = consumers[0]
        other = 1 if add.input[0] == node.output[0] else 0
        if model.get_initializer(add.input[other]) is not None:
            value = np.asarray(model.get_initializer(add.input[other]))
            if value.size == 1:
                model.set_initializer(add.input[other], np.full(delta.shape, float(value.reshape(-1)[0]), dtype=np.float32))
            if _add_to_const(model, add, other, delta):
                return
    # no bias to fold into: an Add after the layer
    hidden = model.make_new_valueinfo_name()
    const = model.make_new_valueinfo_name()
    model.set_initializer(const, delta.astype(np.float32))
    out = node.output[0]
    node.output[0] = hidden
    index = list(model.graph.node).index(node)
    model.graph.node.insert(index + 1, helper.make_node("Add", [hidden, const], [out], name=f"{ref.name}_pruned_bias"))


def _apply(model: ModelWrapper, plan: ChannelPlan, drop: np.ndarray) -> ModelWrapper:
    """Edit ``model`` in place: remove channels ``drop`` of ``plan``'s group everywhere."""
    keep_ch = np.setdiff1d(np.arange(plan.channels), drop)

    def keep_of(state: ChannelState) -> np.ndarray:
        return np.flatnonzero(~np.isin(state.owner, drop))

    for ref, kind in plan.consumers:
        state = plan.states[ref.node.input[0]]
        mask = np.isin(state.owner, drop)
        keep = np.flatnonzero(~mask)
        if kind == "depthwise":
            out_state = plan.states[ref.node.output[0]]
            out_keep = keep_of(out_state)
            weight_rank = len(const_value(model, ref.node.input[1]).shape)
            _slice_const(model, ref.node, 1, weight_rank, out_keep, len(out_state.owner))
            if len(ref.node.input) > 2:
                _slice_const(model, ref.node, 2, 1, out_keep, len(out_state.owner))
            for a in ref.node.attribute:
                if a.name == "group":
                    a.i = int(len(keep))
            continue
        _fold(model, ref, state, mask)
        weight_rank = len(const_value(model, ref.node.input[1]).shape)
        if kind == "conv":
            from_end = weight_rank - 1
        elif ref.node.op_type == "Gemm" and int(attr(ref.node, "transB", 0)):
            from_end = 1
        else:
            from_end = 2
        _slice_const(model, ref.node, 1, from_end, keep, len(state.owner))
    for node in plan.nodes:
        state = plan.states[node.output[0]]
        keep = keep_of(state)
        if node.op_type == "BatchNormalization":
            for i in range(1, 5):
                _slice_const(model, node, i, 1, keep, len(state.owner))
        elif node.op_type == "Reshape":
            target = np.asarray(const_value(model, node.input[1])).astype(np.int64)
            if target[state.axis] > 0:
                target[state.axis] = len(keep)
                if _uses(model, node.input[1]) > 1 or model.get_initializer(node.input[1]) is None:
                    node.input[1] = model.make_new_valueinfo_name()
                model.set_initializer(node.input[1], target)
        elif node.op_type in ("Flatten", "Transpose", "Concat", "Pad") or node.op_type in _POOLS:
            continue
        else:
            for i, t in enumerate(node.input):
                if t and t not in plan.states:
                    _slice_const(model, node, i, state.rank - state.axis, keep, len(state.owner))
    for ref in plan.producers:
        weight_rank = len(const_value(model, ref.node.input[1]).shape)
        if ref.kind == "conv":
            from_end = weight_rank
        elif ref.node.op_type == "Gemm" and int(attr(ref.node, "transB", 0)):
            from_end = 2
        else:
            from_end = 1
        _slice_const(model, ref.node, 1, from_end, keep_ch, plan.channels)
        if ref.node.op_type in ("Conv", "Gemm") and len(ref.node.input) > 2 and ref.node.input[2]:
            _slice_const(model, ref.node, 2, 1, keep_ch, plan.channels)
    del model.graph.value_info[:]
    return model.transform(InferShapes())


def channel_plan(model: ModelWrapper, layer_name: str) -> ChannelPlan:
    """The channel group of layer ``layer_name``: coupled producers, the consumers of its
    channels and, per tensor carrying them, which index belongs to which channel. Raises
    UnsupportedOpsError when its channels cannot be removed."""
    return _trace(model, _find(model, layer_name))


def remove_channels(model: ModelWrapper, layer_name: str, drop_indices) -> ModelWrapper:
    """A copy of ``model`` without output channels ``drop_indices`` of layer ``layer_name`` (and of
    every layer coupled with it through residual Adds), removed from every consumer.

    A removed channel counts as a zero filter: the constant it would carry downstream is folded
    into the consumers' biases. Raises UnsupportedOpsError when the removal cannot be propagated.
    """
    model = ModelWrapper(model.model.__deepcopy__())
    ref = _find(model, layer_name)
    plan = _trace(model, ref)
    drop = np.unique(np.asarray(list(drop_indices), dtype=np.int64))
    if drop.size == 0:
        return model
    if drop.min() < 0 or drop.max() >= plan.channels:
        raise OptionError(f"{layer_name}: channel indices out of range 0..{plan.channels - 1}")
    if drop.size >= plan.channels:
        raise OptionError(f"{layer_name}: cannot remove all {plan.channels} channels")
    return _apply(model, plan, drop)


def _filter_norms(model: ModelWrapper, ref: WeightRef, norm: str) -> np.ndarray:
    weights = np.moveaxis(ref.effective(model).astype(np.float64), ref.out_axis, 0)
    flat = weights.reshape(weights.shape[0], -1)
    return np.abs(flat).sum(axis=1) if norm == "l1" else np.sqrt((flat**2).sum(axis=1))


def remove_zero_channels(model: ModelWrapper) -> tuple[ModelWrapper, dict[str, int]]:
    """Physically remove every output channel whose (effective) weights are all zero, where that
    is exactly equivalent (the constant it carries is folded into Dense/unpadded-conv biases).
    Returns the model and, per producing layer, how many channels were removed."""
    removed: dict[str, int] = {}
    model = ModelWrapper(model.model.__deepcopy__())
    for group in channel_groups(model):
        if not group.prunable:
            continue
        plan = _trace(model, _find(model, group.layers[0]))
        zero = np.ones(plan.channels, dtype=bool)
        for ref in plan.producers:
            zero &= _filter_norms(model, ref, "l1") == 0
        drop = np.flatnonzero(zero)
        if drop.size >= plan.channels:
            drop = drop[1:]
        drop = np.array([c for c in drop if _exact(model, plan, np.array([c]))], dtype=np.int64)
        if drop.size == 0:
            continue
        model = _apply(model, _trace(model, _find(model, group.layers[0])), drop)
        for name in group.layers:
            removed[name] = int(drop.size)
    return model, removed


class ChannelPruning(PruningPass):
    """Remove the weakest output channels (filters / neurons) by L1 or L2 norm, per layer or globally."""

    method = "channels"
    PARAMS = {"ratio": 0.5, "norm": "l1", "scope": "layer", "max_drop": None, "min_channels": 1}
    needs_data = False

    def structured(self) -> bool:
        """Whole channels go: the layers left are smaller and dense (``hardware_aware`` has nothing to do)."""
        return True

    def check_params(self) -> None:
        self.fraction("ratio")
        if self.params["norm"] not in ("l1", "l2"):
            raise OptionError(f"--prune channels: norm={self.params['norm']} must be l1 or l2")
        if self.params["scope"] not in ("layer", "global"):
            raise OptionError(f"--prune channels: scope={self.params['scope']} must be layer or global")
        if not isinstance(self.params["min_channels"], int) or self.params["min_channels"] < 1:
            raise OptionError(f"--prune channels: min_channels={self.params['min_channels']} must be an integer >= 1")

    def choose(self, model: ModelWrapper, groups: list[ChannelGroup], ratio: float) -> dict[str, np.ndarray]:
        """Channels to drop per group (keyed by the group's first layer) at ``ratio``."""
        refs = {r.name: r for r in prunable_layers(model)}
        norm, floor = self.params["norm"], int(self.params["min_channels"])
        scores = {g.layers[0]: sum(_filter_norms(model, refs[n], norm) for n in g.layers) for g in groups}
        drops: dict[str, np.ndarray] = {}
        if self.params["scope"] == "layer":
            for g in groups:
                k = min(int(round(ratio * g.channels)), max(g.channels - floor, 0))
                drops[g.layers[0]] = np.sort(np.argsort(scores[g.layers[0]], kind="stable")[:k])
            return drops
        entries = []
        for g in groups:
            s = scores[g.layers[0]]
            mean = float(s.mean()) or 1.0
            entries.extend((float(v) / mean, g.layers[0], c) for c, v in enumerate(s))
        entries.sort()
        budget = int(round(ratio * len(entries)))
        left = {g.layers[0]: g.channels for g in groups}
        chosen: dict[str, list[int]] = {g.layers[0]: [] for g in groups}
        for _, key, c in entries:
            if budget <= 0:
                break
            if left[key] > floor:
                chosen[key].append(c)
                left[key] -= 1
                budget -= 1
        return {k: np.sort(np.array(v, dtype=np.int64)) for k, v in chosen.items()}

    def prune(self, model: ModelWrapper) -> ModelWrapper:
        groups = channel_groups(model)
        for g in groups:
            if not g.prunable:
                self.record.notes.append(f"{g.layers[0]}: not pruned ({g.reason})")
        groups = [g for g in groups if g.prunable]
        target = float(self.params["ratio"])

        def apply(ratio: float) -> ModelWrapper:
            pruned = model
            for key, drop in self.choose(model, groups, ratio).items():
                if drop.size:
                    pruned = remove_channels(pruned, key, drop)
            return pruned

        ladder = [target * (i + 1) / LADDER_STEPS for i in range(LADDER_STEPS)]
        baseline = self.ctx.evaluate(model) if self.params.get("max_drop") is not None else None
        chosen, pruned, _ = largest_within_drop(ladder, apply, self.ctx, baseline, max_drop_points(self.params))
        if chosen < target:
            self.record.notes.append(
                f"stopped at ratio {chosen:.3f} short of {target:.3f}: more would lose over {self.params['max_drop']} points"
            )
        self.record.mode = "one-shot"
        self.params["achieved_ratio"] = round(chosen, 4)
        drops = self.choose(model, groups, chosen)
        for g in groups:
            removed = int(drops[g.layers[0]].size)
            for name in g.layers:
                self.record.layers[name] = {
                    "channels_before": g.channels,
                    "channels_after": g.channels - removed,
                    "channels_removed": removed,
                }
        return pruned
