"""Build every model of the real-export corpus (tests/corpus) with edgec and with plain hls4ml; prints JSON.

Each model is built in its own process (a crash or a hang in one cannot stop the table), with
the corpus's held-out inputs (``tests/corpus/data``) for pynq-z2, and verified against the
reference (onnxruntime, or qonnx execution for QONNX). "verified" means the build finished and
its decisive agreement is >= 99% (edgec's own exit status). Plain hls4ml follows the documented
recipe (benchmarks/edgec_vs_hls4ml.py) on the same inputs and is "ok" at >= 99% argmax agreement.

    python benchmarks/corpus_build.py [--split dev|check|all] [--only NAME ...] [--no-plain] [--timeout S] [--table]
    python benchmarks/corpus_build.py --quantize fixed:bits=8 ...   # the PTQ table: float vs N-bit cost and LSB error
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"


FLOAT_FAMILIES = ("tf2onnx-keras2", "keras3", "torch-torchscript", "torch-dynamo")


def manifest() -> list[dict]:
    """The corpus entries (tests/corpus/manifest.json)."""
    return json.loads((CORPUS / "manifest.json").read_text())


def _data_path(entry: dict) -> Path | None:
    data = entry.get("data")
    if not data:
        return None
    path = CORPUS / data  # manifest paths are relative to tests/corpus
    return path if path.is_file() else None


def _summary_of(report: dict) -> dict:
    """What the table keeps of a build report."""
    ver = report["verification"]
    totals = report.get("totals", {})
    fpga = [layer for layer in report.get("layers", []) if layer.get("placement", "fpga") == "fpga"]
    return {
        "decisive_agreement": ver["decisive_agreement"],
        "argmax_agreement": ver["argmax_agreement"],
        "max_abs_error": ver["max_abs_error"],
        "accuracy_reference": ver.get("accuracy_reference"),
        "accuracy_simulated": ver.get("accuracy_simulated"),
        "bit_exact": ver.get("bit_exact"),
        "max_lsb_error": ver.get("max_lsb_error"),
        "simulated_by": ver.get("simulated_by"),
        "quantization_cost": report.get("quantization_cost"),
        "exact_at": ver.get("exact_at"),
        "latency_us": totals.get("latency_us"),
        "lut": totals.get("resources", {}).get("lut") if isinstance(totals.get("resources"), dict) else totals.get("lut"),
        "dsp": totals.get("resources", {}).get("dsp") if isinstance(totals.get("resources"), dict) else totals.get("dsp"),
        "fpga_layers": len(fpga),
        "segments": [s.get("placement") for s in report.get("partition", {}).get("segments", [])] if report.get("partition") else None,
        "timings": report.get("timings"),
    }


def run_edgec(entry: dict, out: Path, timeout: float, extra: list[str]) -> dict:
    """``edgec build`` in a subprocess: exit code, the one error line, seconds, and the report's figures."""
    model = CORPUS / entry["file"]
    cmd = [sys.executable, "-m", "edgec", "build", str(model), "--target", "pynq-z2", "-o", str(out), "--no-cross", *extra]
    data = _data_path(entry)
    if data is not None:
        cmd += ["--data", str(data)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"result": "timeout", "seconds": round(time.perf_counter() - start, 1), "traceback": False}
    row = {"seconds": round(time.perf_counter() - start, 1), "exit_code": proc.returncode, "traceback": "Traceback" in proc.stderr}
    if proc.returncode == 0:
        row["result"] = "verified"
        row.update(_summary_of(json.loads((out / "report.json").read_text())))
    else:
        row["result"] = "failed"
        row["error"] = proc.stderr.strip().splitlines()[-1][:400] if proc.stderr.strip() else f"exit {proc.returncode}"
    row["half_written"] = (proc.returncode != 0 and out.exists()) or any(out.parent.glob(f".{out.name}.edgec-*"))
    return row


def run_plain(entry: dict, out: Path, timeout: float) -> dict:
    """Plain hls4ml (benchmarks/edgec_vs_hls4ml.py's recipe) in a subprocess on the same inputs."""
    cmd = [sys.executable, __file__, "--plain-worker", entry["name"], "--out", str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "timeout"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "error": f"crashed: {tail[:200]}"}
    return json.loads(lines[-1])


def _plain_worker(name: str, out: Path) -> None:
    import warnings

    from edgec.data import load_data, random_inputs
    from edgec.frontend.load import load_model
    from edgec.verify import compare, reference_outputs

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from edgec_vs_hls4ml import plain_hls4ml

    warnings.filterwarnings("ignore")
    entry = next(e for e in manifest() if e["name"] == name)
    path = CORPUS / entry["file"]
    start = time.perf_counter()
    try:
        loaded = load_model(path)
        data = _data_path(entry)
        shape = loaded.model.get_tensor_shape(loaded.model.graph.input[0].name)
        x = load_data(data, shape)[0] if data is not None else random_inputs(loaded.model, 200)[0]
        ref, _ = reference_outputs(loaded.model, x, loaded.is_qonnx)
        y = plain_hls4ml(path, x, out)
        cmp = compare(ref, y, None)
        row = {
            "ok": cmp["argmax_agreement"] >= 0.99,
            "built": True,
            "argmax_agreement": cmp["argmax_agreement"],
            "max_abs_error": cmp["max_abs_error"],
            "seconds": round(time.perf_counter() - start, 1),
        }
    except BaseException as exc:  # report, don't stop the comparison
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        row = {"ok": False, "built": False, "error": f"{type(exc).__name__}: {text}"}
    print(json.dumps(row, default=float), flush=True)


