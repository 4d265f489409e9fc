"""The build pipeline: load -> canonicalize -> configure -> lower -> verify -> report.

The build happens in a temporary folder next to the output folder and is moved into place only
when it succeeded, so a failed build never leaves a half-written folder behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgec.backends.bundle import render_bundle
from edgec.backends.hls4ml_backend import lower, sanitize_identifier
from edgec.cost.layer import LayerConfig
from edgec.errors import OutputExistsError, VerificationError
from edgec.pipeline.config import BuildConfig
from edgec.pipeline.design import DesignOptions
from edgec.pipeline.design_report import Measurements, cost_partitioned_design, cpu_weight_layers, target_report
from edgec.pipeline.flow import PlannedSegment, design_decisions, design_flow, design_passes
from edgec.report import SCHEMA_VERSION, render_summary, write_report
from edgec.report_html import write_html
from edgec.runtime.hetero import SegmentRunner, run_chain, to_canonical_layout
from edgec.steps import enter, guarded
from edgec.verify import compare, first_divergence, output_task, reference_outputs, tensor_values
from edgec.version import __version__

log = logging.getLogger(__name__)
META_FILE = "edgec.json"


def bit_exactness(
    reference: np.ndarray, simulated: np.ndarray, output_precision: str, quantized: bool, output_step: float | None = None
) -> dict:
    """For a quantized model: whether the C-simulation equals the quantized reference (same argmax
    on every sample, every output within one LSB) and the largest error in LSBs. None for float
    models, whose reference is not on any fixed-point grid.

    The LSB is the output type's, or, when the model's output is a quantizer with a coarser (float)
    step ``output_step`` (onnxruntime QDQ logits), that step: the model's own output grid. Values
    on a float-scaled grid are not exact in fixed point, so there the tolerance is one step plus
    one LSB of the type they are written in (hls4ml truncates into it)."""
    import re

    if not quantized:
        return {"bit_exact": None, "max_lsb_error": None}
    match = re.search(r"fixed<\s*(\d+)\s*,\s*(-?\d+)", output_precision)
    if match is None:
        return {"bit_exact": None, "max_lsb_error": None}
    type_lsb = 2.0 ** -(int(match.group(1)) - int(match.group(2)))
    lsb, tolerance = type_lsb, type_lsb
    if output_step is not None and output_step > type_lsb:
        lsb, tolerance = output_step, output_step + type_lsb
    error = float(np.max(np.abs(reference - simulated))) if reference.size else 0.0
    same_argmax = bool(np.all(reference.argmax(-1) == simulated.argmax(-1)))
    result = {"bit_exact": bool(same_argmax and error <= tolerance * (1 + 1e-9)), "max_lsb_error": round(error / lsb, 4), "output_lsb": lsb}
    if lsb != type_lsb:
        result["lsb_of"] = "the model's output quantizer (its float scale)"
        result["tolerance_lsb"] = round(tolerance / lsb, 6)
    return result


def output_quantizer_step(model) -> float | None:
    """The step of the quantizer that produces the model's output (a scalar scale), if one does."""
    producer = model.find_producer(model.graph.output[0].name)
    if producer is None or producer.op_type != "Quant":
        return None
    scale = model.get_initializer(producer.input[1])
    return float(np.asarray(scale).reshape(-1)[0]) if scale is not None and np.size(scale) == 1 else None


@dataclass
class BuildResult:
    """What ``edgec.build`` returns: the report, the folder, and the simulated design."""

    output_dir: Path
    report: dict
    _meta: dict

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run the simulated design (C simulation for FPGA parts, TVM host build for CPU parts) on
        inputs in the model's own layout; returns (N, outputs)."""
        return simulate_folder(self.output_dir, np.asarray(x, dtype=np.float32), self._meta)


