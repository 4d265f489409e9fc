"""Split activation quantizers whose scale is not a power of two, or whose zero point is not 0,
into integer levels and a rescale.

``Quant(x, s, z, b) = s * (Quant(x / s + z, 1, 0, b) - z)`` for an integer zero point ``z`` (rounding
``x / s + z`` equals rounding ``x / s`` then adding ``z``, ties included). hls4ml ignores a Quant's
zero point, and lowers only power-of-two scales as types. The exact requantization pass lowers most
quantizers exactly; the ones it leaves (a float scale before a Concat, logits, a zero point that
is not 0) would reach hls4ml as Quant layers with a float scale. hls4ml turns those into an
``ApplyAlpha`` rescale that its BatchNorm-fusion pass then multiplies into the preceding Conv's
weights with the feature map's full shape (a crash for channels-last convolutions, e.g.
"operands could not be broadcast together with shapes (8,8,8) (3,3,1,8)"). Here the split is
explicit: ``Mul(1/s) -> Add(z) -> Quant(scale 1, zero point 0) -> Add(-z) -> Mul(s)`` (the steps
that are identities left out). The ``Mul(1/s)`` folds into the layer before it
(FoldAffineIntoLinear) and the ``Mul(s)`` is an elementwise scale hls4ml lowers as such. The float
product ``level * s`` is then computed in fixed point (rounded once), so these layers are close,
not exact: the build's verification measures how close.
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

from edgec.passes.graph_utils import is_power_of_two


class SplitFloatScaleQuantizers(Transformation):
    """See the module docstring; ``records`` names each split quantizer."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict] = []

    def apply(self, model: ModelWrapper):
        for node in list(model.graph.node):
            if node.op_type != "Quant" or model.get_initializer(node.input[0]) is not None:
                continue
            scale = model.get_initializer(node.input[1])
            if scale is None:
                continue
            zeropt = model.get_initializer(node.input[2])
            if zeropt is None:
                continue
            scale = np.asarray(scale, dtype=np.float32)
            zeropt = np.asarray(zeropt, dtype=np.float32)
            float_scale = not all(is_power_of_two(float(v)) for v in scale.reshape(-1))
            if scale.size == 0 or np.any(scale <= 0) or np.any(zeropt != np.round(zeropt)) or (not float_scale and not np.any(zeropt)):
                continue
            producer = model.find_producer(node.input[0])
            if producer is None or producer.op_type != "Conv":
                continue  # hls4ml's own lowering of a float-scale Quant after a Dense is as close; only its Conv fusion breaks
            name = node.name or "quant"
            source, target = node.input[0], node.output[0]
            shape = model.get_tensor_shape(target)
            before: list = []
            after: list = []
            tensor = source

            def step(op: str, value: np.ndarray, label: str, chain: list, current: str, name: str = name, shape=shape) -> str:
                const, out = model.make_new_valueinfo_name(), model.make_new_valueinfo_name()
                model.set_initializer(const, np.asarray(value, dtype=np.float32))
                chain.append(helper.make_node(op, [current, const], [out], name=f"{name}_{label}"))
                if shape is not None:
                    model.set_tensor_shape(out, shape)
                return out

            if float_scale:
                tensor = step("Mul", np.float32(1.0) / scale, "to_levels", before, tensor)
            if np.any(zeropt):
                tensor = step("Add", zeropt, "zero_point", before, tensor)
            node.input[0] = tensor
            unit, zero = model.make_new_valueinfo_name(), model.make_new_valueinfo_name()
            model.set_initializer(unit, np.ones_like(scale, shape=()) if scale.size == 1 or float_scale else scale)
            model.set_initializer(zero, np.zeros((), dtype=np.float32))
            if not float_scale:  # a power-of-two scale stays in the quantizer, only the zero point moves out
                model.set_initializer(unit, scale)
            node.input[1], node.input[2] = unit, zero
            levels = model.make_new_valueinfo_name()
            node.output[0] = levels
            if shape is not None:
                model.set_tensor_shape(levels, shape)
            tensor = levels
            if np.any(zeropt):
                tensor = step("Add", -zeropt * (1.0 if float_scale else scale), "unshift", after, tensor)
            if float_scale:
                tensor = step("Mul", scale, "rescale", after, tensor)
            after[-1].output[0] = target
            index = list(model.graph.node).index(node)
            for offset, new in enumerate(before):
                model.graph.node.insert(index + offset, new)
            index = list(model.graph.node).index(node)
            for offset, new in enumerate(after):
                model.graph.node.insert(index + 1 + offset, new)
            self.records.append(
                {
                    "quantizer": name,
                    "scale": float(scale.reshape(-1)[0]) if scale.size == 1 else "per channel",
                    "zero_point": float(zeropt.reshape(-1)[0]) if zeropt.size == 1 else "per channel",
                }
            )
        return model, False
