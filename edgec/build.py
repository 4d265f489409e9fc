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
from edgec.backends.hls4ml_backend import lower, sanitize_identifier
from edgec.cost.design import LayerCost, estimate_design
from edgec.data import resolve_data
from edgec.errors import OutputExistsError, VerificationError
from edgec.estimate import DesignOptions, cost_layers, cost_sections, plan_design, target_for_device
from edgec.frontend.canonicalize import canonicalize
from edgec.frontend.load import load_model
from edgec.report import SCHEMA_VERSION, render_summary, write_report
from edgec.report_html import write_html
from edgec.runtime.csim import CSimulation
from edgec.targets import load_target
from edgec.verify import compare, first_divergence, reference_outputs

log = logging.getLogger(__name__)
META_FILE = "edgec.json"


def to_canonical_layout(x: np.ndarray, input_perm: list[int] | None) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(input_perm)) if input_perm else x


def from_canonical_layout(y: np.ndarray, canonical_out_shape: list[int], output_perm: list[int] | None) -> np.ndarray:
    if output_perm:
        y = y.reshape(y.shape[0], *canonical_out_shape[1:]).transpose(output_perm)
    return y.reshape(y.shape[0], -1)


def prune_model(model, specs: list, x: np.ndarray | None, y: np.ndarray | None, metric_x: np.ndarray, progress=None):
    """Run pruning specs on a loaded model: on the user's data (x, y) when given, otherwise with the
    passes' data-free criteria, measuring agreement with the unpruned model on ``metric_x``."""
    from edgec.passes.prune import PruneContext, run_pruning

    ctx = PruneContext(x, y, progress=progress)
    metrics = ctx if x is not None else PruneContext(metric_x, None)
    return run_pruning(model, specs, ctx, metrics)


def quantize_model(model, specs: list, x: np.ndarray, y: np.ndarray | None, target: str | None = None):
    """Run quantization specs (edgec.passes.quant) on a loaded model, calibrated on ``x``; a
    search that costs candidates does so on the build's ``target``."""
    from edgec.passes.quant.registry import run_quantization

    return run_quantization(model, specs, x, y, defaults={"target": target} if target else None)


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
        lines.append(f"prune {record['name']} ({record.get('mode') or 'one-shot'}): MACs {record['ops_before']} -> {record['ops_after']}, "
                     f"non-zero parameters {record['params_before']} -> {record['params_after']}{metric}")
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


def bit_exactness(reference: np.ndarray, simulated: np.ndarray, output_precision: str, quantized: bool) -> dict:
    """For a quantized model: whether the C-simulation equals the quantized reference (same argmax
    on every sample, every output within one LSB of the output type) and the largest error in
    LSBs. None for float models, whose reference is not on any fixed-point grid."""
    import re

    if not quantized:
        return {"bit_exact": None, "max_lsb_error": None}
    match = re.search(r"fixed<\s*(\d+)\s*,\s*(-?\d+)", output_precision)
    if match is None:
        return {"bit_exact": None, "max_lsb_error": None}
    lsb = 2.0 ** -(int(match.group(1)) - int(match.group(2)))
    max_lsb = float(np.max(np.abs(reference - simulated)) / lsb) if reference.size else 0.0
    same_argmax = bool(np.all(reference.argmax(-1) == simulated.argmax(-1)))
    return {"bit_exact": bool(same_argmax and max_lsb <= 1.0 + 1e-9), "max_lsb_error": round(max_lsb, 4), "output_lsb": lsb}


def _match_costs(hls_layers: list, costs: list[LayerCost]) -> list[LayerCost | None]:
    """Give each hls4ml layer the cost of the layer the cost model folded its ONNX tensor into;
    the first hls4ml layer on a fused chain (the Dense, not the quantizer after it) takes it."""
    owner: dict[str, LayerCost] = {}
    for cost in costs:
        for tensor in cost.layer.fused_tensors or [cost.layer.output_tensor]:
            owner.setdefault(tensor, cost)
    taken: set[int] = set()
    matched: list[LayerCost | None] = []
    for layer in hls_layers:
        cost = owner.get(layer.onnx_tensor)
        if cost is not None and id(cost) not in taken:
            taken.add(id(cost))
            matched.append(cost)
        else:
            matched.append(None)
    return matched


