"""Ops hls4ml cannot read, rewritten into ops it lowers correctly, verified end to end."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec


def _model(nodes, inits, in_shape, out_shape):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=inits,
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


@pytest.mark.heavy
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


def test_transpose_moves_into_weight_quantizer_with_per_channel_zero_points():
    """Transpose(Quant(W)) -> Quant(W^T): per-channel scale and zero point are transposed with W."""
    import qonnx.core.onnx_exec as oxe
    from onnx import TensorProto, helper, numpy_helper
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    from edgec.frontend.canonicalize import _push_transposes_into_weight_quantizers

    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 6)).astype(np.float32)  # (out, in), as a PyTorch Linear stores it
    scale = rng.uniform(0.05, 0.2, size=(4, 1)).astype(np.float32)
    zeropt = np.array([[1.0], [-2.0], [0.0], [3.0]], dtype=np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (scale, "s"), (zeropt, "z"), (np.array(4.0, dtype=np.float32), "b"))]
    nodes = [
        helper.make_node(
            "Quant", ["w", "s", "z", "b"], ["wq"], domain="qonnx.custom_op.general", signed=1, narrow=0, rounding_mode="ROUND"
        ),
        helper.make_node("Transpose", ["wq"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=inits,
    )
    model = ModelWrapper(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("qonnx.custom_op.general", 1)])
    )
    model = model.transform(InferShapes())
    x = rng.normal(size=(1, 6)).astype(np.float32)
    before = oxe.execute_onnx(model, {"x": x})["y"]
    _push_transposes_into_weight_quantizers(model)
    assert [n.op_type for n in model.graph.node] == ["Quant", "MatMul"]
    assert model.get_initializer("z").shape == (1, 4)
    np.testing.assert_array_equal(oxe.execute_onnx(model.transform(InferShapes()), {"x": x})["y"], before)
