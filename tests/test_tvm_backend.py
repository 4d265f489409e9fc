"""The TVM CPU backend: exact QONNX rewriting, host and cross builds, ELF checks, batch runs.

Tolerances: a standalone quantizer is the same IEEE float32 operations as qonnx's numpy code, so
onnxruntime and TVM must reproduce it bit for bit. Whole quantized models are compared with qonnx
execution to float32 rounding (rtol 1e-5 on the output's scale) with identical argmax: their float
layers (MatMul/Conv/Gemm, BatchNorm) sum in a different order in TVM, and even onnxruntime running
the whole graph differs from qonnx's node-by-node onnxruntime calls by ~1e-6 in the last Gemm;
every quantizer output on the way is checked to be identical under onnxruntime.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.transformation.infer_shapes import InferShapes

from edgec.backends.tvm import (
    HostModule,
    check_elf_machine,
    compile_cpu_model,
    elf_class_bits,
    elf_machine,
    measure_host_latency,
    prepare_for_tvm,
)
from edgec.errors import BuildFolderError, CrossCompilerError, DataError, EdgecError, ToolchainError, UnsupportedOpsError
from edgec.frontend.load import load_model
from edgec.targets import load_target

ROOT = Path(__file__).resolve().parent.parent
DIGITS_CNN = ROOT / "examples" / "models" / "digits_cnn.onnx"
DIGITS_DATA = ROOT / "examples" / "data" / "digits_test.npz"
QONNX_DOMAIN = "qonnx.custom_op.general"
ROUNDING_MODES = ["ROUND", "HALF_EVEN", "CEIL", "FLOOR", "UP", "DOWN", "HALF_UP", "HALF_DOWN"]


def _require_cross_compilers() -> None:
    """The cross builds need Debian's cross compilers; `make test` installs them (`make cross`)."""
    missing = [cc for cc in ("arm-linux-gnueabihf-g++", "aarch64-linux-gnu-g++") if shutil.which(cc) is None]
    if missing:
        pytest.fail(
            f"cross compilers missing: {', '.join(missing)}; run `make cross` (apt-get install g++-arm-linux-gnueabihf g++-aarch64-linux-gnu)"
        )


def _ort_session(model: ModelWrapper) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _ort_run(model: ModelWrapper, x: np.ndarray) -> np.ndarray:
    session = _ort_session(model)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(x.shape[0])])


def _qonnx_run(model: ModelWrapper, x: np.ndarray) -> np.ndarray:
    inp, out = model.graph.input[0].name, model.graph.output[0].name
    return np.concatenate([execute_onnx(model, {inp: x[i : i + 1]})[out] for i in range(x.shape[0])])


# ---------------------------------------------------------------------------------------------
# Quantizers: exact, every configuration in one model
# ---------------------------------------------------------------------------------------------


def _probe_values() -> np.ndarray:
    """Values that exercise rounding ties, clamping at every width, signed zeros and tiny numbers."""
    rng = np.random.default_rng(7)
    ties = np.arange(-20, 20) + 0.5
    quarter_ties = (np.arange(-8, 8) + 0.5) * 0.125
    near_half = np.array([0.49999997, 0.50000006, -0.49999997, -0.50000006, 1.4999999, 2.5000002])
    extremes = np.array([1e3, -1e3, 3e9, -3e9, 1e20, -1e20, 0.0, -0.0, 1e-30, -1e-30, 255.5, 127.5, -128.5])
    return np.concatenate([ties, quarter_ties, near_half, extremes, rng.standard_normal(40) * 3]).astype(np.float32)


