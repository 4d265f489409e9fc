"""Post-training fixed-point quantization (`fixed:bits=N`): calibration, accuracy, and bit-exact
hls4ml C simulation of the QONNX models it writes, on real models and data.

Measured (digits_cnn on examples/data/digits_test.npz, 300 samples; float accuracy 96.67%):
8 bit 97.00%, 6 bit 94.67%, 4 bit 77.67%, 4 bit per channel 83.33%. three_layer_keras (no
labels; argmax agreement with the float model on 300 standard-normal inputs): 8 bit 97.3%,
6 bit 83.3%, 4 bit 33.0%. C simulation vs qonnx execution: 0 LSB on digits_cnn at 8, 6 and 4 bits;
0 LSB on the MLP's logits for inputs on the input quantizer's grid, <= 1 LSB (8 bit) for raw float
inputs because edgec's Input type rounds them once before the input quantizer rounds (see
``test_mlp_logits_bit_exact``).
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import qonnx.core.onnx_exec as oxe
from onnx import TensorProto, helper
from qonnx.custom_op.general.quant import quant as qonnx_quant

import edgec
from edgec.errors import OptionError
from edgec.frontend.load import load_model
from edgec.passes.prune.common import model_outputs
from edgec.passes.quant.calibrate import calibrate_ranges
from edgec.passes.quant.fixed import FixedPointQuantization
from edgec.passes.quant.registry import parse_quant_spec, run_quantization

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
DIGITS_CNN = ROOT / "examples" / "models" / "digits_cnn.onnx"
MLP = DATA / "three_layer_keras.onnx"


@pytest.fixture(scope="module")
def digits():
    data = np.load(ROOT / "examples" / "data" / "digits_test.npz")
    return data["x"], data["y"]


@pytest.fixture(scope="module")
def mlp_x():
    return np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)


def _quantize(path: Path, spec: str, x: np.ndarray, y: np.ndarray | None):
    return run_quantization(load_model(path).model, [spec], x, y)


def _output_quantizer(model):
    """The Quant node writing the graph output (or feeding the final Softmax)."""
    out = model.graph.output[0].name
    producer = model.find_producer(out)
    if producer.op_type == "Softmax":
        producer = model.find_producer(producer.input[0])
    assert producer.op_type == "Quant"
    return producer


# -- (a) calibration ------------------------------------------------------------------------------


def test_calibration_matches_a_direct_onnxruntime_run(digits):
    x, _ = digits
    model = load_model(DIGITS_CNN).model
    ranges = calibrate_ranges(model, x, percentile=99.0)
    names = ["/features/features.1/Relu_output_0", "/features/features.3/Conv_output_0", "logits"]
    proto = model.model.__deepcopy__()
    for name in names[:2]:
        proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [session.run(names, {"image": s[None]}) for s in x]
    for i, name in enumerate(names):
        values = np.concatenate([r[i].reshape(-1) for r in runs])
        assert ranges[name].kind == "activation"
        assert ranges[name].min == pytest.approx(values.min(), abs=1e-5)
        assert ranges[name].max == pytest.approx(values.max(), abs=1e-5)
        assert ranges[name].percentile == pytest.approx(np.percentile(np.abs(values), 99.0), rel=1e-4)
        assert ranges[name].percentile < ranges[name].abs_max
    assert ranges["/features/features.1/Relu_output_0"].min == 0.0
    # Conv adds its bias itself: the accumulator is output - bias, per channel
    conv_out = np.concatenate([r[1] for r in runs])
    bias = model.get_initializer("features.3.bias").reshape(1, -1, 1, 1)
    acc = ranges["/features/features.3/Conv_output_0::accumulator"]
    assert acc.kind == "accumulator"
    assert acc.min == pytest.approx((conv_out - bias).min(), abs=1e-5) and acc.max == pytest.approx((conv_out - bias).max(), abs=1e-5)
    # weights per output channel (OIHW: axis 0), biases
    w = model.get_initializer("features.3.weight")
    wr = ranges["features.3.weight"]
    assert wr.kind == "weight" and wr.channel_axis == 0
    np.testing.assert_allclose(wr.channel_abs_max, np.abs(w).reshape(w.shape[0], -1).max(axis=1), rtol=1e-6)
    assert wr.abs_max == pytest.approx(np.abs(w).max())
    assert ranges["classifier.bias"].kind == "bias"
    assert ranges["image"].kind == "input" and ranges["image"].max == pytest.approx(x.max())


def test_calibration_of_a_keras_mlp_marks_matmul_accumulators(mlp_x):
    model = load_model(MLP).model
    ranges = calibrate_ranges(model, mlp_x)
    assert ranges["transformed_tensor"].kind == "accumulator"  # MatMul before its bias Add
    assert ranges["biased_tensor_name"].kind == "activation"
    assert ranges["B"].kind == "bias"
    assert ranges["W"].channel_axis == 1 and ranges["W"].channel_abs_max.shape == (64,)  # MatMul (in, out)
    assert ranges["transformed_tensor"].percentile is None


# -- (b) quantized models: execution, accuracy, grids, records ----------------------------------


def test_fixed_8bit_digits_cnn_runs_in_qonnx_and_keeps_accuracy(digits):
    x, y = digits
    model, records = _quantize(DIGITS_CNN, "fixed:bits=8", x, y)
    record = records[0]
    assert record["name"] == "fixed" and record["params"]["bits"] == 8 and record["changed"]
    assert record["metric"] == "accuracy"
    # measured: float 96.67% -> 8 bit 97.00% (+0.33 points)
    assert record["accuracy_after"] >= record["accuracy_before"] - 0.01
    quants = [n for n in model.graph.node if n.op_type == "Quant"]
    assert all(n.domain == "qonnx.custom_op.general" for n in quants)
    assert len(quants) == 3 + 4  # three weight quantizers; input, two ReLU outputs, logits
    # the quantized model is QONNX: qonnx execution runs it (one sample, then batched)
    single = oxe.execute_onnx(model, {"image": x[:1]})["logits"]
    batched = model_outputs(model, x)
    np.testing.assert_array_equal(single.reshape(-1), batched[0])
    assert np.mean(batched.argmax(-1) == y) == pytest.approx(record["accuracy_after"])
    # every quantizer's scale is a power of two and its values lie on that grid
    for node in quants:
        scale = model.get_initializer(node.input[1])
        assert np.all(np.frexp(scale)[0] == 0.5)
        raw = model.get_initializer(node.input[0])
        if raw is not None:  # a weight quantizer: narrow signed 8-bit levels
            assert [a.i for a in node.attribute if a.name in ("signed", "narrow")] == [1, 1]
            levels = qonnx_quant(raw, scale, np.float32(0), np.float32(8), signed=True, narrow=True, rounding_mode="ROUND") / scale
            assert np.array_equal(levels, np.round(levels)) and np.abs(levels).max() <= 127
    # biases lie on their layer's accumulator grid (input scale * weight scale)
    conv1 = next(n for n in model.graph.node if n.op_type == "Conv")
    s_w = model.get_initializer(model.find_producer(conv1.input[1]).input[1])
    s_in = model.get_initializer(model.find_producer(conv1.input[0]).input[1])
    bias_levels = model.get_initializer(conv1.input[2]) / (s_in * s_w)
    assert np.array_equal(bias_levels, np.round(bias_levels))
    layer = record["layers"]["/features/features.0/Conv"]
    assert layer["weight"] == "fixed<8,2,RND_CONV,SAT_SYM>" and layer["weight_integer_bits"] == 2  # max |w| = 1.81
    assert layer["input"] == "ufixed<8,1,RND_CONV,SAT>"  # the image, in [0, 1]
    assert layer["activation"].startswith("ufixed<8,") and layer["activation_chain"] == ["Relu"]  # unsigned after ReLU
    assert "half to even" in layer["rounding"] and layer["saturation"]["activation"] == "SAT"
    assert record["layers"]["/classifier/Gemm"]["activation"].startswith("fixed<8,")  # signed logits


def test_fewer_bits_lose_more_and_per_channel_helps_at_4_bits(digits):
    x, y = digits
    specs = ("bits=8", "bits=6", "bits=4", "bits=4,per=channel")
    acc = {spec: _quantize(DIGITS_CNN, f"fixed:{spec}", x, y)[1][0]["accuracy_after"] for spec in specs}
    # measured: 0.970, 0.947, 0.777, 0.833
    assert acc["bits=8"] > acc["bits=6"] > acc["bits=4"]
    assert acc["bits=4,per=channel"] > acc["bits=4"]
    model, records = _quantize(DIGITS_CNN, "fixed:bits=4,per=channel,act_bits=8", x, y)
    layer = records[0]["layers"]["/features/features.3/Conv"]
    assert isinstance(layer["weight"], list) and len(layer["weight"]) == 8  # one type per output channel
    assert layer["activation"].startswith("ufixed<8,")
    scale = model.get_initializer(model.find_producer(next(n for n in model.graph.node if n.op_type == "Conv").input[1]).input[1])
    assert scale.shape == (4, 1, 1, 1)


def test_fixed_8bit_keras_mlp_agrees_with_float(mlp_x):
    model, records = _quantize(MLP, "fixed:bits=8,percentile=99.99", mlp_x, None)
    record = records[0]
    assert record["metric"] == "agreement" and record["accuracy_before"] == 1.0
    assert record["accuracy_after"] >= 0.95  # measured 0.973 (max ranges) on standard-normal inputs
    assert record["quantizers"]["input_1_0"].startswith("fixed<8,")  # signed input
    assert model.graph.node[-1].op_type == "Softmax"  # probabilities are left to the Softmax


# -- (c) bit-exact C simulation -------------------------------------------------------------------


@pytest.mark.heavy
@pytest.mark.parametrize("spec", ["bits=8", "bits=6", "bits=4", "bits=4,per=channel"])
def test_digits_cnn_c_simulation_is_bit_exact(tmp_path, digits, spec):
    x, y = digits
    bits = int(spec.split(",")[0].split("=")[1])
    model, _ = _quantize(DIGITS_CNN, f"fixed:{spec}", x, y)
    reference = model_outputs(model, x)  # qonnx execution of the QONNX model
    result = edgec.build(model.model, target="pynq-z2", output_dir=tmp_path / "b", data=(x, y))
    simulated = result.predict(x)
    lsb = float(model.get_initializer(_output_quantizer(model).input[1]))
    assert np.max(np.abs(simulated - reference)) / lsb == 0.0  # measured: 0 LSB for every spec
    assert np.array_equal(simulated.argmax(-1), reference.argmax(-1))
    ver = result.report["verification"]
    assert ver["reference"] == "qonnx execution" and ver["max_abs_error"] == 0.0
    assert ver["accuracy_simulated"] == ver["accuracy_reference"]
    assert result.report["layers"][-1]["precision"]["result"].startswith(f"fixed<{bits},")


@pytest.mark.heavy
def test_mlp_logits_bit_exact(tmp_path, mlp_x):
    """The MLP up to its logits (hls4ml's Softmax is a lookup table, so the probabilities are not
    bit-exact: measured max error 0.014, argmax 100% equal). Inputs on the input quantizer's grid
    give 0 LSB; raw float inputs give at most 1 LSB at 8 bits (2 at 6 bits), because edgec types
    hls4ml's Input layer from calibration (16 bits, RND) and the input quantizer then rounds again:
    a value within 2^-13 of a tie of the quantizer's grid rounds the other way."""
    model, _ = _quantize(MLP, "fixed:bits=8", mlp_x, None)
    softmax = model.graph.node[-1]
    model.graph.node.remove(softmax)
    model.graph.output[0].name = softmax.input[0]
    kept = [vi for vi in model.graph.value_info if vi.name != softmax.input[0]]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    quant_in = model.find_consumers(model.graph.input[0].name)[0]
    s_in = float(model.get_initializer(quant_in.input[1]))
    on_grid = (np.clip(np.round(mlp_x / s_in), -128, 127) * s_in).astype(np.float32)
    lsb = float(model.get_initializer(_output_quantizer(model).input[1]))
    result = edgec.build(model.model, target="pynq-z2", output_dir=tmp_path / "m", data=on_grid)
    assert result.report["verification"]["max_abs_error"] == 0.0
    raw_ref, raw_sim = model_outputs(model, mlp_x), result.predict(mlp_x)
    assert np.max(np.abs(raw_sim - raw_ref)) / lsb <= 1.0
    assert np.array_equal(raw_sim.argmax(-1), raw_ref.argmax(-1))


