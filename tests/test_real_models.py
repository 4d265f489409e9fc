"""What real exports need (issue 12): clear errors for invalid files and internal failures, datatype
annotations respected, BNN input preprocessing as exact thresholds, and 8-bit PTQ that is exact and
no costlier than the float design."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec.cli import main
from edgec.errors import DataError

CORPUS = Path(__file__).parent / "corpus"
MANIFEST = {e["name"]: e for e in json.loads((CORPUS / "manifest.json").read_text())}


def corpus(name: str) -> Path:
    return CORPUS / MANIFEST[name]["file"]


def corpus_data(name: str):
    data = np.load(CORPUS / MANIFEST[name]["data"])
    return (data["x"], data["y"]) if "y" in data.files else data["x"]


def run(*args):
    return subprocess.run([sys.executable, "-m", "edgec", *map(str, args)], capture_output=True, text=True)


def test_schema_violation_is_reported_by_the_checker_in_one_line(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x", "x"], ["y"], name="bad_relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    proc = run("build", path, "-o", tmp_path / "out")
    assert proc.returncode == 24, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "not a valid ONNX model" in proc.stderr and "bad_relu" in proc.stderr and "input size 2" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unexpected_exception_is_one_line_naming_step_and_node(tmp_path, monkeypatch):
    import edgec.pipeline.flow as flow_module

    def broken(model, for_estimate=False):
        raise ValueError("Mul_0 has no idea")  # names a node of the loaded model, as library errors name tensors

    monkeypatch.setattr(flow_module, "canonicalize", broken)
    model = tmp_path / "m.onnx"
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="Mul_0")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=[w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), model)
    for debug in (False, True):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main((["--debug"] if debug else []) + ["build", str(model), "-o", str(tmp_path / "out"), "--no-cross"])
        assert code == 70
        last = err.getvalue().strip().splitlines()[-1]
        assert last.startswith("edgec: error: internal error in step canonicalize on node Mul_0: ValueError: Mul_0 has no idea")
        assert ("Traceback" in err.getvalue()) == debug
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.edgec-*"))


@pytest.mark.heavy
def test_keep_failed_keeps_the_project_of_a_failed_build(tmp_path, data_dir):
    out = tmp_path / "out"
    proc = run("build", data_dir / "three_layer_keras.onnx", "-o", out, "--no-cross", "--min-agreement", "1.01", "--keep-failed")
    assert proc.returncode == 3
    assert not out.exists()
    kept = tmp_path / "out.failed"
    assert (kept / "hls" / "firmware").is_dir() and (kept / "report.json").is_file()


def test_compiler_errors_name_their_layer(tmp_path):
    from edgec.backends.hls4ml_backend import compile_failure

    firmware = tmp_path / "firmware"
    firmware.mkdir()
    (firmware / "proj.cpp").write_text("void proj() {\n    nnet::dense<a, b, c>(x, y, w2, b2); // fc1\n}\n")
    output = (
        "In file included from firmware/parameters.h:12:\n"
        "firmware/nnet_utils/nnet_x.h: In instantiation of 'void nnet::f()':\n"
        "firmware/proj.cpp:2:36:   required from here\n"
        "firmware/nnet_utils/nnet_x.h:40:5: error: no matching function for call to 'g(int)'\n"
    )
    message = compile_failure(output, tmp_path, "proj")
    assert "in layer fc1" in message and "nnet_x.h:40: no matching function for call to 'g(int)'" in message


def test_annotated_inputs_get_their_domain_and_bad_data_is_refused():
    from edgec.data import random_inputs, resolve_data
    from edgec.frontend.load import load_model

    loaded = load_model(corpus("finn_onnx_mlp_uint8_input"))
    x, description = random_inputs(loaded.model, 50)
    assert np.all(x == np.round(x)) and x.min() >= 0 and x.max() <= 255 and "UINT8" in description
    assert any("annotated UINT8" in note for note in loaded.notes)
    with pytest.raises(DataError, match="annotated UINT8"):
        resolve_data(np.full((4, *x.shape[1:]), 0.5, np.float32), loaded.model)
    bipolar = load_model(corpus("finn_onnx_tfc_bnn_bipolar_input"))
    xb, _ = random_inputs(bipolar.model, 50)
    assert set(np.unique(xb)) == {-1.0, 1.0}


def _bnn_with_preprocessing(path: Path) -> None:
    """x in [0, 1] -> x * 2 - 1 -> sign -> binary Dense -> sign -> binary Dense (FINN's TFC input stage)."""
    rng = np.random.default_rng(0)
    domain = "qonnx.custom_op.general"
    inits = [
        numpy_helper.from_array(np.float32(2), "two"),
        numpy_helper.from_array(np.float32(-1), "minus_one"),
        numpy_helper.from_array(np.float32(1), "one"),
        numpy_helper.from_array(np.sign(rng.standard_normal((64, 32))).astype(np.float32), "w1"),
        numpy_helper.from_array(np.sign(rng.standard_normal((32, 10))).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["a"], name="pre_scale"),
        helper.make_node("Add", ["a", "minus_one"], ["b"], name="pre_shift"),
        helper.make_node("BipolarQuant", ["b", "one"], ["q"], domain=domain),
        helper.make_node("BipolarQuant", ["w1", "one"], ["w1q"], domain=domain),
        helper.make_node("MatMul", ["q", "w1q"], ["h"]),
        helper.make_node("BipolarQuant", ["h", "one"], ["hq"], domain=domain),
        helper.make_node("BipolarQuant", ["w2", "one"], ["w2q"], domain=domain),
        helper.make_node("MatMul", ["hq", "w2q"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(domain, 1)], ir_version=8), path)


def test_bnn_input_preprocessing_becomes_an_exact_threshold(tmp_path):
    path = tmp_path / "bnn_pre.onnx"
    _bnn_with_preprocessing(path)
    # inputs on a grid the input type holds exactly, including the threshold 0.5 itself (x >= 0.5 -> +1)
    x = np.random.default_rng(1).integers(0, 9, (100, 64)).astype(np.float32) / 8
    result = edgec.build(path, target="pynq-z2", output_dir=tmp_path / "b", data=x, cross=False)
    ops = {layer["name"]: layer["op"] for layer in result.report["layers"]}
    assert any(op.startswith("BatchNormalizationQuantizedTanh") or "bnbt" in name for name, op in ops.items())
    assert not any(layer["op"] in ("ApplyAlpha",) for layer in result.report["layers"])
    assert any(p["name"] == "edgec.FoldInputAffineIntoThreshold" for p in result.report["passes"])
    ver = result.report["verification"]
    assert ver["max_abs_error"] == 0.0 and ver["argmax_agreement"] == 1.0
    threshold = [layer for layer in result.report["layers"] if "bnbt" in layer["name"]][0]
    assert threshold.get("resources", {}).get("dsp", 0) == 0


@pytest.mark.heavy
def test_ptq_8bit_is_exact_and_no_costlier_than_float(tmp_path):
    name = "tf2onnx_k2_mlp5_dense"
    result = edgec.build(
        corpus(name), target="pynq-z2", output_dir=tmp_path / "q", data=corpus_data(name), quantize=["fixed:bits=8"], cross=False
    )
    report = result.report
    ver = report["verification"]
    assert ver["bit_exact"] is True and ver["max_lsb_error"] == 0.0 and "logits" in ver["exact_at"]
    cost = report["quantization_cost"]
    float_cost, chosen = cost["float"], cost[cost["chosen"]]
    assert cost["no_worse"] is True and cost["worse_in"] == []
    assert chosen["latency_us"] <= float_cost["latency_us"] and chosen["dsp"] <= float_cost["dsp"] and chosen["lut"] <= float_cost["lut"]
    # what was chosen is what the build reports
    assert report["totals"]["resources"]["lut"] == chosen["lut"] and report["totals"]["resources"]["dsp"] == chosen["dsp"]
    record = next(p for p in report["passes"] if p["name"] == "fixed")
    assert record["output_deviation"] is not None and record["output_deviation"] < 0.05
    # every weight of the quantized layers is 8 bits
    dense = [layer for layer in report["layers"] if layer["op"] == "Dense"]
    assert dense and all(layer["precision"]["weight"].startswith(("fixed<8,", "ufixed<8,")) for layer in dense)


@pytest.mark.heavy
def test_narrow_shared_multipliers_bound_to_dsps_keep_ptq_within_the_float_luts(tmp_path):
    """At the float design's reuse factors, 8-bit variable products would go to LUTs (+7% LUT on this
    MLP); binding a layer's shared multipliers to DSP slices keeps every figure within the float
    design's, and the generated project says so to HLS."""
    name = "torch_ts_op9_mlp_view_kiai"
    out = tmp_path / "q"
    report = edgec.build(
        corpus(name), target="pynq-z2", output_dir=out, data=corpus_data(name), quantize=["fixed:bits=8"], cross=False
    ).report
    cost = report["quantization_cost"]
    assert cost["no_worse"] is True
    bound = [step.split(":")[0] for step in cost.get("repair_steps", []) if "bound to DSP" in step]
    assert bound, cost
    assert 0 < report["totals"]["resources"]["dsp"] <= cost["float"]["dsp"]
    assert report["totals"]["resources"]["lut"] <= cost["float"]["lut"]
    header = (out / "hls" / "firmware" / "edgec_products.h").read_text()
    assert "edgec_dsp_mult" in header and "BIND_OP" in header and "impl=dsp" in header
    parameters = (out / "hls" / "firmware" / "parameters.h").read_text()
    assert '#include "edgec_products.h"' in parameters
    assert parameters.count("nnet::product::edgec_dsp_mult<x_T, y_T>") == len(bound)
    assert report["verification"]["bit_exact"] is True


def test_binding_products_to_dsps_moves_them_out_of_the_luts():
    from dataclasses import replace

    from edgec.cost.device import device_for
    from edgec.cost.layer import LayerConfig
    from edgec.cost.resources import layer_resources
    from edgec.targets import load_target

    device = device_for(load_target("pynq-z2"))
    layer = LayerConfig(
        name="fc",
        kind="dense",
        op="MatMul",
        output_tensor="y",
        in_shape=[256],
        out_shape=[64],
        strategy="resource",
        reuse_factor=64,
        input_bits=8,
        weight_bits=8,
        accum_bits=20,
        result_bits=8,
        n_in=256,
        n_out=64,
    )
    in_luts = layer_resources(layer, device, depth=2)
    on_dsps = layer_resources(replace(layer, products_on_dsp=True), device, depth=2)
    assert in_luts.dsp == 0 and on_dsps.dsp == 256 * 64 // 64  # one DSP48E1 per shared 8x8 multiplier
    # each 8x8 LUT multiplier was w*i/2 = 32 LUTs
    assert in_luts.lut - on_dsps.lut == 256 * 32


@pytest.mark.heavy
def test_the_input_quantizer_is_the_input_type_not_a_layer(tmp_path):
    """A quantizer that alone reads the graph input gives the Input its exact type; the layer hls4ml
    would make of it copies values into the same type, so it is removed (and not costed): the 8-bit
    CNN is exactly as fast as the float one instead of a cycle slower, and still bit-exact."""
    name = "torch_ts_op11_cnn_bn2d_relu6"
    out = tmp_path / "q"
    report = edgec.build(
        corpus(name), target="pynq-z2", output_dir=out, data=corpus_data(name), quantize=["fixed:bits=8"], cross=False
    ).report
    first = report["layers"][0]
    assert "act" not in first["name"] and first["op"] != "Activation", first
    defines = (out / "hls" / "firmware" / "defines.h").read_text().splitlines()
    assert "ap_ufixed<8,1,AP_RND_CONV,AP_SAT" in next(line for line in defines if line.rstrip().endswith(" input_t;"))
    cost = report["quantization_cost"]
    assert cost["no_worse"] is True and report["totals"]["latency_us"] == cost["float"]["latency_us"]
    assert report["verification"]["bit_exact"] is True


def _two_layer_mlp():
    from qonnx.core.modelwrapper import ModelWrapper

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(0, 0.3, (16, 16)).astype(np.float32), rng.normal(0, 0.3, (16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["r"], name="act1"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return ModelWrapper(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])), rng.normal(0, 1, (64, 16)).astype(
        np.float32
    )


def test_layers_on_the_cpu_keep_float_arithmetic_after_ptq():
    """The CPU runs float32: its quantizers are removed (weights and activations), the one feeding
    the FPGA moves onto the FPGA, and what the FPGA computes keeps its quantizers."""
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    from edgec.passes.partition import PlaceNodes, placement_of, prepare
    from edgec.passes.quant.float_on_cpu import KeepCpuLayersFloat
    from edgec.passes.quant.registry import run_quantization

    model, x = _two_layer_mlp()
    quantized, _ = run_quantization(model, ["fixed:bits=8"], x, None)
    placed = prepare(quantized).transform(PlaceNodes("auto", {"fc1": "cpu", "act1": "cpu", "x_act_quant": "cpu", "r_act_quant": "cpu"}))
    keep = KeepCpuLayersFloat()
    stripped = placed.transform(keep)
    # the ReLU before the unsigned quantizer changes nothing (the quantizer clips negatives to 0)
    assert sorted(keep.record["removed"]) == ["act1", "fc1_weight_quant", "x_act_quant"]
    assert keep.record["moved_to_fpga"] == ["r_act_quant"]
    nodes = {n.name: n for n in stripped.graph.node}
    assert list(nodes["fc1"].input) == ["x", "w1"]  # the float model's own input and weights
    assert placement_of(nodes["r_act_quant"]) == "fpga" and "fc2_weight_quant" in nodes and "y_act_quant" in nodes
    # the CPU part computes the float model's values; from the quantizer on, the quantized model's
    for row in x[:8]:
        sample = {"x": row[None]}
        expected = execute_onnx(model.transform(InferShapes()), sample, return_full_exec_context=True)
        got = execute_onnx(stripped.transform(InferShapes()), sample, return_full_exec_context=True)
        np.testing.assert_array_equal(got["h"], expected["h"])
        quant = nodes["r_act_quant"]
        scale, bits = float(stripped.get_initializer(quant.input[1])), int(stripped.get_initializer(quant.input[3]))
        on_grid = np.clip(np.round(np.maximum(expected["h"], 0) / scale), 0, 2**bits - 1) * scale  # unsigned 8-bit of ReLU(h)
        np.testing.assert_array_equal(got["r"], on_grid.astype(np.float32))
    # a model whose quantizers all run on the FPGA is left alone
    untouched = KeepCpuLayersFloat()
    prepare(quantized).transform(PlaceNodes("auto")).transform(untouched)
    assert untouched.record == {"removed": [], "moved_to_fpga": []}


@pytest.mark.slow
def test_partitioned_ptq_leaves_the_cpu_layers_float_and_costs_no_more_than_float(tmp_path):
    """Bilinear upsampling has no hls4ml lowering: it runs on the CPU, where emulating 8-bit
    quantizers made the CPU segment 5x slower than float (+61% end to end). Kept float there, the
    quantized build is no costlier than the float one and its FPGA segment stays bit-exact."""
    name = "tf2onnx_k2_upsampling_bilinear_cls"
    report = edgec.build(
        corpus(name), target="pynq-z2", output_dir=tmp_path / "q", data=corpus_data(name), quantize=["fixed:bits=8"], cross=False
    ).report
    cost = report["quantization_cost"]
    assert cost["chosen"] == "float_on_cpu" and cost["no_worse"] is True, cost
    assert cost["float_on_cpu"]["quantizers_removed"] > 0
    assert report["totals"]["latency_us"] <= cost["float"]["latency_us"] + 1e-6
    ver = report["verification"]
    assert ver["bit_exact"] is True and all(s["max_lsb_error"] == 0.0 for s in ver["segments_exactness"])


def _mlp(tmp_path, mutate, name: str = "torch_ts_op9_mlp_view_kiai") -> Path:
    """A small Gemm MLP (a real TorchScript export from the corpus) with one thing changed."""
    model = onnx.load(corpus(name))
    mutate(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


def _set_gemm_attr(name: str, value: float):
    def mutate(model):
        gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
        next(a for a in gemm.attribute if a.name == name).f = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "code", "fragment"),
    [
        (_set_gemm_attr("alpha", float("nan")), 24, "attribute 'alpha' is NaN"),
        (lambda m: m.opset_import[0].__setattr__("version", 30), 13, "opset 30"),
        (lambda m: m.graph.input[0].type.tensor_type.shape.dim[2].__setattr__("dim_value", 1 << 20), 15, "values per sample"),
        (lambda m: m.graph.input[0].type.tensor_type.shape.dim[2].__setattr__("dim_value", 3), 24, "onnxruntime cannot run the model"),
    ],
)
@pytest.mark.heavy
def test_what_the_checker_lets_through_is_refused_at_load(tmp_path, mutate, code, fragment):
    """Found by the fuzzer: each used to end as an internal error deep in the build."""
    proc = run("build", _mlp(tmp_path, mutate, "torch_ts_op13_mlp_view"), "-o", tmp_path / "out")
    assert proc.returncode == code, proc.stderr
    assert fragment in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_gemm_alpha_beta_build(tmp_path):
    """qonnx's GemmToMatMul writes alpha/beta as float64 constants; they must stay float32."""
    path = _mlp(tmp_path, _set_gemm_attr("alpha", 0.5))
    report = edgec.build(path, target="pynq-z2", output_dir=tmp_path / "out", cross=False).report
    assert report["verification"]["decisive_agreement"] == 1.0  # (the build itself refuses below 0.99)
    assert report["verification"]["max_abs_error"] < 0.05


