"""Train the example binary neural network (BNN): a Brevitas MLP on MNIST, exported to QONNX.

    python examples/train_mnist_bnn.py [--mnist DIR]

Data: the MNIST *test* split (t10k, 10,000 images, idx format) from ``--mnist`` (default: the
shared ``/work/shared/data/mnist``). The network is trained on its first 8,000 images and
evaluated on the last 2,000 (held out); nothing else of MNIST is used. Seeded, deterministic on CPU.

Network (784 -> 256 -> 256 -> 10): the input is the raw pixel value (0..255, as float32) through an
unsigned 8-bit quantizer of constant scale 1 (a QONNX ``Quant`` that passes integers through, so
the FPGA design needs no input rescaling), then three ``QuantLinear`` layers with
binary weights (``SignedBinaryWeightPerTensorConst``: sign(latent), scale 1; ``BipolarQuant`` in
QONNX), BatchNorm and binary activations (``SignedBinaryActPerTensorConst``: sign, ``BipolarQuant``)
between them. The outputs are integer class scores. Latent weights are clipped to [-1, 1]
(BinaryConnect), so their magnitude says how settled each binary weight is -- the ranking
``--prune bnn-latent`` uses.

Writes:

- ``examples/models/mnist_bnn_mlp.onnx`` and a copy ``tests/data/mnist_bnn_mlp.onnx``;
- ``tests/data/mnist_bnn_eval.npz``: the first 1,000 held-out images (x: N x 784 uint8 pixel
  values, the model's input as integers; y: labels) for the tests;
- ``examples/data/mnist_bnn_test.npz``: the first 200 of them, for ``edgec build --data``.

It prints the held-out accuracy of the float (PyTorch/Brevitas) model and of the exported QONNX
model under qonnx execution (they must agree), then checks ``edgec.estimate`` and ``edgec.build``.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import brevitas.nn as qnn
import numpy as np
import torch
from brevitas.export import export_qonnx
from brevitas.inject.enum import ScalingImplType
from brevitas.quant import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst, Uint8ActPerTensorFloat
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED_MNIST = Path("/work/shared/data/mnist")
N_TRAIN, N_EVAL_SAVED, N_EXAMPLE_SAVED = 8000, 1000, 200
HIDDEN = 256
EPOCHS = 30
SEED = 0
# The integer scores (up to +-256) are scaled down for the softmax in the loss only.
LOGIT_SCALE = 1.0 / 16.0


def read_idx(path: Path) -> np.ndarray:
    """An idx(-gz) array: big-endian header (magic, dims), then unsigned bytes."""
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist_test(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x: N x 784 float32 pixel values 0..255, y: int64 labels) of the t10k split in ``folder``."""

    def find(stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
        raise FileNotFoundError(f"{folder}: no {stem}(.gz)")

    images = read_idx(find("t10k-images-idx3-ubyte"))
    labels = read_idx(find("t10k-labels-idx1-ubyte"))
    return images.reshape(len(images), -1).astype(np.float32), labels.astype(np.int64)


class MnistBnn(nn.Module):
    """Integer 8-bit input, then binary-weight layers with BatchNorm and sign activations."""

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        # unsigned 8-bit, constant scale 255 / (2**8 - 1) = 1: pixel values pass through unchanged
        self.inp = qnn.QuantIdentity(
            act_quant=Uint8ActPerTensorFloat, scaling_impl_type=ScalingImplType.CONST, scaling_init=255.0, return_quant_tensor=True
        )
        self.fc1 = qnn.QuantLinear(784, hidden, bias=False, weight_quant=SignedBinaryWeightPerTensorConst)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.act1 = qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True)
        self.fc2 = qnn.QuantLinear(hidden, hidden, bias=False, weight_quant=SignedBinaryWeightPerTensorConst)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.act2 = qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True)
        self.fc3 = qnn.QuantLinear(hidden, 10, bias=False, weight_quant=SignedBinaryWeightPerTensorConst)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.fc1(self.inp(x))))
        x = self.act2(self.bn2(self.fc2(x)))
        return self.fc3(x)

    def clip_latent(self) -> None:
        """Keep the latent weights in [-1, 1] (BinaryConnect)."""
        with torch.no_grad():
            for layer in (self.fc1, self.fc2, self.fc3):
                layer.weight.clamp_(-1.0, 1.0)


