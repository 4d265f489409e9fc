"""Small graph helpers shared by the passes."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto
from qonnx.core.modelwrapper import ModelWrapper


def single_consumer(model: ModelWrapper, tensor: str) -> NodeProto | None:
    """The only node consuming ``tensor``, or None if zero or several do (or it is a graph output)."""
    if tensor in {o.name for o in model.graph.output}:
        return None
    consumers = model.find_consumers(tensor) or []
    return consumers[0] if len(consumers) == 1 else None


def constant_operand(model: ModelWrapper, node: NodeProto, data_input: str) -> np.ndarray | None:
    """For a binary elementwise node, the constant operand that is not ``data_input``."""
    others = [i for i in node.input if i != data_input]
    if len(others) != 1 or list(node.input).count(data_input) != 1:
        return None
    return model.get_initializer(others[0])


def per_channel(value: np.ndarray, channels: int, channel_axis: int, rank: int) -> np.ndarray | None:
    """Broadcast a constant to one value per channel, or None if it varies along another axis."""
    value = np.asarray(value, dtype=np.float64)
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    for axis, size in enumerate(shape):
        if size != 1 and axis != channel_axis % rank:
            return None
    try:
        full = np.broadcast_to(value.reshape(shape), tuple(channels if a == channel_axis % rank else 1 for a in range(rank)))
    except ValueError:
        return None
    return full.reshape(-1).copy()


def is_power_of_two(value: float) -> bool:
    mantissa, _ = np.frexp(float(value))
    return value > 0 and mantissa == 0.5


def remove_nodes(model: ModelWrapper, nodes: list[NodeProto]) -> None:
    for node in nodes:
        model.graph.node.remove(node)


def bypass(model: ModelWrapper, node) -> bool:
    """Remove a node whose output equals its first input, rewiring its readers (when it produces a
    graph output, its producer writes that output instead). False if it must stay (it reads the
    graph input or another graph output directly)."""
    outputs = {o.name for o in model.graph.output}
    src, dst = node.input[0], node.output[0]
    if dst in outputs:
        producer = model.find_producer(src)
        if producer is None or src in outputs:
            return False
        producer.output[list(producer.output).index(src)] = dst
        for other in model.graph.node:
            for i, name in enumerate(other.input):
                if name == src:
                    other.input[i] = dst
    else:
        for other in model.graph.node:
            for i, name in enumerate(other.input):
                if name == dst:
                    other.input[i] = src
    model.graph.node.remove(node)
    return True
