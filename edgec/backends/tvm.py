"""CPU backend: compile a (Q)ONNX subgraph with Apache TVM (Relax) for the host and the board's CPU.

This is the only module of edgec that imports TVM (``apache-tvm`` 0.27, Relax): a TVM upgrade
touches this file alone. What it does:

- :func:`prepare_for_tvm` rewrites QONNX ``Quant``/``IntQuant``/``BipolarQuant`` nodes into standard
  ONNX operators that compute exactly what qonnx's own execution computes (same float32 operations
  in the same order), so TVM and onnxruntime can run a quantized model.
- :func:`compile_cpu_model` imports the model (``tvm.relax.frontend.onnx.from_onnx``), builds it for
  the host (``llvm``, used for simulation) and, when asked, cross-builds it for the board's CPU and
  links it with the board's cross compiler. A JSON sidecar records what the board driver and a later
  simulation need.
- :class:`HostModule` loads a host library back (Relax ``VirtualMachine``) and runs any batch size.
- :func:`elf_machine` reads an ELF header with the standard library, so a cross-built library can
  be checked against the board's machine without ``file`` or binutils.

Untuned TVM: ``tvm.compile`` with the default ``llvm`` pipeline legalizes every operator to plain
TIR loops (no schedule, no tuning, one thread); see docs/cpu-backend.md.
"""

from __future__ import annotations

import copy
import json
import shutil
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from qonnx.core.modelwrapper import ModelWrapper

from edgec.backends.hls4ml_backend import sanitize_identifier
from edgec.errors import (
    BuildFolderError,
    CrossCompilerError,
    DataError,
    DynamicShapeError,
    ToolchainError,
    UnsupportedOpsError,
)
from edgec.passes.fold_quant_constants import FoldConstantQuantizers
from edgec.targets import Target

SIDECAR_FORMAT = "edgec-cpu-library"
SIDECAR_VERSION = 1
ENTRY_FUNCTION = "main"
# The host build: LLVM's generic CPU for this machine's triple (SSE2 on x86-64), so a build folder
# stays loadable on any machine of the same architecture.
HOST_TVM_TARGET: dict = {"kind": "llvm"}

QUANT_OPS = ("Quant", "IntQuant")
BIPOLAR_OPS = ("BipolarQuant",)
STANDARD_DOMAINS = ("", "ai.onnx")
# Round exists from opset 11 on; older models are upgraded (with the ONNX version converter).
MIN_OPSET = 11
UPGRADE_TO_OPSET = 13

# ELF e_machine values (System V ABI, ELF header; the numbers are the EM_* constants of <elf.h>).
ELF_MACHINES = {
    3: "x86",
    8: "MIPS",
    20: "PowerPC",
    21: "PowerPC64",
    40: "ARM",
    62: "X86-64",
    183: "AArch64",
    243: "RISC-V",
}
# Debian packages that provide each cross compiler (installed by `make cross`).
CROSS_PACKAGES = {
    "arm-linux-gnueabihf-g++": "g++-arm-linux-gnueabihf",
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
    "x86_64-linux-gnu-g++": "g++",
}


# --------------------------------------------------------------------------------------------
# QONNX quantizers -> standard ONNX
# --------------------------------------------------------------------------------------------


def _default_opset(proto: onnx.ModelProto) -> int:
    return next((imp.version for imp in proto.opset_import if imp.domain in STANDARD_DOMAINS), 0)


class _GraphEditor:
    """Emits the replacement nodes of one quantizer with unique tensor and node names."""

    def __init__(self, model: ModelWrapper) -> None:
        self.model = model
        graph = model.graph
        self.taken = {t for n in graph.node for t in list(n.input) + list(n.output)}
        self.taken |= {i.name for i in graph.initializer} | {v.name for v in graph.input} | {v.name for v in graph.output}
        self.taken |= {n.name for n in graph.node}

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def constant(self, base: str, value: float) -> str:
        name = self.fresh(base)
        self.model.set_initializer(name, np.asarray(value, dtype=np.float32))
        return name


def _integer_attr(value: np.ndarray | None, node: onnx.NodeProto, what: str) -> int:
    if value is None or value.size != 1:
        raise UnsupportedOpsError(
            f"{node.op_type} node '{node.name}': the {what} must be a constant scalar for the CPU backend",
            hint="export the model with a fixed bit width (an initializer)",
        )
    scalar = float(np.asarray(value).reshape(-1)[0])
    if scalar != round(scalar) or scalar < 1:
        raise UnsupportedOpsError(
            f"{node.op_type} node '{node.name}': bit width {scalar:g} is not a positive integer", hint="use integer bit widths"
        )
    return int(round(scalar))


