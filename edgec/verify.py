"""Run the reference (onnxruntime, or qonnx execution for QONNX) and compare it with the C-sim."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import qonnx.core.onnx_exec as oxe
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.infer_shapes import InferShapes

ort.set_default_logger_severity(4)  # errors come back as exceptions; their log lines would break the one-line contract
QUANTIZERS = ("Quant", "BipolarQuant", "Trunc", "MultiThreshold")


def batched_copy(model: ModelWrapper, n: int) -> ModelWrapper:
    """A copy whose batch dimension is ``n`` (value infos re-inferred, Reshape targets fixed)."""
    copy = ModelWrapper(model.model.__deepcopy__())
    del copy.graph.value_info[:]
    for vi in list(copy.graph.input) + list(copy.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and dims[0].dim_value == 1:
            dims[0].dim_value = n
    for node in copy.graph.node:
        if node.op_type == "Reshape":
            target = copy.get_initializer(node.input[1])
            if target is not None and target.size and target[0] == 1:
                target = np.array(target, copy=True)
                target[0] = n
                copy.set_initializer(node.input[1], target)
    return copy.transform(InferShapes())


def _needs_qonnx(model: ModelWrapper) -> bool:
    return any(
        (n.domain and ("qonnx" in n.domain or "brevitas" in n.domain or "finn" in n.domain)) or n.op_type in QUANTIZERS
        for n in model.graph.node
    )


def model_outputs(model: ModelWrapper, x: np.ndarray, qonnx: bool | None = None) -> np.ndarray:
    """The model's outputs on ``x`` (model layout), flattened per sample: onnxruntime for plain ONNX
    (graph optimizations off: fused kernels change results of QDQ models, STACK-NOTES), qonnx
    execution for QONNX, batched when the graph allows it and one sample at a time otherwise.
    ``qonnx`` forces the executor (default: QONNX when the graph has QONNX ops)."""
    in_name, out_name = model.graph.input[0].name, model.graph.output[0].name
    x = np.asarray(x, dtype=np.float32)
    if not (_needs_qonnx(model) if qonnx is None else qonnx):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(model.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outs = [session.run([out_name], {in_name: s[None]})[0] for s in x]
        return np.stack([np.asarray(o, dtype=np.float64).reshape(-1) for o in outs])
    try:
        out = np.asarray(oxe.execute_onnx(batched_copy(model, x.shape[0]), {in_name: x})[out_name], dtype=np.float64)
        return out.reshape(x.shape[0], -1)
    except Exception:  # graphs with batch-1 constants (Shape/Gather reshapes...): one sample at a time
        outs = [oxe.execute_onnx(model, {in_name: s[None]})[out_name] for s in x]
        return np.stack([np.asarray(o, dtype=np.float64).reshape(-1) for o in outs])


def tensor_values(model: ModelWrapper, x: np.ndarray, tensors: list[str]) -> dict[str, np.ndarray]:
    """Values of intermediate ``tensors`` of ``model`` on inputs ``x`` (qonnx execution, batched when
    the graph allows it), each shaped (N, *sample shape)."""
    in_name = model.graph.input[0].name
    x = np.asarray(x, dtype=np.float32)
    wanted = list(dict.fromkeys(tensors))
    try:
        context = oxe.execute_onnx(batched_copy(model, x.shape[0]), {in_name: x}, return_full_exec_context=True)
        return {t: np.asarray(context[t], dtype=np.float32).reshape(x.shape[0], *model.get_tensor_shape(t)[1:]) for t in wanted}
    except Exception:  # graphs with batch-1 constants: one sample at a time
        per_sample = [oxe.execute_onnx(model, {in_name: s[None]}, return_full_exec_context=True) for s in x]
        return {
            t: np.concatenate([np.asarray(c[t], dtype=np.float32) for c in per_sample]).reshape(x.shape[0], *model.get_tensor_shape(t)[1:])
            for t in wanted
        }


def reference_outputs(model: ModelWrapper, x: np.ndarray, is_qonnx: bool) -> tuple[np.ndarray, str]:
    """Outputs of the original model, flattened per sample, and the executor's name."""
    return model_outputs(model, x, qonnx=is_qonnx), ("qonnx execution" if is_qonnx else "onnxruntime")