# -- (d) already-quantized models, options -------------------------------------------------------


def test_already_quantized_model_is_left_unchanged_unless_forced(digits):
    x, y = digits
    brevitas = load_model(DATA / "brevitas_digits_cnn.onnx").model
    model, records = run_quantization(brevitas, ["fixed:bits=8"], x, y)
    assert not records[0]["changed"] and "already quantized" in records[0]["notes"][0]
    assert model.model.SerializeToString() == brevitas.model.SerializeToString()
    assert records[0]["accuracy_after"] == records[0]["accuracy_before"]
    forced, records = run_quantization(brevitas, ["fixed:bits=8,force=true"], x, y)
    ops = [n.op_type for n in forced.graph.node]
    assert records[0]["changed"] and "BatchNormalization" not in ops  # folded into the convolutions
    assert ops.count("Quant") == 3 + 4
    assert records[0]["accuracy_after"] >= records[0]["accuracy_before"] - 0.02  # measured 0.990 -> 0.993


def test_specs_and_bad_options(mlp_x):
    assert parse_quant_spec("fixed:bits=8,per=channel") == ("fixed", {"bits": 8, "per": "channel"})
    model = load_model(MLP).model
    for spec in ("int8", "fixed:bits=8,width=3", "fixed:bits=1", "fixed:per=tensor", "fixed:bits=8,percentile=0", "fixed:bits"):
        with pytest.raises(OptionError):
            run_quantization(model, [spec], mlp_x, None)
    with pytest.raises(OptionError):
        FixedPointQuantization(mlp_x, bits=8.5)
