"""Keras 2 (TF 2.15) models of the corpus, converted with tf2onnx (``.venv-keras2``).

    .venv-keras2/bin/python benchmarks/corpus/gen_keras2.py

Channels-last CNNs (Conv1D/Conv2D/SeparableConv2D/DepthwiseConv2D/Conv2DTranspose, BatchNormalization,
Concatenate and Add branches, UpSampling2D, a 32x32 U-Net), Dense MLPs, fixed batch 1 and dynamic batch,
ReLU6 and older opsets (9/11, as keras2onnx-era files had). Trained for a few epochs with fixed seeds
(``tf.keras.utils.set_random_seed`` + op determinism). Also holds the Keras helpers gen_qkeras.py reuses.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
from tensorflow import keras  # noqa: E402
from tensorflow.keras import layers  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TFV = tf.__version__
KV = importlib.metadata.version("keras")
L = layers


def setup() -> None:
    """Seeds, op determinism and 2 threads."""
    common.seed_everything()
    keras.utils.set_random_seed(common.SEED)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(2)


def datasets() -> dict[str, Any]:
    """Channels-last data sets and their shared data files."""
    dx, dy, dxt, dyt = common.load_digits_split()
    mx, my, mxt, myt = common.load_mnist_split()
    sx, sy, sxt, syt = common.signal_split()
    n = common.N_HELDOUT
    d: dict[str, Any] = {
        "digits": (dx[..., None], dy, dxt[:n, ..., None], dyt[:n]),
        "digits_flat": (dx.reshape(len(dx), -1), dy, dxt[:n].reshape(n, -1), dyt[:n]),
        "mnist": ((mx[..., None] / 255.0).astype(np.float32), my, (mxt[:n, ..., None] / 255.0).astype(np.float32), myt[:n]),
        "signal": (sx[..., None], sy, sxt[..., None], syt),
    }
    d["files"] = {
        "digits_nhwc": common.save_data("digits_nhwc", d["digits"][2], d["digits"][3]),
        "digits_flat": common.save_data("digits_flat", d["digits_flat"][2], d["digits_flat"][3]),
        "mnist_nhwc": common.save_data("mnist_nhwc", d["mnist"][2], d["mnist"][3]),
        "signal_nwc": common.save_data("signal_nwc", d["signal"][2], d["signal"][3]),
    }
    return d


def denoise_data(size: int, n_train: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNIST denoising at ``size`` x ``size`` (28 or 32, zero-padded): noisy train inputs, clean targets, noisy held-out."""
    mx, _, mxt, _ = common.load_mnist_split()
    pad = (size - 28) // 2

    def prep(a: np.ndarray) -> np.ndarray:
        a = (a / 255.0).astype(np.float32)[..., None]
        return np.pad(a, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else a

    rng = np.random.RandomState(3)
    clean, clean_t = prep(mx[:n_train]), prep(mxt[: common.N_HELDOUT])
    noisy = np.clip(clean + 0.3 * rng.randn(*clean.shape), 0, 1).astype(np.float32)
    noisy_t = np.clip(clean_t + 0.3 * rng.randn(*clean_t.shape), 0, 1).astype(np.float32)
    noisy_t = np.round(noisy_t * 255.0) / 255.0
    return noisy, clean, noisy_t.astype(np.float32)


def fit(model: keras.Model, data: tuple, epochs: int, loss: str = "sparse_categorical_crossentropy", lr: float = 3e-3) -> keras.Model:
    """Compile with Adam and train for a few epochs (batch 64, silent); prints held-out accuracy for classifiers."""
    x, y, xt, yt = data
    metrics = ["accuracy"] if "categorical" in loss else []
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=metrics)
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, shuffle=True)
    if yt is not None and "categorical" in loss:
        print(f"    {model.name}: keras held-out acc {common.accuracy(model.predict(xt, verbose=0), yt):.3f}", flush=True)
    return model