@pytest.mark.heavy
def test_clip_moves_after_its_quantizer_only_when_exact():
    from qonnx.core import onnx_exec as oxe
    from qonnx.core.modelwrapper import ModelWrapper

    from edgec.passes.clip_after_quant import MoveClipAfterQuantizer

    def model(hi: float, signed: int) -> ModelWrapper:
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("Clip", ["h", "lo", "hi"], ["c"], name="relu6"),
            helper.make_node(
                "Quant",
                ["c", "s", "z", "b"],
                ["y"],
                name="q",
                domain="qonnx.custom_op.general",
                signed=signed,
                narrow=0,
                rounding_mode="ROUND",
            ),
        ]
        rng = np.random.default_rng(0)
        inits = [
            numpy_helper.from_array(rng.normal(0, 2, (8, 16)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
            numpy_helper.from_array(np.array(hi, np.float32), "hi"),
            numpy_helper.from_array(np.array(2.0**-4, np.float32), "s"),
            numpy_helper.from_array(np.array(0.0, np.float32), "z"),
            numpy_helper.from_array(np.array(8.0, np.float32), "b"),
        ]
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
            inits,
        )
        from qonnx.transformation.infer_shapes import InferShapes

        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("qonnx.custom_op.general", 1)])
        return ModelWrapper(proto).transform(InferShapes())

    x = np.random.default_rng(1).normal(0, 3, (200, 8)).astype(np.float32)
    for signed in (0, 1):
        before = model(6.0, signed)
        after = before.transform(MoveClipAfterQuantizer())
        assert [n.op_type for n in after.graph.node] == ["MatMul", "Quant", "Clip"]
        for row in x:
            feed = {"x": row[None]}
            assert np.array_equal(oxe.execute_onnx(before, feed)["y"], oxe.execute_onnx(after, feed)["y"])
    off_grid = model(6.01, 0).transform(MoveClipAfterQuantizer())  # 6.01 is not on the 1/16 grid: left alone
    assert [n.op_type for n in off_grid.graph.node] == ["MatMul", "Clip", "Quant"]


