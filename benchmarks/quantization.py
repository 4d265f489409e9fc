"""Quantization benchmark: accuracy and estimated cost of uniform and mixed-precision fixed point.
Prints JSON (or a table with --table) and saves it to benchmarks/results/quantization-2026-11-21.json.

- CNN: the bundled examples/models/digits_cnn.onnx. The passes see the training split of
  scikit-learn's digits (what examples/train_digits_cnn.py trained on; the mixed search measures on
  its first 1,000 images); held-out accuracy is on the 300 images of examples/data/digits_test.npz.
- MLP: examples/models/mnist_mlp.onnx (examples/train_mnist_mlp.py, 784-128-64-10, trained on MNIST
  t10k 0-7999): the passes see 8000-8999, held-out accuracy is on 9000-9999 (needs the shared MNIST
  copy beside the repository; skipped without it).

Rows: the float model estimated as hls4ml's usual ``fixed<16,6>`` everywhere
(``DesignOptions(precision="fixed<16,6>")``; its accuracy is the float model's), uniform PTQ
``fixed:bits=8/6/4`` (per-layer power-of-two scales), and ``mixed`` at max_drop 0.5 and 1.0 for
each objective (luts and energy unless --objectives says otherwise). Costs are edgec.pipeline.estimate figures
(not synthesis), calibrated on the pass data as a build would be, on pynq-z2, or zcu104 for a model
whose float or uniform designs do not all fit pynq-z2 (the searches then cost on zcu104 too; the
JSON says which).

The criterion checked (issue 5): on its objective, a mixed row must cost no more than every uniform
row whose accuracy on the pass data (the data the max_drop constraint is measured on) is equal or
higher, and no uniform row may dominate it (equal or better accuracy at equal or lower cost, one of
them strictly). Each mixed row gets a verdict against each uniform row and an overall PASS/FAIL;
held-out accuracy is printed beside it (300 or 1,000 images: one image is 0.33 or 0.1 points).
The JSON also says whether the search's own uniform points are the benchmark's ``fixed:bits=N``
rows (same accuracy and cost) and whether the cost the search reported for its result is the one
estimated here.

Usage: python benchmarks/quantization.py [--table] [--quick] [--search-seconds S] [--objectives luts,energy]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from pruning import digits_split, mnist_images  # noqa: E402

from edgec.frontend.load import load_model  # noqa: E402
from edgec.passes.prune.common import model_outputs  # noqa: E402
from edgec.passes.quant.registry import run_quantization  # noqa: E402
from edgec.pipeline.design import DesignOptions  # noqa: E402
from edgec.pipeline.estimate import estimate  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "quantization-2026-11-21.json"
UNIFORM = (8, 6, 4)
DROPS = (0.5, 1.0)
COST_KEY = {"luts": "lut", "dsp": "dsp", "latency": "latency_us", "energy": "energy_uj"}
TARGETS = ("pynq-z2", "zcu104")
PASSING = ("dominates", "equal", "cheaper, less accurate", "costlier, more accurate (uniform over max_drop)")
CRITERION = (
    "on its objective, the mixed row costs no more than every uniform row at equal or higher pass-data accuracy, "
    "and no uniform row is at least as accurate and at most as costly with one of them strictly better"
)


def cases() -> list[dict]:
    """The models with the data their passes see and the held-out data accuracy is reported on."""
    x_train, y_train, _, _ = digits_split()
    held = np.load(REPO / "examples" / "data" / "digits_test.npz")
    found = [
        {
            "name": "digits_cnn",
            "model": REPO / "examples" / "models" / "digits_cnn.onnx",
            "pass_data": (x_train, y_train),
            "test_data": (held["x"], held["y"]),
            "pass_split": "sklearn digits training split (1,497 images; accuracy measured on the first 1,000)",
            "test_split": "examples/data/digits_test.npz (300 held-out images)",
        }
    ]
    mnist = mnist_images()
    if mnist is not None:
        x, y = mnist
        found.append(
            {
                "name": "mnist_mlp",
                "model": REPO / "examples" / "models" / "mnist_mlp.onnx",
                "pass_data": (x[8000:9000], y[8000:9000]),
                "test_data": (x[9000:10000], y[9000:10000]),
                "pass_split": "MNIST t10k 8000-8999",
                "test_split": "MNIST t10k 9000-9999",
            }
        )
    return found


def accuracy(model, data: tuple[np.ndarray, np.ndarray]) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    x, y = data
    return float(np.mean(model_outputs(model, x).argmax(-1) == y))


def costs(proto, x: np.ndarray, target: str, options: DesignOptions | None = None) -> dict:
    """The estimate's totals, calibrated on ``x`` as a build on that data would be."""
    report = estimate(proto, target=target, data=(x, None), options=options)
    totals = report["totals"]
    res = totals["resources"]
    return {
        "lut": int(res["lut"]),
        "dsp": int(res["dsp"]),
        "ff": int(res["ff"]),
        "bram18": int(res["bram18"]),
        "latency_us": round(float(totals["latency_us"]), 6),
        "energy_uj": round(float(totals["energy_uj"]), 9),
        "fits": all(v <= 1.0 for v in totals["utilization"].values()),
    }


