"""8-bit PTQ on float models edgec's PTQ work never looked at: does "bit-exact and no costlier than
float" hold beyond the corpus it was developed on?

Default set (29 models): the 24 single-layer designs of the cost-model truth set (../shared/costval/
models: Dense, Conv, pooling, activations, exported from hls4ml's Keras tests), the three float peer
models (../shared/models/peer) and the two bundled examples. Each is built with
``edgec build MODEL --quantize fixed:bits=8 --no-cross`` on random inputs from its declared domain;
prints one JSON line per model and a summary.

    python benchmarks/ptq_heldout.py [--models a.onnx b.onnx ...] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def default_models() -> list[Path]:
    models = sorted((SHARED / "costval" / "models").glob("*.onnx"))
    models += [
        SHARED / "models" / "peer" / name for name in ("conv2d_small_keras.onnx", "three_layer_keras.onnx", "three_layer_pytorch.onnx")
    ]
    models += [ROOT / "examples" / "models" / "digits_cnn.onnx", ROOT / "examples" / "models" / "digits_cnn_logsoftmax.onnx"]
    return [m for m in models if m.exists()]


def run(model: Path, work: Path) -> dict:
    out = work / model.stem
    shutil.rmtree(out, ignore_errors=True)
    start = time.time()
    edgec = Path(sys.executable).with_name("edgec")
    proc = subprocess.run(
        [str(edgec), "build", str(model), "-o", str(out), "--no-cross", "--quantize", "fixed:bits=8"], capture_output=True, text=True
    )
    row = {"model": model.name, "exit": proc.returncode, "seconds": round(time.time() - start, 1), "traceback": "Traceback" in proc.stderr}
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or [""])[-1][:300]
        return row
    report = json.loads((out / "report.json").read_text())
    cost = report.get("quantization_cost") or {}
    ver = report["verification"]
    totals = report["totals"]
    row.update(
        no_worse=cost.get("no_worse"),
        worse_in=cost.get("worse_in"),
        excess=cost.get("excess"),
        chosen=cost.get("chosen"),
        float=cost.get("float"),
        quantized={"latency_us": totals["latency_us"], "lut": totals["resources"].get("lut"), "dsp": totals["resources"].get("dsp")},
        bit_exact=ver.get("bit_exact"),
        max_lsb_error=ver.get("max_lsb_error"),
        decisive_agreement=ver.get("decisive_agreement"),
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", type=Path, help="ONNX files (default: the held-out set above)")
    parser.add_argument("--out", type=Path, help="also write the rows and summary here")
    args = parser.parse_args()
    models = args.models or default_models()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgec-ptq-heldout-") as work:
        for model in models:
            rows.append(run(model, Path(work)))
            print(json.dumps(rows[-1]), flush=True)
    built = [r for r in rows if r["exit"] == 0]
    summary = {
        "models": len(rows),
        "built_and_verified": len(built),
        "tracebacks": sum(r["traceback"] for r in rows),
        "no_worse": sum(bool(r.get("no_worse")) for r in built),
        "bit_exact_0_lsb": sum(r.get("max_lsb_error") == 0.0 for r in built),
        "nothing_quantized_on_fpga": sum(r.get("max_lsb_error") is None for r in built),
    }
    print(json.dumps({"summary": summary}))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
