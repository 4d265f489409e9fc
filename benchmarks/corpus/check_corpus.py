"""Check the ONNX corpus: every manifest entry loads, validates, runs on its data and matches its manifest fields.

    .venv/bin/python benchmarks/corpus/check_corpus.py [--only NAME ...]

Runs in the main venv. For each entry of tests/corpus/manifest.json:

- the model file (and any external-data file) and the data file exist;
- standard ONNX files pass ``onnx.checker.check_model(model, full_check=True)``; QONNX files (custom
  ``qonnx.custom_op.general`` / ``finn`` ops) are loaded with qonnx's ModelWrapper instead;
- ``opset`` (default domain), ``ir_version`` (and IR <= 10), ``input_shape`` and ``output_shape`` equal
  what the file declares;
- the model runs on its npz: onnxruntime with graph optimizations disabled, or qonnx ``execute_onnx`` for
  QONNX files (after qonnx's InferShapes, which execute_onnx needs); models with a fixed batch of 1 run sample by sample. The outputs must be finite with the
  declared shape, and for classifiers the held-out accuracy must equal the manifest's.

Also checks the corpus as a whole: unique names, known families, the check split (25-30% of the models,
at least one per family with >= 3 models) and the size budget. Prints JSON; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus"
MANIFEST = CORPUS / "manifest.json"
QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "qonnx", "finn")
QONNX_OPS = {"Quant", "BipolarQuant", "Trunc", "MultiThreshold", "FloatQuant", "IntQuant"}
FAMILIES = {
    "tf2onnx-keras2",
    "keras3",
    "torch-torchscript",
    "torch-dynamo",
    "qkeras-qonnx",
    "brevitas-qonnx",
    "brevitas-qcdq",
    "finn-onnx",
    "ort-qdq",
    "ort-qoperator",
    "ort-dynamic",
}
MAX_MODEL_KB = 300
MAX_CORPUS_MB = 12.0

warnings.filterwarnings("ignore")


def is_qonnx(model: onnx.ModelProto) -> bool:
    """True when the graph holds qonnx/FINN custom ops (Quant, BipolarQuant, Trunc, ...)."""
    return any(n.domain.startswith(QONNX_DOMAINS) or (n.op_type in QONNX_OPS and n.domain not in ("", "ai.onnx")) for n in model.graph.node)


def default_opset(model: onnx.ModelProto) -> int:
    """The default (ai.onnx) domain's opset version."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The first graph input that is not also an initializer (the data input)."""
    inits = {t.name for t in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in inits)


def dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    """Declared dims of a value: ints, dim_param strings, or '?' for an unnamed unknown dim."""
    out: list[int | str] = []
    for d in vi.type.tensor_type.shape.dim:
        out.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return out


def dtype_name(vi: onnx.ValueInfoProto) -> str:
    """numpy name of a value's element type."""
    return str(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))


def run_model(path: Path, x: np.ndarray, qonnx_file: bool) -> np.ndarray:
    """Run a model on all of ``x``: one batch, or sample by sample when the input batch is fixed to 1."""
    model = onnx.load(str(path), load_external_data=False)
    inp = graph_input(model)
    fixed1 = dims(inp)[:1] == [1]
    chunks = [x[i : i + 1] for i in range(len(x))] if fixed1 else [x]
    outs = []
    if qonnx_file:
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.core.onnx_exec import execute_onnx
        from qonnx.transformation.infer_shapes import InferShapes

        # execute_onnx needs every tensor shape: qonnx's own shape inference first (the file is unchanged)
        mw = ModelWrapper(str(path)).transform(InferShapes())
        out_name = mw.graph.output[0].name
        for c in chunks:
            outs.append(execute_onnx(mw, {inp.name: c})[out_name])
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        out_name = sess.get_outputs()[0].name
        for c in chunks:
            outs.append(sess.run([out_name], {inp.name: c})[0])
    return np.concatenate(outs, axis=0)


def measure(entry: dict[str, Any]) -> dict[str, Any]:
    """What the files say about one entry: validation, opset, IR, shapes, sizes, outputs and accuracy."""
    path = CORPUS / entry["file"]
    model = onnx.load(str(path), load_external_data=False)
    qf = is_qonnx(model)
    res: dict[str, Any] = {"runtime": "qonnx.execute_onnx" if qf else "onnxruntime (ORT_DISABLE_ALL)"}
    if qf:
        from qonnx.core.modelwrapper import ModelWrapper

        ModelWrapper(str(path))
        res["checker"] = "qonnx ModelWrapper (QONNX custom ops)"
    else:
        onnx.checker.check_model(str(path), full_check=True)
        res["checker"] = "onnx.checker full_check"
    inp, out = graph_input(model), model.graph.output[0]
    res.update(
        opset=default_opset(model),
        ir_version=model.ir_version,
        input_shape=dims(inp),
        output_shape=dims(out),
        input_dtype=dtype_name(inp),
        opset_imports={o.domain or "ai.onnx": o.version for o in model.opset_import},
    )
    files = [path] + [CORPUS / f for f in entry.get("extra_files", [])]
    res["size_kb"] = round(sum(f.stat().st_size for f in files) / 1024, 1)
    data = np.load(CORPUS / entry["data"])
    x = data["x"]
    t0 = time.time()
    y = run_model(path, x, qf)
    res["run_seconds"] = round(time.time() - t0, 2)
    res["ran_output_shape"] = list(y.shape)
    res["finite"] = bool(np.isfinite(y).all())
    if entry["task"] == "classification" and "y" in data:
        res["heldout_accuracy"] = float((y.reshape(len(x), -1).argmax(1) == data["y"]).mean())
    else:
        res["heldout_accuracy"] = None
    res["x_dtype"], res["x_shape"] = str(x.dtype), list(x.shape)
    return res


