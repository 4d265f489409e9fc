"""Cost-model validation: edgec's estimates against real HLS synthesis reports. Prints JSON.

Sets: the 24 reports in tests/data/costval (Vivado HLS 2020.1, used to calibrate the model) and
the public Vitis HLS 2020.1/2023.1/2024.1 baselines of the same hls4ml designs in
benchmarks/data/costval_heldout.json (used only to set the Vitis-specific FIFO, table-latency
and divider rules; see benchmarks/data/README.md). For each design: estimate vs truth per figure;
per set: median and worst absolute relative error and the share of designs within issue 3's aim
(latency/II within max(2 cycles, 15%), LUT/FF/DSP within 25%, BRAM within max(1, 25%)).
Also times the estimate (no Vivado, no compilation).

Usage: python benchmarks/costval_validation.py [--table]
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgec.pipeline.costval import FIGURES, load_cases, summarize, validate_case  # noqa: E402

SETS = {
    "costval (Vivado HLS 2020.1, calibration set)": REPO / "tests" / "data" / "costval" / "cases.json",
    "Vitis HLS baselines (same designs, other tool)": REPO / "benchmarks" / "data" / "costval_heldout.json",
}
MODELS = REPO / "tests" / "data" / "costval" / "models"


def main() -> None:
    warnings.filterwarnings("ignore")
    result = {"figures": list(FIGURES), "sets": {}}
    for name, path in SETS.items():
        rows, seconds = [], []
        for case in load_cases(path):
            start = time.perf_counter()
            rows.append(validate_case(case, MODELS))
            seconds.append(time.perf_counter() - start)
        result["sets"][name] = {
            "n_designs": len(rows),
            "summary": summarize(rows),
            "estimate_seconds_median": round(sorted(seconds)[len(seconds) // 2], 3),
            "designs": rows,
        }
    if "--table" in sys.argv:
        for name, data in result["sets"].items():
            print(f"\n{name}: {data['n_designs']} designs, median estimate time {data['estimate_seconds_median']} s")
            print(f"{'figure':<8} {'median |err|':>12} {'worst |err|':>12} {'within aim':>11}")
            for fig, s in data["summary"].items():
                print(
                    f"{fig:<8} {s['median_abs_rel_error'] * 100:>11.1f}% {s['worst_abs_rel_error'] * 100:>11.1f}% {s['within_aim'] * 100:>10.0f}%"
                )
        return
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
