"""Quantize before clipping: ``Clip(lo, hi) -> Quant`` becomes ``Quant -> Clip(lo, hi)``.

ReLU6 and Hardtanh are Clips, and a quantized model puts the activation quantizer after them. In
hls4ml a Clip is ``lo + Relu(x - lo) - Relu(x - hi)`` (edgec.passes.rewrite_for_hls4ml) on the
layer's wide accumulator, whose intermediate results need types of their own: rounded there and
then rounded again by the quantizer, the design misses the quantized reference by an LSB or more.

The two orders are the same function when the bounds lie on the quantizer's grid (``lo / scale``
and ``hi / scale`` integers, zero point 0) and the grid reaches into ``[lo, hi]``: rounding is
monotone and keeps integers, so ``round(clip(x, lo, hi) / s) == clip(round(x / s), lo / s, hi / s)``,
and clamping to the quantizer's range and to ``[lo, hi]`` in either order is clamping to their
intersection. After the swap the layer feeds its quantizer directly (edgec's exact requantization
applies) and the Clip runs on grid values its types hold exactly.
"""

from __future__ import annotations

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

from edgec.passes.rewrite_for_hls4ml import _attr, clip_bounds

QUANT_DOMAINS = ("qonnx.custom_op.general", "onnx.brevitas", "finn.custom_op.general")


def _quant_grid(model: ModelWrapper, quant) -> tuple[float, float, float] | None:
    """(scale, lowest, highest) integer level of a per-tensor, zero-point-0 QONNX Quant."""
    if quant.op_type != "Quant" or quant.domain not in QUANT_DOMAINS or len(quant.input) < 4:
        return None
    scale, zero, bits = (model.get_initializer(name) for name in quant.input[1:4])
    if scale is None or zero is None or bits is None or np.size(scale) != 1 or np.size(bits) != 1 or np.any(zero != 0):
        return None
    scale, bits = float(np.asarray(scale).reshape(-1)[0]), float(np.asarray(bits).reshape(-1)[0])
    if scale <= 0 or bits != int(bits) or bits < 2:
        return None
    signed, narrow = int(_attr(quant, "signed") or 0), int(_attr(quant, "narrow") or 0)
    if signed:
        low, high = -(2 ** (bits - 1)) + narrow, 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2**bits - 1 - narrow
    return scale, float(low), float(high)


def _on_grid(value: float, scale: float) -> bool:
    level = value / scale
    return abs(level - round(level)) <= 1e-9 * max(1.0, abs(level))


class MoveClipAfterQuantizer(Transformation):
    """See the module docstring; ``records`` lists each Clip moved."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict] = []

    def apply(self, model: ModelWrapper):
        graph_outputs = {o.name for o in model.graph.output}
        for clip in list(model.graph.node):
            if clip.op_type != "Clip" or clip.output[0] in graph_outputs:
                continue
            consumers = model.find_consumers(clip.output[0]) or []
            if len(consumers) != 1 or list(consumers[0].input).index(clip.output[0]) != 0:
                continue
            quant = consumers[0]
            grid = _quant_grid(model, quant)
            bounds = clip_bounds(model, clip)
            if grid is None or bounds is None:
                continue
            scale, low, high = grid
            lo, hi = bounds
            if any(b is not None and not _on_grid(b, scale) for b in (lo, hi)):
                continue
            if (lo is not None and lo / scale > high) or (hi is not None and hi / scale < low):
                continue  # the grid does not reach into [lo, hi]
            x, y = clip.input[0], quant.output[0]
            between = model.make_new_valueinfo_name()
            shape = model.get_tensor_shape(x)
            if shape is not None:
                model.set_tensor_shape(between, list(shape))
            quant.input[0] = x
            quant.output[0] = between
            clip.input[0] = between
            clip.output[0] = y
            nodes = list(model.graph.node)
            nodes.remove(clip)
            nodes.insert(nodes.index(quant) + 1, clip)
            del model.graph.node[:]
            model.graph.node.extend(nodes)
            self.records.append(
                {
                    "node": clip.name or "Clip",
                    "quantizer": quant.name or "Quant",
                    "rewrite": f"Clip [{lo}, {hi}] moved after its quantizer {quant.name} (bounds on its grid)",
                }
            )
            return model, True
        return model, False
