"""`edgec estimate`: cycles, resources and energy of a model's design without compiling anything.

The same steps as a build up to configuration (load, canonicalize, calibrate, choose types,
strategy and reuse factor), then the cost models of edgec.cost. Also used by the build to cost
the design it lowered, so `estimate` and `build` report the same figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx

from edgec.cost.design import estimate_design
from edgec.pipeline.config import BuildConfig
from edgec.pipeline.design import DesignOptions, cost_layers, cost_sections, layer_report, plan_design
from edgec.pipeline.design_report import cost_partitioned_design, target_report
from edgec.pipeline.flow import DesignCoster, design_decisions, design_flow, design_passes, prune_model, quantize_model
from edgec.report import SCHEMA_VERSION
from edgec.steps import enter, guarded
from edgec.version import __version__


@guarded("estimate")
def estimate(
    model: str | Path | onnx.ModelProto,
    target: str = "pynq-z2",
    data: str | Path | np.ndarray | tuple[np.ndarray, np.ndarray] | None = None,
    options: DesignOptions | None = None,
    width: int = 16,
    random_samples: int = 200,
    prune: list | None = None,
    progress=None,
    place: str = "auto",
    placement: dict[str, str] | None = None,
    quantize: list | None = None,
) -> dict:
    """Estimate ``model``'s design on ``target``; returns a report dict (layers, totals, cost_model).

    Nothing is written and nothing compiled. ``place``/``placement`` are the build's: with
    ``"auto"`` (default) ops hls4ml lacks and layers that do not fit are costed on the board's CPU,
    with the PS-PL transfers, as the build would partition the model. ``place="fpga"`` costs
    every op as hls4ml would implement it (with a warning for ops edgec cannot build), which is
    what the cost model's validation against synthesis reports uses.

    Except with ``place="fpga"``, the estimate runs the build's own steps up to the cost model
    (``edgec.pipeline.build.design_flow``: load, prune, ``quantize``, place, partition, configure, the
    comparison of a quantized design with the float one) and costs what they leave, so its totals
    are the build's. ``random_samples`` (without ``data``) is the build's default too: the ranges
    the configurator calibrates on, and so the types, are the same.
    """
    from edgec.data import resolve_data
    from edgec.frontend.canonicalize import canonicalize
    from edgec.frontend.load import load_model
    from edgec.runtime.hetero import to_canonical_layout

    started = time.perf_counter()
    enter("options")
    config = BuildConfig.make(target, options, None, width, random_samples, prune, quantize, place, placement)
    if place != "fpga" or config.device is None:
        return _estimate_flow(model, config, data, progress, started)
    tgt, device, options = config.target, config.device, config.options
    enter("load")
    loaded = load_model(model)
    enter("data", loaded.model)
    x, y, _ = resolve_data(data, loaded.model, random_samples)
    prune_records: list[dict] = []
    coster = DesignCoster(config)
    if prune:
        loaded.model, prune_records = prune_model(loaded.model, prune, x if data is not None else None, y, x, coster, progress)
    if quantize:
        loaded.model, quant_records = quantize_model(loaded.model, quantize, x if data is not None else None, y, coster)
        prune_records += quant_records
    enter("canonicalize", loaded.model)
    canonical = canonicalize(loaded.model, for_estimate=True)
    enter("configure", canonical.model)
    x_canon = to_canonical_layout(x, canonical.input_perm)  # calibration uses the first 128
    plan = plan_design(canonical.model, x_canon, config.fpga_target, options, width)
    layers = cost_layers(canonical.model, plan, plan.io_type, options)
    design = estimate_design(layers, device, tgt.power)
    warnings = list(design.warnings)
    if canonical.unsupported:
        warnings.insert(
            0,
            "edgec cannot put these ops on the FPGA (a build with --place auto runs them on the board's CPU); "
            "figures are for hls4ml's own implementation of: " + "; ".join(canonical.unsupported),
        )
    report = {
        "schema_version": SCHEMA_VERSION,
        "edgec_version": __version__,
        "kind": "estimate",
        "model": {"path": loaded.path, "sha256": loaded.sha256},
        "target": {"name": tgt.name, "part": device.part, "clock_mhz": round(device.clock_mhz, 6)},
        "io_type": plan.io_type,
        "options": options.as_dict(),
        "layers": [layer_report(c, device.clock_ns) for c in design.layers],
        **cost_sections(design),
        "passes": prune_records,
        "decisions": plan.notes,
        "verification": None,
        "timings": {"estimate": round(time.perf_counter() - started, 3)},
    }
    report["warnings"] = warnings
    return report


def _estimate_flow(model, config: BuildConfig, data, progress, started: float) -> dict:
    """The estimate of the design the build makes: its own flow (``edgec.pipeline.flow.design_flow``)
    up to the cost model, costed as the build costs it (``cost_partitioned_design``)."""
    options, base_target, device = config.options, config.target, config.device
    flow = design_flow(model, config, data, progress)
    pruned = any("ops_before" in r for r in flow.prune_records)
    costs = cost_partitioned_design(flow.planned, {}, {}, base_target, device, options, pruned=pruned)
    notes = design_decisions(flow, costs)
    if not base_target.has_fpga:
        notes.insert(0, f"{base_target.name} has no FPGA: every node runs on its {base_target.cpu.name} (TVM)")
    return {
        "schema_version": SCHEMA_VERSION,
        "edgec_version": __version__,
        "kind": "estimate",
        "model": {"path": flow.loaded.path, "sha256": flow.loaded.sha256},
        "target": target_report(base_target, device),
        "io_type": next((p.plan.io_type for p in flow.planned if p.plan), None),
        "options": {**options.as_dict(), "place": flow.placer.place},
        "layers": costs.layers,
        **costs.sections,
        "partition": costs.partition,
        "quantization_cost": flow.float_comparison,
        "passes": design_passes(flow),
        "decisions": notes,
        "verification": None,
        "timings": {"estimate": round(time.perf_counter() - started, 3)},
    }
