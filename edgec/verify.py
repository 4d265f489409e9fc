"""Run the reference (onnxruntime, or qonnx execution for QONNX) and compare it with the C-sim."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import qonnx.core.onnx_exec as oxe
from qonnx.core.modelwrapper import ModelWrapper

ort.set_default_logger_severity(3)


def reference_outputs(model: ModelWrapper, x: np.ndarray, is_qonnx: bool) -> tuple[np.ndarray, str]:
    """Outputs of the original model (batch of one at a time), flattened per sample."""
    in_name = model.graph.input[0].name
    out_name = model.graph.output[0].name
    if is_qonnx:
        outs = [oxe.execute_onnx(model, {in_name: s[None]})[out_name] for s in x]
        return np.stack([np.asarray(o, dtype=np.float64).reshape(-1) for o in outs]), "qonnx execution"
    options = ort.SessionOptions()
    # Fused kernels change results of QDQ models (STACK-NOTES): run the graph exactly as written.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outs = [session.run([out_name], {in_name: s[None]})[0] for s in x]
    return np.stack([np.asarray(o, dtype=np.float64).reshape(-1) for o in outs]), "onnxruntime"


def compare(reference: np.ndarray, simulated: np.ndarray, labels: np.ndarray | None, resolution: np.ndarray | float = 0.0) -> dict:
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
    if labels is not None:
        result["accuracy_reference"] = float(np.mean(reference.argmax(-1) == labels))
        result["accuracy_simulated"] = float(np.mean(simulated.argmax(-1) == labels))
    return result


def first_divergence(project, canonical: ModelWrapper, x_canonical: np.ndarray, max_samples: int = 16) -> dict | None:
    """The first hls4ml layer whose traced output departs from the canonical ONNX tensor."""
    xs = x_canonical[:max_samples]
    traces = project.trace(xs)
    in_name = canonical.graph.input[0].name
    contexts = [oxe.execute_onnx(canonical, {in_name: s[None]}, return_full_exec_context=True) for s in xs]
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