def ptq_table(rows: list[dict], floats: dict[str, dict]) -> str:
    """Float vs N-bit build of each float model: latency, LUT, DSP and the LSB error."""
    lines = [
        "| model | split | float us / LUT / DSP | quantized us / LUT / DSP | no worse | bit-exact (LSB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        e, f = r["edgec"], floats.get(r["model"], {})
        if e["result"] != "verified":
            lines.append(f"| {r['model']} | {r['split']} | - | {e['result']} ({e.get('exit_code', '-')}) | - | - |")
            continue
        fl = f"{f.get('latency_us', '-')} / {f.get('lut', '-')} / {f.get('dsp', '-')}" if f else "-"
        qc = e.get("quantization_cost") or {}
        lines.append(
            f"| {r['model']} | {r['split']} | {fl} | {e['latency_us']} / {e['lut']} / {e['dsp']} | "
            f"{'yes' if qc.get('no_worse') else ('no: ' + ', '.join(qc.get('worse_in', [])) if qc else '-')} | "
            f"{e.get('bit_exact')} ({e.get('max_lsb_error')}) |"
        )
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    """The README's markdown table."""
    lines = ["| model | exporter | split | edgec | agreement | max error | s | plain hls4ml |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e, p = r["edgec"], r.get("plain") or {}
        if e["result"] == "verified":
            status, agree, err = "verified", f"{e['decisive_agreement']:.3f}", f"{e['max_abs_error']:.2g}"
        else:
            status, agree, err = f"{e['result']} ({e.get('exit_code', '-')})", "-", "-"
        plain = (
            "-"
            if not p
            else ("ok" if p.get("ok") else ("drifts" if p.get("built") else "fails"))
            + (f" {p['argmax_agreement']:.2f}" if p.get("built") else "")
        )
        lines.append(f"| {r['model']} | {r['family']} | {r['split']} | {status} | {agree} | {err} | {e['seconds']} | {plain} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["dev", "check", "all"], default="all")
    parser.add_argument("--only", nargs="*", help="model names")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain hls4ml column")
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--table", action="store_true", help="also print the markdown table (to stderr)")
    parser.add_argument("--quantize", help="pass --quantize SPEC to every edgec build (e.g. fixed:bits=8)")
    parser.add_argument("--float-only", action="store_true", help="only the float models (exported without quantizers)")
    parser.add_argument("--plain-worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_worker:
        _plain_worker(args.plain_worker, Path(args.out))
        return
    entries = [e for e in manifest() if args.split == "all" or e["split"] == args.split]
    if args.only:
        entries = [e for e in entries if e["name"] in args.only]
    if args.float_only:
        entries = [e for e in entries if e["family"] in FLOAT_FAMILIES]
    rows = []
    for entry in entries:
        with tempfile.TemporaryDirectory() as tmp:
            extra = ["--quantize", args.quantize] if args.quantize else []
            row = {"model": entry["name"], "family": entry["family"], "split": entry["split"], "size": entry.get("size", "small")}
            row["edgec"] = run_edgec(entry, Path(tmp) / "edgec", args.timeout, extra)
            if not args.no_plain:
                row["plain"] = run_plain(entry, Path(tmp) / "plain", args.timeout)
            rows.append(row)
            print(
                f"{entry['name']:<55} {row['edgec']['result']:<9} {row['edgec']['seconds']:>7}s  {row['edgec'].get('error', '')[:150]}",
                file=sys.stderr,
                flush=True,
            )
    summary = {}
    for split in ("dev", "check"):
        part = [r for r in rows if r["split"] == split]
        summary[split] = {
            "models": len(part),
            "edgec_verified": sum(r["edgec"]["result"] == "verified" for r in part),
            "edgec_tracebacks": sum(bool(r["edgec"].get("traceback")) for r in part),
            "plain_hls4ml_ok": sum(bool((r.get("plain") or {}).get("ok")) for r in part) if not args.no_plain else None,
            "plain_hls4ml_built": sum(bool((r.get("plain") or {}).get("built")) for r in part) if not args.no_plain else None,
        }
    print(json.dumps({"summary": summary, "quantize": args.quantize, "rows": rows}, indent=2, default=float))
    if args.table:
        if args.quantize:
            floats = {r["model"]: (r["edgec"].get("quantization_cost") or {}).get("float") or {} for r in rows}
            print(ptq_table(rows, floats), file=sys.stderr)
        else:
            print(table(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
