"""The board bundle: ``<build>/deploy/`` with everything needed to run a build on a Zynq board.

For a chain of segments (each on the FPGA, an hls4ml project, or on the board's CPU, a TVM library)
this renders, from the Jinja2 templates in ``templates/deploy/``:

- per FPGA segment, an AXI4-Stream wrapper around the hls4ml top function (``<ip>.cpp/.h``) and a
  Vitis/Vivado HLS script that synthesizes it and exports it as an IP (``hls_<ip>.tcl``);
- one Vivado script (``vivado_<overlay>.tcl``) that puts the IPs in a block design with the Zynq
  processing system and one AXI DMA per IP, and writes ``<overlay>.bit`` / ``<overlay>.hwh``;
- ``build.sh`` running those in order, ``edgec_driver.py`` (a PYNQ driver that runs the whole
  chain: layouts, float <-> fixed-point words, DMA, TVM calls) and ``README.md``.

Word format on the streams: one value per 8/16/32-bit word (the narrowest that holds the type),
the fixed-point code ``value * 2^F`` (F = width - integer bits) sign-extended for signed types and
zero-extended for unsigned ones. The driver rounds and saturates inputs exactly as the IP's
``ap_fixed`` input type would (its rounding and saturation modes are read from the project).

The types, the top function and the io type are read from the generated hls4ml project
(``firmware/<top>.h`` and ``defines.h``, the only hls4ml-specific parsing here); what a
:class:`BundleSegment` states about them is checked against the project.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgec.backends.hls4ml_backend import sanitize_identifier
from edgec.errors import BundleError, ToolchainError
from edgec.fixed_point import FixedType
from edgec.targets import Target
from edgec.templating import render
from edgec.version import __version__

DEPLOY_DIR = "deploy"

# AXI4-Stream TDATA widths the AXI DMA accepts are 8, 16, 32, ... 1024 bits (PG021 AXI DMA v7.1,
# "Stream Data Width"); one value travels in the narrowest such word that holds it. Values wider
# than 32 bits are refused: the driver converts through float64, exact only up to 53-bit codes, and
# hls4ml designs use 32 bits at most at their ports.
WORD_BITS = (8, 16, 32)
# AXI DMA "Width of Buffer Length Register" is 8..26 bits (PG021, c_sg_length_width): 26 bits lets
# one simple-mode transfer move up to 2^26 - 1 bytes. The driver splits larger batches.
DMA_LENGTH_WIDTH = 26
# AXI DMA "Max Burst Size" 2..256 beats (PG021); 256 as in hls4ml's pynq-z2/zcu102 block designs.
DMA_BURST_BEATS = 256
# The exported HLS IP's VLNV is <vendor>:<library>:<ip name>:<version>.
IP_VENDOR = "edgec.org"
IP_LIBRARY = "hls"
IP_VERSION = "1.0"

# Processing system per FPGA family (Vivado IP and pin names, from the IP's port list): the PS
# master that reaches the DMA registers, the high-performance slave port the DMA uses to reach
# DDR, the fabric clock/reset and the clock pins those two AXI ports need.
PROCESSING_SYSTEMS = {
    "zynq7000": {
        "ip": "processing_system7",
        "cell": "processing_system7_0",
        "master": "M_AXI_GP0",
        "slave": "S_AXI_HP0",
        "clock": "FCLK_CLK0",
        "resetn": "FCLK_RESET0_N",
        "port_clocks": ["M_AXI_GP0_ACLK", "S_AXI_HP0_ACLK"],
    },
    "zynqus": {
        "ip": "zynq_ultra_ps_e",
        "cell": "zynq_ultra_ps_e_0",
        "master": "M_AXI_HPM0_FPD",
        "slave": "S_AXI_HP0_FPD",
        "clock": "pl_clk0",
        "resetn": "pl_resetn0",
        "port_clocks": ["maxihpm0_fpd_aclk", "saxihp0_fpd_aclk"],
    },
}
# hls4ml's clock uncertainty defaults (vitis_backend.py 27%, vivado_backend.py 12.5%), used when
# the project does not state one.
DEFAULT_CLOCK_UNCERTAINTY = {"vitis": "27%", "vivado": "12.5%"}

_ROUNDING = {
    "AP_TRN": "TRN",
    "AP_TRN_ZERO": "TRN_ZERO",
    "AP_RND": "RND",
    "AP_RND_ZERO": "RND_ZERO",
    "AP_RND_MIN_INF": "RND_MIN_INF",
    "AP_RND_INF": "RND_INF",
    "AP_RND_CONV": "RND_CONV",
}
_SATURATION = {"AP_WRAP": "WRAP", "AP_SAT": "SAT", "AP_SAT_ZERO": "SAT_ZERO", "AP_SAT_SYM": "SAT_SYM", "AP_WRAP_SM": "WRAP_SM"}
SUPPORTED_SATURATION = ("WRAP", "SAT", "SAT_ZERO", "SAT_SYM")


@dataclass
class BundleSegment:
    """One link of the deployed chain: a part of the model on the FPGA or on the board's CPU."""

    index: int
    placement: str  # "fpga" | "cpu"
    name: str  # sanitized identifier
    input_shape: list[int]  # one sample, in the layout this segment consumes
    output_shape: list[int]
    input_perm: list[int] | None  # transpose (of the batched array) applied before this segment
    output_perm: list[int] | None  # transpose applied to its output (batched)
    # fpga only
    project_dir: str | None = None  # relative to the build folder, the hls4ml project
    top_function: str | None = None
    io_type: str | None = None  # io_parallel | io_stream
    input_type: tuple[int, int, bool] | None = None  # (width, integer bits, signed) of the IP input
    output_type: tuple[int, int, bool] | None = None
    # cpu only
    library: str | None = None  # e.g. "cpu/seg1.armv7a.so", relative to the build folder
    library_meta: str | None = None  # its JSON sidecar