def _segments_meta(meta: dict) -> list[dict]:
    """The build's segments; a folder from before partitioning has one FPGA segment in ``hls/``."""
    if "segments" in meta:
        return meta["segments"]
    return [
        {
            "placement": "fpga",
            "project_dir": "hls",
            "project_name": meta["project_name"],
            "n_in": meta["n_in"],
            "n_out": meta["n_out"],
            "input_perm": meta["input_perm"],
            "output_perm": meta["output_perm"],
            "canonical_output_shape": meta["canonical_output_shape"],
            "input_shape": meta["input_shape"],
            "output_shape": [1, meta["n_out"]],
        }
    ]


def simulate_folder(output_dir: Path, x: np.ndarray, meta: dict | None = None) -> np.ndarray:
    """Simulate inputs (model layout) with a finished build folder: every segment in order."""
    output_dir = Path(output_dir)
    meta = meta or json.loads((output_dir / META_FILE).read_text())
    sample_shape = meta["input_shape"][1:]
    if list(x.shape) == sample_shape:
        x = x[None]
    runners = [SegmentRunner(segment, output_dir) for segment in _segments_meta(meta)]
    return run_chain(runners, x)[0]


def _render_bundle(
    staging: Path, segments_meta: list[dict], tgt, model_name: str, x: np.ndarray, simulated: np.ndarray, cross: bool
) -> dict:
    """Write ``deploy/`` (PYNQ driver, HLS/Vivado scripts, README; edgec.backends.bundle) for a Zynq
    board; a board or design the bundle cannot serve is reported, not fatal (the build is still valid)."""
    from edgec.backends.bundle import BundleSegment, read_hls_interface
    from edgec.errors import BundleError

    if not tgt.has_fpga:
        return {"skipped": f"{tgt.name} has no FPGA: the CPU library in cpu/ is the deliverable"}
    if any(entry["placement"] == "cpu" and not entry.get("board_library") for entry in segments_meta):
        return {"skipped": "CPU segments were built for this host only (--no-cross)" if not cross else "a CPU segment has no board library"}
    segments = []
    try:
        for entry in segments_meta:
            if entry["placement"] == "fpga":
                interface = read_hls_interface(staging / entry["project_dir"], entry["project_name"])
                perm = entry["input_perm"]
                shape = entry["input_shape"]
                canonical_in = [shape[i] for i in perm] if perm else shape
                segments.append(
                    BundleSegment(
                        index=entry["index"],
                        placement="fpga",
                        name=entry["name"],
                        input_shape=list(canonical_in[1:]),
                        output_shape=list(entry["canonical_output_shape"][1:]),
                        input_perm=perm,
                        output_perm=entry["output_perm"],
                        project_dir=entry["project_dir"],
                        top_function=entry["project_name"],
                        io_type=interface.io_type,
                        input_type=(
                            interface.input.value_type.width,
                            interface.input.value_type.integer,
                            interface.input.value_type.signed,
                        ),
                        output_type=(
                            interface.output.value_type.width,
                            interface.output.value_type.integer,
                            interface.output.value_type.signed,
                        ),
                    )
                )
            else:
                segments.append(
                    BundleSegment(
                        index=entry["index"],
                        placement="cpu",
                        name=entry["name"],
                        input_shape=list(entry["input_shape"][1:]),
                        output_shape=list(entry["output_shape"][1:]),
                        input_perm=None,
                        output_perm=None,
                        library=entry["board_library"],
                        library_meta=entry["library_meta"],
                    )
                )
        written = render_bundle(staging, segments, tgt, model_name, check_data=(x[:64], simulated[:64]))
    except BundleError as err:
        shutil.rmtree(staging / "deploy", ignore_errors=True)
        return {"skipped": err.user_message()}
    return {"folder": "deploy", "files": sorted(str(path.relative_to(staging)) for path in written)}