def convert(model: keras.Model, name: str, opset: int, *, batch: int | None = None, **kw: Any) -> dict[str, Any]:
    """tf2onnx.convert.from_keras with an explicit input signature; returns the options used."""
    shape = (batch, *model.inputs[0].shape[1:])
    spec = (tf.TensorSpec(shape, tf.float32, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=str(common.model_path(name)), **kw)
    opts: dict[str, Any] = {"opset": opset, "input_signature": f"(tf.TensorSpec({list(shape)}, tf.float32, name='input'),)"}
    opts.update(kw)
    return opts


def entry(
    name: str, data: str, opts: dict[str, Any], features: list[str], trained_on: str, task: str = "classification", **kw: Any
) -> None:
    """Record one tf2onnx-converted Keras 2 model."""
    common.record(
        name,
        data=data,
        family="tf2onnx-keras2",
        exporter="tf2onnx.convert.from_keras",
        exporter_version=tf2onnx.__version__,
        framework_version=f"tensorflow {TFV} / keras {KV}",
        options=opts,
        features=["channels_last", *features],
        task=task,
        trained_on=trained_on,
        **kw,
    )


# ----------------------------------------------------------------------------- models
def cnn_maxpool_dense(shape: tuple[int, ...], name: str, batch_size: int | None = None) -> keras.Model:
    """Conv2D-MaxPooling2D x2, Flatten, Dense-ReLU, Dense, Activation('softmax')."""
    inp = keras.Input(shape, batch_size=batch_size, name="input")
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = L.MaxPooling2D(2)(x)
    x = L.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    x = L.Dense(32, activation="relu")(x)
    x = L.Dense(10)(x)
    return keras.Model(inp, L.Activation("softmax")(x), name=name)


def mlp5() -> keras.Model:
    """5 Dense layers on flat digits (64-64-48-32-16-10), softmax inside the last Dense."""
    inp = keras.Input((64,), name="input")
    x = inp
    for units in (64, 48, 32, 16):
        x = L.Dense(units, activation="relu")(x)
    return keras.Model(inp, L.Dense(10, activation="softmax")(x), name="mlp5")


def conv1d() -> keras.Model:
    """Conv1D-BN-ReLU-MaxPooling1D, Conv1D-ReLU, GlobalAveragePooling1D, Dense softmax on (64, 1)."""
    inp = keras.Input((64, 1), name="input")
    x = L.Conv1D(8, 5, padding="same")(inp)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.ReLU()(x)
    x = L.MaxPooling1D(2)(x)
    x = L.Conv1D(16, 5, padding="same", activation="relu")(x)
    x = L.MaxPooling1D(2)(x)
    x = L.Flatten()(x)
    return keras.Model(inp, L.Dense(4, activation="softmax")(x), name="conv1d")


def separable() -> keras.Model:
    """Conv2D-BN-ReLU, SeparableConv2D-BN-ReLU, GlobalAveragePooling2D, Dense, Softmax layer."""
    inp = keras.Input((8, 8, 1), name="input")
    x = L.Conv2D(16, 3, padding="same", use_bias=False)(inp)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.ReLU()(x)
    x = L.SeparableConv2D(32, 3, padding="same", use_bias=False)(x)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Softmax()(L.Dense(10)(x)), name="separable")


def depthwise_relu6() -> keras.Model:
    """MNIST: Conv2D s2, DepthwiseConv2D-BN-relu6, Conv2D 1x1-BN-relu6, GlobalAveragePooling2D, Dense."""
    inp = keras.Input((28, 28, 1), name="input")
    x = L.Conv2D(16, 3, strides=2, padding="same", activation=tf.nn.relu6)(inp)
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.Activation(tf.nn.relu6)(x)
    x = L.Conv2D(32, 1, use_bias=False)(x)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.Activation(tf.nn.relu6)(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(10, activation="softmax")(x), name="depthwise_relu6")


def concat_branches() -> keras.Model:
    """Two branches (3x3 and 1x1 Conv2D) joined by Concatenate, MaxPooling2D, Flatten, Dense softmax."""
    inp = keras.Input((8, 8, 1), name="input")
    a = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    b = L.Conv2D(4, 1, padding="same", activation="relu")(inp)
    x = L.Concatenate()([a, b])
    x = L.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    return keras.Model(inp, L.Dense(10, activation="softmax")(x), name="concat")


