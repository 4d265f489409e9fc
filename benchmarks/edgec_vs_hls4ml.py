"""edgec vs plain hls4ml (the documented recipe) on the same real models; prints JSON.

Plain recipe: qonnx cleanup, channels-last (conv models), Gemm->MatMul, convert with the default
fixed<16,6>, compile. Both are checked against the same reference on the same 200 inputs (edgec's
default verification inputs). "ok" means the build compiled and agrees on >= 99% of samples;
edgec's count uses its decisive agreement (near-ties below the output resolution left out), and
``edgec_ok_strict`` counts plain argmax agreement like the hls4ml column.

    python benchmarks/edgec_vs_hls4ml.py [model.onnx ...]
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import edgec
from edgec.data import random_inputs
from edgec.frontend.load import load_model
from edgec.verify import compare, reference_outputs

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def plain_hls4ml(path: Path, x: np.ndarray, out_dir: Path):
    import hls4ml
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model

    model = cleanup_model(ModelWrapper(str(path)))  # as hls4ml documents it: no edgec loading
    if any(n.op_type == "Conv" for n in model.graph.node):
        model = model.transform(ConvertToChannelsLastAndClean(make_input_channels_last=True))
        x = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
    model = cleanup_model(model.transform(GemmToMatMul()))
    with contextlib.redirect_stdout(io.StringIO()):
        cfg = hls4ml.utils.config.config_from_onnx_model(model, granularity="name", backend="Vitis", default_precision="fixed<16,6>")
        hm = hls4ml.converters.convert_from_onnx_model(
            model, output_dir=str(out_dir), hls_config=cfg, backend="Vitis", part="xc7z020clg400-1"
        )
        hm.compile()
        y = hm.predict(np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float64))
    return np.asarray(y, dtype=np.float64).reshape(x.shape[0], -1)


def main(paths: list[Path]) -> None:
    warnings.filterwarnings("ignore")
    rows = []
    for path in paths:
        loaded = load_model(path)
        x, _ = random_inputs(loaded.model, 200)
        ref, _ = reference_outputs(loaded.model, x, loaded.is_qonnx)
        row = {"model": path.name}
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            try:
                result = edgec.build(path, output_dir=Path(tmp) / "edgec", min_agreement=0.0)
                ver = result.report["verification"]
                row["edgec"] = {
                    "ok": True,
                    "max_abs_error": ver["max_abs_error"],
                    "argmax_agreement": ver["argmax_agreement"],
                    "decisive_agreement": ver["decisive_agreement"],
                    "near_ties": ver["near_ties"],
                    "seconds": round(time.perf_counter() - start, 2),
                }
            except Exception as exc:  # report, don't stop the comparison
                row["edgec"] = {"ok": False, "error": str(exc)[:200]}
            start = time.perf_counter()
            try:
                y = plain_hls4ml(path, x, Path(tmp) / "plain")
                cmp = compare(ref, y, None)
                row["plain_hls4ml"] = {
                    "ok": True,
                    "max_abs_error": cmp["max_abs_error"],
                    "argmax_agreement": cmp["argmax_agreement"],
                    "seconds": round(time.perf_counter() - start, 2),
                }
            except Exception as exc:
                row["plain_hls4ml"] = {"ok": False, "error": str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}
        rows.append(row)
    summary = {
        "models": len(rows),
        "edgec_ok": sum(r["edgec"]["ok"] and r["edgec"]["decisive_agreement"] >= 0.99 for r in rows),
        "edgec_ok_strict": sum(r["edgec"]["ok"] and r["edgec"]["argmax_agreement"] >= 0.99 for r in rows),
        "plain_hls4ml_ok": sum(r["plain_hls4ml"]["ok"] and r["plain_hls4ml"]["argmax_agreement"] >= 0.99 for r in rows),
        "edgec_built": sum(r["edgec"]["ok"] for r in rows),
        "plain_hls4ml_built": sum(r["plain_hls4ml"]["ok"] for r in rows),
    }
    both = [r for r in rows if r["edgec"]["ok"] and r["plain_hls4ml"]["ok"]]
    if both:
        summary["median_max_abs_error"] = {
            "edgec": float(np.median([r["edgec"]["max_abs_error"] for r in both])),
            "plain_hls4ml": float(np.median([r["plain_hls4ml"]["max_abs_error"] for r in both])),
        }
        summary["median_build_seconds"] = {
            "edgec": float(np.median([r["edgec"]["seconds"] for r in both])),
            "plain_hls4ml": float(np.median([r["plain_hls4ml"]["seconds"] for r in both])),
        }
    print(json.dumps({"summary": summary, "rows": rows}, indent=2))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, help="ONNX files (default: tests/data, the example, the costval designs)")
    args = parser.parse_args().models or (
        sorted(DATA.glob("*.onnx"))
        + [Path(__file__).resolve().parent.parent / "examples/models/digits_cnn.onnx"]
        + sorted((DATA / "costval" / "models").glob("*.onnx"))
    )
    main(args)
