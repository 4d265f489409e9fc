"""report.json (schema version 1) and the terminal summary."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_VERSION = 1


def write_report(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


def _fmt_shape(shape: list[int]) -> str:
    return "x".join(str(d) for d in shape)


def _fmt_count(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value:g}" if isinstance(value, float) else str(value)


def render_headline(report: dict) -> list[str]:
    """Latency, throughput, utilization, energy and the bottleneck layer, in a few lines."""
    totals = report.get("totals")
    if not totals:
        return []
    util = totals["utilization"]
    used = totals["resources"]
    tgt = report["target"]
    split = totals.get("latency_by_placement_us")
    if split is None:
        lines = [
            f"latency {totals['cycles']} cycles = {totals['latency_us']:.4g} us at {tgt['clock_mhz']:g} MHz, "
            f"II {totals['ii']} cycles -> {totals['throughput_fps']:.4g} inferences/s",
        ]
    else:  # a partitioned (or CPU-only) design: the chain's latency, by where it is spent
        lines = [
            f"latency {totals['latency_us']:.4g} us (FPGA {split.get('fpga', 0):.4g}, CPU {split.get('cpu', 0):.4g}, "
            f"PS-PL transfers {split.get('transfer', 0):.4g}) -> {totals['throughput_fps']:.4g} inferences/s pipelined",
        ]
    if tgt.get("part"):
        lines.append(
            "resources on "
            + tgt["part"]
            + ": "
            + ", ".join(f"{k.upper()} {used[k]} ({util[k] * 100:.1f}%)" for k in ("lut", "ff", "dsp", "bram18"))
        )
    lines += [
        f"energy {totals['energy_uj']:.4g} uJ per inference ("
        + ", ".join(f"{k} {v:.3g}" for k, v in totals["energy_breakdown_uj"].items())
        + f"), energy-delay product {totals['edp']:.4g} uJ*us",
    ]
    if totals.get("bottleneck"):
        layer = next(
            (entry for entry in report["layers"] if entry["name"] == totals["bottleneck"] and entry.get("cycles") is not None), None
        )
        if layer is None:
            lines.append(f"bottleneck: {totals['bottleneck']}")
        else:
            lines.append(f"bottleneck: {layer['name']} ({layer['op']}, II {layer['ii']}, {layer['cycles']} cycles)")
    for warning in report.get("warnings", []):
        lines.append(f"warning: {warning}")
    return lines


def render_summary(report: dict) -> str:
    """A readable summary: target, one row per layer, cost headline, verification and timings."""
    lines = []
    tgt = report["target"]
    where = [f"{tgt['part']} @ {tgt['clock_mhz']:g} MHz"] if tgt.get("part") else []
    if tgt.get("cpu") and any(layer.get("placement") == "cpu" for layer in report["layers"]):
        where.append(f"{tgt['cpu']['name']} @ {tgt['cpu']['clock_mhz']:g} MHz")
    lines.append(
        f"edgec {report['edgec_version']}  model {Path(report['model']['path'] or '<ModelProto>').name}  "
        f"-> {tgt['name']} ({' + '.join(where)})"
    )
    header = (
        f"{'layer':<22} {'at':<4} {'op':<12} {'in':>10} {'out':>10} {'MACs':>9} {'result':<20} {'strategy':<9} {'RF':>4} "
        f"{'cycles':>7} {'II':>5} {'LUT':>7} {'FF':>7} {'DSP':>5} {'BRAM':>5} {'nJ':>8}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for layer in report["layers"]:
        prec = layer["precision"]
        res = layer.get("resources") or {}
        cost = ""
        if layer.get("cycles") is not None:
            cost = (
                f" {layer['cycles']:>7} {layer['ii']:>5} {_fmt_count(res['lut']):>7} {_fmt_count(res['ff']):>7} "
                f"{res['dsp']:>5} {res['bram18']:>5} {layer['energy_nj']:>8.3g}"
            )
        lines.append(
            f"{layer['name'][:22]:<22} {(layer.get('placement') or 'fpga')[:4]:<4} {layer['op'][:12]:<12} {_fmt_shape(layer['inputs_shape']):>10} "
            f"{_fmt_shape(layer['outputs_shape']):>10} {layer['macs']:>9} "
            f"{(prec.get('result') or '-')[:20]:<20} "
            f"{(layer['strategy'] or '-'):<9} {layer['reuse_factor'] if layer['reuse_factor'] else '-':>4}{cost}"
        )
    headline = render_headline(report)
    if headline:
        lines.append("")
        lines.extend(headline)
    segments = (report.get("partition") or {}).get("segments") or []
    if len(segments) > 1 or any(seg["placement"] == "cpu" for seg in segments):
        lines.append(
            "segments: "
            + " -> ".join(f"{seg['name']} ({len(seg['nodes'])} node{'s' if len(seg['nodes']) != 1 else ''})" for seg in segments)
        )
    # zeros a pruning pass left below break-even; quantization rounding a few weights to zero is not pruning
    pruned = any("ops_before" in record for record in report.get("passes") or [])
    flagged = [row for row in (report.get("partition") or {}).get("break_even", []) if pruned and row.get("below_break_even")]
    for row in flagged:
        lines.append(f"break-even: {row['layer']}: {row['reason']}")
    ver = report.get("verification")
    if ver:
        acc = ""
        if ver.get("accuracy_reference") is not None:
            acc = f", accuracy reference {ver['accuracy_reference']:.4f} / simulated {ver['accuracy_simulated']:.4f}"
        lines.append("")
        if ver.get("task") == "regression":
            agreement = (
                f"{ver['decisive_agreement'] * 100:.2f}% of samples within {ver['tolerance']:.3g} "
                f"(2% of the output range, or 2 LSBs of the output type), relative error {ver['relative_error'] or 0:.3g}"
            )
        else:
            agreement = f"argmax agreement {ver['argmax_agreement'] * 100:.2f}%"
        lines.append(
            f"verification vs {ver['reference']} on {ver['n_samples']} samples ({ver.get('data', '')}): "
            f"{agreement}, max abs error {ver['max_abs_error']:.3g}{acc}"
        )
        if ver.get("near_ties"):
            lines.append(
                f"  {ver['near_ties']} sample(s) are near-ties (top classes closer than the output resolution); "
                f"agreement on the rest {ver['decisive_agreement'] * 100:.2f}%"
            )
        if ver.get("first_divergence"):
            div = ver["first_divergence"]
            lines.append(f"first diverging layer: {div['layer']} (max abs error {div['max_abs_error']:.3g})")
    for note in report.get("decisions", []):
        lines.append(f"  - {note}")
    timings = report["timings"]
    lines.append("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    return "\n".join(lines)
