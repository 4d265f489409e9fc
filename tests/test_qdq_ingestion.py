"""onnxruntime-quantized models (QDQ and QOperator formats) load as QONNX, verify and build.

The quantized models are made here with ``onnxruntime.quantization.quantize_static`` from two real
float models (the digits CNN with digits images for calibration, and hls4ml's Keras MLP with
random inputs), per-tensor and per-channel, with uint8 and int8 activations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import qonnx.core.onnx_exec as oxe
from onnx import TensorProto, helper, numpy_helper, version_converter
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from qonnx.core.modelwrapper import ModelWrapper

import edgec
from edgec.cli import main as cli_main
from edgec.errors import UnsupportedOpsError, VerificationError
from edgec.frontend.canonicalize import canonicalize
from edgec.frontend.load import load_model
from edgec.passes.quant.qdq_to_qonnx import QUANTIZED_OPS, ConvertQDQToQONNX

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CNN = ROOT / "examples" / "models" / "digits_cnn.onnx"
DIGITS_DATA = ROOT / "examples" / "data" / "digits_test.npz"
KERAS_MLP = Path(__file__).parent / "data" / "three_layer_keras.onnx"

U8, S8 = QuantType.QUInt8, QuantType.QInt8
# name -> (float model, format, per-channel weights, activation type)
MODELS = {
    "cnn_qdq_pt_u8": ("cnn", QuantFormat.QDQ, False, U8),
    "cnn_qdq_pc_s8": ("cnn", QuantFormat.QDQ, True, S8),
    "cnn_qop_pt_s8": ("cnn", QuantFormat.QOperator, False, S8),
    "cnn_qop_pc_u8": ("cnn", QuantFormat.QOperator, True, U8),
    "mlp_qdq_pc_u8": ("mlp", QuantFormat.QDQ, True, U8),
    "mlp_qdq_pt_s8": ("mlp", QuantFormat.QDQ, False, S8),
    "mlp_qop_pc_s8": ("mlp", QuantFormat.QOperator, True, S8),
    "mlp_qop_pt_u8": ("mlp", QuantFormat.QOperator, False, U8),
    # the Keras MLP as exported (MatMul + Add, not pre-processed into Gemm): a quantizer sits
    # between each MatMul and its bias Add
    "mlpraw_qdq_pt_s8": ("mlpraw", QuantFormat.QDQ, False, S8),
}
ort.set_default_logger_severity(3)


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, x: np.ndarray) -> None:
        self._it = iter([{name: s[None]} for s in x])

    def get_next(self) -> dict | None:
        return next(self._it, None)


def _mlp_inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 16)).astype(np.float32)


def _eval_data(kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    if kind == "cnn":
        d = np.load(DIGITS_DATA)
        return d["x"], d["y"]
    return _mlp_inputs(200, seed=1), None


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("qdq")
    # onnxruntime quantizes opset >= 13 per channel; its docs recommend pre-processing, which
    # fuses the Keras MatMul + Add into Gemm
    mlp13 = tmp / "keras13.onnx"
    onnx.save(version_converter.convert_version(onnx.load(KERAS_MLP), 13), mlp13)
    mlp_pre = tmp / "keras_pre.onnx"
    quant_pre_process(str(mlp13), str(mlp_pre), skip_symbolic_shape=True)
    sources = {"cnn": DIGITS_CNN, "mlp": mlp_pre, "mlpraw": mlp13}
    calibration = {"cnn": np.load(DIGITS_DATA)["x"][:100], "mlp": _mlp_inputs(100, seed=0), "mlpraw": _mlp_inputs(100, seed=0)}
    paths = {}
    for name, (kind, fmt, per_channel, act) in MODELS.items():
        src = sources[kind]
        in_name = onnx.load(src).graph.input[0].name
        paths[name] = tmp / f"{name}.onnx"
        quantize_static(
            str(src),
            str(paths[name]),
            _Reader(in_name, calibration[kind]),
            quant_format=fmt,
            per_channel=per_channel,
            activation_type=act,
            weight_type=QuantType.QInt8,
        )
    return paths


def _ort_reference(path: Path | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime on the original quantized graph, run as written (as edgec.verify does)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = path.SerializeToString() if isinstance(path, onnx.ModelProto) else str(path)
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: s[None]})[0] for s in x]).astype(np.float64)


def _qonnx_outputs(model: ModelWrapper, x: np.ndarray) -> np.ndarray:
    in_name, out_name = model.graph.input[0].name, model.graph.output[0].name
    return np.concatenate([oxe.execute_onnx(model, {in_name: s[None]})[out_name] for s in x]).astype(np.float64)


def _output_lsb(path: Path) -> float:
    """Scale of the quantizer in front of the model's output (one output LSB)."""
    proto = onnx.load(path)
    out = proto.graph.output[0].name
    dq = next(n for n in proto.graph.node if out in n.output and n.op_type == "DequantizeLinear")
    init = next(i for i in proto.graph.initializer if i.name == dq.input[1])
    return float(numpy_helper.to_array(init).reshape(-1)[0])