def _quantizer_sweep_model() -> tuple[ModelWrapper, list[str]]:
    """x (1, 4, V) -> many Quant/BipolarQuant branches -> Concat on axis 1."""
    channels = 4
    values = _probe_values()
    inits, nodes, outputs, labels = {}, [], [], []

    def const(name: str, value) -> str:
        inits[name] = np.asarray(value, dtype=np.float32)
        return name

    per_channel_scale = np.array([0.1, 0.37, 1.3, 0.0123], dtype=np.float32).reshape(1, channels, 1)
    per_channel_zp = np.array([0, 1, 2, 3], dtype=np.float32).reshape(1, channels, 1)
    configs = []
    for mode in ROUNDING_MODES:
        configs += [
            (mode, 4, 1, 0, 1.0, 0.0),
            (mode, 3, 0, 0, 0.5, 0.0),
            (mode, 8, 1, 1, per_channel_scale, 0.0),
            (mode, 5, 0, 1, 0.25, per_channel_zp),
        ]
    for bits in (1, 2, 3, 7, 8, 12, 16, 23, 24, 25, 31, 32):
        for signed in (0, 1):
            for narrow in (0, 1):
                configs.append(("ROUND", bits, signed, narrow, 0.03125 if bits > 8 else 0.5, 0.0))
    for k, (mode, bits, signed, narrow, scale, zeropt) in enumerate(configs):
        out = f"q{k}"
        nodes.append(
            helper.make_node(
                "Quant",
                ["x", const(f"s{k}", scale), const(f"z{k}", zeropt), const(f"b{k}", bits)],
                [out],
                domain=QONNX_DOMAIN,
                name=f"Quant_{k}",
                signed=signed,
                narrow=narrow,
                rounding_mode=mode,
            )
        )
        outputs.append(out)
        labels.append(f"Quant {mode} bits={bits} signed={signed} narrow={narrow}")
    for k, scale in enumerate([1.0, 0.5, per_channel_scale]):
        out = f"bq{k}"
        nodes.append(helper.make_node("BipolarQuant", ["x", const(f"bs{k}", scale)], [out], domain=QONNX_DOMAIN, name=f"BipolarQuant_{k}"))
        outputs.append(out)
        labels.append(f"BipolarQuant scale #{k}")
    nodes.append(helper.make_node("Concat", outputs, ["y"], axis=1, name="Concat_all"))
    graph = helper.make_graph(
        nodes,
        "quantizer_sweep",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, values.size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels * len(outputs), values.size])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QONNX_DOMAIN, 1)])
    proto.ir_version = 8
    return ModelWrapper(proto).transform(InferShapes()), labels


def _sweep_input() -> np.ndarray:
    values = _probe_values()
    return np.stack([values, -values, values * 3, values / 7])[None].astype(np.float32)


def _first_mismatch(labels: list[str], got: np.ndarray, want: np.ndarray) -> str:
    per_branch = got.reshape(len(labels), -1) != want.reshape(len(labels), -1) if got.shape[1] % len(labels) == 0 else None
    if per_branch is None:
        return "shape mismatch"
    bad = [labels[i] for i in range(len(labels)) if per_branch[i].any()]
    return ", ".join(bad[:5])


@pytest.mark.heavy
def test_quantizers_are_exact_under_onnxruntime_and_tvm(tmp_path):
    model, labels = _quantizer_sweep_model()
    x = _sweep_input()
    reference = execute_onnx(model, {"x": x})["y"]
    prepared = prepare_for_tvm(model)
    assert not any(n.domain not in ("", "ai.onnx") for n in prepared.graph.node)
    assert {n.op_type for n in prepared.graph.node} >= {"Div", "Round", "Ceil", "Floor", "Sign", "Where", "Clip"}
    with_ort = _ort_run(prepared, x).reshape(reference.shape)
    assert np.array_equal(with_ort, reference), _first_mismatch(
        labels, with_ort.reshape(1, len(labels), -1), reference.reshape(1, len(labels), -1)
    )
    library = compile_cpu_model(model, load_target("x86-64"), tmp_path, "quantizer_sweep", cross=False)
    with_tvm = HostModule.load(library.sidecar).run(x)
    assert np.array_equal(with_tvm, reference), _first_mismatch(
        labels, with_tvm.reshape(1, len(labels), -1), reference.reshape(1, len(labels), -1)
    )
    # the sweep really exercises ties: every rounding mode gives different results (ROUND and
    # HALF_EVEN are the same mode in qonnx)
    per_mode = dict(zip(ROUNDING_MODES, reference.reshape(len(labels), -1)[:32:4]))
    assert np.array_equal(per_mode["ROUND"], per_mode["HALF_EVEN"])
    assert len({row.tobytes() for row in per_mode.values()}) == len(ROUNDING_MODES) - 1


def _single_quant_model(mode: str) -> ModelWrapper:
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), n) for n, v in (("s", 0.5), ("z", 0.0), ("b", 4.0))]
    node = helper.make_node(
        "Quant", ["x", "s", "z", "b"], ["y"], domain=QONNX_DOMAIN, name="Quant_act", signed=1, narrow=0, rounding_mode=mode
    )
    graph = helper.make_graph(
        [node],
        "single",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QONNX_DOMAIN, 1)])
    proto.ir_version = 8
    return ModelWrapper(proto)


def test_round_to_zero_is_truncation():
    """Brevitas' ROUND_TO_ZERO (qonnx itself knows it as DOWN) truncates toward zero like np.fix."""
    x = (np.linspace(-4, 4, 64, dtype=np.float32) + 0.125)[None]
    got = _ort_run(prepare_for_tvm(_single_quant_model("ROUND_TO_ZERO")), x)
    want = np.clip(np.fix(x / np.float32(0.5)), -8, 7) * np.float32(0.5)
    assert np.array_equal(got, want)
    assert np.array_equal(got, _ort_run(prepare_for_tvm(_single_quant_model("DOWN")), x))


