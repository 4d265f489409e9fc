"""Train a small MNIST CNN (LeNet-like) for the pruning benchmark and export it as ONNX.

    python examples/train_mnist_cnn.py

Data: the MNIST test split (t10k) in ../shared/data/mnist (idx format). The network trains on
images 0-7999; benchmarks/pruning.py lets the pruning passes see 8000-8999 and reports accuracy
on 9000-9999. Writes examples/models/mnist_cnn.onnx (committed). Deterministic (seed 0).
"""

from __future__ import annotations

from pathlib import Path

import torch
from example_training import fit, load_mnist, report_and_export
from torch import nn

HERE = Path(__file__).resolve().parent
N_TRAIN = 8000


class MnistCNN(nn.Module):
    """conv 1->16 (3x3) - relu - maxpool - conv 16->32 (3x3) - relu - maxpool - fc 800->64 - relu - fc 64->10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(32 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    x, y = load_mnist()
    model = MnistCNN()
    fit(model, x[:N_TRAIN], y[:N_TRAIN], epochs=8, lr=2e-3)
    report_and_export(model, x[N_TRAIN:], y[N_TRAIN:], HERE / "models" / "mnist_cnn.onnx")


if __name__ == "__main__":
    main()
