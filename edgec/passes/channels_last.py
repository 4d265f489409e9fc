"""Convert a channels-first (NCHW / NCW) model to the channels-last form hls4ml reads, by layout
propagation over the whole graph.

hls4ml's ONNX reader takes convolutional models in qonnx's channels-last form: ``Conv``,
``MaxPool`` and ``BatchNormalization`` in the ``qonnx.custom_op.channels_last`` domain (Conv
weights OHWI), every feature map NHWC. qonnx's own ``ConvertToChannelsLastAndClean`` wraps each such
op in Transposes and then moves them through the graph one pattern at a time; on real exports
(branches joined by Concat or Add, a tensor read by several ops, ReLU6 written as Clip) it leaves
Transposes stranded between layers or with wrong shapes.

This pass instead gives *every* rank-3/4 activation tensor the channels-last layout at once
(``physical = transpose(logical, P)``, ``P = [0, 2, 3, 1]`` or ``[0, 2, 1]``) and rewrites each
node for it:

* Conv / MaxPool / BatchNormalization -> the channels-last domain (Conv weights to OHWI);
  GlobalMaxPool -> a channels-last MaxPool over the whole map;
* elementwise ops and quantizers: unchanged, with constant operands (biases, per-channel scales,
  zero points) broadcast to full rank and transposed the same way;
* Concat / Softmax / LogSoftmax: the axis is mapped; Transpose: its permutation is composed with
  the layouts on both sides; Pad / Resize: their per-axis constants are reordered;
* anything else (Reshape, Flatten, MatMul on a feature map, ops edgec does not know): computed in
  the original layout, with explicit Transposes back and forth around it.

Then Transposes are pushed below Concat and elementwise ops that all their inputs share, inverse
pairs cancel (:func:`edgec.passes.tidy_layout.tidy_layout`), and a Transpose that only feeds a
Flatten/Reshape into a MatMul is folded into the MatMul's weight rows. The result computes exactly
what the model computes; only the layout of the graph input and output changes (the caller's
``input_perm`` / ``output_perm``).
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_shapes import InferShapes

CHANNELS_LAST_DOMAIN = "qonnx.custom_op.channels_last"
CHANNELS_LAST_OPS = ("Conv", "MaxPool", "BatchNormalization")
# Ops that act on each element alone (any layout): their tensor operands only need the same layout.
ELEMENTWISE = {
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Elu",
    "Selu",
    "Softsign",
    "Softplus",
    "HardSigmoid",
    "ThresholdedRelu",
    "Identity",
    "Dropout",
    "Abs",
    "Neg",
    "Exp",
    "Log",
    "Sqrt",
    "Floor",
    "Ceil",
    "Round",
    "Erf",
    "Sign",
    "Reciprocal",
    "Clip",
    "Cast",
    "Not",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Pow",
    "PRelu",
    "Equal",
    "Greater",
    "Less",
    "Where",
    "Quant",
    "BipolarQuant",
    "Trunc",
    "IntQuant",
    "HardSwish",
    "Mish",
    "Gelu",
}
AXIS_OPS = ("Concat", "Softmax", "LogSoftmax")


def physical_perm(rank: int) -> list[int]:
    """``P``: the channels-last tensor is ``transpose(channels_first, P)``."""
    return [0, *range(2, rank), 1]


def _inverse(perm: list[int]) -> list[int]:
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return inverse


def _attr(node: NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _order_preserving(shape: list[int], perm: list[int]) -> bool:
    """Whether transposing ``shape`` by ``perm`` keeps the elements in memory order (it only moves
    size-1 axes): a Reshape then does the same."""
    moved = [a for a in perm if shape[a] != 1]
    return moved == sorted(moved)


class ToChannelsLast(Transformation):
    """See the module docstring. ``records`` lists what could only be done with Transposes."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict] = []

    # -- tensors --------------------------------------------------------------------------------

    def _shape(self, model: ModelWrapper, name: str) -> list[int] | None:
        shape = model.get_tensor_shape(name)
        return list(shape) if shape is not None else None

    def _is_spatial(self, name: str) -> bool:
        return name in self._logical

    def _fresh(self, model: ModelWrapper, base: str) -> str:
        name, k = base, 0
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def _logical_view(self, model: ModelWrapper, tensor: str, emit: list[NodeProto]) -> str:
        """A tensor holding ``tensor``'s value in its original (channels-first) layout."""
        if tensor in self._first_copies:
            return self._first_copies[tensor]
        logical = self._logical[tensor]
        rank = len(logical)
        out = self._fresh(model, f"{tensor}_cf")
        emit.append(
            helper.make_node("Transpose", [tensor], [out], name=self._fresh(model, f"{tensor}_to_cf"), perm=_inverse(physical_perm(rank)))
        )
        self._value_shapes[out] = logical
        self._first_copies[tensor] = out
        return out

    def _constant_for(self, model: ModelWrapper, name: str, rank: int) -> str:
        """A copy of broadcast constant ``name`` for an operand of rank ``rank`` in channels-last layout."""
        value = np.asarray(model.get_initializer(name))
        if value.ndim == 0 or value.size == 1:
            return name
        full = value.reshape([1] * (rank - value.ndim) + list(value.shape)) if value.ndim < rank else value
        if full.ndim != rank:
            return name
        moved = np.ascontiguousarray(full.transpose(physical_perm(rank)))
        if moved.shape[0] == 1:  # no batch axis: hls4ml broadcasts constants against the per-sample shape
            moved = moved[0]
        new = self._fresh(model, f"{name}_cl")
        model.set_initializer(new, moved.astype(value.dtype))
        return new

    # -- nodes ----------------------------------------------------------------------------------

    def _fallback(self, model: ModelWrapper, node: NodeProto, emit: list[NodeProto], why: str) -> None:
        """Run ``node`` in the original layout: Transposes to channels-first before, back after."""
        consumer_reshapes = node.op_type in ("Reshape", "Flatten")
        for i, tensor in enumerate(node.input):
            if tensor and self._is_spatial(tensor):
                logical = self._logical[tensor]
                if consumer_reshapes and _order_preserving(logical, physical_perm(len(logical))):
                    continue  # only size-1 axes move: the reshape reads the same element order
                node.input[i] = self._logical_view(model, tensor, emit)
        emit.append(node)
        for i, tensor in enumerate(node.output):
            if tensor and self._is_spatial(tensor):
                logical = self._logical[tensor]
                first = self._fresh(model, f"{tensor}_cf")
                node.output[i] = first
                self._value_shapes[first] = logical
                emit.append(
                    helper.make_node(
                        "Transpose", [first], [tensor], name=self._fresh(model, f"{tensor}_to_cl"), perm=physical_perm(len(logical))
                    )
                )
        if any(t and t in self._logical for t in list(node.input) + list(node.output)) or consumer_reshapes:
            self.records.append({"node": node.name, "op": node.op_type, "kept_channels_first": why})

    def _explicit_uneven_padding(self, model: ModelWrapper, node: NodeProto, emit: list[NodeProto], rank: int) -> None:
        """qonnx's channels-last Conv takes only symmetric padding (SAME padding with stride 2, as
        tf2onnx writes it, is not): an uneven one becomes an explicit zero Pad on the channels-last
        input (hls4ml's ZeroPadding layer) and the Conv pads nothing."""
        pads = list(_attr(node, "pads", []))
        spatial = rank - 2
        if len(pads) != 2 * spatial or pads[:spatial] == pads[spatial:]:
            return
        begin, end = pads[:spatial], pads[spatial:]
        physical_pads = [0, *begin, 0, 0, *end, 0]  # NHWC: batch, spatial axes, channels
        pads_name = self._fresh(model, f"{node.name or 'conv'}_pads")
        model.set_initializer(pads_name, np.asarray(physical_pads, dtype=np.int64))
        padded = self._fresh(model, f"{node.input[0]}_padded")
        logical = list(self._logical[node.input[0]])
        self._logical[padded] = [logical[0], logical[1], *[d + b + e for d, b, e in zip(logical[2:], begin, end)]]
        emit.append(
            helper.make_node(
                "Pad", [node.input[0], pads_name], [padded], name=self._fresh(model, f"{node.name or 'conv'}_pad"), mode="constant"
            )
        )
        node.input[0] = padded
        _set_attr(node, "pads", [0] * (2 * spatial))

    def _rewrite(self, model: ModelWrapper, node: NodeProto, emit: list[NodeProto]) -> None:
        op = node.op_type
        spatial_in = [t for t in node.input if t and self._is_spatial(t)]
        spatial_out = [t for t in node.output if t and self._is_spatial(t)]
        if not spatial_in and not spatial_out:
            emit.append(node)
            return
        rank = len(self._logical[(spatial_in or spatial_out)[0]])
        perm = physical_perm(rank)
        inverse = _inverse(perm)
        ranks_agree = all(len(self._logical[t]) == rank for t in spatial_in + spatial_out)
        if op == "MaxPool" and not all(_pad_pairs(node)):
            return self._fallback(model, node, emit, "qonnx's channels-last MaxPool takes only even padding")
        if op in CHANNELS_LAST_OPS and node.domain in ("", "ai.onnx") and spatial_in == [node.input[0]] and spatial_out == [node.output[0]]:
            node.domain = CHANNELS_LAST_DOMAIN
            if op == "Conv":
                weight = model.get_initializer(node.input[1])
                if weight is None:
                    node.domain = ""
                    return self._fallback(model, node, emit, "Conv weights are not constant")
                self._explicit_uneven_padding(model, node, emit, rank)
                new = self._fresh(model, f"{node.input[1]}_ohwi")
                model.set_initializer(new, np.ascontiguousarray(np.asarray(weight).transpose(physical_perm(weight.ndim))))
                node.input[1] = new
            emit.append(node)
            return
        if op == "GlobalMaxPool" and spatial_in == [node.input[0]]:
            kernel = self._logical[node.input[0]][2:]
            pool = helper.make_node(
                "MaxPool",
                [node.input[0]],
                list(node.output),
                name=node.name,
                domain=CHANNELS_LAST_DOMAIN,
                kernel_shape=kernel,
                strides=kernel,
                pads=[0] * (2 * len(kernel)),
            )
            emit.append(pool)
            return
        if op in ELEMENTWISE and ranks_agree and spatial_out:
            for i, tensor in enumerate(node.input):
                if not tensor or self._is_spatial(tensor):
                    continue
                if model.get_initializer(tensor) is None:
                    return self._fallback(model, node, emit, f"operand {tensor} is computed and not a feature map")
                if op in ("Quant", "BipolarQuant", "Trunc", "IntQuant") and i == 0:
                    continue
                node.input[i] = self._constant_for(model, tensor, rank)
            emit.append(node)
            return
        if op in AXIS_OPS and ranks_agree and len(spatial_out) == 1:
            if op != "Concat" and int(_opset(model)) < 13:
                return self._fallback(model, node, emit, f"opset < 13 {op} flattens from its axis")
            if any(not t or not self._is_spatial(t) for t in node.input):
                return self._fallback(model, node, emit, "an operand is not a feature map")
            axis = int(_attr(node, "axis", 1 if op == "Concat" else -1)) % rank
            _set_attr(node, "axis", inverse[axis])
            emit.append(node)
            return
        if op == "Transpose" and ranks_agree and spatial_in and spatial_out:
            q = list(_attr(node, "perm", list(reversed(range(rank)))))
            _set_attr(node, "perm", [inverse[q[perm[i]]] for i in range(rank)])
            emit.append(node)
            return
        if op == "Pad" and ranks_agree and spatial_out and len(node.input) in (2, 3) and model.get_initializer(node.input[1]) is not None:
            pads = np.asarray(model.get_initializer(node.input[1])).reshape(-1)
            if pads.size == 2 * rank:
                new = self._fresh(model, f"{node.input[1]}_cl")
                model.set_initializer(new, np.concatenate([pads[:rank][perm], pads[rank:][perm]]).astype(pads.dtype))
                node.input[1] = new
                emit.append(node)
                return
        if op == "Resize" and ranks_agree and spatial_out and node.input[0] in spatial_in:
            for index in (1, 2, 3):
                if len(node.input) > index and node.input[index]:
                    value = model.get_initializer(node.input[index])
                    if value is None:
                        return self._fallback(model, node, emit, "Resize parameters are computed")
                    value = np.asarray(value).reshape(-1)
                    if value.size == rank:
                        value = value[perm]
                    elif value.size == 2 * rank:
                        value = np.concatenate([value[:rank][perm], value[rank:][perm]])
                    elif value.size:
                        return self._fallback(model, node, emit, "Resize with axes")
                    new = self._fresh(model, f"{node.input[index]}_cl")
                    model.set_initializer(new, value)
                    node.input[index] = new
            emit.append(node)
            return
        if op == "Reshape" and spatial_in == [node.input[0]] and spatial_out and self._unit_axes_reshape(model, node):
            return
        self._fallback(model, node, emit, f"{op} is computed in the original layout")

    def _unit_axes_reshape(self, model: ModelWrapper, node: NodeProto) -> bool:
        """A Reshape between feature maps that only adds or removes size-1 axes (tf2onnx's Conv1D is
        ``Unsqueeze -> Conv2D -> Squeeze``) keeps the element order in channels-last layout too when
        its non-1 axes appear in the same order on both sides: then it is a Reshape to the
        channels-last output shape. Returns True if it was rewritten so (and emitted)."""
        logical_in, logical_out = self._logical[node.input[0]], self._logical[node.output[0]]
        big_in = [i for i, d in enumerate(logical_in) if d != 1]
        big_out = [i for i, d in enumerate(logical_out) if d != 1]
        if [logical_in[i] for i in big_in] != [logical_out[i] for i in big_out] or 0 in big_in or 0 in big_out:
            return False
        # k-th non-1 axis of the input is the k-th of the output: compare their order in channels-last layout
        perm_in, perm_out = physical_perm(len(logical_in)), physical_perm(len(logical_out))
        order_in = [big_in.index(a) for a in perm_in if a in big_in]
        order_out = [big_out.index(a) for a in perm_out if a in big_out]
        if order_in != order_out:
            return False
        physical_out = [logical_out[p] for p in perm_out]
        shape_name = self._fresh(model, f"{node.output[0]}_cl_shape")
        model.set_initializer(shape_name, np.asarray(physical_out, dtype=np.int64))
        node.input[1] = shape_name
        self._emit_target.append(node)
        return True

    # -- driver ---------------------------------------------------------------------------------

    def apply(self, model: ModelWrapper):
        graph = model.graph
        inits = {i.name for i in graph.initializer}
        self._names = {t for n in graph.node for t in list(n.input) + list(n.output)} | inits
        self._names |= {i.name for i in graph.input} | {o.name for o in graph.output}
        self._logical: dict[str, list[int]] = {}
        self._first_copies: dict[str, str] = {}
        self._value_shapes: dict[str, list[int]] = {}
        candidates = [i.name for i in graph.input] + [t for n in graph.node for t in n.output if t]
        for tensor in candidates:
            if tensor in inits:
                continue
            shape = self._shape(model, tensor)
            if shape is not None and len(shape) in (3, 4):
                self._logical[tensor] = shape
        if not self._logical:
            return model, False
        emit: list[NodeProto] = []
        self._emit_target = emit
        for node in list(graph.node):
            self._rewrite(model, node, emit)
        del graph.node[:]
        graph.node.extend(emit)
        # shapes: every feature map in its channels-last layout, the helpers channels-first
        physical = {t: [s[p] for p in physical_perm(len(s))] for t, s in self._logical.items()}
        stale = set(physical) | set(self._value_shapes)
        for vi in [vi for vi in graph.value_info if vi.name in stale]:  # keep the others: qonnx names tensors from value_info
            graph.value_info.remove(vi)
        for vi in list(graph.input) + list(graph.output):
            if vi.name in physical:
                model.set_tensor_shape(vi.name, physical[vi.name])
        for tensor, shape in list(physical.items()) + list(self._value_shapes.items()):
            if not any(vi.name == tensor for vi in list(graph.input) + list(graph.output)):
                model.set_tensor_shape(tensor, shape)
        for imp in list(model.model.opset_import):
            if imp.domain == CHANNELS_LAST_DOMAIN:
                model.model.opset_import.remove(imp)
        # qonnx executes channels-last ops as the standard op at this domain's version (as its own conversion sets it)
        model.model.opset_import.append(helper.make_opsetid(CHANNELS_LAST_DOMAIN, _opset(model)))
        model = model.transform(InferShapes())
        return model, False


