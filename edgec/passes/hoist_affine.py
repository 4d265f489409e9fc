"""Move a constant affine op above a Squeeze: ``Squeeze -> Add/Mul(c)`` becomes ``Add/Mul(c') -> Squeeze``.

tf2onnx writes a Keras Conv1D as ``Unsqueeze -> Conv -> Squeeze`` with the bias add and the
BatchNorm's scale and shift after the Squeeze. Folding BatchNorm into the layer before post-training
quantization (so its scale is quantized with the weights, and the layer's accumulator is exact)
needs them next to the Conv. ``op(squeeze(x), c) == squeeze(op(x, c'))`` with ``c'`` the constant
brought to the output's rank and given the squeezed axes back as size-1 axes.
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

from edgec.passes.rewrite_for_hls4ml import MISSING, constant_parameter

AFFINE_OPS = ("Add", "Sub", "Mul", "Div")


def _squeezed_axes(model: ModelWrapper, squeeze, rank_in: int) -> list[int] | None:
    axes = constant_parameter(model, squeeze, 1, "axes")
    if axes is None or axes is MISSING:  # computed, or "every unit axis": not worth following
        return None
    return sorted(int(a) % rank_in for a in np.asarray(axes).reshape(-1))


class HoistAffineAboveSqueeze(Transformation):
    """See the module docstring; ``records`` lists each op moved."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict] = []

    def apply(self, model: ModelWrapper):
        graph_outputs = {o.name for o in model.graph.output}
        for squeeze in list(model.graph.node):
            if squeeze.op_type != "Squeeze" or squeeze.output[0] in graph_outputs:
                continue
            consumers = model.find_consumers(squeeze.output[0]) or []
            if len(consumers) != 1 or consumers[0].op_type not in AFFINE_OPS or consumers[0].input[0] != squeeze.output[0]:
                continue
            op = consumers[0]
            if len(op.input) != 2:
                continue
            const = model.get_initializer(op.input[1])
            in_shape = model.get_tensor_shape(squeeze.input[0])
            out_shape = model.get_tensor_shape(squeeze.output[0])
            if const is None or in_shape is None or out_shape is None:
                continue
            axes = _squeezed_axes(model, squeeze, len(in_shape))
            if axes is None or np.ndim(const) > len(out_shape):
                continue
            lifted = np.asarray(const).reshape((1,) * (len(out_shape) - np.ndim(const)) + tuple(np.shape(const)))
            for axis in axes:
                lifted = np.expand_dims(lifted, axis)
            between = model.make_new_valueinfo_name()
            constant = model.make_new_valueinfo_name()
            model.set_initializer(constant, lifted.astype(np.asarray(const).dtype))
            model.set_tensor_shape(between, list(in_shape))
            moved = helper.make_node(op.op_type, [squeeze.input[0], constant], [between], name=op.name)
            squeeze.input[0] = between
            final = op.output[0]
            squeeze_out = squeeze.output[0]
            squeeze.output[0] = final
            nodes = list(model.graph.node)
            index = nodes.index(squeeze)
            nodes.remove(op)
            nodes.insert(index, moved)
            del model.graph.node[:]
            model.graph.node.extend(nodes)
            # the old Squeeze output is gone; its recorded shape would now be stale
            for vi in list(model.graph.value_info):
                if vi.name == squeeze_out:
                    model.graph.value_info.remove(vi)
            self.records.append(
                {
                    "node": op.name,
                    "rewrite": f"{op.op_type} moved above {squeeze.name} (constant {list(np.shape(const))} -> {list(lifted.shape)})",
                }
            )
            return model, True
        return model, False
