"""The build pipeline: load -> canonicalize -> configure -> lower -> verify -> report.

The build happens in a temporary folder next to the output folder and is moved into place only
when it succeeded, so a failed build never leaves a half-written folder behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from edgec import __version__
from edgec.backends.bundle import render_bundle
from edgec.backends.hls4ml_backend import lower, sanitize_identifier
from edgec.configure import LayerChoice, LoweringPlan
from edgec.cost.design import estimate_design
from edgec.data import resolve_data
from edgec.design_report import cost_partitioned_design, target_report
from edgec.errors import OutputExistsError, TargetFitError, VerificationError
from edgec.estimate import DesignOptions, cost_layers, plan_design, target_for_device
from edgec.frontend.canonicalize import CanonicalModel, canonicalize
from edgec.frontend.load import load_model
from edgec.frontend.support import check_single_io
from edgec.passes.partition import PlaceNodes, Segment, absorb_wiring_atoms, atoms, move_largest_to_cpu, prepare, split_segments
from edgec.passes.quant.fixed import QUANTIZER_OPS
from edgec.passes.quant.float_on_cpu import KeepCpuLayersFloat
from edgec.report import SCHEMA_VERSION, render_summary, write_report
from edgec.report_html import write_html
from edgec.runtime.hetero import SegmentRunner, run_chain, to_canonical_layout
from edgec.steps import enter, guarded
from edgec.targets import load_target
from edgec.verify import compare, first_divergence, output_task, reference_outputs, tensor_values

log = logging.getLogger(__name__)
META_FILE = "edgec.json"
MAX_SEAM_SAMPLES = 128  # calibration inputs of a segment that starts inside the model (the configurator uses 128)


def prune_model(
    model,
    specs: list,
    x: np.ndarray | None,
    y: np.ndarray | None,
    metric_x: np.ndarray,
    progress=None,
    target: str | None = None,
    placement: dict[str, str] | None = None,
):
    """Run pruning specs on a loaded model: on the user's data (x, y) when given, otherwise with the
    passes' data-free criteria, measuring agreement with the unpruned model on ``metric_x``.
    ``target``/``placement`` are where the layers will run (``hardware_aware=true`` prunes each
    layer to at least its break-even ratio there, or not at all)."""
    from edgec.passes.prune import PruneContext, run_pruning

    ctx = PruneContext(x, y, progress=progress, target=target, placement=placement)
    metrics = ctx if x is not None else PruneContext(metric_x, None, target=target, placement=placement)
    return run_pruning(model, specs, ctx, metrics)


def quantize_model(
    model,
    specs: list,
    x: np.ndarray,
    y: np.ndarray | None,
    target: str | None = None,
    options: DesignOptions | None = None,
    width: int = 16,
):
    """Run quantization specs (edgec.passes.quant) on a loaded model, calibrated on ``x``; a
    search that costs candidates does so on the build's ``target`` with its design ``options``
    and ``width`` (so the search optimizes the cost the build reports)."""
    from edgec.passes.quant.mixed import CostSetup
    from edgec.passes.quant.registry import run_quantization

    return run_quantization(
        model,
        specs,
        x,
        y,
        defaults={"target": target} if target else None,
        pass_arguments={"cost_setup": CostSetup(options or DesignOptions(), width)},
    )


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


def bit_exactness(
    reference: np.ndarray, simulated: np.ndarray, output_precision: str, quantized: bool, output_step: float | None = None
) -> dict:
    """For a quantized model: whether the C-simulation equals the quantized reference (same argmax
    on every sample, every output within one LSB) and the largest error in LSBs. None for float
    models, whose reference is not on any fixed-point grid.

    The LSB is the output type's, or, when the model's output is a quantizer with a coarser (float)
    step ``output_step`` (onnxruntime QDQ logits), that step: the model's own output grid. Values
    on a float-scaled grid are not exact in fixed point, so there the tolerance is one step plus
    one LSB of the type they are written in (hls4ml truncates into it)."""
    import re

    if not quantized:
        return {"bit_exact": None, "max_lsb_error": None}
    match = re.search(r"fixed<\s*(\d+)\s*,\s*(-?\d+)", output_precision)
    if match is None:
        return {"bit_exact": None, "max_lsb_error": None}
    type_lsb = 2.0 ** -(int(match.group(1)) - int(match.group(2)))
    lsb, tolerance = type_lsb, type_lsb
    if output_step is not None and output_step > type_lsb:
        lsb, tolerance = output_step, output_step + type_lsb
    error = float(np.max(np.abs(reference - simulated))) if reference.size else 0.0
    same_argmax = bool(np.all(reference.argmax(-1) == simulated.argmax(-1)))
    result = {"bit_exact": bool(same_argmax and error <= tolerance * (1 + 1e-9)), "max_lsb_error": round(error / lsb, 4), "output_lsb": lsb}
    if lsb != type_lsb:
        result["lsb_of"] = "the model's output quantizer (its float scale)"
        result["tolerance_lsb"] = round(tolerance / lsb, 6)
    return result


def output_quantizer_step(model) -> float | None:
    """The step of the quantizer that produces the model's output (a scalar scale), if one does."""
    producer = model.find_producer(model.graph.output[0].name)
    if producer is None or producer.op_type != "Quant":
        return None
    scale = model.get_initializer(producer.input[1])
    return float(np.asarray(scale).reshape(-1)[0]) if scale is not None and np.size(scale) == 1 else None


