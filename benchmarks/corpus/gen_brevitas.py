"""Brevitas models of the corpus: QONNX (export_qonnx), QCDQ (export_onnx_qcdq) and FINN-style BNNs (main venv).

    .venv/bin/python benchmarks/corpus/gen_brevitas.py

Quantization-aware trained for a few epochs (seconds) on digits or MNIST with fixed seeds. The only
edits after export are the ones FINN users make with qonnx's ModelWrapper: a datatype annotation on the
graph input (UINT8 / BIPOLAR), and (one model) relabelling the default-domain opset to 9 when Brevitas
cannot export at opset 9 itself; the manifest ``options`` name every such edit.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import brevitas
import brevitas.nn as qnn
import numpy as np
import onnx
import torch
from brevitas.export import export_onnx_qcdq, export_qonnx
from brevitas.quant import (
    Int8ActPerTensorFloat,
    Int8WeightPerChannelFloat,
    Int8WeightPerTensorFloat,
    SignedBinaryActPerTensorConst,
    SignedBinaryWeightPerTensorConst,
    Uint8ActPerTensorFloat,
)
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from gen_torch import datasets, fit, torch_accuracy  # noqa: E402

warnings.filterwarnings("ignore")
TV = torch.__version__.split("+")[0]
BV = brevitas.__version__


class QMlp(nn.Module):
    """digits flat (N,64): QuantIdentity input, QuantLinear-BN1d-QuantReLU x2, QuantLinear."""

    def __init__(self, w_bits: int, a_bits: int, per_channel: bool, bn: bool = True) -> None:
        super().__init__()
        wq = Int8WeightPerChannelFloat if per_channel else Int8WeightPerTensorFloat
        self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, bit_width=8, return_quant_tensor=True)
        self.fc1 = qnn.QuantLinear(64, 48, bias=not bn, weight_quant=wq, weight_bit_width=w_bits)
        self.bn1 = nn.BatchNorm1d(48) if bn else nn.Identity()
        self.a1 = qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat, bit_width=a_bits, return_quant_tensor=True)
        self.fc2 = qnn.QuantLinear(48, 32, bias=not bn, weight_quant=wq, weight_bit_width=w_bits)
        self.bn2 = nn.BatchNorm1d(32) if bn else nn.Identity()
        self.a2 = qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat, bit_width=a_bits, return_quant_tensor=True)
        self.fc3 = qnn.QuantLinear(32, 10, bias=True, weight_quant=wq, weight_bit_width=w_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        x = self.a1(self.bn1(self.fc1(x)))
        x = self.a2(self.bn2(self.fc2(x)))
        return self.fc3(x)


class QCnn(nn.Module):
    """digits (N,1,8,8): QuantIdentity, QuantConv2d-BN2d-QuantReLU x2, MaxPool, Flatten, QuantLinear."""

    def __init__(self, w_bits: int, a_bits: int, per_channel: bool) -> None:
        super().__init__()
        wq = Int8WeightPerChannelFloat if per_channel else Int8WeightPerTensorFloat
        self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, bit_width=8, return_quant_tensor=True)
        self.c1 = qnn.QuantConv2d(1, 8, 3, padding=1, bias=False, weight_quant=wq, weight_bit_width=w_bits)
        self.bn1 = nn.BatchNorm2d(8)
        self.a1 = qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat, bit_width=a_bits, return_quant_tensor=True)
        self.c2 = qnn.QuantConv2d(8, 16, 3, padding=1, bias=False, weight_quant=wq, weight_bit_width=w_bits)
        self.bn2 = nn.BatchNorm2d(16)
        self.a2 = qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat, bit_width=a_bits, return_quant_tensor=True)
        self.pool = nn.MaxPool2d(2)
        self.fc = qnn.QuantLinear(16 * 4 * 4, 10, bias=True, weight_quant=wq, weight_bit_width=w_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        x = self.a1(self.bn1(self.c1(x)))
        x = self.pool(self.a2(self.bn2(self.c2(x))))
        return self.fc(torch.flatten(x, 1))


class QCnn1d(nn.Module):
    """signal (N,1,64): QuantIdentity, QuantConv1d-BN1d-QuantReLU-MaxPool1d x2, Flatten, QuantLinear."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, bit_width=8, return_quant_tensor=True)
        self.c1 = qnn.QuantConv1d(1, 8, 5, padding=2, bias=False, weight_bit_width=4)
        self.bn1 = nn.BatchNorm1d(8)
        self.a1 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
        self.c2 = qnn.QuantConv1d(8, 16, 5, padding=2, bias=False, weight_bit_width=4)
        self.bn2 = nn.BatchNorm1d(16)
        self.a2 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
        self.fc = qnn.QuantLinear(16 * 8, 4, bias=True, weight_bit_width=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        x = nn.functional.max_pool1d(self.a1(self.bn1(self.c1(x))), 2)
        x = nn.functional.max_pool1d(self.a2(self.bn2(self.c2(x))), 4)
        return self.fc(torch.flatten(x, 1))


class BnnMlp(nn.Module):
    """FINN TFC-style binarized MLP on MNIST (N,784).

    ``preproc=True``: the graph starts with x*2-1 (pixel 0..1 -> -1..1) and a bipolar (sign) input
    quantizer; otherwise the input is taken as already bipolar (+-1) and goes straight into the first
    binary-weight layer. Binary weights, BatchNorm1d, sign activations; the last layer's scores are
    float.
    """

    def __init__(self, preproc: bool, hidden: int = 64) -> None:
        super().__init__()
        self.preproc = preproc
        self.inp = qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True) if preproc else None
        layers: list[nn.Module] = []
        fan_in = 784
        for _ in range(3):
            layers += [
                qnn.QuantLinear(fan_in, hidden, bias=False, weight_quant=SignedBinaryWeightPerTensorConst),
                nn.BatchNorm1d(hidden),
                qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True),
            ]
            fan_in = hidden
        self.features = nn.Sequential(*layers)
        self.out = qnn.QuantLinear(hidden, 10, bias=False, weight_quant=SignedBinaryWeightPerTensorConst)
        self.out_bn = nn.BatchNorm1d(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inp is not None:
            x = self.inp(2.0 * x - 1.0)
        return self.out_bn(self.out(self.features(x)))


class Uint8InputMlp(nn.Module):
    """MNIST pixels 0..255 (N,784): x/255, 8-bit unsigned input quantizer, 4-bit weights/activations MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = qnn.QuantIdentity(act_quant=Uint8ActPerTensorFloat, bit_width=8, return_quant_tensor=True)
        self.fc1 = qnn.QuantLinear(784, 64, bias=True, weight_bit_width=4)
        self.a1 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
        self.fc2 = qnn.QuantLinear(64, 32, bias=True, weight_bit_width=4)
        self.a2 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
        self.fc3 = qnn.QuantLinear(32, 10, bias=True, weight_bit_width=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x / 255.0)
        return self.fc3(self.a2(self.fc2(self.a1(self.fc1(x)))))


def entry(name: str, data: str, family: str, exporter: str, opts: dict[str, Any], features: list[str], trained_on: str, **kw: Any) -> None:
    """Record one Brevitas model (adds ``initializers_as_inputs`` when the export lists parameters as graph inputs)."""
    mp = onnx.load(str(common.model_path(name)), load_external_data=False)
    if {i.name for i in mp.graph.input} & {t.name for t in mp.graph.initializer}:
        features = [*features, "initializers_as_inputs"]
    common.record(
        name,
        data=data,
        family=family,
        exporter=exporter,
        exporter_version=BV,
        framework_version=f"torch {TV}",
        options=opts,
        features=features,
        task="classification",
        trained_on=trained_on,
        **kw,
    )


def qonnx(model: nn.Module, example: torch.Tensor, name: str, **kw: Any) -> dict[str, Any]:
    """brevitas.export.export_qonnx (TorchScript-based unless dynamo=True is given)."""
    opts: dict[str, Any] = {"dynamo": False}
    opts.update(kw)
    model.eval()
    export_qonnx(model, example, export_path=str(common.model_path(name)), **opts)
    return opts


def qcdq(model: nn.Module, example: torch.Tensor, name: str, **kw: Any) -> dict[str, Any]:
    """brevitas.export.export_onnx_qcdq."""
    opts: dict[str, Any] = {"dynamo": False, "opset_version": 13}
    opts.update(kw)
    model.eval()
    export_onnx_qcdq(model, example, export_path=str(common.model_path(name)), **opts)
    return opts


def annotate_input(name: str, dtype: str) -> str:
    """qonnx ModelWrapper: set the graph input's datatype annotation and save back; returns the option text."""
    path = str(common.model_path(name))
    mw = ModelWrapper(path)
    mw.set_tensor_datatype(mw.graph.input[0].name, DataType[dtype])
    mw.save(path)
    return f'ModelWrapper.set_tensor_datatype(input, DataType["{dtype}"]) after export'


def trained(model: nn.Module, data: tuple, epochs: int, flat: bool = False, lr: float = 3e-3) -> nn.Module:
    """Train a (seeded, already built) model and print its held-out accuracy."""
    x, y, xt, yt = data
    if flat:
        x, xt = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
    fit(model, x, y, epochs=epochs, lr=lr)
    print(f"    {type(model).__name__}: torch held-out acc {torch_accuracy(model, xt, yt):.3f}", flush=True)
    return model


def main() -> None:
    """Train and export every Brevitas model, then write the fragment."""
    t0 = time.time()
    common.seed_everything()
    torch.set_num_threads(2)
    d = datasets()
    files = d["files"]
    dig1, digf = torch.zeros(1, 1, 8, 8), torch.zeros(1, 64)
    q_exp = "brevitas.export.export_qonnx"
    c_exp = "brevitas.export.export_onnx_qcdq"

    torch.manual_seed(0)
    m = trained(QMlp(4, 4, per_channel=False), d["digits"], 20, flat=True)
    opts = qonnx(m, digf, "brevitas_qonnx_mlp_w4a4_pertensor_bn")
    entry(
        "brevitas_qonnx_mlp_w4a4_pertensor_bn",
        files["digits_flat"],
        "brevitas-qonnx",
        q_exp,
        opts,
        ["Quant", "input_quantizer", "per_tensor_scale", "BatchNorm1d", "w4a4", "fixed_batch_1"],
        "digits",
    )
    opts = qonnx(m, digf, "brevitas_qonnx_op9_mlp_w4a4", opset_version=9)
    relabel = ""
    mp = onnx.load(str(common.model_path("brevitas_qonnx_op9_mlp_w4a4")))
    default = [o.version for o in mp.opset_import if o.domain in ("", "ai.onnx")]
    if default and default[0] != 9:
        # Brevitas ignored the request: relabel by hand (every standard op in this graph is opset-9 valid)
        for o in mp.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = 9
        onnx.save(mp, str(common.model_path("brevitas_qonnx_op9_mlp_w4a4")))
        relabel = f"default-domain opset_import relabelled {default[0]} -> 9 by hand"
        opts["hand_edit"] = relabel
    entry(
        "brevitas_qonnx_op9_mlp_w4a4",
        files["digits_flat"],
        "brevitas-qonnx",
        q_exp,
        opts,
        ["Quant", "input_quantizer", "per_tensor_scale", "BatchNorm1d", "w4a4", "opset_9", "fixed_batch_1"],
        "digits",
        notes="same weights as brevitas_qonnx_mlp_w4a4_pertensor_bn" + (f"; {relabel}" if relabel else ""),
    )
    opts = qcdq(m, digf, "brevitas_qcdq_mlp_w4a4_pertensor_bn")
    entry(
        "brevitas_qcdq_mlp_w4a4_pertensor_bn",
        files["digits_flat"],
        "brevitas-qcdq",
        c_exp,
        opts,
        ["QuantizeLinear", "Clip", "DequantizeLinear", "input_quantizer", "per_tensor_scale", "BatchNorm1d", "w4a4", "fixed_batch_1"],
        "digits",
        notes="same weights as brevitas_qonnx_mlp_w4a4_pertensor_bn",
    )

    torch.manual_seed(0)
    m = trained(QMlp(8, 8, per_channel=True, bn=False), d["digits"], 20, flat=True)
    opts = qcdq(m, digf, "brevitas_qcdq_mlp_w8a8_perchannel")
    entry(
        "brevitas_qcdq_mlp_w8a8_perchannel",
        files["digits_flat"],
        "brevitas-qcdq",
        c_exp,
        opts,
        ["QuantizeLinear", "DequantizeLinear", "input_quantizer", "per_channel_scale", "w8a8", "fixed_batch_1"],
        "digits",
    )
    name = "brevitas_qonnx_dynamo_mlp_w8a8_perchannel"
    opts = qonnx(m, digf, name, dynamo=True)
    opts["external_data"] = "True (torch.onnx.export's default; Brevitas passes it through)"
    data_file = common.MODELS / f"{name}.onnx.data"
    extra = [data_file.name] if data_file.is_file() and data_file.stat().st_size else []
    if data_file.is_file() and not extra:
        data_file.unlink()
    entry(
        "brevitas_qonnx_dynamo_mlp_w8a8_perchannel",
        files["digits_flat"],
        "brevitas-qonnx",
        q_exp,
        opts,
        ["Quant", "input_quantizer", "per_channel_scale", "w8a8", "fixed_batch_1", "torch_dynamo_export"]
        + (["external_data"] if extra else []),
        "digits",
        extra_files=extra,
        notes="same weights as brevitas_qcdq_mlp_w8a8_perchannel; Brevitas' torch.export-based QONNX manager"
        + ("; the weights went to the .onnx.data file (the exporter's default)" if extra else ""),
    )

    torch.manual_seed(0)
    m = trained(QCnn(4, 4, per_channel=True), d["digits"], 6)
    opts = qonnx(m, dig1, "brevitas_qonnx_cnn_w4a4_perchannel_bn")
    entry(
        "brevitas_qonnx_cnn_w4a4_perchannel_bn",
        files["digits_nchw"],
        "brevitas-qonnx",
        q_exp,
        opts,
        ["Quant", "Conv2d", "input_quantizer", "per_channel_scale", "BatchNorm2d", "MaxPool", "w4a4", "fixed_batch_1"],
        "digits",
    )
    opts = qcdq(m, dig1, "brevitas_qcdq_cnn_w4a4_perchannel_bn")
    entry(
        "brevitas_qcdq_cnn_w4a4_perchannel_bn",
        files["digits_nchw"],
        "brevitas-qcdq",
        c_exp,
        opts,
        [
            "QuantizeLinear",
            "Clip",
            "DequantizeLinear",
            "Conv2d",
            "input_quantizer",
            "per_channel_scale",
            "BatchNorm2d",
            "MaxPool",
            "w4a4",
            "fixed_batch_1",
        ],
        "digits",
        notes="same weights as brevitas_qonnx_cnn_w4a4_perchannel_bn",
    )
    torch.manual_seed(0)
    m = trained(QCnn(8, 8, per_channel=False), d["digits"], 6)
    opts = qcdq(m, dig1, "brevitas_qcdq_cnn_w8a8_pertensor_bn")
    entry(
        "brevitas_qcdq_cnn_w8a8_pertensor_bn",
        files["digits_nchw"],
        "brevitas-qcdq",
        c_exp,
        opts,
        [
            "QuantizeLinear",
            "DequantizeLinear",
            "Conv2d",
            "input_quantizer",
            "per_tensor_scale",
            "BatchNorm2d",
            "MaxPool",
            "w8a8",
            "fixed_batch_1",
        ],
        "digits",
    )
    opts = qonnx(m, dig1, "brevitas_qonnx_cnn_w8a8_pertensor_bn")
    entry(
        "brevitas_qonnx_cnn_w8a8_pertensor_bn",
        files["digits_nchw"],
        "brevitas-qonnx",
        q_exp,
        opts,
        ["Quant", "Conv2d", "input_quantizer", "per_tensor_scale", "BatchNorm2d", "MaxPool", "w8a8", "fixed_batch_1"],
        "digits",
        notes="same weights as brevitas_qcdq_cnn_w8a8_pertensor_bn",
    )

    torch.manual_seed(0)
    m = trained(QCnn1d(), d["signal"], 5)
    opts = qonnx(m, torch.zeros(1, 1, 64), "brevitas_qonnx_cnn1d_w4a4")
    entry(
        "brevitas_qonnx_cnn1d_w4a4",
        files["signal_ncw"],
        "brevitas-qonnx",
        q_exp,
        opts,
        ["Quant", "Conv1d", "input_quantizer", "per_tensor_scale", "BatchNorm1d", "MaxPool1d", "w4a4", "fixed_batch_1"],
        "synthetic",
    )

    # FINN-style binarized networks on MNIST
    mx, my, mxt, myt = d["mnist"]
    mflat = (mx.reshape(len(mx), -1), my, mxt.reshape(len(mxt), -1), myt)
    torch.manual_seed(0)
    m = trained(BnnMlp(preproc=True), mflat, 2, lr=5e-3)
    opts = qonnx(m, torch.zeros(1, 784), "brevitas_qonnx_bnn_preproc")
    entry(
        "brevitas_qonnx_bnn_preproc",
        files["mnist_flat"],
        "brevitas-qonnx",
        q_exp,
        opts,
        ["BipolarQuant", "input_preprocessing_mul_add", "binary_weights", "binary_activations", "BatchNorm1d", "fixed_batch_1"],
        "mnist",
        notes="TFC-like 784-64-64-64-10 BNN; the graph computes x*2-1 on the 0..1 pixels before the bipolar input quantizer",
    )
    bip = np.where(mflat[2] > 0.5, 1.0, -1.0).astype(np.float32)
    bip_train = np.where(mflat[0] > 0.5, 1.0, -1.0).astype(np.float32)
    bip_file = common.save_data("mnist_flat_bipolar", bip, myt)
    torch.manual_seed(0)
    m = trained(BnnMlp(preproc=False), (bip_train, my, bip, myt), 2, lr=5e-3)
    name = "finn_onnx_tfc_bnn_bipolar_input"
    opts = qonnx(m, torch.zeros(1, 784), name)
    opts["hand_edit"] = annotate_input(name, "BIPOLAR")
    entry(
        name,
        bip_file,
        "finn-onnx",
        q_exp + " + qonnx ModelWrapper",
        opts,
        ["BipolarQuant", "binary_weights", "binary_activations", "BatchNorm1d", "input_datatype_BIPOLAR", "fixed_batch_1"],
        "mnist",
        notes="TFC-like BNN on MNIST binarized at 0.5 to +-1; graph input annotated BIPOLAR",
    )
    u8 = np.round(mflat[2] * 255.0).astype(np.float32)
    u8_file = common.save_data("mnist_flat_0to255", u8, myt)
    torch.manual_seed(0)
    m = trained(Uint8InputMlp(), (np.round(mflat[0] * 255.0).astype(np.float32), my, u8, myt), 4)
    name = "finn_onnx_mlp_uint8_input"
    opts = qonnx(m, torch.zeros(1, 784), name)
    opts["hand_edit"] = annotate_input(name, "UINT8")
    entry(
        name,
        u8_file,
        "finn-onnx",
        q_exp + " + qonnx ModelWrapper",
        opts,
        ["Quant", "input_preprocessing_div", "input_datatype_UINT8", "w4a4", "fixed_batch_1"],
        "mnist",
        notes="input is raw pixel values 0..255 as float32, annotated UINT8; the graph divides by 255 first",
    )
    common.write_fragment("gen_brevitas")
    print(f"gen_brevitas: {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
