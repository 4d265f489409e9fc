"""`spp`: Structured Probabilistic Pruning (Wang, Zhang, Wang, Hu, "Structured Probabilistic Pruning
for Convolutional Neural Network Acceleration", BMVC 2018).

Every weight group ``g`` of a layer carries a pruning probability ``p_g`` (initially 0). Groups are,
with ``group=column`` (default, the paper's choice), the columns of a convolution's im2col weight
matrix -- one (input channel, kh, kw) position across all filters -- and the input neurons (rows)
of a dense layer; with ``group=filter``, whole filters / output neurons (the layer(s) producing the
model's output keep all their outputs then). Each step:

1. rank the groups of each layer by the L1 norm of their current latent weights (rank ``r = 0`` is
   the smallest norm; permanently pruned groups have norm 0 and come first);
2. ``p_g <- clip(p_g + Δ(r_g), 0, 1)`` with the paper's centrally-symmetric exponential increment
   (below); groups reaching ``p_g = 1`` are pruned permanently (their weights are zeroed);
3. sample keep-masks ``m_g ~ Bernoulli(1 - p_g)`` and, when fine-tuning, run a few mini-batch
   updates with the masked weights.

It stops once every layer has ``K = ceil(R·N_g)`` groups permanently pruned (at most ``N_g - 1``);
a layer that has not converged within ``steps`` gets its ``K`` groups with the highest ``p`` (then
the lowest norm) pruned. After convergence a short recovery fine-tune (``recover`` steps) trains the
survivors under the final masks.

**The increment.** With ``N_g`` groups, target ratio ``R``, maximal increment ``A`` and flatness
``u`` (paper: ``A = 0.05``, ``u = 0.25``)::

    Δ(r) = A·exp(-α r)                      for r <= N_c
    Δ(r) = 2uA - A·exp(-α (2 N_c - r))      for r >  N_c

The two branches are point-symmetric about ``(N_c, uA)`` (``Δ(N_c + d) + Δ(N_c - d) = 2uA``) and
continuous there, which requires ``A·exp(-α N_c) = uA``, i.e. ``N_c = ln(1/u) / α``. Asking the
increment to cross zero at rank ``R·N_g`` (groups ranked below it drift towards pruning, above it
towards keeping) gives ``2uA = A·exp(-α (2 N_c - R N_g))``, i.e. ``α (2 N_c - R N_g) = ln(1/(2u))``;
substituting ``N_c``: ``2 ln(1/u) - α R N_g = ln(1/(2u))``, so::

    α = ln(2/u) / (R·N_g),      N_c = R·N_g · ln(1/u) / ln(2/u)

For ``u = 1/4``: ``α = 3·ln(2) / (R N_g)`` and ``N_c = (2/3)·R N_g``; ``Δ(0) = A`` and the
highest ranks get about ``-3.5 A`` (at ``R = 0.5``). A zero crossing needs ``u < 1/2``.

The paper runs the schedule over thousands of updates; here it has ``steps`` (default 200), and
the last group to prune (rank ``K - 1``, just below the crossing) gets a small increment (about
``0.05 A`` for ``N_g = 36``), so ``A`` is raised per layer where needed for that group to reach
``p = 1`` within half the steps on stable ranks (:func:`schedule_amplitude`; never below 0.05).

**Modes.** With labelled data, torch installed and a graph :mod:`edgec.passes.prune.torch_graph`
translates, SPP fine-tunes while pruning (Adam on cross-entropy of the logits -- NLL of the log when
the graph ends in ``Softmax`` -- with the current masks applied) and writes the trained, masked
weights back into the ONNX initializers (the graph is otherwise unchanged). Otherwise it runs the
same probability schedule without training ("one-shot schedule"), which amounts to L1-norm group
ranking; there ``max_drop`` bisects the ratio. With fine-tuning, ``max_drop`` is checked at the end
and a larger loss is reported in the notes. Finally, all-zero channels are removed physically
by :func:`edgec.passes.prune.channels.remove_zero_channels` when that module is available.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper

from edgec.errors import OptionError
from edgec.passes.prune.base import PruningPass
from edgec.passes.prune.common import (
    LINEAR_OPS,
    PruneContext,
    WeightRef,
    largest_within_drop,
    layer_bias,
    max_drop_points,
    model_outputs,
    prunable_layers,
)

# The paper's schedule constants: maximal probability increment and flatness of the increment.
INCREMENT = 0.05
FLATNESS = 0.25
# The schedule is sized to converge within this fraction of the steps (see schedule_amplitude).
CONVERGE_FRACTION = 0.5
# Progress line every this many steps.
SAY_EVERY = 20
# Ratio ladder the one-shot max_drop search walks (fractions of the target).
LADDER_STEPS = 10
# Fine-tune models with at most this many trainable values on one thread.
SMALL_MODEL_PARAMS = 1_000_000
# The torch translation must reproduce the model's outputs to this (relative) tolerance.
AGREEMENT_TOLERANCE = 1e-3


def spp_increment(ranks: np.ndarray, n_groups: int, ratio: float, amplitude: float = INCREMENT, flatness: float = FLATNESS) -> np.ndarray:
    """The paper's probability increment Δ(r) for groups of rank ``ranks`` (0 = smallest norm) in a
    layer of ``n_groups`` groups with target ``ratio``: positive below rank ``ratio·n_groups``, zero
    there, negative above (see the module docstring for the derivation of α and N_c)."""
    if not 0.0 < flatness < 0.5:
        raise ValueError("flatness u must be in (0, 1/2) for the increment to cross zero")
    crossing = ratio * n_groups
    alpha = math.log(2.0 / flatness) / crossing
    centre = math.log(1.0 / flatness) / alpha
    r = np.asarray(ranks, dtype=np.float64)
    low = amplitude * np.exp(-alpha * np.minimum(r, centre))
    high = 2.0 * flatness * amplitude - amplitude * np.exp(-alpha * (2.0 * centre - np.maximum(r, centre)))
    return np.where(r <= centre, low, high)


def schedule_amplitude(n_groups: int, ratio: float, steps: int, minimum: float = INCREMENT) -> float:
    """The increment amplitude A for a layer: the paper's ``minimum`` (0.05), raised so that the last
    group to prune (rank ``K - 1``, whose increment is the smallest positive one) reaches ``p = 1``
    within :data:`CONVERGE_FRACTION` of ``steps`` on stable ranks; the paper's long schedules
    (thousands of updates) need no such adjustment, a few hundred steps do."""
    target = target_groups(n_groups, ratio)
    if target == 0:
        return minimum
    unit = float(spp_increment(np.array([target - 1]), n_groups, ratio, 1.0)[0])
    return max(minimum, 1.0 / (CONVERGE_FRACTION * steps * max(unit, 1e-6)))


def target_groups(n_groups: int, ratio: float) -> int:
    """Groups to prune in a layer: every rank below ``ratio·n_groups`` (``ceil``), keeping one group."""
    return max(0, min(n_groups - 1, math.ceil(ratio * n_groups - 1e-9)))


@dataclass
class GroupLayer:
    """One layer's weight groups and their SPP state.

    ``reduce_axes`` are the axes of the layer's initializer summed into one group norm; a keep-mask
    over the groups reshapes to ``group_shape`` and broadcasts over the initializer.
    """

    ref: WeightRef
    reduce_axes: tuple[int, ...]
    group_shape: tuple[int, ...]
    target: int
    bias: str | None = None  # with filter groups: the bias zeroed together with its filter
    amplitude: float = INCREMENT  # A of the increment
    probability: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pruned: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    done: bool = False
    converged_at: int | None = None

    @property
    def n_groups(self) -> int:
        return int(np.prod(self.group_shape))

    def reset(self) -> None:
        self.probability = np.zeros(self.n_groups)
        self.pruned = np.zeros(self.n_groups, dtype=bool)
        self.done = self.target == 0
        self.converged_at = 0 if self.done else None

    def norms(self, weights: np.ndarray) -> np.ndarray:
        return np.abs(weights).sum(axis=self.reduce_axes).reshape(-1)

    def weight_mask(self, keep: np.ndarray) -> np.ndarray:
        return keep.reshape(self.group_shape).astype(np.float32)

    def bias_mask(self, keep: np.ndarray) -> np.ndarray:
        return keep.astype(np.float32)

    def update(self, weights: np.ndarray, ratio: float, step: int) -> None:
        """One probability update from the current latent weights."""
        if self.done:
            return
        norms = self.norms(weights)
        norms[self.pruned] = 0.0
        ranks = np.empty(self.n_groups, dtype=np.int64)
        ranks[np.argsort(norms, kind="stable")] = np.arange(self.n_groups)
        p = np.clip(self.probability + spp_increment(ranks, self.n_groups, ratio, self.amplitude), 0.0, 1.0)
        p[self.pruned] = 1.0
        new = np.flatnonzero((p >= 1.0) & ~self.pruned)
        room = self.target - int(self.pruned.sum())
        if len(new) > room:  # more reached 1 at once than the target allows: the weakest ones go
            keep_back = new[np.argsort(norms[new], kind="stable")[room:]]
            p[keep_back] = 1.0 - self.amplitude
            new = new[np.argsort(norms[new], kind="stable")[:room]]
        self.pruned[new] = True
        self.probability = p
        if int(self.pruned.sum()) >= self.target:
            self.done, self.converged_at = True, step

    def finish(self, weights: np.ndarray) -> bool:
        """Prune exactly ``target`` groups (highest probability, then lowest norm); True if forced."""
        if self.done:
            return False
        norms = self.norms(weights)
        order = np.lexsort((norms, -self.probability))
        self.pruned = np.zeros(self.n_groups, dtype=bool)
        self.pruned[order[: self.target]] = True
        self.probability[self.pruned] = 1.0
        self.done = True
        return True

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """Keep-mask over the groups: Bernoulli(1 - p) while pruning, the final mask once done."""
        if self.done:
            return ~self.pruned
        return (rng.random(self.n_groups) >= self.probability) & ~self.pruned


def _feeds_output(model: ModelWrapper, ref: WeightRef) -> bool:
    """True if the layer's output reaches a graph output without passing another linear layer."""
    outputs = {o.name for o in model.graph.output}
    frontier, seen = [ref.node.output[0]], set()
    while frontier:
        tensor = frontier.pop()
        if tensor in outputs:
            return True
        if tensor in seen:
            continue
        seen.add(tensor)
        for consumer in model.find_consumers(tensor) or []:
            if consumer.op_type not in LINEAR_OPS:
                frontier.extend(consumer.output)
    return False


