"""Compare edgec's estimates with real HLS synthesis reports (tests/data/costval/cases.json format).

Each case describes a published hls4ml design (part, clock, io_type, strategy, reuse factor,
precision) with an equivalent ONNX model and the synthesis tool's figures under ``truth``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from edgec.pipeline.design import DesignOptions
from edgec.pipeline.estimate import estimate

FIGURES = ("latency", "ii", "lut", "ff", "dsp", "bram18")
# The accuracy edgec aims for (issue 3): latency within max(2 cycles, 15%); LUT/FF/DSP within 25%.
LATENCY_TOLERANCE_CYCLES = 2
LATENCY_TOLERANCE_REL = 0.15
RESOURCE_TOLERANCE_REL = 0.25


def case_options(case: dict) -> DesignOptions:
    """The overrides that reproduce a case's design."""
    model_cfg = case.get("hls_config", {}).get("Model", {})
    precision = model_cfg.get("Precision", {})
    precision = precision.get("default") if isinstance(precision, dict) else precision
    io_type = str(case.get("io_type") or "io_parallel").split()[0]
    backend = str(case.get("backend") or "Vivado").lower()
    return DesignOptions(
        part=case["part"],
        clock_ns=float(case.get("clock_period_ns") or 5.0),
        backend="vitis" if backend.startswith("vitis") else "vivado",
        io_type=io_type,
        strategy=str(model_cfg.get("Strategy", "Latency")).lower(),
        reuse_factor=int(model_cfg.get("ReuseFactor", 1)),
        precision=precision or "fixed<16,6>",
    )


def _truth(case: dict) -> dict:
    t = case["truth"]
    return {"latency": t["worst_latency"], "ii": t["interval_max"], "lut": t["lut"], "ff": t["ff"], "dsp": t["dsp"], "bram18": t["bram18k"]}


def within(figure: str, estimate_value: float, truth_value: float) -> bool:
    """Whether an estimate meets the accuracy aim for its figure."""
    error = abs(estimate_value - truth_value)
    if figure in ("latency", "ii"):
        return error <= max(LATENCY_TOLERANCE_CYCLES, LATENCY_TOLERANCE_REL * truth_value)
    if figure == "bram18":
        return error <= max(1, RESOURCE_TOLERANCE_REL * truth_value)
    return error <= RESOURCE_TOLERANCE_REL * truth_value


def relative_error(estimate_value: float, truth_value: float) -> float:
    return (estimate_value - truth_value) / truth_value if truth_value else (0.0 if estimate_value == 0 else float("inf"))


def validate_case(case: dict, models_dir: Path) -> dict:
    """Estimate one case's design and compare it with its report."""
    # place="fpga": every op as hls4ml implements it (the synthesized designs), even ones edgec's build would give the CPU
    report = estimate(models_dir / Path(case["onnx"]).name, target="pynq-z2", options=case_options(case), place="fpga")
    totals = report["totals"]
    est = {
        "latency": totals["cycles"],
        "ii": totals["ii"],
        **{k: totals["resources"][k] for k in ("lut", "ff", "dsp", "bram18")},
    }
    truth = _truth(case)
    return {
        "id": case["id"],
        "estimate": est,
        "truth": truth,
        "relative_error": {k: round(relative_error(est[k], truth[k]), 4) for k in FIGURES},
        "within": {k: within(k, est[k], truth[k]) for k in FIGURES},
    }


def summarize(rows: list[dict]) -> dict:
    """Median and worst relative error and the share of designs within the aim, per figure."""
    summary = {}
    for figure in FIGURES:
        errors = [abs(r["relative_error"][figure]) for r in rows if r["relative_error"][figure] != float("inf")]
        summary[figure] = {
            "median_abs_rel_error": round(statistics.median(errors), 4) if errors else None,
            "worst_abs_rel_error": round(max(errors), 4) if errors else None,
            "within_aim": round(sum(r["within"][figure] for r in rows) / len(rows), 4) if rows else None,
        }
    return summary


def load_cases(path: Path) -> list[dict]:
    """Cases of a cases.json-style file that edgec models: with an ONNX model, and not the
    VivadoAccelerator backend (its reports include an AXI-stream wrapper with float<->fixed
    conversion around the design, which edgec does not generate)."""
    cases = json.loads(Path(path).read_text())
    return [c for c in cases if c.get("onnx") and c.get("backend") != "VivadoAccelerator"]
