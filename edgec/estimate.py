"""`edgec estimate`: cycles, resources and energy of a model's design without compiling anything.

The same steps as a build up to configuration (load, canonicalize, calibrate, choose types,
strategy and reuse factor), then the cost models of edgec.cost. Also used by the build to cost
the design it lowered, so `estimate` and `build` report the same figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from qonnx.core.modelwrapper import ModelWrapper

from edgec import __version__
from edgec.configure import LoweringPlan, plan_lowering
from edgec.cost.design import DesignCost, estimate_design
from edgec.cost.device import Device, device_for
from edgec.cost.layer import LayerConfig, plan_cost_layers
from edgec.errors import OptionError
from edgec.fixed_point import FixedType, parse_fixed
from edgec.report import SCHEMA_VERSION
from edgec.steps import enter, guarded
from edgec.targets import Target, load_target

STRATEGIES = ("latency", "resource")
IO_TYPES = ("io_parallel", "io_stream")


@dataclass(frozen=True)
class DesignOptions:
    """User overrides shared by `build` and `estimate`, to reproduce a published design exactly."""

    part: str | None = None
    clock_ns: float | None = None
    backend: str | None = None
    io_type: str | None = None
    strategy: str | None = None
    reuse_factor: int | None = None
    precision: str | None = None

    def fixed(self) -> FixedType | None:
        if self.precision is None:
            return None
        try:
            return parse_fixed(self.precision)
        except ValueError as exc:
            raise OptionError(f"--precision: {exc}") from None

    def check(self) -> None:
        """Raise OptionError for values no design can have."""
        if self.strategy is not None and self.strategy.lower() not in STRATEGIES:
            raise OptionError(f"unknown strategy '{self.strategy}'", hint="use latency or resource")
        if self.io_type is not None and self.io_type not in IO_TYPES:
            raise OptionError(f"unknown io type '{self.io_type}'", hint="use io_parallel or io_stream")
        if self.reuse_factor is not None and self.reuse_factor < 1:
            raise OptionError(f"reuse factor must be at least 1, not {self.reuse_factor}")
        self.fixed()

    def device(self, target: Target) -> Device:
        return device_for(target, part=self.part, clock_ns=self.clock_ns, backend=self.backend)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def target_for_device(target: Target, device: Device) -> Target:
    """The target with the device's part and resources (so the configurator fits the right chip)."""
    from dataclasses import replace

    return replace(
        target, part=device.part, family=device.family, dsp_kind=device.dsp_kind, resources=device.resources, clock_mhz=device.clock_mhz
    )


def plan_design(model: ModelWrapper, x_canon: np.ndarray, target: Target, options: DesignOptions, width: int) -> LoweringPlan:
    """The lowering plan for a canonical model under the user's overrides (shared by build and estimate)."""
    return plan_lowering(
        model,
        x_canon,
        target,
        io_type=options.io_type,
        width=width,
        strategy=options.strategy,
        reuse_factor=options.reuse_factor,
        precision=options.fixed(),
        backend=options.backend,
    )


def cost_layers(model: ModelWrapper, plan: LoweringPlan, io_type: str, options: DesignOptions) -> list[LayerConfig]:
    """The design's layers as the cost models see them, typed as the plan (or the user) chose."""
    return plan_cost_layers(model, plan, io_type, strategy=options.strategy)


def layer_report(cost_layer, clock_ns: float) -> dict:
    """One report.json `layers` entry for an estimated (not built) layer."""
    layer = cost_layer.layer
    return {
        "name": layer.name,
        "op": layer.op,
        "kind": layer.kind,
        "inputs_shape": layer.in_shape,
        "outputs_shape": layer.out_shape,
        "macs": layer.multiplies if layer.is_linear else 0,
        "params": layer.n_in * layer.n_out + layer.n_out if layer.is_linear else 0,
        "precision": {
            "weight": f"{layer.weight_bits} bits" if layer.weight_bits else None,
            "result": f"{layer.result_bits} bits",
            "accum": f"{layer.accum_bits} bits" if layer.is_linear else None,
        },
        "strategy": layer.strategy.capitalize() if layer.is_linear else None,
        "reuse_factor": layer.reuse_factor if layer.is_linear else None,
        "onnx_tensor": layer.output_tensor,
        **cost_layer.to_report(clock_ns),
    }


def cost_sections(design: DesignCost) -> dict:
    """The report.json sections the cost model fills: totals, cost_model, warnings."""
    return {"totals": design.totals(), "cost_model": design.cost_model(), "warnings": list(design.warnings)}


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
    (``edgec.build.design_flow``: load, prune, ``quantize``, place, partition, configure, the
    comparison of a quantized design with the float one) and costs what they leave, so its totals
    are the build's. ``random_samples`` (without ``data``) is the build's default too: the ranges
    the configurator calibrates on, and so the types, are the same.
    """
    from edgec.data import resolve_data
    from edgec.frontend.canonicalize import canonicalize
    from edgec.frontend.load import load_model
    from edgec.runtime.hetero import to_canonical_layout

    started = time.perf_counter()
    if place != "fpga":
        return _estimate_flow(model, target, data, options, width, random_samples, prune, quantize, progress, place, placement, started)
    options = options or DesignOptions()
    options.check()
    tgt = load_target(target)
    if not tgt.has_fpga:
        return _estimate_flow(model, target, data, options, width, random_samples, prune, quantize, progress, place, placement, started)
    enter("load")
    loaded = load_model(model)
    enter("data", loaded.model)
    device = options.device(tgt)
    x, y, _ = resolve_data(data, loaded.model, random_samples)
    prune_records: list[dict] = []
    if prune:
        from edgec.build import prune_model

        loaded.model, prune_records = prune_model(loaded.model, prune, x if data is not None else None, y, x, progress, target=tgt.name)
    if quantize:
        from edgec.build import quantize_model

        loaded.model, quant_records = quantize_model(loaded.model, quantize, x if data is not None else None, y, tgt.name, options, width)
        prune_records += quant_records
    enter("canonicalize", loaded.model)
    canonical = canonicalize(loaded.model, for_estimate=True)
    enter("configure", canonical.model)
    x_canon = to_canonical_layout(x, canonical.input_perm)  # calibration uses the first 128
    plan = plan_design(canonical.model, x_canon, target_for_device(tgt, device), options, width)
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


def _estimate_flow(model, target, data, options, width, random_samples, prune, quantize, progress, place, placement, started) -> dict:
    """The estimate of the design the build makes: its own flow (``edgec.build.design_flow``) up to
    the cost model, costed as the build costs it (``cost_partitioned_design``)."""
    from edgec.build import design_decisions, design_flow, design_passes, resolve_options
    from edgec.design_report import cost_partitioned_design, target_report

    options, base_target, device, tgt = resolve_options(target, options)
    flow = design_flow(model, base_target, tgt, device, options, data, width, random_samples, prune, quantize, place, placement, progress)
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
