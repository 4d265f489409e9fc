"""QKeras models of the corpus, converted to QONNX with qonnx's Keras converter (``.venv-keras2``).

    .venv-keras2/bin/python benchmarks/corpus/gen_qkeras.py

``qonnx.converters.from_keras`` (qonnx 0.4.0: the converters were removed in qonnx 1.0.0) strips the
QKeras quantizers, converts the float Keras graph with tf2onnx and inserts qonnx ``Quant`` nodes; it also
fixes the graph input/output batch to 1 and runs shape inference. QKeras' ``quantized_bits`` must have
``alpha=1`` for the converter. Quantization-aware trained for a few epochs with fixed seeds.
"""

from __future__ import annotations

import importlib.metadata
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import gen_keras2 as k2  # noqa: E402
from gen_keras2 import L, keras, tf  # noqa: E402
from qkeras import QActivation, QConv2D, QDense, quantized_bits, quantized_relu  # noqa: E402
from qonnx.converters import from_keras  # noqa: E402

QKV = importlib.metadata.version("QKeras")
QOV = importlib.metadata.version("qonnx")


def qmlp(bits: int, name: str) -> keras.Model:
    """QDense 64-32-32-10 with ``quantized_bits(bits, 0, alpha=1)`` weights/biases and ``quantized_relu(bits)``."""
    q = quantized_bits(bits, 0, alpha=1)
    inp = keras.Input((64,), name="input")
    x = QDense(32, kernel_quantizer=q, bias_quantizer=q)(inp)
    x = QActivation(quantized_relu(bits))(x)
    x = QDense(32, kernel_quantizer=q, bias_quantizer=q)(x)
    x = QActivation(quantized_relu(bits))(x)
    x = QDense(10, kernel_quantizer=q, bias_quantizer=q)(x)
    return keras.Model(inp, L.Activation("softmax")(x), name=name)


def qcnn() -> keras.Model:
    """QConv2D-quantized_relu x2 (6-bit), MaxPooling2D, Flatten, QDense (6-bit), softmax, on 8x8x1 digits."""
    q = quantized_bits(6, 0, alpha=1)
    inp = keras.Input((8, 8, 1), name="input")
    x = QConv2D(8, 3, padding="same", kernel_quantizer=q, bias_quantizer=q)(inp)
    x = QActivation(quantized_relu(6))(x)
    x = QConv2D(16, 3, padding="same", kernel_quantizer=q, bias_quantizer=q)(x)
    x = QActivation(quantized_relu(6))(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    x = QDense(10, kernel_quantizer=q, bias_quantizer=q)(x)
    return keras.Model(inp, L.Activation("softmax")(x), name="qcnn")


def convert(model: keras.Model, name: str, opset: int | None) -> dict[str, Any]:
    """qonnx.converters.from_keras with a batch-None input signature; returns the options used."""
    shape = (None, *model.inputs[0].shape[1:])
    spec = (tf.TensorSpec(shape, tf.float32, name="input"),)
    from_keras(model, name=name, input_signature=spec, opset=opset, output_path=str(common.model_path(name)))
    return {"opset": opset, "input_signature": f"(tf.TensorSpec({list(shape)}, tf.float32, name='input'),)"}


def entry(name: str, data: str, opts: dict[str, Any], features: list[str], trained_on: str, **kw: Any) -> None:
    """Record one QKeras -> QONNX model."""
    common.record(
        name,
        data=data,
        family="qkeras-qonnx",
        exporter="qonnx.converters.from_keras (tf2onnx inside)",
        exporter_version=f"qonnx {QOV} / tf2onnx {k2.tf2onnx.__version__}",
        framework_version=f"qkeras {QKV} / tensorflow {k2.TFV}",
        options=opts,
        features=["channels_last", "fixed_batch_1", *features],
        task="classification",
        trained_on=trained_on,
        **kw,
    )


def main() -> None:
    """Train and convert every QKeras model, then write the fragment."""
    t0 = time.time()
    k2.setup()
    d = k2.datasets()
    files = d["files"]
    m = k2.fit(qmlp(6, "qmlp6"), d["digits_flat"], 30)
    opts = convert(m, "qkeras_qonnx_qdense_mlp_6b", 13)
    entry(
        "qkeras_qonnx_qdense_mlp_6b",
        files["digits_flat"],
        opts,
        ["Quant", "QDense", "quantized_bits_6", "quantized_relu_6", "softmax"],
        "digits",
    )
    opts = convert(m, "qkeras_qonnx_op9_qdense_mlp_6b", 9)
    entry(
        "qkeras_qonnx_op9_qdense_mlp_6b",
        files["digits_flat"],
        opts,
        ["Quant", "QDense", "quantized_bits_6", "quantized_relu_6", "softmax", "opset_9"],
        "digits",
        notes="same weights as qkeras_qonnx_qdense_mlp_6b, converted at opset 9",
    )
    keras.utils.set_random_seed(common.SEED)
    m = k2.fit(qmlp(4, "qmlp4"), d["digits_flat"], 30)
    opts = convert(m, "qkeras_qonnx_qdense_mlp_4b", 13)
    entry(
        "qkeras_qonnx_qdense_mlp_4b",
        files["digits_flat"],
        opts,
        ["Quant", "QDense", "quantized_bits_4", "quantized_relu_4", "softmax"],
        "digits",
    )
    keras.utils.set_random_seed(common.SEED)
    m = k2.fit(qcnn(), d["digits"], 15)
    opts = convert(m, "qkeras_qonnx_qconv2d_cnn", 13)
    entry(
        "qkeras_qonnx_qconv2d_cnn",
        files["digits_nhwc"],
        opts,
        ["Quant", "QConv2D", "QDense", "MaxPooling2D", "Flatten", "quantized_bits_6", "quantized_relu_6", "softmax"],
        "digits",
    )
    opts = convert(m, "qkeras_qonnx_op11_qconv2d_cnn", 11)
    entry(
        "qkeras_qonnx_op11_qconv2d_cnn",
        files["digits_nhwc"],
        opts,
        ["Quant", "QConv2D", "QDense", "MaxPooling2D", "Flatten", "quantized_bits_6", "quantized_relu_6", "softmax", "opset_11"],
        "digits",
        notes="same weights as qkeras_qonnx_qconv2d_cnn, converted at opset 11",
    )
    common.write_fragment("gen_qkeras")
    print(f"gen_qkeras: {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