def verdict(mixed: dict, uniform: dict, objective: str, max_drop: float, float_pass: float) -> str:
    """How a mixed row compares with a uniform row on its objective and pass-data accuracy."""
    key = COST_KEY[objective]
    a_m, a_u = round(mixed["accuracy_pass"], 6), round(uniform["accuracy_pass"], 6)
    c_m, c_u = mixed["cost"][key], uniform["cost"][key]
    if a_m == a_u and c_m == c_u:
        return "equal"
    if a_m >= a_u and c_m <= c_u:
        return "dominates"
    if a_u >= a_m and c_u <= c_m:
        return "DOMINATED"
    if c_m < c_u:
        return "cheaper, less accurate"
    if (float_pass - a_u) * 100 > max_drop + 1e-9:
        return "costlier, more accurate (uniform over max_drop)"
    return "FAIL: costlier than a uniform within max_drop"


def run_case(case: dict, search_seconds: float, objectives: list[str], quick: bool) -> dict:
    """Every row of one model: float, uniform PTQ, mixed searches; costs, verdicts."""
    loaded = load_model(case["model"]).model
    x_pass, y_pass = case["pass_data"]
    float_test = accuracy(loaded, case["test_data"])
    float_pass = accuracy(loaded, (x_pass[:1000], y_pass[:1000]))
    rows = [
        {
            "method": "float, estimated as fixed<16,6>",
            "spec": None,
            "model": loaded,
            "accuracy_pass": float_pass,
            "accuracy_test": float_test,
            "options": DesignOptions(precision="fixed<16,6>"),
        }
    ]
    for bits in UNIFORM:
        spec = f"fixed:bits={bits}"
        model, records = run_quantization(load_model(case["model"]).model, [spec], x_pass, y_pass)
        rows.append(
            {
                "method": f"uniform {bits}-bit PTQ",
                "spec": spec,
                "bits": bits,
                "model": model,
                "accuracy_pass": records[0]["accuracy_after"],
                "accuracy_test": accuracy(model, case["test_data"]),
                "options": None,
            }
        )
    target = TARGETS[0]
    for row in rows:
        row["cost"] = costs(row["model"].model, x_pass, target, row["options"])
    if not all(row["cost"]["fits"] for row in rows):
        target = TARGETS[1]
        for row in rows:
            row["cost"] = costs(row["model"].model, x_pass, target, row["options"])
    uniform = [r for r in rows if "bits" in r]
    for drop in DROPS:
        for objective in objectives:
            if quick and (objective != objectives[0] or drop != DROPS[-1]):
                continue
            spec = f"mixed:max_drop={drop},objective={objective},target={target},seed=0,search_seconds={search_seconds}"
            started = time.perf_counter()
            model, records = run_quantization(load_model(case["model"]).model, [spec], x_pass, y_pass)
            search = records[0]["search"]
            row = {
                "method": f"mixed max_drop={drop} {objective}",
                "spec": spec,
                "model": model,
                "options": None,
                "accuracy_pass": records[0]["accuracy_after"],
                "accuracy_test": accuracy(model, case["test_data"]),
                "objective": objective,
                "max_drop": drop,
                "widths": search["chosen"]["widths"],
                "evaluations": search["evaluations"],
                "costed": search["costed"],
                "stopped": search["stopped"],
                "search_seconds": round(time.perf_counter() - started, 1),
                "frontier_points": len(search["frontier"]),
                "chosen_phase": search["chosen"]["phase"],
            }
            row["cost"] = costs(model.model, x_pass, target)
            reported = search["chosen"]
            row["reported_cost_matches"] = all(
                reported[k] == row["cost"][k] for k in ("lut", "dsp", "ff", "bram18", "latency_us", "energy_uj")
            )
            by_bits = {next(iter(set(p["widths"].values()))): p for p in search["uniform"]}
            row["search_uniform_matches"] = {
                str(u["bits"]): (
                    u["bits"] in by_bits
                    and by_bits[u["bits"]]["accuracy"] == round(u["accuracy_pass"], 6)
                    and by_bits[u["bits"]][COST_KEY[objective]] == u["cost"][COST_KEY[objective]]
                )
                for u in uniform
            }
            row["verdicts"] = {u["method"]: verdict(row, u, objective, drop, float_pass) for u in uniform}
            row["passes"] = all(v in PASSING for v in row["verdicts"].values())
            rows.append(row)
    out_rows = []
    for row in rows:
        entry = {k: v for k, v in row.items() if k not in ("model", "options")}
        entry["accuracy_pass"] = round(float(entry["accuracy_pass"]), 4)
        entry["accuracy_test"] = round(float(entry["accuracy_test"]), 4)
        out_rows.append(entry)
    return {
        "model": case["name"],
        "target": target,
        "pass_data": case["pass_split"],
        "test_data": case["test_split"],
        "float_accuracy_pass": round(float_pass, 4),
        "float_accuracy_test": round(float_test, 4),
        "rows": out_rows,
        "passes": all(r["passes"] for r in out_rows if "passes" in r),
    }