def _quant_bounds(signed: bool, narrow: bool, bits: int) -> tuple[int, int]:
    """Integer range of a QONNX ``Quant`` (qonnx ``min_int``/``max_int``), computed exactly."""
    if signed:
        low = -(2 ** (bits - 1)) + (1 if narrow else 0)
        high = 2 ** (bits - 1) - 1
    else:
        low = 0
        high = 2**bits - (2 if narrow else 1)
    return low, high


def _rounding_nodes(editor: _GraphEditor, y: str, mode: str, prefix: str, node: onnx.NodeProto) -> tuple[list[onnx.NodeProto], str]:
    """ONNX nodes for qonnx ``resolve_rounding_mode(mode)`` applied to ``y``, with the same float32 steps."""
    mode_upper = mode.upper()
    out = editor.fresh(f"{prefix}_rounded")
    if mode_upper in ("ROUND", "HALF_EVEN"):  # np.round: half to even, as ONNX Round
        return [helper.make_node("Round", [y], [out], name=editor.fresh(f"{prefix}_round"))], out
    if mode_upper == "CEIL":
        return [helper.make_node("Ceil", [y], [out], name=editor.fresh(f"{prefix}_ceil"))], out
    if mode_upper == "FLOOR":
        return [helper.make_node("Floor", [y], [out], name=editor.fresh(f"{prefix}_floor"))], out
    # The sign-magnitude modes: np.sign(x) * f(np.abs(x) [+/- 0.5]) in float32, step for step.
    sign_magnitude = {
        "UP": ("Ceil", None),  # away from zero
        "DOWN": ("Floor", None),  # toward zero (np.fix)
        "ROUND_TO_ZERO": ("Floor", None),  # Brevitas' name for DOWN
        "HALF_UP": ("Floor", 0.5),
        "HALF_DOWN": ("Ceil", -0.5),
    }
    if mode_upper not in sign_magnitude:
        raise UnsupportedOpsError(
            f"{node.op_type} node '{node.name}': unknown rounding_mode '{mode}'",
            hint="QONNX rounding modes are ROUND, HALF_EVEN, CEIL, FLOOR, UP, DOWN, HALF_UP, HALF_DOWN",
        )
    op, offset = sign_magnitude[mode_upper]
    nodes = []
    sign, magnitude = editor.fresh(f"{prefix}_sign"), editor.fresh(f"{prefix}_abs")
    nodes.append(helper.make_node("Sign", [y], [sign], name=editor.fresh(f"{prefix}_sign")))
    nodes.append(helper.make_node("Abs", [y], [magnitude], name=editor.fresh(f"{prefix}_abs")))
    if offset is not None:
        shifted = editor.fresh(f"{prefix}_shifted")
        nodes.append(
            helper.make_node("Add", [magnitude, editor.constant(f"{prefix}_half", offset)], [shifted], name=editor.fresh(f"{prefix}_shift"))
        )
        magnitude = shifted
    rounded_magnitude = editor.fresh(f"{prefix}_rounded_abs")
    nodes.append(helper.make_node(op, [magnitude], [rounded_magnitude], name=editor.fresh(f"{prefix}_{op.lower()}")))
    nodes.append(helper.make_node("Mul", [sign, rounded_magnitude], [out], name=editor.fresh(f"{prefix}_resign")))
    return nodes, out


def _bipolar_nodes(editor: _GraphEditor, y: str, prefix: str) -> tuple[list[onnx.NodeProto], str]:
    """``np.where(y >= 0, 1, -1)`` as ``Where(Less(y, 0), -1, 1)`` (opset 9 on; identical for all non-NaN y)."""
    negative, out = editor.fresh(f"{prefix}_negative"), editor.fresh(f"{prefix}_bipolar")
    nodes = [
        helper.make_node("Less", [y, editor.constant(f"{prefix}_zero", 0.0)], [negative], name=editor.fresh(f"{prefix}_less")),
        helper.make_node(
            "Where",
            [negative, editor.constant(f"{prefix}_minus_one", -1.0), editor.constant(f"{prefix}_plus_one", 1.0)],
            [out],
            name=editor.fresh(f"{prefix}_where"),
        ),
    ]
    return nodes, out