@dataclass
class BuildResult:
    """What ``edgec.build`` returns: the report, the folder, and the simulated design."""

    output_dir: Path
    report: dict
    _meta: dict

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run the simulated design (C simulation for FPGA parts, TVM host build for CPU parts) on
        inputs in the model's own layout; returns (N, outputs)."""
        return simulate_folder(self.output_dir, np.asarray(x, dtype=np.float32), self._meta)


def _segments_meta(meta: dict) -> list[dict]:
    """The build's segments; a folder from before partitioning has one FPGA segment in ``hls/``."""
    if "segments" in meta:
        return meta["segments"]
    return [
        {
            "placement": "fpga",
            "project_dir": "hls",
            "project_name": meta["project_name"],
            "n_in": meta["n_in"],
            "n_out": meta["n_out"],
            "input_perm": meta["input_perm"],
            "output_perm": meta["output_perm"],
            "canonical_output_shape": meta["canonical_output_shape"],
            "input_shape": meta["input_shape"],
            "output_shape": [1, meta["n_out"]],
        }
    ]


def simulate_folder(output_dir: Path, x: np.ndarray, meta: dict | None = None) -> np.ndarray:
    """Simulate inputs (model layout) with a finished build folder: every segment in order."""
    output_dir = Path(output_dir)
    meta = meta or json.loads((output_dir / META_FILE).read_text())
    sample_shape = meta["input_shape"][1:]
    if list(x.shape) == sample_shape:
        x = x[None]
    runners = [SegmentRunner(segment, output_dir) for segment in _segments_meta(meta)]
    return run_chain(runners, x)[0]


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


