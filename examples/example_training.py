"""What the example training scripts share: the MNIST test split and a plain training loop."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import nn

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """MNIST t10k images as N,1,28,28 floats in [0, 1] and their labels (../shared/data/mnist, idx)."""
    images = np.frombuffer(gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())[16:], dtype=np.uint8)
    labels = np.frombuffer(gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:], dtype=np.uint8)
    return (images.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32), labels.astype(np.int64)


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch: int = 64, weight_decay: float = 0.0) -> None:
    """Adam on cross-entropy over shuffled mini-batches (the caller seeds torch)."""
    data, labels = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _epoch in range(epochs):
        perm = torch.randperm(len(data))
        for i in range(0, len(data), batch):
            idx = perm[i : i + batch]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(data[idx]), labels[idx])
            loss.backward()
            optimizer.step()
    model.eval()


def report_and_export(model: nn.Module, x_held: np.ndarray, y_held: np.ndarray, path: Path) -> None:
    """Print the held-out accuracy (MNIST t10k 8000-9999) and export ``model`` to ONNX at ``path``
    (opset 13, TorchScript exporter, input ``x`` of shape 1x1x28x28, output ``logits``)."""
    with torch.no_grad():
        held = model(torch.from_numpy(x_held)).argmax(1).numpy()
    print(f"held-out accuracy (t10k 8000-9999): {(held == y_held).mean():.4f}")
    path.parent.mkdir(exist_ok=True)
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), path, input_names=["x"], output_names=["logits"], opset_version=13, dynamo=False)
    print(f"wrote {path}")