@pytest.mark.slow
def test_partitioned_ptq_is_exact_segment_by_segment(tmp_path):
    """ReLU6 (Clip) before each activation quantizer, layers on the CPU between FPGA segments: every
    FPGA segment is bit-exact on the reference's values at its input."""
    name = "tf2onnx_k2_depthwise_relu6"
    report = edgec.build(
        corpus(name), target="pynq-z2", output_dir=tmp_path / "q", data=corpus_data(name), quantize=["fixed:bits=8"], cross=False
    ).report
    ver = report["verification"]
    fpga = [s for s in report["partition"]["segments"] if s["placement"] == "fpga"]
    assert len(fpga) >= 2 and len(ver["segments_exactness"]) == len(fpga)
    assert ver["bit_exact"] is True and all(s["max_lsb_error"] == 0.0 for s in ver["segments_exactness"])


def test_affine_ops_move_above_a_squeeze_unchanged():
    """tf2onnx's Conv1D: Conv -> Squeeze -> bias Add -> BatchNorm Mul/Add; the affine ops move above
    the Squeeze so BatchNorm folds into the Conv before quantization."""
    import onnxruntime as ort
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    from edgec.passes.hoist_affine import HoistAffineAboveSqueeze

    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Squeeze", ["x", "axes"], ["s"], name="squeeze"),
        helper.make_node("Add", ["s", "bias"], ["b"], name="bias_add"),
        helper.make_node("Mul", ["b", "scale"], ["y"], name="bn_mul"),
    ]
    inits = [
        numpy_helper.from_array(np.array([2], np.int64), "axes"),
        numpy_helper.from_array(rng.normal(size=(1, 8, 1)).astype(np.float32), "bias"),
        numpy_helper.from_array(rng.normal(size=(8, 1)).astype(np.float32), "scale"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 1, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 5])],
        inits,
    )
    before = ModelWrapper(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])).transform(InferShapes())
    after = before.transform(HoistAffineAboveSqueeze()).transform(InferShapes())
    assert [n.op_type for n in after.graph.node] == ["Add", "Mul", "Squeeze"]
    x = rng.normal(size=(1, 8, 1, 5)).astype(np.float32)
    run_model = lambda m: ort.InferenceSession(m.model.SerializeToString()).run(None, {"x": x})[0]  # noqa: E731
    assert np.array_equal(run_model(before), run_model(after))


