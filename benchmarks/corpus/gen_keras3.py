"""Keras 3 (TF >= 2.16 backend) models of the corpus (``.venv-keras3``).

    .venv-keras3/bin/python benchmarks/corpus/gen_keras3.py

Keras 3's own ONNX path, ``model.export(path, format="onnx")`` (with the TensorFlow backend it traces a
tf.function and hands it to ``tf2onnx.convert.from_function``), and tf2onnx's ``from_function`` called
directly on a ``tf.function`` of the model (tf2onnx's ``from_keras`` does not support Keras 3 models).
Trained for a few epochs with fixed seeds.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
from keras import layers as L  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

KV = importlib.metadata.version("keras")
TFV = tf.__version__


def fit(model: keras.Model, data: tuple, epochs: int) -> keras.Model:
    """Adam, sparse categorical cross-entropy, batch 64, silent; prints held-out accuracy."""
    x, y, xt, yt = data
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    print(f"    {model.name}: keras held-out acc {common.accuracy(model.predict(xt, verbose=0), yt):.3f}", flush=True)
    return model


def entry(name: str, data: str, exporter: str, opts: dict[str, Any], features: list[str], trained_on: str) -> None:
    """Record one Keras 3 model."""
    common.record(
        name,
        data=data,
        family="keras3",
        exporter=exporter,
        exporter_version=f"keras {KV} / tf2onnx {tf2onnx.__version__}",
        framework_version=f"tensorflow {TFV} / keras {KV}",
        options=opts,
        features=["channels_last", *features],
        task="classification",
        trained_on=trained_on,
    )


def main() -> None:
    """Train and export the Keras 3 models, then write the fragment."""
    t0 = time.time()
    common.seed_everything()
    keras.utils.set_random_seed(common.SEED)
    tf.config.experimental.enable_op_determinism()
    dx, dy, dxt, dyt = common.load_digits_split()
    sx, sy, sxt, syt = common.signal_split()
    n = common.N_HELDOUT
    digits = (dx[..., None], dy, dxt[:n, ..., None], dyt[:n])
    flat = (dx.reshape(len(dx), -1), dy, dxt[:n].reshape(n, -1), dyt[:n])
    signal = (sx[..., None], sy, sxt[..., None], syt)
    f_nhwc = common.save_data("digits_nhwc", digits[2], digits[3])
    f_flat = common.save_data("digits_flat", flat[2], flat[3])
    f_sig = common.save_data("signal_nwc", signal[2], signal[3])

    inp = keras.Input((8, 8, 1), name="input")
    x = L.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = L.Flatten()(x)
    m = fit(keras.Model(inp, L.Dense(10, activation="softmax")(x), name="k3_cnn"), digits, 15)
    name = "keras3_export_cnn_bn"
    m.export(str(common.model_path(name)), format="onnx", opset_version=18, verbose=False)
    entry(
        name,
        f_nhwc,
        'keras.Model.export(format="onnx")',
        {"format": "onnx", "opset_version": 18},
        ["Conv2D", "BatchNormalization", "MaxPooling2D", "Flatten", "Dense", "dynamic_batch"],
        "digits",
    )

    inp = keras.Input((64,), name="input")
    x = L.Dense(64, activation="relu")(inp)
    x = L.Dropout(0.2)(x)
    x = L.Dense(32, activation="relu")(x)
    m = fit(keras.Model(inp, L.Dense(10, activation="softmax")(x), name="k3_mlp"), flat, 30)
    name = "keras3_export_mlp_dropout"
    m.export(str(common.model_path(name)), format="onnx", verbose=False)
    entry(
        name,
        f_flat,
        'keras.Model.export(format="onnx")',
        {"format": "onnx", "opset_version": None},
        ["Dense", "Dropout_layer", "dynamic_batch"],
        "digits",
    )

    inp = keras.Input((64, 1), name="input")
    x = L.Conv1D(8, 5, padding="same", activation="relu")(inp)
    x = L.MaxPooling1D(2)(x)
    x = L.Conv1D(16, 5, padding="same", activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    m = fit(keras.Model(inp, L.Dense(4, activation="softmax")(x), name="k3_conv1d"), signal, 15)
    name = "keras3_tf2onnx_function_conv1d"
    spec = (tf.TensorSpec((None, 64, 1), tf.float32, name="input"),)
    fn = tf.function(lambda t: m(t, training=False), input_signature=spec)
    tf2onnx.convert.from_function(fn, input_signature=spec, opset=17, output_path=str(common.model_path(name)))
    entry(
        name,
        f_sig,
        "tf2onnx.convert.from_function",
        {
            "opset": 17,
            "input_signature": "(tf.TensorSpec([None, 64, 1], tf.float32, name='input'),)",
            "function": "tf.function(lambda t: model(t, training=False))",
        },
        ["Conv1D", "MaxPooling1D", "GlobalAveragePooling1D", "Dense", "dynamic_batch"],
        "synthetic",
    )
    common.write_fragment("gen_keras3")
    print(f"gen_keras3: {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
