"""The board bundle (deploy/): templates, Tcl syntax, and the PYNQ driver run end to end.

No Xilinx tools or board here, so the driver runs against a stand-in ``pynq`` module whose DMA
channels act as the hardware: either the build's real C-simulation library fed with the words the
driver sends (decoded by the word format the IP documents), or the generated AXI-stream wrapper
itself, compiled with g++ around the same hls4ml firmware. The TVM segment runs the real TVM runtime.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec.backends.bundle import (
    BundleSegment,
    compile_axis_emulation,
    fpga_segment_from_build,
    read_hls_interface,
    render_bundle,
)
from edgec.errors import BundleError
from edgec.fixed_point import parse_fixed
from edgec.runtime.csim import CSimulation
from edgec.targets import load_target

RNG_SEED = 7


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _mlp(with_softmax: bool = False) -> onnx.ModelProto:
    """Gemm(8->6) - Relu - Gemm(6->4) [- Softmax]."""
    rng = np.random.default_rng(0)
    weights = {
        "W1": (rng.standard_normal((8, 6)) * 0.5).astype(np.float32),
        "b1": (rng.standard_normal(6) * 0.1).astype(np.float32),
        "W2": (rng.standard_normal((6, 4)) * 0.5).astype(np.float32),
        "b2": (rng.standard_normal(4) * 0.1).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W2", "b2"], ["logits"]),
    ]
    out = "logits"
    if with_softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["p"], axis=-1))
        out = "p"
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4])],
        weights,
    )


def _pointwise_conv() -> onnx.ModelProto:
    """NCHW input [1, 2, 3, 4] -> 1x1 Conv (2->3 channels) -> Relu: edgec runs it channels-last."""
    rng = np.random.default_rng(1)
    weights = {"W": (rng.standard_normal((3, 2, 1, 1)) * 0.6).astype(np.float32), "B": (rng.standard_normal(3) * 0.1).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 3, 4])],
        weights,
    )


@pytest.fixture(scope="module")
def mlp_build(tmp_path_factory):
    """12-bit types in 16-bit words (so sign extension shows), io_parallel."""
    path = tmp_path_factory.mktemp("bundle") / "mlp.onnx"
    onnx.save(_mlp(), path)
    return edgec.build(path, target="pynq-z2", output_dir=path.parent / "mlp_build", io_type="io_parallel", width=12)


@pytest.fixture(scope="module")
def conv_build(tmp_path_factory):
    """A channels-last layout change (input_perm) and hls4ml's stream ports, io_stream."""
    path = tmp_path_factory.mktemp("bundle") / "pw.onnx"
    onnx.save(_pointwise_conv(), path)
    return edgec.build(path, target="pynq-z2", output_dir=path.parent / "pw_build", io_type="io_stream")


def _segment_from_reports(build_dir: Path, name: str) -> BundleSegment:
    """The FPGA segment of a whole-model build, from report.json and edgec.json (the input type,
    which report.json does not list, from the project)."""
    report = json.loads((build_dir / "report.json").read_text())
    meta = json.loads((build_dir / "edgec.json").read_text())
    out_t = parse_fixed(report["layers"][-1]["precision"]["result"].replace(",0>", ">"))
    in_t = read_hls_interface(build_dir / "hls", meta["project_name"]).input.value_type
    perm = meta["input_perm"]
    canonical_in = [meta["input_shape"][p] for p in perm] if perm else meta["input_shape"]
    return BundleSegment(
        index=0,
        placement="fpga",
        name=name,
        input_shape=canonical_in[1:],
        output_shape=meta["canonical_output_shape"][1:],
        input_perm=perm,
        output_perm=meta["output_perm"],
        project_dir="hls",
        top_function=meta["project_name"],
        io_type=report["io_type"],
        input_type=(in_t.width, in_t.integer, in_t.signed),
        output_type=(out_t.width, out_t.integer, out_t.signed),
    )


# --------------------------------------------------------------------------------------------
# A stand-in for the pynq package: buffers are numpy arrays, each DMA runs a hardware model.


class _Buffer(np.ndarray):
    freed = False

    def freebuffer(self) -> None:
        self.freed = True


class _Channel:
    def __init__(self, dma: _Dma, direction: str) -> None:
        self.dma, self.direction = dma, direction

    def transfer(self, buffer: np.ndarray) -> None:
        self.dma.pending[self.direction] = buffer

    def wait(self) -> None:
        self.dma.settle()


