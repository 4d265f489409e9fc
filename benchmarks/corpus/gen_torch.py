"""PyTorch models of the corpus, exported with both of torch.onnx's exporters (main venv).

    .venv/bin/python benchmarks/corpus/gen_torch.py

TorchScript exporter (``dynamo=False``) at opsets 9, 11, 13 and 17 and the torch.export-based one
(``dynamo=True``) at opsets 18 and 20. Every model is trained briefly (seconds) on digits, MNIST or the
synthetic 1-D task (see common.py) with fixed seeds, then exported. Also holds the torch training
helpers that gen_brevitas.py reuses.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

warnings.filterwarnings("ignore")
TV = torch.__version__.split("+")[0]


# ----------------------------------------------------------------------------- training helpers
def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 5,
    lr: float = 3e-3,
    batch: int = 64,
    loss: str = "ce",
    seed: int = 0,
) -> nn.Module:
    """Train ``model`` with Adam on (x, y) for a few epochs (cross-entropy, or MSE when ``loss='mse'``)."""
    torch.manual_seed(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    yt = torch.from_numpy(np.ascontiguousarray(y))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            out = model(xt[idx])
            err = F.cross_entropy(out, yt[idx]) if loss == "ce" else F.mse_loss(out, yt[idx])
            opt.zero_grad()
            err.backward()
            opt.step()
    model.eval()
    return model


def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on (x, y) in eval mode."""
    model.eval()
    with torch.no_grad():
        return common.accuracy(model(torch.from_numpy(x)).numpy(), y)


def datasets() -> dict[str, Any]:
    """All float data sets in the layouts the torch/brevitas models take (N, C, ...) plus shared data files."""
    dx, dy, dxt, dyt = common.load_digits_split()
    mx, my, mxt, myt = common.load_mnist_split()
    sx, sy, sxt, syt = common.signal_split()
    n = common.N_HELDOUT
    d: dict[str, Any] = {
        "digits": (dx[:, None], dy, dxt[:n, None], dyt[:n]),
        "mnist": ((mx[:, None] / 255.0).astype(np.float32), my, (mxt[:n, None] / 255.0).astype(np.float32), myt[:n]),
        "signal": (sx[:, None], sy, sxt[:, None], syt),
    }
    d["files"] = {
        "digits_nchw": common.save_data("digits_nchw", d["digits"][2], d["digits"][3]),
        "digits_flat": common.save_data("digits_flat", d["digits"][2].reshape(n, -1), d["digits"][3]),
        "mnist_nchw": common.save_data("mnist_nchw", d["mnist"][2], d["mnist"][3]),
        "mnist_flat": common.save_data("mnist_flat", d["mnist"][2].reshape(n, -1), d["mnist"][3]),
        "signal_ncw": common.save_data("signal_ncw", d["signal"][2], d["signal"][3]),
    }
    return d


def sr_data(n_train: int = 48) -> tuple[np.ndarray, np.ndarray, str]:
    """Super-resolution pairs: MNIST digits resized to 128x128 (input) and 256x256 (target).

    Returns the training inputs, the training targets and the shared held-out data file (64 inputs,
    images 9000-9063, no labels).
    """
    mx, _, mxt, _ = common.load_mnist_split()

    def up(a: np.ndarray, s: int) -> np.ndarray:
        t = torch.from_numpy((a[:, None] / 255.0).astype(np.float32))
        return F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False).numpy()

    xtr, ytr = up(mx[:n_train], 128), up(mx[:n_train], 256)
    xte = np.round(up(mxt[: common.N_HELDOUT], 128) * 255.0) / 255.0
    return xtr, ytr, common.save_data("mnist_sr128_nchw", xte.astype(np.float32))


# ----------------------------------------------------------------------------- models
class MlpView(nn.Module):
    """digits (N,1,8,8) -> x.view(x.size(0), -1) -> 64-32-32-10 (Gemm)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.size(0), -1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class MlpDropout(nn.Module):
    """digits flat (N,64) -> 64-64-Dropout-32-Dropout-10."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CnnBnRelu6(nn.Module):
    """digits (N,1,8,8): Conv-BN2d-ReLU6 x2, MaxPool, nn.Flatten, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MlpMatmulHardtanh(nn.Module):
    """digits flat (N,64): x @ W + b (MatMul+Add) with Hardtanh(0, 4) between layers."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(64, 48, generator=g) * 0.15)
        self.b1 = nn.Parameter(torch.zeros(48))
        self.w2 = nn.Parameter(torch.randn(48, 10, generator=g) * 0.15)
        self.b2 = nn.Parameter(torch.zeros(10))
        self.act = nn.Hardtanh(0.0, 4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.act(x @ self.w1 + self.b1), self.w2) + self.b2


