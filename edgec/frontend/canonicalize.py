"""Canonicalize a loaded model into the form hls4ml lowers best, using qonnx transformations.

cleanup (shape inference, constant folding, unique readable names) -> Gemm -> MatMul (with a zero
bias added where missing) -> exact requantization of quantized layers -> folding of constant
quantizers -> BatchNorm -> affine and folding into the preceding layer -> channels-last for
convolutional models -> cleanup. Every name in the result is generated (``MatMul_0``,
``global_in``...), so nothing from the user's model reaches generated C++ or Tcl.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.batchnorm_to_affine import BatchNormToAffine
from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
from qonnx.transformation.gemm_to_matmul import GemmToMatMul
from qonnx.transformation.general import GiveReadableTensorNames, GiveUniqueNodeNames, RemoveUnusedTensors
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.cleanup import cleanup_model

from edgec.frontend.support import check_single_io, check_supported, unsupported_nodes
from edgec.passes.exact_requant import ExactRequantization
from edgec.passes.fold_affine import FoldAffineIntoLinear
from edgec.passes.fold_quant_constants import FoldConstantQuantizers
from edgec.passes.quant_levels import QuantizerScalesToLevels
from edgec.passes.rewrite_for_hls4ml import RewriteForHls4ml


@dataclass
class CanonicalModel:
    """The model hls4ml will see, plus how its input/output layout relates to the original."""

    model: ModelWrapper
    channels_last: bool
    input_perm: list[int] | None  # transpose applied to the user's input (None: unchanged)
    output_perm: list[int] | None  # transpose that maps the canonical output back to the user's
    passes: list[dict] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)  # only with for_estimate=True


def _add_missing_gemm_bias(model: ModelWrapper) -> None:
    """qonnx's GemmToMatMul crashes on a Gemm without bias (STACK-NOTES): give it a zero bias."""
    for node in model.graph.node:
        if node.op_type == "Gemm" and len(node.input) < 3:
            out_shape = model.get_tensor_shape(node.output[0])
            name = model.make_new_valueinfo_name()
            model.set_initializer(name, np.zeros(out_shape[-1], dtype=np.float32))
            node.input.append(name)


def _fill_conv_defaults(model: ModelWrapper) -> None:
    """Write out Conv/pooling attributes ONNX lets exporters omit; qonnx's layout passes need them."""
    from onnx import helper

    for node in model.graph.node:
        if node.op_type not in ("Conv", "MaxPool", "AveragePool"):
            continue
        attrs = {a.name: a for a in node.attribute}
        if "kernel_shape" in attrs:
            spatial = len(attrs["kernel_shape"].ints)
        else:
            w_shape = model.get_tensor_shape(node.input[1]) if node.op_type == "Conv" else None
            if not w_shape:
                continue
            spatial = len(w_shape) - 2
            node.attribute.append(helper.make_attribute("kernel_shape", list(w_shape[2:])))
        defaults = {"strides": [1] * spatial, "pads": [0] * (2 * spatial)}
        if node.op_type == "Conv":
            defaults.update({"dilations": [1] * spatial, "group": 1})
        for name, value in defaults.items():
            if name not in attrs and not (name == "pads" and "auto_pad" in attrs):
                node.attribute.append(helper.make_attribute(name, value))


def _push_transposes_into_weight_quantizers(model: ModelWrapper) -> None:
    """Transpose(Quant(W)) -> Quant(W^T): keeps weight quantizers next to their MatMul/Conv."""
    for node in list(model.graph.node):
        if node.op_type != "Transpose":
            continue
        quant = model.find_producer(node.input[0])
        if quant is None or quant.op_type not in ("Quant", "BipolarQuant") or len(model.find_consumers(quant.output[0])) != 1:
            continue
        raw = model.get_initializer(quant.input[0])
        params = [model.get_initializer(i) for i in quant.input[1:]]
        if raw is None or any(p is None for p in params):
            continue
        perm = [a.ints for a in node.attribute if a.name == "perm"]
        perm = list(perm[0]) if perm else list(reversed(range(raw.ndim)))
        # per-channel scale and zero point (Quant inputs 1 and 2) move with the weights; BipolarQuant has a scale only
        per_channel = [(name, value) for name, value in zip(quant.input[1:3], params[:2]) if value.size != 1]
        if any(value.ndim != raw.ndim for _, value in per_channel):
            continue
        for name, value in per_channel:
            model.set_initializer(name, np.ascontiguousarray(value.transpose(perm)))
        model.set_initializer(quant.input[0], np.ascontiguousarray(raw.transpose(perm)))
        quant.output[0] = node.output[0]
        model.graph.node.remove(node)


