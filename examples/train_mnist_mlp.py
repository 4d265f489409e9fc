"""Train a small float MNIST MLP (784-128-64-10, ReLU, logits out) for the quantization benchmark.

    python examples/train_mnist_mlp.py

Data: the MNIST test split (t10k) in ../shared/data/mnist (idx format). The network trains on
images 0-7999 and is evaluated on 8000-9999; benchmarks/quantization.py lets the quantization
passes see 8000-8999 and reports accuracy on 9000-9999. Writes examples/models/mnist_mlp.onnx
(committed). Deterministic (seed 0); trains in a few seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from example_training import fit, load_mnist, report_and_export
from torch import nn

HERE = Path(__file__).resolve().parent
N_TRAIN = 8000
EPOCHS = 12


class MnistMLP(nn.Module):
    """flatten - fc 784->128 - relu - fc 128->64 - relu - fc 64->10 (logits, no softmax)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.flatten(x, 1))


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    x, y = load_mnist()
    model = MnistMLP()
    fit(model, x[:N_TRAIN], y[:N_TRAIN], epochs=EPOCHS, lr=1e-3, weight_decay=1e-5)
    report_and_export(model, x[N_TRAIN:], y[N_TRAIN:], HERE / "models" / "mnist_mlp.onnx")


if __name__ == "__main__":
    main()