def table(payload: dict) -> str:
    """The results as a plain-text table."""
    lines = [f"criterion: {payload['criterion']}"]
    for result in payload["results"]:
        lines.append(f"\n{result['model']} on {result['target']} (passes see {result['pass_data']}; held out: {result['test_data']})")
        lines.append(
            f"{'method':32} {'widths':12} {'acc pass':>8} {'acc test':>8} {'LUT':>7} {'DSP':>5} {'lat us':>8} {'E uJ':>8}  verdict"
        )
        for row in result["rows"]:
            c = row["cost"]
            widths, extra = "-", ""
            if "bits" in row:
                widths = str(row["bits"])
            if "widths" in row:
                widths = "/".join(str(b) for b in row["widths"].values())
                short = {k.split()[1]: v for k, v in row["verdicts"].items()}
                extra = ("PASS" if row["passes"] else "FAIL") + ": " + "; ".join(f"vs {k}: {v}" for k, v in short.items())
                extra += f" ({row['evaluations']} evals, {row['search_seconds']:g} s, {row['stopped']})"
            lines.append(
                f"{row['method']:32} {widths:12} {row['accuracy_pass']:8.4f} {row['accuracy_test']:8.4f} {c['lut']:7d} {c['dsp']:5d} "
                f"{c['latency_us']:8.3f} {c['energy_uj']:8.4f}  {extra}"
            )
    lines.append(f"\noverall: {'PASS' if payload['passes'] else 'FAIL'}")
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark, save the JSON (unless --quick) and print it or its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print a table instead of JSON")
    parser.add_argument("--quick", action="store_true", help="only the first objective at max_drop=1.0 (results not saved)")
    parser.add_argument(
        "--search-seconds",
        type=float,
        default=1800.0,
        help="time budget of each mixed search (a cap: the searches normally converge first)",
    )
    parser.add_argument("--objectives", default="luts,energy", help="mixed-search objectives, comma-separated (luts, dsp, latency, energy)")
    args = parser.parse_args()
    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    unknown = [o for o in objectives if o not in COST_KEY]
    if unknown or not objectives:
        parser.error(f"--objectives: unknown {', '.join(unknown) or '(none given)'}; use {', '.join(COST_KEY)}")
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    results = [run_case(case, args.search_seconds, objectives, args.quick) for case in cases()]
    payload = {
        "benchmark": "quantization",
        "seconds": round(time.perf_counter() - started, 1),
        "criterion": CRITERION,
        "notes": [
            "costs are edgec.pipeline.estimate figures (cost model, not synthesis), calibrated on the pass data like a build",
            "mixed: granularity=layer, the default candidate widths, seed=0; widths are per layer (weights and the "
            "activations it reads) and for the output quantizer (the last entry)",
            "accuracy_pass: on the data the passes saw (first 1,000 samples; what max_drop is measured on); accuracy_test: held out",
            "search_uniform_matches: the search's own uniform point of each width has the fixed:bits=N row's accuracy "
            "and cost; reported_cost_matches: the cost in the search record is the one estimated here",
        ],
        "passes": all(r["passes"] for r in results),
        "results": results,
    }
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(payload, indent=1) + "\n")
    print(table(payload) if args.table else json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