class MlpBn1dUnsqueeze(nn.Module):
    """digits flat (N,64): MatMul+Add, BatchNorm1d, ReLU, unsqueeze(1)/squeeze(1) around a 1-D max, Linear."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = nn.Parameter(torch.randn(64, 64, generator=g) * 0.12)
        self.b = nn.Parameter(torch.zeros(64))
        self.bn = nn.BatchNorm1d(64)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(torch.matmul(x, self.w) + self.b))
        h = torch.unsqueeze(h, 1)  # (N, 1, 64)
        h = F.max_pool1d(h, 2)  # (N, 1, 32)
        return self.fc(torch.squeeze(h, 1))


class MobileNetBlock(nn.Module):
    """MNIST (N,1,28,28): stem conv s2, depthwise 3x3 + BN + ReLU6, pointwise + BN, residual Add, ReLU6, GAP, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16))
        self.act = nn.ReLU6()
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU6())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = self.act(h + self.pw(self.dw(h)))
        h = self.down(h)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class Cnn1d(nn.Module):
    """signal (N,1,64): Conv1d-BN1d-ReLU-MaxPool1d x2, Flatten, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, 8, 5, padding=2),
            nn.BatchNorm1d(8),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(8, 16, 5, padding=2),
            nn.BatchNorm1d(16),
            nn.ReLU(),
            nn.MaxPool1d(4),
            nn.Flatten(),
            nn.Linear(16 * 8, 4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MnistCnn(nn.Module):
    """MNIST (N,1,28,28): Conv-BN-ReLU-MaxPool x2, Flatten, Linear-ReLU-Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MnistMlpWide(nn.Module):
    """MNIST flat (N,784): 784-64-32-10, ~52k parameters (the external-data export)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SrUpsample(nn.Module):
    """x2 super-resolution (N,1,128,128) -> (N,1,256,256): conv features, nn.Upsample (Resize), conv."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.tail = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.up(self.head(x))) + F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class SrPixelShuffle(nn.Module):
    """ESPCN-style x2 super-resolution (N,1,128,128) -> (N,1,256,256): convs, 4 channels, nn.PixelShuffle (DepthToSpace)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2),
            nn.Tanh(),
            nn.Conv2d(16, 8, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(8, 4, 3, padding=1),
            nn.PixelShuffle(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------- exporters
DYN_AXES = {"input": {0: "batch"}, "output": {0: "batch"}}


def export_ts(model: nn.Module, example: torch.Tensor, name: str, opset: int, *, dynamic: bool = True, **kw: Any) -> dict[str, Any]:
    """torch.onnx.export(dynamo=False); returns the options used (for the manifest)."""
    opts: dict[str, Any] = {"dynamo": False, "opset_version": opset, "input_names": ["input"], "output_names": ["output"]}
    if dynamic:
        opts["dynamic_axes"] = DYN_AXES
    opts.update(kw)
    model.eval()
    torch.onnx.export(model, (example,), str(common.model_path(name)), **opts)
    return {k: (str(v) if k == "training" else v) for k, v in opts.items()}


def export_dynamo(model: nn.Module, example: torch.Tensor, name: str, opset: int, *, dynamic: bool = True, **kw: Any) -> dict[str, Any]:
    """torch.onnx.export(dynamo=True); returns the options used (for the manifest)."""
    opts: dict[str, Any] = {
        "dynamo": True,
        "opset_version": opset,
        "input_names": ["input"],
        "output_names": ["output"],
        "external_data": False,
    }
    if dynamic:
        opts["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=1024)},)
    opts.update(kw)
    model.eval()
    torch.onnx.export(model, (example,), str(common.model_path(name)), verbose=False, **opts)
    shown = dict(opts)
    if dynamic:
        shown["dynamic_shapes"] = "({0: Dim('batch', min=1, max=1024)},)"
    return shown


def ts_entry(
    name: str, data: str, opts: dict[str, Any], features: list[str], trained_on: str, task: str = "classification", **kw: Any
) -> None:
    """Record a TorchScript-exporter model."""
    common.record(
        name,
        data=data,
        family="torch-torchscript",
        exporter="torch.onnx.export (TorchScript, dynamo=False)",
        exporter_version=TV,
        framework_version=TV,
        options=opts,
        features=features,
        task=task,
        trained_on=trained_on,
        **kw,
    )


def dynamo_entry(
    name: str, data: str, opts: dict[str, Any], features: list[str], trained_on: str, task: str = "classification", **kw: Any
) -> None:
    """Record a dynamo-exporter model."""
    import onnxscript

    common.record(
        name,
        data=data,
        family="torch-dynamo",
        exporter=f"torch.onnx.export (dynamo=True, onnxscript {onnxscript.__version__})",
        exporter_version=TV,
        framework_version=TV,
        options=opts,
        features=features,
        task=task,
        trained_on=trained_on,
        **kw,
    )


def trained(make: Callable[[], nn.Module], data: tuple, epochs: int, lr: float = 3e-3, flat: bool = False) -> nn.Module:
    """Build a model under seed 0 and train it on a (x, y, xt, yt) tuple; prints held-out accuracy."""
    torch.manual_seed(0)
    model = make()
    x, y, xt, yt = data
    if flat:
        x, xt = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
    fit(model, x, y, epochs=epochs, lr=lr)
    print(f"    {type(model).__name__}: torch held-out acc {torch_accuracy(model, xt, yt):.3f}", flush=True)
    return model


def main() -> None:
    """Train and export every torch model, then write the fragment."""
    t0 = time.time()
    common.seed_everything()
    torch.set_num_threads(2)
    d = datasets()
    files = d["files"]
    dig1 = torch.zeros(1, 1, 8, 8)
    digf = torch.zeros(1, 64)
    mn1 = torch.zeros(1, 1, 28, 28)

    # --- TorchScript exporter
    m = trained(MlpView, d["digits"], 30)
    opts = export_ts(m, dig1, "torch_ts_op9_mlp_view_kiai", 9, keep_initializers_as_inputs=True)
    ts_entry(
        "torch_ts_op9_mlp_view_kiai",
        files["digits_nchw"],
        opts,
        ["Gemm", "view_reshape_subgraph", "keep_initializers_as_inputs", "dynamic_batch"],
        "digits",
    )
    opts = export_ts(m, dig1, "torch_ts_op13_mlp_view", 13)
    ts_entry("torch_ts_op13_mlp_view", files["digits_nchw"], opts, ["Gemm", "view_reshape_subgraph", "dynamic_batch"], "digits")

    m = trained(MlpDropout, d["digits"], 30, flat=True)
    opts = export_ts(m, digf, "torch_ts_op9_mlp_dropout_trainmode", 9, training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    ts_entry(
        "torch_ts_op9_mlp_dropout_trainmode",
        files["digits_flat"],
        opts,
        ["Gemm", "Dropout_node", "dynamic_batch"],
        "digits",
        notes="exported with training=TrainingMode.TRAINING (a common mistake): the Dropout nodes stay in the graph; Dropout-7 is an identity at inference",
    )

    m = trained(CnnBnRelu6, d["digits"], 15)
    opts = export_ts(m, dig1, "torch_ts_op11_cnn_bn2d_relu6", 11)
    ts_entry(
        "torch_ts_op11_cnn_bn2d_relu6",
        files["digits_nchw"],
        opts,
        ["Conv2d", "BatchNorm2d_folded", "ReLU6_Clip_inputs", "MaxPool", "Flatten", "Gemm", "dynamic_batch"],
        "digits",
    )
    opts = export_ts(m, dig1, "torch_ts_op9_cnn_bn2d_relu6_nofold", 9, do_constant_folding=False, dynamic=False)
    ts_entry(
        "torch_ts_op9_cnn_bn2d_relu6_nofold",
        files["digits_nchw"],
        opts,
        ["Conv2d", "BatchNormalization", "ReLU6_Clip_attrs", "MaxPool", "Flatten", "Gemm", "fixed_batch_1"],
        "digits",
    )

    m = trained(MlpMatmulHardtanh, d["digits"], 30, flat=True)
    opts = export_ts(m, digf, "torch_ts_op11_mlp_matmul_hardtanh_kiai", 11, keep_initializers_as_inputs=True)
    ts_entry(
        "torch_ts_op11_mlp_matmul_hardtanh_kiai",
        files["digits_flat"],
        opts,
        ["MatMul_Add", "Hardtanh_Clip_inputs", "keep_initializers_as_inputs", "dynamic_batch"],
        "digits",
    )

    m = trained(MlpBn1dUnsqueeze, d["digits"], 30, flat=True)
    opts = export_ts(m, digf, "torch_ts_op13_mlp_bn1d_unsqueeze", 13)
    ts_entry(
        "torch_ts_op13_mlp_bn1d_unsqueeze",
        files["digits_flat"],
        opts,
        ["MatMul_Add", "BatchNorm1d", "Unsqueeze_axes_input", "Squeeze_axes_input", "MaxPool1d", "Gemm", "dynamic_batch"],
        "digits",
    )
    opts = export_ts(m, digf, "torch_ts_op11_mlp_bn1d_unsqueeze_nofold", 11, do_constant_folding=False)
    ts_entry(
        "torch_ts_op11_mlp_bn1d_unsqueeze_nofold",
        files["digits_flat"],
        opts,
        ["MatMul_Add", "BatchNormalization", "Unsqueeze_axes_attr", "Squeeze_axes_attr", "MaxPool1d", "Gemm", "dynamic_batch"],
        "digits",
    )

    m = trained(MobileNetBlock, d["mnist"], 3)
    opts = export_ts(m, mn1, "torch_ts_op13_mobilenet_block", 13)
    ts_entry(
        "torch_ts_op13_mobilenet_block",
        files["mnist_nchw"],
        opts,
        ["Conv2d", "depthwise_conv", "pointwise_conv", "ReLU6_Clip_inputs", "residual_Add", "GlobalAveragePool", "Gemm", "dynamic_batch"],
        "mnist",
    )
    mobilenet = m

    m = trained(Cnn1d, d["signal"], 8)
    opts = export_ts(m, torch.zeros(1, 1, 64), "torch_ts_op17_cnn1d", 17)
    ts_entry(
        "torch_ts_op17_cnn1d",
        files["signal_ncw"],
        opts,
        ["Conv1d", "BatchNorm1d_folded", "MaxPool1d", "Flatten", "Gemm", "dynamic_batch"],
        "synthetic",
    )
    cnn1d = m

    m = trained(MnistCnn, d["mnist"], 3)
    mnist_cnn = m
    name = "torch_ts_op17_cnn_vi_batch1"
    opts = export_ts(m, mn1, name, 17, dynamic=False)
    # what users do to a batch-1 export: onnx's own tool makes the graph input/output batch symbolic and
    # leaves every intermediate value_info at batch 1
    from onnx.tools import update_model_dims

    mp = onnx.load(str(common.model_path(name)))
    mp = onnx.shape_inference.infer_shapes(mp)
    mp = update_model_dims.update_inputs_outputs_dims(mp, {"input": ["N", 1, 28, 28]}, {"output": ["N", 10]})
    onnx.save(mp, str(common.model_path(name)))
    opts["post_export"] = (
        "onnx.shape_inference.infer_shapes + onnx.tools.update_model_dims.update_inputs_outputs_dims(input/output batch 'N')"
    )
    ts_entry(
        name,
        files["mnist_nchw"],
        opts,
        ["Conv2d", "BatchNorm2d_folded", "MaxPool", "Flatten", "Gemm", "dynamic_batch", "value_info_batch_1"],
        "mnist",
        notes="input and output batch are symbolic ('N') while every intermediate value_info says batch 1",
    )
    opts = export_ts(m, mn1, "torch_ts_op13_cnn_static", 13, dynamic=False)
    ts_entry(
        "torch_ts_op13_cnn_static",
        files["mnist_nchw"],
        opts,
        ["Conv2d", "BatchNorm2d_folded", "MaxPool", "Flatten", "Gemm", "fixed_batch_1"],
        "mnist",
    )

    # super-resolution (large activations), trained for a few steps
    xs, ys, sr_file = sr_data()
    torch.manual_seed(0)
    sr = SrUpsample()
    fit(sr, xs, ys, epochs=4, lr=2e-3, batch=8, loss="mse")
    opts = export_ts(sr, torch.zeros(1, 1, 128, 128), "torch_ts_op13_sr_upsample_128", 13)
    ts_entry(
        "torch_ts_op13_sr_upsample_128",
        sr_file,
        opts,
        ["Conv2d", "Upsample_Resize_nearest", "interpolate_Resize_bilinear", "residual_Add", "dynamic_batch", "image_128x128"],
        "mnist",
        task="image_to_image",
        size="large",
        notes="x2 super-resolution of MNIST digits resized to 128x128; trained 4 epochs on 48 images (MSE)",
    )
    torch.manual_seed(0)
    sr = SrPixelShuffle()
    fit(sr, xs, ys, epochs=4, lr=2e-3, batch=8, loss="mse")
    opts = export_ts(sr, torch.zeros(1, 1, 128, 128), "torch_ts_op11_sr_pixelshuffle_128", 11)
    ts_entry(
        "torch_ts_op11_sr_pixelshuffle_128",
        sr_file,
        opts,
        ["Conv2d", "Tanh", "PixelShuffle_DepthToSpace", "dynamic_batch", "image_128x128"],
        "mnist",
        task="image_to_image",
        size="large",
        notes="ESPCN-style x2 super-resolution; trained 4 epochs on 48 images (MSE)",
    )
    opts = export_dynamo(sr, torch.zeros(2, 1, 128, 128), "torch_dynamo_op18_sr_pixelshuffle_128", 18)
    dynamo_entry(
        "torch_dynamo_op18_sr_pixelshuffle_128",
        sr_file,
        opts,
        ["Conv2d", "Tanh", "PixelShuffle_DepthToSpace", "dynamic_batch", "image_128x128"],
        "mnist",
        task="image_to_image",
        size="large",
        notes="same weights as torch_ts_op11_sr_pixelshuffle_128",
    )

    # --- dynamo exporter
    opts = export_dynamo(mnist_cnn, torch.zeros(2, 1, 28, 28), "torch_dynamo_op18_cnn", 18)
    dynamo_entry(
        "torch_dynamo_op18_cnn",
        files["mnist_nchw"],
        opts,
        ["Conv2d", "BatchNorm2d_folded", "MaxPool", "Flatten_as_Reshape", "Gemm", "dynamic_batch"],
        "mnist",
    )
    m = trained(MlpView, d["digits"], 30)
    opts = export_dynamo(m, torch.zeros(2, 1, 8, 8), "torch_dynamo_op20_mlp_view", 20)
    dynamo_entry("torch_dynamo_op20_mlp_view", files["digits_nchw"], opts, ["Gemm", "view_Reshape_const_shape", "dynamic_batch"], "digits")
    opts = export_dynamo(cnn1d, torch.zeros(2, 1, 64), "torch_dynamo_op18_cnn1d", 18)
    dynamo_entry(
        "torch_dynamo_op18_cnn1d",
        files["signal_ncw"],
        opts,
        ["Conv1d", "BatchNorm1d_folded", "MaxPool1d", "Flatten_as_Reshape", "Gemm", "dynamic_batch"],
        "synthetic",
    )
    opts = export_dynamo(mobilenet, torch.zeros(1, 1, 28, 28), "torch_dynamo_op18_mobilenet_block_static", 18, dynamic=False)
    dynamo_entry(
        "torch_dynamo_op18_mobilenet_block_static",
        files["mnist_nchw"],
        opts,
        ["Conv2d", "depthwise_conv", "pointwise_conv", "ReLU6_Clip", "residual_Add", "GAP_as_ReduceMean", "Gemm", "fixed_batch_1"],
        "mnist",
    )
    m = trained(MlpBn1dUnsqueeze, d["digits"], 30, flat=True)
    opts = export_dynamo(m, torch.zeros(2, 64), "torch_dynamo_op20_mlp_bn1d_unsqueeze", 20)
    dynamo_entry(
        "torch_dynamo_op20_mlp_bn1d_unsqueeze",
        files["digits_flat"],
        opts,
        ["MatMul_Add", "BatchNorm1d", "Unsqueeze_axes_input", "Squeeze_axes_input", "MaxPool1d", "Gemm", "dynamic_batch"],
        "digits",
    )
    m = trained(MlpMatmulHardtanh, d["digits"], 30, flat=True)
    opts = export_dynamo(m, torch.zeros(2, 64), "torch_dynamo_op18_mlp_matmul_hardtanh_kiai", 18, keep_initializers_as_inputs=True)
    dynamo_entry(
        "torch_dynamo_op18_mlp_matmul_hardtanh_kiai",
        files["digits_flat"],
        opts,
        ["MatMul_Add", "Hardtanh_Clip", "keep_initializers_as_inputs", "dynamic_batch"],
        "digits",
    )
    m = trained(MnistMlpWide, d["mnist"], 4, flat=True)
    name = "torch_dynamo_op18_mlp_external_data"
    opts = export_dynamo(m, torch.zeros(2, 784), name, 18, external_data=True)
    dynamo_entry(
        name,
        files["mnist_flat"],
        opts,
        ["Gemm", "external_data", "dynamic_batch"],
        "mnist",
        extra_files=[f"{name}.onnx.data"],
    )
    # drop empty side files the dynamo exporter writes next to inline-only models
    for p in common.MODELS.glob("*.onnx.data"):
        if p.stat().st_size == 0:
            p.unlink()
    common.write_fragment("gen_torch")
    print(f"gen_torch: {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
