"""Shared machinery of the pruning passes: finding prunable weights, counting ops, evaluating.

Pruning runs on the user's model as loaded (ONNX or QONNX, its own layout), before
canonicalization, so the data is in the model's layout and quantizers are still visible.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from onnx import helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.infer_shapes import InferShapes

from edgec.cost.coster import DesignCosting
from edgec.errors import DataError
from edgec.verify import model_outputs

LINEAR_OPS = ("MatMul", "Gemm", "Conv")
WEIGHT_QUANTIZERS = ("Quant", "BipolarQuant")
# Evaluations use at most this many samples (deterministically the first ones): enough to resolve
# 0.5-point accuracy differences (standard error of a 1000-sample accuracy near 98%: 0.44 pt).
MAX_EVAL_SAMPLES = 1000


def attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclass
class WeightRef:
    """A prunable layer: its MatMul/Gemm/Conv node and where its (latent) weights live.

    ``tensor`` is the initializer edited by pruning: the weights themselves, or the latent
    weights a weight quantizer (``quant``) reads. ``out_axis``/``in_axis`` index the output and
    input channels of that initializer.
    """

    node: object
    name: str
    tensor: str
    quant: object | None
    kind: str  # dense | conv
    out_axis: int
    in_axis: int
    group: int = 1

    @property
    def binary(self) -> bool:
        return self.quant is not None and self.quant.op_type == "BipolarQuant"

    def get(self, model: ModelWrapper) -> np.ndarray:
        return np.asarray(model.get_initializer(self.tensor), dtype=np.float32)

    def set(self, model: ModelWrapper, value: np.ndarray) -> None:
        model.set_initializer(self.tensor, np.asarray(value, dtype=np.float32))

    def effective(self, model: ModelWrapper) -> np.ndarray:
        """The weights the layer multiplies by (after its weight quantizer)."""
        latent = self.get(model)
        if self.quant is None:
            return latent
        if self.quant.op_type == "BipolarQuant":
            scale = model.get_initializer(self.quant.input[1])
            scale = np.asarray(scale if scale is not None else 1.0, dtype=np.float32)
            return np.where(latent >= 0, 1.0, -1.0).astype(np.float32) * scale
        from qonnx.custom_op.general.quant import quant

        params = [model.get_initializer(i) for i in self.quant.input[1:4]]
        if any(p is None for p in params):
            return latent
        mode = attr(self.quant, "rounding_mode", "ROUND")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        signed, narrow = int(attr(self.quant, "signed", 1)), int(attr(self.quant, "narrow", 0))
        return np.asarray(quant(latent, *params, signed=signed, narrow=narrow, rounding_mode=mode), dtype=np.float32)


def _weight_source(model: ModelWrapper, tensor: str) -> tuple[str, object | None, list[int] | None] | None:
    """Follow a layer's weight input up to its initializer through at most one weight quantizer
    and one Transpose (Brevitas/FINN exports: Quant -> Transpose -> MatMul)."""
    quant, perm = None, None
    for _ in range(3):
        if model.get_initializer(tensor) is not None:
            return tensor, quant, perm
        producer = model.find_producer(tensor)
        if producer is None:
            return None
        if producer.op_type in WEIGHT_QUANTIZERS and quant is None:
            quant = producer
        elif producer.op_type == "Transpose" and perm is None:
            perm = list(attr(producer, "perm", [1, 0]))
        else:
            return None
        tensor = producer.input[0]
    return None


def prunable_layers(model: ModelWrapper) -> list[WeightRef]:
    """Every MatMul/Gemm/Conv whose weights are a constant (possibly behind a weight quantizer
    and a transpose). Axes are given for the initializer that holds the weights."""
    refs = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in LINEAR_OPS or len(node.input) < 2:
            continue
        source = _weight_source(model, node.input[1])
        if source is None:
            continue
        tensor, quant, perm = source
        name = node.name or f"{node.op_type}_{index}"

        def axis(a: int, perm: list[int] | None = perm) -> int:
            return perm[a] if perm else a

        if node.op_type == "MatMul":
            refs.append(WeightRef(node, name, tensor, quant, "dense", out_axis=axis(1), in_axis=axis(0)))
        elif node.op_type == "Gemm":
            trans_b = int(attr(node, "transB", 0))
            refs.append(
                WeightRef(node, name, tensor, quant, "dense", out_axis=axis(0 if trans_b else 1), in_axis=axis(1 if trans_b else 0))
            )
        else:
            refs.append(WeightRef(node, name, tensor, quant, "conv", out_axis=axis(0), in_axis=axis(1), group=int(attr(node, "group", 1))))
    return refs


def _positions(model: ModelWrapper, ref: WeightRef) -> int:
    """Output positions a layer computes per inference (pixels for Conv, rows for MatMul)."""
    shape = model.get_tensor_shape(ref.node.output[0]) or []
    if ref.kind == "conv":
        return int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return int(np.prod(shape[1:-1])) if len(shape) > 2 else 1


def layer_ops(model: ModelWrapper) -> dict[str, dict]:
    """Per prunable layer: MACs (binary ops for binary layers), parameters, non-zero parameters."""
    model = model.transform(InferShapes())
    stats = {}
    for ref in prunable_layers(model):
        weights = ref.effective(model)
        nonzero = int(np.count_nonzero(weights))
        stats[ref.name] = {
            "binary": ref.binary,
            "params": int(weights.size),
            "nonzero": nonzero,
            "ops": nonzero * _positions(model, ref),
            "dense_ops": int(weights.size) * _positions(model, ref),
        }
    return stats


def totals(stats: dict[str, dict]) -> tuple[int, int]:
    """(ops, non-zero params) over all layers."""
    return sum(s["ops"] for s in stats.values()), sum(s["nonzero"] for s in stats.values())


AGREEMENT_DEVIATION = 0.25  # a sample's outputs may move this much (relative L2) and still agree


def agreeing_samples(reference: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Per sample: same top class and outputs within AGREEMENT_DEVIATION (relative L2) of the reference."""
    same = reference.argmax(-1) == outputs.argmax(-1)
    norm = np.linalg.norm(reference, axis=-1)
    moved = np.linalg.norm(outputs - reference, axis=-1)
    return same & (moved <= AGREEMENT_DEVIATION * np.maximum(norm, 1e-12))


