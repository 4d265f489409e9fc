"""The design's configuration and its cost, as the build and the estimate both make them: the
user's overrides (``DesignOptions``), the lowering plan under them, the layers as the cost models
see them, and the report sections the cost model fills. Imports nothing of the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper

from edgec.configure import LoweringPlan, plan_lowering
from edgec.cost.design import DesignCost
from edgec.cost.device import Device, device_for
from edgec.cost.layer import LayerConfig, plan_cost_layers
from edgec.errors import OptionError
from edgec.fixed_point import FixedType, parse_fixed
from edgec.targets import Target

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