class _Dma:
    """Simple-mode AXI DMA: MM2S streams the sent buffer into the IP, S2MM fills the receive buffer
    until TLAST; a transfer whose TLAST does not land on the buffer's end is an error."""

    def __init__(self, hardware) -> None:
        self.hardware = hardware
        self.pending: dict[str, np.ndarray] = {}
        self.sendchannel, self.recvchannel = _Channel(self, "send"), _Channel(self, "recv")
        self.transfers = 0

    def settle(self) -> None:
        if "send" not in self.pending or "recv" not in self.pending:
            return
        sent, receive = self.pending.pop("send"), self.pending.pop("recv")
        words, last = self.hardware(np.asarray(sent))
        assert words.size == receive.size, "S2MM buffer length differs from the IP's output"
        assert last[-1] and not last[:-1].any(), "TLAST must mark exactly the transfer's final word"
        receive[:] = words.astype(receive.dtype)
        self.transfers += 1


def _fake_pynq(hardware_by_dma: dict) -> types.ModuleType:
    module = types.ModuleType("pynq")
    module.allocated = []

    def allocate(shape, dtype):
        buffer = np.zeros(shape, dtype=dtype).view(_Buffer)
        module.allocated.append(buffer)
        return buffer

    class Overlay:
        def __init__(self, bitfile, download=True):
            self.bitfile = bitfile
            self.dmas = {name: _Dma(hw) for name, hw in hardware_by_dma.items()}

        def __getattr__(self, name):
            dmas = self.__dict__.get("dmas", {})
            if name in dmas:
                return dmas[name]
            raise AttributeError(name)

    module.allocate, module.Overlay = allocate, Overlay
    return module


def _decode(words: np.ndarray, width: int, integer: int, signed: bool) -> np.ndarray:
    """The IP's word format: the code in the low ``width`` bits."""
    codes = np.asarray(words).astype(np.int64) & ((1 << width) - 1)
    if signed:
        codes = np.where(codes >= 1 << (width - 1), codes - (1 << width), codes)
    return codes * 2.0 ** (integer - width)