def test_quantizer_errors_name_the_node():
    with pytest.raises(UnsupportedOpsError, match="Quant_act.*rounding_mode 'SIDEWAYS'"):
        prepare_for_tvm(_single_quant_model("SIDEWAYS"))
    dynamic_bits = _single_quant_model("ROUND")  # the bit width computed by a node, not an initializer
    dynamic_bits.graph.node.insert(0, helper.make_node("Add", ["b", "z"], ["b_computed"], name="Add_bits"))
    dynamic_bits.graph.node[1].input[3] = "b_computed"
    with pytest.raises(UnsupportedOpsError, match="Quant_act.*bit width must be a constant"):
        prepare_for_tvm(dynamic_bits)
    custom = _single_quant_model("ROUND")
    custom.graph.node.append(helper.make_node("MultiThreshold", ["y", "s"], ["t"], domain=QONNX_DOMAIN, name="Thresholds_1"))
    with pytest.raises(UnsupportedOpsError, match="MultiThreshold \\('Thresholds_1'"):
        prepare_for_tvm(custom)


# ---------------------------------------------------------------------------------------------
# The float digits CNN on the three boards
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_pynq(tmp_path_factory):
    _require_cross_compilers()
    out = tmp_path_factory.mktemp("digits_pynq")
    model = load_model(DIGITS_CNN).model
    return model, compile_cpu_model(model, load_target("pynq-z2"), out, "digits_cnn")


def test_digits_cnn_host_matches_onnxruntime_and_board_library_is_arm(digits_pynq):
    model, library = digits_pynq
    x = np.load(DIGITS_DATA)["x"]
    got = HostModule.load(library.sidecar).run(x)
    want = _ort_run(model, x)
    assert got.shape == (x.shape[0], 10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32 rounding of a different summation order
    assert library.board_library == library.directory / "digits_cnn.armv7a.so"
    assert elf_machine(library.board_library) == "ARM" and elf_class_bits(library.board_library) == 32
    assert elf_machine(library.host_library) == "X86-64" and library.host_library.name == "digits_cnn.host.so"
    assert set(library.timings) == {"import_s", "build_host_s", "export_host_s", "build_board_s", "export_board_s"}
    assert all(v > 0 for v in library.timings.values())


def test_sidecar_describes_the_library(digits_pynq):
    _, library = digits_pynq
    meta = json.loads(library.sidecar.read_text())
    assert meta["format"] == "edgec-cpu-library" and meta["entry"] == "main" and meta["dtype"] == "float32"
    assert meta["input_name"] == "image" and meta["input_shape"] == [1, 1, 8, 8] and meta["output_shape"] == [1, 10]
    assert meta["host_library"] == "digits_cnn.host.so" and meta["board_library"] == "digits_cnn.armv7a.so"
    assert meta["board_target"]["mtriple"] == "armv7a-linux-gnueabihf" and meta["board_target"]["mfloat-abi"] == "hard"
    assert meta["board_elf_machine"] == "ARM" and meta["cross_compiler"] == "arm-linux-gnueabihf-g++"
    import tvm

    assert meta["tvm_version"] == tvm.__version__


def test_build_folder_is_relocatable_and_runs_any_batch(digits_pynq, tmp_path):
    model, library = digits_pynq
    moved = tmp_path / "moved"
    shutil.copytree(library.directory, moved)
    module = HostModule.load(moved, "digits_cnn")
    x = np.load(DIGITS_DATA)["x"][:7]
    assert module.run(x).shape == (7, 10)
    assert module.run(x[:0]).shape == (0, 10)
    np.testing.assert_array_equal(module.run(x[3:4]), module.run(x)[3:4])
    with pytest.raises(DataError, match="does not match"):
        module.run(np.zeros((2, 8, 8), dtype=np.float32))
    with pytest.raises(BuildFolderError):
        HostModule.load(tmp_path / "nowhere", "digits_cnn")


def test_host_latency_tvm_vs_onnxruntime(digits_pynq):
    model, library = digits_pynq
    x1 = np.load(DIGITS_DATA)["x"][:1]
    latency = measure_host_latency(HostModule.load(library.sidecar), x1, repeats=20)
    assert latency["repeats"] == 20 and 0 < latency["min_ms"] <= latency["median_ms"]
    assert latency["python_min_ms"] >= latency["min_ms"]  # the Python call wraps the VM run


@pytest.mark.heavy
@pytest.mark.parametrize("board", ["zcu104", "rpi4"])
def test_aarch64_boards_get_aarch64_libraries(board, tmp_path):
    _require_cross_compilers()
    library = compile_cpu_model(load_model(DIGITS_CNN).model, load_target(board), tmp_path, "digits_cnn")
    assert library.board_arch == "aarch64" and library.board_library.name == "digits_cnn.aarch64.so"
    assert elf_machine(library.board_library) == "AArch64" and elf_class_bits(library.board_library) == 64


# ---------------------------------------------------------------------------------------------
# QONNX models against qonnx execution
# ---------------------------------------------------------------------------------------------


def _digits_features(n: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().data[:n] / 16.0).astype(np.float32)


@pytest.mark.parametrize(
    "name,inputs",
    [
        ("brevitas_digits_mlp.onnx", lambda data: _digits_features(60)),
        ("TFC_2W2A.onnx", lambda data: np.load(data / "mnist_test_300.npz")["x"][:60]),
        ("mnist_bnn_mlp.onnx", lambda data: np.load(data / "mnist_bnn_eval.npz")["x"][:60].astype(np.float32)),
    ],
)
@pytest.mark.heavy
def test_qonnx_models_match_qonnx_execution(name, inputs, data_dir, tmp_path):
    model = load_model(data_dir / name).model
    x = inputs(data_dir)
    reference = _qonnx_run(model, x)
    prepared = prepare_for_tvm(model)
    # every activation quantizer's output is bit-identical under onnxruntime
    quantized = [
        n.output[0] for n in model.graph.node if n.op_type in ("Quant", "BipolarQuant") and model.get_initializer(n.input[0]) is None
    ]
    probe = onnx.ModelProto()
    probe.CopyFrom(prepared.model)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in quantized)
    session = _ort_session(ModelWrapper(probe))
    inp = model.graph.input[0].name
    for i in range(10):
        context = execute_onnx(model, {inp: x[i : i + 1]}, return_full_exec_context=True)
        outputs = dict(zip([o.name for o in probe.graph.output], session.run(None, {inp: x[i : i + 1]})))
        for tensor in quantized:
            assert np.array_equal(outputs[tensor], context[tensor]), f"{name}: quantizer output {tensor} differs"
    scale = float(np.abs(reference).max())
    np.testing.assert_allclose(_ort_run(prepared, x), reference, rtol=0, atol=1e-5 * scale)
    library = compile_cpu_model(model, load_target("x86-64"), tmp_path, name, cross=False)
    assert library.prepared_qonnx
    got = HostModule.load(library.sidecar).run(x)
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-5 * scale)
    assert np.array_equal(got.argmax(-1), reference.argmax(-1))


