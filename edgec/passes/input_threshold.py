"""Fold the input preprocessing of a BNN into the sign's threshold (FINN's streamlining, for hls4ml).

FINN-style binary networks start with ``x -> Mul(a) -> Add(b) -> BipolarQuant`` (``x * 2 - 1`` then
sign). ``sign(a * x + b)`` is ``+1`` exactly when ``x >= t`` with ``t = -b / a`` (for ``a > 0``), so the
whole chain is one comparison per input against a constant. This pass replaces the chain by
``Sub(x, t) -> BipolarQuant``, which hls4ml fuses into its ``BatchNormalizationQuantizedTanh``
(``normalize_binary_tanh``: one comparator per element, no multiplier, no adder). The backend then
sets the thresholds on the input's own fixed-point grid, rounded up (``x >= t`` <=> ``x >= ceil(t)``
for ``x`` on the grid), typed like the input as hls4ml's function signature requires. The cost
model counts the pair as the quantizer's comparison alone.
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

THRESHOLD_MARK = "edgec:input-threshold"
AFFINE = ("Mul", "Div", "Add", "Sub")


class FoldInputAffineIntoThreshold(Transformation):
    """See the module docstring; ``records`` lists each folded chain."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict] = []

    def apply(self, model: ModelWrapper):
        source = model.graph.input[0].name
        tensor, chain = source, []
        scale, shift = np.float64(1.0), np.float64(0.0)
        outputs = {o.name for o in model.graph.output}
        while True:
            consumers = model.find_consumers(tensor) or []
            if len(consumers) != 1 or tensor in outputs:
                return model, False
            node = consumers[0]
            if node.op_type not in AFFINE:
                break
            others = [i for i in node.input if i != tensor]
            const = model.get_initializer(others[0]) if len(others) == 1 else None
            if const is None or list(node.input).count(tensor) != 1:
                return model, False
            const = np.asarray(const, dtype=np.float64)
            first = node.input[0] == tensor
            if node.op_type == "Mul":
                scale, shift = scale * const, shift * const
            elif node.op_type == "Div" and first:
                scale, shift = scale / const, shift / const
            elif node.op_type == "Add":
                shift = shift + const
            elif node.op_type == "Sub":
                scale, shift = (scale, shift - const) if first else (-scale, const - shift)
            else:  # c / x is not affine
                return model, False
            chain.append(node)
            tensor = node.output[0]
        quant = node
        if not chain or quant.op_type != "BipolarQuant":
            return model, False
        quant_scale = model.get_initializer(quant.input[1])
        if quant_scale is None or np.any(np.asarray(quant_scale) <= 0):
            return model, False
        scale, shift = np.broadcast_arrays(scale, shift)
        if np.any(scale <= 0) or not np.all(np.isfinite(scale)) or not np.all(np.isfinite(shift)):
            return model, False  # a falling edge (x <= t) is not what hls4ml's comparator computes
        threshold = (-shift / scale).astype(np.float32)
        if threshold.size > 1 and np.all(threshold == threshold.reshape(-1)[0]):
            threshold = threshold.reshape(-1)[:1].reshape(())
        while threshold.ndim > 0 and threshold.shape[0] == 1 and threshold.size > 1:
            threshold = threshold[0]  # no batch axis: hls4ml broadcasts constants over one sample
        name = model.make_new_valueinfo_name()
        model.set_initializer(name, np.ascontiguousarray(threshold))
        sub = helper.make_node(
            "Sub", [source, name], [chain[-1].output[0]], name=f"{chain[0].name or 'input'}_threshold", doc_string=THRESHOLD_MARK
        )
        index = list(model.graph.node).index(chain[0])
        for node in chain:
            model.graph.node.remove(node)
        model.graph.node.insert(index, sub)
        self.records.append(
            {
                "quantizer": quant.name,
                "replaced": [n.op_type for n in chain],
                "threshold": float(threshold.reshape(-1)[0])
                if threshold.size == 1 or np.all(threshold == threshold.reshape(-1)[0])
                else "per element",
            }
        )
        return model, False