def _render_bundle(
    staging: Path, segments_meta: list[dict], tgt, model_name: str, x: np.ndarray, simulated: np.ndarray, cross: bool
) -> dict:
    """Write ``deploy/`` (PYNQ driver, HLS/Vivado scripts, README; edgec.backends.bundle) for a Zynq
    board; a board or design the bundle cannot serve is reported, not fatal (the build is still valid)."""
    from edgec.backends.bundle import BundleSegment, read_hls_interface
    from edgec.errors import BundleError

    if not tgt.has_fpga:
        return {"skipped": f"{tgt.name} has no FPGA: the CPU library in cpu/ is the deliverable"}
    if any(entry["placement"] == "cpu" and not entry.get("board_library") for entry in segments_meta):
        return {"skipped": "CPU segments were built for this host only (--no-cross)" if not cross else "a CPU segment has no board library"}
    segments = []
    try:
        for entry in segments_meta:
            if entry["placement"] == "fpga":
                interface = read_hls_interface(staging / entry["project_dir"], entry["project_name"])
                perm = entry["input_perm"]
                shape = entry["input_shape"]
                canonical_in = [shape[i] for i in perm] if perm else shape
                segments.append(
                    BundleSegment(
                        index=entry["index"],
                        placement="fpga",
                        name=entry["name"],
                        input_shape=list(canonical_in[1:]),
                        output_shape=list(entry["canonical_output_shape"][1:]),
                        input_perm=perm,
                        output_perm=entry["output_perm"],
                        project_dir=entry["project_dir"],
                        top_function=entry["project_name"],
                        io_type=interface.io_type,
                        input_type=(
                            interface.input.value_type.width,
                            interface.input.value_type.integer,
                            interface.input.value_type.signed,
                        ),
                        output_type=(
                            interface.output.value_type.width,
                            interface.output.value_type.integer,
                            interface.output.value_type.signed,
                        ),
                    )
                )
            else:
                segments.append(
                    BundleSegment(
                        index=entry["index"],
                        placement="cpu",
                        name=entry["name"],
                        input_shape=list(entry["input_shape"][1:]),
                        output_shape=list(entry["output_shape"][1:]),
                        input_perm=None,
                        output_perm=None,
                        library=entry["board_library"],
                        library_meta=entry["library_meta"],
                    )
                )
        written = render_bundle(staging, segments, tgt, model_name, check_data=(x[:64], simulated[:64]))
    except BundleError as err:
        shutil.rmtree(staging / "deploy", ignore_errors=True)
        return {"skipped": err.user_message()}
    return {"folder": "deploy", "files": sorted(str(path.relative_to(staging)) for path in written)}


def _logits_exactness(project, canonical_model, x_canon: np.ndarray) -> dict | None:
    """For a quantized model ending in Softmax: hls4ml's softmax is table-based, so the output cannot
    be bit-exact; judge the layer feeding it (the logits) against the quantized reference instead."""
    import re

    from edgec.backends.hls4ml_backend import PASS_THROUGH_CLASSES

    computing = [layer for layer in project.layers if layer.op not in PASS_THROUGH_CLASSES]
    if len(computing) < 2 or computing[-1].op != "Softmax":
        return None
    logits = computing[-2]
    n = min(64, x_canon.shape[0])
    shape = [n, *canonical_model.get_tensor_shape(canonical_model.graph.input[0].name)[1:]]
    try:
        reference = tensor_values(canonical_model, x_canon[:n].reshape(shape), [logits.onnx_tensor])[logits.onnx_tensor].reshape(n, -1)
        simulated = project.trace(x_canon[:n])[logits.name]
    except (KeyError, ValueError):
        return None
    match = re.search(r"fixed<\s*(\d+)\s*,\s*(-?\d+)", logits.precision.get("result", ""))
    if match is None or reference.shape != simulated.shape:
        return None
    lsb = 2.0 ** -(int(match.group(1)) - int(match.group(2)))
    error = float(np.max(np.abs(reference - simulated))) if reference.size else 0.0
    return {
        "bit_exact": error == 0.0,
        "max_lsb_error": round(error / lsb, 4),
        "output_lsb": lsb,
        "exact_at": f"{logits.name} (the logits; {computing[-1].name} is hls4ml's table-based softmax, which no fixed-point design "
        f"computes exactly: its own error is in max_abs_error)",
    }