@pytest.mark.parametrize("name", list(MODELS))
def test_load_converts_to_qonnx(models, name):
    loaded = load_model(models[name])
    left = [n.op_type for n in loaded.model.graph.node if n.op_type in QUANTIZED_OPS or n.domain == "com.microsoft"]
    assert left == []
    assert loaded.is_qonnx
    quants = [n for n in loaded.model.graph.node if n.op_type == "Quant"]
    assert quants and all(n.domain == "qonnx.custom_op.general" for n in quants)
    text = " ".join(loaded.notes)
    if MODELS[name][1] == QuantFormat.QDQ:
        assert "QDQ model" in text and "QuantizeLinear" in text
    else:
        assert "onnxruntime QOperator model" in text and "QLinear" + ("Conv" if name.startswith("cnn") else "Softmax") in text
    assert "weight tensor(s) kept as QONNX Quant" in text or MODELS[name][1] == QuantFormat.QOperator
    # weights keep their 8-bit quantizers
    bits = {float(loaded.model.get_initializer(n.input[3])) for n in quants if loaded.model.get_initializer(n.input[0]) is not None}
    assert bits == {8.0}


@pytest.mark.heavy
@pytest.mark.parametrize("name", list(MODELS))
def test_qonnx_execution_equals_onnxruntime_on_the_original(models, name):
    x, _ = _eval_data(MODELS[name][0].replace("raw", ""))
    reference = _ort_reference(models[name], x)
    converted = _qonnx_outputs(load_model(models[name]).model, x)
    lsb = _output_lsb(models[name])
    error = np.abs(reference - converted)
    print(f"{name}: max |qonnx - onnxruntime| = {error.max() / lsb:.3g} LSB, {int((error > 0).sum())} of {error.size} outputs differ")
    assert error.max() <= lsb * (1 + 1e-6)
    assert np.array_equal(reference.argmax(-1), converted.argmax(-1))
    assert np.abs(reference).max() > 0


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["cnn_qdq_pc_s8", "cnn_qop_pt_s8", "mlp_qdq_pc_u8"])
def test_build_verifies_against_qonnx_reference(models, name, tmp_path):
    x, y = _eval_data(MODELS[name][0])
    result = edgec.build(models[name], target="pynq-z2", output_dir=tmp_path / name, data=(x, y) if y is not None else x)
    ver = result.report["verification"]
    print(f"{name}: {ver}")
    assert ver["reference"] == "qonnx execution"
    assert ver["argmax_agreement"] >= 0.99
    if name.startswith("cnn"):  # logits: the output quantizer's rounding, one step at most (seen: 1.004 LSB)
        assert ver["max_abs_error"] <= 2 * _output_lsb(models[name])
        # within one step of the model's own output grid (plus the 2^-10 of the fixed-point type the
        # float-scaled levels are written in): the bit-exactness criterion
        assert ver["bit_exact"] is True and ver["output_lsb"] == pytest.approx(_output_lsb(models[name]))
        assert ver["max_lsb_error"] <= ver["tolerance_lsb"] < 1.01
    else:  # probabilities: hls4ml's table-based softmax (seen: 0.028, ~7 LSB of 1/255)
        assert ver["max_abs_error"] <= 0.05
    if y is not None:
        assert ver["accuracy_simulated"] >= ver["accuracy_reference"] - 0.01 > 0.9
    assert any("onnxruntime" in d for d in result.report["decisions"])


@pytest.mark.heavy
def test_unfused_matmul_add_qdq_model_is_refused_clearly(models, tmp_path):
    """A float-scale Quant between a MatMul and its bias Add rounds twice: no single fixed-point affine
    map reproduces it (ExactRequantization records why), and hls4ml has no threshold layer. The build
    fails verification with the diverging layer named, and leaves no folder behind."""
    with pytest.raises(VerificationError, match="first diverging layer"):
        edgec.build(models["mlpraw_qdq_pt_s8"], target="pynq-z2", output_dir=tmp_path / "raw", data=_mlp_inputs(200, seed=1))
    assert not (tmp_path / "raw").exists()