@dataclass(frozen=True)
class HlsPort:
    """One port of an hls4ml top function."""

    name: str  # the C argument
    c_type: str  # its typedef (input_t, result_t)
    value_type: FixedType  # type of one value
    is_fixed: bool  # ap_fixed/ap_ufixed (False: ap_int/ap_uint)
    n_values: int  # values per sample
    pack: int  # values per stream element (io_stream), 1 for io_parallel
    array_directive: str | None = None  # io_parallel: ARRAY_RESHAPE/ARRAY_PARTITION the top function puts on this port


@dataclass(frozen=True)
class HlsInterface:
    """What the bundle needs to know about a generated hls4ml project."""

    top_function: str
    io_type: str
    input: HlsPort
    output: HlsPort
    backend: str  # vitis | vivado
    clock_uncertainty: str


def word_bits_for(width: int) -> int:
    """The AXI4-Stream word (8, 16 or 32 bits) that carries one value of a ``width``-bit type."""
    for bits in WORD_BITS:
        if width <= bits:
            return bits
    raise BundleError(
        f"a {width}-bit value does not fit the bundle's widest stream word ({WORD_BITS[-1]} bits)",
        hint="use a narrower --width or --precision for the model's input and output",
    )


# --------------------------------------------------------------------------------------------
# Reading the generated hls4ml project


def _parse_c_type(text: str) -> tuple[FixedType, bool] | None:
    """``ap_fixed<16,4,AP_RND,AP_SAT,0>`` / ``ap_ufixed<...>`` / ``ap_int<8>`` / ``ap_uint<8>``."""
    text = text.strip()
    match = re.fullmatch(r"ap_(u?)fixed\s*<\s*(\d+)\s*,\s*(-?\d+)\s*(?:,\s*(\w+)\s*)?(?:,\s*(\w+)\s*)?(?:,\s*\d+\s*)?>", text)
    if match:
        unsigned, width, integer, rounding, saturation = match.groups()
        return FixedType(
            int(width),
            int(integer),
            not unsigned,
            _ROUNDING.get(rounding or "AP_TRN", rounding or "TRN"),
            _SATURATION.get(saturation or "AP_WRAP", saturation or "WRAP"),
        ), True
    match = re.fullmatch(r"ap_(u?)int\s*<\s*(\d+)\s*>", text)
    if match:
        width = int(match.group(2))
        return FixedType(width, width, not match.group(1)), False
    return None