def relative_rms(reference: np.ndarray, outputs: np.ndarray) -> float:
    """RMS of the change over RMS of the reference."""
    scale = float(np.sqrt(np.mean(np.square(reference)))) if reference.size else 0.0
    return float(np.sqrt(np.mean(np.square(outputs - reference)))) / scale if scale > 0 else 0.0


@dataclass
class PruneContext:
    """Data and the quality metric the passes use: accuracy with labels, otherwise argmax
    agreement with the model as it was before the first pruning pass. ``coster`` is the design the
    model will be built into (``edgec.cost.coster.DesignCosting``: the target, where each layer
    runs, the build's options), which ``hardware_aware`` pruning needs."""

    x: np.ndarray | None
    y: np.ndarray | None
    seed: int = 0
    progress: Callable[[str], None] | None = None
    coster: DesignCosting | None = None
    _reference: np.ndarray | None = field(default=None, repr=False)

    @property
    def has_data(self) -> bool:
        return self.x is not None

    @property
    def metric(self) -> str:
        return "accuracy" if self.y is not None else "agreement"

    def eval_x(self) -> np.ndarray:
        if self.x is None:
            raise DataError("this pruning step needs data", hint="pass --data")
        return self.x[:MAX_EVAL_SAMPLES]

    def set_reference(self, model: ModelWrapper) -> None:
        if self.x is not None and self.y is None:
            self._reference = model_outputs(model, self.eval_x())

    def evaluate(self, model: ModelWrapper) -> float | None:
        """Accuracy, or without labels agreement with the unchanged model, in [0, 1]; None without data.

        A sample agrees when its top class is the same *and* its outputs moved by at most
        AGREEMENT_DEVIATION of their L2 norm: on random inputs a degenerate model (one that says
        the same class for everything, e.g. quantized to 2 bits) keeps its argmax but not its outputs."""
        if self.x is None:
            return None
        outputs = model_outputs(model, self.eval_x())
        if self.y is not None:
            return float(np.mean(outputs.argmax(-1) == self.y[:MAX_EVAL_SAMPLES]))
        if self._reference is None:  # the first model evaluated is the one the others are compared with
            self._reference = outputs
        return float(np.mean(agreeing_samples(self._reference, outputs)))

    def deviation(self, model: ModelWrapper) -> float | None:
        """How far the outputs moved from the unchanged model's: relative RMS over the data (None without a reference)."""
        if self.x is None or self._reference is None:
            return None
        return relative_rms(self._reference, model_outputs(model, self.eval_x()))

    def say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)