def _pad_pairs(node: NodeProto) -> list[bool]:
    """For each spatial axis, whether its begin and end padding are equal."""
    pads = list(_attr(node, "pads", []))
    half = len(pads) // 2
    return [pads[i] == pads[i + half] for i in range(half)]


def _opset(model: ModelWrapper) -> int:
    for imp in model.model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 13


def fold_flatten_transposes(model: ModelWrapper) -> int:
    """``Transpose -> Flatten/Reshape(rank 2) -> MatMul(W)`` becomes ``Flatten -> MatMul(W')`` with W's
    rows permuted, so the channels-last feature map is read directly (the conv -> dense boundary,
    where the model flattens in its own layout). Returns how many were folded."""
    folded = 0
    for node in list(model.graph.node):
        if node.op_type != "Transpose":
            continue
        perm = list(_attr(node, "perm", []))
        shape = model.get_tensor_shape(node.input[0])
        if shape is None or len(shape) < 3 or len(perm) != len(shape) or perm[0] != 0:
            continue
        consumers = model.find_consumers(node.output[0]) or []
        if len(consumers) != 1 or consumers[0].op_type not in ("Flatten", "Reshape"):
            continue
        flat = consumers[0]
        flat_shape = model.get_tensor_shape(flat.output[0])
        readers = model.find_consumers(flat.output[0]) or []
        if (
            flat_shape is None
            or len(flat_shape) != 2
            or len(readers) != 1
            or readers[0].op_type != "MatMul"
            or readers[0].input[0] != flat.output[0]
        ):
            continue
        matmul = readers[0]
        weight_name = matmul.input[1]
        holder = model.find_producer(weight_name)
        if holder is not None and holder.op_type in ("Quant", "BipolarQuant") and model.get_initializer(holder.input[0]) is not None:
            per_row = [model.get_initializer(i) for i in holder.input[1:3]]
            if any(p is not None and np.ndim(p) == 2 and np.shape(p)[0] != 1 for p in per_row):
                continue  # per-row quantizer parameters would have to move too
            weight_name = holder.input[0]
        weight = model.get_initializer(weight_name)
        if weight is None or weight.ndim != 2:
            continue
        transposed = [shape[p] for p in perm]  # the shape the Flatten reads
        if int(np.prod(transposed[1:])) != weight.shape[0]:
            continue
        if holder is not None and weight_name == holder.input[0] and len(model.find_consumers(holder.output[0]) or []) != 1:
            continue  # a weight quantizer other layers read too
        # flatten(transpose(x, perm)) @ W == flatten(x) @ W[order]: element j of flatten(x) is row order[j]
        rows = np.arange(weight.shape[0]).reshape(transposed[1:])
        order = rows.transpose([p - 1 for p in _inverse(perm)[1:]]).reshape(-1)
        new = model.make_new_valueinfo_name()
        model.set_initializer(new, np.ascontiguousarray(weight[order]))
        if holder is not None and weight_name == holder.input[0]:
            holder.input[0] = new
        else:
            matmul.input[1] = new
        flat.input[0] = node.input[0]
        model.graph.node.remove(node)
        folded += 1
    return folded
