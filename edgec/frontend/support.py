"""Which ONNX operators edgec can lower, and why the others cannot be."""

from __future__ import annotations

from qonnx.core.modelwrapper import ModelWrapper

from edgec.errors import UnsupportedOpsError

# Ops hls4ml 1.3.0's ONNX reader turns into HLS layers (hls4ml/converters/onnx/*.py), after edgec's
# canonicalization (Gemm -> MatMul, BatchNorm folding, channels-last conversion).
LOWERABLE = {
    "MatMul",
    "Conv",
    "Relu",
    "Tanh",
    "Sigmoid",
    "LeakyRelu",
    "ThresholdedRelu",
    "Elu",
    "Selu",
    "Softmax",
    "Softsign",
    "Softplus",
    "HardSigmoid",
    "BatchNormalization",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Max",
    "Min",
    "Sum",
    "Concat",
    "MaxPool",
    "GlobalMaxPool",
    "Flatten",
    "Reshape",
    "Transpose",
    "Quant",
    "BipolarQuant",
    "Identity",
    "Dropout",
    "Pad",
}
# Ops edgec.passes.rewrite_for_hls4ml replaces with ops hls4ml lowers correctly.
REWRITTEN = {"PRelu": "PRelu needs constant slopes to be rewritten", "GlobalAveragePool": "needs a known input shape"}
# Ops that canonicalization removes (folded into constants or neighbouring layers).
CANONICALIZED_AWAY = {
    "Gemm",
    "Constant",
    "Shape",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Cast",
    "ConstantOfShape",
    "Range",
    "Slice",
    "Expand",
    "Pow",
    "Sqrt",
    "Trunc",
    "IntQuant",
    "QuantizeLinear",
    "DequantizeLinear",
    "Clip",
    "Floor",
    "Ceil",
    "Round",
    "ReduceProd",
    "Equal",
    "Where",
    "Neg",
    "Reciprocal",
    "Exp",
    "Log",
    "Abs",
    "Not",
    "Less",
    "Greater",
}
# Ops hls4ml reads but gets wrong or rejects in single-op tests (STACK-NOTES): reported, not lowered.
KNOWN_BROKEN = {
    "AveragePool": "only unpadded AveragePool (or one counting its padding) is lowered, as a depthwise "
    "convolution; an average that excludes padding has a different divisor at each border position",
    "Resize": "hls4ml's Resize is wrong in C simulation",
    "ConvTranspose": "hls4ml has no ONNX ConvTranspose",
}


def _attribute_problem(model: ModelWrapper, node) -> str | None:
    """Forms of a supported op that hls4ml 1.3.0 still cannot read (STACK-NOTES single-op tests)."""
    if node.op_type == "MaxPool":
        attrs = {a.name: a for a in node.attribute}
        kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else []
        if len(kernel) == 1:
            return "hls4ml's ONNX reader does not read 1-D MaxPool"
        pads = list(attrs["pads"].ints) if "pads" in attrs else []
        auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
        if any(pads) or auto_pad not in ("NOTSET", "VALID"):
            return "hls4ml's ONNX reader does not read padded ('same') MaxPool"
    return None


def unsupported_nodes(model: ModelWrapper, after_canonicalization: bool) -> list[tuple[str, str, str]]:
    """Return (node name, op type, reason) for every node edgec cannot lower."""
    allowed = set(LOWERABLE) if after_canonicalization else LOWERABLE | CANONICALIZED_AWAY | set(REWRITTEN)
    found = []
    for index, node in enumerate(model.graph.node):
        name = node.name or f"#{index}"
        problem = _attribute_problem(model, node)
        if node.op_type in KNOWN_BROKEN:
            found.append((name, node.op_type, KNOWN_BROKEN[node.op_type]))
        elif problem:
            found.append((name, node.op_type, problem))
        elif node.op_type not in allowed:
            if after_canonicalization and node.op_type in REWRITTEN:
                reason = f"could not be rewritten for hls4ml: {REWRITTEN[node.op_type]}"
            elif after_canonicalization and node.op_type in CANONICALIZED_AWAY:
                reason = "not constant, so it could not be folded away"
            else:
                reason = "no HLS implementation"
            found.append((name, node.op_type, reason))
    return found


def check_single_io(model: ModelWrapper) -> None:
    """edgec lowers one input tensor to one output tensor (hls4ml's ONNX path does the same)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    outputs = [o.name for o in model.graph.output]
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedOpsError(
            f"model has {len(inputs)} inputs ({', '.join(inputs)}) and {len(outputs)} outputs ({', '.join(outputs)}); "
            "edgec lowers single-input, single-output models",
            hint="split the model, or export only the branch to deploy",
        )


def check_supported(model: ModelWrapper, after_canonicalization: bool) -> None:
    """Raise :class:`UnsupportedOpsError` listing every node that cannot be lowered."""
    bad = unsupported_nodes(model, after_canonicalization)
    if bad:
        listing = "; ".join(f"{name} ({op}: {why})" for name, op, why in bad)
        raise UnsupportedOpsError(
            f"{len(bad)} node(s) cannot be lowered: {listing}",
            hint="replace these ops before export, or run `edgec inspect` to see the whole model",
        )
