"""Make examples/models/digits_cnn_logsoftmax.onnx: the bundled digits CNN with PyTorch's classic
``log_softmax`` head, an op hls4ml cannot implement, so ``edgec build`` places it on the board's CPU
(TVM) and the rest on the FPGA (what `make demo` shows).

The weights are the bundled model's (examples/train_digits_cnn.py); only a LogSoftmax node is
appended, so the accuracy is the same. Run: python examples/make_partitioned_example.py
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "models" / "digits_cnn.onnx"
OUTPUT = HERE / "models" / "digits_cnn_logsoftmax.onnx"


def main() -> None:
    model = onnx.load(SOURCE)
    graph = model.graph
    logits = graph.output[0]
    out_name = "log_probabilities"
    graph.node.append(helper.make_node("LogSoftmax", [logits.name], [out_name], axis=1, name="/log_softmax"))
    shape = [d.dim_value or d.dim_param for d in logits.type.tensor_type.shape.dim]
    graph.output.remove(logits)
    graph.output.append(helper.make_tensor_value_info(out_name, logits.type.tensor_type.elem_type, shape))
    onnx.checker.check_model(model)
    onnx.save(model, OUTPUT)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