def _typedefs(defines: str) -> dict[str, str]:
    """``typedef <type> <name>;`` lines of hls4ml's defines.h (types may hold commas and '<>')."""
    return {m.group(2): m.group(1).strip() for m in re.finditer(r"^\s*typedef\s+(.+?)\s+(\w+)\s*;", defines, re.MULTILINE)}


def _eval_size(expr: str, defines: str) -> int:
    """An array bound such as ``3*4*2`` or ``N_INPUT_1_1*N_INPUT_2_1`` (names from #defines)."""
    constants = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s*#define\s+(\w+)\s+(\d+)\s*$", defines, re.MULTILINE)}
    size = 1
    for factor in expr.split("*"):
        factor = factor.strip()
        if factor.isdigit():
            size *= int(factor)
        elif factor in constants:
            size *= constants[factor]
        else:
            raise BundleError(f"cannot read the array size '{expr}' in the hls4ml project", hint="check the pinned hls4ml version")
    return size


def read_hls_interface(project_dir: Path, top_function: str) -> HlsInterface:
    """Read the top function's ports, their types and the io type from a generated hls4ml project."""
    project_dir = Path(project_dir)
    header_path = project_dir / "firmware" / f"{top_function}.h"
    defines_path = project_dir / "firmware" / "defines.h"
    if not header_path.is_file() or not defines_path.is_file():
        raise BundleError(
            f"{project_dir}: no hls4ml project with top function '{top_function}' (missing {header_path.name} or defines.h)",
            hint="pass the project folder and top function of an FPGA segment built by edgec",
        )
    header, defines = header_path.read_text(), defines_path.read_text()
    source_path = project_dir / "firmware" / f"{top_function}.cpp"
    source = source_path.read_text() if source_path.is_file() else ""
    match = re.search(rf"\bvoid\s+{re.escape(top_function)}\s*\(([^)]*)\)\s*;", header)
    if match is None:
        raise BundleError(f"{header_path}: no prototype of '{top_function}'", hint="check the segment's top_function")
    args = [a.strip() for a in match.group(1).split(",") if a.strip()]
    if len(args) != 2:
        raise BundleError(
            f"'{top_function}' has {len(args)} ports; the bundle supports one input and one output",
            hint="split the model so each FPGA segment has one input and one output",
        )
    typedefs = _typedefs(defines)
    ports: list[HlsPort] = []
    io_types: set[str] = set()
    for arg in args:
        stream = re.fullmatch(r"hls::stream\s*<\s*(\w+)\s*>\s*&\s*(\w+)", arg)
        array = re.fullmatch(r"(\w+)\s+(\w+)\s*\[\s*([\w\s*]+)\s*\]", arg)
        if stream:
            c_type, name = stream.groups()
            io_types.add("io_stream")
            element = typedefs.get(c_type, "")
            packed = re.fullmatch(r"nnet::array\s*<\s*(.+)\s*,\s*([\w\s*]+)\s*>", element)
            if packed is None:
                raise BundleError(
                    f"'{top_function}': stream type {c_type} is not an nnet::array ('{element}')", hint="check the pinned hls4ml version"
                )
            parsed, pack = _parse_c_type(packed.group(1)), _eval_size(packed.group(2), defines)
            n_values = None
        elif array:
            c_type, name, size = array.groups()
            io_types.add("io_parallel")
            parsed, pack, n_values = _parse_c_type(typedefs.get(c_type, "")), 1, _eval_size(size, defines)
        else:
            raise BundleError(f"'{top_function}': cannot read the port '{arg}'", hint="check the pinned hls4ml version")
        if parsed is None:
            raise BundleError(
                f"'{top_function}': port {name} has type '{typedefs.get(c_type, c_type)}', not an ap_fixed/ap_int",
                hint="the bundle carries fixed-point and integer ports only",
            )
        value_type, is_fixed = parsed
        directive = re.search(
            rf"#pragma\s+HLS\s+(ARRAY_RESHAPE|ARRAY_PARTITION)\s+variable\s*=\s*{re.escape(name)}\s+complete\s+dim\s*=\s*0", source
        )
        ports.append(
            HlsPort(
                name,
                c_type,
                value_type,
                is_fixed,
                n_values if n_values is not None else -1,
                pack,
                directive.group(1) if directive and array else None,
            )
        )
    if len(io_types) != 1:
        raise BundleError(f"'{top_function}' mixes array and stream ports", hint="check the pinned hls4ml version")
    settings = (
        dict(re.findall(r'^\s*set\s+(\w+)\s+"?([^"\n]*?)"?\s*$', (project_dir / "project.tcl").read_text(), re.MULTILINE))
        if (project_dir / "project.tcl").is_file()
        else {}
    )
    backend = settings.get("backend", "vitis").lower()
    backend = "vivado" if backend.startswith("vivado") else "vitis"
    uncertainty = settings.get("clock_uncertainty") or DEFAULT_CLOCK_UNCERTAINTY[backend]
    return HlsInterface(top_function, io_types.pop(), ports[0], ports[1], backend, uncertainty)