def resblock_add() -> keras.Model:
    """Conv2D-BN-ReLU stem, a residual block (Conv-BN-ReLU-Conv-BN + identity, Add, ReLU), GAP, Dense."""
    inp = keras.Input((8, 8, 1), name="input")
    x = L.Conv2D(16, 3, padding="same", use_bias=False)(inp)
    x = L.ReLU()(L.BatchNormalization(momentum=0.9)(x))
    h = L.Conv2D(16, 3, padding="same", use_bias=False)(x)
    h = L.ReLU()(L.BatchNormalization(momentum=0.9)(h))
    h = L.Conv2D(16, 3, padding="same", use_bias=False)(h)
    h = L.BatchNormalization(momentum=0.9)(h)
    x = L.ReLU()(L.Add()([x, h]))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(10, activation="softmax")(x), name="resblock")


def unet32() -> keras.Model:
    """Small U-Net on 32x32x1: 2 down (Conv-MaxPool), bottleneck, 2 up (UpSampling2D + Concatenate skip), sigmoid."""
    inp = keras.Input((32, 32, 1), name="input")
    e1 = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    p1 = L.MaxPooling2D(2)(e1)
    e2 = L.Conv2D(16, 3, padding="same", activation="relu")(p1)
    p2 = L.MaxPooling2D(2)(e2)
    b = L.Conv2D(32, 3, padding="same", activation="relu")(p2)
    u2 = L.Concatenate()([L.UpSampling2D(2)(b), e2])
    d2 = L.Conv2D(16, 3, padding="same", activation="relu")(u2)
    u1 = L.Concatenate()([L.UpSampling2D(2)(d2), e1])
    d1 = L.Conv2D(8, 3, padding="same", activation="relu")(u1)
    return keras.Model(inp, L.Conv2D(1, 1, activation="sigmoid")(d1), name="unet32")


def conv_transpose_ae() -> keras.Model:
    """Denoising autoencoder on 28x28x1: Conv2D s2 x2, Conv2DTranspose s2 x2, Conv2D sigmoid."""
    inp = keras.Input((28, 28, 1), name="input")
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    x = L.Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu")(x)
    x = L.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu")(x)
    return keras.Model(inp, L.Conv2D(1, 3, padding="same", activation="sigmoid")(x), name="conv_transpose_ae")


def upsample_classifier() -> keras.Model:
    """digits: UpSampling2D (8x8 -> 16x16, bilinear), Conv2D-MaxPool, Flatten, Dense, Dropout (inference no-op), Dense softmax."""
    inp = keras.Input((8, 8, 1), name="input")
    x = L.UpSampling2D(2, interpolation="bilinear")(inp)
    x = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = L.MaxPooling2D(4)(x)
    x = L.Flatten()(x)
    x = L.Dense(32, activation="relu")(x)
    x = L.Dropout(0.25)(x)
    return keras.Model(inp, L.Dense(10, activation="softmax")(x), name="upsample_cls")