@pytest.mark.heavy
def test_weights_rescaled_by_hls4ml_keep_a_type_that_holds_them(tmp_path):
    """onnxruntime QDQ with a float-scale output quantizer after a Gemm: hls4ml folds 1/scale into
    the Dense weights after edgec typed them; they used to saturate (logits off by 4.3)."""
    name = "ort_qdq_s8_perchannel_cnn1d"
    report = edgec.build(corpus(name), target="pynq-z2", output_dir=tmp_path / "b", data=corpus_data(name), cross=False).report
    ver = report["verification"]
    last = ver["segments_exactness"][-1]
    # within one step of the float-scale output quantizer (0.0785) plus one LSB of the type
    assert ver["max_abs_error"] < 0.08 and last["max_lsb_error"] <= 1.0


def test_binding_constant_products_moves_them_out_of_the_luts():
    """Products by constants with few signed digits are adders in the fabric; bound to DSP slices
    (a Latency layer's repair move) each takes one slice, zeros and powers of two stay free."""
    from edgec.cost.resources import constant_products

    census = constant_products(np.array([3, 5, 0, 4, -4, 77]), input_bits=8, weight_bits=8, dsp_kind="DSP48E1")
    # 0 and 4 are free; 3 and 5 (two signed digits) and -4 (a negation) are built in the fabric;
    # 77 = 1001101b (four signed digits) already goes to a DSP slice
    assert (census.free, census.lut_products, census.dsp_products, census.dsp) == (2, 3, 1, 1)
    assert census.lut > 0
    bound = census.bound_to_dsp()
    assert (bound.free, bound.lut_products, bound.lut, bound.dsp_products, bound.dsp) == (2, 0, 0, 4, 4)


