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
from onnx import TensorProto, helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.batchnorm_to_affine import BatchNormToAffine
from qonnx.transformation.gemm_to_matmul import GemmToMatMul
from qonnx.transformation.general import GiveReadableTensorNames, GiveUniqueNodeNames, RemoveUnusedTensors
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.cleanup import cleanup_model

from edgec.frontend.support import check_single_io, check_supported, unsupported_nodes
from edgec.passes.channels_last import ToChannelsLast, fold_flatten_transposes, physical_perm
from edgec.passes.clip_after_quant import MoveClipAfterQuantizer
from edgec.passes.exact_requant import ExactRequantization
from edgec.passes.fold_affine import FoldAffineIntoLinear
from edgec.passes.fold_quant_constants import FoldConstantQuantizers
from edgec.passes.graph_utils import bypass as _bypass
from edgec.passes.input_threshold import FoldInputAffineIntoThreshold
from edgec.passes.quant_levels import QuantizerScalesToLevels
from edgec.passes.rewrite_for_hls4ml import RewriteForHls4ml
from edgec.passes.split_float_scales import SplitFloatScaleQuantizers
from edgec.passes.tidy_layout import reshape_as_permutation, tidy_layout


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


def _alpha_beta_as_float32(model: ModelWrapper, existing: set[str]) -> None:
    """qonnx's GemmToMatMul writes a Gemm's alpha/beta (when not 1) as float64 scalars, which
    onnxruntime then refuses to multiply with the float32 tensors: store the new ones as float32."""
    for init in list(model.graph.initializer):
        if init.name not in existing and init.data_type == TensorProto.DOUBLE:
            model.set_initializer(init.name, model.get_initializer(init.name).astype(np.float32))


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
        if "auto_pad" in attrs:
            explicit = _explicit_pads(model, node, attrs, spatial)
            if explicit is None:
                continue
            node.attribute.remove(attrs.pop("auto_pad"))
            if "pads" in attrs:
                node.attribute.remove(attrs.pop("pads"))
            node.attribute.append(helper.make_attribute("pads", explicit))
        for name, value in defaults.items():
            if name not in attrs and not any(a.name == name for a in node.attribute):
                node.attribute.append(helper.make_attribute(name, value))


def _explicit_pads(model: ModelWrapper, node, attrs: dict, spatial: int) -> list[int] | None:
    """The ``pads`` an ``auto_pad`` attribute stands for (ONNX Conv/MaxPool spec: SAME_UPPER puts the
    odd pixel at the end, SAME_LOWER at the beginning; VALID and NOTSET add none). tf2onnx writes
    auto_pad, and qonnx's channels-last conversion needs explicit pads. None if the input shape is unknown."""
    mode = attrs["auto_pad"].s.decode() if attrs["auto_pad"].s else "NOTSET"
    if mode in ("NOTSET", "VALID"):
        return list(attrs["pads"].ints) if mode == "NOTSET" and "pads" in attrs else [0] * (2 * spatial)
    in_shape = model.get_tensor_shape(node.input[0])
    if in_shape is None or len(in_shape) != spatial + 2:
        return None
    kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else list(model.get_tensor_shape(node.input[1])[2:])
    strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * spatial
    dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * spatial
    begin, end = [], []
    for size, k, stride, dilation in zip(in_shape[2:], kernel, strides, dilations):
        out = -(-size // stride)
        total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else large)
        end.append(large if mode == "SAME_UPPER" else small)
    return begin + end


def _remove_identities(model: ModelWrapper) -> int:
    """Bypass Identity and inference-mode Dropout nodes (tf2onnx and Keras exports end in them).
    hls4ml drops such layers, and when one produces the graph output the generated top function
    loses its output argument; here the producer writes the graph output itself. Returns how many."""
    removed = 0
    for node in list(model.graph.node):
        if node.op_type not in ("Identity", "Dropout") or not node.input or not node.output[0]:
            continue
        if any(model.find_consumers(extra) or extra in {o.name for o in model.graph.output} for extra in node.output[1:] if extra):
            continue  # a Dropout mask somebody reads
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            mode = model.get_initializer(node.input[2])
            if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
                continue  # training mode (or not known): not an identity
        removed += _bypass(model, node)
    return removed


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


SCALAR_ELEMENTWISE = ("Mul", "Add", "Sub", "Div", "Quant", "BipolarQuant", "Relu", "Clip", "Identity")


