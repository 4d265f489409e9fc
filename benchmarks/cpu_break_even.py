"""CPU break-even pruning ratios: measured on this host against edgec's CPU cost model.

For several layer shapes (Dense n_in x n_out, and convolutions as im2col GEMMs over their output
pixels), ``edgec.cost.break_even.measure_cpu_break_even`` times a dense float32 SIMD GEMV/GEMM
against CSR at a sweep of random pruning ratios and finds the crossover r*; beside it, the r* of
the CPU cost model (edgec.cost.cpu, cycles metric) for the ``x86-64`` target, which describes this
host class. The measurement is compiled twice: ``-march=native`` (the host's full SIMD) and
``-march=x86-64`` (SSE2, the ISA the x86-64 target's TVM code is built for), so the model is
compared with the kernel class it describes.

Usage: python benchmarks/cpu_break_even.py [--table] [--quick] [--out FILE]
Prints JSON (or a Markdown table with --table); --out also writes the JSON to FILE.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgec.cost.break_even import host_cpu_model, layer_break_even, measure_cpu_break_even  # noqa: E402
from edgec.cost.layer import LayerConfig  # noqa: E402
from edgec.errors import EdgecError  # noqa: E402
from edgec.targets import CpuSpec, load_target  # noqa: E402

MODEL_TARGET = "x86-64"
# (label, n_in, n_out, positions, kind): positions are the output pixels of a 'same'-padded conv
SHAPES = [
    ("dense 784x128", 784, 128, 1, "dense"),
    ("dense 128x64", 128, 64, 1, "dense"),
    ("dense 64x10", 64, 10, 1, "dense"),
    ("dense 256x256", 256, 256, 1, "dense"),
    ("dense 512x512", 512, 512, 1, "dense"),
    ("dense 1024x1024", 1024, 1024, 1, "dense"),
    ("conv 3x3x16->32 on 12x12", 3 * 3 * 16, 32, 12 * 12, "conv"),
    ("conv 3x3x32->64 on 8x8", 3 * 3 * 32, 64, 8 * 8, "conv"),
    ("conv 1x1x64->64 on 16x16", 64, 64, 16 * 16, "conv"),
]
QUICK_SHAPES = {"dense 128x64", "dense 256x256", "conv 3x3x16->32 on 12x12"}
MARCHES = ("native", "x86-64")


def host_cpu_spec() -> tuple[CpuSpec, str]:
    """The x86-64 target's CPU, or a description of this host read from /proc/cpuinfo."""
    try:
        return load_target(MODEL_TARGET).cpu, f"targets/{MODEL_TARGET}.yaml"
    except EdgecError:
        mhz = 0.0
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("cpu MHz"):
                    mhz = float(line.split(":")[1])
                    break
        except OSError:
            pass
        spec = CpuSpec(name=host_cpu_model(), cores=1, clock_mhz=mhz or 2000.0, isa=platform.machine())
        return spec, f"no {MODEL_TARGET} target: host read from /proc/cpuinfo (cost-model figures are its defaults)"


def modelled(n_in: int, n_out: int, positions: int, kind: str) -> dict:
    layer = LayerConfig(
        name="layer",
        kind=kind,
        op="MatMul" if kind == "dense" else "Conv",
        output_tensor="y",
        in_shape=[n_in],
        out_shape=[n_out],
        n_in=n_in,
        n_out=n_out,
        positions=positions,
        weight_bits=32,
        weight_codes=np.ones((n_in, n_out), dtype=np.int64),
    )
    target = load_target(MODEL_TARGET)
    out = {}
    for metric in ("cycles", "energy"):
        be = layer_break_even(layer, target, None, "cpu", metric)
        out[metric] = None if be.ratio is None else round(be.ratio, 4)
    return out


def main() -> None:
    quick = "--quick" in sys.argv
    spec, source = host_cpu_spec()
    rows = []
    started = time.perf_counter()
    for label, n_in, n_out, positions, kind in SHAPES:
        if quick and label not in QUICK_SHAPES:
            continue
        row = {"layer": label, "n_in": n_in, "n_out": n_out, "positions": positions, "weights": n_in * n_out}
        for march in MARCHES:
            t0 = time.perf_counter()
            measured = measure_cpu_break_even(n_out, n_in, positions, repeats=5 if quick else 9, march=march)
            row[f"measured_{march}"] = None if measured["break_even_ratio"] is None else round(measured["break_even_ratio"], 4)
            row[f"seconds_{march}"] = round(time.perf_counter() - t0, 3)
            row[f"curve_{march}"] = [
                {
                    "ratio": p["ratio"],
                    "dense_us": round(p["dense_ns"] / 1000, 3),
                    "sparse_us": round(p["sparse_ns"] / 1000, 3),
                    "sparse_over_dense": round(p["sparse_over_dense"], 4),
                }
                for p in measured["curve"]
            ]
            row["compiler"], row[f"flags_{march}"] = measured["compiler"], measured["flags"]
        row["modelled"] = modelled(n_in, n_out, positions, kind)
        rows.append(row)
    result = {
        "benchmark": "cpu-break-even",
        "date": time.strftime("%Y-%m-%d"),
        "host": {"cpu_model": host_cpu_model(), "machine": platform.machine(), "python": platform.python_version()},
        "model_target": MODEL_TARGET,
        "model_cpu": {"name": spec.name, "clock_mhz": spec.clock_mhz, "source": source},
        "definition": "r* = smallest pruning ratio from which CSR is at least as fast as dense at every measured ratio above it "
        "(linear interpolation of sparse/dense time); modelled: edgec.cost.cpu cycles and energy",
        "seconds": round(time.perf_counter() - started, 2),
        "layers": rows,
    }
    text = json.dumps(result, indent=2)
    if "--out" in sys.argv:
        Path(sys.argv[sys.argv.index("--out") + 1]).write_text(text + "\n")
    if "--table" in sys.argv:
        print(f"host: {result['host']['cpu_model']} ({result['host']['machine']}); model: {MODEL_TARGET} ({source})\n")
        print(
            "| layer | weights | positions | measured r* (-march=native) | measured r* (-march=x86-64) | modelled r* cycles | modelled r* energy |"
        )
        print("|---|---|---|---|---|---|---|")
        for row in rows:

            def pct(v):
                return "never" if v is None else f"{v * 100:.0f}%"

            print(
                f"| {row['layer']} | {row['weights']} | {row['positions']} | {pct(row['measured_native'])} | {pct(row['measured_x86-64'])} "
                f"| {pct(row['modelled']['cycles'])} | {pct(row['modelled']['energy'])} |"
            )
    else:
        print(text)


if __name__ == "__main__":
    main()