def _slope_model(alpha: float) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (6, 12)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, 12).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (12, 4)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("LeakyRelu", ["h"], ["a"], name="leaky", alpha=alpha),
        helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "slope",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w1, b1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_ptq_rounds_a_leaky_slope_so_float32_computes_its_product_exactly():
    """onnxruntime rounds alpha * x to float32 before the quantizer rounds it again; with alpha 0.3
    that lands on the quantizer's ties (1 LSB off the fixed-point design, which rounds once). PTQ
    rounds the slope to a dyadic number short enough for every accumulator value."""
    from qonnx.core.modelwrapper import ModelWrapper

    from edgec.passes.quant.registry import run_quantization

    x = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    quantized, records = run_quantization(ModelWrapper(_slope_model(0.3)), ["fixed:bits=8"], x, None)
    leaky = next(n for n in quantized.graph.node if n.op_type == "LeakyRelu")
    alpha = helper.get_attribute_value(leaky.attribute[0])
    assert alpha != pytest.approx(0.3, abs=1e-9) and alpha == pytest.approx(0.3, rel=0.01)
    mantissa, _ = np.frexp(alpha)
    assert float(mantissa * 2**8).is_integer()  # at most 8 significant bits
    assert any("slope 0.3" in note for note in records[0]["notes"])
    # a dyadic slope already short enough is left alone
    kept, _ = run_quantization(ModelWrapper(_slope_model(0.25)), ["fixed:bits=8"], x, None)
    assert helper.get_attribute_value(next(n for n in kept.graph.node if n.op_type == "LeakyRelu").attribute[0]) == 0.25


