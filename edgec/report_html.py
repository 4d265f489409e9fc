"""report.html: a self-contained page (inline CSS, figures as base64 PNG) rendered from report.json.

Every cost field (``layers[i].cycles``/``resources``/``energy_*``, ``totals``, ``cost_model``) is
optional: a report without them (or with ``verification`` null, as from ``edgec estimate``) still
renders, and the page says "no cost estimate" where a number would have been.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from edgec.templating import render

RESOURCES = ("lut", "ff", "dsp", "bram18")
RESOURCE_LABELS = {"lut": "LUT", "ff": "FF", "dsp": "DSP", "bram18": "BRAM18"}
ENERGY_PARTS = ("compute", "memory", "io", "static")
ENERGY_COLOURS = {"compute": "#4C72B0", "memory": "#DD8452", "io": "#55A868", "static": "#8C8C8C"}
NO_COST = "no cost estimate"
_BAR = "#4C72B0"
_HOT = "#C44E52"


def _num(value: float | int | None, digits: int = 4) -> str | None:
    """A readable number: thousands separators for large values, ``digits`` significant digits otherwise."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if 0 < magnitude < 1e-3:
        return f"{value:.3e}"
    return f"{value:.{digits}g}"


def _pct(fraction: float | None, digits: int = 1) -> str | None:
    return None if fraction is None else f"{fraction * 100:.{digits}f}%"


def _shape(shape: list[int] | None) -> str:
    return "x".join(str(d) for d in shape) if shape else "-"


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "\u2026"


def _has_cost(layer: dict) -> bool:
    return any(layer.get(k) is not None for k in ("cycles", "ii", "resources", "energy_nj"))


def _png(fig) -> str:
    """Encode a matplotlib Figure as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    fig.clear()
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _new_figure(width: float, height: float, **subplots):
    """A Figure drawn by the Agg backend, attached explicitly.

    No pyplot: nothing global to close or leak, and a caller's own pyplot backend (e.g. in a notebook)
    is left alone, which ``matplotlib.use("Agg")`` would switch.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(**subplots) if subplots else fig.subplots()
    return fig, axes


def _style_axes(ax) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)


def _layer_height(n: int) -> float:
    return max(2.2, 0.32 * n + 1.0)