REGRESSION_TOLERANCE = 0.02  # of the reference output's range: a sample agrees when every value is this close


def output_task(model: ModelWrapper) -> str:
    """``classification`` for a [batch, classes] output with several classes, ``regression`` for
    anything else (images, feature maps, one value): argmax agreement only means something for the
    first."""
    shape = model.get_tensor_shape(model.graph.output[0].name) or []
    size = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return "classification" if len(shape) == 2 and size > 1 else "regression"


def compare(
    reference: np.ndarray,
    simulated: np.ndarray,
    labels: np.ndarray | None,
    resolution: np.ndarray | float = 0.0,
    task: str = "classification",
) -> dict:
    """Max abs error, argmax agreement and (with labels) both accuracies.

    ``argmax_agreement`` is strict. ``decisive_agreement`` leaves out near-ties: samples where the
    reference's values at the two disagreeing classes differ by no more than ``resolution`` (per
    sample or scalar), the smallest difference the design's output can represent. No
    finite-precision design can order such classes the way float32 does.
    """
    ref_arg, sim_arg = reference.argmax(-1), simulated.argmax(-1)
    rows = np.arange(reference.shape[0])
    margin = reference[rows, ref_arg] - reference[rows, sim_arg]
    tie = (ref_arg != sim_arg) & (margin <= np.broadcast_to(resolution, margin.shape))
    decisive = ~tie
    result = {
        "n_samples": int(reference.shape[0]),
        "max_abs_error": float(np.max(np.abs(reference - simulated))) if reference.size else 0.0,
        "argmax_agreement": float(np.mean(ref_arg == sim_arg)),
        "decisive_agreement": float(np.mean((ref_arg == sim_arg)[decisive])) if decisive.any() else 1.0,
        "near_ties": int(tie.sum()),
        "accuracy_reference": None,
        "accuracy_simulated": None,
    }
    result["task"] = task
    if task == "regression":
        # argmax over pixels or a single value says nothing: a sample agrees when all its values are
        # within REGRESSION_TOLERANCE of the reference's range
        span = float(np.max(reference) - np.min(reference)) if reference.size else 0.0
        # never finer than the design's own output resolution (two LSBs of its output type)
        tolerance = max(REGRESSION_TOLERANCE * span, float(np.max(resolution)) if np.size(resolution) else 0.0, 1e-9)
        within = np.max(np.abs(reference - simulated), axis=-1) <= tolerance
        result.update(
            {
                "decisive_agreement": float(np.mean(within)) if within.size else 1.0,
                "tolerance": tolerance,
                "relative_error": float(result["max_abs_error"] / span) if span > 0 else None,
                "near_ties": 0,
            }
        )
        return result
    if labels is not None:
        result["accuracy_reference"] = float(np.mean(reference.argmax(-1) == labels))
        result["accuracy_simulated"] = float(np.mean(simulated.argmax(-1) == labels))
    return result


def first_divergence(project, canonical: ModelWrapper, x_canonical: np.ndarray, max_samples: int = 16) -> dict | None:
    """The first hls4ml layer whose traced output departs from the canonical ONNX tensor."""
    xs = x_canonical[:max_samples]
    traces = project.trace(xs)
    in_name = canonical.graph.input[0].name
    shape = [1, *canonical.get_tensor_shape(in_name)[1:]]
    contexts = [oxe.execute_onnx(canonical, {in_name: s.reshape(shape)}, return_full_exec_context=True) for s in xs]
    for layer in project.layers:
        if layer.name not in traces or layer.onnx_tensor not in contexts[0]:
            continue
        ref = np.stack([np.asarray(c[layer.onnx_tensor], dtype=np.float64).reshape(-1) for c in contexts])
        sim = traces[layer.name]
        if ref.shape != sim.shape:
            continue
        scale = max(float(np.max(np.abs(ref))), 1e-6)
        error = float(np.max(np.abs(ref - sim)))
        if error > 0.05 * scale:
            return {"layer": layer.name, "onnx_tensor": layer.onnx_tensor, "max_abs_error": error, "tensor_max_abs": scale}
    return None