@pytest.mark.slow
def test_ptq_is_exact_through_leaky_relu_and_elu_and_costs_no_more(tmp_path):
    """8-bit PTQ through a LeakyReLU with a float slope and an ELU (a table activation) is 0 LSB
    off the quantized reference and no costlier than the float design (found on a fresh check set
    of torch models: 1-2 LSB and +5..48% LUT before)."""
    model = _slope_model(0.3)
    rng = np.random.default_rng(4)
    model.graph.node.append(helper.make_node("Elu", ["y"], ["z"], name="elu", alpha=1.0))
    w3 = rng.normal(0, 0.5, (4, 3)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(w3, "w3"))
    model.graph.node.append(helper.make_node("MatMul", ["z", "w3"], ["out"], name="fc3"))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3]))
    path = tmp_path / "slopes.onnx"
    onnx.save(model, path)
    report = edgec.build(path, target="pynq-z2", output_dir=tmp_path / "q", quantize=["fixed:bits=8"], cross=False).report
    ver = report["verification"]
    assert ver["bit_exact"] is True and ver["max_lsb_error"] == 0.0, ver
    assert report["quantization_cost"]["no_worse"] is True, report["quantization_cost"]


def test_an_activation_reads_the_quantizer_in_front_of_it_not_the_sum():
    """Dense -> its own quantizer (ELU's table grid) -> ELU -> quantizer: hls4ml types the Dense's
    result as that first quantizer, so the ELU's index arithmetic is that wide (the cost model once
    charged it for the accumulator's 20-odd bits: +3% LUT on a fresh check model)."""
    from qonnx.core.modelwrapper import ModelWrapper

    from edgec.frontend.canonicalize import canonicalize
    from edgec.passes.quant.registry import run_quantization
    from edgec.pipeline.design import DesignOptions, cost_layers, plan_design
    from edgec.targets import load_target

    model = _slope_model(0.3)
    leaky = next(n for n in model.graph.node if n.op_type == "LeakyRelu")
    leaky.op_type, leaky.name = "Elu", "elu"
    for a in leaky.attribute:
        a.f = 1.0
    x = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    quantized, records = run_quantization(ModelWrapper(model), ["fixed:bits=8"], x, None)
    grid = next(t for name, t in records[0]["quantizers"].items() if name.endswith("_table_grid"))
    canonical = canonicalize(quantized, for_estimate=True)
    plan = plan_design(canonical.model, x, load_target("pynq-z2"), DesignOptions(), 16)
    elu = next(layer for layer in cost_layers(canonical.model, plan, plan.io_type, DesignOptions()) if layer.op == "Elu")
    width = int(grid.split("<")[1].split(",")[0])
    assert elu.input_bits == width < 16
