"""Ops hls4ml cannot read, rewritten into ops it lowers correctly, verified end to end."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import edgec


def _model(nodes, inits, in_shape, out_shape):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_prelu_with_per_channel_slopes(tmp_path):
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 12)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.uniform(0.05, 0.5, 12).astype(np.float32), "slope"),
        numpy_helper.from_array(rng.standard_normal((12, 4)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc1"),
        helper.make_node("PRelu", ["h", "slope"], ["a"], name="prelu1"),
        helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"),
    ]
    result = edgec.build(_model(nodes, inits, [1, 8], [1, 4]), output_dir=tmp_path / "p")
    ver = result.report["verification"]
    assert ver["argmax_agreement"] >= 0.99 and ver["max_abs_error"] < 0.02
    rewrites = next(p for p in result.report["passes"] if p["name"] == "edgec.RewriteForHls4ml")["details"]
    assert rewrites == [{"node": "prelu1", "rewrite": "PRelu -> Relu(x) - a*Relu(-x)"}]


def test_average_pool_becomes_depthwise_conv(tmp_path):
    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "wc")]
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["c"], ["y"], name="avg", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    result = edgec.build(_model(nodes, inits, [1, 2, 8, 8], [1, 3, 4, 4]), output_dir=tmp_path / "a")
    ver = result.report["verification"]
    assert ver["max_abs_error"] < 0.01 and ver["decisive_agreement"] >= 0.99
    assert "DepthwiseConv2D" in [layer["op"] for layer in result.report["layers"]]
    # outputs come back in the model's own NCHW layout
    x = rng.standard_normal((3, 2, 8, 8)).astype(np.float32)
    import onnxruntime as ort

    ref = ort.InferenceSession(_model(nodes, inits, [1, 2, 8, 8], [1, 3, 4, 4]).SerializeToString())
    expected = np.concatenate([ref.run(None, {"x": s[None]})[0].reshape(1, -1) for s in x])
    np.testing.assert_allclose(result.predict(x), expected, atol=0.01)
    onnx.checker.check_model(onnx.load(tmp_path / "a" / "model.edgec.onnx"))


def test_global_average_pool_head(tmp_path):
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.standard_normal((6, 1, 3, 3)).astype(np.float32), "wc"),
        numpy_helper.from_array(rng.standard_normal((6, 3)).astype(np.float32), "wf"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat", axis=1),
        helper.make_node("MatMul", ["f", "wf"], ["y"], name="fc"),
    ]
    result = edgec.build(_model(nodes, inits, [1, 1, 6, 6], [1, 3]), output_dir=tmp_path / "g")
    ver = result.report["verification"]
    assert ver["argmax_agreement"] >= 0.99 and ver["max_abs_error"] < 0.01
    assert "DepthwiseConv2D" in [layer["op"] for layer in result.report["layers"]]