@pytest.mark.heavy
def test_estimate_command_on_qdq_model(models, capsys):
    assert cli_main(["estimate", str(models["cnn_qdq_pt_u8"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    ops = [layer["op"] for layer in report["layers"]]
    assert ops.count("Conv") == 2 and "MatMul" in ops
    assert report["totals"]["cycles"] > 0


def test_integer_graph_output_becomes_float(models):
    proto = onnx.load(models["cnn_qop_pt_s8"])
    final = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear")
    proto.graph.node.remove(final)
    zp_init = next(i for i in proto.graph.initializer if i.name == final.input[2])
    out = proto.graph.output[0]
    out.name = final.input[0]
    out.type.tensor_type.elem_type = zp_init.data_type
    x, _ = _eval_data("cnn")
    x = x[:50]
    ints = _ort_reference(proto, x)
    loaded = load_model(proto)
    was = TensorProto.DataType.Name(zp_init.data_type)
    assert any(f"output '{final.input[0]}' was {was}" in note for note in loaded.notes)
    assert loaded.model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    scale = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == final.input[1]))
    zp = numpy_helper.to_array(zp_init).astype(np.float64)
    expected = ((ints - zp).astype(np.float32) * scale).astype(np.float64)
    np.testing.assert_array_equal(_qonnx_outputs(loaded.model, x), expected)


def test_dynamic_quantization_is_left_and_refused_by_name(models, tmp_path):
    dyn = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(models["mlp_qdq_pc_u8"].parent / "keras_pre.onnx"), str(dyn))
    loaded = load_model(dyn)
    assert "DynamicQuantizeLinear" in {n.op_type for n in loaded.model.graph.node}
    with pytest.raises(UnsupportedOpsError, match="DynamicQuantizeLinear"):
        canonicalize(loaded.model)


def _pair_model(dtype: int, zeropt: np.ndarray, scale: np.ndarray, axis: int, opset: int) -> onnx.ModelProto:
    inits = [
        numpy_helper.from_array(scale.astype(np.float32), "s"),
        helper.make_tensor("z", dtype, list(zeropt.shape), zeropt.reshape(-1).tolist()),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=axis),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis),
    ]
    graph = helper.make_graph(
        nodes,
        "pair",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


@pytest.mark.parametrize(
    ("dtype", "zp", "opset", "exact"),
    [
        (TensorProto.UINT8, 0, 13, True),
        (TensorProto.UINT8, 128, 13, True),  # shifted to the signed 8-bit range: zero point 0
        (TensorProto.INT8, -128, 13, True),  # shifted to the unsigned 8-bit range
        (TensorProto.INT8, 0, 13, True),
        (TensorProto.INT16, 0, 21, True),
        (TensorProto.UINT16, 0, 21, True),
        (TensorProto.INT4, 0, 21, True),
        (TensorProto.INT8, -1, 13, False),  # odd zero point: ties round differently
        (TensorProto.UINT8, 37, 13, False),
    ],
)
@pytest.mark.parametrize("per_axis", [False, True])
def test_quant_equals_quantize_dequantize(dtype, zp, opset, exact, per_axis):
    rng = np.random.default_rng(7)
    scale = np.array([0.05, 0.0173, 0.3], dtype=np.float32) if per_axis else np.array(0.0173, dtype=np.float32)
    zeropt = np.full(scale.shape, zp, dtype=np.int64)
    proto = _pair_model(dtype, zeropt, scale, 1, opset)
    s = scale.reshape(1, -1, 1) if per_axis else scale
    x = rng.uniform(-200, 200, (40, 3, 64)).astype(np.float32) * s
    ties = (np.arange(-32, 32) + 0.5).astype(np.float32) * s  # exact halves, both signs
    x = np.concatenate([x, np.broadcast_to(ties, (1, 3, 64))]).astype(np.float32)
    reference = _ort_reference(proto, x)
    model = ModelWrapper(proto).transform(ConvertQDQToQONNX())
    converted = _qonnx_outputs(model, x)
    if exact:
        np.testing.assert_array_equal(converted, reference)
    else:
        assert np.abs(converted - reference).max() <= np.max(scale) * (1 + 1e-6)