def check_entry(entry: dict[str, Any]) -> list[str]:
    """Problems with one manifest entry (empty when it is consistent with its files)."""
    problems: list[str] = []
    for key in ("file", "data", *[f"extra_files[{i}]" for i in range(len(entry.get("extra_files", [])))]):
        f = entry["extra_files"][int(key[12:-1])] if key.startswith("extra_files") else entry[key]
        if not (CORPUS / f).is_file():
            problems.append(f"missing {key}: {f}")
    if problems:
        return problems
    try:
        m = measure(entry)
    except Exception as exc:  # report, don't stop: every entry gets checked
        return [f"{type(exc).__name__}: {str(exc)[:300]}"]
    for key in ("opset", "ir_version", "input_shape", "output_shape"):
        if entry.get(key) != m[key]:
            problems.append(f"{key}: manifest {entry.get(key)} vs file {m[key]}")
    if m["ir_version"] > 10:
        problems.append(f"ir_version {m['ir_version']} > 10")
    if not m["finite"]:
        problems.append("non-finite outputs")
    if m["x_dtype"] != m["input_dtype"]:
        problems.append(f"data dtype {m['x_dtype']} vs model input {m['input_dtype']}")
    want = [m["x_shape"][0] if isinstance(d, str) or (i == 0 and d == 1) else d for i, d in enumerate(m["output_shape"])]
    if m["ran_output_shape"] != want:
        problems.append(f"ran output shape {m['ran_output_shape']} vs declared {m['output_shape']}")
    acc, macc = m["heldout_accuracy"], entry.get("heldout_accuracy")
    if (acc is None) != (macc is None) or (acc is not None and abs(acc - macc) > 1e-9):
        problems.append(f"heldout_accuracy: manifest {macc} vs measured {acc}")
    if entry["family"] not in FAMILIES:
        problems.append(f"unknown family {entry['family']}")
    if entry["size"] not in ("small", "large"):
        problems.append(f"size {entry['size']}")
    if entry["split"] not in ("dev", "check"):
        problems.append(f"split {entry['split']}")
    if entry["size"] == "small" and m["size_kb"] > MAX_MODEL_KB:
        problems.append(f"small model is {m['size_kb']} KB")
    return problems


def check_corpus(entries: list[dict[str, Any]]) -> list[str]:
    """Problems with the corpus as a whole."""
    problems: list[str] = []
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        problems.append("duplicate names")
    n_check = sum(e["split"] == "check" for e in entries)
    if not 0.25 <= n_check / max(len(entries), 1) <= 0.30 + 1e-9:
        problems.append(f"check split is {n_check}/{len(entries)}")
    fams: dict[str, list[str]] = {}
    for e in entries:
        fams.setdefault(e["family"], []).append(e["split"])
    for fam, splits in fams.items():
        if len(splits) >= 3 and "check" not in splits:
            problems.append(f"family {fam} has no check model")
    total = sum(f.stat().st_size for d in ("models", "data") for f in (CORPUS / d).iterdir()) / 2**20
    if total > MAX_CORPUS_MB:
        problems.append(f"corpus is {total:.1f} MB")
    listed = {e["file"] for e in entries} | {f for e in entries for f in e.get("extra_files", [])}
    stray = sorted(f"models/{p.name}" for p in (CORPUS / "models").iterdir() if f"models/{p.name}" not in listed)
    if stray:
        problems.append(f"files not in the manifest: {stray}")
    return problems


def main() -> int:
    """Check every manifest entry and the corpus; print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="check only these names")
    args = ap.parse_args()
    entries = json.loads(MANIFEST.read_text())
    report: dict[str, Any] = {"models": len(entries), "entries": {}}
    failed = 0
    for e in entries:
        if args.only and e["name"] not in args.only:
            continue
        probs = check_entry(e)
        failed += bool(probs)
        report["entries"][e["name"]] = {"ok": not probs, "problems": probs} if probs else {"ok": True}
    corpus_probs = [] if args.only else check_corpus(entries)
    report["corpus_problems"] = corpus_probs
    report["failed_entries"] = failed
    report["ok"] = failed == 0 and not corpus_probs
    total = sum(f.stat().st_size for d in ("models", "data") for f in (CORPUS / d).iterdir())
    report["corpus_mb"] = round(total / 2**20, 2)
    report["splits"] = {s: sum(e["split"] == s for e in entries) for s in ("dev", "check")}
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