def train(x: np.ndarray, y: np.ndarray) -> MnistBnn:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    net = MnistBnn()
    data, labels = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS)
    generator = torch.Generator().manual_seed(SEED)
    for _epoch in range(EPOCHS):
        net.train()
        perm = torch.randperm(len(data), generator=generator)
        for i in range(0, len(data), 100):
            idx = perm[i : i + 100]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(data[idx]) * LOGIT_SCALE, labels[idx])
            loss.backward()
            optimizer.step()
            net.clip_latent()
        schedule.step()
    net.eval()
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=SHARED_MNIST, help="folder with t10k-images-idx3-ubyte(.gz) and labels")
    parser.add_argument("--skip-build", action="store_true", help="do not run edgec.build on the export")
    args = parser.parse_args()
    torch.set_num_threads(2)
    x, y = load_mnist_test(args.mnist)
    x_train, y_train, x_test, y_test = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
    started = time.perf_counter()
    net = train(x_train, y_train)
    with torch.no_grad():
        float_acc = float((net(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
        train_acc = float((net(torch.from_numpy(x_train)).argmax(1).numpy() == y_train).mean())
    print(f"trained in {time.perf_counter() - started:.1f} s: train accuracy {train_acc:.4f}, held-out (2000) accuracy {float_acc:.4f}")

    model_path = HERE / "models" / "mnist_bnn_mlp.onnx"
    model_path.parent.mkdir(exist_ok=True)
    export_qonnx(net, torch.zeros(1, 784), export_path=str(model_path), dynamo=False)
    shutil.copyfile(model_path, REPO / "tests" / "data" / "mnist_bnn_mlp.onnx")
    pixels = x_test.astype(np.uint8)  # exact: the inputs are integers 0..255
    np.savez_compressed(REPO / "tests" / "data" / "mnist_bnn_eval.npz", x=pixels[:N_EVAL_SAVED], y=y_test[:N_EVAL_SAVED])
    (HERE / "data").mkdir(exist_ok=True)
    np.savez_compressed(HERE / "data" / "mnist_bnn_test.npz", x=pixels[:N_EXAMPLE_SAVED], y=y_test[:N_EXAMPLE_SAVED])
    saved = {"x": x_test[:N_EVAL_SAVED], "y": y_test[:N_EVAL_SAVED]}

    from qonnx.core.modelwrapper import ModelWrapper

    from edgec.frontend.load import load_model
    from edgec.passes.prune.common import model_outputs

    model: ModelWrapper = load_model(model_path).model
    outputs = model_outputs(model, x_test)
    qonnx_acc = float((outputs.argmax(-1) == y_test).mean())
    with torch.no_grad():
        torch_out = net(torch.from_numpy(x_test)).numpy()
    print(
        f"exported QONNX (qonnx execution) held-out accuracy {qonnx_acc:.4f}; max |torch - qonnx| = {np.abs(torch_out - outputs).max():.3g}"
    )
    if args.skip_build:
        return
    import edgec
    from edgec.pipeline.estimate import estimate

    est = estimate(str(model_path), target="pynq-z2", data=saved["x"])
    print("estimate totals:", est["totals"])
    with tempfile.TemporaryDirectory() as tmp:
        result = edgec.build(str(model_path), target="pynq-z2", output_dir=Path(tmp) / "bnn", data=(saved["x"], saved["y"]))
        ver = result.report["verification"]
        print(
            f"build verified: argmax agreement {ver['argmax_agreement']}, max abs error {ver['max_abs_error']}, "
            f"accuracy reference {ver.get('accuracy_reference')} simulated {ver.get('accuracy_simulated')}"
        )


if __name__ == "__main__":
    main()