def _logits_exactness(project, canonical_model, x_canon: np.ndarray) -> dict | None:
    """For a quantized model ending in Softmax: hls4ml's softmax is table-based, so the output cannot
    be bit-exact; judge the layer feeding it (the logits) against the quantized reference instead."""
    import re

    from edgec.backends.hls4ml_backend import PASS_THROUGH_CLASSES

    computing = [layer for layer in project.layers if layer.op not in PASS_THROUGH_CLASSES]
    if len(computing) < 2 or computing[-1].op != "Softmax":
        return None
    logits = computing[-2]
    n = min(64, x_canon.shape[0])
    shape = [n, *canonical_model.get_tensor_shape(canonical_model.graph.input[0].name)[1:]]
    try:
        reference = tensor_values(canonical_model, x_canon[:n].reshape(shape), [logits.onnx_tensor])[logits.onnx_tensor].reshape(n, -1)
        simulated = project.trace(x_canon[:n])[logits.name]
    except (KeyError, ValueError):
        return None
    match = re.search(r"fixed<\s*(\d+)\s*,\s*(-?\d+)", logits.precision.get("result", ""))
    if match is None or reference.shape != simulated.shape:
        return None
    lsb = 2.0 ** -(int(match.group(1)) - int(match.group(2)))
    error = float(np.max(np.abs(reference - simulated))) if reference.size else 0.0
    return {
        "bit_exact": error == 0.0,
        "max_lsb_error": round(error / lsb, 4),
        "output_lsb": lsb,
        "exact_at": f"{logits.name} (the logits; {computing[-1].name} is hls4ml's table-based softmax, which no fixed-point design "
        f"computes exactly: its own error is in max_abs_error)",
    }


def _segment_exactness(p: PlannedSegment, project, is_last: bool) -> dict | None:
    """Bit-exactness of one FPGA segment of a partitioned quantized build, fed the reference's own
    values at its input (so what the CPU segments before it did does not count against it): its
    C simulation against the quantized reference of the same segment (the logits when it ends in
    hls4ml's table softmax)."""
    if p.x_in is None or p.canonical is None:
        return None
    canonical = p.canonical.model
    x_canon = to_canonical_layout(np.asarray(p.x_in[:64], dtype=np.float32), p.canonical.input_perm)
    if is_last:
        logits = _logits_exactness(project, canonical, x_canon)
        if logits is not None:
            return {"segment": p.segment.name, **logits}
    out_name = canonical.graph.output[0].name
    shape = [x_canon.shape[0], *canonical.get_tensor_shape(canonical.graph.input[0].name)[1:]]
    reference = tensor_values(canonical, x_canon.reshape(shape), [out_name])[out_name].reshape(x_canon.shape[0], -1)
    simulated = project.predict(x_canon)
    if reference.shape != simulated.shape:
        return None
    exact = bit_exactness(reference, simulated, project.layers[-1].precision.get("result", ""), True)
    if exact["bit_exact"] is None:
        return None
    return {
        "segment": p.segment.name,
        "bit_exact": exact["max_lsb_error"] == 0.0,
        "max_lsb_error": exact["max_lsb_error"],
        "output_lsb": exact["output_lsb"],
    }


def _partitioned_exactness(planned: list[PlannedSegment], projects: dict, end_to_end: dict) -> dict:
    """A partitioned quantized build is judged segment by segment: every FPGA segment must be exact
    on the reference's inputs. The CPU segments compute in float32 (TVM), whose sums differ from
    onnxruntime's by a few ulps; where such a value sits on a rounding boundary of the next
    quantizer it moves by one step, so the end-to-end error is reported, not required to be 0."""
    per = []
    for index, p in enumerate(planned):
        if p.segment.placement == "fpga":
            result = _segment_exactness(p, projects[p.segment.index], index == len(planned) - 1)
            if result is None:
                return end_to_end
            per.append(result)
    cpu = [p.segment.name for p in planned if p.segment.placement == "cpu"]
    return {
        "bit_exact": all(r["bit_exact"] for r in per),
        "max_lsb_error": max(r["max_lsb_error"] for r in per),
        "exact_at": "each FPGA segment on the reference's values at its input ("
        + ", ".join(r["segment"] for r in per)
        + "); "
        + ", ".join(cpu)
        + " compute(s) in float32 on the CPU (TVM), whose rounding differs from onnxruntime's by ulps: "
        "the end-to-end error is in end_to_end_max_lsb_error and max_abs_error",
        "segments_exactness": per,
        "end_to_end_max_lsb_error": end_to_end.get("max_lsb_error"),
    }


