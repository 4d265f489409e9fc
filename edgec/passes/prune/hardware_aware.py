"""``hardware_aware=true``: prune every layer to at least its break-even ratio, or not at all.

A pruned layer only pays off on hardware above its break-even pruning ratio r*
(edgec.cost.break_even; ADMM-NN, Ren et al., ASPLOS 2019): below it, the sparse form costs more
than the zeros save, so pruning there loses accuracy for nothing. After an unstructured method
(``magnitude``, ``bnn-latent``, ``spp`` with ``group=column``) has chosen its per-layer ratios,
every layer it pruned to 0 < ratio < r* is

- raised to r* when the accuracy stays within ``max_drop`` of the unpruned model (when data and
  ``max_drop`` are given; without them it is raised unchecked), or otherwise
- restored to its unpruned weights (dense);

a layer whose sparse form never pays off (r* None) is restored. The layers are visited largest
first (most weights), each decision measured on the model with the earlier ones applied.

r* comes from the design edgec would build for the unpruned model (``PruneContext.coster``, which
the pipeline makes from the build's target and options): the model is canonicalized, planned
(types, strategy and reuse factor fitted to the board, as ``edgec estimate`` does) and each
prunable layer is matched to its lowered layer. Unrolled (Latency) FPGA layers have r* = 0, so
only Resource-strategy and CPU-placed layers (the coster's ``placement``; every layer on a
CPU-only target) can be affected. Structured methods (``channels``,
``sensitivity``, ``spp`` with ``group=filter``) remove whole channels and leave smaller dense
layers, whose r* is 0: the pass records that there was nothing to do.
"""

from __future__ import annotations

import math

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper

from edgec.cost.break_even import BreakEven, break_even_table
from edgec.cost.coster import DesignCosting, default_coster
from edgec.cost.layer import LayerConfig
from edgec.passes.prune.common import PruneContext, WeightRef, magnitude_masks, magnitude_score, max_drop_points, prunable_layers

DEFAULT_TARGET = "pynq-z2"  # a pass used on its own, without the build's design
METRIC = "energy"
# Calibration samples for planning the design (types come from the ranges they produce; the
# configurator's strategy/reuse-factor choice depends on the sizes, not on the values).
PLAN_SAMPLES = 32


def _coster(ctx: PruneContext) -> DesignCosting:
    """The design the pass prunes for: the one the pipeline handed over, or a default build's."""
    return ctx.coster if ctx.coster is not None else default_coster(DEFAULT_TARGET)


def planned_layers(model: ModelWrapper, ctx: PruneContext) -> tuple[dict[str, LayerConfig], list[str]]:
    """Each prunable layer of ``model`` (by its name in ``prunable_layers``) as the cost model sees
    it in the design ``ctx.coster`` plans; and notes on layers that could not be matched. Matching
    is by order among the Dense/Conv layers and by weight count (canonicalization renames nodes
    but keeps the layers' order and sizes)."""
    from edgec.data import resolve_data

    x = ctx.x[:PLAN_SAMPLES] if ctx.x is not None else resolve_data(None, model, PLAN_SAMPLES)[0]
    lowered = _coster(ctx).planned_layers(model, x)
    matched: dict[str, LayerConfig] = {}
    notes: list[str] = []
    cursor = 0
    for ref in prunable_layers(model):
        size = int(ref.get(model).size)
        found = next((i for i in range(cursor, len(lowered)) if lowered[i].n_in * lowered[i].n_out == size), None)
        if found is None:
            notes.append(f"{ref.name}: no lowered layer with {size} weights found; its break-even ratio is unknown, left as pruned")
            continue
        matched[ref.name] = lowered[found]
        cursor = found + 1
    return matched, notes


def break_even_ratios(model: ModelWrapper, ctx: PruneContext, metric: str = METRIC) -> tuple[dict[str, BreakEven], list[str]]:
    """r* (``metric``) of every prunable layer of ``model`` in ``ctx.coster``'s design, keyed by layer name."""
    coster = _coster(ctx)
    layers, notes = planned_layers(model, ctx)
    placement = coster.placement or {}
    has_fpga = coster.device is not None
    ratios = {}
    for name, layer in layers.items():
        where = placement.get(name, "fpga" if has_fpga else "cpu")
        ratios[name] = break_even_table(layer, coster.target, coster.device, where, (metric,))[metric]
    return ratios, notes


def zero_fraction(ref: WeightRef, model: ModelWrapper) -> float:
    """Fraction of the weights the layer multiplies by that are zero."""
    weights = ref.effective(model)
    return float(np.mean(weights == 0)) if weights.size else 0.0


