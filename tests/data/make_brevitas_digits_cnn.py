"""Regenerate brevitas_digits_cnn.onnx: a Brevitas CNN on scikit-learn's 8x8 digits with default
float-scale quantizers: QuantConv -> BatchNorm -> QuantReLU -> MaxPool -> QuantConv -> BatchNorm ->
QuantReLU -> QuantLinear (8-bit input, 4-bit weights and activations), exported with
brevitas.export.export_qonnx. Run from tests/data/ with the project venv.
"""

import brevitas.nn as qnn
import torch
from brevitas.export import export_qonnx
from sklearn.datasets import load_digits
from torch import nn


class Net(nn.Module):
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


def main() -> None:
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(digits.target)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    net.eval()
    print("train accuracy", (net(x).argmax(1) == y).float().mean().item())
    export_qonnx(net, torch.zeros(1, 1, 8, 8), export_path="brevitas_digits_cnn.onnx", dynamo=False)


if __name__ == "__main__":
    main()