def _fig_cycles(layers: list[dict], bottleneck: str | None) -> str | None:
    rows = [(layer["name"], layer["cycles"], layer.get("ii")) for layer in layers if layer.get("cycles") is not None]
    if not rows:
        return None
    fig, ax = _new_figure(9.5, _layer_height(len(rows)))
    names = [_short(r[0]) for r in rows][::-1]
    cycles = [r[1] for r in rows][::-1]
    colours = [_HOT if r[0] == bottleneck else _BAR for r in rows][::-1]
    ax.barh(names, cycles, color=colours, height=0.65, label="latency (cycles)")
    iis = [(i, r[2]) for i, r in enumerate(rows[::-1]) if r[2] is not None]
    if iis:
        ax.scatter([v for _, v in iis], [i for i, _ in iis], marker="|", s=180, color="black", zorder=3, label="II (cycles)")
    top = max(cycles) if cycles else 1
    for i, value in enumerate(cycles):
        ax.text(value + top * 0.01, i, f"{value:,}", va="center", fontsize=7)
    ax.set_xlim(0, top * 1.15 if top else 1)
    ax.set_xlabel("clock cycles", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    if bottleneck:
        from matplotlib.patches import Patch

        handles.append(Patch(color=_HOT))
        labels.append(f"bottleneck: {_short(bottleneck, 24)}")
    ax.legend(handles, labels, fontsize=7, loc="best", frameon=False)
    _style_axes(ax)
    return _png(fig)


def _utilization_rows(totals: dict) -> list[dict]:
    """Per resource: used, available, fraction (from ``utilization`` or used/available), as display strings."""
    used = totals.get("resources") or {}
    available = totals.get("available") or {}
    util = totals.get("utilization") or {}
    rows = []
    for key in RESOURCES:
        fraction = util.get(key)
        if fraction is None and used.get(key) is not None and available.get(key):
            fraction = used[key] / available[key]
        if fraction is None and used.get(key) is None:
            continue
        rows.append(
            {
                "key": key,
                "label": RESOURCE_LABELS[key],
                "used": _num(used.get(key)) or "-",
                "available": _num(available.get(key)) or "-",
                "fraction": fraction,
                "pct": _pct(fraction) or "-",
                "bar": f"{min(fraction or 0.0, 1.0) * 100:.1f}",
                "over": bool(fraction is not None and fraction > 1.0),
            }
        )
    return rows


def _fig_resources(rows: list[dict]) -> str | None:
    rows = [r for r in rows if r["fraction"] is not None]
    if not rows:
        return None
    fig, ax = _new_figure(9.5, 0.55 * len(rows) + 1.2)
    labels = [r["label"] for r in rows][::-1]
    pcts = [r["fraction"] * 100 for r in rows][::-1]
    colours = [_HOT if r["over"] else _BAR for r in rows][::-1]
    ax.barh(labels, pcts, color=colours, height=0.6)
    ax.axvline(100, color=_HOT, linestyle="--", linewidth=1.2)
    right = max(110.0, max(pcts) * 1.3)
    ax.text(100, len(rows) - 0.45, " 100% of board", color=_HOT, fontsize=7, va="bottom")
    for i, r in enumerate(rows[::-1]):
        ax.text(pcts[i] + right * 0.01, i, f"{r['pct']}  ({r['used']} / {r['available']})", va="center", fontsize=7)
    ax.set_xlim(0, right)
    ax.set_ylim(-0.6, len(rows) - 0.1)
    ax.set_xlabel("utilization of the board (%)", fontsize=9)
    _style_axes(ax)
    return _png(fig)


def _fig_energy(layers: list[dict], totals: dict) -> str | None:
    per_layer = [layer for layer in layers if layer.get("energy_nj") is not None or layer.get("energy_breakdown_nj")]
    total_parts = totals.get("energy_breakdown_uj") or {}
    if not per_layer and not total_parts:
        return None
    ncols = int(bool(per_layer)) + int(bool(total_parts))
    height = _layer_height(len(per_layer)) if per_layer else 2.6
    if ncols == 2:
        fig, axes = _new_figure(9.5, height, ncols=2, gridspec_kw={"width_ratios": [3, 1.1], "wspace": 0.45})
    else:
        fig, ax = _new_figure(9.5, height)
        axes = [ax]
    col = 0
    if per_layer:
        ax = axes[col]
        col += 1
        names = [_short(layer["name"]) for layer in per_layer][::-1]
        left = [0.0] * len(per_layer)
        if any(layer.get("energy_breakdown_nj") for layer in per_layer):
            for part in ENERGY_PARTS:
                values = [float((layer.get("energy_breakdown_nj") or {}).get(part) or 0.0) for layer in per_layer][::-1]
                ax.barh(names, values, left=left, color=ENERGY_COLOURS[part], height=0.65, label=part)
                left = [a + b for a, b in zip(left, values)]
            ax.legend(fontsize=7, loc="best", frameon=False)
        else:
            ax.barh(names, [float(layer["energy_nj"]) for layer in per_layer][::-1], color=_BAR, height=0.65)
        ax.set_xlabel("energy per inference (nJ)", fontsize=9)
        ax.set_title("per layer", fontsize=9)
        _style_axes(ax)
    if total_parts:
        ax = axes[col]
        bottom = 0.0
        for part in ENERGY_PARTS:
            value = float(total_parts.get(part) or 0.0)
            ax.bar(["total"], [value], bottom=bottom, color=ENERGY_COLOURS[part], width=0.5, label=f"{part} {_num(value, 3)}")
            bottom += value
        ax.set_ylabel("energy per inference (\u00b5J)", fontsize=9)
        ax.set_title("whole design", fontsize=9)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
        ax.spines["top"].set_visible(False)
        ax.spines["right"].set_visible(False)
        ax.tick_params(labelsize=8)
    return _png(fig)


def _fig_work(layers: list[dict]) -> str | None:
    rows = [layer for layer in layers if layer.get("macs") or layer.get("params")]
    if not rows:
        return None
    fig, axes = _new_figure(9.5, _layer_height(len(rows)), ncols=2, sharey=True, gridspec_kw={"wspace": 0.08})
    names = [_short(layer["name"]) for layer in rows][::-1]
    for ax, key, label, colour in ((axes[0], "macs", "multiply-accumulates", _BAR), (axes[1], "params", "parameters", "#55A868")):
        values = [int(layer.get(key) or 0) for layer in rows][::-1]
        ax.barh(names, values, color=colour, height=0.65)
        top = max(values) or 1
        for i, value in enumerate(values):
            ax.text(value + top * 0.01, i, f"{value:,}", va="center", fontsize=7)
        ax.set_xlim(0, top * 1.2)
        ax.set_xlabel(label, fontsize=9)
        _style_axes(ax)
    return _png(fig)


def _layer_rows(layers: list[dict], bottleneck: str | None) -> list[dict]:
    rows = []
    for layer in layers:
        prec = layer.get("precision") or {}
        res = layer.get("resources") or {}
        rf = layer.get("reuse_factor")
        rows.append(
            {
                "name": layer["name"],
                "op": layer.get("op") or "-",
                "in_shape": _shape(layer.get("inputs_shape")),
                "out_shape": _shape(layer.get("outputs_shape")),
                "macs": _num(layer.get("macs")) or "-",
                "params": _num(layer.get("params")) or "-",
                "precision": [{"kind": k[0], "type": prec[k]} for k in ("weight", "result") if prec.get(k)],
                "precision_title": ", ".join(f"{k}: {v}" for k, v in prec.items() if v),
                "strategy": layer.get("strategy") or "-",
                "rf": str(rf) if rf else "-",
                "reason": layer.get("choice_reason") or "",
                "cycles": _num(layer.get("cycles")) or "-",
                "ii": _num(layer.get("ii")) or "-",
                "resources": [_num(res.get(k)) or "-" for k in RESOURCES],
                "energy": _num(layer.get("energy_nj"), 3) or "-",
                "bottleneck": bool(bottleneck) and layer["name"] == bottleneck,
            }
        )
    return rows


def _headline(totals: dict) -> list[dict]:
    """The summary cards; a missing total shows "no cost estimate" instead of a number."""
    units = totals.get("units") or {}
    cycles = totals.get("cycles")
    latency = _num(totals.get("latency_us"))
    energy = _num(totals.get("energy_uj"))
    edp = _num(totals.get("edp"))
    ii = totals.get("ii")
    cards = [
        {
            "id": "latency",
            "label": "Latency",
            "value": f"{latency} \u00b5s" if latency else None,
            "note": f"{cycles:,} cycles" if cycles is not None else "",
        },
        {"id": "ii", "label": "Initiation interval", "value": f"{ii:,} cycles" if ii is not None else None, "note": "between inputs"},
        {
            "id": "throughput",
            "label": "Throughput",
            "value": f"{_num(totals['throughput_fps'])} fps" if totals.get("throughput_fps") is not None else None,
            "note": "inferences per second",
        },
        {"id": "energy", "label": "Energy", "value": f"{energy} \u00b5J" if energy else None, "note": "per inference"},
        {
            "id": "edp",
            "label": "Energy-delay product",
            "value": f"{edp} {units.get('edp', 'uJ*us')}" if edp else None,
            "note": "lower is better",
        },
        {
            "id": "bottleneck",
            "label": "Bottleneck layer",
            "value": (totals["bottleneck"] or "none") if "bottleneck" in totals else None,
            "note": "slowest stage" if totals.get("bottleneck") else "",
        },
    ]
    for card in cards:
        if card["value"] is None:
            card["value"] = NO_COST
            card["missing"] = True
            card["note"] = ""
        else:
            card["missing"] = False
    return cards


def _verification(ver: dict | None) -> dict | None:
    if not ver:
        return None
    agreement = ver.get("argmax_agreement")
    decisive = ver.get("decisive_agreement", agreement)
    threshold = ver.get("min_agreement")
    passed = None if decisive is None or threshold is None else decisive >= threshold
    div = ver.get("first_divergence")
    rows = [
        ("Reference", ver.get("reference") or "-"),
        ("Data", ver.get("data") or "-"),
        ("Samples", _num(ver.get("n_samples")) or "-"),
        ("Argmax agreement", _pct(agreement, 2) or "-"),
        (
            "Decisive agreement",
            (_pct(decisive, 2) or "-") + (f" (excluding {ver['near_ties']} near-tie(s))" if ver.get("near_ties") else ""),
        ),
        ("Required agreement", _pct(threshold, 2) or "-"),
        ("Max abs error", f"{ver['max_abs_error']:.3g}" if ver.get("max_abs_error") is not None else "-"),
    ]
    if ver.get("accuracy_reference") is not None:
        simulated = ver.get("accuracy_simulated")
        rows.append(
            ("Accuracy: reference / C-sim", f"{ver['accuracy_reference']:.4f} / " + (f"{simulated:.4f}" if simulated is not None else "-"))
        )
    else:
        rows.append(("Accuracy", "no labels given"))
    rows.append(("First diverging layer", f"{div['layer']} (max abs error {div['max_abs_error']:.3g})" if div else "none"))
    return {"passed": passed, "rows": [{"label": k, "value": v} for k, v in rows]}


def render_html(report: dict) -> str:
    """The report as one self-contained HTML page (inline CSS, figures as base64 PNG data URIs)."""
    layers = report.get("layers") or []
    totals = report.get("totals") or {}
    bottleneck = totals.get("bottleneck")
    model = report.get("model") or {}
    target = report.get("target") or {}
    model_path = model.get("path")
    model_name = Path(model_path).name if model_path else "<ModelProto>"
    util_rows = _utilization_rows(totals) if totals else []
    cost_model = report.get("cost_model")

    figures = [
        {
            "id": "fig-cycles",
            "title": "Latency per layer",
            "img": _fig_cycles(layers, bottleneck),
            "caption": "Estimated latency of each layer in clock cycles (black tick: initiation interval); the bottleneck layer is highlighted.",
        },
        {
            "id": "fig-resources",
            "title": "Resources against the board",
            "img": _fig_resources(util_rows),
            "caption": f"Estimated use of each FPGA resource as a share of {target.get('name', 'the target')} ({target.get('part', '')}); the dashed line is 100%.",
        },
        {
            "id": "fig-energy",
            "title": "Energy per inference",
            "img": _fig_energy(layers, totals),
            "caption": "Estimated energy split into compute, memory, I/O and static (leakage over the latency) parts.",
        },
        {
            "id": "fig-work",
            "title": "Work per layer",
            "img": _fig_work(layers),
            "caption": "Multiply-accumulates per inference and parameters of each layer (from the model, not estimated).",
        },
    ]
    partition = report.get("partition") or {}
    context = {
        "segments": [
            {
                "name": seg["name"],
                "placement": seg["placement"],
                "nodes": ", ".join(seg["nodes"]),
                "reasons": "; ".join(f"{k}: {v}" for k, v in (seg.get("reasons") or {}).items()),
                "latency": _num(seg.get("latency_us")) or "-",
                "energy": _num(seg.get("energy_uj"), 3) or "-",
                "library": seg.get("library") or seg.get("host_library") or "-",
            }
            for seg in partition.get("segments") or []
        ],
        "cpu_name": (target.get("cpu") or {}).get("name", "the board's CPU"),
        "break_even_metric": partition.get("break_even_metric", "energy"),
        "break_even": [
            {
                "layer": row["layer"],
                "placement": row["placement"],
                "ratio": _pct(row.get("pruning_ratio")) or "-",
                **{
                    m: ("never" if row["break_even"].get(m) is None else _pct(row["break_even"][m]))
                    for m in ("energy", "cycles", "resources")
                },
                "form": row.get("implementation") or "-",
                "reason": row.get("reason") or "",
                "flagged": bool(row.get("below_break_even")),
                "measured": _pct((row.get("measured_host_break_even") or {}).get("ratio")) or "-",
                "measured_title": (row.get("measured_host_break_even") or {}).get("kernels", ""),
            }
            for row in partition.get("break_even") or []
        ],
        "title": f"edgec report: {model_name} on {target.get('name', '?')}",
        "model_name": model_name,
        "model_path": model_path or "<ModelProto>",
        "model_sha": model.get("sha256") or "",
        "edgec_version": report.get("edgec_version") or "",
        "schema_version": str(report.get("schema_version", "")),
        "target_name": target.get("name") or "-",
        "target_part": target.get("part") or "-",
        "target_clock": f"{target['clock_mhz']:g} MHz" if target.get("clock_mhz") else "-",
        "io_type": report.get("io_type") or "-",
        "has_totals": bool(totals),
        "cards": _headline(totals) if totals else [],
        "utilization": util_rows,
        "layers": _layer_rows(layers, bottleneck),
        "layer_cost": any(_has_cost(layer) for layer in layers),
        "resource_labels": [RESOURCE_LABELS[k] for k in RESOURCES],
        "figures": figures,
        "no_cost": NO_COST,
        "verification": _verification(report.get("verification")),
        "warnings": [str(w) for w in report.get("warnings") or []],
        "decisions": [str(d) for d in report.get("decisions") or []],
        "cost_model": None
        if not cost_model
        else {
            "version": str(cost_model.get("version") or "-"),
            "backend": str(cost_model.get("backend") or "-"),
            "part": str(cost_model.get("part") or "-"),
            "clock_ns": _num(cost_model.get("clock_ns")) or "-",
            "sources": [str(s) for s in cost_model.get("sources") or []],
        },
        "passes": [{"name": p.get("name", "?"), "seconds": f"{p.get('seconds', 0.0):.4f}"} for p in report.get("passes") or []],
        "timings": [{"name": k, "seconds": f"{v:.2f}"} for k, v in (report.get("timings") or {}).items()],
    }
    return render("report.html.j2", **context)


def write_html(report: dict, path: Path) -> None:
    """Render ``report`` and write it to ``path`` (UTF-8)."""
    Path(path).write_text(render_html(report), encoding="utf-8")