def _absorb_input_transpose(model: ModelWrapper) -> list[int] | None:
    """Remove the Transpose a Keras NHWC export puts after its input (or a Reshape that only moves
    size-1 axes, the same transpose for a one-channel image), also when input preprocessing with
    scalar constants comes first (``x * s -> Quant -> Transpose``, as onnxruntime's quantization
    leaves it): the graph input takes the transposed layout; return the perm."""
    graph_in = model.graph.input[0]
    chain: list = []
    tensor = graph_in.name
    while True:
        consumers = model.find_consumers(tensor) or []
        if len(consumers) != 1:
            return None
        node = consumers[0]
        if node.op_type == "Reshape":
            perm = reshape_as_permutation(model.get_tensor_shape(tensor), model.get_tensor_shape(node.output[0]))
            if perm is None:
                return None
            node.op_type = "Transpose"
            del node.input[1:]
            node.attribute.append(helper.make_attribute("perm", perm))
        if node.op_type == "Transpose":
            break
        scalar_operands = all(model.get_initializer(t) is not None and np.size(model.get_initializer(t)) == 1 for t in node.input[1:] if t)
        if node.op_type not in SCALAR_ELEMENTWISE or node.input[0] != tensor or not scalar_operands or len(chain) > 8:
            return None
        chain.append(node)
        tensor = node.output[0]
    perm = list(next(a.ints for a in node.attribute if a.name == "perm"))
    new_shape = model.get_tensor_shape(node.output[0])
    for other in model.graph.node:
        for i, name in enumerate(other.input):
            if name == node.output[0]:
                other.input[i] = node.input[0]
    model.graph.node.remove(node)
    model.set_tensor_shape(graph_in.name, new_shape)
    for step in chain:  # the preprocessing now runs in the transposed layout
        model.set_tensor_shape(step.output[0], new_shape)
    return perm