class StructuredProbabilisticPruning(PruningPass):
    method = "spp"
    PARAMS = {
        "ratio": 0.5,  # fraction of the groups of every layer to prune
        "group": "column",  # column (im2col columns / dense input rows) | filter (filters / output neurons)
        "steps": 200,  # probability-update steps (at most)
        "updates": 2,  # mini-batch updates per step when fine-tuning
        "recover": 100,  # fine-tuning steps under the final masks after convergence
        "lr": 5e-3,  # Adam learning rate
        "batch": 32,  # mini-batch size
        "max_drop": None,  # accuracy points the pass may lose (ratio bisected; fine-tuned runs judged on held-back data)
        "validation": 0.2,  # with fine-tuning and max_drop: fraction of the data held back to judge the loss
        "seed": None,  # default: the context's seed
    }
    needs_data = False

    def check_params(self) -> None:
        self.fraction("ratio")
        if self.params["group"] not in ("column", "filter"):
            raise OptionError(f"--prune spp: group={self.params['group']} must be column or filter")
        for key in ("steps", "updates", "batch"):
            if not isinstance(self.params[key], int) or self.params[key] < 1:
                raise OptionError(f"--prune spp: {key}={self.params[key]} must be a positive integer")
        if not isinstance(self.params["recover"], int) or self.params["recover"] < 0:
            raise OptionError(f"--prune spp: recover={self.params['recover']} must be a non-negative integer")
        if not isinstance(self.params["lr"], (int, float)) or self.params["lr"] <= 0:
            raise OptionError(f"--prune spp: lr={self.params['lr']} must be positive")
        self.fraction("validation")
        self._train_count: int | None = None  # fine-tune on this many samples (None: all)

    # -- hardware_aware ---------------------------------------------------------------------
    def structured(self) -> bool:
        """``group=filter`` removes whole filters (smaller dense layers, nothing for ``hardware_aware``
        to do); ``group=column`` leaves zero columns inside the layers, like unstructured pruning."""
        return self.params["group"] == "filter"

    def reprune(self, original: ModelWrapper, current: ModelWrapper, ratios: dict[str, float]) -> ModelWrapper:
        """``group=column``: raise each named layer by zeroing more columns (smallest L1 norm of its
        current, possibly fine-tuned, weights) until at least ``ratios[name]`` of its weights are
        zero; a ratio of 0 restores the layer's weights in ``original``."""
        out = ModelWrapper(current.model.__deepcopy__())
        before = {ref.name: ref for ref in prunable_layers(original)}
        for ref in prunable_layers(out):
            ratio = ratios.get(ref.name)
            if ratio is None:
                continue
            if ratio <= 0.0:
                ref.set(out, before[ref.name].get(original))
                continue
            weights = ref.get(out)
            zero = ref.effective(out) == 0
            norms = np.abs(weights).sum(axis=ref.out_axis).reshape(-1)
            zeros_in_group = zero.sum(axis=ref.out_axis).reshape(-1)
            order = np.argsort(norms, kind="stable")
            group_size = weights.shape[ref.out_axis]
            # zeros after zeroing the first k groups: the others' zeros plus k whole groups
            total = int(zero.sum()) - np.cumsum(zeros_in_group[order]) + group_size * np.arange(1, order.size + 1)
            needed = math.ceil(min(ratio, 1.0) * weights.size - 1e-9)
            k = int(np.searchsorted(total >= needed, True)) + 1 if np.any(total >= needed) else order.size
            keep = np.ones(norms.size, dtype=bool)
            keep[order[:k]] = False
            shape = [1 if axis == ref.out_axis else n for axis, n in enumerate(weights.shape)]
            ref.set(out, weights * keep.reshape(shape))
        return out

    # -- set-up ---------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return int(self.params.get("seed", self.ctx.seed))

    def _layers(self, model: ModelWrapper, ratio: float) -> list[GroupLayer]:
        """The layers SPP prunes, with their groups for the ``group`` parameter (fresh state)."""
        filters = self.params["group"] == "filter"
        layers, seen = [], set()
        for ref in prunable_layers(model):
            if ref.binary or ref.tensor in seen or (filters and _feeds_output(model, ref)):
                continue
            seen.add(ref.tensor)
            shape = ref.get(model).shape
            if filters:
                reduce_axes = tuple(a for a in range(len(shape)) if a != ref.out_axis)
            else:
                reduce_axes = (ref.out_axis,)
            group_shape = tuple(1 if a in reduce_axes else n for a, n in enumerate(shape))
            n_groups = int(np.prod(group_shape))
            bias = layer_bias(model, ref.node) if filters else None
            if bias is not None and np.asarray(model.get_initializer(bias)).size != n_groups:
                bias = None
            amplitude = schedule_amplitude(n_groups, ratio, int(self.params["steps"]))
            layer = GroupLayer(ref, reduce_axes, group_shape, target_groups(n_groups, ratio), bias, amplitude)
            layer.reset()
            layers.append(layer)
        return layers

    def _skipped_notes(self, model: ModelWrapper) -> None:
        refs = prunable_layers(model)
        binary = [r.name for r in refs if r.binary]
        if binary:
            self.record.notes.append(f"binary layers left to bnn-latent: {', '.join(binary)}")
        if self.params["group"] == "filter":
            kept = [r.name for r in refs if not r.binary and _feeds_output(model, r)]
            if kept:
                self.record.notes.append(f"group=filter keeps every output of the output layer(s): {', '.join(kept)}")

    def _labels(self) -> np.ndarray | None:
        """The labels as class indices, or None if they are not classification labels."""
        y = np.asarray(self.ctx.y)
        if y.ndim == 2 and y.shape[1] > 1:
            y = y.argmax(1)
        y = y.reshape(-1)
        if len(y) != len(self.ctx.x) or not np.all(np.mod(y, 1) == 0) or y.min(initial=0) < 0:
            return None
        return y.astype(np.int64)

    def _no_training_reason(self, model: ModelWrapper) -> str | None:
        """Why SPP cannot fine-tune here (None: it can)."""
        if not self.ctx.has_data:
            return "no data"
        if self.ctx.y is None:
            return "no labels"
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed"
        from edgec.passes.prune.torch_graph import unsupported_ops

        missing = unsupported_ops(model)
        if missing:
            return f"torch_graph does not translate {', '.join(missing)}"
        shape = model.get_tensor_shape(model.graph.input[0].name) or []
        if not shape or shape[0] != 1:
            return "the model input has no batch dimension"
        if self._labels() is None:
            return "the labels are not class indices"
        return None

    # -- the pass -------------------------------------------------------------------------
    def prune(self, model: ModelWrapper) -> ModelWrapper:
        ratio = float(self.params["ratio"])
        self._skipped_notes(model)
        layers = self._layers(model, ratio)
        if ratio == 0.0 or not layers:
            self.record.mode = "one-shot schedule (nothing to prune)"
            return model
        reason = self._no_training_reason(model)
        pruned: ModelWrapper | None = None
        if reason is None and max_drop_points(self.params) is not None:
            result = self._fine_tuned_within_drop(model, ratio)
            if isinstance(result, str):
                reason = result
            else:
                pruned, layers = result
        elif reason is None:
            result = self._fine_tune(model, layers, ratio)
            if isinstance(result, str):
                reason = result
            else:
                pruned = result
        if pruned is None:
            pruned, layers = self._one_shot(model, ratio, reason or "")
        self._record_layers(layers)
        return self._remove_channels(pruned)

    def _fine_tuned_within_drop(self, model: ModelWrapper, target: float) -> tuple[ModelWrapper, list[GroupLayer]] | str:
        """The largest ratio on the ladder whose fine-tuned model loses at most max_drop points
        (bisection; each candidate is pruned and fine-tuned from the original weights)."""
        max_drop = max_drop_points(self.params)
        # Fine-tune on the first part of the data and judge max_drop on the rest, which training
        # never sees (judging on the training data would reward over-fitting).
        n = len(self.ctx.x)
        self._train_count = max(1, int(round(n * (1.0 - float(self.params["validation"])))))
        judge = PruneContext(self.ctx.x[self._train_count :], self.ctx.y[self._train_count :]) if self._train_count < n else self.ctx
        baseline = judge.evaluate(model)
        tried: dict[float, tuple[ModelWrapper, list[GroupLayer], list[str], str | None]] = {}
        failure: list[str] = []

        def apply(ratio: float) -> ModelWrapper:
            notes_before = list(self.record.notes)
            layers = self._layers(model, ratio)
            result = self._fine_tune(model, layers, ratio) if ratio > 0 and layers else model
            if isinstance(result, str):
                failure.append(result)
                result = model
            tried[ratio] = (result, layers, self.record.notes[len(notes_before) :], self.record.mode)
            self.record.notes[:] = notes_before
            return result

        ladder = [target * (i + 1) / LADDER_STEPS for i in range(LADDER_STEPS)]
        chosen, pruned, _ = largest_within_drop(ladder, apply, judge, baseline, max_drop)
        self.record.notes.append(
            f"max_drop judged on the last {n - self._train_count} of {n} samples, held out from fine-tuning (validation={self.params['validation']})"
        )
        if failure:
            return failure[0]
        if chosen == 0.0:
            self.record.mode = "fine-tuned (no ratio on the ladder stays within max_drop)"
            self.record.notes.append(
                f"every ratio from {ladder[0]:.3f} up loses over {max_drop} points even after fine-tuning: nothing pruned"
            )
            return model, []
        _, layers, notes, mode = tried[chosen]
        self.record.notes.extend(notes)
        self.record.mode = mode
        if chosen < target:
            self.record.notes.append(
                f"stopped at ratio {chosen:.3f} short of {target:.3f}: more would lose over {max_drop} points after fine-tuning"
            )
        self.params["achieved_ratio"] = round(chosen, 4)
        return pruned, layers

    def _record_layers(self, layers: list[GroupLayer]) -> None:
        group = self.params["group"]
        for layer in layers:
            count = int(layer.pruned.sum())
            self.record.layers[layer.ref.name] = {
                "group": group,
                "groups": layer.n_groups,
                "pruned_groups": count,
                "group_ratio": round(count / layer.n_groups, 4),
                "mean_probability": round(float(layer.probability.mean()), 4),
                "converged_step": layer.converged_at,
            }

    def _remove_channels(self, model: ModelWrapper) -> ModelWrapper:
        from edgec.passes.prune.channels import remove_zero_channels

        try:
            smaller, info = remove_zero_channels(model)
        except Exception as error:  # the groups are zeroed either way: keep that model, say why
            self.record.notes.append(f"zeroed groups left in place (channel removal failed: {error})")
            return model
        summary = ", ".join(f"{key}: {value}" for key, value in (info or {}).items())
        self.record.notes.append(f"removed all-zero channels ({summary[:300]})" if summary else "no all-zero channel to remove")
        return smaller

    # -- one-shot schedule ----------------------------------------------------------------
    def _schedule(self, model: ModelWrapper, ratio: float) -> tuple[ModelWrapper, list[GroupLayer], list[str]]:
        """The probability schedule on fixed weights: the masked copy, the layer states and the
        layers that had not converged within ``steps`` (their top-probability groups pruned)."""
        layers = self._layers(model, ratio)
        weights = {layer.ref.tensor: layer.ref.get(model) for layer in layers}
        for step in range(1, int(self.params["steps"]) + 1):
            for layer in layers:
                layer.update(weights[layer.ref.tensor], ratio, step)
            if all(layer.done for layer in layers):
                break
        forced = [layer.ref.name for layer in layers if layer.finish(weights[layer.ref.tensor])]
        pruned = ModelWrapper(model.model.__deepcopy__())
        for layer in layers:
            keep = ~layer.pruned
            layer.ref.set(pruned, weights[layer.ref.tensor] * layer.weight_mask(keep))
            if layer.bias is not None:
                bias = np.asarray(model.get_initializer(layer.bias), dtype=np.float32)
                pruned.set_initializer(layer.bias, bias * layer.bias_mask(keep).reshape(bias.shape))
        return pruned, layers, forced

    def _one_shot(self, model: ModelWrapper, target: float, reason: str) -> tuple[ModelWrapper, list[GroupLayer]]:
        states: dict[float, tuple[list[GroupLayer], list[str]]] = {}

        def apply(ratio: float) -> ModelWrapper:
            if ratio == 0.0:
                states[ratio] = (self._layers(model, 0.0), [])
                return ModelWrapper(model.model.__deepcopy__())
            pruned, layers, forced = self._schedule(model, ratio)
            states[ratio] = (layers, forced)
            return pruned

        max_drop = max_drop_points(self.params)
        baseline = self.ctx.evaluate(model) if max_drop is not None else None
        ladder = [target * (i + 1) / LADDER_STEPS for i in range(LADDER_STEPS)]
        chosen, pruned, score = largest_within_drop(ladder, apply, self.ctx, baseline, max_drop)
        self.record.mode = f"one-shot schedule ({reason})"
        if chosen < target:
            self.record.notes.append(f"stopped at ratio {chosen:.3f} short of {target:.3f}: more would lose over {max_drop} points")
        layers, forced = states[chosen]
        if forced:
            self.record.notes.append(f"not converged in {self.params['steps']} steps, top-probability groups pruned: {', '.join(forced)}")
        self.params["achieved_ratio"] = round(chosen, 4)
        if score is not None:
            self.ctx.say(f"spp one-shot ratio {chosen:.3f}: {self.ctx.metric} {score:.4f}")
        return pruned, layers

    # -- fine-tuning ----------------------------------------------------------------------
    def _fine_tune(self, model: ModelWrapper, layers: list[GroupLayer], ratio: float) -> ModelWrapper | str:
        """SPP with training; returns the pruned model, or why it cannot train (a string)."""
        import torch

        from edgec.passes.prune.torch_graph import TorchGraph, UnsupportedGraph

        seed = self.seed
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        try:
            graph = TorchGraph(model)
        except UnsupportedGraph as error:
            return f"torch_graph does not translate {error}"
        in_shape = model.get_tensor_shape(model.graph.input[0].name)
        x = np.asarray(self.ctx.x, dtype=np.float32)
        if int(np.prod(x.shape[1:])) != int(np.prod(in_shape[1:])):
            return "the data does not match the model input"
        x = x.reshape(len(x), *in_shape[1:])
        y = self._labels()
        x, y = x[: self._train_count or len(x)], y[: self._train_count or len(y)]
        probe = x[:16]
        reference = model_outputs(model, probe)
        got = graph.run(probe).reshape(len(probe), -1)
        scale = max(1.0, float(np.abs(reference).max()))
        if got.shape != reference.shape or float(np.abs(got - reference).max()) > AGREEMENT_TOLERANCE * scale:
            return "the torch translation disagrees with the model's execution"
        if int(y.max()) >= reference.shape[1]:
            return "the labels exceed the model's outputs"
        producer = model.find_producer(model.graph.output[0].name)
        softmax_out = producer is not None and producer.op_type == "Softmax"

        optimizer = torch.optim.Adam(graph.parameters(), lr=float(self.params["lr"]))
        batch = min(int(self.params["batch"]), len(x))
        x_all, y_all = torch.from_numpy(x), torch.from_numpy(y)
        seen = 0

        def train(updates: int) -> float:
            nonlocal seen
            total = 0.0
            for _ in range(updates):
                index = torch.from_numpy(rng.choice(len(x), size=batch, replace=False))
                out = graph(x_all[index]).reshape(batch, -1)
                if softmax_out:
                    loss = torch.nn.functional.nll_loss(torch.log(out.clamp_min(1e-12)), y_all[index])
                else:
                    loss = torch.nn.functional.cross_entropy(out, y_all[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                seen += batch
            return total / updates

        def apply_masks(sampled: bool) -> None:
            with torch.no_grad():
                for layer in layers:
                    final = layer.weight_mask(~layer.pruned)  # permanently pruned weights stay zero
                    graph.parameter(layer.ref.tensor).mul_(torch.from_numpy(final))
                    keep = layer.sample(rng) if sampled else ~layer.pruned
                    graph.set_mask(layer.ref.tensor, layer.weight_mask(keep))
                    if layer.bias is not None:
                        bias = graph.parameter(layer.bias)
                        bias.mul_(torch.from_numpy(layer.bias_mask(~layer.pruned)).reshape(bias.shape))
                        graph.set_mask(layer.bias, layer.bias_mask(keep).reshape(tuple(bias.shape)))

        steps, updates = int(self.params["steps"]), int(self.params["updates"])
        recover = int(self.params["recover"])
        run, forced = 0, []
        threads = torch.get_num_threads()
        small = sum(p.numel() for p in graph.parameters()) <= SMALL_MODEL_PARAMS
        if small:  # tiny kernels: thread hand-offs cost more than they save (and crawl on a busy host)
            torch.set_num_threads(1)
        try:
            for step in range(1, steps + 1):
                run = step
                for layer in layers:
                    layer.update(graph.parameter(layer.ref.tensor).detach().numpy(), ratio, step)
                apply_masks(sampled=True)
                loss = train(updates)
                if step % SAY_EVERY == 0 or step == 1:
                    done = sum(int(layer.pruned.sum()) for layer in layers)
                    goal = sum(layer.target for layer in layers)
                    self.ctx.say(f"spp step {step}/{steps}: {done}/{goal} groups pruned, loss {loss:.4f}")
                if all(layer.done for layer in layers):
                    break
            forced = [layer.ref.name for layer in layers if layer.finish(graph.parameter(layer.ref.tensor).detach().numpy())]
            apply_masks(sampled=False)
            for step in range(1, recover + 1):
                loss = train(updates)
                if step % SAY_EVERY == 0:
                    self.ctx.say(f"spp recovery {step}/{recover}: loss {loss:.4f}")
        finally:
            torch.set_num_threads(threads)
        apply_masks(sampled=False)
        pruned = ModelWrapper(model.model.__deepcopy__())
        graph.write_back(pruned)

        epochs = seen / len(x)
        self.record.mode = f"fine-tuned ({run + recover} steps, {epochs:.1f} epochs-equivalent)"
        self.record.notes.append(
            f"{run} pruning steps + {recover} recovery steps, {updates} Adam updates of {batch} samples each (lr {self.params['lr']})"
        )
        if forced:
            self.record.notes.append(f"not converged in {steps} steps, top-probability groups pruned: {', '.join(forced)}")
        max_drop = max_drop_points(self.params)
        if max_drop is not None:
            before, after = self.ctx.evaluate(model), self.ctx.evaluate(pruned)
            if before is not None and after is not None and (before - after) * 100 > max_drop + 1e-9:
                self.record.notes.append(
                    f"fine-tuned model loses {(before - after) * 100:.2f} points ({self.ctx.metric} {before:.4f} -> {after:.4f}), over max_drop={max_drop}"
                )
        self.params["achieved_ratio"] = round(ratio, 4)
        return pruned