def _absorb_input_transpose(model: ModelWrapper) -> list[int] | None:
    """Remove a Transpose that the graph input feeds alone (Keras NHWC exports); return its perm."""
    graph_in = model.graph.input[0]
    consumers = model.find_consumers(graph_in.name) or []
    if len(consumers) != 1 or consumers[0].op_type != "Transpose":
        return None
    node = consumers[0]
    perm = list(next(a.ints for a in node.attribute if a.name == "perm"))
    new_shape = model.get_tensor_shape(node.output[0])
    for other in model.graph.node:
        for i, name in enumerate(other.input):
            if name == node.output[0]:
                other.input[i] = graph_in.name
    model.graph.node.remove(node)
    model.set_tensor_shape(graph_in.name, new_shape)
    return perm


def _compose(first: list[int] | None, second: list[int] | None) -> list[int] | None:
    """The single transpose equal to applying ``first`` then ``second`` (None = identity)."""
    if first is None:
        return second
    if second is None:
        return first
    combined = [first[p] for p in second]
    return None if combined == list(range(len(combined))) else combined


def _run(model: ModelWrapper, transform, log: list[dict], name: str, **params) -> ModelWrapper:
    start = time.perf_counter()
    model = model.transform(transform)
    record = {"name": name, "params": params, "seconds": round(time.perf_counter() - start, 4)}
    if getattr(transform, "records", None):
        record["details"] = transform.records
    log.append(record)
    return model


def canonicalize(model: ModelWrapper, for_estimate: bool = False) -> CanonicalModel:
    """Return the canonical form of ``model`` (the input is not modified).

    ``for_estimate=True`` is for cost estimates only: ops edgec cannot build yet are kept (and
    listed in ``unsupported``) and average pooling stays hls4ml's Pooling layer.
    """
    passes: list[dict] = []
    model = ModelWrapper(model.model.__deepcopy__())
    check_single_io(model)
    model = _run(model, RewriteForHls4ml(pooling=not for_estimate), passes, "edgec.RewriteForHls4ml")
    if not for_estimate:
        check_supported(model, after_canonicalization=False)  # with the user's own node names
    start = time.perf_counter()
    model = cleanup_model(model)
    passes.append({"name": "qonnx.cleanup", "params": {}, "seconds": round(time.perf_counter() - start, 4)})
    _add_missing_gemm_bias(model)
    _fill_conv_defaults(model)
    model = _run(model, GemmToMatMul(), passes, "qonnx.GemmToMatMul")
    _push_transposes_into_weight_quantizers(model)
    model = _run(model, FoldConstantQuantizers(only_non_weights=True), passes, "edgec.FoldConstantQuantizers", weights=False)
    model = _run(model, BatchNormToAffine(), passes, "qonnx.BatchNormToAffine")
    model = model.transform(InferShapes())
    model = _run(model, QuantizerScalesToLevels(), passes, "edgec.QuantizerScalesToLevels")
    model = model.transform(InferShapes())
    model = _run(model, ExactRequantization(), passes, "edgec.ExactRequantization")
    model = _run(model, FoldConstantQuantizers(), passes, "edgec.FoldConstantQuantizers", weights=True)
    model = _run(model, FoldAffineIntoLinear(), passes, "edgec.FoldAffineIntoLinear")
    model = model.transform(InferShapes())
    has_conv = any(n.op_type in ("Conv", "MaxPool", "AveragePool") for n in model.graph.node)
    orig_out = model.get_tensor_shape(model.graph.output[0].name)
    absorbed = _absorb_input_transpose(model) if has_conv else None
    orig_in = model.get_tensor_shape(model.graph.input[0].name)
    if has_conv:
        try:
            model = _run(model, ConvertToChannelsLastAndClean(make_input_channels_last=True), passes, "qonnx.ConvertToChannelsLastAndClean")
        except Exception as exc:  # qonnx refuses some forms (uneven padding); estimates can cost channels-first ops
            if not for_estimate:
                raise
            passes.append({"name": "qonnx.ConvertToChannelsLastAndClean", "params": {}, "seconds": 0.0, "details": [{"skipped": str(exc)}]})
    model = cleanup_model(model)
    model = model.transform(GiveUniqueNodeNames())
    model = model.transform(GiveReadableTensorNames())
    model = model.transform(RemoveUnusedTensors())
    unsupported: list[str] = []
    if for_estimate:
        unsupported = [f"{name} ({op}: {why})" for name, op, why in unsupported_nodes(model, after_canonicalization=True)]
    else:
        check_supported(model, after_canonicalization=True)
    new_in = model.get_tensor_shape(model.graph.input[0].name)
    new_out = model.get_tensor_shape(model.graph.output[0].name)
    input_perm = _compose(absorbed, _perm_between(orig_in, new_in))
    output_perm = _perm_between(new_out, orig_out)
    return CanonicalModel(model, has_conv, input_perm, output_perm, passes, unsupported)


def _perm_between(src: list[int], dst: list[int]) -> list[int] | None:
    """The channels-first <-> channels-last transpose turning shape ``src`` into ``dst``, if any."""
    if list(src) == list(dst):
        return None
    rank = len(src)
    to_last = [0, *range(2, rank), 1]
    to_first = [0, rank - 1, *range(1, rank - 1)]
    for perm in (to_last, to_first):
        if [src[p] for p in perm] == list(dst):
            return perm
    return None