def _bit_exactness_of(
    last: PlannedSegment, project, reference: np.ndarray, simulated: np.ndarray, quantized: bool, model, x: np.ndarray | None = None
) -> dict:
    if last.segment.placement == "fpga":
        if quantized and x is not None and last.segment.index == 0:
            logits = _logits_exactness(project, last.canonical.model, to_canonical_layout(x, last.canonical.input_perm))
            if logits is not None:
                return logits
        return bit_exactness(reference, simulated, project.layers[-1].precision.get("result", ""), quantized, output_quantizer_step(model))
    if not quantized:
        return {"bit_exact": None, "max_lsb_error": None}
    return {
        "bit_exact": None,
        "max_lsb_error": None,
        "note": "the last segment runs in float32 on the CPU (TVM): no fixed-point grid to be exact on",
    }


def _divergence(planned: list[PlannedSegment], outputs: list[np.ndarray], placed, x: np.ndarray, projects: dict) -> dict | None:
    """The first segment whose output departs from the reference, and inside an FPGA segment the
    first diverging hls4ml layer."""
    n = min(16, x.shape[0])
    reference = tensor_values(placed, x[:n], [p.segment.output_tensor for p in planned])
    for p, out in zip(planned, outputs):
        ref = reference[p.segment.output_tensor].reshape(n, -1)
        got = out[:n].reshape(n, -1)
        error = float(np.max(np.abs(ref - got))) if ref.size else 0.0
        if not np.array_equal(ref.argmax(-1), got.argmax(-1)) or error > 1e-3 * max(1.0, float(np.max(np.abs(ref)))):
            entry = {"segment": p.segment.name, "placement": p.segment.placement, "max_abs_error": error, "layer": p.segment.name}
            if p.segment.placement == "fpga":
                inner = first_divergence(
                    projects[p.segment.index],
                    p.canonical.model,
                    to_canonical_layout(
                        p.x_in[:n]
                        if p.segment.index == 0
                        else tensor_values(placed, x[:n], [p.segment.input_tensor])[p.segment.input_tensor],
                        p.canonical.input_perm,
                    ),
                )
                if inner:
                    entry.update(inner)
            return entry
    return None


def _measure_on_host(planned: list[PlannedSegment], libraries: dict) -> Measurements:
    """What the report shows measured on this machine, measured once here: each compiled CPU
    segment's batch-1 latency (TVM's timer) and, for pruned CPU layers, the host's break-even ratio
    (edgec.cost.break_even's C benchmark)."""
    measured = Measurements()
    for p in planned:
        library = libraries.get(p.segment.index)
        if p.segment.placement == "cpu" and library is not None:
            timing = _host_latency(library, p.x_in)
            if timing is not None:
                measured.host_latency_ms[p.segment.index] = timing
    for layer, _ in cpu_weight_layers(planned):
        measured.cpu_break_even[layer.name] = _measured_cpu_break_even(layer)
    return measured


def _host_latency(library, x_in) -> dict | None:
    """Measured batch-1 time of a CPU segment's host build on this machine (TVM's timer)."""
    from edgec.backends.tvm import HostModule, measure_host_latency

    if x_in is None or not len(x_in):
        return None
    module = HostModule.load(library.sidecar)
    timing = measure_host_latency(module, np.asarray(x_in[:1], dtype=np.float32), repeats=20)
    return {k: round(float(v), 6) for k, v in timing.items() if isinstance(v, (int, float))}


def _measured_cpu_break_even(layer: LayerConfig) -> dict | None:
    """r* measured on this machine for the layer's shape (edgec.cost.break_even's C benchmark: a
    SIMD dense kernel against CSR), beside the modelled one, which describes edgec's own dense CPU
    code (untuned TVM) on the board. A machine without a C compiler gets None."""
    from edgec.cost.break_even import measure_cpu_break_even
    from edgec.errors import ToolchainError

    try:
        measured = measure_cpu_break_even(layer.n_out, layer.n_in, max(1, layer.positions), repeats=3)
    except ToolchainError:
        return None
    return {
        "ratio": None if measured["break_even_ratio"] is None else round(measured["break_even_ratio"], 4),
        "machine": measured["cpu_model"],
        "kernels": "SIMD dense (C, gcc -O3) vs CSR on the build host, not the board",
    }