@dataclass
class PruneRecord:
    """What one pass did (becomes a report.json ``passes[]`` entry)."""

    name: str
    params: dict
    layers: dict[str, dict] = field(default_factory=dict)  # per layer: ratio and details
    notes: list[str] = field(default_factory=list)
    mode: str | None = None


def max_drop_points(params: dict) -> float | None:
    value = params.get("max_drop")
    return float(value) if value is not None else None


def largest_within_drop(
    candidates: list[float],
    apply: Callable[[float], ModelWrapper],
    ctx: PruneContext,
    baseline: float | None,
    max_drop: float | None,
) -> tuple[float, ModelWrapper, float | None]:
    """The largest candidate ratio whose model loses at most ``max_drop`` points against
    ``baseline`` (candidates ascending; bisection, assuming loss grows with the ratio).
    Without a limit or without data, the last candidate."""
    if max_drop is None or baseline is None:
        ratio = candidates[-1]
        model = apply(ratio)
        return ratio, model, ctx.evaluate(model) if ctx.has_data else None
    best: tuple[float, ModelWrapper, float | None] | None = None
    lo, hi = 0, len(candidates) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        model = apply(candidates[mid])
        score = ctx.evaluate(model)
        if score is not None and (baseline - score) * 100 <= max_drop + 1e-9:
            best = (candidates[mid], model, score)
            lo = mid + 1
        else:
            hi = mid - 1
    if best is None:
        model = apply(0.0)
        return 0.0, model, ctx.evaluate(model)
    return best


def timer() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: round(time.perf_counter() - start, 4)


def layer_bias(model: ModelWrapper, node) -> str | None:
    """The bias initializer of a MatMul/Gemm/Conv node: its third input, or for a MatMul the
    initializer added to its output by its only consumer ``Add``; None if there is none."""
    if node.op_type in ("Conv", "Gemm"):
        if len(node.input) > 2 and node.input[2] and model.get_initializer(node.input[2]) is not None:
            return node.input[2]
        return None
    consumers = model.find_consumers(node.output[0]) or []
    if len(consumers) == 1 and consumers[0].op_type == "Add":
        others = [i for i in consumers[0].input if i != node.output[0]]
        if len(others) == 1 and model.get_initializer(others[0]) is not None:
            return others[0]
    return None


def magnitude_masks(weights: dict[str, np.ndarray], sparsity: float, scope: str) -> dict[str, np.ndarray]:
    """Keep-masks removing the ``sparsity`` fraction of smallest-|w| weights, per layer or globally."""
    masks = {}
    if scope == "global":
        everything = np.concatenate([np.abs(w).reshape(-1) for w in weights.values()]) if weights else np.zeros(0)
        k = int(round(sparsity * everything.size))
        threshold = np.partition(everything, k - 1)[k - 1] if k > 0 else -1.0
        for name, w in weights.items():
            masks[name] = np.abs(w) > threshold
        return masks
    for name, w in weights.items():
        flat = np.abs(w).reshape(-1)
        k = int(round(sparsity * flat.size))
        keep = np.ones(flat.size, dtype=bool)
        if k > 0:
            keep[np.argsort(flat, kind="stable")[:k]] = False
        masks[name] = keep.reshape(w.shape)
    return masks


def magnitude_score(effective: np.ndarray, latent: np.ndarray) -> np.ndarray:
    """|effective| with |latent| breaking ties (scaled below the smallest non-zero |effective|)."""
    eff, lat = np.abs(effective), np.abs(latent)
    nonzero = eff[eff > 0]
    step = float(nonzero.min()) if nonzero.size else 1.0
    return eff + 0.5 * step * lat / (float(lat.max()) or 1.0)
