"""Train the bundled example: a small CNN on scikit-learn's 8x8 digits (ships offline), export ONNX.

    python examples/train_digits_cnn.py

Writes examples/models/digits_cnn.onnx (committed) and examples/data/digits_test.npz (held-out
inputs in the model's NCHW layout with labels) for `edgec build --data`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from example_training import fit
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 8, kernel_size=3),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def main() -> None:
    torch.manual_seed(0)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # N,1,8,8 in [0, 1]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=300, random_state=0, stratify=y)
    model = DigitsCNN()
    fit(model, x_train, y_train, epochs=60, lr=1e-2, batch=128)
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    print(f"test accuracy {accuracy:.4f}")
    (HERE / "models").mkdir(exist_ok=True)
    (HERE / "data").mkdir(exist_ok=True)
    torch.onnx.export(
        model,
        torch.zeros(1, 1, 8, 8),
        HERE / "models" / "digits_cnn.onnx",
        input_names=["image"],
        output_names=["logits"],
        opset_version=13,
        dynamo=False,
    )
    np.savez_compressed(HERE / "data" / "digits_test.npz", x=x_test, y=y_test)


if __name__ == "__main__":
    main()
