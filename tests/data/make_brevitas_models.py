"""Regenerate the two Brevitas test models, trained on scikit-learn's digits with Brevitas 0.13.4
defaults (learned float scales; 8-bit input, 4-bit weights and activations) and exported with
brevitas.export.export_qonnx. Run from tests/data/ with the project venv:

- brevitas_digits_mlp.onnx: QuantLinear -> BatchNorm -> QuantReLU -> QuantLinear on 64 features
- brevitas_digits_cnn.onnx: QuantConv -> BatchNorm -> QuantReLU -> MaxPool -> QuantConv -> BatchNorm
  -> QuantReLU -> QuantLinear on 8x8 images
"""

import brevitas.nn as qnn
import torch
from brevitas.export import export_qonnx
from sklearn.datasets import load_digits
from torch import nn


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = qnn.QuantIdentity(bit_width=8, return_quant_tensor=True)
        self.fc1 = qnn.QuantLinear(64, 32, bias=False, weight_bit_width=4)
        self.bn1 = nn.BatchNorm1d(32)
        self.act1 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
        self.fc2 = qnn.QuantLinear(32, 10, bias=True, weight_bit_width=4)

    def forward(self, x):
        return self.fc2(self.act1(self.bn1(self.fc1(self.inp(x)))))


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = qnn.QuantIdentity(bit_width=8, return_quant_tensor=True)
        self.c1 = qnn.QuantConv2d(1, 8, 3, padding=1, bias=False, weight_bit_width=4)
        self.bn1 = nn.BatchNorm2d(8)
        self.a1 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
        self.p1 = nn.MaxPool2d(2)
        self.c2 = qnn.QuantConv2d(8, 16, 3, bias=False, weight_bit_width=4)
        self.bn2 = nn.BatchNorm2d(16)
        self.a2 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
        self.fc = qnn.QuantLinear(16 * 2 * 2, 10, bias=True, weight_bit_width=4)

    def forward(self, x):
        x = self.p1(self.a1(self.bn1(self.c1(self.inp(x)))))
        x = self.a2(self.bn2(self.c2(x)))
        return self.fc(torch.flatten(x, 1))


def train_and_export(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, path: str) -> None:
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(epochs):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    net.eval()
    print(path, "train accuracy", (net(x).argmax(1) == y).float().mean().item())
    export_qonnx(net, torch.zeros(1, *x.shape[1:]), export_path=path, dynamo=False)


def main() -> None:
    digits = load_digits()
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    train_and_export(DigitsMLP(), torch.tensor(digits.data / 16.0, dtype=torch.float32), y, 40, "brevitas_digits_mlp.onnx")
    torch.manual_seed(0)
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    train_and_export(DigitsCNN(), images, y, 60, "brevitas_digits_cnn.onnx")


if __name__ == "__main__":
    main()
