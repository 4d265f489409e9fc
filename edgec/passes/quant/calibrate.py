"""Calibration: the value range of every tensor of a model on a set of inputs.

Activations are measured by running the model on the data with every intermediate tensor exposed
as a graph output (on a copy whose batch dimension is the chunk size): onnxruntime for plain ONNX,
qonnx execution for QONNX (custom quantizer ops). Weights and biases are read from the
initializers (weights also per output channel). Accumulators are the MatMul/Conv/Gemm sums before
bias and activation: the output itself for MatMul, ``output - bias`` for Conv and Gemm with a bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import qonnx.core.onnx_exec as oxe
from onnx import TensorProto, helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.infer_shapes import InferShapes

from edgec.errors import DataError
from edgec.passes.prune.common import WEIGHT_QUANTIZERS, attr, prunable_layers
from edgec.verify import batched_copy

CHUNK = 256  # samples per batched run (bounds the memory the exposed tensors take)
ACC_SUFFIX = "::accumulator"


@dataclass
class TensorRange:
    """The observed range of one tensor (over every sample and element).

    ``kind`` is ``input``, ``activation``, ``accumulator``, ``weight`` or ``bias``. ``percentile``
    holds the requested percentile of ``|x|`` (None when not asked for). Weights also carry the
    range of every output channel (``channel_axis`` of the initializer).
    """

    name: str
    kind: str
    min: float
    max: float
    percentile: float | None = None
    channel_axis: int | None = None
    channel_min: np.ndarray | None = field(default=None, repr=False)
    channel_max: np.ndarray | None = field(default=None, repr=False)

    @property
    def abs_max(self) -> float:
        return max(abs(self.min), abs(self.max))

    @property
    def channel_abs_max(self) -> np.ndarray | None:
        if self.channel_min is None or self.channel_max is None:
            return None
        return np.maximum(np.abs(self.channel_min), np.abs(self.channel_max))

    def bound(self) -> float:
        """The magnitude quantizers cover: the percentile of ``|x|`` when measured, else ``|x|`` max."""
        return self.percentile if self.percentile is not None else self.abs_max


def accumulator_name(node) -> str:
    """The key of a linear layer's accumulator range: its output, or ``<output>::accumulator`` when the
    node adds a bias itself (Conv, Gemm with C), so the output's own range stays available."""
    has_bias = node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and bool(node.input[2])
    return node.output[0] + ACC_SUFFIX if has_bias else node.output[0]


def is_qonnx(model: ModelWrapper) -> bool:
    return any((n.domain and "qonnx" in n.domain) or n.op_type in WEIGHT_QUANTIZERS for n in model.graph.node)


def _float_tensors(model: ModelWrapper) -> list[str]:
    """Every non-constant node output that shape inference types as float32, in graph order."""
    inferred = model.transform(InferShapes())
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    names = []
    for node in model.graph.node:
        if all(model.get_initializer(i) is not None for i in node.input if i):
            continue  # a constant (e.g. a weight quantizer's output), not an activation
        for out in node.output:
            if out and types.get(out, TensorProto.FLOAT) == TensorProto.FLOAT and out not in names:
                names.append(out)
    return names


def _expose(model: ModelWrapper, tensors: list[str]) -> ModelWrapper:
    """A copy of ``model`` with every tensor in ``tensors`` also a graph output."""
    copy = ModelWrapper(model.model.__deepcopy__())
    present = {o.name for o in copy.graph.output}
    for name in tensors:
        if name not in present:
            copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return copy


