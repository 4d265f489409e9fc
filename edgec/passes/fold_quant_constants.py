"""Fold quantizers whose inputs are all constant into plain initializers.

``only_non_weights=True`` keeps the quantizers that feed a MatMul/Conv weight input (the exact
requantization pass reads their integer form first); the second run folds those too.
"""

from __future__ import annotations

import numpy as np
import qonnx.core.onnx_exec as oxe
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation


class FoldConstantQuantizers(Transformation):
    def __init__(self, only_non_weights: bool = False) -> None:
        super().__init__()
        self.only_non_weights = only_non_weights
        self.records: list[dict] = []

    def apply(self, model: ModelWrapper):
        changed = False
        for node in list(model.graph.node):
            if node.op_type not in ("Quant", "BipolarQuant", "IntQuant"):
                continue
            if any(model.get_initializer(i) is None for i in node.input if i):
                continue
            consumers = model.find_consumers(node.output[0]) or []
            feeds_weight = any(c.op_type in ("MatMul", "Conv") and list(c.input)[1:2] == [node.output[0]] for c in consumers)
            if self.only_non_weights and feeds_weight:
                continue
            ctx = {i: model.get_initializer(i) for i in node.input if i}
            ctx[node.output[0]] = None
            oxe.execute_node(node, ctx, model.graph, opset_version=_default_opset(model))
            model.set_initializer(node.output[0], np.asarray(ctx[node.output[0]], dtype=np.float32))
            model.graph.node.remove(node)
            self.records.append({"folded": node.name})
            changed = True
        return model, changed


def _default_opset(model: ModelWrapper) -> int:
    return next((i.version for i in model.model.opset_import if i.domain in ("", "ai.onnx")), 13)