def magnitude_reprune(original: ModelWrapper, current: ModelWrapper, ratios: dict[str, float]) -> ModelWrapper:
    """A copy of ``current`` in which each named layer holds its ``original`` weights with the
    ``ratio`` smallest (by the value multiplied, then the latent value: magnitude's ranking) zeroed;
    ratio 0 restores the original weights."""
    out = ModelWrapper(current.model.__deepcopy__())
    before = {ref.name: ref for ref in prunable_layers(original)}
    for ref in prunable_layers(out):
        if ref.name not in ratios:
            continue
        source = before[ref.name]
        weights = source.get(original)
        score = magnitude_score(source.effective(original), weights)
        mask = magnitude_masks({ref.name: score}, ratios[ref.name], "layer")[ref.name]
        ref.set(out, weights * mask)
    return out


def enforce_break_even(prune_pass, original: ModelWrapper, pruned: ModelWrapper) -> ModelWrapper:
    """Apply ``hardware_aware`` to the result of ``prune_pass`` (see the module docstring);
    decisions go to ``prune_pass.record`` (per layer ``break_even_ratio``, ``hardware_decision``,
    ``implementation``; a summary in the notes)."""
    record, ctx = prune_pass.record, prune_pass.ctx
    target = _coster(ctx).target.name
    if prune_pass.structured():
        record.notes.append(
            f"hardware_aware ({target}): {prune_pass.method} removes whole channels; the smaller layers stay dense, "
            "whose break-even ratio is 0, so there was nothing to do"
        )
        for entry in record.layers.values():
            entry.setdefault("break_even_ratio", 0.0)
        return pruned
    ratios, notes = break_even_ratios(original, ctx)
    record.notes.extend(f"hardware_aware: {note}" for note in notes)
    max_drop = max_drop_points(prune_pass.params)
    checked = max_drop is not None and ctx.has_data
    baseline = ctx.evaluate(original) if checked else None
    before = {ref.name: ref for ref in prunable_layers(original)}
    current = pruned
    refs = sorted(prunable_layers(pruned), key=lambda ref: -int(ref.get(pruned).size))
    decisions = []
    for ref in refs:
        be = ratios.get(ref.name)
        entry = record.layers.setdefault(ref.name, {})
        if be is None:
            continue
        source = before.get(ref.name)
        entry["break_even_ratio"] = None if be.ratio is None else round(be.ratio, 4)
        entry["break_even_metric"] = be.metric
        entry["implementation_pair"] = [be.dense_form, be.sparse_form]
        entry["placement"] = be.placement
        changed = (
            source is not None
            and ref.get(current).shape == source.get(original).shape
            and not np.array_equal(ref.effective(current), source.effective(original))
        )
        ratio = zero_fraction(ref, current)
        if not changed or ratio == 0.0:
            entry["hardware_decision"] = "not pruned by this pass"
            continue
        if be.ratio is not None and ratio >= be.ratio:
            entry["hardware_decision"] = f"kept: {ratio:.3f} >= r* {be.ratio:.3f}"
            continue
        raised = None
        if be.ratio is not None:
            size = int(ref.get(current).size)
            wanted = math.ceil(be.ratio * size - 1e-9) / size
            candidate = prune_pass.reprune(original, current, {ref.name: wanted})
            reached = zero_fraction(next(r for r in prunable_layers(candidate) if r.name == ref.name), candidate)
            score = ctx.evaluate(candidate) if checked else None
            if reached + 1e-9 >= be.ratio and (not checked or (baseline - score) * 100 <= max_drop + 1e-9):
                raised = (candidate, reached, score)
        if raised is not None:
            current, reached, score = raised
            how = f" (drop {(baseline - score) * 100:.2f} pt <= max_drop {max_drop})" if checked else " (no max_drop: not checked on data)"
            entry["hardware_decision"] = f"raised from {ratio:.3f} to {reached:.3f} >= r* {be.ratio:.3f}{how}"
            decisions.append(f"{ref.name} raised {ratio:.2f} -> {reached:.2f}")
            continue
        if source is None or ref.get(current).shape != source.get(original).shape:
            entry["hardware_decision"] = f"left at {ratio:.3f} < r* (its shape changed: cannot restore)"
            continue
        current = prune_pass.reprune(original, current, {ref.name: 0.0})
        why = (
            "no pruning ratio pays off"
            if be.ratio is None
            else f"{ratio:.3f} < r* {be.ratio:.3f} and r* would lose over max_drop {max_drop} points"
        )
        entry["hardware_decision"] = f"restored to dense: {why}"
        decisions.append(f"{ref.name} restored ({ratio:.2f} < r*)")
    record.notes.append(
        f"hardware_aware ({target}, {METRIC} break-even): "
        + ("; ".join(decisions) if decisions else "every pruned layer was already at or above its break-even ratio")
    )
    return current