def _segment_exactness(p: PlannedSegment, project, is_last: bool) -> dict | None:
    """Bit-exactness of one FPGA segment of a partitioned quantized build, fed the reference's own
    values at its input (so what the CPU segments before it did does not count against it): its
    C simulation against the quantized reference of the same segment (the logits when it ends in
    hls4ml's table softmax)."""
    if p.x_in is None or p.canonical is None:
        return None
    canonical = p.canonical.model
    x_canon = to_canonical_layout(np.asarray(p.x_in[:64], dtype=np.float32), p.canonical.input_perm)
    if is_last:
        logits = _logits_exactness(project, canonical, x_canon)
        if logits is not None:
            return {"segment": p.segment.name, **logits}
    out_name = canonical.graph.output[0].name
    shape = [x_canon.shape[0], *canonical.get_tensor_shape(canonical.graph.input[0].name)[1:]]
    reference = tensor_values(canonical, x_canon.reshape(shape), [out_name])[out_name].reshape(x_canon.shape[0], -1)
    simulated = project.predict(x_canon)
    if reference.shape != simulated.shape:
        return None
    exact = bit_exactness(reference, simulated, project.layers[-1].precision.get("result", ""), True)
    if exact["bit_exact"] is None:
        return None
    return {
        "segment": p.segment.name,
        "bit_exact": exact["max_lsb_error"] == 0.0,
        "max_lsb_error": exact["max_lsb_error"],
        "output_lsb": exact["output_lsb"],
    }


def _partitioned_exactness(planned: list[PlannedSegment], projects: dict, end_to_end: dict) -> dict:
    """A partitioned quantized build is judged segment by segment: every FPGA segment must be exact
    on the reference's inputs. The CPU segments compute in float32 (TVM), whose sums differ from
    onnxruntime's by a few ulps; where such a value sits on a rounding boundary of the next
    quantizer it moves by one step, so the end-to-end error is reported, not required to be 0."""
    per = []
    for index, p in enumerate(planned):
        if p.segment.placement == "fpga":
            result = _segment_exactness(p, projects[p.segment.index], index == len(planned) - 1)
            if result is None:
                return end_to_end
            per.append(result)
    cpu = [p.segment.name for p in planned if p.segment.placement == "cpu"]
    return {
        "bit_exact": all(r["bit_exact"] for r in per),
        "max_lsb_error": max(r["max_lsb_error"] for r in per),
        "exact_at": "each FPGA segment on the reference's values at its input ("
        + ", ".join(r["segment"] for r in per)
        + "); "
        + ", ".join(cpu)
        + " compute(s) in float32 on the CPU (TVM), whose rounding differs from onnxruntime's by ulps: "
        "the end-to-end error is in end_to_end_max_lsb_error and max_abs_error",
        "segments_exactness": per,
        "end_to_end_max_lsb_error": end_to_end.get("max_lsb_error"),
    }


def _bit_exactness_of(
    last: PlannedSegment, project, reference: np.ndarray, simulated: np.ndarray, quantized: bool, model, x: np.ndarray | None = None
) -> dict:
    if last.segment.placement == "fpga":
        if quantized and x is not None and last.segment.index == 0:
            logits = _logits_exactness(project, last.canonical.model, to_canonical_layout(x, last.canonical.input_perm))
            if logits is not None:
                return logits
        return bit_exactness(reference, simulated, project.layers[-1].precision.get("result", ""), quantized, output_quantizer_step(model))
    if not quantized:
        return {"bit_exact": None, "max_lsb_error": None}
    return {
        "bit_exact": None,
        "max_lsb_error": None,
        "note": "the last segment runs in float32 on the CPU (TVM): no fixed-point grid to be exact on",
    }