def _layer_cost(cost: LayerCost | None, clock_ns: float) -> dict:
    """A report layer's cost fields; a layer the cost model folded into another costs nothing itself."""
    if cost is None:
        return {"cycles": 0, "ii": 1, "latency_ns": 0.0, "resources": {"lut": 0, "ff": 0, "dsp": 0, "bram18": 0}, "energy_nj": 0.0,
                "energy_breakdown_nj": {"compute": 0.0, "memory": 0.0, "io": 0.0, "static": 0.0}, "sparsity": None}
    return cost.to_report(clock_ns)


@dataclass
class BuildResult:
    """What ``edgec.build`` returns: the report, the folder, and the simulated design."""

    output_dir: Path
    report: dict
    _meta: dict

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run the C simulation on inputs in the model's own layout; returns (N, outputs)."""
        return simulate_folder(self.output_dir, np.asarray(x, dtype=np.float32), self._meta)


def simulate_folder(output_dir: Path, x: np.ndarray, meta: dict | None = None) -> np.ndarray:
    """C-simulate inputs (model layout) with a finished build folder."""
    output_dir = Path(output_dir)
    meta = meta or json.loads((output_dir / META_FILE).read_text())
    sample_shape = meta["input_shape"][1:]
    if list(x.shape) == sample_shape:
        x = x[None]
    csim = CSimulation.from_project(output_dir / "hls", meta["project_name"], meta["n_in"], meta["n_out"])
    y = csim.run(to_canonical_layout(x, meta["input_perm"]))
    return from_canonical_layout(y, meta["canonical_output_shape"], meta["output_perm"])


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

    options = options or DesignOptions()
    if io_type is not None and options.io_type is None:
        options = replace(options, io_type=io_type)
    options.check()
    base_target = load_target(target)
    device = options.device(base_target)
    tgt = target_for_device(base_target, device)
    out = Path(output_dir)
    if out.exists() and not force:
        raise OutputExistsError(f"output folder '{out}' already exists", hint="pass --force to replace it, or -o to choose another")
    loaded = load_model(model)
    lap("load", "QONNX model" if loaded.is_qonnx else "ONNX model")
    input_shape = loaded.model.get_tensor_shape(loaded.model.graph.input[0].name)
    x, y, data_desc = resolve_data(data, loaded.model, random_samples)
    prune_records: list[dict] = []
    if prune:
        loaded.model, prune_records = prune_model(loaded.model, prune, x if data is not None else None, y, x, progress)
        lap("prune", f"{len(prune_records)} pass(es)")
    if quantize:
        loaded.model, quant_records = quantize_model(loaded.model, quantize, x, y, base_target.name)
        prune_records += quant_records
        lap("quantize", f"{len(quant_records)} pass(es)")
    canonical = canonicalize(loaded.model)
    lap("canonicalize", f"{len(canonical.model.graph.node)} nodes")
    x_canon = to_canonical_layout(x, canonical.input_perm)
    plan = plan_design(canonical.model, x_canon, tgt, options, width)
    lap("configure", f"{plan.io_type}, {len(plan.layers)} Dense/Conv layer(s) fitted to {tgt.name}")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.edgec-", dir=out.parent))
    try:
        canonical.model.save(str(staging / "model.edgec.onnx"))
        stem = Path(loaded.path).stem if loaded.path else "edgec_model"
        project_name = sanitize_identifier(stem)
        project = lower(canonical.model, plan, tgt, staging / "hls", project_name, backend=device.backend)
        timings["convert"] = project.timings["convert"]
        timings["compile"] = project.timings["compile"]
        if progress is not None:
            progress(f"{'convert':<12} {timings['convert']:6.2f} s  hls4ml project ({len(project.layers)} layers)")
            progress(f"{'compile':<12} {timings['compile']:6.2f} s  g++ C simulation")
        clock = time.perf_counter()
        canon_in = canonical.model.get_tensor_shape(canonical.model.graph.input[0].name)
        canon_out = canonical.model.get_tensor_shape(canonical.model.graph.output[0].name)
        meta = {
            "project_name": project.project_name,
            "input_shape": [int(d) for d in input_shape],
            "input_perm": canonical.input_perm,
            "output_perm": canonical.output_perm,
            "canonical_output_shape": [int(d) for d in canon_out],
            "n_in": int(np.prod(canon_in[1:])),
            "n_out": int(np.prod(canon_out[1:])),
            "is_qonnx": loaded.is_qonnx,
        }
        csim = CSimulation.from_project(staging / "hls", project.project_name, meta["n_in"], meta["n_out"])
        simulated = from_canonical_layout(csim.run(x_canon), canon_out, canonical.output_perm)
        reference, reference_name = reference_outputs(loaded.model, x, loaded.is_qonnx)
        resolution = project.output_resolution(reference)
        verification = {"reference": reference_name, "data": data_desc, **compare(reference, simulated, y, resolution)}
        verification["min_agreement"] = min_agreement
        verification.update(bit_exactness(reference, simulated, project.layers[-1].precision.get("result", ""), loaded.is_qonnx))
        verification["first_divergence"] = None
        if verification["decisive_agreement"] < min_agreement:
            verification["first_divergence"] = first_divergence(project, canonical.model, x_canon)
        lap("verify", f"{verification['n_samples']} samples against {reference_name}")
        design = estimate_design(cost_layers(canonical.model, plan, plan.io_type, options), device, base_target.power)
        layer_costs = _match_costs(project.layers, design.layers)
        lap("estimate", f"{design.cycles} cycles, {design.energy_uj:.3g} uJ per inference")
        report = {
            "schema_version": SCHEMA_VERSION,
            "edgec_version": __version__,
            "model": {
                "path": loaded.path,
                "sha256": loaded.sha256,
                "inputs": [{"name": i.name, "shape": loaded.model.get_tensor_shape(i.name)} for i in loaded.model.graph.input if loaded.model.get_initializer(i.name) is None],
                "outputs": [{"name": o.name, "shape": loaded.model.get_tensor_shape(o.name)} for o in loaded.model.graph.output],
            },
            "target": {"name": base_target.name, "part": device.part, "clock_mhz": round(device.clock_mhz, 6)},
            "options": options.as_dict(),
            "io_type": plan.io_type,
            "layers": [
                {
                    "name": layer.name,
                    "op": layer.op,
                    "inputs_shape": layer.input_shape,
                    "outputs_shape": layer.output_shape,
                    "macs": layer.macs,
                    "params": layer.params,
                    "precision": {k: layer.precision.get(k) for k in ("weight", "bias", "result", "accum")},
                    "strategy": layer.strategy,
                    "reuse_factor": layer.reuse_factor,
                    "onnx_tensor": layer.onnx_tensor,
                    "choice_reason": layer.choice_reason,
                    **_layer_cost(layer_costs[index], device.clock_ns),
                }
                for index, layer in enumerate(project.layers)
            ],
            **cost_sections(design),
            "verification": verification,
            "passes": prune_records + [{"name": p["name"], "params": p.get("params", {}), "seconds": p["seconds"], **({"details": p["details"]} if p.get("details") else {})} for p in canonical.passes],
            "decisions": loaded.notes + _prune_decisions(prune_records) + _pass_decisions(canonical.passes) + plan.notes,
            "timings": timings,
        }
        bottleneck = design.bottleneck()
        if bottleneck is not None:  # name it as the report's layers do (hls4ml's layer names)
            named = [entry["name"] for entry, cost in zip(report["layers"], layer_costs, strict=True) if cost is bottleneck]
            report["totals"]["bottleneck"] = named[0] if named else bottleneck.layer.name
        write_report(report, staging / "report.json")
        write_html(report, staging / "report.html")
        (staging / "summary.txt").write_text(render_summary(report) + "\n")
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if verification["decisive_agreement"] < min_agreement:
            div = verification["first_divergence"]
            where = f"; first diverging layer: {div['layer']} (max abs error {div['max_abs_error']:.3g})" if div else ""
            raise VerificationError(
                f"C simulation agrees with the reference on {verification['decisive_agreement'] * 100:.1f}% of samples, "
                f"below the required {min_agreement * 100:.1f}%{where}",
                hint="lower --min-agreement to keep the build anyway, or raise --width",
            )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for line in render_summary(report).splitlines():
        log.debug(line)
    return BuildResult(output_dir=out, report=report, _meta=meta)