def _name_reshape_outputs_after_their_nodes(model: ModelWrapper) -> None:
    """hls4ml 1.3.0's io_stream pass that turns a Reshape into a Repack looks the layer's output up
    under the layer's own name (``node.attributes[node.name]``: true for Keras models, where a
    layer's output is named after it; a KeyError for ONNX ones). Naming each Reshape's output after
    its node satisfies it."""
    outputs = {o.name for o in model.graph.output}
    taken = {t for n in model.graph.node for t in list(n.input) + list(n.output)} | {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape" or not node.name or node.output[0] in outputs or node.name in taken:
            continue
        model.rename_tensor(node.output[0], node.name)
        taken.add(node.name)


def _absorb_output_transpose(model: ModelWrapper) -> list[int] | None:
    """A Transpose producing the graph output moves to the host (the caller applies it to the
    design's output, as ``output_perm``): on the FPGA it would cost a buffer of the whole map."""
    out = model.graph.output[0]
    node = model.find_producer(out.name)
    if node is None or node.op_type != "Transpose" or model.find_producer(node.input[0]) is None:
        return None
    if model.get_initializer(node.input[0]) is not None or node.input[0] in {i.name for i in model.graph.input}:
        return None
    perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
    if not perm:
        return None
    inner = model.get_tensor_shape(node.input[0])
    producer = model.find_producer(node.input[0])
    producer.output[list(producer.output).index(node.input[0])] = out.name
    for other in model.graph.node:
        for i, name in enumerate(other.input):
            if name == node.input[0]:
                other.input[i] = out.name
    model.graph.node.remove(node)
    model.set_tensor_shape(out.name, inner)
    return perm[0]


def _absorb_input_reshape(model: ModelWrapper) -> bool:
    """A Reshape that alone reads the graph input becomes the input's shape: the design takes its
    input as one flat stream of values in the same order either way (hls4ml's io_stream repacking
    of a Reshape right after its Input layer fails with a KeyError)."""
    graph_in = model.graph.input[0]
    consumers = model.find_consumers(graph_in.name) or []
    if len(consumers) != 1 or consumers[0].op_type not in ("Reshape", "Flatten"):
        return False
    node = consumers[0]
    new_shape = model.get_tensor_shape(node.output[0])
    if new_shape is None or node.output[0] in {o.name for o in model.graph.output}:
        return False
    for other in model.graph.node:
        for i, name in enumerate(other.input):
            if name == node.output[0]:
                other.input[i] = graph_in.name
    model.graph.node.remove(node)
    model.set_tensor_shape(graph_in.name, new_shape)
    return True


def _inverse(perm: list[int]) -> list[int]:
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return inverse


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
    model = _run(model, MoveClipAfterQuantizer(), passes, "edgec.MoveClipAfterQuantizer")
    model = _run(model, RewriteForHls4ml(pooling=not for_estimate), passes, "edgec.RewriteForHls4ml")
    if not for_estimate:
        check_supported(model, after_canonicalization=False)  # with the user's own node names
    start = time.perf_counter()
    model = cleanup_model(model)
    _remove_identities(model)
    passes.append({"name": "qonnx.cleanup", "params": {}, "seconds": round(time.perf_counter() - start, 4)})
    model = _run(model, FoldInputAffineIntoThreshold(), passes, "edgec.FoldInputAffineIntoThreshold")
    _add_missing_gemm_bias(model)
    _fill_conv_defaults(model)
    before_gemm = {init.name for init in model.graph.initializer}
    model = _run(model, GemmToMatMul(), passes, "qonnx.GemmToMatMul")
    _alpha_beta_as_float32(model, before_gemm)
    _push_transposes_into_weight_quantizers(model)
    model = _run(model, FoldConstantQuantizers(only_non_weights=True), passes, "edgec.FoldConstantQuantizers", weights=False)
    model = _run(model, BatchNormToAffine(), passes, "qonnx.BatchNormToAffine")
    model = model.transform(InferShapes())
    model = _run(model, QuantizerScalesToLevels(), passes, "edgec.QuantizerScalesToLevels")
    model = model.transform(InferShapes())
    model = _run(model, ExactRequantization(), passes, "edgec.ExactRequantization")
    model = _run(model, FoldConstantQuantizers(), passes, "edgec.FoldConstantQuantizers", weights=True)
    model = _run(model, SplitFloatScaleQuantizers(), passes, "edgec.SplitFloatScaleQuantizers")
    model = _run(model, FoldAffineIntoLinear(), passes, "edgec.FoldAffineIntoLinear")
    model = model.transform(InferShapes())
    tidy_layout(model)
    has_conv = any(n.op_type in ("Conv", "MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool") for n in model.graph.node)
    orig_out = model.get_tensor_shape(model.graph.output[0].name)
    absorbed = _absorb_input_transpose(model) if has_conv else None
    orig_in = model.get_tensor_shape(model.graph.input[0].name)
    layout_perms: tuple[list[int] | None, list[int] | None] | None = None
    if has_conv:
        in_rank, out_rank = len(orig_in), len(orig_out)
        model = _run(model, ToChannelsLast(), passes, "edgec.ToChannelsLast")
        model = cleanup_model(model)  # folds constant weight transposes (GemmToMatMul's) so weights can be permuted
        tidy_layout(model)
        if fold_flatten_transposes(model):
            tidy_layout(model)
        layout_perms = (
            physical_perm(in_rank) if in_rank in (3, 4) else None,
            _inverse(physical_perm(out_rank)) if out_rank in (3, 4) else None,
        )
    model = cleanup_model(model)
    if tidy_layout(model):
        model = cleanup_model(model)
    _absorb_input_reshape(model)
    trailing = _absorb_output_transpose(model)
    model = model.transform(GiveUniqueNodeNames())
    model = model.transform(GiveReadableTensorNames())
    model = model.transform(RemoveUnusedTensors())
    _name_reshape_outputs_after_their_nodes(model)
    unsupported: list[str] = []
    if for_estimate:
        unsupported = [f"{name} ({op}: {why})" for name, op, why in unsupported_nodes(model, after_canonicalization=True)]
    else:
        check_supported(model, after_canonicalization=True)
    new_in = model.get_tensor_shape(model.graph.input[0].name)
    new_out = model.get_tensor_shape(model.graph.output[0].name)
    if layout_perms is not None:  # the exact permutations the layout conversion applied
        input_perm, output_perm = _compose(absorbed, layout_perms[0]), _compose(trailing, layout_perms[1])
    else:
        input_perm, output_perm = _compose(absorbed, _perm_between(orig_in, new_in)), _perm_between(new_out, orig_out)
        if trailing is not None:
            output_perm = _compose(
                trailing,
                _perm_between(model.get_tensor_shape(model.graph.output[0].name), orig_out) if output_perm is None else output_perm,
            )
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
