"""Tidy the layout operations exporters and layout conversions leave between layers.

- a Reshape to the same shape goes; a Transpose that only moves size-1 axes becomes the Reshape it
  is, and consecutive Reshapes become one;
- a Transpose that every (non-constant) input of an elementwise op or Concat shares moves below
  it (Keras graphs transpose each branch back to NHWC for a Concatenate and again after it);
- consecutive Transposes become one, and an identity Transpose goes.
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from qonnx.core.modelwrapper import ModelWrapper

from edgec.passes.graph_utils import bypass

# Ops through which a Transpose shared by all inputs can move (elementwise, and Concat with its axis mapped).
SINKABLE = {
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Elu",
    "Selu",
    "Softsign",
    "Softplus",
    "HardSigmoid",
    "Identity",
    "Abs",
    "Neg",
    "Clip",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Max",
    "Min",
    "Sum",
    "Quant",
    "BipolarQuant",
    "Trunc",
    "Concat",
}


def reshape_as_permutation(in_shape: list[int] | None, out_shape: list[int] | None) -> list[int] | None:
    """The transpose a Reshape performs when it only moves size-1 axes (tf2onnx writes NHWC -> NCHW
    of a one-channel image as ``Reshape([1, 8, 8, 1] -> [1, 1, 8, 8])``), or None."""
    if not in_shape or not out_shape or len(in_shape) != len(out_shape) or list(in_shape) == list(out_shape):
        return None
    big_in = [i for i, d in enumerate(in_shape) if d != 1]
    big_out = [i for i, d in enumerate(out_shape) if d != 1]
    if [in_shape[i] for i in big_in] != [out_shape[i] for i in big_out]:
        return None
    ones_in = [i for i, d in enumerate(in_shape) if d == 1]
    perm: list[int] = [0] * len(out_shape)
    big, ones = iter(big_in), iter(ones_in)
    for axis, dim in enumerate(out_shape):
        perm[axis] = next(big) if dim != 1 else next(ones)
    return perm if perm[0] == 0 else None  # the batch axis stays first (the layout conversion assumes it)


def _perm_of(node) -> list[int] | None:
    perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
    return perm[0] if perm else None


def tidy_layout(model: ModelWrapper) -> int:
    """Simplify what exporters and layout conversions leave between layers: a Reshape to the same
    shape goes, a Reshape that only moves size-1 axes becomes the Transpose it is, consecutive
    Transposes become one, and an identity Transpose goes. Returns how many nodes changed."""
    changed = 0
    progress = True
    while progress:
        progress = False
        if sink_transposes(model) or _merge_reshapes(model):
            changed, progress = changed + 1, True
            continue
        for node in list(model.graph.node):
            if node.op_type == "Reshape" and len(node.input) > 1:
                in_shape, out_shape = model.get_tensor_shape(node.input[0]), model.get_tensor_shape(node.output[0])
                if in_shape is not None and list(in_shape) == list(out_shape or []):
                    if bypass(model, node):
                        changed, progress = changed + 1, True
                        break
                    continue
            if node.op_type == "Transpose":
                perm = _perm_of(node)
                in_shape = model.get_tensor_shape(node.input[0])
                if perm is not None and in_shape is not None and perm != sorted(perm) and _only_unit_axes_move(in_shape, perm):
                    # moves only size-1 axes: the same element order as a Reshape, which merges with its neighbours
                    shape_name = model.make_new_valueinfo_name()
                    model.set_initializer(shape_name, np.asarray([in_shape[p] for p in perm], dtype=np.int64))
                    node.op_type = "Reshape"
                    del node.attribute[:]
                    node.input.append(shape_name)
                    changed, progress = changed + 1, True
                    break
                if perm is not None and perm == sorted(perm):
                    if bypass(model, node):
                        changed, progress = changed + 1, True
                        break
                    continue
                producer = model.find_producer(node.input[0])
                if (
                    perm is not None
                    and producer is not None
                    and producer.op_type == "Transpose"
                    and _perm_of(producer) is not None
                    and len(model.find_consumers(producer.output[0]) or []) == 1
                    and producer.output[0] not in {o.name for o in model.graph.output}
                ):
                    first = _perm_of(producer)
                    combined = [first[p] for p in perm]
                    node.input[0] = producer.input[0]
                    for attr in node.attribute:
                        if attr.name == "perm":
                            del attr.ints[:]
                            attr.ints.extend(combined)
                    model.graph.node.remove(producer)
                    changed, progress = changed + 1, True
                    break
    return changed


def _only_unit_axes_move(shape: list[int], perm: list[int]) -> bool:
    moved = [a for a in perm if shape[a] != 1]
    return moved == sorted(moved)


def _merge_reshapes(model: ModelWrapper) -> bool:
    """Reshape -> Reshape (the first read by nobody else) becomes one Reshape to the final shape."""
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        producer = model.find_producer(node.input[0])
        if (
            producer is None
            or producer.op_type != "Reshape"
            or producer.output[0] in outputs
            or len(model.find_consumers(producer.output[0]) or []) != 1
        ):
            continue
        out_shape = model.get_tensor_shape(node.output[0])
        if out_shape is None:
            continue
        shape_name = model.make_new_valueinfo_name()
        model.set_initializer(shape_name, np.asarray(out_shape, dtype=np.int64))
        node.input[0] = producer.input[0]
        node.input[1] = shape_name
        model.graph.node.remove(producer)
        return True
    return False


def _inverse(perm: list[int]) -> list[int]:
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return inverse


def sink_transposes(model: ModelWrapper) -> bool:
    """Move one Transpose shared by every computed input of an elementwise op or Concat below it.
    ``op(T_a(x), T_a(y), c) = T_a(op(x, y, T_a^-1(c)))``; Concat's axis k becomes ``a[k]``."""
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type not in SINKABLE or len(node.output) != 1 or node.output[0] in outputs:
            continue
        data_inputs = [t for t in node.input[:1]] if node.op_type in ("Quant", "BipolarQuant", "Trunc") else list(node.input)
        producers = []
        for tensor in data_inputs:
            if not tensor or model.get_initializer(tensor) is not None:
                continue
            producer = model.find_producer(tensor)
            if producer is None or producer.op_type != "Transpose" or len(model.find_consumers(tensor) or []) != 1:
                producers = []
                break
            producers.append(producer)
        if not producers:
            continue
        perm = _perm_of(producers[0])
        if perm is None or any(_perm_of(p) != perm for p in producers):
            continue
        rank = len(perm)
        inverse = _inverse(perm)
        constants_ok = True
        new_constants = {}
        for index, tensor in enumerate(node.input):
            value = model.get_initializer(tensor) if tensor else None
            if value is None or np.size(value) == 1:
                continue
            if node.op_type in ("Quant", "BipolarQuant", "Trunc") and index >= 3:
                continue  # bit widths and rounding constants are scalars by definition
            value = np.asarray(value)
            if value.ndim > rank:
                constants_ok = False
                break
            full = value.reshape([1] * (rank - value.ndim) + list(value.shape))
            new_constants[index] = np.ascontiguousarray(full.transpose(inverse))
        if not constants_ok:
            continue
        for index, value in new_constants.items():
            name = model.make_new_valueinfo_name()
            model.set_initializer(name, value.astype(np.asarray(model.get_initializer(node.input[index])).dtype))
            node.input[index] = name
        for producer in producers:
            node.input[list(node.input).index(producer.output[0])] = producer.input[0]
            model.graph.node.remove(producer)
        if node.op_type == "Concat":
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % rank
            for a in node.attribute:
                if a.name == "axis":
                    a.i = perm[axis]
        out = node.output[0]
        out_shape = model.get_tensor_shape(out)
        inner = model.make_new_valueinfo_name()
        node.output[0] = inner
        if out_shape is not None:
            model.set_tensor_shape(inner, [out_shape[i] for i in inverse])
        index = list(model.graph.node).index(node)
        model.graph.node.insert(
            index + 1, helper.make_node("Transpose", [inner], [out], name=f"{node.name or node.op_type}_sunk_transpose", perm=perm)
        )
        return True
    return False
