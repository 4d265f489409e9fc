"""Quantization benchmark: accuracy and estimated cost of uniform and mixed-precision fixed point.
Prints JSON (or a table with --table) and saves it to benchmarks/results/quantization-2026-11-21.json.

- CNN: the bundled examples/models/digits_cnn.onnx. The passes see the training split of
  scikit-learn's digits (what examples/train_digits_cnn.py trained on; the mixed search measures on
  its first 1,000 images); accuracy is reported on the 300 held-out images of
  examples/data/digits_test.npz.
- MLP: examples/models/mnist_mlp.onnx (examples/train_mnist_mlp.py, 784-128-64-10, trained on MNIST
  t10k 0-7999): the passes see 8000-8999, accuracy is reported on 9000-9999 (needs the shared MNIST
  copy beside the repository; skipped without it).

Rows: the float model estimated as hls4ml's usual ``fixed<16,6>`` everywhere
(``DesignOptions(precision="fixed<16,6>")``; its accuracy is the float model's), uniform PTQ
``fixed:bits=8/6/4`` (per-layer power-of-two scales), and ``mixed`` at max_drop 0.5 and 1.0 with
objective luts and energy. Costs are edgec.estimate figures (not synthesis) on pynq-z2, or zcu104
for a model whose designs do not all fit pynq-z2 (the JSON says which). For every mixed row the
uniform rows it beats (lower objective at equal or better held-out accuracy) and those that
dominate it (no worse on both) are listed.

Usage: python benchmarks/quantization.py [--table] [--quick] [--search-seconds S]
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

from edgec.estimate import DesignOptions, estimate  # noqa: E402
from edgec.frontend.load import load_model  # noqa: E402
from edgec.passes.prune.common import model_outputs  # noqa: E402
from edgec.passes.quant.registry import run_quantization  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "quantization-2026-11-21.json"
UNIFORM = (8, 6, 4)
MIXED = [(0.5, "luts"), (1.0, "luts"), (0.5, "energy"), (1.0, "energy")]
OBJECTIVE_KEY = {"luts": "lut", "energy": "energy_uj"}
TARGETS = ("pynq-z2", "zcu104")


def cases() -> list[dict]:
    """The models with the data their passes see and the held-out data accuracy is reported on."""
    x_train, y_train, _, _ = digits_split()
    held = np.load(REPO / "examples" / "data" / "digits_test.npz")
    found = [{
        "name": "digits_cnn", "model": REPO / "examples" / "models" / "digits_cnn.onnx",
        "pass_data": (x_train, y_train), "test_data": (held["x"], held["y"]),
        "pass_split": "sklearn digits training split (1,497 images; searches measure on the first 1,000)",
        "test_split": "examples/data/digits_test.npz (300 held-out images)",
    }]
    mnist = mnist_images()
    if mnist is not None:
        x, y = mnist
        found.append({
            "name": "mnist_mlp", "model": REPO / "examples" / "models" / "mnist_mlp.onnx",
            "pass_data": (x[8000:9000], y[8000:9000]), "test_data": (x[9000:10000], y[9000:10000]),
            "pass_split": "MNIST t10k 8000-8999", "test_split": "MNIST t10k 9000-9999",
        })
    return found


def accuracy(model, data: tuple[np.ndarray, np.ndarray]) -> float:
    x, y = data
    return float(np.mean(model_outputs(model, x).argmax(-1) == y))


def costs(proto, data, target: str, options: DesignOptions | None = None) -> dict:
    report = estimate(proto, target=target, data=data, options=options)
    totals = report["totals"]
    res = totals["resources"]
    return {
        "lut": int(res["lut"]), "dsp": int(res["dsp"]), "ff": int(res["ff"]), "bram18": int(res["bram18"]),
        "latency_us": float(totals["latency_us"]), "energy_uj": float(totals["energy_uj"]),
        "fits": all(v <= 1.0 for v in totals["utilization"].values()),
    }


def run_case(case: dict, search_seconds: float, quick: bool) -> dict:
    loaded = load_model(case["model"]).model
    x_pass, y_pass = case["pass_data"]
    float_test = accuracy(loaded, case["test_data"])
    float_pass = accuracy(loaded, (x_pass[:1000], y_pass[:1000]))
    rows = [{"method": "float, estimated as fixed<16,6>", "spec": None, "model": loaded, "accuracy_pass": float_pass,
             "accuracy_test": float_test, "options": DesignOptions(precision="fixed<16,6>")}]
    for bits in UNIFORM:
        spec = f"fixed:bits={bits}"
        model, records = run_quantization(load_model(case["model"]).model, [spec], x_pass, y_pass)
        rows.append({"method": f"uniform {bits}-bit PTQ", "spec": spec, "model": model, "accuracy_pass": records[0]["accuracy_after"],
                     "accuracy_test": accuracy(model, case["test_data"]), "options": None})
    for drop, objective in MIXED[:2] if quick else MIXED:
        spec = f"mixed:max_drop={drop},objective={objective},search_seconds={search_seconds}"
        started = time.perf_counter()
        model, records = run_quantization(load_model(case["model"]).model, [spec], x_pass, y_pass)
        search = records[0]["search"]
        rows.append({
            "method": f"mixed max_drop={drop} {objective}", "spec": spec, "model": model, "accuracy_pass": records[0]["accuracy_after"],
            "accuracy_test": accuracy(model, case["test_data"]), "options": None, "objective": objective,
            "widths": search["chosen"]["widths"], "evaluations": search["evaluations"], "stopped": search["stopped"],
            "search_seconds": round(time.perf_counter() - started, 1), "frontier_points": len(search["frontier"]),
        })
    target = TARGETS[0]
    for row in rows:
        row["cost"] = costs(row["model"].model, case["pass_data"], target, row["options"])
    if not all(row["cost"]["fits"] for row in rows):
        target = TARGETS[1]
        for row in rows:
            row["cost"] = costs(row["model"].model, case["pass_data"], target, row["options"])
    uniform = [r for r in rows if r["method"].startswith("uniform")]
    for row in rows:
        if "objective" not in row:
            continue
        key = OBJECTIVE_KEY[row["objective"]]
        row["beats"] = [u["method"] for u in uniform if u["accuracy_test"] <= row["accuracy_test"] and u["cost"][key] > row["cost"][key]]
        row["dominated_by"] = [
            u["method"] for u in uniform
            if u["accuracy_test"] >= row["accuracy_test"] and u["cost"][key] <= row["cost"][key]
            and (u["accuracy_test"] > row["accuracy_test"] or u["cost"][key] < row["cost"][key])
        ]
    out_rows = []
    for row in rows:
        entry = {k: v for k, v in row.items() if k not in ("model", "options")}
        entry["accuracy_pass"] = round(float(entry["accuracy_pass"]), 4)
        entry["accuracy_test"] = round(float(entry["accuracy_test"]), 4)
        out_rows.append(entry)
    return {"model": case["name"], "target": target, "pass_data": case["pass_split"], "test_data": case["test_split"],
            "float_accuracy_test": round(float_test, 4), "rows": out_rows}


def table(results: list[dict]) -> str:
    lines = []
    for result in results:
        lines.append(f"\n{result['model']} on {result['target']} (passes see {result['pass_data']}; accuracy on {result['test_data']})")
        lines.append(f"{'method':34} {'acc pass':>8} {'acc test':>8} {'LUT':>7} {'DSP':>5} {'BRAM':>5} {'lat us':>8} {'E uJ':>8}  widths / vs uniform")
        for row in result["rows"]:
            c = row["cost"]
            extra = ""
            if "widths" in row:
                extra = "/".join(str(b) for b in row["widths"].values())
                extra += f" ({row['evaluations']} evals, {row['stopped']}); beats: {', '.join(row['beats']) or '-'}"
                if row["dominated_by"]:
                    extra += f"; dominated by: {', '.join(row['dominated_by'])}"
            lines.append(f"{row['method']:34} {row['accuracy_pass']:8.4f} {row['accuracy_test']:8.4f} {c['lut']:7d} {c['dsp']:5d} "
                         f"{c['bram18']:5d} {c['latency_us']:8.3f} {c['energy_uj']:8.4f}  {extra}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print a table instead of JSON")
    parser.add_argument("--quick", action="store_true", help="only the luts searches")
    parser.add_argument("--search-seconds", type=float, default=240.0, help="time budget of each mixed search")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    results = [run_case(case, args.search_seconds, args.quick) for case in cases()]
    payload = {"benchmark": "quantization", "seconds": round(time.perf_counter() - started, 1),
               "notes": ["costs are edgec.estimate figures (cost model, not synthesis)",
                         "mixed: granularity=layer, candidate widths 8,6,5,4,3,2, weights and the activations each layer reads",
                         "accuracy_pass: on the data the passes saw (first 1,000 samples); accuracy_test: held out"],
               "results": results}
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(payload, indent=1) + "\n")
    print(table(results) if args.table else json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
