"""report.json (schema version 1) and the terminal summary."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_VERSION = 1


def write_report(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


def _fmt_shape(shape: list[int]) -> str:
    return "x".join(str(d) for d in shape)


def render_summary(report: dict) -> str:
    """A readable summary: target, one row per layer, verification and timings."""
    lines = []
    tgt = report["target"]
    lines.append(f"edgec {report['edgec_version']}  model {Path(report['model']['path'] or '<ModelProto>').name}  "
                 f"-> {tgt['name']} ({tgt['part']} @ {tgt['clock_mhz']:g} MHz)")
    header = f"{'layer':<22} {'op':<12} {'in':>10} {'out':>10} {'MACs':>9} {'params':>8} {'weight':<22} {'result':<24} {'strategy':<9} {'RF':>5}"
    lines.append(header)
    lines.append("-" * len(header))
    for layer in report["layers"]:
        prec = layer["precision"]
        lines.append(
            f"{layer['name'][:22]:<22} {layer['op'][:12]:<12} {_fmt_shape(layer['inputs_shape']):>10} "
            f"{_fmt_shape(layer['outputs_shape']):>10} {layer['macs']:>9} {layer['params']:>8} "
            f"{(prec.get('weight') or '-')[:22]:<22} {(prec.get('result') or '-')[:24]:<24} "
            f"{(layer['strategy'] or '-'):<9} {layer['reuse_factor'] if layer['reuse_factor'] else '-':>5}"
        )
    ver = report["verification"]
    acc = ""
    if ver.get("accuracy_reference") is not None:
        acc = f", accuracy reference {ver['accuracy_reference']:.4f} / C-sim {ver['accuracy_simulated']:.4f}"
    lines.append("")
    lines.append(
        f"verification vs {ver['reference']} on {ver['n_samples']} samples ({ver.get('data', '')}): "
        f"argmax agreement {ver['argmax_agreement'] * 100:.2f}%, max abs error {ver['max_abs_error']:.3g}{acc}"
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
