"""Low-bit networks where plain hls4ml goes wrong: BatchNorm feeding a sign, BN feeding a Quant.

The models are generated here as QONNX graphs (qonnx custom-op domain), with BatchNorm scales of
both signs, so nothing depends on a training run.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec

QONNX = "qonnx.custom_op.general"


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _bn(prefix, channels, rng, inputs, out):
    gamma = rng.uniform(0.5, 2.0, channels) * rng.choice([-1.0, 1.0], channels)  # negative scales too
    inits = [
        _const(f"{prefix}_g", gamma),
        _const(f"{prefix}_b", rng.normal(0, 2.0, channels)),
        _const(f"{prefix}_m", rng.normal(0, 3.0, channels)),
        _const(f"{prefix}_v", rng.uniform(1.0, 9.0, channels)),
    ]
    node = helper.make_node("BatchNormalization", [inputs] + [i.name for i in inits], [out], name=prefix, epsilon=1e-5)
    return node, inits


def bnn_with_batchnorm(seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], [_const("one", 1.0)]
    nodes.append(helper.make_node("BipolarQuant", ["x", "one"], ["xb"], domain=QONNX, name="in_sign"))
    prev, sizes = "xb", [32, 24, 16, 10]
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits.append(_const(f"w{i}", rng.normal(size=(n_in, n_out))))
        nodes.append(helper.make_node("BipolarQuant", [f"w{i}", "one"], [f"wb{i}"], domain=QONNX, name=f"w_sign{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"wb{i}"], [f"mm{i}"], name=f"fc{i}"))
        if i < len(sizes) - 2:
            bn, bn_inits = _bn(f"bn{i}", n_out, rng, f"mm{i}", f"bn_out{i}")
            nodes.append(bn)
            inits += bn_inits
            nodes.append(helper.make_node("BipolarQuant", [f"bn_out{i}", "one"], [f"act{i}"], domain=QONNX, name=f"sign{i}"))
            prev = f"act{i}"
        else:
            prev = f"mm{i}"
    graph = helper.make_graph(
        nodes,
        "bnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, sizes[0]])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, sizes[-1]])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QONNX, 1)], ir_version=8)


def quantized_cnn(seed=1) -> onnx.ModelProto:
    """Quant(4b) input -> Conv(Quant 3b weights, float bias) -> BN -> Quant(3b) -> Flatten -> MatMul(Quant 3b)."""
    rng = np.random.default_rng(seed)

    def quant(name, inp, out, bits, signed=1, narrow=0):
        return helper.make_node(
            "Quant", [inp, "s1", "z0", f"bits{bits}"], [out], domain=QONNX, name=name, signed=signed, narrow=narrow, rounding_mode="ROUND"
        )

    inits = [_const("s1", 1.0), _const("z0", 0.0), _const("bits3", 3.0), _const("bits4", 4.0), _const("s_half", 0.5)]
    inits += [_const("wc", rng.normal(0, 2.0, (4, 2, 3, 3))), _const("wf", rng.normal(0, 2.0, (4 * 4 * 4, 5)))]
    inits += [_const("bc", rng.normal(0, 1.5, 4))]  # a float convolution bias, as Brevitas exports
    bn, bn_inits = _bn("bn_c", 4, rng, "conv", "bn_out")
    inits += bn_inits
    nodes = [
        helper.make_node(
            "Quant", ["x", "s_half", "z0", "bits4"], ["xq"], domain=QONNX, name="in_q", signed=1, narrow=0, rounding_mode="ROUND"
        ),
        quant("wc_q", "wc", "wcq", 3),
        helper.make_node("Conv", ["xq", "wcq", "bc"], ["conv"], name="conv0", kernel_shape=[3, 3], pads=[0, 0, 0, 0]),
        bn,
        quant("act_q", "bn_out", "act", 3, signed=0),
        helper.make_node("Flatten", ["act"], ["flat"], name="flatten", axis=1),
        quant("wf_q", "wf", "wfq", 3),
        helper.make_node("MatMul", ["flat", "wfq"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "qcnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QONNX, 1)], ir_version=8)


def test_bnn_with_batchnorm_before_sign_is_bit_exact(tmp_path):
    result = edgec.build(bnn_with_batchnorm(), output_dir=tmp_path / "bnn", random_samples=300)
    ver = result.report["verification"]
    assert ver["reference"] == "qonnx execution"
    assert ver["argmax_agreement"] == 1.0
    assert ver["max_abs_error"] == 0.0  # integer outputs, reproduced exactly
    exact = next(p for p in result.report["passes"] if p["name"] == "edgec.ExactRequantization")
    assert len([d for d in exact["details"] if "layer" in d]) == 2
    assert "bipolar" in ver["data"]


def test_quantized_cnn_with_batchnorm_is_bit_exact(tmp_path):
    result = edgec.build(quantized_cnn(), output_dir=tmp_path / "qcnn", random_samples=300)
    ver = result.report["verification"]
    assert ver["argmax_agreement"] == 1.0
    assert ver["max_abs_error"] == 0.0
    assert "integer inputs" in ver["data"]
    exact = next(p for p in result.report["passes"] if p["name"] == "edgec.ExactRequantization")
    assert [d["layer"] for d in exact["details"] if "layer" in d] == ["Conv_0"]


def test_brevitas_float_scale_export_is_exact_where_quantized(tmp_path, data_dir):
    """A real Brevitas export: float activation scales and BatchNorm -> QuantReLU."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data[:300] / 16.0).astype(np.float32)
    result = edgec.build(data_dir / "brevitas_digits_mlp.onnx", output_dir=tmp_path / "b", data=(x, digits.target[:300]))
    ver = result.report["verification"]
    assert ver["argmax_agreement"] == 1.0
    assert ver["accuracy_simulated"] == ver["accuracy_reference"] > 0.9
    assert ver["max_abs_error"] < 0.01  # plain hls4ml-style lowering was off by 0.128 here
    # Brevitas 4-bit: float logits of integer accumulators times a float scale, within one LSB of the output type
    assert ver["bit_exact"] is True and ver["max_lsb_error"] <= 1.0
    last = result.report["layers"][-1]
    assert last["precision"]["weight"].startswith(
        "fixed<21,"
    )  # enough fraction bits for the float scale (configure._output_exact_weight_type)
    passes = {p["name"]: p.get("details", []) for p in result.report["passes"]}
    assert passes["edgec.QuantizerScalesToLevels"]  # the float scale moved into the next weights
    exact = [d for d in passes["edgec.ExactRequantization"] if "layer" in d]
    assert exact and "Relu" in exact[0]["replaced"] and "BatchNormalization" not in str(result.report["layers"])


@pytest.mark.heavy
def test_brevitas_cnn_with_maxpool_between_quantized_layers(tmp_path, data_dir):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:200] / 16.0).astype(np.float32)[:, None]
    result = edgec.build(data_dir / "brevitas_digits_cnn.onnx", output_dir=tmp_path / "c", data=(x, digits.target[:200]))
    ver = result.report["verification"]
    assert ver["argmax_agreement"] == 1.0 and ver["accuracy_simulated"] == ver["accuracy_reference"]
    assert ver["max_abs_error"] < 0.01  # without exact lowering: 0.48
    assert ver["bit_exact"] is True and ver["max_lsb_error"] <= 1.0
    exact = [
        d["layer"] for d in next(p for p in result.report["passes"] if p["name"] == "edgec.ExactRequantization")["details"] if "layer" in d
    ]
    assert exact == ["Conv_0", "Conv_1"]