def _with_sizes(interface: HlsInterface, n_in: int, n_out: int) -> HlsInterface:
    """Stream ports do not state their length: take it from the segment's shapes."""

    def sized(port: HlsPort, n: int) -> HlsPort:
        if port.n_values >= 0:
            return port
        return HlsPort(port.name, port.c_type, port.value_type, port.is_fixed, n, port.pack, port.array_directive)

    return HlsInterface(
        interface.top_function,
        interface.io_type,
        sized(interface.input, n_in),
        sized(interface.output, n_out),
        interface.backend,
        interface.clock_uncertainty,
    )


def fpga_segment_from_build(build_dir: Path, index: int = 0, name: str | None = None) -> BundleSegment:
    """The FPGA segment of a whole-model build folder (``hls/`` plus ``edgec.json``)."""
    build_dir = Path(build_dir)
    meta_path = build_dir / "edgec.json"
    if not meta_path.is_file():
        raise BundleError(f"{build_dir} is not an edgec build folder (no edgec.json)", hint="run `edgec build` first")
    meta = json.loads(meta_path.read_text())
    top = meta["project_name"]
    interface = read_hls_interface(build_dir / "hls", top)
    model_shape = [int(d) for d in meta["input_shape"]]
    perm = meta.get("input_perm")
    canonical_in = [model_shape[p] for p in perm] if perm else model_shape
    return BundleSegment(
        index=index,
        placement="fpga",
        name=sanitize_identifier(name or top),
        input_shape=canonical_in[1:],
        output_shape=[int(d) for d in meta["canonical_output_shape"][1:]],
        input_perm=perm,
        output_perm=meta.get("output_perm"),
        project_dir="hls",
        top_function=top,
        io_type=interface.io_type,
        input_type=(interface.input.value_type.width, interface.input.value_type.integer, interface.input.value_type.signed),
        output_type=(interface.output.value_type.width, interface.output.value_type.integer, interface.output.value_type.signed),
    )


# --------------------------------------------------------------------------------------------
# Checking the chain


def _size(shape: list[int]) -> int:
    return int(np.prod(shape)) if shape else 1


def _check_perm(segment: BundleSegment, perm: list[int] | None, ndim: int, what: str) -> None:
    if perm is None:
        return
    if sorted(perm) != list(range(ndim + 1)) or perm[0] != 0:
        raise BundleError(
            f"segment {segment.index} ({segment.name}): {what} {perm} is not a permutation of the batched "
            f"{ndim + 1}-d array that keeps the batch axis first",
            hint="check the partitioner's layouts",
        )


