"""onnxruntime-quantized models of the corpus, made from float corpus models (main venv).

    .venv/bin/python benchmarks/corpus/gen_ort_quant.py

Run after gen_torch.py and gen_keras2.py (it reads their float models from tests/corpus/models).
``quantize_static`` in QDQ format (per-tensor and per-channel, with and without ``quant_pre_process``
first) and in QOperator format, and ``quantize_dynamic`` (MatMulInteger / ConvInteger with
DynamicQuantizeLinear). Static calibration uses 256 TRAINING samples in the model's own layout, never
the held-out data.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_dynamic, quantize_static

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ORTV = onnxruntime.__version__


def calibration(layout: str, n: int = 256) -> np.ndarray:
    """``n`` training samples of a data set in a model's input layout (float32)."""
    if layout.startswith("digits"):
        x = common.load_digits_split()[0][:n]
        return {"digits_nchw": x[:, None], "digits_nhwc": x[..., None], "digits_flat": x.reshape(n, -1)}[layout]
    if layout.startswith("mnist"):
        x = (common.load_mnist_split()[0][:n] / 255.0).astype(np.float32)
        return {"mnist_nchw": x[:, None], "mnist_nhwc": x[..., None]}[layout]
    x = common.signal_split()[0][:n]
    return {"signal_ncw": x[:, None], "signal_nwc": x[..., None]}[layout]