# ---------------------------------------------------------------------------------------------
# Errors, ELF checks, names
# ---------------------------------------------------------------------------------------------


def _tiny_float_model(inputs: int = 1) -> ModelWrapper:
    names = [f"x{i}" for i in range(inputs)]
    node = helper.make_node("Add", names, ["y"], name="Add_0") if inputs == 2 else helper.make_node("Relu", names, ["y"], name="Relu_0")
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return ModelWrapper(proto)


def test_missing_cross_compiler_is_a_clear_error(tmp_path):
    text = (
        (ROOT / "targets" / "pynq-z2.yaml")
        .read_text()
        .replace("cross_compiler: arm-linux-gnueabihf-g++", "cross_compiler: no-such-arm-g++")
    )
    board = tmp_path / "board.yaml"
    board.write_text(text)
    with pytest.raises(CrossCompilerError) as info:
        compile_cpu_model(_tiny_float_model(), load_target(str(board)), tmp_path / "out", "tiny")
    assert "no-such-arm-g++" in str(info.value) and "make cross" in info.value.user_message()
    assert isinstance(info.value, EdgecError) and info.value.exit_code == ToolchainError.exit_code


def test_elf_checks(tmp_path):
    library = compile_cpu_model(_tiny_float_model(), load_target("x86-64"), tmp_path, "tiny", cross=True)
    assert library.board_library.name == "tiny.x86_64.so" and elf_machine(library.board_library) == "X86-64"
    check_elf_machine(library.host_library, "X86-64")
    with pytest.raises(CrossCompilerError, match="is an ELF for X86-64, not for the board's ARM"):
        check_elf_machine(library.host_library, "ARM")
    assert elf_machine(Path(sys.executable).resolve()) == "X86-64"
    not_elf = tmp_path / "fake.so"
    not_elf.write_text("#!/bin/sh\n")
    with pytest.raises(ToolchainError, match="not an ELF file"):
        elf_machine(not_elf)


def test_partition_shape_errors(tmp_path):
    with pytest.raises(UnsupportedOpsError, match="2 inputs and 1 outputs"):
        compile_cpu_model(_tiny_float_model(inputs=2), load_target("x86-64"), tmp_path, "two", cross=False)


def test_hostile_name_is_sanitized(tmp_path):
    library = compile_cpu_model(_tiny_float_model(), load_target("x86-64"), tmp_path / "out", "../evil name; rm -rf", cross=False)
    assert library.name == "evil_name_rm_rf"
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"evil_name_rm_rf.host.so", "evil_name_rm_rf.json"}
    assert not list(tmp_path.glob("*.so"))