def _fpga_interface(build_dir: Path, segment: BundleSegment) -> HlsInterface:
    label = f"segment {segment.index} ({segment.name})"
    if not segment.project_dir or not segment.top_function:
        raise BundleError(f"{label}: an FPGA segment needs project_dir and top_function", hint="set them from the hls4ml project")
    interface = read_hls_interface(build_dir / segment.project_dir, segment.top_function)
    n_in, n_out = _size(segment.input_shape), _size(segment.output_shape)
    interface = _with_sizes(interface, n_in, n_out)
    if segment.io_type and segment.io_type != interface.io_type:
        raise BundleError(
            f"{label}: io_type {segment.io_type} but the project is {interface.io_type}", hint="take io_type from the project"
        )
    for port, n, stated, what in (
        (interface.input, n_in, segment.input_type, "input"),
        (interface.output, n_out, segment.output_type, "output"),
    ):
        actual = (port.value_type.width, port.value_type.integer, port.value_type.signed)
        if port.n_values != n or n % port.pack:
            raise BundleError(
                f"{label}: the {what} shape holds {n} values, the project's port {port.name} {port.n_values} (in packets of {port.pack})",
                hint="the segment's shapes must match its hls4ml project",
            )
        if stated is not None and tuple(stated) != actual:
            raise BundleError(
                f"{label}: {what}_type {tuple(stated)} but the project's {port.c_type} is {actual} (width, integer, signed)",
                hint="take the types from the project (edgec.backends.bundle.read_hls_interface)",
            )
        word_bits_for(port.value_type.width)
        if port.value_type.rounding not in _ROUNDING.values():
            raise BundleError(
                f"{label}: the {what} type's rounding mode {port.value_type.rounding} is unknown to the driver",
                hint=f"use one of {', '.join(_ROUNDING.values())}",
            )
        if port.value_type.saturation not in SUPPORTED_SATURATION:
            raise BundleError(
                f"{label}: the {what} type uses {port.value_type.saturation} overflow, which the driver does not reproduce",
                hint=f"use one of {', '.join(SUPPORTED_SATURATION)}",
            )
        if not port.is_fixed and port.value_type.width == 1 and not port.value_type.signed:
            raise BundleError(
                f"{label}: the {what} port is 1-bit (an hls4ml xnor/bipolar type), which the bundle does not encode",
                hint="give the model a fixed-point input/output (e.g. a 2-bit +-1 type)",
            )
    return interface


def _read_cpu_meta(build_dir: Path, segment: BundleSegment) -> dict:
    """The TVM library's sidecar (as edgec/backends/tvm.py writes it), reduced to what the driver needs."""
    label = f"segment {segment.index} ({segment.name})"
    if not segment.library or not segment.library_meta:
        raise BundleError(f"{label}: a CPU segment needs library and library_meta", hint="set them from the TVM backend's output")
    library, meta_path = build_dir / segment.library, build_dir / segment.library_meta
    for path in (library, meta_path):
        if not path.is_file():
            raise BundleError(f"{label}: {path} does not exist", hint="compile the CPU segment before rendering the bundle")
    raw = json.loads(meta_path.read_text())
    input_shape = raw.get("input_shape")
    output_shape = raw.get("output_shape")
    if input_shape is None or output_shape is None:
        raise BundleError(f"{label}: {meta_path.name} has no input_shape/output_shape", hint="regenerate it with edgec's TVM backend")
    return {
        "input_name": raw.get("input_name", ""),
        "library_input_shape": list(input_shape),
        "library_output_shape": list(output_shape),
        "dtype": raw.get("dtype") or "float32",
        "entry": raw.get("entry") or "main",
        "tvm_version": raw.get("tvm_version", ""),
    }


# --------------------------------------------------------------------------------------------
# Rendering


def _port_context(port: HlsPort, io_type: str) -> dict:
    """A port as the templates use it: C types, the value's fixed-point format and its stream word."""
    value = port.value_type
    return {
        "name": port.name,
        "c_type": port.c_type,
        "width": value.width,
        "integer": value.integer,
        "signed": value.signed,
        "fraction": value.width - value.integer,
        "is_fixed": port.is_fixed,
        "pack": port.pack,
        "n_values": port.n_values,
        "rounding": value.rounding,
        "saturation": value.saturation,
        "word_bits": word_bits_for(value.width),
        "packets": port.n_values // port.pack,
        "array_directive": port.array_directive,
        "c_value_type": f"{port.c_type}::value_type" if io_type == "io_stream" else port.c_type,
    }


def _model_input_shape(first: BundleSegment) -> list[int]:
    """The model's sample shape (its own layout) from the first segment's shape and permutation."""
    canonical = [0, *first.input_shape]
    if not first.input_perm:
        return list(first.input_shape)
    model = [0] * len(canonical)
    for axis, source in enumerate(first.input_perm):
        model[source] = canonical[axis]
    return model[1:]


