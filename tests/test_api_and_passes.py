"""Python API, the report schema, targets and the exact requantization pass."""

import json

import numpy as np
import onnx
import pytest

import edgec
from edgec.frontend.canonicalize import canonicalize
from edgec.frontend.load import load_model
from edgec.targets import load_target, target_names

REPORT_KEYS = {"schema_version", "edgec_version", "model", "target", "layers", "verification", "passes", "timings"}


@pytest.mark.heavy
def test_api_accepts_modelproto_and_predicts(tmp_path, data_dir):
    proto = onnx.load(data_dir / "three_layer_pytorch.onnx")
    result = edgec.build(proto, target="pynq-z2", output_dir=tmp_path / "api")
    assert REPORT_KEYS <= set(result.report)
    assert {k: result.report["target"][k] for k in ("name", "part", "clock_mhz")} == {
        "name": "pynq-z2",
        "part": "xc7z020clg400-1",
        "clock_mhz": 100.0,
    }
    assert result.report["target"]["cpu"]["name"].startswith("ARM Cortex-A9")
    assert set(result.report["timings"]) == {"load", "partition", "convert", "compile", "verify", "estimate"}
    layer = result.report["layers"][0]
    assert {"name", "op", "inputs_shape", "outputs_shape", "macs", "params", "precision", "strategy", "reuse_factor"} <= set(layer)
    assert layer["macs"] == 16 * 64
    assert json.loads((tmp_path / "api" / "report.json").read_text()) == result.report
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    y = result.predict(x)
    assert y.shape == (5, 5)
    import onnxruntime as ort

    loaded = load_model(data_dir / "three_layer_pytorch.onnx")
    sess = ort.InferenceSession(loaded.model.model.SerializeToString())
    ref = np.concatenate([sess.run(None, {loaded.model.graph.input[0].name: s[None]})[0] for s in x])
    assert (y.argmax(1) == ref.argmax(1)).all()


@pytest.mark.heavy
def test_precisions_come_from_calibrated_ranges(tmp_path, data_dir):
    result = edgec.build(data_dir / "three_layer_keras.onnx", output_dir=tmp_path / "k")
    results = {layer["precision"]["result"] for layer in result.report["layers"] if layer["op"] == "Dense"}
    assert "fixed<16,6,TRN,WRAP,0>" not in results
    assert len(results) > 1  # ranges differ per layer, so do the types


def test_targets_have_datasheet_figures():
    assert set(target_names()) >= {"pynq-z2", "zcu104", "ultra96v2", "kv260", "arty-a7-100t"}
    pynq = load_target("pynq-z2")
    assert (pynq.resources.lut, pynq.resources.ff, pynq.resources.dsp, pynq.resources.bram18) == (53200, 106400, 220, 280)
    assert pynq.cpu.clock_mhz == 650 and pynq.clock_mhz == 100
    assert all(load_target(n).sources for n in target_names())


@pytest.mark.heavy
def test_exact_requantization_is_exact_on_tfc(data_dir):
    import qonnx.core.onnx_exec as oxe

    loaded = load_model(data_dir / "TFC_2W2A.onnx")
    canonical = canonicalize(loaded.model)
    ops = [n.op_type for n in canonical.model.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Quant") == 4
    x = np.load(data_dir / "mnist_test_300.npz")["x"][:20]
    name_o, name_c = loaded.model.graph.input[0].name, canonical.model.graph.input[0].name
    for sample in x:
        ref = oxe.execute_onnx(loaded.model, {name_o: sample[None]}, return_full_exec_context=True)
        # the canonical input may be a reshaped view of the model's (the same values in the same order)
        shape_c = [1, *canonical.model.get_tensor_shape(name_c)[1:]]
        can = oxe.execute_onnx(canonical.model, {name_c: sample.reshape(shape_c)}, return_full_exec_context=True)
        np.testing.assert_allclose(ref[loaded.model.graph.output[0].name], can[canonical.model.graph.output[0].name], atol=1e-5)


def test_random_inputs_follow_the_declared_input_domain(data_dir):
    from edgec.data import random_inputs

    x, description = random_inputs(load_model(data_dir / "TFC_2W2A.onnx").model, 50)
    assert set(np.unique(x)) <= {0.0, 0.5, 1.0}  # x*2-1 lands on the 2-bit quantizer's levels
    assert "before the model's x*2-1" in description
    xb, description = random_inputs(load_model(data_dir / "bnn_model_fc_1layer.onnx").model, 50)
    assert set(np.unique(xb)) == {-1.0, 1.0} and "bipolar" in description
    xr, description = random_inputs(load_model(data_dir / "three_layer_keras.onnx").model, 50)
    assert "standard-normal" in description and xr.std() > 0.5


@pytest.mark.heavy
def test_api_takes_arrays_and_targets_the_board(tmp_path, data_dir):
    data = np.load(data_dir / "mnist_test_300.npz")
    result = edgec.build(data_dir / "TFC_2W2A.onnx", target="zcu104", output_dir=tmp_path / "z", data=(data["x"][:60], data["y"][:60]))
    ver = result.report["verification"]
    assert ver["n_samples"] == 60 and ver["accuracy_simulated"] == ver["accuracy_reference"]
    tcl = (tmp_path / "z" / "hls" / "project.tcl").read_text()
    assert 'set part "xczu7ev-ffvc1156-2-e"' in tcl and "set clock_period 5.0" in tcl
    assert {k: result.report["target"][k] for k in ("name", "part", "clock_mhz")} == {
        "name": "zcu104",
        "part": "xczu7ev-ffvc1156-2-e",
        "clock_mhz": 200.0,
    }


def test_multi_output_model_is_refused(tmp_path):
    import pytest
    from onnx import TensorProto, helper

    from edgec.errors import UnsupportedOpsError

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"])],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4]), helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])],
    )
    with pytest.raises(UnsupportedOpsError, match="2 outputs"):
        edgec.build(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), output_dir=tmp_path / "m")
    assert not (tmp_path / "m").exists()
