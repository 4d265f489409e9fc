"""The design half of the flow, shared by ``build`` and ``estimate`` (the estimate is this prefix):
load -> prune -> quantize -> place -> partition -> configure, with the comparison of a quantized
design against the float one and the repairs that keep it no costlier. ``DesignCoster`` hands the
same flow to passes that optimise for hardware cost, so what they optimise is what the build
reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper

from edgec.configure import LayerChoice, LoweringPlan
from edgec.cost.coster import register_default_coster
from edgec.cost.design import estimate_design
from edgec.cost.device import Device
from edgec.cost.layer import LayerConfig
from edgec.data import resolve_data
from edgec.errors import TargetFitError
from edgec.frontend.canonicalize import CanonicalModel, canonicalize
from edgec.frontend.load import load_model
from edgec.frontend.support import check_single_io
from edgec.passes.partition import PlaceNodes, Segment, absorb_wiring_atoms, atoms, move_largest_to_cpu, prepare, split_segments
from edgec.passes.quant.fixed import QUANTIZER_OPS
from edgec.passes.quant.float_on_cpu import KeepCpuLayersFloat
from edgec.pipeline.config import BuildConfig
from edgec.pipeline.design import DesignOptions, cost_layers, plan_design
from edgec.pipeline.design_report import cost_partitioned_design
from edgec.runtime.hetero import to_canonical_layout
from edgec.steps import enter
from edgec.targets import Target, load_target
from edgec.verify import tensor_values

log = logging.getLogger(__name__)


MAX_SEAM_SAMPLES = 128  # calibration inputs of a segment that starts inside the model (the configurator uses 128)


# A CPU-only board has no FPGA design to plan; the plan then only gives the layers' shapes.
SHAPES_PLAN_TARGET = "pynq-z2"


@dataclass
class DesignCoster:
    """The design a model becomes under the build's configuration, costed as the build costs it
    (``edgec.cost.coster.DesignCosting``): handed to passes that optimise for hardware cost, so
    their estimate is the build's. Made once per build or estimate by ``design_flow``; for a pass
    used on its own, ``DesignCoster.for_target("pynq-z2", options)``."""

    config: BuildConfig

    @classmethod
    def for_target(
        cls,
        target: str = "pynq-z2",
        options: DesignOptions | None = None,
        width: int = 16,
        place: str = "auto",
        placement: dict[str, str] | None = None,
    ) -> DesignCoster:
        return cls(BuildConfig.make(target, options, width=width, place=place, placement=placement))

    @property
    def target(self) -> Target:
        return self.config.target

    @property
    def device(self) -> Device | None:
        return self.config.device

    @property
    def placement(self) -> dict[str, str] | None:
        return dict(self.config.placement) if self.config.placement else None

    def planned_layers(self, model: ModelWrapper, x: np.ndarray) -> list[LayerConfig]:
        """The model's Dense/Conv layers as the cost models see them in the design planned for the
        whole model on the FPGA (the break-even ratio of a layer is a property of its form there)."""
        plan_target = self.config.fpga_target if self.device is not None else load_target(SHAPES_PLAN_TARGET)
        canonical = canonicalize(model, for_estimate=True)
        options, width = self.config.options, self.config.width
        plan = plan_design(canonical.model, to_canonical_layout(x, canonical.input_perm), plan_target, options, width)
        return [layer for layer in cost_layers(canonical.model, plan, plan.io_type, options) if layer.is_linear]

    def totals(self, model: ModelWrapper, x: np.ndarray) -> dict:
        """Place, partition, configure and cost ``model`` as ``design_flow`` does (no passes)."""
        flow = design_flow(model.model, self.config.without_passes(len(x)), (x, None))
        costs = cost_partitioned_design(flow.planned, {}, {}, self.target, self.device, self.config.options)
        totals = costs.sections["totals"]
        resources = totals.get("resources", {})
        return {
            "lut": int(resources.get("lut", 0)),
            "dsp": int(resources.get("dsp", 0)),
            "ff": int(resources.get("ff", 0)),
            "bram18": int(resources.get("bram18", 0)),
            "latency_us": round(float(totals["latency_us"]), 6),
            "energy_uj": round(float(totals["energy_uj"]), 9),
        }


def prune_model(model, specs: list, x: np.ndarray | None, y: np.ndarray | None, metric_x: np.ndarray, coster: DesignCoster, progress=None):
    """Run pruning specs on a loaded model: on the user's data (x, y) when given, otherwise with the
    passes' data-free criteria, measuring agreement with the unpruned model on ``metric_x``.
    ``coster`` is the design the layers will be in (``hardware_aware=true`` prunes each layer to at
    least its break-even ratio there, or not at all)."""
    from edgec.passes.prune import PruneContext, run_pruning

    ctx = PruneContext(x, y, progress=progress, coster=coster)
    metrics = ctx if x is not None else PruneContext(metric_x, None, coster=coster)
    return run_pruning(model, specs, ctx, metrics)


def quantize_model(model, specs: list, x: np.ndarray | None, y: np.ndarray | None, coster: DesignCoster):
    """Run quantization specs (edgec.passes.quant) on a loaded model, calibrated on ``x``; a
    search that costs candidates does so with ``coster`` (so it optimizes the cost the build reports)."""
    from edgec.passes.quant.registry import run_quantization

    return run_quantization(model, specs, x, y, defaults={"target": coster.target.name}, pass_arguments={"coster": coster})


def _prune_decisions(records: list[dict]) -> list[str]:
    lines = []
    for record in records:
        if "ops_before" not in record:  # a quantization pass
            params = ",".join(f"{k}={v}" for k, v in record.get("params", {}).items())
            metric = ""
            if record.get("accuracy_before") is not None:
                metric = f": {record.get('metric')} {record['accuracy_before']:.4f} -> {record['accuracy_after']:.4f}"
            lines.append(f"quantize {record['name']}:{params}{metric}")
            lines.extend(f"  {note}" for note in record.get("notes", []))
            continue
        metric = ""
        if record.get("accuracy_before") is not None:
            metric = f", {record['metric']} {record['accuracy_before']:.4f} -> {record['accuracy_after']:.4f}"
        lines.append(
            f"prune {record['name']} ({record.get('mode') or 'one-shot'}): MACs {record['ops_before']} -> {record['ops_after']}, "
            f"non-zero parameters {record['params_before']} -> {record['params_after']}{metric}"
        )
        lines.extend(f"  {note}" for note in record.get("notes", []))
    return lines


def _pass_decisions(passes: list[dict]) -> list[str]:
    """One readable line per thing a pass decided, for the summary and report.decisions."""
    lines = []
    for record in passes:
        for detail in record.get("details", []):
            if record["name"] == "edgec.ExactRequantization" and "layer" in detail:
                lo, hi = detail["accumulator_range"]
                chain = " + ".join(detail["replaced"]) or "no affine ops"
                lines.append(
                    f"{detail['layer'] or 'layer'}: {chain} + {detail['quantizer']} lowered exactly "
                    f"(fixed-point affine with {detail['fraction_bits']} fraction bits, checked on every accumulator value in [{lo}, {hi}])"
                )
            elif record["name"] == "edgec.ExactRequantization" and "skipped" in detail:
                lines.append(f"{detail['quantizer']}: not lowered exactly ({detail['skipped']})")
            elif record["name"] == "edgec.QuantizerScalesToLevels":
                lines.append(f"{detail['quantizer']}: float scale {detail['scale']:.6g} moved into the next layer's weights")
            elif record["name"] == "edgec.RewriteForHls4ml":
                lines.append(f"{detail['node']}: {detail['rewrite']}")
    return lines


@dataclass
class PlannedSegment:
    """A segment with what its backend needs: the canonical model and lowering plan (FPGA)."""

    segment: Segment
    canonical: CanonicalModel | None = None
    plan: LoweringPlan | None = None
    x_in: np.ndarray | None = None  # calibration inputs in the model's layout


def plan_partition(
    placed,
    x: np.ndarray,
    tgt,
    options: DesignOptions,
    width: int,
    place: str,
    pinned: set[str],
    single_model=None,
) -> tuple[list[PlannedSegment], list[str]]:
    """Split the placed model into segments and plan every FPGA segment; with ``place="auto"`` a
    segment that does not fit the FPGA even at the largest reuse factor gives its largest layer to
    the CPU and the split is redone (partitions stay contiguous where the graph allows)."""
    atom_list = atoms(placed)
    notes: list[str] = []
    while True:
        absorb_wiring_atoms(placed, atom_list)
        segments = split_segments(placed, atom_list)
        seams = [s.input_tensor for s in segments[1:]]
        seam_values = tensor_values(placed, x[:MAX_SEAM_SAMPLES], seams) if seams else {}
        planned: list[PlannedSegment] = []
        try:
            for seg in segments:
                x_in = x if seg.index == 0 else seam_values[seg.input_tensor]
                if seg.placement == "cpu":
                    planned.append(PlannedSegment(seg, x_in=x_in))
                    continue
                model = single_model if (single_model is not None and len(segments) == 1) else seg.model
                enter("canonicalize", model)
                canonical = canonicalize(model)
                enter("configure", canonical.model)
                plan = plan_design(canonical.model, to_canonical_layout(x_in, canonical.input_perm), tgt, options, width)
                planned.append(PlannedSegment(seg, canonical, plan, x_in))
            _share_the_fabric(planned, tgt, options, width)
            return planned, notes
        except TargetFitError as err:
            if place != "auto" or tgt.cpu is None:  # nowhere else to put a layer
                raise
            moved = move_largest_to_cpu(placed, atom_list, getattr(err, "segment", seg), str(err), pinned)
            if moved is None:
                raise
            notes.append(f"{moved}: placed on the CPU; the FPGA part did not fit {tgt.name} even at the largest reuse factor ({err})")


def _segment_resources(p: PlannedSegment, tgt, options: DesignOptions) -> dict[str, int]:
    from edgec.cost.device import device_for

    device = device_for(tgt, backend=options.backend)
    return estimate_design(cost_layers(p.canonical.model, p.plan, p.plan.io_type, options), device).resources()


def _share_the_fabric(planned: list[PlannedSegment], tgt, options: DesignOptions, width: int) -> None:
    """Several FPGA segments are separate IPs on one fabric: each was fitted to the whole board, so
    when together they exceed the configurator's cap, each (largest first) is re-fitted to what the
    others leave of the board. A segment that cannot fit in what is left raises TargetFitError
    (carrying the segment, so the partitioner can move one of its layers to the CPU)."""
    from edgec.configure import UTILIZATION_CAP
    from edgec.targets import FpgaResources

    fpga = [p for p in planned if p.segment.placement == "fpga"]
    if len(fpga) < 2 or options.reuse_factor is not None or options.strategy is not None:
        return
    keys = ("lut", "ff", "dsp", "bram18")
    available = {"lut": tgt.resources.lut, "ff": tgt.resources.ff, "dsp": tgt.resources.dsp, "bram18": tgt.resources.bram18}
    used = {id(p): _segment_resources(p, tgt, options) for p in fpga}
    for _ in range(3):
        if all(sum(u[k] for u in used.values()) <= UTILIZATION_CAP * available[k] for k in keys):
            return
        for p in sorted(fpga, key=lambda q: max(used[id(q)][k] / available[k] for k in keys if available[k]), reverse=True):
            others = {k: sum(u[k] for key, u in used.items() if key != id(p)) for k in keys}
            left = {k: max(int((UTILIZATION_CAP * available[k] - others[k]) / UTILIZATION_CAP), 0) for k in keys}
            scaled = replace(tgt, resources=FpgaResources(left["lut"], left["ff"], left["dsp"], left["bram18"], tgt.resources.uram))
            try:
                p.plan = plan_design(p.canonical.model, to_canonical_layout(p.x_in, p.canonical.input_perm), scaled, options, width)
            except TargetFitError as err:
                err.segment = p.segment
                raise
            used[id(p)] = _segment_resources(p, tgt, options)
            p.plan.notes.append(f"{p.segment.name}: fitted to what the other FPGA segments leave of {tgt.name}")
    if not all(sum(u[k] for u in used.values()) <= UTILIZATION_CAP * available[k] for k in keys):
        largest = max(fpga, key=lambda q: max(used[id(q)][k] / available[k] for k in keys if available[k]))
        err = TargetFitError(f"the FPGA segments together do not fit {tgt.name}")
        err.segment = largest.segment
        raise err


COMPARED_METRICS = ("latency_us", "lut", "dsp")


def _design_figures(canonical_model, plan: LoweringPlan, options: DesignOptions, device) -> dict:
    """Latency, LUTs and DSPs the cost model gives a planned FPGA design."""
    totals = estimate_design(cost_layers(canonical_model, plan, plan.io_type, options), device).totals()
    return {"latency_us": totals["latency_us"], "lut": int(totals["resources"]["lut"]), "dsp": int(totals["resources"]["dsp"])}


def _repair_toward(
    choices: dict[str, LayerChoice], figures: dict, evaluate: Callable[[], dict], worse, excess, max_steps: int = 12
) -> tuple[dict, list[str]]:
    """Local search over per-layer reuse factors (one valid step smaller or larger per move) and
    over binding a layer's shared multipliers to DSP slices, that removes what is still worse than
    the float design: a narrower design can need a cycle more (its input quantizer) or more LUTs
    (narrow products in the fabric). ``choices`` are the layers to move (of one design, or of every
    FPGA segment of a partitioned one), ``evaluate()`` the figures of the design as they stand. Takes
    the move that reduces the excess most, until nothing is worse or no move helps. Changes the
    choices in place; returns the figures and the moves."""
    from edgec.configure import neighbouring_reuse_factors

    steps: list[str] = []
    for _ in range(max_steps):
        if not worse(figures):
            break
        best = None
        for name, choice in choices.items():
            current = choice.reuse_factor
            for rf in neighbouring_reuse_factors(choice):
                if rf is None:
                    continue
                choice.reuse_factor = rf  # try the move, then put the layer back
                tried = evaluate()
                choice.reuse_factor = current
                key = (excess(tried), tried["lut"])
                if key[0] < excess(figures) and (best is None or key < best[0]):
                    best = (key, name, ("reuse_factor", rf), tried)
            if choice.can_bind_products and not choice.products_on_dsp:
                choice.products_on_dsp = True  # the same products, in DSP slices instead of LUTs
                tried = evaluate()
                choice.products_on_dsp = False
                key = (excess(tried), tried["lut"])
                if key[0] < excess(figures) and (best is None or key < best[0]):
                    best = (key, name, ("products_on_dsp", True), tried)
        if best is None:
            break
        _, name, (field_name, value), figures = best
        choice = choices[name]
        if field_name == "reuse_factor":
            steps.append(f"{name}: reuse factor {choice.reuse_factor} -> {value}")
        else:
            steps.append(f"{name}: products bound to DSP slices")
        setattr(choice, field_name, value)
    for name, choice in choices.items():
        if any(step.startswith(f"{name}: reuse factor") for step in steps):
            choice.reason = (
                f"reuse factor {choice.reuse_factor}: adjusted from the float design's so quantizing costs no more than the float design"
            )
        if choice.products_on_dsp and "bound to DSP" not in choice.reason:
            choice.reason += "; its products are bound to DSP slices (narrow products would otherwise take LUTs)"
    return figures, steps


def _system_figures(planned: list[PlannedSegment], tgt, options: DesignOptions, device) -> dict:
    """Latency of the whole (partitioned) design, with the CPU segments and PS-PL transfers, and
    the LUTs and DSPs of its FPGA segments, as the cost models give them."""
    costs = cost_partitioned_design(planned, {}, {}, tgt, device, options)
    resources = costs.sections["totals"].get("resources", {})
    return {"latency_us": round(float(costs.latency_us), 2), "lut": int(resources.get("lut", 0)), "dsp": int(resources.get("dsp", 0))}


def _adopt_float_parallelism(
    quantized: PlannedSegment, float_canonical_model, float_plan: LoweringPlan, options: DesignOptions, device
) -> dict:
    """One FPGA design (or segment) of a quantized build against the float build's: when worse in
    latency, LUTs or DSPs, the float design's strategies and reuse factors (repaired by
    ``_repair_toward``) replace the configurator's, if that is less worse (fewer figures worse, then
    by less). Changes ``quantized.plan`` accordingly; returns the comparison for report.json."""
    import copy

    from edgec.configure import nearest_valid_reuse_factor

    reference = _design_figures(float_canonical_model, float_plan, options, device)
    own = _design_figures(quantized.canonical.model, quantized.plan, options, device)

    def worse(figures: dict) -> list[str]:
        return [k for k in COMPARED_METRICS if figures[k] > reference[k] * (1 + 1e-9)]

    def excess(figures: dict) -> tuple[int, float]:
        return len(worse(figures)), sum(figures[k] / max(reference[k], 1e-9) - 1 for k in worse(figures))

    result = {"segment": quantized.segment.name, "float": reference, "configured": own, "chosen": "configured"}
    if worse(own):
        alternative = copy.deepcopy(quantized.plan)
        for name, choice in alternative.layers.items():
            source = float_plan.layers.get(name)
            if source is not None:
                choice.strategy = "Latency" if choice.depthwise else source.strategy
                choice.reuse_factor = nearest_valid_reuse_factor(choice, source.reuse_factor)
                choice.reason = f"the float design's {source.strategy} strategy, reuse factor {source.reuse_factor} (so quantizing does not cost more than the float design)"
        figures = _design_figures(quantized.canonical.model, alternative, options, device)
        if worse(figures):
            figures, steps = _repair_toward(
                alternative.layers, figures, lambda: _design_figures(quantized.canonical.model, alternative, options, device), worse, excess
            )
            if steps:
                result["repair_steps"] = steps
        result["float_parallelism"] = figures
        if excess(figures) < excess(own):
            alternative.notes = [note for note in alternative.notes if not any(note.startswith(f"{name}:") for name in alternative.layers)]
            alternative.notes += [f"{c.node}: {c.reason}" for c in alternative.layers.values() if c.reuse_factor > 1]
            quantized.plan = alternative
            result["chosen"] = "float_parallelism"
            own = figures
    result["no_worse"] = not worse(own)
    result["worse_in"] = worse(own)
    result["excess"] = {k: round(own[k] / max(reference[k], 1e-9) - 1, 4) for k in worse(own)}
    return result


def _repair_system(planned: list[PlannedSegment], figures: dict, options: DesignOptions, device, worse, excess) -> list[str]:
    """``_repair_toward`` over the layers of every FPGA segment at once, against the whole system's
    figures: a segment may spend LUTs another one saved. Moves change the FPGA segments only, so
    the CPU segments and transfers are a constant part of the latency."""
    fpga = [p for p in planned if p.segment.placement == "fpga"]
    if not fpga:
        return []

    def segments_sum() -> dict:
        parts = [_design_figures(p.canonical.model, p.plan, options, device) for p in fpga]
        return {k: sum(part[k] for part in parts) for k in ("latency_us", "lut", "dsp")}

    start = segments_sum()
    offset = {k: figures[k] - start[k] for k in start}

    def evaluate() -> dict:
        now = segments_sum()
        return {
            "latency_us": round(now["latency_us"] + offset["latency_us"], 2),
            "lut": now["lut"] + offset["lut"],
            "dsp": now["dsp"] + offset["dsp"],
        }

    choices = {f"{p.segment.name}/{name}": choice for p in fpga for name, choice in p.plan.layers.items()}
    _, steps = _repair_toward(choices, figures, evaluate, worse, excess)
    return steps


def compare_partitioned_with_float(
    planned: list[PlannedSegment],
    float_model,
    x: np.ndarray,
    tgt,
    options: DesignOptions,
    width: int,
    device,
    make_placer,
    pinned: set[str],
    quantized_model,
    placed=None,
    float_on_cpu: bool = False,
) -> tuple[dict, list[PlannedSegment] | None, object, object]:
    """For a quantized build that is not one FPGA design (or whose float model is not): the float
    model's build as edgec partitions it, against this one, whole system (CPU segments and
    transfers in the latency, FPGA segments in the resources). When the quantized build is worse
    (typically: it fits the FPGA whole, fast but with more LUTs than the float build, which left
    layers to the CPU), the quantized model is also placed as the float one was and the better of
    the two is kept. With ``float_on_cpu`` (the quantizers are all edgec's own), the layers left to
    the CPU are then given back their float32 arithmetic (``KeepCpuLayersFloat``: TVM would only
    emulate the quantizers there, at a cost) when that is no worse. Returns (comparison, new planned
    segments or None, their placed model, the model the build now implements or None)."""
    float_placed = prepare(float_model).transform(make_placer({}))
    float_planned, _ = plan_partition(float_placed, x, tgt, options, width, "auto", pinned)
    reference = _system_figures(float_planned, tgt, options, device)
    own = _system_figures(planned, tgt, options, device)

    def worse(figures: dict) -> list[str]:
        return [k for k in COMPARED_METRICS if figures[k] > reference[k] * (1 + 1e-9)]

    def excess(figures: dict) -> tuple[int, float]:
        return len(worse(figures)), sum(figures[k] / max(reference[k], 1e-9) - 1 for k in worse(figures))

    def layout(segments: list[PlannedSegment]) -> str:
        return " + ".join(p.segment.placement for p in segments)

    def adopt_segments(alternative: list[PlannedSegment]) -> None:
        """Placed as the float build: segment by segment, the float design's parallelism (then
        repaired), as for one FPGA design."""
        if layout(alternative) == layout(float_planned):
            for q_seg, f_seg in zip(alternative, float_planned):
                if q_seg.segment.placement == "fpga":
                    _adopt_float_parallelism(q_seg, f_seg.canonical.model, f_seg.plan, options, device)

    result = {
        "float": reference,
        "configured": own,
        "chosen": "configured",
        "no_worse": not worse(own),
        "compared": f"whole systems: float {layout(float_planned)} vs quantized {layout(planned)}",
    }
    replanned, replaced = None, None
    on_cpu = {name for p in float_planned if p.segment.placement == "cpu" for name in p.segment.nodes}
    names = {n.name for n in quantized_model.graph.node}
    if worse(own) and on_cpu & names:
        placed = prepare(quantized_model).transform(make_placer({name: "cpu" for name in on_cpu & names}))
        try:
            alternative, _ = plan_partition(placed, x, tgt, options, width, "auto", pinned)
        except TargetFitError:
            alternative = None
        if alternative is not None:
            adopt_segments(alternative)
        if alternative is not None:
            figures = _system_figures(alternative, tgt, options, device)
            result["float_placement"] = figures
            if excess(figures) < excess(own):
                result["chosen"] = "float_placement"
                result["compared"] += f"; kept the float build's placement: {layout(alternative)}"
                replanned, replaced, own = alternative, placed, figures
    implemented = None
    current_planned, current_placed = replanned or planned, replaced or placed
    if float_on_cpu and current_placed is not None and any(p.segment.placement == "cpu" for p in current_planned):
        keep = KeepCpuLayersFloat({name: p.segment.placement for p in current_planned for name in p.segment.nodes})
        stripped = current_placed.transform(keep)
        try:
            changed = keep.record["removed"] or keep.record["moved_to_fpga"]
            alternative, _ = plan_partition(stripped, x, tgt, options, width, "auto", pinned) if changed else (None, None)
        except TargetFitError:
            alternative = None
        if alternative is not None:
            adopt_segments(alternative)
            figures = _system_figures(alternative, tgt, options, device)
            if worse(figures):
                steps = _repair_system(alternative, figures, options, device, worse, excess)
                if steps:
                    figures = _system_figures(alternative, tgt, options, device)
                    result["repair_steps"] = steps
            result["float_on_cpu"] = {
                **figures,
                "quantizers_removed": len(keep.record["removed"]),
                "quantizers_moved_to_fpga": keep.record["moved_to_fpga"],
            }
            if (excess(figures), figures["latency_us"]) < (excess(own), own["latency_us"]):
                result["chosen"] = "float_on_cpu"
                result["compared"] += (
                    f"; the CPU layers keep float32 arithmetic ({len(keep.record['removed'])} node(s) TVM would "
                    f"only emulate removed, {len(keep.record['moved_to_fpga'])} moved to the FPGA), the FPGA layers "
                    f"stay quantized: {layout(alternative)}"
                )
                replanned, replaced, own, implemented = alternative, stripped, figures, stripped
    result["no_worse"] = not worse(own)
    result["worse_in"] = worse(own)
    result["excess"] = {k: round(own[k] / max(reference[k], 1e-9) - 1, 4) for k in worse(own)}
    return result, replanned, replaced, implemented


def _has_quantizers(model) -> bool:
    """Whether a model has QONNX quantizers of its own (then they are the user's, not edgec's)."""
    return any(node.op_type in QUANTIZER_OPS for node in model.graph.node)


def no_worse_than_float(
    planned: list[PlannedSegment], float_model, x: np.ndarray, tgt, options: DesignOptions, width: int, device
) -> dict | None:
    """Post-training quantization must not make the design worse than the float model's on the same
    target. The configurator spends what the narrower layers save on parallelism, which can cost
    more LUTs (narrow products map to LUTs, wide ones to DSPs). When the quantized design is worse
    than the float one in latency, LUTs or DSPs, the quantized layers are given the float design's
    strategies and reuse factors instead (same parallelism, narrower arithmetic), then repaired by a
    local search over reuse factors; the less worse of the two is kept. Returns the comparison for
    report.json (None for partitioned builds)."""
    fpga = [p for p in planned if p.segment.placement == "fpga"]
    if len(planned) != 1 or len(fpga) != 1 or options.reuse_factor is not None or options.strategy is not None:
        return None
    quantized = fpga[0]
    float_canonical = canonicalize(float_model)
    try:
        float_plan = plan_design(float_canonical.model, to_canonical_layout(x, float_canonical.input_perm), tgt, options, width)
    except TargetFitError:
        # the float model needs the CPU for part of it; the quantized one fits the FPGA whole
        return {
            "float": None,
            "configured": _design_figures(quantized.canonical.model, quantized.plan, options, device),
            "chosen": "configured",
            "no_worse": None,
            "worse_in": [],
            "note": f"quantized design not compared with a float one: the float model does not fit {tgt.name}'s FPGA "
            "even at the largest reuse factors (its build moves layers to the CPU); the quantized model fits whole",
        }
    result = _adopt_float_parallelism(quantized, float_canonical.model, float_plan, options, device)
    del result["segment"]
    return result


@dataclass
class DesignFlow:
    """What the build's steps up to the cost model leave: the loaded (pruned, quantized) model,
    its data, where each node runs and each FPGA segment's plan. ``build`` goes on to lower,
    compile and verify it; ``estimate`` costs it as it stands, so both report the same design."""

    config: BuildConfig
    loaded: object  # edgec.frontend.load.LoadedModel: .model is what the build implements
    input_shape: list
    x: np.ndarray
    y: np.ndarray | None
    data_desc: str
    prune_records: list[dict]
    placer: PlaceNodes
    placed: object
    planned: list[PlannedSegment]
    partition_notes: list[str]
    float_comparison: dict | None


def design_flow(model, config: BuildConfig, data, progress=None, lap=None) -> DesignFlow:
    """Load, prune, quantize, place, partition and configure ``model`` as a build does, under
    ``config`` (``data``: as ``build`` takes it); ``lap(step, detail)`` is called as each step
    finishes."""
    base_target, tgt, device, options = config.target, config.fpga_target, config.device, config.options
    width, random_samples, place, placement = config.width, config.random_samples, config.place, config.placement
    prune, quantize = list(config.prune), list(config.quantize)
    lap = lap or (lambda name, detail="": None)
    enter("load")
    loaded = load_model(model)
    enter("data", loaded.model)
    lap("load", "QONNX model" if loaded.is_qonnx else "ONNX model")
    input_shape = loaded.model.get_tensor_shape(loaded.model.graph.input[0].name)
    x, y, data_desc = resolve_data(data, loaded.model, random_samples)
    prune_records: list[dict] = []
    coster = DesignCoster(config)
    if prune:
        enter("prune", loaded.model)
        loaded.model, prune_records = prune_model(loaded.model, prune, x if data is not None else None, y, x, coster, progress)
        lap("prune", f"{len(prune_records)} pass(es)")
    float_model = loaded.model
    if quantize:
        enter("quantize", loaded.model)
        # without the user's data the pass calibrates on random inputs itself and says so in its record
        loaded.model, quant_records = quantize_model(loaded.model, quantize, x if data is not None else None, y, coster)
        prune_records += quant_records
        lap("quantize", f"{len(quant_records)} pass(es)")
    enter("partition", loaded.model)
    check_single_io(loaded.model)
    placer = config.placer()
    placed = prepare(loaded.model).transform(placer)
    pinned = {name for name, where in (placement or {}).items() if where == "fpga"}
    planned, partition_notes = plan_partition(placed, x, tgt, options, width, placer.place, pinned, single_model=loaded.model)
    float_comparison = None
    # fixed-point PTQ must not cost more than the float design (mixed precision searches cost itself)
    if (
        quantize
        and device is not None
        and all(str(spec if isinstance(spec, str) else spec[0]).split(":")[0] == "fixed" for spec in quantize)
    ):
        enter("configure", loaded.model)
        float_comparison = no_worse_than_float(planned, float_model, x, tgt, options, width, device)
        if (float_comparison is None or float_comparison["float"] is None) and options.reuse_factor is None and options.strategy is None:

            def make_placer(extra: dict[str, str]) -> PlaceNodes:
                return PlaceNodes(
                    place,
                    {**extra, **(placement or {})},
                    has_fpga=base_target.has_fpga,
                    has_cpu=base_target.cpu is not None,
                    target_name=base_target.name,
                )

            float_comparison, replanned, replaced, implemented = compare_partitioned_with_float(
                planned,
                float_model,
                x,
                tgt,
                options,
                width,
                device,
                make_placer,
                pinned,
                loaded.model,
                placed,
                float_on_cpu=not _has_quantizers(float_model),
            )
            if replanned is not None:
                planned, placed = replanned, replaced
            if implemented is not None:  # the reference the build is verified against is what it implements
                loaded.model = implemented
        if float_comparison is not None and float_comparison["float"] is None:
            partition_notes.append(float_comparison["note"])
        elif float_comparison is not None:
            chosen = float_comparison[float_comparison["chosen"]]
            line = f"quantized design vs the float model's on {tgt.name}: latency {float_comparison['float']['latency_us']:.4g} -> {chosen['latency_us']:.4g} us"
            if float_comparison["chosen"] == "float_parallelism":
                line += "; the configurator's faster design cost more than the float one, so the quantized layers keep the float design's reuse factors"
                if float_comparison.get("repair_steps"):
                    line += " (then adjusted: " + ", ".join(float_comparison["repair_steps"]) + ")"
            if float_comparison["chosen"] == "float_placement":
                line += "; placed as the float build (the layers it left to the CPU stay there): the whole-FPGA design cost more"
            if float_comparison["chosen"] == "float_on_cpu":
                line += (
                    "; the layers on the CPU keep float32 weights and activations (TVM runs them in float32, where the "
                    f"{float_comparison['float_on_cpu']['quantizers_removed']} quantizer(s) would only be emulated at a cost); "
                    "the FPGA layers are quantized, and the build is verified against this model"
                )
            if float_comparison["worse_in"]:
                line += "; worse in " + ", ".join(
                    f"{k} ({float_comparison['float'][k]} -> {chosen[k]})" for k in float_comparison["worse_in"]
                )
                if "compared" in float_comparison:
                    line += f" ({float_comparison['compared']})"
                elif "lut" in float_comparison["worse_in"] and chosen["dsp"] < float_comparison["float"]["dsp"]:
                    line += ": narrow products map to LUTs where the float ones used DSPs"
            partition_notes.append(line)
    fpga_parts = [p for p in planned if p.segment.placement == "fpga"]
    cpu_parts = [p for p in planned if p.segment.placement == "cpu"]
    lap("partition", f"{len(fpga_parts)} FPGA and {len(cpu_parts)} CPU segment(s); canonicalized and configured")
    for p in fpga_parts:
        if progress is not None:
            progress(
                f"{'':<12} {'':>6}    {p.segment.name}: {p.plan.io_type}, {len(p.plan.layers)} Dense/Conv layer(s) fitted to {tgt.name}"
            )
    return DesignFlow(
        config,
        loaded,
        input_shape,
        x,
        y,
        data_desc,
        prune_records,
        placer,
        placed,
        planned,
        partition_notes,
        float_comparison,
    )


def design_passes(flow: DesignFlow) -> list[dict]:
    """The passes of a design for the report: the user's (pruning, quantization), then each FPGA
    segment's canonicalization passes."""
    fpga = [p for p in flow.planned if p.segment.placement == "fpga"]
    return flow.prune_records + [
        {
            "name": q["name"],
            "params": q.get("params", {}),
            "seconds": q["seconds"],
            **({"details": q["details"]} if q.get("details") else {}),
        }
        for p in fpga
        for q in p.canonical.passes
    ]


def design_decisions(flow: DesignFlow, costs) -> list[str]:
    """Every decision the flow and the cost model took, in the order they were taken."""
    fpga = [p for p in flow.planned if p.segment.placement == "fpga"]
    return (
        flow.loaded.notes
        + _prune_decisions(flow.prune_records)
        + flow.partition_notes
        + costs.decisions
        + [line for p in fpga for line in _pass_decisions(p.canonical.passes) + p.plan.notes]
    )


register_default_coster(DesignCoster.for_target)
