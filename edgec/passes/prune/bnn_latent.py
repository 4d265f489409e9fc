"""`bnn-latent`: prune binary (BNN) layers by latent-weight magnitude, making them ternary.

A binary layer multiplies by ``BipolarQuant(latent)`` = +-scale. Its latent (float) weights say how
settled each binary weight is: a weight whose latent value sits near zero flips sign easily and
carries least. The pass removes the smallest-|latent| weights of each binary layer. A removed
weight must become zero, which ``BipolarQuant`` cannot express (it maps 0 to +1), so each pruned
layer's ``BipolarQuant(latent)`` is replaced by a ternary quantizer: a QONNX ``Quant`` node
(bit width 2, signed, narrow range, the layer's scale, zero point 0, ROUND) reading a new
initializer ``sign(latent) * scale`` for kept weights and ``0`` for removed ones, so it yields
exactly ``+-scale`` or ``0`` -- the kept weights are bit-for-bit the binary weights they were.

How much of each layer goes:

- with data ("sensitivity-allocated"): each binary layer alone is pruned along a ladder of
  ratios and the metric drop measured (accuracy with labels, else agreement with the unpruned
  model); the layers' ratios are then chosen greedily to remove the fraction ``ratio`` of all binary
  ops (ops = weights x output positions, so big layers count more) at the least summed measured
  loss: repeatedly take the ladder step with the smallest loss per op removed. The combined model
  is measured; with ``max_drop`` (points), if it loses more, the op target is lowered step by step
  until it does not, and the pass says it stopped short of ``ratio``;
- without data ("data-free uniform"): the same ``ratio`` for every binary layer.

Non-binary layers are left alone (``magnitude`` and the others handle them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper

from edgec.errors import OptionError
from edgec.passes.prune.base import PruningPass
from edgec.passes.prune.common import WeightRef, agreeing_samples, layer_ops, max_drop_points, model_outputs, prunable_layers

DEFAULT_LADDER = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95
# Allocation cost of a ladder point: the metric drop in points, plus this many points per percent
# of samples whose prediction changed -- a finer signal than the drop alone, which a few hundred
# samples resolve only in coarse steps (and whose flips can cancel out).
CHANGED_WEIGHT = 0.1
# Steps of the max_drop back-off over the op target (down from ``ratio`` to 0 in ratio / BACKOFF_STEPS).
BACKOFF_STEPS = 20


def parse_ladder(value: object) -> tuple[float, ...]:
    """``None`` -> the default ladder; a number ``s`` -> ``s, 2s, ...`` below 1; ``"a:b:s"`` -> ``a, a+s, ... <= b``."""
    if value is None:
        return DEFAULT_LADDER
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            start, stop, step = float(value), 1.0 - 1e-9, float(value)
        else:
            start, stop, step = (float(part) for part in str(value).split(":"))
    except ValueError:
        raise OptionError(f"--prune bnn-latent: ladder={value} must be a step (0.1) or start:stop:step (0.1:0.9:0.1)") from None
    if not (0.0 < step < 1.0 and 0.0 < start < 1.0 and start <= stop):
        raise OptionError(f"--prune bnn-latent: ladder={value}: ratios must lie in (0, 1) with a positive step")
    count = int(np.floor((min(stop, 0.999) - start) / step + 1e-9)) + 1
    return tuple(round(start + i * step, 6) for i in range(count))


@dataclass
class BinaryLayer:
    """One binary layer: its weight order (least important first), size and per-inference ops."""

    name: str
    tensor: str
    order: np.ndarray  # flat indices of the latent weights, ascending |latent|
    size: int
    positions: int
    ladder: dict[float, float] = field(default_factory=dict)  # ratio -> metric drop (points)
    changed: dict[float, float] = field(default_factory=dict)  # ratio -> fraction of predictions changed

    @property
    def ops(self) -> int:
        return self.size * self.positions

    def removed(self, ratio: float) -> int:
        """Weights removed at ``ratio`` (rounded to whole weights)."""
        return int(round(ratio * self.size))


def _unique_name(model: ModelWrapper, wanted: str) -> str:
    taken = set(model.get_all_tensor_names()) | {i.name for i in model.graph.initializer}
    name, index = wanted, 0
    while name in taken:
        index += 1
        name = f"{wanted}_{index}"
    return name


def ternarize(model: ModelWrapper, ref: WeightRef, removed: np.ndarray) -> None:
    """Replace ``ref``'s ``BipolarQuant(latent, scale)`` by ``Quant(sign(latent) * scale * keep, scale, 0, 2)``
    (signed, narrow: levels -1, 0, +1), in place. ``removed`` holds the flat indices to zero."""
    quant = ref.quant
    latent = ref.get(model)
    scale_name = quant.input[1]
    scale = np.asarray(model.get_initializer(scale_name), dtype=np.float32)
    keep = np.ones(latent.size, dtype=np.float32)
    keep[removed] = 0.0
    # BipolarQuant: x >= 0 -> +1, else -1; times the scale so that Quant's x / scale is exactly +-1 or 0
    levels = np.where(latent >= 0, 1.0, -1.0).astype(np.float32) * keep.reshape(latent.shape)
    values = np.asarray(levels * scale, dtype=np.float32)
    if values.shape != latent.shape:
        raise OptionError(f"--prune bnn-latent: {ref.name}: scale of shape {list(scale.shape)} does not broadcast to the weights")
    base = quant.name or ref.tensor
    values_name = _unique_name(model, f"{ref.tensor}_ternary")
    zero_name = _unique_name(model, f"{base}_ternary_zeropoint")
    bits_name = _unique_name(model, f"{base}_ternary_bitwidth")
    model.set_initializer(values_name, values)
    model.set_initializer(zero_name, np.asarray(0.0, dtype=np.float32))
    model.set_initializer(bits_name, np.asarray(2.0, dtype=np.float32))
    node = helper.make_node(
        "Quant",
        [values_name, scale_name, zero_name, bits_name],
        list(quant.output),
        name=f"{quant.name}_ternary" if quant.name else "",
        domain=quant.domain,
        signed=1,
        narrow=1,
        rounding_mode="ROUND",
    )
    graph = model.graph
    index = list(graph.node).index(quant)
    graph.node.remove(quant)
    graph.node.insert(index, node)
    if model.get_tensor_datatype(quant.output[0]) == DataType["BIPOLAR"]:
        model.set_tensor_datatype(quant.output[0], DataType["TERNARY"])
    if not model.find_consumers(ref.tensor) and ref.tensor not in [i.name for i in graph.input]:
        model.del_initializer(ref.tensor)


class BnnLatentPruning(PruningPass):
    method = "bnn-latent"
    PARAMS = {"ratio": 0.5, "max_drop": None, "ladder": None, "seed": 0}
    needs_data = False
    ladder: tuple[float, ...] = DEFAULT_LADDER

    def check_params(self) -> None:
        """``ratio`` a fraction of binary ops, ``max_drop`` points >= 0, ``ladder`` a step or range, ``seed`` an int."""
        self.fraction("ratio")
        self.ladder = parse_ladder(self.params.get("ladder"))
        max_drop = self.params.get("max_drop")
        if max_drop is not None and (not isinstance(max_drop, (int, float)) or max_drop < 0):
            raise OptionError(f"--prune bnn-latent: max_drop={max_drop} must be a non-negative number of points")
        if not isinstance(self.params["seed"], int):
            raise OptionError(f"--prune bnn-latent: seed={self.params['seed']} must be an integer")

    # -- building pruned models ------------------------------------------------------------

    def _binary_layers(self, model: ModelWrapper) -> list[BinaryLayer]:
        """The model's binary layers (BipolarQuant weights with a constant scale), weights ranked by |latent|."""
        stats = layer_ops(model)
        rng = np.random.default_rng(self.params["seed"])
        layers = []
        for ref in prunable_layers(model):
            if not ref.binary or model.get_initializer(ref.quant.input[1]) is None:
                continue
            magnitude = np.abs(ref.get(model)).reshape(-1)
            # ascending |latent|; equal magnitudes (e.g. latents clipped at +-1) in a seeded random order
            order = np.lexsort((rng.random(magnitude.size), magnitude))
            stat = stats[ref.name]
            positions = stat["dense_ops"] // stat["params"] if stat["params"] else 1
            layers.append(BinaryLayer(ref.name, ref.tensor, order, int(magnitude.size), int(positions)))
        return layers

    def _apply(self, model: ModelWrapper, layers: list[BinaryLayer], ratios: dict[str, float]) -> ModelWrapper:
        """A copy of ``model`` with each named binary layer pruned to its ratio (ternary)."""
        pruned = ModelWrapper(model.model.__deepcopy__())
        refs = {ref.name: ref for ref in prunable_layers(pruned) if ref.binary}
        for layer in layers:
            k = layer.removed(ratios.get(layer.name, 0.0))
            if k > 0:
                ternarize(pruned, refs[layer.name], layer.order[:k])
        return pruned

    # -- measuring ---------------------------------------------------------------------------

    def _measure(self, model: ModelWrapper) -> tuple[float, np.ndarray]:
        """(metric in [0, 1], predictions) on the evaluation samples, as ``ctx.evaluate`` scores."""
        outputs = model_outputs(model, self.ctx.eval_x())
        predicted = outputs.argmax(-1)
        if self.ctx.y is not None:
            return float(np.mean(predicted == self.ctx.y[: len(predicted)])), predicted
        # the unpruned model's outputs (set_reference): same class and outputs close, as ctx.evaluate scores
        return float(np.mean(agreeing_samples(self.ctx._reference, outputs))), predicted

    def _sensitivity(self, model: ModelWrapper, layers: list[BinaryLayer], baseline: float, predicted: np.ndarray) -> None:
        """Fill each layer's ladder: the metric drop (points) and the fraction of changed predictions
        when only that layer is pruned to each ladder ratio."""
        for layer in layers:
            for ratio in self.ladder:
                if layer.removed(ratio) == 0:
                    layer.ladder[ratio], layer.changed[ratio] = 0.0, 0.0
                    continue
                score, now = self._measure(self._apply(model, layers, {layer.name: ratio}))
                layer.ladder[ratio] = round((baseline - score) * 100, 4)
                layer.changed[ratio] = round(float(np.mean(now != predicted)), 4)
            self.ctx.say(f"prune bnn-latent: {layer.name} drop by ratio " + ", ".join(f"{r:g}:{d:+.2f}" for r, d in layer.ladder.items()))

    @staticmethod
    def allocate(layers: list[BinaryLayer], target_ops: float) -> dict[str, float]:
        """Per-layer ratios removing at least ``target_ops`` binary ops (if the ladders reach it) at
        the least summed cost: greedy over ladder steps by cost per op removed, where a layer's
        cost curve is its measured cost made non-negative and non-decreasing; the last step taken
        is trimmed so the ops removed just meet the target."""
        curves = {}
        for layer in layers:
            ratios = [0.0, *sorted(layer.ladder)]
            raw = [0.0] + [max(layer.ladder[r], 0.0) + CHANGED_WEIGHT * 100 * layer.changed[r] for r in ratios[1:]]
            curves[layer.name] = (ratios, list(np.maximum.accumulate(raw)))
        at = {layer.name: 0 for layer in layers}
        removed = 0.0
        ratios_out = {layer.name: 0.0 for layer in layers}
        while removed < target_ops:
            best = None  # (slope, -ops, layer, step index)
            for layer in layers:
                ratios, costs = curves[layer.name]
                here = at[layer.name]
                for j in range(here + 1, len(ratios)):
                    gained = (ratios[j] - ratios[here]) * layer.ops
                    if gained <= 0:
                        continue
                    key = ((costs[j] - costs[here]) / gained, -gained)
                    if best is None or key < best[:2]:
                        best = (*key, layer, j)
            if best is None:
                break  # every layer at the top of its ladder
            _, neg_gained, layer, j = best
            ratios, _ = curves[layer.name]
            before = ratios[at[layer.name]]
            if removed - neg_gained >= target_ops:  # trim this step to meet the target exactly
                needed = (target_ops - removed) / layer.ops
                ratios_out[layer.name] = min(ratios[j], float(np.ceil((before + needed) * layer.size - 1e-9)) / layer.size)
                removed = target_ops
                break
            at[layer.name] = j
            ratios_out[layer.name] = ratios[j]
            removed -= neg_gained
        return ratios_out

    # -- the pass ----------------------------------------------------------------------------

    def prune(self, model: ModelWrapper) -> ModelWrapper:
        """Prune the binary layers (see the module docstring); fills ``self.record``."""
        others = [ref.name for ref in prunable_layers(model) if not ref.binary]
        if others:
            self.record.notes.append(f"non-binary layers left untouched: {', '.join(others)}")
        layers = self._binary_layers(model)
        if not layers:
            self.record.notes.append("no binary (BipolarQuant-weight) layers: nothing to prune")
            self.record.mode = "no binary layers"
            return model
        target = float(self.params["ratio"])
        total_ops = sum(layer.ops for layer in layers)
        if not self.ctx.has_data:
            self.record.mode = "data-free uniform"
            ratios = {layer.name: target for layer in layers}
            pruned = self._apply(model, layers, ratios)
        else:
            self.record.mode = "sensitivity-allocated"
            if self.ctx.y is None and self.ctx._reference is None:
                self.ctx.set_reference(model)
            baseline, predicted = self._measure(model)
            self._sensitivity(model, layers, baseline, predicted)
            self.record.notes.append(
                f"per-layer sensitivity on {len(predicted)} samples ({self.ctx.metric}), ladder {self.ladder[0]:g}..{self.ladder[-1]:g}"
            )
            allocations: dict[float, dict[str, float]] = {}

            def build(fraction: float) -> ModelWrapper:
                allocations[fraction] = self.allocate(layers, fraction * total_ops)
                return self._apply(model, layers, allocations[fraction])

            max_drop = max_drop_points(self.params)
            chosen, pruned = target, build(target)
            if max_drop is not None:
                # measured loss is not monotone in the op target (a few hundred samples): walk the
                # target down and keep the largest one within max_drop
                candidates = [target * i / BACKOFF_STEPS for i in range(BACKOFF_STEPS, -1, -1)]
                for fraction in candidates:
                    candidate = pruned if fraction == target else build(fraction)
                    score, _ = self._measure(candidate)
                    if (baseline - score) * 100 <= max_drop + 1e-9 or fraction == 0.0:
                        chosen, pruned = fraction, candidate
                        break
            ratios = allocations.get(chosen, {layer.name: 0.0 for layer in layers})
        achieved = sum(layer.removed(ratios[layer.name]) * layer.positions for layer in layers) / total_ops
        self.params["achieved_ratio"] = round(achieved, 4)
        if self.ctx.has_data and achieved + 1e-6 < target:
            reason = (
                f"more would lose over {self.params['max_drop']} points"
                if self.params.get("max_drop") is not None and achieved < self._reachable(layers, target) - 1e-6
                else f"the ladder stops at {self.ladder[-1]:g} per layer"
            )
            self.record.notes.append(f"stopped at {achieved:.3f} of binary ops removed, short of ratio {target:.3f}: {reason}")
        for layer in layers:
            k = layer.removed(ratios[layer.name])
            entry = {
                "chosen_ratio": round(k / layer.size, 4),
                "pruned_weights": k,
                "binary_ops_before": layer.ops,
                "binary_ops_after": (layer.size - k) * layer.positions,
                "ternary": k > 0,
            }
            if layer.ladder:
                entry["ladder"] = {f"{r:g}": d for r, d in layer.ladder.items()}
                entry["ladder_changed"] = {f"{r:g}": c for r, c in layer.changed.items()}
            self.record.layers[layer.name] = entry
        pruned_names = [layer.name for layer in layers if layer.removed(ratios[layer.name]) > 0]
        if pruned_names:
            self.record.notes.append(
                f"pruned weights are zero: BipolarQuant replaced by a ternary Quant (2-bit, narrow) in {', '.join(pruned_names)}"
            )
        return pruned

    def reprune(self, original: ModelWrapper, current: ModelWrapper, ratios: dict[str, float]) -> ModelWrapper:
        """The model with each binary layer at the ratio this pass chose (``self.record``), except the
        named ones at ``ratios[name]`` (0: binary again), rebuilt from ``original``; the record's
        per-layer figures follow."""
        layers = self._binary_layers(original)
        chosen = {layer.name: float(self.record.layers.get(layer.name, {}).get("chosen_ratio", 0.0)) for layer in layers}
        chosen.update({name: ratio for name, ratio in ratios.items() if name in chosen})
        pruned = self._apply(original, layers, chosen)
        for layer in layers:
            if layer.name in ratios and layer.name in self.record.layers:
                k = layer.removed(chosen[layer.name])
                self.record.layers[layer.name].update(
                    {
                        "chosen_ratio": round(k / layer.size, 4),
                        "pruned_weights": k,
                        "binary_ops_after": (layer.size - k) * layer.positions,
                        "ternary": k > 0,
                    }
                )
        return pruned

    def _reachable(self, layers: list[BinaryLayer], target: float) -> float:
        """The op fraction the ladders can remove at most (capped at ``target``)."""
        top = self.ladder[-1]
        return min(target, sum(layer.removed(top) * layer.positions for layer in layers) / sum(layer.ops for layer in layers))