def render_bundle(
    build_dir: Path, segments: list[BundleSegment], target: Target, model_name: str, check_data: tuple[np.ndarray, np.ndarray] | None = None
) -> list[Path]:
    """Write ``build_dir/deploy/`` for ``segments`` (in order) on ``target``; returns the files written.

    ``check_data`` = (inputs in the model's layout, the outputs the build's simulation gave for
    them): saved as ``deploy/check.npz`` so ``python3 edgec_driver.py`` on the board compares the
    hardware with the simulation. ``deploy/`` is replaced as a whole (the build renders it once, in
    its staging folder). Generated code names the model by ``sanitize_identifier(model_name)``, which
    is also the overlay's file name (``<name>.bit``/``.hwh``). Raises :class:`BundleError` when the chain, a project or the
    target cannot be deployed (no FPGA, no Zynq processing system, mismatched shapes or types).
    """
    build_dir = Path(build_dir)
    if not segments:
        raise BundleError("no segments to deploy", hint="pass at least one BundleSegment")
    overlay = sanitize_identifier(model_name)
    names: set[str] = set()
    fpga_contexts: list[dict] = []
    driver_segments: list[dict] = []
    cpu_copies: list[tuple[Path, Path]] = []
    previous_size: int | None = None
    for position, segment in enumerate(segments):
        label = f"segment {segment.index} ({segment.name})"
        if segment.index != position:
            raise BundleError(f"{label} is at position {position} of the chain", hint="number segments 0, 1, 2... in chain order")
        if segment.name != sanitize_identifier(segment.name) or segment.name in names:
            raise BundleError(
                f"{label}: the name must be a unique C identifier", hint="use edgec.backends.hls4ml_backend.sanitize_identifier"
            )
        names.add(segment.name)
        _check_perm(segment, segment.input_perm, len(segment.input_shape), "input_perm")
        _check_perm(segment, segment.output_perm, len(segment.output_shape), "output_perm")
        if previous_size is not None and previous_size != _size(segment.input_shape):
            raise BundleError(
                f"{label} takes {_size(segment.input_shape)} values per sample, the segment before it gives {previous_size}",
                hint="the segments' shapes must chain",
            )
        previous_size = _size(segment.output_shape)
        common = {
            "index": segment.index,
            "name": segment.name,
            "placement": segment.placement,
            "input_shape": list(segment.input_shape),
            "output_shape": list(segment.output_shape),
            "input_perm": segment.input_perm,
            "output_perm": segment.output_perm,
        }
        if segment.placement == "fpga":
            interface = _fpga_interface(build_dir, segment)
            ip = sanitize_identifier(f"{segment.name}_axis")
            firmware = Path("..", segment.project_dir, "firmware").as_posix()
            context = {
                **common,
                "ip": ip,
                "top": interface.top_function,
                "io_type": interface.io_type,
                "firmware_dir": firmware,
                "backend": interface.backend,
                "clock_uncertainty": interface.clock_uncertainty,
                "input": _port_context(interface.input, interface.io_type),
                "output": _port_context(interface.output, interface.io_type),
                "dma": f"axi_dma_{segment.index}",
            }
            fpga_contexts.append(context)
            driver_segments.append(
                {
                    **common,
                    "ip": ip,
                    "dma": context["dma"],
                    "input_format": {k: context["input"][k] for k in ("width", "integer", "signed", "rounding", "saturation", "word_bits")},
                    "output_format": {k: context["output"][k] for k in ("width", "integer", "signed", "word_bits")},
                    "n_in": interface.input.n_values,
                    "n_out": interface.output.n_values,
                }
            )
        elif segment.placement == "cpu":
            meta = _read_cpu_meta(build_dir, segment)
            lib_shape = [d for d in meta["library_input_shape"]]
            rest = [int(d) for d in lib_shape[1:]] if lib_shape else []
            if _size(rest) != _size(segment.input_shape):
                raise BundleError(
                    f"{label}: the library takes {lib_shape}, the segment {segment.input_shape} per sample",
                    hint="the sidecar's input_shape must match the segment",
                )
            source = build_dir / segment.library
            destination = Path("cpu") / source.name
            cpu_copies.append((source, destination))
            driver_segments.append(
                {**common, **meta, "library": destination.as_posix(), "per_sample": isinstance(lib_shape[0], int) and lib_shape[0] == 1}
            )
        else:
            raise BundleError(f"{label}: placement '{segment.placement}' is neither 'fpga' nor 'cpu'", hint="use 'fpga' or 'cpu'")

    ps = None
    if fpga_contexts:
        if target.part is None:
            raise BundleError(
                f"target '{target.name}' has no FPGA, but the chain has FPGA segments",
                hint="choose a board with an FPGA (see `edgec targets`)",
            )
        ps = PROCESSING_SYSTEMS.get(str(target.family))
        if ps is None:
            raise BundleError(
                f"target '{target.name}' ({target.family}) has no Zynq processing system to run the PYNQ driver",
                hint="deploy to a Zynq board (pynq-z2, zcu104, ultra96v2, kv260)",
            )

    deploy = build_dir / DEPLOY_DIR
    if deploy.exists():
        shutil.rmtree(deploy)
    deploy.mkdir(parents=True)
    written: list[Path] = []

    def write(relative: str, text: str, executable: bool = False) -> None:
        path = deploy / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if executable:
            path.chmod(0o755)
        written.append(path)

    version = __version__
    model_input_shape = _model_input_shape(segments[0])
    pspl_bits = int(target.power.get("pspl_bus_bits", 64)) if fpga_contexts else 0
    for context in fpga_contexts:
        common = {"edgec_version": version, "model_name": overlay, "seg": context}
        write(f"{context['ip']}.h", render("deploy/axis_wrapper.h.j2", **common))
        write(f"{context['ip']}.cpp", render("deploy/axis_wrapper.cpp.j2", **common))
        write(
            f"hls_{context['ip']}.tcl",
            render(
                "deploy/hls_ip.tcl.j2",
                **common,
                part=target.part,
                clock_ns=round(1000.0 / target.clock_mhz, 3),
                vendor=IP_VENDOR,
                library=IP_LIBRARY,
                ip_version=IP_VERSION,
            ),
        )
    if fpga_contexts:
        dma = {"mm_bits": max(32, pspl_bits), "length_width": DMA_LENGTH_WIDTH, "burst": DMA_BURST_BEATS}
        write(
            f"vivado_{overlay}.tcl",
            render(
                "deploy/vivado_overlay.tcl.j2",
                edgec_version=version,
                model_name=overlay,
                overlay=overlay,
                target=target.name,
                part=target.part,
                family=target.family,
                ps=ps,
                clock_mhz_text=f"{target.clock_mhz:g}",
                board_pattern=target.board_part or "",
                segments=fpga_contexts,
                hp_bits=pspl_bits,
                dma=dma,
                vendor=IP_VENDOR,
                library=IP_LIBRARY,
                ip_version=IP_VERSION,
            ),
        )
        write(
            "build.sh",
            render(
                "deploy/build.sh.j2",
                edgec_version=version,
                overlay=overlay,
                segments=fpga_contexts,
                prefer_vivado_hls=all(c["backend"] == "vivado" for c in fpga_contexts),
            ),
            executable=True,
        )
    for source, destination in cpu_copies:
        (deploy / destination).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, deploy / destination)
        written.append(deploy / destination)
    if check_data is not None:
        x, y = (np.asarray(a) for a in check_data)
        np.savez(deploy / "check.npz", x=x, y=y)
        written.append(deploy / "check.npz")
    bundle = {
        "edgec_version": version,
        "model_name": overlay,
        "overlay": overlay,
        "target": target.name,
        "model_input_shape": model_input_shape,
        "max_dma_bytes": 2**DMA_LENGTH_WIDTH - 1,
        "segments": driver_segments,
    }
    write(
        "edgec_driver.py",
        render(
            "deploy/edgec_driver.py.j2",
            edgec_version=version,
            bundle=bundle,
            overlay=overlay,
            model_name=overlay,
            has_fpga=bool(fpga_contexts),
            has_cpu=bool(cpu_copies),
        ),
    )
    write(
        "README.md",
        render(
            "deploy/README.md.j2",
            edgec_version=version,
            model_name=overlay,
            overlay=overlay,
            target=target,
            segments=driver_segments,
            fpga=fpga_contexts,
            has_cpu=bool(cpu_copies),
            cpu_libraries=[d.as_posix() for _, d in cpu_copies],
            has_check=check_data is not None,
            model_input_shape=model_input_shape,
            prefer_vivado_hls=bool(fpga_contexts) and all(c["backend"] == "vivado" for c in fpga_contexts),
            word_bits=WORD_BITS,
            max_dma_bytes=2**DMA_LENGTH_WIDTH - 1,
            pspl_bits=pspl_bits,
            clock_mhz_text=f"{target.clock_mhz:g}" if target.clock_mhz else "",
            tvm_version=next((s["tvm_version"] for s in driver_segments if s.get("tvm_version")), ""),
        ),
    )
    return written


