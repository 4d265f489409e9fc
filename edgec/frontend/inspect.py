"""`edgec inspect`: what a model contains, without building it."""

from __future__ import annotations

import numpy as np
from onnx import helper

from edgec.errors import UnsupportedOpsError
from edgec.frontend.canonicalize import canonicalize
from edgec.frontend.load import LoadedModel
from edgec.frontend.support import unsupported_nodes


def _macs(model, node) -> int:
    out_shape = model.get_tensor_shape(node.output[0]) or []
    if node.op_type in ("MatMul", "Gemm"):
        in_shape = model.get_tensor_shape(node.input[0]) or [0]
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        k = in_shape[-2] if trans_a else in_shape[-1]
        return int(np.prod(out_shape)) * int(k)
    if node.op_type == "Conv":
        w_shape = model.get_tensor_shape(node.input[1]) or [0]
        return int(np.prod(out_shape)) * int(np.prod(w_shape[1:]))
    return 0


def _quant_text(model, node) -> str:
    if node.op_type == "BipolarQuant":
        return "bipolar"
    if node.op_type == "Quant":
        bits = model.get_initializer(node.input[3])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kind = "int" if attrs.get("signed", 1) else "uint"
        return f"{kind}{int(np.asarray(bits).reshape(-1)[0]) if bits is not None else '?'}"
    return ""


def inspect_model(loaded: LoadedModel) -> dict:
    """Layers, shapes, MACs, parameters, quantization and unlowerable ops of a loaded model."""
    model = loaded.model
    unsupported = [{"node": n, "op": op, "reason": why} for n, op, why in unsupported_nodes(model, after_canonicalization=False)]
    if not unsupported:
        # qonnx's cleanup folds shape arithmetic and infers every shape, so MACs can be counted
        from qonnx.util.cleanup import cleanup_model

        model = cleanup_model(model)
    layers = []
    for index, node in enumerate(model.graph.node):
        params = sum(int(np.prod(model.get_initializer(i).shape)) for i in node.input if i and model.get_initializer(i) is not None)
        quant = _quant_text(model, node)
        for i in node.input[1:2]:
            producer = model.find_producer(i) if i else None
            if producer is not None and producer.op_type in ("Quant", "BipolarQuant") and node.op_type in ("MatMul", "Gemm", "Conv"):
                quant = f"weights {_quant_text(model, producer)}"
        layers.append(
            {
                "name": node.name or f"#{index}",
                "op": node.op_type,
                "input_shape": model.get_tensor_shape(node.input[0]) if node.input and node.input[0] else None,
                "output_shape": model.get_tensor_shape(node.output[0]),
                "macs": _macs(model, node),
                "params": params,
                "quantization": quant,
            }
        )
    if not unsupported:
        try:
            canonicalize(loaded.model)
        except UnsupportedOpsError as exc:
            unsupported = [{"node": "-", "op": "-", "reason": str(exc)}]
    return {
        "path": loaded.path,
        "qonnx": loaded.is_qonnx,
        "notes": loaded.notes,
        "layers": layers,
        "total_macs": sum(layer["macs"] for layer in layers),
        "total_params": sum(layer["params"] for layer in layers),
        "unsupported": unsupported,
    }


def render_inspection(info: dict) -> str:
    lines = [f"{info['path']}  ({'QONNX' if info['qonnx'] else 'ONNX'})"]
    lines += [f"  note: {n}" for n in info["notes"]]
    header = f"{'node':<28} {'op':<20} {'input':>14} {'output':>14} {'MACs':>10} {'params':>9}  quantization"
    lines += [header, "-" * len(header)]
    for layer in info["layers"]:
        shape_in = "x".join(map(str, layer["input_shape"] or [])) or "-"
        shape_out = "x".join(map(str, layer["output_shape"] or [])) or "-"
        lines.append(
            f"{layer['name'][:28]:<28} {layer['op'][:20]:<20} {shape_in:>14} {shape_out:>14} {layer['macs']:>10} {layer['params']:>9}  {layer['quantization']}"
        )
    lines.append(f"total: {info['total_macs']} MACs, {info['total_params']} parameters")
    if info["unsupported"]:
        lines.append("cannot lower to the FPGA (edgec build --place auto runs these on the board's CPU with TVM):")
        lines += [f"  {u['node']} ({u['op']}): {u['reason']}" for u in info["unsupported"]]
    else:
        lines.append("every op can be lowered to the FPGA")
    return "\n".join(lines)
