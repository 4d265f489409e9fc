"""Fold per-channel affine ops (BatchNorm-as-Mul/Add, Sub, Div) into the preceding MatMul/Conv.

This is BatchNorm folding "where legal": only when the layer's output feeds the chain alone, the
weights are constant, and every constant varies along the output-channel axis only. The result is
``MatMul(W') -> Add(b')`` (or ``Conv(W', b')``), which hls4ml lowers to one Dense/Conv layer.
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

from edgec.passes.graph_utils import constant_operand, per_channel, remove_nodes, single_consumer

AFFINE_OPS = ("Add", "Sub", "Mul", "Div")


def linear_channel_info(model: ModelWrapper, node, require_constant: bool = True) -> tuple[int, int, int] | None:
    """(channels, channel axis, output rank) of a MatMul/Conv output (by default: constant weights)."""
    out_shape = model.get_tensor_shape(node.output[0])
    if out_shape is None or (require_constant and model.get_initializer(node.input[1]) is None):
        return None
    if node.op_type == "MatMul":
        return out_shape[-1], len(out_shape) - 1, len(out_shape)
    if node.op_type == "Conv":
        return out_shape[1], 1, len(out_shape)
    return None


def collect_affine_chain(model: ModelWrapper, start_tensor: str, channels: int, axis: int, rank: int):
    """Follow single-consumer Add/Sub/Mul/Div nodes with per-channel constants from ``start_tensor``.

    Returns (nodes, scale, shift, end_tensor) where the chain computes ``x * scale + shift``.
    """
    scale = np.ones(channels)
    shift = np.zeros(channels)
    nodes = []
    tensor = start_tensor
    while True:
        nxt = single_consumer(model, tensor)
        if nxt is None or nxt.op_type not in AFFINE_OPS:
            break
        const = constant_operand(model, nxt, tensor)
        if const is None:
            break
        vec = per_channel(const, channels, axis, rank)
        if vec is None:
            break
        if nxt.op_type == "Add":
            shift = shift + vec
        elif nxt.op_type == "Sub":
            if nxt.input[0] == tensor:
                shift = shift - vec
            else:  # c - x
                scale, shift = -scale, vec - shift
        elif nxt.op_type == "Mul":
            scale, shift = scale * vec, shift * vec
        elif nxt.op_type == "Div":
            if nxt.input[0] != tensor or np.any(vec == 0):
                break
            scale, shift = scale / vec, shift / vec
        nodes.append(nxt)
        tensor = nxt.output[0]
    return nodes, scale, shift, tensor


class FoldAffineIntoLinear(Transformation):
    """Fold trailing per-channel affine chains into MatMul/Conv weights and a bias."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict] = []

    def apply(self, model: ModelWrapper):
        for node in list(model.graph.node):
            if node.op_type not in ("MatMul", "Conv"):
                continue
            info = linear_channel_info(model, node)
            if info is None:
                continue
            channels, axis, rank = info
            chain, scale, shift, end = collect_affine_chain(model, node.output[0], channels, axis, rank)
            # A lone bias Add is already the canonical form.
            if not chain or (len(chain) == 1 and chain[0].op_type == "Add" and node.op_type == "MatMul"):
                continue
            weight = model.get_initializer(node.input[1]).astype(np.float64)
            if node.op_type == "MatMul":
                new_w = weight * scale.reshape(1, -1)
                bias = shift
                model.set_initializer(node.input[1], new_w.astype(np.float32))
                bias_name = model.make_new_valueinfo_name()
                model.set_initializer(bias_name, bias.astype(np.float32))
                mm_out = node.output[0]
                add = helper.make_node("Add", [mm_out, bias_name], [end], name=f"{node.name}_bias")
                remove_nodes(model, chain)
                model.graph.node.insert(list(model.graph.node).index(node) + 1, add)
            else:
                new_w = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
                old_b = model.get_initializer(node.input[2]).astype(np.float64) if len(node.input) > 2 else np.zeros(channels)
                bias_name = model.make_new_valueinfo_name()
                model.set_initializer(bias_name, (old_b * scale + shift).astype(np.float32))
                model.set_initializer(node.input[1], new_w.astype(np.float32))
                if len(node.input) > 2:
                    node.input[2] = bias_name
                else:
                    node.input.append(bias_name)
                remove_nodes(model, chain)
                node.output[0] = end
            self.records.append({"layer": node.name, "folded": [n.op_type for n in chain]})
            return model, True
        return model, False
