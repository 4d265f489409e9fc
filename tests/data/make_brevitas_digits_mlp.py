"""Regenerate brevitas_digits_mlp.onnx: a Brevitas MLP on scikit-learn digits with default float-scale
quantizers (8-bit input, 4-bit weights and activations, BatchNorm before a QuantReLU), exported with
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
        self.fc1 = qnn.QuantLinear(64, 32, bias=False, weight_bit_width=4)
        self.bn1 = nn.BatchNorm1d(32)
        self.act1 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
        self.fc2 = qnn.QuantLinear(32, 10, bias=True, weight_bit_width=4)

    def forward(self, x):
        return self.fc2(self.act1(self.bn1(self.fc1(self.inp(x)))))


def main() -> None:
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    net.eval()
    print("train accuracy", (net(x).argmax(1) == y).float().mean().item())
    export_qonnx(net, torch.zeros(1, 64), export_path="brevitas_digits_mlp.onnx", dynamo=False)


if __name__ == "__main__":
    main()