def _run_chunk(model: ModelWrapper, tensors: list[str], x: np.ndarray, qonnx_exec: bool) -> dict[str, np.ndarray]:
    """All ``tensors`` for one chunk of inputs: batched when the graph allows it, else per sample."""
    in_name = model.graph.input[0].name
    try:
        if qonnx_exec:  # the full execution context already holds every tensor
            ctx = oxe.execute_onnx(batched_copy(model, x.shape[0]), {in_name: x}, return_full_exec_context=True)
            return {t: np.asarray(ctx[t]) for t in tensors if ctx.get(t) is not None}
        batched = _expose(batched_copy(model, x.shape[0]), tensors)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(batched.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return dict(zip(tensors, session.run(tensors, {in_name: x})))
    except Exception:  # graphs with batch-1 constants (Shape/Gather reshapes...): one sample at a time
        if qonnx_exec:
            runs = [oxe.execute_onnx(model, {in_name: s[None]}, return_full_exec_context=True) for s in x]
            return {t: np.concatenate([np.asarray(r[t]) for r in runs]) for t in tensors if runs[0].get(t) is not None}
        single = _expose(model, tensors)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(single.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        runs = [session.run(tensors, {in_name: s[None]}) for s in x]
        return {t: np.concatenate([np.asarray(r[i]) for r in runs]) for i, t in enumerate(tensors)}


def _bias_of(model: ModelWrapper, node) -> tuple[str, np.ndarray] | None:
    """The constant bias a linear node adds itself (Conv input 2; Gemm's ``beta * C``)."""
    if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
        return None
    bias = model.get_initializer(node.input[2])
    if bias is None:
        return None
    bias = np.asarray(bias, dtype=np.float64)
    if node.op_type == "Gemm":
        bias = bias * float(attr(node, "beta", 1.0))
    return node.input[2], bias


def _strip_bias(node, out: np.ndarray, bias: np.ndarray) -> np.ndarray:
    if node.op_type == "Conv":  # NCHW...: bias per channel on axis 1
        return out - bias.reshape(1, -1, *([1] * (out.ndim - 2)))
    return out - bias


def _matmul_biases(model: ModelWrapper) -> dict[str, str]:
    """Bias initializers added right after a MatMul (``MatMul -> Add(const)``): bias name -> layer output."""
    found = {}
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        consumers = model.find_consumers(node.output[0]) or []
        if len(consumers) == 1 and consumers[0].op_type == "Add":
            for name in consumers[0].input:
                if name != node.output[0] and model.get_initializer(name) is not None:
                    found[name] = node.output[0]
    return found


def calibrate_ranges(model: ModelWrapper, x: np.ndarray, percentile: float | None = None) -> dict[str, TensorRange]:
    """Run ``model`` on ``x`` (the model's layout) and return the range of every tensor.

    Keys are tensor names: the graph input, every float node output (``activation``), the weights
    of every MatMul/Conv/Gemm (the initializer the layer reads, behind a weight quantizer if there
    is one; per output channel too) and their biases, and each layer's accumulator (see
    :func:`accumulator_name`). ``percentile`` (e.g. 99.99) adds that percentile of ``|x|`` to the
    input, activation and accumulator ranges.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError("calibration needs at least one input sample")
    if percentile is not None and not 0.0 < float(percentile) <= 100.0:
        raise DataError(f"percentile {percentile} must be in (0, 100]")
    qonnx_exec = is_qonnx(model)
    in_name = model.graph.input[0].name
    tensors = _float_tensors(model)
    linear = {n.output[0]: n for n in model.graph.node if n.op_type in ("MatMul", "Conv", "Gemm")}
    biases = {n.output[0]: _bias_of(model, n) for n in linear.values()}
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    samples: dict[str, list[np.ndarray]] = {}

    def observe(key: str, value: np.ndarray) -> None:
        value = np.asarray(value, dtype=np.float64)
        if not value.size:
            return
        lo[key] = min(lo.get(key, np.inf), float(value.min()))
        hi[key] = max(hi.get(key, -np.inf), float(value.max()))
        if percentile is not None:
            samples.setdefault(key, []).append(np.abs(value).reshape(-1).astype(np.float32))

    for start in range(0, x.shape[0], CHUNK):
        chunk = x[start : start + CHUNK]
        observe(in_name, chunk)
        values = _run_chunk(model, tensors, chunk, qonnx_exec)
        for name, value in values.items():
            observe(name, value)
            node = linear.get(name)
            if node is not None and biases[name] is not None:
                observe(accumulator_name(node), _strip_bias(node, np.asarray(value, dtype=np.float64), biases[name][1]))

    ranges: dict[str, TensorRange] = {}
    accumulators = {accumulator_name(n) for n in linear.values()}
    for key in lo:
        kind = "input" if key == in_name else "accumulator" if key in accumulators else "activation"
        pct = float(np.percentile(np.concatenate(samples[key]), percentile)) if percentile is not None else None
        ranges[key] = TensorRange(key, kind, lo[key], hi[key], pct)
    for ref in prunable_layers(model):
        weights = np.asarray(model.get_initializer(ref.tensor), dtype=np.float64)
        moved = np.moveaxis(weights, ref.out_axis, 0).reshape(weights.shape[ref.out_axis], -1)
        ranges[ref.tensor] = TensorRange(
            ref.tensor,
            "weight",
            float(weights.min()),
            float(weights.max()),
            channel_axis=ref.out_axis,
            channel_min=moved.min(axis=1),
            channel_max=moved.max(axis=1),
        )
    for bias in list(biases.values()) + [(name, model.get_initializer(name)) for name in _matmul_biases(model)]:
        if bias is not None:
            value = np.asarray(bias[1], dtype=np.float64)
            ranges[bias[0]] = TensorRange(bias[0], "bias", float(value.min()), float(value.max()))
    return ranges