def _divergence(planned: list[PlannedSegment], outputs: list[np.ndarray], placed, x: np.ndarray, projects: dict) -> dict | None:
    """The first segment whose output departs from the reference, and inside an FPGA segment the
    first diverging hls4ml layer."""
    n = min(16, x.shape[0])
    reference = tensor_values(placed, x[:n], [p.segment.output_tensor for p in planned])
    for p, out in zip(planned, outputs):
        ref = reference[p.segment.output_tensor].reshape(n, -1)
        got = out[:n].reshape(n, -1)
        error = float(np.max(np.abs(ref - got))) if ref.size else 0.0
        if not np.array_equal(ref.argmax(-1), got.argmax(-1)) or error > 1e-3 * max(1.0, float(np.max(np.abs(ref)))):
            entry = {"segment": p.segment.name, "placement": p.segment.placement, "max_abs_error": error, "layer": p.segment.name}
            if p.segment.placement == "fpga":
                inner = first_divergence(
                    projects[p.segment.index],
                    p.canonical.model,
                    to_canonical_layout(
                        p.x_in[:n]
                        if p.segment.index == 0
                        else tensor_values(placed, x[:n], [p.segment.input_tensor])[p.segment.input_tensor],
                        p.canonical.input_perm,
                    ),
                )
                if inner:
                    entry.update(inner)
            return entry
    return None


@dataclass
class DesignFlow:
    """What the build's steps up to the cost model leave: the loaded (pruned, quantized) model,
    its data, where each node runs and each FPGA segment's plan. ``build`` goes on to lower,
    compile and verify it; ``estimate`` costs it as it stands, so both report the same design."""

    options: DesignOptions
    base_target: object  # the board as loaded (edgec.targets.Target)
    device: object | None  # its FPGA with the options applied (edgec.cost.device.Device), None without one
    tgt: object  # the board with that device's part and clock
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


def resolve_options(target: str, options: DesignOptions | None, io_type: str | None = None):
    """Check the design options and resolve the target and its FPGA device once:
    ``(options, base_target, device or None, target with the device's part and clock)``."""
    options = options or DesignOptions()
    if io_type is not None and options.io_type is None:
        options = replace(options, io_type=io_type)
    options.check()
    base_target = load_target(target)
    device = options.device(base_target) if base_target.has_fpga else None
    tgt = target_for_device(base_target, device) if device is not None else base_target
    return options, base_target, device, tgt


def design_flow(
    model,
    base_target,
    tgt,
    device,
    options: DesignOptions,
    data,
    width: int,
    random_samples: int,
    prune: list | None,
    quantize: list | None,
    place: str,
    placement: dict[str, str] | None,
    progress=None,
    lap=None,
) -> DesignFlow:
    """Load, prune, quantize, place, partition and configure ``model`` as a build does (see
    ``build`` for the arguments); ``lap(step, detail)`` is called as each step finishes."""
    lap = lap or (lambda name, detail="": None)
    enter("load")
    loaded = load_model(model)
    enter("data", loaded.model)
    lap("load", "QONNX model" if loaded.is_qonnx else "ONNX model")
    input_shape = loaded.model.get_tensor_shape(loaded.model.graph.input[0].name)
    x, y, data_desc = resolve_data(data, loaded.model, random_samples)
    prune_records: list[dict] = []
    if prune:
        enter("prune", loaded.model)
        loaded.model, prune_records = prune_model(
            loaded.model, prune, x if data is not None else None, y, x, progress, target=base_target.name, placement=placement
        )
        lap("prune", f"{len(prune_records)} pass(es)")
    float_model = loaded.model
    if quantize:
        enter("quantize", loaded.model)
        # without the user's data the pass calibrates on random inputs itself and says so in its record
        loaded.model, quant_records = quantize_model(
            loaded.model, quantize, x if data is not None else None, y, base_target.name, options, width
        )
        prune_records += quant_records
        lap("quantize", f"{len(quant_records)} pass(es)")
    enter("partition", loaded.model)
    check_single_io(loaded.model)
    placer = PlaceNodes(place, placement, has_fpga=base_target.has_fpga, has_cpu=base_target.cpu is not None, target_name=base_target.name)
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
        options,
        base_target,
        device,
        tgt,
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


