"""Per-layer and whole-design cost of a lowered model: the figures report.json carries.

``estimate_design`` runs the three models (edgec.cost.cycles, .resources, .energy) over the
layers of a design for one device and returns a :class:`DesignCost`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgec.cost import cycles as cycles_model
from edgec.cost import energy as energy_model
from edgec.cost import resources as resources_model
from edgec.cost.device import Device
from edgec.cost.layer import LayerConfig

COST_MODEL_VERSION = "1.0"
SOURCES = [
    "hls4ml 1.3.0 HLS templates (hls4ml/templates/vivado/nnet_utils): loop structure, pipelining, ReuseFactor semantics",
    "UG902 Vivado HLS / UG1399 Vitis HLS: 12.5% default clock uncertainty",
    "UG479 7 Series DSP48E1 (25x18), UG579 UltraScale DSP48E2 (27x18): multiplier ports and pipeline registers",
    "UG474 7 Series / UG574 UltraScale CLB: LUT6 + carry chain per adder bit, LUT as 4:1 mux, SRLC32E shift registers",
    "UG473 7 Series / UG573 UltraScale memory resources: BRAM18 of 18 Kib, two ports",
    "DS187 Zynq-7000, DS181 Artix-7, DS925 Zynq UltraScale+: DSP F_MAX per speed grade (logic speed factors)",
    "Duarte et al., JINST 13 P07027 (2018): hls4ml maps narrow products (< ~10 bits) to LUTs",
    "M. Horowitz, Computing's energy problem, ISSCC 2014 (45 nm operation energies)",
    "I. Kuon and J. Rose, Measuring the gap between FPGAs and ASICs, IEEE TCAD 26(2) 2007 (FPGA/ASIC dynamic power ~14x)",
    "targets/<board>.yaml power: static power, PS-PL and BRAM energy per bit (docs/energy-sources.md)",
    "calibration: 24 Vivado HLS 2020.1 synthesis reports of hls4ml designs (tests/data/costval; benchmarks/costval_validation.py)",
]
RESOURCE_KEYS = ("lut", "ff", "dsp", "bram18")


@dataclass
class LayerCost:
    """Cost of one layer."""

    layer: LayerConfig
    cycles: int
    ii: int
    fill: int
    resources: resources_model.LayerResources
    energy: energy_model.LayerEnergy

    def to_report(self, clock_ns: float) -> dict:
        return {
            "cycles": self.cycles,
            "ii": self.ii,
            "latency_ns": round(self.cycles * clock_ns, 3),
            "resources": self.resources.as_dict(),
            "energy_nj": round(self.energy.total, 6),
            "energy_breakdown_nj": self.energy.as_dict(),
            "sparsity": round(self.layer.sparsity, 4) if self.layer.is_linear else None,
        }


@dataclass
class DesignCost:
    """Cost of a whole design on one device."""

    device: Device
    layers: list[LayerCost]
    cycles: int
    ii: int
    overhead: resources_model.LayerResources
    warnings: list[str] = field(default_factory=list)

    @property
    def latency_us(self) -> float:
        return self.cycles * self.device.clock_ns / 1000.0

    @property
    def throughput_fps(self) -> float:
        return 1e9 / (max(self.ii, 1) * self.device.clock_ns)

    def resources(self) -> dict[str, int]:
        totals = self.overhead.as_dict()
        for cost in self.layers:
            for key, value in cost.resources.as_dict().items():
                totals[key] += value
        return totals

    def available(self) -> dict[str, int]:
        r = self.device.resources
        return {"lut": r.lut, "ff": r.ff, "dsp": r.dsp, "bram18": r.bram18}

    def utilization(self) -> dict[str, float]:
        used, available = self.resources(), self.available()
        return {k: round(used[k] / available[k], 4) if available[k] else 0.0 for k in RESOURCE_KEYS}

    def energy_breakdown_uj(self) -> dict[str, float]:
        parts = {"compute": 0.0, "memory": 0.0, "io": 0.0, "static": 0.0}
        for cost in self.layers:
            for key, value in cost.energy.as_dict().items():
                parts[key] += value / 1000.0
        return {k: round(v, 9) for k, v in parts.items()}

    @property
    def energy_uj(self) -> float:
        return sum(self.energy_breakdown_uj().values())

    def bottleneck(self) -> LayerCost | None:
        """The layer that sets the II (ties: the longest latency)."""
        if not self.layers:
            return None
        return max(self.layers, key=lambda c: (c.ii, c.cycles))

    def totals(self) -> dict:
        bottleneck = self.bottleneck()
        energy_uj = self.energy_uj
        return {
            "cycles": self.cycles,
            "latency_us": round(self.latency_us, 6),
            "ii": self.ii,
            "throughput_fps": round(self.throughput_fps, 3),
            "resources": self.resources(),
            "available": self.available(),
            "utilization": self.utilization(),
            "energy_uj": round(energy_uj, 9),
            "energy_breakdown_uj": self.energy_breakdown_uj(),
            "edp": round(energy_uj * self.latency_us, 12),
            "units": {"latency": "us", "energy": "uJ", "edp": "uJ*us", "throughput": "inferences/s"},
            "bottleneck": bottleneck.layer.name if bottleneck is not None else None,
        }

    def cost_model(self) -> dict:
        return {
            "version": COST_MODEL_VERSION,
            "sources": SOURCES,
            "part": self.device.part,
            "clock_ns": self.device.clock_ns,
            "backend": self.device.backend,
        }


def _depth(cyc: cycles_model.LayerCycles, layer: LayerConfig) -> int:
    """Pipeline registers of a layer's arithmetic: its latency without the cycles spent reading
    and writing streams or looping over pixels."""
    linear = layer.is_linear
    if layer.io_type == "io_stream":
        if not linear:
            return 0
        if layer.kind == "dense" and layer.positions == 1:
            return max(cyc.latency - cycles_model.STREAM_IO_CYCLES, 0) if cyc.latency > 1 else 0
        return max(cyc.fill - cycles_model.STREAM_WINDOW_CYCLES, 0)
    if layer.kind in ("conv", "depthwise") or layer.positions > 1:
        return max(cyc.latency - cyc.ii - cycles_model.PARALLEL_CONV_CYCLES, 0)
    if linear and layer.strategy == "resource" and layer.reuse_factor > 1:
        return max(cyc.latency - layer.reuse_factor - 1, 0)  # the RF loop is not a pipeline stage
    return cyc.latency


def estimate_design(layers: list[LayerConfig], device: Device, power: dict | None = None) -> DesignCost:
    """Cycles, resources and energy of every layer and of the design."""
    per_cycles = [cycles_model.layer_cycles(layer, device) for layer in layers]
    io_type = layers[0].io_type if layers else "io_parallel"
    total_cycles, total_ii = cycles_model.design_cycles(per_cycles, io_type, layers, device.backend)
    costs: list[LayerCost] = []
    for index, (layer, cyc) in enumerate(zip(layers, per_cycles, strict=True)):
        res = resources_model.layer_resources(layer, device, _depth(cyc, layer), is_last=index == len(layers) - 1)
        census = None
        if layer.is_linear and layer.weight_codes is not None and not layer.binary_weights:
            census = resources_model.layer_census(layer, device)
        energy = energy_model.layer_energy(
            layer,
            power or {},
            latency_s=cyc.latency * device.clock_ns * 1e-9,
            register_bits=res.ff,
            dsp_products=census.dsp_products if census else None,
            lut_products=census.lut_products if census else None,
            is_first=index == 0,
            is_last=index == len(layers) - 1,
        )
        costs.append(LayerCost(layer, cyc.latency, cyc.ii, cyc.fill, res, energy))
    overhead = resources_model.design_overhead(layers, device, total_ii)
    design = DesignCost(device=device, layers=costs, cycles=total_cycles, ii=total_ii, overhead=overhead)
    # Static power is drawn for the whole design latency; each layer carries its share of it
    # (in io_stream the per-layer latencies overlap, so they do not add up to the total).
    layer_sum = sum(c.cycles for c in costs)
    static_w = energy_model.static_power_w(power or {})
    for cost in costs:
        share = cost.cycles / layer_sum if layer_sum else 1.0 / len(costs)
        cost.energy.static = static_w * share * total_cycles * device.clock_ns  # W x ns = nJ
    used = design.resources()
    for key, frac in design.utilization().items():
        if frac > 1.0:
            design.warnings.append(
                f"{key.upper()} {used[key]} exceeds the {design.device.part}'s {design.available()[key]} ({frac * 100:.0f}%): "
                "raise the reuse factor (--reuse-factor, --strategy resource), prune, or quantize"
            )
    return design
