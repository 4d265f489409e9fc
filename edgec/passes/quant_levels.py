"""Let float-scale activation quantizers carry integer levels, moving the scale into the weights.

A Brevitas export quantizes activations with learned float scales: ``q = s * clip(round(x / s))``.
Fixed point cannot hold ``s * level`` exactly, so the next layer's arithmetic drifts. When every
consumer of such a quantizer is a MatMul/Conv whose weights come from a constant quantizer, the
quantizer can emit the integer level itself (``Mul(1/s)`` before it, unit scale), and each consumer
takes ``s`` into its weight quantizer: ``Quant(s*W; s*s_w) = s * Quant(W; s_w)``, so the consumer
computes exactly the same values. The ``Mul(1/s)`` then belongs to the producing layer's affine
chain, which the exact requantization pass folds away; on a graph input it stays as the input
scaling.
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

from edgec.passes.graph_utils import is_power_of_two

# Ops between the quantizer and its consumers that commute with a positive scale s: max(s*a, s*b)
# = s*max(a, b), and reshapes only move values.
PASS_THROUGH = ("Reshape", "Flatten", "Transpose", "MaxPool")


def _linear_consumers(model: ModelWrapper, tensor: str) -> list | None:
    """MatMul/Conv nodes fed by ``tensor`` (through reshapes), or None if anything else is."""
    if tensor in {o.name for o in model.graph.output}:
        return None
    found = []
    for consumer in model.find_consumers(tensor) or []:
        if consumer.op_type in PASS_THROUGH and consumer.input[0] == tensor:
            deeper = _linear_consumers(model, consumer.output[0])
            if deeper is None:
                return None
            found += deeper
        elif consumer.op_type in ("MatMul", "Conv") and consumer.input[0] == tensor and len(consumer.input) >= 2:
            weight_q = model.find_producer(consumer.input[1])
            if weight_q is None or weight_q.op_type not in ("Quant", "BipolarQuant"):
                return None
            if len(model.find_consumers(weight_q.output[0]) or []) != 1:
                return None
            if any(model.get_initializer(i) is None for i in weight_q.input if i):
                return None
            found.append(consumer)
        else:
            return None
    return found or None


class QuantizerScalesToLevels(Transformation):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict] = []
        self._done: set[str] = set()

    def apply(self, model: ModelWrapper):
        for node in list(model.graph.node):
            if node.op_type != "Quant" or node.name in self._done or model.get_initializer(node.input[0]) is not None:
                continue
            scale = model.get_initializer(node.input[1])
            zeropt = model.get_initializer(node.input[2])
            if scale is None or zeropt is None or np.asarray(scale).size != 1 or np.any(zeropt != 0):
                continue
            s = float(np.asarray(scale).reshape(-1)[0])
            if s <= 0 or is_power_of_two(s):
                continue
            consumers = _linear_consumers(model, node.output[0])
            if consumers is None:
                continue
            for layer in consumers:
                weight_q = model.find_producer(layer.input[1])
                raw_name = model.make_new_valueinfo_name()
                model.set_initializer(raw_name, (model.get_initializer(weight_q.input[0]).astype(np.float64) * s).astype(np.float32))
                w_scale_name = model.make_new_valueinfo_name()
                model.set_initializer(
                    w_scale_name, (np.asarray(model.get_initializer(weight_q.input[1]), dtype=np.float64) * s).astype(np.float32)
                )
                weight_q.input[0], weight_q.input[1] = raw_name, w_scale_name
            inv_name, unit_name, scaled = (model.make_new_valueinfo_name() for _ in range(3))
            model.set_initializer(inv_name, np.array(1.0 / s, dtype=np.float32))
            model.set_initializer(unit_name, np.array(1.0, dtype=np.float32))
            mul = helper.make_node("Mul", [node.input[0], inv_name], [scaled], name=f"{node.name}_to_levels")
            model.graph.node.insert(list(model.graph.node).index(node), mul)
            node.input[0], node.input[1] = scaled, unit_name
            self._done.add(node.name)
            self.records.append({"quantizer": node.name, "scale": s, "moved_into": [c.name for c in consumers]})
            return model, True
        return model, False