# --------------------------------------------------------------------------------------------
# Running an IP's wrapper on the host


class AxisEmulation:
    """An FPGA segment's AXI4-Stream IP compiled for the host with g++: the generated wrapper
    around the hls4ml firmware, run on the same words the DMA would send."""

    def __init__(self, library: Path, ip: str, n_in: int, n_out: int) -> None:
        self.library = Path(library)
        self.n_in, self.n_out = n_in, n_out
        self._lib = ctypes.cdll.LoadLibrary(str(self.library.resolve()))
        self._fn = getattr(self._lib, f"{ip}_host_run")
        pointer = np.ctypeslib.ndpointer
        self._fn.restype = ctypes.c_long
        self._fn.argtypes = [
            pointer(ctypes.c_longlong, flags="C_CONTIGUOUS"),
            ctypes.c_long,
            pointer(ctypes.c_longlong, flags="C_CONTIGUOUS"),
            pointer(ctypes.c_ubyte, flags="C_CONTIGUOUS"),
            ctypes.c_long,
        ]

    def run(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stream ``words`` (whole samples; TLAST on the last) in; returns the output words (raw
        TDATA bits as int64) and their TLAST flags."""
        from edgec.runtime.csim import captured_c_stderr

        words_in = np.ascontiguousarray(np.asarray(words).reshape(-1).astype(np.int64))
        if words_in.size % self.n_in:
            raise BundleError(f"{words_in.size} words are not whole samples of {self.n_in}", hint="send whole samples")
        n_out = words_in.size // self.n_in * self.n_out
        words_out = np.zeros(n_out, dtype=np.int64)
        last = np.zeros(n_out, dtype=np.uint8)
        with captured_c_stderr():
            got = self._fn(words_in, words_in.size, words_out, last, n_out)
        if got < 0:
            raise ToolchainError(f"{self.library.name}: an output word did not have every TKEEP bit set")
        if got != n_out:
            raise ToolchainError(f"{self.library.name}: the IP wrote {got} words, expected {n_out}")
        return words_out, last


def compile_axis_emulation(build_dir: Path, segment: BundleSegment, out_dir: Path) -> AxisEmulation:
    """Compile an FPGA segment's rendered wrapper (``deploy/<ip>.cpp``) for the host with g++
    (``-DEDGEC_HOST_AXIS``), linked to the project's compiled C-simulation library (the same
    hls4ml firmware binary the build verified), and load it."""
    build_dir, out_dir = Path(build_dir), Path(out_dir)
    interface = _fpga_interface(build_dir, segment)
    ip = sanitize_identifier(f"{segment.name}_axis")
    wrapper = build_dir / DEPLOY_DIR / f"{ip}.cpp"
    if not wrapper.is_file():
        raise BundleError(f"{wrapper} does not exist", hint="render the bundle first (render_bundle)")
    firmware = (build_dir / segment.project_dir / "firmware").resolve()
    simulations = sorted(firmware.glob(f"{interface.top_function}-*.so"), key=lambda p: p.stat().st_mtime)
    if not simulations:
        raise BundleError(f"{firmware}: no compiled C-simulation library", hint="rebuild with `edgec build`")
    out_dir.mkdir(parents=True, exist_ok=True)
    library = out_dir / f"{ip}_host.so"
    command = [
        "g++",
        "-std=c++14",
        "-O1",
        "-fPIC",
        "-shared",
        "-DEDGEC_HOST_AXIS",
        f"-I{firmware}",
        f"-I{firmware / 'ap_types'}",
        f"-I{wrapper.parent.resolve()}",
        str(wrapper.resolve()),
        str(simulations[-1]),
        f"-Wl,-rpath,{firmware}",
        "-o",
        str(library),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        first = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip()[:300])
        raise ToolchainError(f"g++ could not compile the AXI-stream wrapper of segment {segment.index}: {first}")
    return AxisEmulation(library, ip, interface.input.n_values, interface.output.n_values)