@guarded("build")
def build(
    model: str | Path | onnx.ModelProto,
    target: str = "pynq-z2",
    output_dir: str | Path = "build",
    data: str | Path | np.ndarray | tuple[np.ndarray, np.ndarray] | None = None,
    force: bool = False,
    min_agreement: float = 0.99,
    io_type: str | None = None,
    width: int = 16,
    random_samples: int = 200,
    progress: Callable[[str], None] | None = None,
    options: DesignOptions | None = None,
    prune: list | None = None,
    quantize: list | None = None,
    place: str = "auto",
    placement: dict[str, str] | None = None,
    cross: bool = True,
    keep_failed: bool = False,
) -> BuildResult:
    """Build ``model`` for ``target`` into ``output_dir`` and verify it.

    ``model`` is a path or an ``onnx.ModelProto``. ``data`` is an .npz/.npy path, an array of inputs
    in the model's layout, or an ``(x, y)`` tuple with integer labels; without it, deterministic
    random inputs from the input's declared domain are used. Raises an :class:`edgec.errors.EdgecError`
    subclass on any user-facing problem; nothing is left in ``output_dir`` unless the build verified.
    ``progress``, if given, is called with a short line as each step finishes. ``options``
    overrides part, clock, HLS backend, io type, strategy, reuse factor or precision (to reproduce
    a published design); ``io_type`` is a shortcut for ``options.io_type``. ``prune`` is a list of
    pruning specs (``"magnitude:sparsity=0.5"`` or ``("magnitude", {"sparsity": 0.5})``) run in
    order on the model before it is lowered, on ``data`` when given (data-free otherwise);
    ``quantize`` a list of quantization specs (``"fixed:bits=8"``) run after pruning.

    ``place`` decides where nodes run: ``"auto"`` (default: the FPGA, except ops hls4ml cannot
    implement and layers that do not fit the FPGA, which go to the board's CPU), ``"fpga"`` or
    ``"cpu"``; ``placement`` overrides single nodes by name (``{"fc3": "cpu"}``). CPU parts are
    compiled with TVM for the host (simulation) and, with ``cross``, for the board's CPU (``cpu/``).
    With ``keep_failed``, a build that fails after it started writing leaves what it wrote in
    ``<output_dir>.failed/`` (replacing an earlier one) instead of removing it.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str, detail: str = "") -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now
        if progress is not None:
            progress(f"{name:<12} {timings[name]:6.2f} s  {detail}".rstrip())

    enter("options")
    config = BuildConfig.make(target, options, io_type, width, random_samples, prune, quantize, place, placement)
    options, base_target, device, tgt = config.options, config.target, config.device, config.fpga_target
    out = Path(output_dir)
    if out.exists() and not force:
        raise OutputExistsError(f"output folder '{out}' already exists", hint="pass --force to replace it, or -o to choose another")
    flow = design_flow(model, config, data, progress, lap)
    loaded, x, y, data_desc, input_shape = flow.loaded, flow.x, flow.y, flow.data_desc, flow.input_shape
    prune_records, placer, placed, planned = flow.prune_records, flow.placer, flow.placed, flow.planned
    float_comparison = flow.float_comparison
    fpga_parts = [p for p in planned if p.segment.placement == "fpga"]

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.edgec-", dir=out.parent))
    try:
        stem = Path(loaded.path).stem if loaded.path else "edgec_model"
        project_name = sanitize_identifier(stem)
        single_fpga = len(planned) == 1 and fpga_parts
        if single_fpga:
            fpga_parts[0].canonical.model.save(str(staging / "model.edgec.onnx"))
        else:
            placed.save(str(staging / "model.edgec.onnx"))
        projects: dict[int, object] = {}
        libraries: dict[int, object] = {}
        segments_meta: list[dict] = []
        for p in planned:
            seg = p.segment
            seg_in = [int(d) for d in seg.model.get_tensor_shape(seg.model.graph.input[0].name)]
            seg_out = [int(d) for d in seg.model.get_tensor_shape(seg.model.graph.output[0].name)]
            if p.segment.index == 0:
                seg_in = [int(d) for d in input_shape]
            if seg.placement == "fpga":
                enter("lower", p.canonical.model)
                project_dir = "hls" if len(fpga_parts) == 1 else f"hls_{seg.name}"
                name = project_name if len(fpga_parts) == 1 else sanitize_identifier(f"{project_name}_{seg.name}")
                project = lower(p.canonical.model, p.plan, tgt, staging / project_dir, name, backend=device.backend)
                projects[seg.index] = project
                for key in ("convert", "compile"):
                    timings[key] = round(timings.get(key, 0.0) + project.timings[key], 3)
                if progress is not None:
                    progress(
                        f"{'convert':<12} {project.timings['convert']:6.2f} s  hls4ml project {project_dir}/ ({len(project.layers)} layers)"
                    )
                    progress(f"{'compile':<12} {project.timings['compile']:6.2f} s  g++ C simulation")
                canon_in = p.canonical.model.get_tensor_shape(p.canonical.model.graph.input[0].name)
                canon_out = p.canonical.model.get_tensor_shape(p.canonical.model.graph.output[0].name)
                segments_meta.append(
                    {
                        "index": seg.index,
                        "placement": "fpga",
                        "name": seg.name,
                        "project_dir": project_dir,
                        "project_name": project.project_name,
                        "input_shape": seg_in,
                        "output_shape": seg_out,
                        "input_perm": p.canonical.input_perm,
                        "output_perm": p.canonical.output_perm,
                        "canonical_output_shape": [int(d) for d in canon_out],
                        "n_in": int(np.prod(canon_in[1:])),
                        "n_out": int(np.prod(canon_out[1:])),
                        "io_type": p.plan.io_type,
                    }
                )
            else:
                from edgec.backends.tvm import compile_cpu_model

                enter("tvm", seg.model)
                library = compile_cpu_model(seg.model, base_target, staging / "cpu", seg.name, cross=cross)
                libraries[seg.index] = library
                for key, value in library.timings.items():
                    timings[f"tvm_{key}"] = round(timings.get(f"tvm_{key}", 0.0) + value, 3)
                if progress is not None:
                    progress(
                        f"{'tvm':<12} {sum(library.timings.values()):6.2f} s  CPU segment {seg.name} ({len(seg.nodes)} nodes) -> cpu/{library.sidecar.name}"
                    )
                segments_meta.append(
                    {
                        "index": seg.index,
                        "placement": "cpu",
                        "name": seg.name,
                        "library_meta": f"cpu/{library.sidecar.name}",
                        "board_library": f"cpu/{library.board_library.name}" if library.board_library else None,
                        "input_shape": seg_in,
                        "output_shape": seg_out,
                    }
                )
        clock = time.perf_counter()
        meta = {
            "input_shape": [int(d) for d in input_shape],
            "is_qonnx": loaded.is_qonnx,
            "segments": segments_meta,
        }
        if single_fpga:  # the keys of a build folder from before partitioning
            only = segments_meta[0]
            meta.update({k: only[k] for k in ("project_name", "input_perm", "output_perm", "canonical_output_shape", "n_in", "n_out")})
        enter("verify", loaded.model)
        runners = [SegmentRunner(entry, staging) for entry in segments_meta]
        simulated, seg_outputs = run_chain(runners, x, keep=True)
        reference, reference_name = reference_outputs(loaded.model, x, loaded.is_qonnx)
        last = planned[-1]
        resolution = projects[last.segment.index].output_resolution(reference) if last.segment.placement == "fpga" else 0.0
        verification = {
            "reference": reference_name,
            "data": data_desc,
            **compare(reference, simulated, y, resolution, task=output_task(loaded.model)),
        }
        verification["simulated_by"] = " -> ".join("C simulation" if p.segment.placement == "fpga" else "TVM host build" for p in planned)
        verification["min_agreement"] = min_agreement
        verification.update(
            _bit_exactness_of(last, projects.get(last.segment.index), reference, simulated, loaded.is_qonnx, loaded.model, x)
        )
        if loaded.is_qonnx and not single_fpga and fpga_parts:
            verification.update(_partitioned_exactness(planned, projects, verification))
        verification["first_divergence"] = None
        if verification["decisive_agreement"] < min_agreement:
            if single_fpga:
                verification["first_divergence"] = first_divergence(
                    projects[0], fpga_parts[0].canonical.model, to_canonical_layout(x, fpga_parts[0].canonical.input_perm)
                )
            else:
                verification["first_divergence"] = _divergence(planned, seg_outputs, placed, x, projects)
        lap("verify", f"{verification['n_samples']} samples against {reference_name}")
        enter("measure", placed)
        measured = _measure_on_host(planned, libraries)
        if measured.host_latency_ms or measured.cpu_break_even:  # only builds with CPU segments measure anything
            lap(
                "measure",
                f"{len(measured.host_latency_ms)} CPU segment(s), {len(measured.cpu_break_even)} break-even ratio(s) on this host",
            )
        enter("cost", placed)
        pruned = any("ops_before" in r for r in prune_records)
        costs = cost_partitioned_design(planned, projects, libraries, base_target, device, options, pruned=pruned, measured=measured)
        lap("estimate", f"{costs.latency_us:.4g} us, {costs.energy_uj:.3g} uJ per inference")
        report = {
            "schema_version": SCHEMA_VERSION,
            "edgec_version": __version__,
            "model": {
                "path": loaded.path,
                "sha256": loaded.sha256,
                "inputs": [
                    {"name": i.name, "shape": loaded.model.get_tensor_shape(i.name)}
                    for i in loaded.model.graph.input
                    if loaded.model.get_initializer(i.name) is None
                ],
                "outputs": [{"name": o.name, "shape": loaded.model.get_tensor_shape(o.name)} for o in loaded.model.graph.output],
            },
            "target": target_report(base_target, device),
            "options": {**options.as_dict(), "place": placer.place},
            "io_type": fpga_parts[0].plan.io_type if fpga_parts else None,
            "layers": costs.layers,
            **costs.sections,
            "partition": costs.partition,
            "quantization_cost": float_comparison,
            "verification": verification,
            "passes": design_passes(flow),
            "decisions": design_decisions(flow, costs),
            "timings": timings,
        }
        enter("report")
        bundle_note = _render_bundle(staging, segments_meta, tgt, project_name, x, simulated, cross)
        report["deploy"] = bundle_note
        if bundle_note.get("skipped"):
            report["warnings"].append(f"no deploy/ bundle: {bundle_note['skipped']}")
        if cross and base_target.cpu is not None and libraries:
            report["cpu_libraries"] = [
                {
                    "segment": planned[i].segment.name,
                    "board": f"cpu/{lib.board_library.name}" if lib.board_library else None,
                    "machine": lib.board_elf_machine,
                    "host": f"cpu/{lib.host_library.name}",
                }
                for i, lib in libraries.items()
            ]
        write_report(report, staging / "report.json")
        write_html(report, staging / "report.html")
        (staging / "summary.txt").write_text(render_summary(report) + "\n")
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if verification["decisive_agreement"] < min_agreement:
            div = verification["first_divergence"]
            where = f"; first diverging layer: {div['layer']} (max abs error {div['max_abs_error']:.3g})" if div else ""
            raise VerificationError(
                f"the simulated design agrees with the reference on {verification['decisive_agreement'] * 100:.1f}% of samples, "
                f"below the required {min_agreement * 100:.1f}%{where}",
                hint="lower --min-agreement to keep the build anyway, or raise --width",
            )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        if keep_failed:
            kept = out.with_name(out.name + ".failed")
            shutil.rmtree(kept, ignore_errors=True)
            staging.rename(kept)
            log.warning("the failed build's files are kept in %s", kept)
        else:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    for line in render_summary(report).splitlines():
        log.debug(line)
    return BuildResult(output_dir=out, report=report, _meta=meta)
