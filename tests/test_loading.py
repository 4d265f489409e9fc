"""Safe loading: external data confinement, opset upgrade, batch fixing, .npy data."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec.errors import DynamicShapeError, UnsafeModelError
from edgec.frontend.load import load_model


def gemm6_model() -> onnx.ModelProto:
    """A Gemm-6 MLP as old PyTorch exported it (broadcast attribute, opset 6)."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    node = helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1, broadcast=1, name="fc")
    relu = helper.make_node("Relu", ["g"], ["y"], name="act")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])]
    # IR 3 requires every initializer to be listed as a graph input too, as old exporters did
    inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in (w, b)]
    graph = helper.make_graph(
        [node, relu],
        "old",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        initializer=[w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3)


def test_gemm6_model_is_upgraded_and_builds(tmp_path):
    path = tmp_path / "old.onnx"
    onnx.save(gemm6_model(), path)
    loaded = load_model(path)
    assert any("upgraded opset 6" in note for note in loaded.notes)
    result = edgec.build(path, output_dir=tmp_path / "b")
    assert result.report["verification"]["argmax_agreement"] >= 0.99
    assert "upgraded opset 6 -> 13" in result.report["decisions"]


def test_external_data_outside_model_folder_is_refused(tmp_path):
    model = gemm6_model()
    model.opset_import[0].version = 13
    for attr in list(model.graph.node[0].attribute):
        if attr.name == "broadcast":
            model.graph.node[0].attribute.remove(attr)
    inner = tmp_path / "models"
    inner.mkdir()
    onnx.save(model, inner / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert load_model(inner / "m.onnx").model.get_initializer("w").shape == (8, 6)  # inside: fine
    proto = onnx.load(inner / "m.onnx", load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secrets.bin"
    (tmp_path / "secrets.bin").write_bytes((inner / "weights.bin").read_bytes())
    onnx.save(proto, inner / "evil.onnx")
    with pytest.raises(UnsafeModelError, match="outside the model's folder"):
        load_model(inner / "evil.onnx")
    proc = subprocess.run(
        [sys.executable, "-m", "edgec", "build", str(inner / "evil.onnx"), "-o", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert proc.returncode == 18 and "Traceback" not in proc.stderr


def test_dynamic_batch_is_fixed_and_other_dims_refused():
    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    loaded = load_model(model)
    assert loaded.model.get_tensor_shape("x") == [1, 4]
    assert loaded.model.get_tensor_shape("y") == [1, 2]
    graph.input[0].type.tensor_type.shape.dim[1].dim_param = "width"
    with pytest.raises(DynamicShapeError, match="'width' at axis 1"):
        load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))


def test_npy_inputs_only(tmp_path, data_dir):
    x = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = edgec.build(data_dir / "three_layer_keras.onnx", output_dir=tmp_path / "b", data=tmp_path / "x.npy")
    ver = result.report["verification"]
    assert ver["n_samples"] == 40 and ver["accuracy_reference"] is None