@guarded("build")
def build(
    model: str | Path | onnx.ModelProto,
    target: str = "pynq-z2",
    output_dir: str | Path = "build",
    data: str | Path | np.ndarray | tuple[np.ndarray, np.ndarray] | None = None,
    force: bool = False,
    min_agreement: float = 0.99,
    io_type: str | None = None,
    width: int = 16,
    random_samples: int = 200,
    progress: Callable[[str], None] | None = None,
    options: DesignOptions | None = None,
    prune: list | None = None,
    quantize: list | None = None,
    place: str = "auto",
    placement: dict[str, str] | None = None,
    cross: bool = True,
    keep_failed: bool = False,
) -> BuildResult:
    """Build ``model`` for ``target`` into ``output_dir`` and verify it.

    ``model`` is a path or an ``onnx.ModelProto``. ``data`` is an .npz/.npy path, an array of inputs
    in the model's layout, or an ``(x, y)`` tuple with integer labels; without it, deterministic
    random inputs from the input's declared domain are used. Raises an :class:`edgec.errors.EdgecError`
    subclass on any user-facing problem; nothing is left in ``output_dir`` unless the build verified.
    ``progress``, if given, is called with a short line as each step finishes. ``options``
    overrides part, clock, HLS backend, io type, strategy, reuse factor or precision (to reproduce
    a published design); ``io_type`` is a shortcut for ``options.io_type``. ``prune`` is a list of
    pruning specs (``"magnitude:sparsity=0.5"`` or ``("magnitude", {"sparsity": 0.5})``) run in
    order on the model before it is lowered, on ``data`` when given (data-free otherwise);
    ``quantize`` a list of quantization specs (``"fixed:bits=8"``) run after pruning.

    ``place`` decides where nodes run: ``"auto"`` (default: the FPGA, except ops hls4ml cannot
    implement and layers that do not fit the FPGA, which go to the board's CPU), ``"fpga"`` or
    ``"cpu"``; ``placement`` overrides single nodes by name (``{"fc3": "cpu"}``). CPU parts are
    compiled with TVM for the host (simulation) and, with ``cross``, for the board's CPU (``cpu/``).
    With ``keep_failed``, a build that fails after it started writing leaves what it wrote in
    ``<output_dir>.failed/`` (replacing an earlier one) instead of removing it.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str, detail: str = "") -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now
        if progress is not None:
            progress(f"{name:<12} {timings[name]:6.2f} s  {detail}".rstrip())

    enter("options")
    options, base_target, device, tgt = resolve_options(target, options, io_type)
    out = Path(output_dir)
    if out.exists() and not force:
        raise OutputExistsError(f"output folder '{out}' already exists", hint="pass --force to replace it, or -o to choose another")
    flow = design_flow(
        model, base_target, tgt, device, options, data, width, random_samples, prune, quantize, place, placement, progress, lap
    )
    loaded, x, y, data_desc, input_shape = flow.loaded, flow.x, flow.y, flow.data_desc, flow.input_shape
    prune_records, placer, placed, planned = flow.prune_records, flow.placer, flow.placed, flow.planned
    float_comparison = flow.float_comparison
    fpga_parts = [p for p in planned if p.segment.placement == "fpga"]

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.edgec-", dir=out.parent))
    try:
        stem = Path(loaded.path).stem if loaded.path else "edgec_model"
        project_name = sanitize_identifier(stem)
        single_fpga = len(planned) == 1 and fpga_parts
        if single_fpga:
            fpga_parts[0].canonical.model.save(str(staging / "model.edgec.onnx"))
        else:
            placed.save(str(staging / "model.edgec.onnx"))
        projects: dict[int, object] = {}
        libraries: dict[int, object] = {}
        segments_meta: list[dict] = []
        for p in planned:
            seg = p.segment
            seg_in = [int(d) for d in seg.model.get_tensor_shape(seg.model.graph.input[0].name)]
            seg_out = [int(d) for d in seg.model.get_tensor_shape(seg.model.graph.output[0].name)]
            if p.segment.index == 0:
                seg_in = [int(d) for d in input_shape]
            if seg.placement == "fpga":
                enter("lower", p.canonical.model)
                project_dir = "hls" if len(fpga_parts) == 1 else f"hls_{seg.name}"
                name = project_name if len(fpga_parts) == 1 else sanitize_identifier(f"{project_name}_{seg.name}")
                project = lower(p.canonical.model, p.plan, tgt, staging / project_dir, name, backend=device.backend)
                projects[seg.index] = project
                for key in ("convert", "compile"):
                    timings[key] = round(timings.get(key, 0.0) + project.timings[key], 3)
                if progress is not None:
                    progress(
                        f"{'convert':<12} {project.timings['convert']:6.2f} s  hls4ml project {project_dir}/ ({len(project.layers)} layers)"
                    )
                    progress(f"{'compile':<12} {project.timings['compile']:6.2f} s  g++ C simulation")
                canon_in = p.canonical.model.get_tensor_shape(p.canonical.model.graph.input[0].name)
                canon_out = p.canonical.model.get_tensor_shape(p.canonical.model.graph.output[0].name)
                segments_meta.append(
                    {
                        "index": seg.index,
                        "placement": "fpga",
                        "name": seg.name,
                        "project_dir": project_dir,
                        "project_name": project.project_name,
                        "input_shape": seg_in,
                        "output_shape": seg_out,
                        "input_perm": p.canonical.input_perm,
                        "output_perm": p.canonical.output_perm,
                        "canonical_output_shape": [int(d) for d in canon_out],
                        "n_in": int(np.prod(canon_in[1:])),
                        "n_out": int(np.prod(canon_out[1:])),
                        "io_type": p.plan.io_type,
                    }
                )
            else:
                from edgec.backends.tvm import compile_cpu_model

                enter("tvm", seg.model)
                library = compile_cpu_model(seg.model, base_target, staging / "cpu", seg.name, cross=cross)
                libraries[seg.index] = library
                for key, value in library.timings.items():
                    timings[f"tvm_{key}"] = round(timings.get(f"tvm_{key}", 0.0) + value, 3)
                if progress is not None:
                    progress(
                        f"{'tvm':<12} {sum(library.timings.values()):6.2f} s  CPU segment {seg.name} ({len(seg.nodes)} nodes) -> cpu/{library.sidecar.name}"
                    )
                segments_meta.append(
                    {
                        "index": seg.index,
                        "placement": "cpu",
                        "name": seg.name,
                        "library_meta": f"cpu/{library.sidecar.name}",
                        "board_library": f"cpu/{library.board_library.name}" if library.board_library else None,
                        "input_shape": seg_in,
                        "output_shape": seg_out,
                    }
                )
        clock = time.perf_counter()
        meta = {
            "input_shape": [int(d) for d in input_shape],
            "is_qonnx": loaded.is_qonnx,
            "segments": segments_meta,
        }
        if single_fpga:  # the keys of a build folder from before partitioning
            only = segments_meta[0]
            meta.update({k: only[k] for k in ("project_name", "input_perm", "output_perm", "canonical_output_shape", "n_in", "n_out")})
        enter("verify", loaded.model)
        runners = [SegmentRunner(entry, staging) for entry in segments_meta]
        simulated, seg_outputs = run_chain(runners, x, keep=True)
        reference, reference_name = reference_outputs(loaded.model, x, loaded.is_qonnx)
        last = planned[-1]
        resolution = projects[last.segment.index].output_resolution(reference) if last.segment.placement == "fpga" else 0.0
        verification = {
            "reference": reference_name,
            "data": data_desc,
            **compare(reference, simulated, y, resolution, task=output_task(loaded.model)),
        }
        verification["simulated_by"] = " -> ".join("C simulation" if p.segment.placement == "fpga" else "TVM host build" for p in planned)
        verification["min_agreement"] = min_agreement
        verification.update(
            _bit_exactness_of(last, projects.get(last.segment.index), reference, simulated, loaded.is_qonnx, loaded.model, x)
        )
        if loaded.is_qonnx and not single_fpga and fpga_parts:
            verification.update(_partitioned_exactness(planned, projects, verification))
        verification["first_divergence"] = None
        if verification["decisive_agreement"] < min_agreement:
            if single_fpga:
                verification["first_divergence"] = first_divergence(
                    projects[0], fpga_parts[0].canonical.model, to_canonical_layout(x, fpga_parts[0].canonical.input_perm)
                )
            else:
                verification["first_divergence"] = _divergence(planned, seg_outputs, placed, x, projects)
        lap("verify", f"{verification['n_samples']} samples against {reference_name}")
        enter("cost", placed)
        costs = cost_partitioned_design(
            planned, projects, libraries, base_target, device, options, pruned=any("ops_before" in r for r in prune_records)
        )
        lap("estimate", f"{costs.latency_us:.4g} us, {costs.energy_uj:.3g} uJ per inference")
        report = {
            "schema_version": SCHEMA_VERSION,
            "edgec_version": __version__,
            "model": {
                "path": loaded.path,
                "sha256": loaded.sha256,
                "inputs": [
                    {"name": i.name, "shape": loaded.model.get_tensor_shape(i.name)}
                    for i in loaded.model.graph.input
                    if loaded.model.get_initializer(i.name) is None
                ],
                "outputs": [{"name": o.name, "shape": loaded.model.get_tensor_shape(o.name)} for o in loaded.model.graph.output],
            },
            "target": target_report(base_target, device),
            "options": {**options.as_dict(), "place": placer.place},
            "io_type": fpga_parts[0].plan.io_type if fpga_parts else None,
            "layers": costs.layers,
            **costs.sections,
            "partition": costs.partition,
            "quantization_cost": float_comparison,
            "verification": verification,
            "passes": design_passes(flow),
            "decisions": design_decisions(flow, costs),
            "timings": timings,
        }
        enter("report")
        bundle_note = _render_bundle(staging, segments_meta, tgt, project_name, x, simulated, cross)
        report["deploy"] = bundle_note
        if bundle_note.get("skipped"):
            report["warnings"].append(f"no deploy/ bundle: {bundle_note['skipped']}")
        if cross and base_target.cpu is not None and libraries:
            report["cpu_libraries"] = [
                {
                    "segment": planned[i].segment.name,
                    "board": f"cpu/{lib.board_library.name}" if lib.board_library else None,
                    "machine": lib.board_elf_machine,
                    "host": f"cpu/{lib.host_library.name}",
                }
                for i, lib in libraries.items()
            ]
        write_report(report, staging / "report.json")
        write_html(report, staging / "report.html")
        (staging / "summary.txt").write_text(render_summary(report) + "\n")
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if verification["decisive_agreement"] < min_agreement:
            div = verification["first_divergence"]
            where = f"; first diverging layer: {div['layer']} (max abs error {div['max_abs_error']:.3g})" if div else ""
            raise VerificationError(
                f"the simulated design agrees with the reference on {verification['decisive_agreement'] * 100:.1f}% of samples, "
                f"below the required {min_agreement * 100:.1f}%{where}",
                hint="lower --min-agreement to keep the build anyway, or raise --width",
            )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        if keep_failed:
            kept = out.with_name(out.name + ".failed")
            shutil.rmtree(kept, ignore_errors=True)
            staging.rename(kept)
            log.warning("the failed build's files are kept in %s", kept)
        else:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    for line in render_summary(report).splitlines():
        log.debug(line)
    return BuildResult(output_dir=out, report=report, _meta=meta)