def main() -> None:
    """Train and convert every Keras 2 model, then write the fragment."""
    t0 = time.time()
    setup()
    d = datasets()
    files = d["files"]

    m = fit(cnn_maxpool_dense((28, 28, 1), "cnn_mnist"), d["mnist"], 2)
    opts = convert(m, "tf2onnx_k2_cnn_maxpool_dense_softmax", 13)
    entry(
        "tf2onnx_k2_cnn_maxpool_dense_softmax",
        files["mnist_nhwc"],
        opts,
        ["Conv2D", "MaxPooling2D", "Flatten", "Dense", "Activation_softmax", "dynamic_batch"],
        "mnist",
    )
    opts = convert(m, "tf2onnx_k2_cnn_inputs_as_nchw", 13, inputs_as_nchw=["input"])
    entry(
        "tf2onnx_k2_cnn_inputs_as_nchw",
        common.save_data("mnist_nchw", np.transpose(d["mnist"][2], (0, 3, 1, 2)), d["mnist"][3]),
        opts,
        ["Conv2D", "MaxPooling2D", "Flatten", "Dense", "Activation_softmax", "dynamic_batch", "inputs_as_nchw"],
        "mnist",
        notes="same weights as tf2onnx_k2_cnn_maxpool_dense_softmax; tf2onnx's inputs_as_nchw makes the graph input NCHW",
    )

    m = fit(cnn_maxpool_dense((8, 8, 1), "cnn_digits_b1", batch_size=1), d["digits"], 10)
    opts = convert(m, "tf2onnx_k2_cnn_fixed_batch1", 13, batch=1)
    opts["keras_input"] = "keras.Input((8, 8, 1), batch_size=1)"
    entry(
        "tf2onnx_k2_cnn_fixed_batch1",
        files["digits_nhwc"],
        opts,
        ["Conv2D", "MaxPooling2D", "Flatten", "Dense", "Activation_softmax", "fixed_batch_1"],
        "digits",
    )
    opts = convert(m, "tf2onnx_k2_op9_cnn_batch1_model_dynamic_sig", 9)
    opts["keras_input"] = "keras.Input((8, 8, 1), batch_size=1)"
    entry(
        "tf2onnx_k2_op9_cnn_batch1_model_dynamic_sig",
        files["digits_nhwc"],
        opts,
        ["Conv2D", "MaxPooling2D", "Flatten", "Dense", "Activation_softmax", "dynamic_batch", "opset_9"],
        "digits",
        notes="Keras model built with batch_size=1, converted with a batch-None input signature at opset 9",
    )

    m = fit(mlp5(), d["digits_flat"], 30)
    opts = convert(m, "tf2onnx_k2_mlp5_dense", 13)
    entry("tf2onnx_k2_mlp5_dense", files["digits_flat"], opts, ["Dense", "MLP_5_layers", "softmax_in_Dense", "dynamic_batch"], "digits")
    opts = convert(m, "tf2onnx_k2_op11_mlp5_dense", 11)
    entry(
        "tf2onnx_k2_op11_mlp5_dense",
        files["digits_flat"],
        opts,
        ["Dense", "MLP_5_layers", "softmax_in_Dense", "dynamic_batch", "opset_11"],
        "digits",
    )
    opts = convert(m, "tf2onnx_k2_mlp5_dense_noopt", 13, optimizers={})
    entry(
        "tf2onnx_k2_mlp5_dense_noopt",
        files["digits_flat"],
        opts,
        ["Dense", "MLP_5_layers", "softmax_in_Dense", "dynamic_batch", "Identity_nodes", "Identity_output", "tf2onnx_optimizers_off"],
        "digits",
        notes="same weights as tf2onnx_k2_mlp5_dense; tf2onnx's graph optimizers disabled (optimizers={}), so TF's Identity ops stay",
    )
    opts = convert(m, "tf2onnx_k2_op9_mlp5_dense_batch1", 9, batch=1)
    entry(
        "tf2onnx_k2_op9_mlp5_dense_batch1",
        files["digits_flat"],
        opts,
        ["Dense", "MLP_5_layers", "softmax_in_Dense", "fixed_batch_1", "opset_9"],
        "digits",
    )

    m = fit(conv1d(), d["signal"], 10)
    opts = convert(m, "tf2onnx_k2_conv1d_bn", 13)
    entry(
        "tf2onnx_k2_conv1d_bn",
        files["signal_nwc"],
        opts,
        ["Conv1D", "BatchNormalization", "MaxPooling1D", "Flatten", "Dense", "dynamic_batch"],
        "synthetic",
    )
    opts = convert(m, "tf2onnx_k2_op11_conv1d_bn", 11)
    entry(
        "tf2onnx_k2_op11_conv1d_bn",
        files["signal_nwc"],
        opts,
        ["Conv1D", "BatchNormalization", "MaxPooling1D", "Flatten", "Dense", "dynamic_batch", "opset_11"],
        "synthetic",
    )

    m = fit(separable(), d["digits"], 30)
    opts = convert(m, "tf2onnx_k2_separable_bn_gap", 13)
    entry(
        "tf2onnx_k2_separable_bn_gap",
        files["digits_nhwc"],
        opts,
        ["Conv2D", "SeparableConv2D", "BatchNormalization", "GlobalAveragePooling2D", "Dense", "Softmax_layer", "dynamic_batch"],
        "digits",
    )

    m = fit(depthwise_relu6(), d["mnist"], 6)
    opts = convert(m, "tf2onnx_k2_depthwise_relu6", 13)
    entry(
        "tf2onnx_k2_depthwise_relu6",
        files["mnist_nhwc"],
        opts,
        ["Conv2D", "DepthwiseConv2D", "BatchNormalization", "ReLU6_Clip", "GlobalAveragePooling2D", "Dense", "dynamic_batch"],
        "mnist",
    )

    m = concat_model = fit(concat_branches(), d["digits"], 15)
    opts = convert(m, "tf2onnx_k2_cnn_concat", 13)
    entry(
        "tf2onnx_k2_cnn_concat",
        files["digits_nhwc"],
        opts,
        ["Conv2D", "Concatenate", "branches", "MaxPooling2D", "Flatten", "Dense", "dynamic_batch"],
        "digits",
    )
    opts = convert(m, "tf2onnx_k2_op9_cnn_concat", 9)
    entry(
        "tf2onnx_k2_op9_cnn_concat",
        files["digits_nhwc"],
        opts,
        ["Conv2D", "Concatenate", "branches", "MaxPooling2D", "Flatten", "Dense", "dynamic_batch", "opset_9"],
        "digits",
    )

    m = fit(resblock_add(), d["digits"], 25)
    opts = convert(m, "tf2onnx_k2_resblock_add", 13)
    entry(
        "tf2onnx_k2_resblock_add",
        files["digits_nhwc"],
        opts,
        ["Conv2D", "BatchNormalization", "residual_Add", "GlobalAveragePooling2D", "Dense", "dynamic_batch"],
        "digits",
    )

    m = fit(upsample_classifier(), d["digits"], 15)
    opts = convert(m, "tf2onnx_k2_upsampling_bilinear_cls", 13)
    entry(
        "tf2onnx_k2_upsampling_bilinear_cls",
        files["digits_nhwc"],
        opts,
        ["UpSampling2D_bilinear", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dropout_layer", "dynamic_batch"],
        "digits",
    )

    name = "tf2onnx_k2_cnn_concat_savedmodel_cli"
    with tempfile.TemporaryDirectory() as tmp:
        concat_model.save(tmp, save_format="tf")
        cmd = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", tmp, "--output", str(common.model_path(name)), "--opset", "13"]
        subprocess.run(cmd, check=True, capture_output=True)
    entry(
        name,
        files["digits_nhwc"],
        {"cli": "python -m tf2onnx.convert --saved-model DIR --output FILE --opset 13", "keras_save": "model.save(DIR, save_format='tf')"},
        ["Conv2D", "Concatenate", "branches", "MaxPooling2D", "Flatten", "Dense", "dynamic_batch", "SavedModel", "serving_default_names"],
        "digits",
        notes="same weights as tf2onnx_k2_cnn_concat, through a SavedModel and tf2onnx's command line",
    )

    xn, xc, xnt = denoise_data(32)
    m = fit(unet32(), (xn, xc, xnt, None), 2, loss="mse")
    unet_file = common.save_data("mnist32_noisy_nhwc", xnt)
    opts = convert(m, "tf2onnx_k2_unet32", 13)
    entry(
        "tf2onnx_k2_unet32",
        unet_file,
        opts,
        ["Conv2D", "MaxPooling2D", "UpSampling2D", "Concatenate", "skip_connections", "sigmoid", "dynamic_batch", "U-Net"],
        "mnist",
        task="image_to_image",
        notes="MNIST denoising at 32x32 (zero-padded digits + Gaussian noise 0.3); trained 2 epochs on 2,000 images (MSE)",
    )
    xn, xc, xnt = denoise_data(28)
    m = fit(conv_transpose_ae(), (xn, xc, xnt, None), 2, loss="mse")
    ae_file = common.save_data("mnist_noisy_nhwc", xnt)
    opts = convert(m, "tf2onnx_k2_conv2dtranspose_ae", 13)
    entry(
        "tf2onnx_k2_conv2dtranspose_ae",
        ae_file,
        opts,
        ["Conv2D", "Conv2DTranspose", "sigmoid", "dynamic_batch"],
        "mnist",
        task="image_to_image",
        notes="MNIST denoising autoencoder; trained 2 epochs on 2,000 images (MSE)",
    )
    common.write_fragment("gen_keras2")
    print(f"gen_keras2: {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
