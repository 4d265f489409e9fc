"""The cost sections of a build's report for a partitioned design.

Per layer: the FPGA segments' hls4ml layers with their cost-model figures, and the CPU segments'
ONNX nodes with the CPU model's; each with ``placement``, ``segment``, ``implementation``,
``pruning_ratio``, ``break_even_ratio`` (edgec.cost.break_even) and why. For the whole design:
``totals`` (one FPGA segment alone: exactly the FPGA design's totals, as before partitioning) and
``partition`` (segments, PS<->PL transfers, the system's latency/energy and the break-even table).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from edgec.cost.break_even import METRICS, break_even_table, choose_implementation
from edgec.cost.design import DesignCost, LayerCost, estimate_design
from edgec.cost.layer import LayerConfig
from edgec.cost.system import system_totals, transfer_cost
from edgec.passes.prune.common import prunable_layers
from edgec.pipeline.design import cost_layers, cost_sections

# The metric a layer's form is chosen by: energy per inference, which weighs both the arithmetic
# and the memory traffic a sparse form changes (the report also gives cycles and resources).
BREAK_EVEN_METRIC = "energy"
ZERO_RESOURCES = {"lut": 0, "ff": 0, "dsp": 0, "bram18": 0}


@dataclass
class Measurements:
    """What a build measured on its host, for the report: each CPU segment's batch-1 latency
    (segment index -> TVM timer figures, ms) and the break-even ratio of pruned CPU layers
    (layer name -> the C benchmark's result). Estimates measure nothing."""

    host_latency_ms: dict[int, dict] = field(default_factory=dict)
    cpu_break_even: dict[str, dict | None] = field(default_factory=dict)


def target_report(target, device) -> dict:
    """report.json ``target``: the board, its FPGA part and clock (when it has one) and its CPU."""
    entry = {"name": target.name, "part": device.part if device else None, "clock_mhz": round(device.clock_mhz, 6) if device else None}
    if target.cpu is not None:
        entry["cpu"] = {"name": target.cpu.name, "clock_mhz": target.cpu.clock_mhz, "isa": target.cpu.isa}
    return entry


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
        return {
            "cycles": 0,
            "ii": 1,
            "latency_ns": 0.0,
            "resources": dict(ZERO_RESOURCES),
            "energy_nj": 0.0,
            "energy_breakdown_nj": {"compute": 0.0, "memory": 0.0, "io": 0.0, "static": 0.0},
            "sparsity": None,
        }
    return cost.to_report(clock_ns)


def _break_even_fields(
    layer: LayerConfig | None, ratio: float | None, target, device, placement: str, measured: dict | None = None
) -> tuple[dict, dict | None]:
    """The layer's ``implementation``/``pruning_ratio``/``break_even_ratio`` fields and its row of the
    break-even table (None for layers without weights). ``measured``: what the build measured of
    the layer's break-even on its host, if it did."""
    if layer is None or not layer.is_linear or ratio is None:
        return {"implementation": None, "pruning_ratio": None, "break_even_ratio": None}, None
    table = break_even_table(layer, target, device, placement, METRICS)  # one search for every metric
    implementation, reason, chosen = choose_implementation(
        layer, ratio, target, device, placement, BREAK_EVEN_METRIC, table[BREAK_EVEN_METRIC]
    )
    row = {
        "layer": layer.name,
        "placement": placement,
        "pruning_ratio": round(ratio, 4),
        "dense_form": chosen.dense_form,
        "sparse_form": chosen.sparse_form,
        "break_even": {metric: (None if be.ratio is None else round(be.ratio, 4)) for metric, be in table.items()},
        "metric": BREAK_EVEN_METRIC,
        "implementation": implementation,
        "reason": reason,
        "below_break_even": chosen.ratio is not None and 0 < ratio < chosen.ratio,
    }
    if placement == "cpu":
        row["measured_host_break_even"] = measured
    elif target.cpu is not None:  # the other implementation choice on this board: the same layer on its CPU (dense vs CSR)
        other = break_even_table(layer, target, device, "cpu", METRICS)
        row["break_even_on_cpu"] = {metric: (None if be.ratio is None else round(be.ratio, 4)) for metric, be in other.items()}
    fields = {
        "implementation": implementation,
        "pruning_ratio": round(ratio, 4),
        "break_even_ratio": None if chosen.ratio is None else round(chosen.ratio, 4),
        "implementation_reason": reason,
    }
    return fields, row


def _cpu_layer_config(model, node, weights: dict) -> tuple[LayerConfig | None, float | None]:
    """A CPU node as the break-even model sees it (Dense/Conv with constant weights, read through a
    weight quantizer: ``weights`` maps node names to the values the layer multiplies by), and its ratio."""
    if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
        return None, None
    weight = weights.get(node.name)
    if weight is None:
        weight = model.get_initializer(node.input[1])
    if weight is None:
        return None, None
    out_shape = model.get_tensor_shape(node.output[0]) or []
    if node.op_type == "Conv":
        n_out, n_in = int(weight.shape[0]), int(np.prod(weight.shape[1:]))
        positions = int(np.prod(out_shape[2:])) if len(out_shape) > 2 else 1
        kind = "conv"
    else:
        transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        n_in, n_out = (int(weight.shape[1]), int(weight.shape[0])) if transposed else (int(weight.shape[0]), int(weight.shape[1]))
        positions, kind = 1, "dense"
    layer = LayerConfig(
        name=node.name,
        kind=kind,
        op=node.op_type,
        output_tensor=node.output[0],
        in_shape=[n_in],
        out_shape=[n_out],
        n_in=n_in,
        n_out=n_out,
        positions=positions,
        weight_bits=32,
    )
    return layer, float(np.mean(weight == 0)) if weight.size else 0.0


def cpu_weight_layers(planned: list) -> list[tuple[LayerConfig, float]]:
    """The Dense/Conv layers of the CPU segments as the break-even model sees them, with their
    pruning ratios (what a build measures the host break-even of)."""
    found = []
    for p in planned:
        if p.segment.placement != "cpu":
            continue
        model = p.segment.model
        effective = {ref.node.name: ref.effective(model) for ref in prunable_layers(model)}
        for node in model.graph.node:
            config, ratio = _cpu_layer_config(model, node, effective)
            if config is not None and ratio is not None:
                found.append((config, ratio))
    return found


def _word_bits(precision: str | None) -> int:
    """Stream word per value at an FPGA seam: the bundle's AXI-stream wrapper packs one value per word."""
    from edgec.backends.bundle import WORD_BITS, word_bits_for

    match = re.search(r"(\d+)", precision or "")
    if not match:
        return 32
    width = int(match.group(1))
    if width > WORD_BITS[-1]:  # wider than the bundle's stream word: costed as whole 32-bit words (the bundle says it cannot pack it)
        return WORD_BITS[-1] * -(-width // WORD_BITS[-1])
    return word_bits_for(width)


@dataclass
class PartitionedCost:
    layers: list[dict]
    sections: dict
    partition: dict
    decisions: list[str] = field(default_factory=list)
    latency_us: float = 0.0
    energy_uj: float = 0.0


def cost_partitioned_design(
    planned: list,
    projects: dict,
    libraries: dict,
    target,
    device,
    options,
    pruned: bool = False,
    measured: Measurements | None = None,
) -> PartitionedCost:
    """Cost every segment, the transfers between them and the whole design (see module docstring).
    ``pruned``: a pruning pass ran, so layers pruned below their break-even ratio are flagged in the
    decisions. ``measured``: what the build measured on its host (CPU segment latencies, CPU
    break-even ratios), placed in the report as it is; nothing is measured here."""
    measured = measured or Measurements()
    from edgec.cost.cpu import cpu_node_costs

    layers: list[dict] = []
    stages: list[dict] = []
    table: list[dict] = []
    decisions: list[str] = []
    segments: list[dict] = []
    designs: list[DesignCost] = []
    fpga_resources = dict(ZERO_RESOURCES)
    bottleneck_name = None
    single_fpga = len(planned) == 1 and planned[0].segment.placement == "fpga"
    for p in planned:
        seg = p.segment
        entry = {
            "index": seg.index,
            "name": seg.name,
            "placement": seg.placement,
            "nodes": seg.nodes,
            "input_tensor": seg.input_tensor,
            "output_tensor": seg.output_tensor,
            "reasons": seg.reasons,
        }
        if seg.placement == "fpga":
            project = projects.get(seg.index)  # None: an estimate, nothing lowered (the cost model's layers are reported)
            design = estimate_design(cost_layers(p.canonical.model, p.plan, p.plan.io_type, options), device, target.power)
            designs.append(design)
            if project is not None:
                pairs = zip(project.layers, _match_costs(project.layers, design.layers))
                entries = [
                    (
                        {
                            "name": hls.name,
                            "op": hls.op,
                            "inputs_shape": hls.input_shape,
                            "outputs_shape": hls.output_shape,
                            "macs": hls.macs,
                            "params": hls.params,
                            "precision": {k: hls.precision.get(k) for k in ("weight", "bias", "result", "accum")},
                            "strategy": hls.strategy,
                            "reuse_factor": hls.reuse_factor,
                            "onnx_tensor": hls.onnx_tensor,
                            "choice_reason": hls.choice_reason,
                            **_layer_cost(cost, device.clock_ns),
                        },
                        cost,
                    )
                    for hls, cost in pairs
                ]
            else:
                from edgec.pipeline.design import layer_report

                entries = [(layer_report(cost, device.clock_ns), cost) for cost in design.layers]
            for layer_entry, cost in entries:
                if not single_fpga:
                    layer_entry["name"] = f"{seg.name}/{layer_entry['name']}"
                layer_entry.update({"placement": "fpga", "segment": seg.name})
                fields, row = _break_even_fields(
                    cost.layer if cost else None, cost.layer.sparsity if cost else None, target, device, "fpga"
                )
                layer_entry.update(fields)
                if row is not None:
                    row["layer"] = layer_entry["name"]
                    table.append(row)
                layers.append(layer_entry)
                if cost is not None and cost is design.bottleneck():
                    bottleneck_name = bottleneck_name or layer_entry["name"]
            for key, value in design.resources().items():
                fpga_resources[key] += value
            if project is not None:  # the top function's port types: what the driver packs into stream words
                from edgec.backends.bundle import read_hls_interface
                from edgec.errors import BundleError

                try:
                    interface = read_hls_interface(project.project_dir, project.project_name)
                    first_precision, last_precision = (
                        f"{interface.input.value_type.width} bits",
                        f"{interface.output.value_type.width} bits",
                    )
                except BundleError:
                    first_precision = project.layers[0].precision.get("result") if project.layers else None
                    last_precision = project.layers[-1].precision.get("result") if project.layers else None
            else:  # the cost model's view: the first layer's input and the last layer's result widths
                first_precision = f"{design.layers[0].layer.input_bits} bits" if design.layers else None
                last_precision = f"{design.layers[-1].layer.result_bits} bits" if design.layers else None
            n_in = int(np.prod(seg.model.get_tensor_shape(seg.model.graph.input[0].name)[1:]))
            n_out = int(np.prod(seg.model.get_tensor_shape(seg.model.graph.output[0].name)[1:]))
            to_fpga = transfer_cost(n_in, "to_fpga", device.clock_ns, target.power, _word_bits(first_precision))
            to_cpu = transfer_cost(n_out, "to_cpu", device.clock_ns, target.power, _word_bits(last_precision))
            # the FPGA design's own energy already counts its input/output PS-PL traffic ("io")
            stages.append(
                {
                    "kind": "transfer",
                    "name": f"{seg.name} input DMA",
                    "latency_us": to_fpga.latency_us,
                    "interval_us": to_fpga.latency_us,
                    "energy_uj": 0.0,
                }
            )
            stages.append(
                {
                    "kind": "fpga",
                    "name": seg.name,
                    "latency_us": design.latency_us,
                    "interval_us": max(design.ii, 1) * device.clock_ns / 1000.0,
                    "energy_uj": design.energy_uj,
                }
            )
            stages.append(
                {
                    "kind": "transfer",
                    "name": f"{seg.name} output DMA",
                    "latency_us": to_cpu.latency_us,
                    "interval_us": to_cpu.latency_us,
                    "energy_uj": 0.0,
                }
            )
            entry.update(
                {
                    "latency_us": round(design.latency_us, 6),
                    "ii": design.ii,
                    "energy_uj": round(design.energy_uj, 9),
                    "resources": design.resources(),
                    "project_dir": None,
                    "transfers": [
                        to_fpga.as_dict() | {"energy_counted_in": "fpga io"},
                        to_cpu.as_dict() | {"energy_counted_in": "fpga io"},
                    ],
                }
            )
        else:
            costs = cpu_node_costs(seg.model, target.cpu)
            by_name = {n.name: n for n in seg.model.graph.node}
            effective = {ref.node.name: ref.effective(seg.model) for ref in prunable_layers(seg.model)}
            latency = sum(c["latency_us"] for c in costs)
            energy = sum(c["energy_uj"] for c in costs)
            for c in costs:
                node = by_name.get(c["name"])
                shape_in = seg.model.get_tensor_shape(node.input[0]) if node is not None and node.input else None
                shape_out = seg.model.get_tensor_shape(node.output[0]) if node is not None else None
                config, ratio = _cpu_layer_config(seg.model, node, effective) if node is not None else (None, None)
                layer_entry = {
                    "name": c["name"],
                    "op": c["op"],
                    "inputs_shape": list(shape_in[1:]) if shape_in else [],
                    "outputs_shape": list(shape_out[1:]) if shape_out else [],
                    "macs": int(c.get("macs") or 0),
                    "params": int(config.n_in * config.n_out) if config else 0,
                    "precision": {"weight": "float32" if config else None, "bias": None, "result": "float32", "accum": None},
                    "strategy": None,
                    "reuse_factor": None,
                    "onnx_tensor": node.output[0] if node is not None else None,
                    "choice_reason": seg.reasons.get(c["name"]),
                    "cycles": int(round(c["cycles"])),
                    "ii": int(round(c["cycles"])),
                    "clock": "cpu",
                    "latency_ns": round(c["latency_us"] * 1000.0, 3),
                    "resources": dict(ZERO_RESOURCES),
                    "energy_nj": round(c["energy_uj"] * 1000.0, 6),
                    "energy_breakdown_nj": {"compute": round(c["energy_uj"] * 1000.0, 6), "memory": 0.0, "io": 0.0, "static": 0.0},
                    "sparsity": round(ratio, 4) if ratio is not None else None,
                    "placement": "cpu",
                    "segment": seg.name,
                }
                fields, row = _break_even_fields(
                    config, ratio, target, device, "cpu", measured.cpu_break_even.get(config.name) if config else None
                )
                layer_entry.update(fields)
                if row is not None:
                    table.append(row)
                layers.append(layer_entry)
            stages.append({"kind": "cpu", "name": seg.name, "latency_us": latency, "interval_us": latency, "energy_uj": energy})
            library = libraries.get(seg.index)
            entry.update(
                {
                    "latency_us": round(latency, 6),
                    "energy_uj": round(energy, 9),
                    "cpu": target.cpu.name,
                    "library": f"cpu/{library.board_library.name}" if library is not None and library.board_library else None,
                    "host_library": f"cpu/{library.host_library.name}" if library is not None else None,
                    "board_machine": library.board_elf_machine if library is not None else None,
                }
            )
            if seg.index in measured.host_latency_ms:
                entry["host_latency_ms"] = measured.host_latency_ms[seg.index]
        segments.append(entry)
    # Only seams between a CPU and an FPGA segment (or the model's ends) move data over the DMA;
    # with a single FPGA segment every transfer is the model's own input/output.
    available = dict(designs[0].available()) if designs else {}
    system = system_totals(stages, fpga_resources, available) if stages else {}
    for row in table:  # flagged when the model was pruned (zeros a quantizer made are not a pruning decision)
        if pruned and row["below_break_even"]:
            decisions.append(f"{row['layer']}: {row['reason']}")
    partition = {"segments": segments, "stages": stages, "system": system, "break_even": table, "break_even_metric": BREAK_EVEN_METRIC}
    if single_fpga:
        sections = cost_sections(designs[0])
        if bottleneck_name:
            sections["totals"]["bottleneck"] = bottleneck_name
        return PartitionedCost(layers, sections, partition, decisions, designs[0].latency_us, designs[0].energy_uj)
    sections = {
        "totals": _merged_totals(designs, system, stages),
        "cost_model": designs[0].cost_model() if designs else {"cpu": target.cpu.name},
        "warnings": [w for d in designs for w in d.warnings],
    }
    return PartitionedCost(layers, sections, partition, decisions, system.get("latency_us", 0.0), system.get("energy_uj", 0.0))


def _merged_totals(designs: list[DesignCost], system: dict, stages: list[dict]) -> dict:
    """The ``totals`` of a partitioned design: the system's latency, throughput and energy; the
    FPGA segments' cycles, II and resources (summed: separate IPs on one fabric)."""
    parts = {"compute": 0.0, "memory": 0.0, "io": 0.0, "static": 0.0} if designs else {}  # the FPGA's parts, when there is one
    for design in designs:
        for key, value in design.energy_breakdown_uj().items():
            parts[key] += value
    parts["cpu"] = sum(s["energy_uj"] for s in stages if s["kind"] == "cpu")
    return {
        "cycles": sum(d.cycles for d in designs),
        "latency_us": system.get("latency_us", 0.0),
        "ii": max((d.ii for d in designs), default=0),
        "throughput_fps": system.get("throughput_fps") or 0.0,
        "resources": system.get("resources", dict(ZERO_RESOURCES)),
        "available": system.get("available", {}),
        "utilization": system.get("utilization", {k: 0.0 for k in ZERO_RESOURCES}),
        "energy_uj": system.get("energy_uj", 0.0),
        "energy_breakdown_uj": {k: round(v, 9) for k, v in parts.items()},
        "edp": system.get("edp", 0.0),
        "units": system.get("units", {}),
        "bottleneck": system.get("slowest_stage"),
        "latency_by_placement_us": system.get("latency_by_placement_us", {}),
    }
