"""Partitioning benchmark: TVM on the host against onnxruntime, and partitioned designs against
all-FPGA and all-CPU placements.

1. TVM vs onnxruntime, batch 1, same model, same run: each model is compiled by edgec's CPU backend
   (``edgec.backends.tvm``, host ``llvm``, untuned) and timed with TVM's own timer
   (``measure_host_latency``, median of 200); onnxruntime (one thread, all graph optimizations)
   runs the same ONNX file on the same input, median of 200 ``run`` calls. Ratio = TVM / ORT.
2. Placements of the bundled example (examples/models/digits_cnn.onnx) on pynq-z2, and of a model
   with an op hls4ml lacks (an MLP with an Erf GELU): each is built with ``place="fpga"``,
   ``"cpu"`` and ``"auto"`` (a real build: C simulation and TVM host build verified against
   onnxruntime), and the estimated end-to-end latency and energy per inference of the design are
   reported (cost models: FPGA segments, the board's CPU, PS-PL DMA transfers). "n/a" where a
   placement cannot implement the model.
3. The measured CPU break-even ratios are in benchmarks/cpu_break_even.py (run by `make benchmark`).

Usage: python benchmarks/partition.py [--table]   (prints JSON; saves benchmarks/results/partition-2026-11-21.json)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import onnxruntime as ort  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402

import edgec  # noqa: E402
from edgec.backends.tvm import HostModule, compile_cpu_model, measure_host_latency  # noqa: E402
from edgec.errors import EdgecError  # noqa: E402
from edgec.frontend.load import load_model  # noqa: E402
from edgec.targets import load_target  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "partition-2026-11-21.json"
MODELS = ["digits_cnn", "mnist_cnn", "mnist_mlp"]
REPEATS = 200


def ort_latency_ms(path: Path, x1: np.ndarray) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(20):
        session.run(None, {name: x1})
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        session.run(None, {name: x1})
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def tvm_vs_onnxruntime(work: Path) -> list[dict]:
    rows = []
    host = load_target("x86-64")
    for name in MODELS:
        path = REPO / "examples" / "models" / f"{name}.onnx"
        loaded = load_model(path)
        shape = loaded.model.get_tensor_shape(loaded.model.graph.input[0].name)
        x1 = np.random.default_rng(0).random(shape, dtype=np.float32)
        library = compile_cpu_model(ModelWrapper(loaded.model.model), host, work / name, name, cross=False)
        module = HostModule.load(library.sidecar)
        tvm_ms = measure_host_latency(module, x1, repeats=REPEATS)
        ort_ms = ort_latency_ms(path, x1)
        same = float(
            np.max(
                np.abs(
                    module.run(x1).reshape(-1)
                    - ort.InferenceSession(str(path)).run(None, {loaded.model.graph.input[0].name: x1})[0].reshape(-1)
                )
            )
        )
        rows.append(
            {
                "model": name,
                "tvm_median_ms": round(tvm_ms["median_ms"], 5),
                "tvm_python_call_ms": round(tvm_ms["python_median_ms"], 5),
                "onnxruntime_median_ms": round(ort_ms, 5),
                "ratio_tvm_over_ort": round(tvm_ms["median_ms"] / ort_ms, 3),
                "max_abs_difference": same,
                "tvm_build_s": round(sum(library.timings.values()), 2),
            }
        )
    return rows


def placements(work: Path) -> list[dict]:
    from test_partition import gelu_mlp

    digits = np.load(REPO / "examples" / "data" / "digits_test.npz")
    cases = [
        ("digits_cnn (bundled example)", str(REPO / "examples" / "models" / "digits_cnn.onnx"), (digits["x"], digits["y"])),
        ("gelu_mlp (Erf between two Dense)", gelu_mlp(), None),
    ]
    rows = []
    for label, model, data in cases:
        for place in ("fpga", "cpu", "auto"):
            row = {"model": label, "place": place}
            try:
                result = edgec.build(
                    model, target="pynq-z2", output_dir=work / f"{label.split()[0]}_{place}", data=data, place=place, force=True
                )
            except EdgecError as err:
                row.update({"latency_us": None, "energy_uj": None, "note": err.user_message()[:160]})
                rows.append(row)
                continue
            report = result.report
            totals = report["totals"]
            system = report["partition"]["system"]
            row.update(
                {
                    "segments": " -> ".join(f"{s['name']}" for s in report["partition"]["segments"]),
                    "fpga_latency_us": totals["latency_us"],  # the FPGA design alone (all-FPGA) or the system (partitioned)
                    "latency_us": system["latency_us"],
                    "latency_by_placement_us": system["latency_by_placement_us"],
                    "energy_uj": system["energy_uj"],
                    "throughput_fps": system["throughput_fps"],
                    "lut": totals["resources"]["lut"],
                    "dsp": totals["resources"]["dsp"],
                    "agreement": report["verification"]["argmax_agreement"],
                }
            )
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print Markdown tables instead of JSON")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgec-partition-bench-") as tmp:
        work = Path(tmp)
        result = {"benchmark": "partition", "tvm_vs_onnxruntime": tvm_vs_onnxruntime(work), "placements": placements(work)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if not args.table:
        print(json.dumps(result, indent=2))
        return
    print("| model | TVM (ms) | onnxruntime (ms) | TVM / ORT |")
    print("|---|---|---|---|")
    for r in result["tvm_vs_onnxruntime"]:
        print(f"| {r['model']} | {r['tvm_median_ms']:.4f} | {r['onnxruntime_median_ms']:.4f} | {r['ratio_tvm_over_ort']:.2f} |")
    print()
    print("| model | place | segments | latency (us) | FPGA / CPU / DMA (us) | energy (uJ) | LUT | DSP |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["placements"]:
        if r.get("latency_us") is None:
            print(f"| {r['model']} | {r['place']} | n/a: {r['note']} | | | | | |")
            continue
        split = r["latency_by_placement_us"]
        print(
            f"| {r['model']} | {r['place']} | {r['segments']} | {r['latency_us']:.3f} | {split['fpga']:.3f} / {split['cpu']:.3f} / {split['transfer']:.3f} "
            f"| {r['energy_uj']:.4f} | {r['lut']} | {r['dsp']} |"
        )


if __name__ == "__main__":
    main()