def _rewrite_quant(editor: _GraphEditor, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """qonnx ``int_quant``: y = x/s + z; clamp; round (or bipolar for signed 1-bit); (y - z) * s."""
    from qonnx.custom_op.registry import getCustomOp

    op = getCustomOp(node)  # qonnx's own attribute defaults (signed=1, narrow=1, rounding_mode=ROUND)
    signed, narrow, mode = bool(op.get_nodeattr("signed")), bool(op.get_nodeattr("narrow")), str(op.get_nodeattr("rounding_mode"))
    x, scale, zeropt, bitwidth = node.input[0], node.input[1], node.input[2], node.input[3]
    bits = _integer_attr(editor.model.get_initializer(bitwidth), node, "bit width")
    prefix = sanitize_identifier(node.name or node.output[0], fallback="quant")
    scaled, shifted = editor.fresh(f"{prefix}_scaled"), editor.fresh(f"{prefix}_shifted")
    nodes = [
        helper.make_node("Div", [x, scale], [scaled], name=editor.fresh(f"{prefix}_div")),
        helper.make_node("Add", [scaled, zeropt], [shifted], name=editor.fresh(f"{prefix}_add_zeropt")),
    ]
    if bits == 1 and signed:  # qonnx maps signed 1-bit Quant to bipolar values (no clamp, no rounding)
        more, integer = _bipolar_nodes(editor, shifted, prefix)
        nodes += more
    else:
        low, high = _quant_bounds(signed, narrow, bits)
        # np.where(y > max, max, y) then np.where(y < min, min, y) equals Clip(y, min, max) for every
        # non-NaN y since min <= max. Clip (opset 11 on, scalar bounds) fuses with its neighbours in TVM;
        # Min/Max would not (TVM imports them as stack + reduce). float32(high) is what qonnx's float32
        # arithmetic gives for 2**b - 1 (one correctly rounded step).
        clamped = editor.fresh(f"{prefix}_clamped")
        bounds = [
            editor.constant(f"{prefix}_min_int", float(np.float32(low))),
            editor.constant(f"{prefix}_max_int", float(np.float32(high))),
        ]
        nodes.append(helper.make_node("Clip", [shifted, *bounds], [clamped], name=editor.fresh(f"{prefix}_clip")))
        more, integer = _rounding_nodes(editor, clamped, mode, prefix, node)
        nodes += more
    unshifted = editor.fresh(f"{prefix}_unshifted")
    nodes.append(helper.make_node("Sub", [integer, zeropt], [unshifted], name=editor.fresh(f"{prefix}_sub_zeropt")))
    nodes.append(helper.make_node("Mul", [unshifted, scale], [node.output[0]], name=editor.fresh(f"{prefix}_rescale")))
    return nodes


def _rewrite_bipolar(editor: _GraphEditor, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """qonnx ``binary_quant``: where(x >= 0, 1, -1) * scale."""
    prefix = sanitize_identifier(node.name or node.output[0], fallback="bipolar")
    nodes, signs = _bipolar_nodes(editor, node.input[0], prefix)
    nodes.append(helper.make_node("Mul", [signs, node.input[1]], [node.output[0]], name=editor.fresh(f"{prefix}_rescale")))
    return nodes


def _upgrade_opset(model: ModelWrapper) -> ModelWrapper:
    """Upgrade a standard-ops-only model below opset 11 to opset 13 (so ``Round`` exists).

    Round nodes emitted by the rewrite are invisible to the converter: they are turned into Floor
    (same signature, present in every opset) for the conversion and back afterwards.
    """
    proto = model.model
    rounds = [n for n in proto.graph.node if n.op_type == "Round"]
    for n in rounds:
        n.op_type = "Floor"
    listed = {i.name for i in proto.graph.input}  # IR < 4: the converter wants initializers listed as inputs
    for init in proto.graph.initializer:
        if init.name not in listed:
            proto.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    names = [n.name for n in rounds]
    try:
        converted = onnx.version_converter.convert_version(proto, UPGRADE_TO_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors for unknown adapters
        raise UnsupportedOpsError(
            f"cannot upgrade opset {_default_opset(proto)} to {UPGRADE_TO_OPSET} for the CPU backend: {str(exc).splitlines()[0][:200]}",
            hint="export the model with opset 11 or newer",
        ) from None
    for n in converted.graph.node:
        if n.op_type == "Floor" and n.name in names:
            n.op_type = "Round"
    return ModelWrapper(converted)


def prepare_for_tvm(model: ModelWrapper) -> ModelWrapper:
    """Return a copy of ``model`` with every QONNX quantizer rewritten into standard ONNX ops.

    - Quantizers whose inputs are all constants (weights) are folded into initializers by running
      qonnx's own implementation on them, so their values are qonnx's by construction.
    - ``Quant``/``IntQuant`` (any integer bit width, signed/unsigned, narrow, per-tensor or
      per-channel scale and zero point, rounding modes ROUND/HALF_EVEN, CEIL, FLOOR, UP,
      DOWN/ROUND_TO_ZERO, HALF_UP, HALF_DOWN) become Div, Add, Clip, the rounding ops, Sub and Mul
      in float32, in qonnx's order (``int_quant``); a signed 1-bit Quant becomes bipolar as in qonnx.
    - ``BipolarQuant`` becomes ``Where(Less(x, 0), -1, 1) * scale``.
    - Models below opset 11 are upgraded to opset 13.

    The rewritten graph performs the same IEEE float32 operations as qonnx's numpy code, so
    onnxruntime reproduces qonnx execution exactly; TVM agrees to float32 rounding of its own
    accumulation order (see tests/test_tvm_backend.py). Any other non-standard operator raises
    :class:`UnsupportedOpsError` naming the nodes.
    """
    prepared = ModelWrapper(copy.deepcopy(model.model))
    prepared = prepared.transform(FoldConstantQuantizers())
    editor = _GraphEditor(prepared)
    graph = prepared.graph
    rewritten: list[onnx.NodeProto] = []
    unsupported: list[str] = []
    for node in graph.node:
        if node.op_type in QUANT_OPS and node.domain not in STANDARD_DOMAINS:
            rewritten += _rewrite_quant(editor, node)
        elif node.op_type in BIPOLAR_OPS and node.domain not in STANDARD_DOMAINS:
            rewritten += _rewrite_bipolar(editor, node)
        else:
            if node.domain not in STANDARD_DOMAINS:
                unsupported.append(f"{node.op_type} ('{node.name or node.output[0]}', domain {node.domain})")
            rewritten.append(node)
    if unsupported:
        raise UnsupportedOpsError(
            f"the CPU backend cannot run these custom operators: {', '.join(unsupported)}",
            hint="only QONNX Quant/IntQuant/BipolarQuant are rewritten into standard ONNX",
        )
    del graph.node[:]
    graph.node.extend(rewritten)
    kept = [imp for imp in prepared.model.opset_import if imp.domain in STANDARD_DOMAINS]
    del prepared.model.opset_import[:]
    prepared.model.opset_import.extend(kept or [helper.make_opsetid("", UPGRADE_TO_OPSET)])
    if _default_opset(prepared.model) < MIN_OPSET:
        prepared = _upgrade_opset(prepared)
    # Drop stale value_info (quantizer outputs may carry QONNX datatype annotations only).
    del prepared.graph.value_info[:]
    return prepared


def _has_qonnx_nodes(model: ModelWrapper) -> bool:
    return any(n.domain not in STANDARD_DOMAINS for n in model.graph.node)


# --------------------------------------------------------------------------------------------
# ELF checks and cross compilers
# --------------------------------------------------------------------------------------------


def elf_machine(path: Path) -> str:
    """The machine an ELF file is built for (``ARM``, ``AArch64``, ``X86-64``...), read from its header.

    Reads ``e_ident`` (magic, EI_CLASS, EI_DATA) and ``e_machine`` (offset 18, 2 bytes in the file's
    byte order). Raises :class:`ToolchainError` for files that are not ELF.
    """
    path = Path(path)
    header = path.read_bytes()[:20] if path.is_file() else b""
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise ToolchainError(f"{path}: not an ELF file", hint="rebuild the CPU library")
    byte_order = "<" if header[5] == 1 else ">"
    (machine,) = struct.unpack(byte_order + "H", header[18:20])
    return ELF_MACHINES.get(machine, f"EM_{machine}")


def elf_class_bits(path: Path) -> int:
    """32 or 64, from EI_CLASS of the ELF header."""
    header = Path(path).read_bytes()[:5]
    if len(header) < 5 or header[:4] != b"\x7fELF":
        raise ToolchainError(f"{path}: not an ELF file", hint="rebuild the CPU library")
    return 64 if header[4] == 2 else 32


def check_elf_machine(path: Path, expected: str) -> None:
    """Raise :class:`CrossCompilerError` if ``path`` is not an ELF for ``expected`` (e.g. ``ARM``)."""
    found = elf_machine(path)
    if found != expected:
        raise CrossCompilerError(
            f"{path.name} is an ELF for {found}, not for the board's {expected}",
            hint="check the target's cpu.cross_compiler and cpu.tvm_target mtriple",
        )


def host_elf_machine() -> str:
    """The ELF machine name of the running Python interpreter (this host)."""
    return elf_machine(Path(sys.executable).resolve())


def find_cross_compiler(compiler: str) -> str:
    """Absolute path of ``compiler``, or a :class:`CrossCompilerError` with the package to install."""
    found = shutil.which(compiler)
    if found:
        return found
    package = CROSS_PACKAGES.get(compiler, compiler)
    raise CrossCompilerError(
        f"cross compiler '{compiler}' not found on PATH",
        hint=f"run `make cross` (Debian: apt-get install {package})",
    )


# --------------------------------------------------------------------------------------------
# Compilation
# --------------------------------------------------------------------------------------------


@dataclass
class CpuLibrary:
    """A compiled CPU partition: host and board libraries plus the sidecar that describes them."""

    name: str
    directory: Path
    sidecar: Path
    host_library: Path
    board_library: Path | None
    board_arch: str | None
    input_name: str
    input_shape: list[int]
    output_name: str
    output_shape: list[int]
    dtype: str
    host_target: dict
    board_target: dict | None
    board_elf_machine: str | None
    cross_compiler: str | None
    tvm_version: str
    entry: str = ENTRY_FUNCTION
    prepared_qonnx: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The sidecar's content: file names relative to the sidecar's folder, so the folder can move."""
        data = asdict(self)
        data.pop("directory")
        data.update(
            format=SIDECAR_FORMAT,
            version=SIDECAR_VERSION,
            sidecar=self.sidecar.name,
            host_library=self.host_library.name,
            board_library=self.board_library.name if self.board_library else None,
        )
        return data


def _tvm():
    import tvm  # noqa: PLC0415  (imported on use: importing TVM costs ~1 s)

    return tvm


def _single_io(model: ModelWrapper, name: str) -> tuple[str, list[int], str]:
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UnsupportedOpsError(
            f"CPU partition '{name}' has {len(inputs)} inputs and {len(graph.output)} outputs",
            hint="the CPU backend compiles subgraphs with one input and one output",
        )
    vi = inputs[0]
    if vi.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise UnsupportedOpsError(f"CPU partition '{name}': input '{vi.name}' is not float32", hint="the CPU backend takes float32 inputs")
    dims = vi.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    if not shape or any(s <= 0 for s in shape):
        raise DynamicShapeError(
            f"CPU partition '{name}': input '{vi.name}' has no static shape ({shape})", hint="load the model with edgec (batch fixed to 1)"
        )
    if shape[0] != 1:
        raise DynamicShapeError(f"CPU partition '{name}': input '{vi.name}' has batch {shape[0]}, not 1", hint="declare batch 1")
    return vi.name, shape, graph.output[0].name


def _check_tvm_ops(model: ModelWrapper, name: str) -> None:
    """List every operator TVM's ONNX importer lacks at once (instead of its first failure)."""
    try:
        from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map  # private, checked in one place
    except ImportError:
        return
    known = set(_get_convert_map()) | {"Constant", "If"}
    missing = sorted({f"{n.op_type} ('{n.name or n.output[0]}')" for n in model.graph.node if n.op_type not in known})
    if missing:
        raise UnsupportedOpsError(
            f"CPU partition '{name}': TVM cannot import {', '.join(missing)}", hint="keep these layers out of the CPU partition"
        )


def _build(mod, target_dict: dict):
    tvm = _tvm()
    target = tvm.target.Target(target_dict, host=target_dict)
    return tvm.compile(mod, target=target)


def compile_cpu_model(model: ModelWrapper, target: Target, out_dir: Path, name: str, cross: bool = True) -> CpuLibrary:
    """Compile a one-input, one-output (Q)ONNX model for the host and, if ``cross``, for ``target``'s CPU.

    Writes ``<out_dir>/<name>.host.so`` (x86-64 host, for simulation), ``<out_dir>/<name>.<arch>.so``
    (board CPU, linked with ``target.cpu.cross_compiler`` and checked to be an ELF for
    ``target.cpu.elf_machine``) and the sidecar ``<out_dir>/<name>.json``. ``name`` is sanitized.
    QONNX quantizers are rewritten with :func:`prepare_for_tvm` first. The cross build is skipped
    when the target has no CPU with a ``tvm_target``.
    """
    tvm = _tvm()
    safe = sanitize_identifier(name, fallback="cpu_partition")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = _has_qonnx_nodes(model)
    runnable = prepare_for_tvm(model) if prepared else ModelWrapper(copy.deepcopy(model.model))
    input_name, input_shape, output_name = _single_io(runnable, safe)
    _check_tvm_ops(runnable, safe)

    cpu = target.cpu
    board_target = dict(cpu.tvm_target) if (cross and cpu is not None and cpu.tvm_target) else None
    if board_target is not None and not (cpu.arch and cpu.cross_compiler):
        raise CrossCompilerError(
            f"target '{target.name}': the cpu section needs tvm_target.mtriple and cross_compiler for a cross build",
            hint="see targets/pynq-z2.yaml, or compile with cross=False",
        )
    compiler = find_cross_compiler(cpu.cross_compiler) if board_target is not None else None

    from tvm.relax.frontend.onnx import from_onnx

    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        mod = from_onnx(runnable.model, shape_dict={input_name: input_shape}, dtype_dict={input_name: "float32"})
    except Exception as exc:  # TVM raises its own error types (TVMError, ValueError, ...)
        raise ToolchainError(f"TVM could not import CPU partition '{safe}': {str(exc).splitlines()[0][:300]}") from None
    timings["import_s"] = time.perf_counter() - start

    host_path = out_dir / f"{safe}.host.so"
    start = time.perf_counter()
    host_exec = _build(mod, HOST_TVM_TARGET)
    timings["build_host_s"] = time.perf_counter() - start
    start = time.perf_counter()
    host_exec.export_library(str(host_path))
    timings["export_host_s"] = time.perf_counter() - start

    board_path = None
    if board_target is not None:
        board_path = out_dir / f"{safe}.{cpu.arch}.so"
        start = time.perf_counter()
        board_exec = _build(mod, board_target)
        timings["build_board_s"] = time.perf_counter() - start
        start = time.perf_counter()
        try:
            board_exec.export_library(str(board_path), cc=compiler)
        except Exception as exc:
            raise CrossCompilerError(
                f"linking '{board_path.name}' with {compiler} failed: {str(exc).strip().splitlines()[-1][:300]}"
            ) from None
        timings["export_board_s"] = time.perf_counter() - start
        if cpu.elf_machine:
            check_elf_machine(board_path, cpu.elf_machine)

    library = CpuLibrary(
        name=safe,
        directory=out_dir,
        sidecar=out_dir / f"{safe}.json",
        host_library=host_path,
        board_library=board_path,
        board_arch=cpu.arch if board_path else None,
        input_name=input_name,
        input_shape=list(input_shape),
        output_name=output_name,
        output_shape=[],
        dtype="float32",
        host_target=dict(HOST_TVM_TARGET),
        board_target=board_target,
        board_elf_machine=elf_machine(board_path) if board_path else None,
        cross_compiler=Path(compiler).name if compiler else None,
        tvm_version=str(tvm.__version__),
        prepared_qonnx=prepared,
        timings=timings,
    )
    # The output shape as the compiled module produces it (one run on zeros, ~1 ms).
    probe = HostModule(host_path, input_shape=input_shape, output_shape=None, entry=ENTRY_FUNCTION)
    library.output_shape = list(probe.run(np.zeros(input_shape, dtype=np.float32)).shape)
    library.sidecar.write_text(json.dumps(library.to_json(), indent=2) + "\n")
    return library


# --------------------------------------------------------------------------------------------
# Running on the host
# --------------------------------------------------------------------------------------------


class HostModule:
    """A host library loaded into a Relax VirtualMachine; runs batches one sample at a time.

    The library is compiled for batch 1, exactly what the board runs; :meth:`run` loops over the
    batch (about 30 us of overhead per sample on the digits CNN, so 10,000 samples take well under
    a second plus the model's own time).
    """

    def __init__(self, library: Path, input_shape: list[int], output_shape: list[int] | None, entry: str = ENTRY_FUNCTION) -> None:
        tvm = _tvm()
        from tvm import relax

        self.library = Path(library)
        self.entry = entry
        self.input_shape = list(input_shape)
        self.output_shape = list(output_shape) if output_shape else None
        try:
            loaded = tvm.runtime.load_module(str(self.library))
            self._vm = relax.VirtualMachine(loaded, tvm.cpu())
            self._fn = self._vm[entry]
        except Exception as exc:
            raise BuildFolderError(
                f"{self.library}: cannot load the CPU library: {str(exc).splitlines()[0][:200]}",
                hint="rebuild it (the TVM version or the machine may differ from the build's)",
            ) from None
        self._tensor = tvm.runtime.tensor

    @classmethod
    def load(cls, json_path_or_dir: str | Path, name: str | None = None) -> HostModule:
        """Load from a sidecar ``<name>.json``, or from a folder and a partition ``name``."""
        path = Path(json_path_or_dir)
        if path.is_dir():
            if name is None:
                sidecars = [p for p in sorted(path.glob("*.json")) if _is_sidecar(p)]
                if len(sidecars) != 1:
                    raise BuildFolderError(f"{path}: {len(sidecars)} CPU libraries found", hint="pass the partition name")
                path = sidecars[0]
            else:
                path = path / f"{sanitize_identifier(name, fallback='cpu_partition')}.json"
        if not path.is_file() or not _is_sidecar(path):
            raise BuildFolderError(f"{path}: not an edgec CPU library sidecar", hint="compile the partition with compile_cpu_model")
        meta = json.loads(path.read_text())
        library = path.parent / meta["host_library"]
        if not library.is_file():
            raise BuildFolderError(f"{library}: host library missing", hint="rebuild the CPU partition")
        machine = elf_machine(library)
        if machine != host_elf_machine():
            raise BuildFolderError(
                f"{library.name} is for {machine}, this machine is {host_elf_machine()}", hint="rebuild the CPU partition here"
            )
        return cls(library, meta["input_shape"], meta["output_shape"], meta.get("entry", ENTRY_FUNCTION))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.input_shape[1:])

    def _call(self, sample: np.ndarray) -> np.ndarray:
        result = self._fn(self._tensor(sample))
        return result.numpy()

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run ``x`` shaped ``(N, *sample_shape)`` (float32); returns ``(N, *output_sample_shape)``."""
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if x.shape[1:] != self.sample_shape:
            raise DataError(
                f"input shape {x.shape} does not match the CPU partition's (N, {', '.join(map(str, self.sample_shape))})",
                hint="give inputs in the model's own layout with the batch first",
            )
        outputs = [self._call(x[i : i + 1]) for i in range(x.shape[0])]
        if not outputs:
            out_sample = self.output_shape[1:] if self.output_shape else []
            return np.zeros((0, *out_sample), dtype=np.float32)
        return np.concatenate(outputs, axis=0)


def _is_sidecar(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == SIDECAR_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def measure_host_latency(module: HostModule, x1: np.ndarray, repeats: int = 50) -> dict:
    """Batch-1 latency of ``module`` on this host, in ms: median and min over ``repeats`` runs.

    ``median_ms``/``min_ms`` time the compiled model inside the VM (TVM's ``time_evaluator``, one run
    per measurement, C++ timer): what a board driver calling the library sees. ``python_median_ms``/
    ``python_min_ms`` time one :meth:`HostModule.run` step from Python (tensor in, numpy out), which
    adds a few microseconds of Python/FFI overhead. Warm-up runs come first.
    """
    tvm = _tvm()
    sample = np.ascontiguousarray(np.asarray(x1, dtype=np.float32).reshape(module.input_shape))
    tensor = module._tensor(sample)
    for _ in range(5):
        module._fn(tensor).numpy()
    repeats = max(1, int(repeats))
    evaluator = module._vm.time_evaluator(module.entry, tvm.cpu(), number=1, repeat=repeats)
    vm_ms = np.asarray(evaluator(tensor).results) * 1e3
    python_ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        module._fn(tensor).numpy()
        python_ms.append((time.perf_counter() - start) * 1e3)
    return {
        "median_ms": float(np.median(vm_ms)),
        "min_ms": float(np.min(vm_ms)),
        "python_median_ms": float(np.median(python_ms)),
        "python_min_ms": float(np.min(python_ms)),
        "repeats": repeats,
        "method": "tvm time_evaluator (VM, C++ timer), one run per repeat; python_*: HostModule call wall time",
    }