class Reader(CalibrationDataReader):
    """Feeds calibration samples one at a time (batch 1 works for fixed- and dynamic-batch models)."""

    def __init__(self, model_path: Path, x: np.ndarray) -> None:
        self.name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
        self.it = iter(x[i : i + 1] for i in range(len(x)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Next {input: sample} or None at the end."""
        x = next(self.it, None)
        return None if x is None else {self.name: x}


def static(src: str, name: str, layout: str, fmt: QuantFormat, *, per_channel: bool, preprocess: bool, **kw: Any) -> dict[str, Any]:
    """quantize_static of corpus model ``src`` (optionally after quant_pre_process); returns the options used."""
    src_path = common.model_path(src)
    opts: dict[str, Any] = {
        "source_model": src,
        "quant_format": str(fmt),
        "per_channel": per_channel,
        "activation_type": str(kw.get("activation_type", QuantType.QInt8)),
        "weight_type": str(kw.get("weight_type", QuantType.QInt8)),
        "calibrate_method": "MinMax",
        "calibration": f"256 training samples ({layout.split('_')[0]})",
        "quant_pre_process": preprocess,
    }
    kw.setdefault("activation_type", QuantType.QInt8)
    kw.setdefault("weight_type", QuantType.QInt8)
    with tempfile.TemporaryDirectory() as tmp:
        inp = src_path
        if preprocess:
            inp = Path(tmp) / "pre.onnx"
            quant_pre_process(str(src_path), str(inp))
        quantize_static(
            str(inp), str(common.model_path(name)), Reader(src_path, calibration(layout)), quant_format=fmt, per_channel=per_channel, **kw
        )
    return opts


def dynamic(src: str, name: str, op_types: list[str], **kw: Any) -> dict[str, Any]:
    """quantize_dynamic of corpus model ``src``; returns the options used."""
    quantize_dynamic(
        str(common.model_path(src)), str(common.model_path(name)), op_types_to_quantize=op_types, weight_type=QuantType.QInt8, **kw
    )
    opts: dict[str, Any] = {"source_model": src, "op_types_to_quantize": op_types, "weight_type": "QInt8"}
    opts.update({k: str(v) for k, v in kw.items()})
    return opts


def entry(name: str, family: str, exporter: str, src: str, opts: dict[str, Any], features: list[str]) -> None:
    """Record one quantized model; data set, task and training come from the source model's fragment entry."""
    srcs = {
        e["name"]: e
        for f in common.FRAGMENTS.glob("gen_*.json")
        if f.name != "gen_ort_quant.json"
        for e in common.json.loads(f.read_text())
    }
    s = srcs[src]
    common.record(
        name,
        data=s["data"].split("/", 1)[1],
        family=family,
        exporter=exporter,
        exporter_version=ORTV,
        framework_version=f"onnxruntime {ORTV} (source: {s['family']} {src})",
        options=opts,
        features=features,
        task=s["task"],
        trained_on=s["trained_on"],
        notes=f"quantized from {src}",
    )


def main() -> None:
    """Quantize the chosen float corpus models, then write the fragment."""
    t0 = time.time()
    common.seed_everything()
    qs, qd = "onnxruntime.quantization.quantize_static", "onnxruntime.quantization.quantize_dynamic"
    qdq, qop = QuantFormat.QDQ, QuantFormat.QOperator

    opts = static("torch_dynamo_op18_cnn", "ort_qdq_s8_pertensor_cnn", "mnist_nchw", qdq, per_channel=False, preprocess=False)
    entry(
        "ort_qdq_s8_pertensor_cnn",
        "ort-qdq",
        qs,
        "torch_dynamo_op18_cnn",
        opts,
        ["QuantizeLinear", "DequantizeLinear", "per_tensor", "int8_activations", "Conv2d", "Gemm", "dynamic_batch"],
    )
    opts = static("torch_dynamo_op18_cnn", "ort_qdq_s8_perchannel_preproc_cnn", "mnist_nchw", qdq, per_channel=True, preprocess=True)
    entry(
        "ort_qdq_s8_perchannel_preproc_cnn",
        "ort-qdq",
        qs + " after quant_pre_process",
        "torch_dynamo_op18_cnn",
        opts,
        ["QuantizeLinear", "DequantizeLinear", "per_channel", "int8_activations", "quant_pre_process", "Conv2d", "Gemm", "dynamic_batch"],
    )
    opts = static("torch_ts_op13_mlp_view", "ort_qdq_s8_perchannel_mlp_view", "digits_nchw", qdq, per_channel=True, preprocess=False)
    entry(
        "ort_qdq_s8_perchannel_mlp_view",
        "ort-qdq",
        qs,
        "torch_ts_op13_mlp_view",
        opts,
        ["QuantizeLinear", "DequantizeLinear", "per_channel", "int8_activations", "view_reshape_subgraph", "Gemm", "dynamic_batch"],
    )
    opts = static(
        "tf2onnx_k2_cnn_concat",
        "ort_qdq_u8_pertensor_preproc_keras_concat",
        "digits_nhwc",
        qdq,
        per_channel=False,
        preprocess=True,
        activation_type=QuantType.QUInt8,
    )
    entry(
        "ort_qdq_u8_pertensor_preproc_keras_concat",
        "ort-qdq",
        qs + " after quant_pre_process",
        "tf2onnx_k2_cnn_concat",
        opts,
        [
            "QuantizeLinear",
            "DequantizeLinear",
            "per_tensor",
            "uint8_activations",
            "quant_pre_process",
            "channels_last",
            "Concatenate",
            "dynamic_batch",
        ],
    )
    opts = static("torch_ts_op17_cnn1d", "ort_qdq_s8_perchannel_cnn1d", "signal_ncw", qdq, per_channel=True, preprocess=True)
    entry(
        "ort_qdq_s8_perchannel_cnn1d",
        "ort-qdq",
        qs + " after quant_pre_process",
        "torch_ts_op17_cnn1d",
        opts,
        ["QuantizeLinear", "DequantizeLinear", "per_channel", "int8_activations", "quant_pre_process", "Conv1d", "dynamic_batch"],
    )
    opts = static(
        "torch_ts_op11_cnn_bn2d_relu6",
        "ort_qop_u8_cnn_relu6",
        "digits_nchw",
        qop,
        per_channel=False,
        preprocess=False,
        activation_type=QuantType.QUInt8,
    )
    entry(
        "ort_qop_u8_cnn_relu6",
        "ort-qoperator",
        qs,
        "torch_ts_op11_cnn_bn2d_relu6",
        opts,
        ["QLinearConv", "QGemm_com.microsoft", "QuantizeLinear", "DequantizeLinear", "per_tensor", "uint8_activations", "dynamic_batch"],
    )
    opts = static(
        "tf2onnx_k2_mlp5_dense",
        "ort_qop_u8_perchannel_keras_mlp5",
        "digits_flat",
        qop,
        per_channel=True,
        preprocess=True,
        activation_type=QuantType.QUInt8,
    )
    entry(
        "ort_qop_u8_perchannel_keras_mlp5",
        "ort-qoperator",
        qs + " after quant_pre_process",
        "tf2onnx_k2_mlp5_dense",
        opts,
        [
            "QLinearMatMul",
            "QLinearAdd_com.microsoft",
            "QuantizeLinear",
            "DequantizeLinear",
            "per_channel",
            "uint8_activations",
            "quant_pre_process",
            "dynamic_batch",
        ],
    )
    opts = dynamic("tf2onnx_k2_mlp5_dense", "ort_dynamic_keras_mlp5", ["MatMul"])
    entry(
        "ort_dynamic_keras_mlp5",
        "ort-dynamic",
        qd,
        "tf2onnx_k2_mlp5_dense",
        opts,
        ["DynamicQuantizeLinear", "MatMulInteger", "per_tensor", "dynamic_batch"],
    )
    opts = dynamic("torch_ts_op13_mobilenet_block", "ort_dynamic_mobilenet_block", ["Conv", "MatMul", "Gemm"])
    entry(
        "ort_dynamic_mobilenet_block",
        "ort-dynamic",
        qd,
        "torch_ts_op13_mobilenet_block",
        opts,
        ["DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "depthwise_conv", "per_tensor", "dynamic_batch"],
    )
    opts = dynamic("torch_ts_op13_mlp_bn1d_unsqueeze", "ort_dynamic_perchannel_mlp", ["MatMul", "Gemm"], per_channel=True)
    entry(
        "ort_dynamic_perchannel_mlp",
        "ort-dynamic",
        qd,
        "torch_ts_op13_mlp_bn1d_unsqueeze",
        opts,
        ["DynamicQuantizeLinear", "MatMulInteger", "per_channel", "Unsqueeze_axes_input", "dynamic_batch"],
    )
    common.write_fragment("gen_ort_quant")
    print(f"gen_ort_quant: {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