def _csim_hardware(build_dir: Path, segment: BundleSegment):
    """The build's C-simulation library as the IP: words in -> values -> C simulation -> words out."""
    interface = read_hls_interface(build_dir / "hls", segment.top_function)
    n_in, n_out = int(np.prod(segment.input_shape)), int(np.prod(segment.output_shape))
    csim = CSimulation.from_project(build_dir / "hls", segment.top_function, n_in, n_out)
    fin, fout = interface.input.value_type, interface.output.value_type

    def run(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = _decode(words, fin.width, fin.integer, fin.signed).reshape(-1, n_in)
        out = csim.run(values).reshape(-1)
        codes = np.round(out * 2.0 ** (fout.width - fout.integer)).astype(np.int64)
        last = np.zeros(codes.size, dtype=bool)
        last[-1] = True
        return codes, last

    return run


def _load_driver(deploy: Path, monkeypatch, pynq_module: types.ModuleType | None):
    monkeypatch.setitem(sys.modules, "pynq", pynq_module)  # None: `import pynq` fails
    spec = importlib.util.spec_from_file_location(f"edgec_driver_{abs(hash(str(deploy)))}", deploy / "edgec_driver.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tcl_complete(path: Path) -> str:
    script = f"set f [open {{{path}}}]; set text [read $f]; close $f; puts [info complete $text]"
    return subprocess.run(["tclsh"], input=script, capture_output=True, text=True, check=True).stdout.strip()


# --------------------------------------------------------------------------------------------


def test_bundle_names_part_ps_and_ip_and_tcl_parses(mlp_build, tmp_path):
    build_dir = mlp_build.output_dir
    segment = _segment_from_reports(build_dir, "mlp")
    assert segment == fpga_segment_from_build(build_dir, name="mlp")
    seen = {}
    for board, part, ps, hp_bits, period in (
        ("pynq-z2", "xc7z020clg400-1", "processing_system7", 64, "10.0"),
        ("zcu104", "xczu7ev-ffvc1156-2-e", "zynq_ultra_ps_e", 128, "5.0"),
    ):
        files = render_bundle(build_dir, [segment], load_target(board), "mlp model")
        deploy = build_dir / "deploy"
        assert sorted(files) == sorted(p for p in deploy.rglob("*") if p.is_file())
        names = {p.name for p in files}
        assert {
            "mlp_axis.cpp",
            "mlp_axis.h",
            "hls_mlp_axis.tcl",
            "vivado_mlp_model.tcl",
            "build.sh",
            "edgec_driver.py",
            "README.md",
        } == names
        hls_tcl = (deploy / "hls_mlp_axis.tcl").read_text()
        vivado_tcl = (deploy / "vivado_mlp_model.tcl").read_text()
        assert f"set_part {{{part}}}" in hls_tcl and f"create_clock -period {period}" in hls_tcl
        assert "set_top mlp_axis" in hls_tcl and "export_design -format ip_catalog -vendor edgec.org -library hls -version 1.0" in hls_tcl
        assert f"set part {part}" in vivado_tcl
        assert f"xilinx.com:ip:{ps}:*" in vivado_tcl
        other = "zynq_ultra_ps_e" if ps == "processing_system7" else "processing_system7"
        assert other not in vivado_tcl
        assert "create_bd_cell -type ip -vlnv edgec.org:hls:mlp_axis:1.0 mlp_axis_0" in vivado_tcl
        assert "[get_bd_intf_pins axi_dma_0/M_AXIS_MM2S] [get_bd_intf_pins mlp_axis_0/in_stream]" in vivado_tcl
        assert f"DATA_WIDTH {{{hp_bits}}}" in vivado_tcl and f"CONFIG.c_m_axi_mm2s_data_width {{{hp_bits}}}" in vivado_tcl
        assert "CONFIG.c_m_axis_mm2s_tdata_width {16}" in vivado_tcl  # 12-bit values in 16-bit words
        wrapper = (deploy / "mlp_axis.cpp").read_text()
        assert "#pragma HLS ARRAY_RESHAPE variable=in_local complete dim=0" in wrapper  # as hls4ml's top has it on its input
        assert "proc_sys_reset" in vivado_tcl and "assign_bd_address" in vivado_tcl and "write_bitstream" in vivado_tcl
        assert "mlp_model.bit" in vivado_tcl and ".hwh" in vivado_tcl
        for tcl in (deploy / "hls_mlp_axis.tcl", deploy / "vivado_mlp_model.tcl"):
            assert _tcl_complete(tcl) == "1", tcl.name
        subprocess.run(["bash", "-n", str(deploy / "build.sh")], check=True)
        compile((deploy / "edgec_driver.py").read_text(), "edgec_driver.py", "exec")
        readme = (deploy / "README.md").read_text()
        assert "vitis_hls -f hls_mlp_axis.tcl" in readme and "vivado -mode batch -source vivado_mlp_model.tcl" in readme
        assert part in readme and "from edgec_driver import EdgecOverlay" in readme
        seen[board] = vivado_tcl
    assert seen["pynq-z2"] != seen["zcu104"]


def test_bundle_refuses_what_it_cannot_deploy(mlp_build):
    build_dir = mlp_build.output_dir
    segment = _segment_from_reports(build_dir, "mlp")
    with pytest.raises(BundleError, match="no Zynq processing system"):
        render_bundle(build_dir, [segment], load_target("arty-a7-100t"), "m")
    with pytest.raises(BundleError, match="has no FPGA"):
        render_bundle(build_dir, [segment], dataclasses.replace(load_target("pynq-z2"), part=None, family=None), "m")
    with pytest.raises(BundleError, match="input_type"):
        render_bundle(build_dir, [dataclasses.replace(segment, input_type=(16, 6, True))], load_target("pynq-z2"), "m")
    with pytest.raises(BundleError, match="shape holds 9 values"):
        render_bundle(build_dir, [dataclasses.replace(segment, input_shape=[9])], load_target("pynq-z2"), "m")


@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_driver_end_to_end_through_the_c_simulation(which, mlp_build, conv_build, monkeypatch):
    result = mlp_build if which == "mlp" else conv_build
    build_dir = result.output_dir
    segment = _segment_from_reports(build_dir, which)
    rng = np.random.default_rng(RNG_SEED)
    x = (rng.standard_normal((23, *result.report["model"]["inputs"][0]["shape"][1:])) * 2.5).astype(np.float32)
    expected = result.predict(x)
    render_bundle(build_dir, [segment], load_target("pynq-z2"), which, check_data=(x, expected))
    pynq = _fake_pynq({"axi_dma_0": _csim_hardware(build_dir, segment)})
    driver = _load_driver(build_dir / "deploy", monkeypatch, pynq)
    with driver.EdgecOverlay(max_batch=10) as accelerator:
        y = accelerator.predict(x)
        dma = accelerator.overlay.dmas["axi_dma_0"]
    assert dma.transfers == 3  # 23 samples in transfers of at most 10
    assert all(buffer.freed for buffer in pynq.allocated)
    assert y.shape[0] == 23
    np.testing.assert_array_equal(y.reshape(23, -1), expected)  # bit-exact with the build's simulation
    # ... and as close to onnxruntime as the build's own verification found it
    session = ort.InferenceSession(onnx.load(build_dir.parent / f"{'mlp' if which == 'mlp' else 'pw'}.onnx").SerializeToString())
    reference = np.concatenate([session.run(None, {"x": s[None]})[0] for s in x]).reshape(23, -1)
    assert np.max(np.abs(y.reshape(23, -1) - reference)) < 0.1
    # the board-side check on check.npz passes against the same stand-in
    assert driver.main() == 0


@pytest.mark.heavy
@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_generated_wrapper_compiled_with_gpp_is_the_ip(which, mlp_build, conv_build, monkeypatch, tmp_path):
    result = mlp_build if which == "mlp" else conv_build
    build_dir = result.output_dir
    segment = fpga_segment_from_build(build_dir, name=which)
    render_bundle(build_dir, [segment], load_target("pynq-z2"), which)
    emulation = compile_axis_emulation(build_dir, segment, tmp_path)
    captured = {}

    def hardware(words):
        out, last = emulation.run(words)
        captured["in"], captured["out"] = np.asarray(words).copy(), out
        return out, last.astype(bool)

    driver = _load_driver(build_dir / "deploy", monkeypatch, _fake_pynq({"axi_dma_0": hardware}))
    rng = np.random.default_rng(RNG_SEED + 1)
    x = (rng.standard_normal((17, *result.report["model"]["inputs"][0]["shape"][1:])) * 4).astype(np.float32)
    y = driver.EdgecOverlay().predict(x)
    np.testing.assert_array_equal(y.reshape(17, -1), result.predict(x))
    fmt = driver.BUNDLE["segments"][0]["output_format"]
    assert captured["in"].dtype == np.int16 and fmt["word_bits"] == 16
    if fmt["width"] < 16 and fmt["signed"]:  # negative codes come back sign-extended over the word
        out_words = captured["out"]
        negative = _decode(out_words, fmt["width"], fmt["integer"], True) < 0
        assert negative.any()
        assert np.all(out_words[negative] >= 2**16 - 2 ** (fmt["width"] - 1))
        assert np.all(out_words[~negative] < 2 ** (fmt["width"] - 1))


def _compile_tvm_softmax(out_dir: Path, n: int) -> tuple[str, str]:
    """Softmax over n values, compiled with TVM for this host, with a sidecar like edgec's TVM backend writes."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    model = _model(
        [helper.make_node("Softmax", ["z"], ["p"], axis=-1)],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, n])],
        {},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    executable = tvm.compile(from_onnx(model), target=tvm.target.Target({"kind": "llvm"}))
    library = out_dir / "softmax.host.so"
    executable.export_library(str(library))
    sidecar = {
        "format": "edgec-cpu-library",
        "version": 1,
        "name": "softmax",
        "input_name": "z",
        "input_shape": [1, n],
        "output_name": "p",
        "output_shape": [1, n],
        "dtype": "float32",
        "entry": "main",
        "tvm_version": tvm.__version__,
        "host_library": library.name,
    }
    (out_dir / "softmax.json").write_text(json.dumps(sidecar))
    return f"cpu/{library.name}", "cpu/softmax.json"


def test_fpga_then_cpu_chain_runs_tvm_on_the_cpu(mlp_build, monkeypatch):
    build_dir = mlp_build.output_dir
    fpga = _segment_from_reports(build_dir, "mlp")
    library, sidecar = _compile_tvm_softmax(build_dir / "cpu", 4)
    cpu = BundleSegment(
        index=1,
        placement="cpu",
        name="softmax",
        input_shape=[4],
        output_shape=[4],
        input_perm=None,
        output_perm=None,
        library=library,
        library_meta=sidecar,
    )
    files = render_bundle(build_dir, [fpga, cpu], load_target("pynq-z2"), "mlp_softmax")
    assert build_dir / "deploy" / "cpu" / "softmax.host.so" in files
    assert "TVM runtime" in (build_dir / "deploy" / "README.md").read_text()
    driver = _load_driver(build_dir / "deploy", monkeypatch, _fake_pynq({"axi_dma_0": _csim_hardware(build_dir, fpga)}))
    rng = np.random.default_rng(RNG_SEED + 2)
    x = rng.standard_normal((12, 8)).astype(np.float32)
    y = driver.EdgecOverlay().predict(x)
    assert y.shape == (12, 4) and y.dtype == np.float32
    # the CPU half equals onnxruntime's softmax of what the FPGA half computed...
    logits = mlp_build.predict(x).astype(np.float32)
    softmax = onnx.helper.make_node("Softmax", ["z"], ["p"], axis=-1)
    session = ort.InferenceSession(
        _model(
            [softmax],
            [helper.make_tensor_value_info("z", TensorProto.FLOAT, [12, 4])],
            [helper.make_tensor_value_info("p", TensorProto.FLOAT, [12, 4])],
            {},
        ).SerializeToString()
    )
    np.testing.assert_allclose(y, session.run(None, {"z": logits})[0], rtol=1e-5, atol=1e-7)
    # ... and the whole chain follows the float model (MLP + Softmax) in onnxruntime
    full = ort.InferenceSession(_mlp(with_softmax=True).SerializeToString())
    reference = np.concatenate([full.run(None, {"x": s[None]})[0] for s in x])
    assert np.max(np.abs(y - reference)) < 0.05
    assert np.mean(y.argmax(1) == reference.argmax(1)) >= 0.9


def test_cpu_only_chain_needs_no_pynq_and_no_bitstream(mlp_build, monkeypatch):
    build_dir = mlp_build.output_dir
    library, sidecar = _compile_tvm_softmax(build_dir / "cpu", 4)
    cpu = BundleSegment(
        index=0,
        placement="cpu",
        name="softmax",
        input_shape=[4],
        output_shape=[4],
        input_perm=None,
        output_perm=None,
        library=library,
        library_meta=sidecar,
    )
    files = render_bundle(build_dir, [cpu], load_target("pynq-z2"), "softmax_only")
    assert not [p for p in files if p.suffix in (".tcl", ".cpp", ".sh")]
    driver = _load_driver(build_dir / "deploy", monkeypatch, None)  # importing pynq would fail
    z = np.random.default_rng(RNG_SEED + 3).standard_normal((5, 4)).astype(np.float32)
    expected = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(driver.EdgecOverlay().predict(z), expected / expected.sum(1, keepdims=True), rtol=1e-5)


# Ground truth for the driver's float -> fixed conversion: ap_fixed itself (hls4ml's ap_types).
_PROBE_SOURCE = r"""
#include "ap_fixed.h"
#define EDGEC_PROBE(NAME, TYPE, W)                                              \
    extern "C" void NAME(const double *x, long n, long long *out) {             \
        for (long i = 0; i < n; i++) {                                          \
            TYPE value = x[i];                                                  \
            ap_uint<W> bits;                                                    \
            bits.range(W - 1, 0) = value.range(W - 1, 0);                       \
            out[i] = (long long)bits.to_uint64();                               \
        }                                                                       \
    }
typedef ap_fixed<8, 3, AP_TRN, AP_SAT> t0; EDGEC_PROBE(p0, t0, 8)
typedef ap_fixed<8, 3, AP_TRN_ZERO, AP_SAT> t1; EDGEC_PROBE(p1, t1, 8)
typedef ap_fixed<8, 3, AP_RND, AP_SAT> t2; EDGEC_PROBE(p2, t2, 8)
typedef ap_fixed<8, 3, AP_RND_ZERO, AP_SAT> t3; EDGEC_PROBE(p3, t3, 8)
typedef ap_fixed<8, 3, AP_RND_MIN_INF, AP_SAT> t4; EDGEC_PROBE(p4, t4, 8)
typedef ap_fixed<8, 3, AP_RND_INF, AP_SAT> t5; EDGEC_PROBE(p5, t5, 8)
typedef ap_fixed<8, 3, AP_RND_CONV, AP_SAT> t6; EDGEC_PROBE(p6, t6, 8)
typedef ap_fixed<8, 3, AP_RND, AP_WRAP> t7; EDGEC_PROBE(p7, t7, 8)
typedef ap_fixed<8, 3, AP_RND, AP_SAT_ZERO> t8; EDGEC_PROBE(p8, t8, 8)
typedef ap_fixed<8, 3, AP_RND, AP_SAT_SYM> t9; EDGEC_PROBE(p9, t9, 8)
typedef ap_ufixed<6, 2, AP_RND_CONV, AP_SAT> t10; EDGEC_PROBE(p10, t10, 6)
typedef ap_ufixed<6, 2, AP_TRN, AP_WRAP> t11; EDGEC_PROBE(p11, t11, 6)
typedef ap_fixed<6, -2, AP_RND, AP_SAT> t12; EDGEC_PROBE(p12, t12, 6)
typedef ap_fixed<6, 9, AP_RND_CONV, AP_WRAP> t13; EDGEC_PROBE(p13, t13, 6)
typedef ap_fixed<32, 12, AP_RND, AP_SAT> t14; EDGEC_PROBE(p14, t14, 32)
"""
_PROBE_TYPES = [  # (width, integer, signed, rounding, saturation), as in the source above
    (8, 3, True, "TRN", "SAT"),
    (8, 3, True, "TRN_ZERO", "SAT"),
    (8, 3, True, "RND", "SAT"),
    (8, 3, True, "RND_ZERO", "SAT"),
    (8, 3, True, "RND_MIN_INF", "SAT"),
    (8, 3, True, "RND_INF", "SAT"),
    (8, 3, True, "RND_CONV", "SAT"),
    (8, 3, True, "RND", "WRAP"),
    (8, 3, True, "RND", "SAT_ZERO"),
    (8, 3, True, "RND", "SAT_SYM"),
    (6, 2, False, "RND_CONV", "SAT"),
    (6, 2, False, "TRN", "WRAP"),
    (6, -2, True, "RND", "SAT"),
    (6, 9, True, "RND_CONV", "WRAP"),
    (32, 12, True, "RND", "SAT"),
]


@pytest.mark.heavy
def test_driver_rounds_and_saturates_like_ap_fixed(mlp_build, tmp_path, monkeypatch):
    import ctypes

    firmware = mlp_build.output_dir / "hls" / "firmware"
    source, library = tmp_path / "probe.cpp", tmp_path / "probe.so"
    source.write_text(_PROBE_SOURCE)
    subprocess.run(
        ["g++", "-std=c++14", "-O1", "-shared", "-fPIC", f"-I{firmware / 'ap_types'}", str(source), "-o", str(library)], check=True
    )
    probe = ctypes.cdll.LoadLibrary(str(library))
    render_bundle(mlp_build.output_dir, [fpga_segment_from_build(mlp_build.output_dir)], load_target("pynq-z2"), "m")
    driver = _load_driver(mlp_build.output_dir / "deploy", monkeypatch, None)
    rng = np.random.default_rng(RNG_SEED + 4)
    for k, (width, integer, signed, rounding, saturation) in enumerate(_PROBE_TYPES):
        lsb = 2.0 ** (integer - width)
        ties = (np.arange(-600, 601) / 2.0) * lsb  # every half step: exact ties for every rounding mode
        values = np.concatenate([ties, rng.standard_normal(400) * 2.0**integer, [0.0, -0.0, 1e9, -1e9, 3.3e5 * lsb]]).astype(np.float32)
        values = values.astype(np.float64)
        codes = np.zeros(values.size, dtype=np.int64)
        function = getattr(probe, f"p{k}")
        function.argtypes = [np.ctypeslib.ndpointer(np.float64), ctypes.c_long, np.ctypeslib.ndpointer(np.int64)]
        function(np.ascontiguousarray(values), values.size, codes)
        expected = _decode(codes, width, integer, signed) / lsb
        fmt = {"width": width, "integer": integer, "signed": signed, "rounding": rounding, "saturation": saturation, "word_bits": 32}
        got = driver.quantize(values, fmt)
        np.testing.assert_array_equal(got, expected.astype(np.int64), err_msg=f"{rounding}/{saturation} {width},{integer},{signed}")
        assert np.array_equal(driver.decode_words(driver.encode_words(values, fmt), fmt), expected * lsb)
