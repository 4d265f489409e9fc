"""Load an ONNX/QONNX model safely and give it static shapes with a batch of one.

Steps: check the file, parse it (telling "not ONNX" from "truncated ONNX"), refuse external data
outside the model's folder, upgrade old opsets with ONNX's version converter, run shape inference,
and fix the batch dimension to 1 (rejecting any other dynamic dimension).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import version_converter
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.infer_shapes import InferShapes

from edgec.errors import (
    CorruptModelError,
    DynamicShapeError,
    InvalidModelError,
    ModelNotFoundError,
    NotOnnxError,
    TargetFitError,
    UnsafeModelError,
    UnsupportedOpsError,
)
from edgec.frontend.isolated import run_isolated
from edgec.passes.quant.qdq_to_qonnx import convert_quantized_onnx

log = logging.getLogger(__name__)

# Opsets older than this are upgraded: hls4ml's ONNX reader and qonnx's passes expect the
# attribute-free forms (e.g. Gemm-6's `broadcast` attribute is gone from Gemm-7 on).
MIN_OPSET = 11
UPGRADE_TO_OPSET = 13
QONNX_DOMAINS = ("qonnx.custom_op.general", "onnx.brevitas", "finn.custom_op.general")


@dataclass
class LoadedModel:
    """A parsed model with static shapes, plus what loading changed."""

    model: ModelWrapper
    path: str | None
    sha256: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def is_qonnx(self) -> bool:
        return any(n.domain in QONNX_DOMAINS or n.op_type in ("Quant", "BipolarQuant") for n in self.model.graph.node)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _parse(data: bytes, name: str) -> onnx.ModelProto:
    """Parse bytes as a ModelProto, classifying failures."""
    # A serialized ModelProto starts with field 1 (ir_version, varint): tag byte 0x08.
    looks_like_onnx = len(data) > 2 and data[0] == 0x08
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        if looks_like_onnx:
            raise CorruptModelError(
                f"{name}: ONNX file is truncated or damaged ({exc.__class__.__name__})",
                hint="re-export or re-download the model",
            ) from None
        raise NotOnnxError(f"{name}: not an ONNX model", hint="pass a .onnx file exported by PyTorch, Keras, Brevitas or QONNX") from None
    if not looks_like_onnx or not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise NotOnnxError(
            f"{name}: not an ONNX model (no graph found)", hint="pass a .onnx file exported by PyTorch, Keras, Brevitas or QONNX"
        )
    _check_text_fields(proto, name)
    return proto


def _check_text_fields(proto: onnx.ModelProto, name: str) -> None:
    """Names, op types and domains are text; protobuf hands back bytes where a damaged file holds
    bytes that are not UTF-8. Refuse those here, naming where, instead of failing somewhere later."""
    graph = proto.graph
    fields: list[tuple[str, object]] = [(f"opset domain #{i}", imp.domain) for i, imp in enumerate(proto.opset_import)]
    for index, node in enumerate(graph.node):
        label = f"node #{index}"
        fields += [(label + " name", node.name), (label + " op type", node.op_type), (label + " domain", node.domain)]
        fields += [(label + " input", t) for t in node.input] + [(label + " output", t) for t in node.output]
        fields += [(label + " attribute name", a.name) for a in node.attribute]
    for kind, items in (
        ("input", graph.input),
        ("output", graph.output),
        ("value_info", graph.value_info),
        ("initializer", graph.initializer),
    ):
        fields += [(f"graph {kind} #{i}", item.name) for i, item in enumerate(items)]
    for where, value in fields:
        if not isinstance(value, str):
            raise CorruptModelError(
                f"{name}: ONNX file is damaged: the {where} is not valid UTF-8 text",
                hint="re-export or re-download the model",
            )


_QUANT_ROUNDING = ("ROUND", "HALF_EVEN", "CEIL", "FLOOR", "ROUND_TO_ZERO", "HALF_UP", "HALF_DOWN", "UP", "DOWN")
# consumers for which an infinite constant is meaningful (bounds, masks)
_INF_CONSUMERS = {"Clip", "Max", "Min", "Where", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "IsInf"}


def check_values(proto: onnx.ModelProto, name: str) -> None:
    """Refuse what onnx.checker lets through but no hardware can implement: NaN weights or
    attributes, infinite weights, and QONNX quantizers with an unknown rounding mode or flags."""
    from onnx import numpy_helper

    consumers: dict[str, list[str]] = {}
    for node in proto.graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node.op_type)
        label = f"node '{node.name}' ({node.op_type})" if node.name else f"a {node.op_type} node"
        for attr in node.attribute:
            values = [attr.f] if attr.type == onnx.AttributeProto.FLOAT else list(attr.floats)
            if any(np.isnan(v) for v in values):
                raise InvalidModelError(f"{name}: {label}: attribute '{attr.name}' is NaN", hint="fix or re-export the model")
        if node.op_type in ("Quant", "BipolarQuant", "Trunc") and node.domain not in ("", "ai.onnx"):
            attrs = {a.name: a for a in node.attribute}
            if "rounding_mode" in attrs:
                mode = attrs["rounding_mode"].s
                mode = mode.decode("utf-8", "backslashreplace") if isinstance(mode, bytes) else str(mode)
                if mode.upper() not in _QUANT_ROUNDING:
                    raise InvalidModelError(
                        f"{name}: {label}: unknown rounding_mode '{mode}' (QONNX knows {', '.join(_QUANT_ROUNDING)})",
                        hint="fix or re-export the model",
                    )
            for flag in ("signed", "narrow"):
                if flag in attrs and attrs[flag].i not in (0, 1):
                    raise InvalidModelError(
                        f"{name}: {label}: attribute '{flag}' is {attrs[flag].i}; QONNX wants 0 or 1", hint="fix or re-export the model"
                    )
    for init in proto.graph.initializer:
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            continue
        try:
            array = numpy_helper.to_array(init)
        except Exception:  # a size mismatch; onnx.checker's full check reports it with more detail
            continue
        if np.isnan(array).any():
            raise InvalidModelError(f"{name}: initializer '{init.name}' contains NaN", hint="fix or re-export the model")
        if np.isinf(array).any() and not set(consumers.get(init.name, [])) <= _INF_CONSUMERS:
            raise InvalidModelError(
                f"{name}: initializer '{init.name}' contains infinite values (used by {', '.join(sorted(set(consumers.get(init.name, []))))})",
                hint="fix or re-export the model",
            )


def _check_external_data(proto: onnx.ModelProto, base_dir: Path, name: str) -> bool:
    """Refuse external-data locations that escape the model's folder; return True if any exist."""
    found = False
    base = base_dir.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        found = True
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(base):
            raise UnsafeModelError(
                f"{name}: tensor '{tensor.name}' stores its data at '{location}', outside the model's folder",
                hint="move the data file next to the model and re-save it",
            )
        if not target.is_file():
            raise CorruptModelError(f"{name}: external data file '{location}' for tensor '{tensor.name}' is missing")
    return found


def _node_label(context: str) -> str:
    """The node onnx.checker's message is about ("Bad node spec for node. Name: X OpType: Y")."""
    import re

    match = re.search(r"Name:\s*(\S*)\s*OpType:\s*(\S+)", context)
    if match is None:
        return ""
    name, op = match.groups()
    return f" (node '{name}', {op})" if name else f" (a {op} node)"


def check_validity(proto: onnx.ModelProto, name: str, notes: list[str]) -> onnx.ModelProto:
    """Run onnx.checker's full check (schemas, types, strict shape inference) and make its message
    the error for an invalid model. Two things exporters write every day are tolerated, with a note:
    QONNX/FINN files that use their custom domain without importing it, and value_info entries
    (shapes the exporter recorded for intermediate tensors) that contradict ONNX shape inference:
    those are dropped, and shapes are inferred again. Returns the model to go on with."""
    candidate = onnx.ModelProto()
    candidate.CopyFrom(proto)
    declared = {imp.domain for imp in candidate.opset_import}
    for domain in sorted({n.domain for n in candidate.graph.node} - declared - {"", "ai.onnx"}):
        candidate.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    if candidate.ir_version < 4 and {i.name for i in candidate.graph.initializer} - {i.name for i in candidate.graph.input}:
        # IR 3 wants every initializer listed as an input; tools that add initializers to old files
        # (onnxruntime's quantize_static) don't, and onnxruntime runs them: read them as IR 4, which allows it
        candidate.ir_version = 4
        upgraded = onnx.ModelProto()
        upgraded.CopyFrom(proto)
        upgraded.ir_version = 4
        proto = upgraded
        notes.append("IR version 3 file with initializers that are not graph inputs: read as IR version 4")
    verdict = _checked(candidate, name)
    if verdict is None:
        return proto
    kind, message = verdict
    if kind == "ValidationError":
        raise InvalidModelError(
            f"{name}: not a valid ONNX model: {message.strip().splitlines()[0]}{_node_label(message)}",
            hint="onnx.checker rejects it; fix or re-export the model (`python -m onnx.checker` shows the same)",
        )
    if not len(candidate.graph.value_info):
        raise InvalidModelError(
            f"{name}: not a valid ONNX model: shape inference fails: {' '.join(message.split())[:300]}",
            hint="onnx.checker rejects it; fix or re-export the model",
        )
    del candidate.graph.value_info[:]
    verdict = _checked(candidate, name)
    if verdict is not None:
        raise InvalidModelError(
            f"{name}: not a valid ONNX model: {' '.join(verdict[1].split())[:300]}",
            hint="onnx.checker rejects it; fix or re-export the model",
        )
    notes.append("the exporter's recorded intermediate shapes (value_info) contradict ONNX shape inference: dropped and inferred again")
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    del fixed.graph.value_info[:]
    return fixed


# Inputs larger than this (values per sample) are refused before any data is made: edge FPGA
# designs stream far smaller tensors, and calibration holds a few hundred samples in memory.
MAX_INPUT_VALUES = 1 << 22
_NUMERIC_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.INT64,
    onnx.TensorProto.UINT64,
}


def _input_shapes(proto: onnx.ModelProto, name: str) -> dict[str, tuple[list[int], int]]:
    """Declared shape (dynamic or invalid dims read as 1) and element type of each real graph input;
    refuses inputs too large to calibrate and verify."""
    inits = {i.name for i in proto.graph.initializer}
    shapes = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
        values = int(np.prod(dims[1:], dtype=np.int64)) if len(dims) > 1 else int(np.prod(dims, dtype=np.int64))
        if values > MAX_INPUT_VALUES:
            raise TargetFitError(
                f"{name}: input '{vi.name}' has {values:,} values per sample (shape {dims}); edgec builds designs for inputs "
                f"up to {MAX_INPUT_VALUES:,} values",
                hint="check the input shape the model declares; tile or downscale the input",
            )
        elem_type = vi.type.tensor_type.elem_type
        if elem_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING, onnx.TensorProto.BOOL) or elem_type not in _NUMERIC_TYPES:
            kind = onnx.TensorProto.DataType.Name(elem_type) if elem_type in onnx.TensorProto.DataType.values() else str(elem_type)
            raise InvalidModelError(
                f"{name}: input '{vi.name}' has element type {kind}; edgec builds models with numeric inputs",
                hint="declare the input as float (or an integer type) and re-export the model",
            )
        shapes[vi.name] = (dims, elem_type)
    return shapes


def _onnxruntime_message(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text.split(" : ", 3)[-1] if text.startswith("[ONNXRuntimeError]") else text


def check_runs_in_onnxruntime(proto: onnx.ModelProto, name: str) -> None:
    """onnxruntime is the reference every build is verified against: a standard-ONNX model it cannot
    load or run once (an opset newer than it knows, a type error the checker lets through, a Reshape
    that contradicts the declared input shape) is refused here, in a second, with onnxruntime's
    reason. QONNX models (custom domains) are run by qonnx instead (:func:`check_runs_in_qonnx`)."""
    import onnxruntime as ort

    opset, newest = _default_opset(proto), onnx.defs.onnx_opset_version()
    if opset > newest:
        raise UnsupportedOpsError(
            f"{name}: the model imports ONNX opset {opset}; onnx {onnx.__version__} knows opsets up to {newest}",
            hint=f"re-export the model with opset {newest} or older",
        )
    shapes = _input_shapes(proto, name)
    if any(n.domain not in ("", "ai.onnx", "com.microsoft", "ai.onnx.ml") for n in proto.graph.node):
        return
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for every load failure
        raise UnsupportedOpsError(
            f"{name}: onnxruntime {ort.__version__}, the reference edgec verifies against, cannot load the model: {_onnxruntime_message(exc)[:300]}",
            hint="re-export the model with an opset and ops onnxruntime supports",
        ) from None
    if any(
        not d.HasField("dim_value") or d.dim_value <= 0
        for vi in proto.graph.input
        if vi.name in shapes
        for d in vi.type.tensor_type.shape.dim[1:]
    ):
        return  # a dynamic dimension other than the batch is refused with its name by _fix_batch
    feeds = {}
    for meta in session.get_inputs():
        dims, elem_type = shapes.get(meta.name, ([1], onnx.TensorProto.FLOAT))
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type) if elem_type else np.float32
        feeds[meta.name] = np.ones(dims, dtype=dtype)
    try:
        session.run(None, feeds)
    except Exception as exc:
        shown = ", ".join(f"'{k}' {list(v.shape)}" for k, v in feeds.items())
        raise InvalidModelError(
            f"{name}: onnxruntime cannot run the model on an input of the declared shape ({shown}): {_onnxruntime_message(exc)[:300]}",
            hint="the model's declared input shape or types contradict its nodes; fix or re-export the model",
        ) from None


def check_runs_in_qonnx(model: ModelWrapper, name: str) -> None:
    """Run a QONNX model (custom-domain quantizers) once with qonnx's executor on an input of ones
    (valid for every declared input datatype: BIPOLAR, INT, UINT, float): a model that cannot run
    is refused here, with the reason, not in the middle of calibration."""
    from qonnx.core import onnx_exec as oxe

    if not any(n.domain not in ("", "ai.onnx", "com.microsoft", "ai.onnx.ml") for n in model.graph.node):
        return
    feeds = {}
    for vi in model.graph.input:
        shape = model.get_tensor_shape(vi.name) or [1]
        elem_type = vi.type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type) if elem_type else np.float32
        feeds[vi.name] = np.ones(shape, dtype=dtype)
    try:
        oxe.execute_onnx(model, feeds)
    except Exception as exc:  # qonnx and onnxruntime raise many exception types for a model that cannot run
        raise InvalidModelError(
            f"{name}: the model cannot be run (qonnx executor, onnxruntime per node): {_onnxruntime_message(exc)[:300]}",
            hint="the model's declared shapes, types or attributes contradict its nodes; fix or re-export the model",
        ) from None


def _full_check(data: bytes) -> tuple[str, str] | None:
    """onnx.checker's full check of a serialized model: None if valid, else (error kind, message)."""
    model = onnx.load_model_from_string(data)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        return "ValidationError", str(exc)
    except onnx.shape_inference.InferenceError as exc:
        return "InferenceError", str(exc)
    return None


def _checked(candidate: onnx.ModelProto, name: str) -> tuple[str, str] | None:
    """The full check, in a forked child: onnx's C++ checker crashes on some malformed files."""
    outcome = run_isolated(_full_check, candidate.SerializeToString())
    if outcome.signal is not None:
        raise InvalidModelError(
            f"{name}: not a valid ONNX model: onnx.checker crashed on it (signal {outcome.signal})",
            hint="the file is malformed; re-export the model",
        )
    if outcome.error is not None:
        kind, message = outcome.error
        if kind in ("ValidationError", "InferenceError"):
            return kind, message
        raise InvalidModelError(
            f"{name}: not a valid ONNX model: {kind}: {' '.join(message.split())[:300]}",
            hint="onnx.checker rejects it; fix or re-export the model",
        )
    return outcome.value


def _default_opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def _upgrade_opset(proto: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """Upgrade the default-domain opset to UPGRADE_TO_OPSET with ONNX's version converter, on a copy
    (the caller's model is never half-converted). Custom-domain nodes (QONNX ``Quant``...), which the
    converter does not know, stand in as ``Identity`` placeholders during the conversion and are put
    back unchanged afterwards, so opset-9 QONNX files (QKeras, older Brevitas) are upgraded too."""
    old = _default_opset(proto)
    if old >= MIN_OPSET:
        return proto
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    # IR < 4 requires every initializer to be a graph input too; the converter relies on it.
    listed = {i.name for i in work.graph.input}
    for init in work.graph.initializer:
        if init.name not in listed:
            work.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    custom: dict[str, onnx.NodeProto] = {}
    for index, node in enumerate(work.graph.node):
        if node.domain in ("", "ai.onnx"):
            continue
        if len(node.output) != 1 or not node.input:
            notes.append(f"opset {old} kept: custom node {node.name or node.op_type} has {len(node.output)} outputs")
            return proto
        key = f"__edgec_custom_{index}"
        kept = onnx.NodeProto()
        kept.CopyFrom(node)
        custom[key] = kept
        node.CopyFrom(onnx.helper.make_node("Identity", [node.input[0]], list(node.output), name=key))
    try:
        converted = version_converter.convert_version(work, UPGRADE_TO_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors for unknown adapters
        raise CorruptModelError(
            f"cannot upgrade opset {old} to {UPGRADE_TO_OPSET}: {str(exc).splitlines()[0]}",
            hint="re-export the model with opset 11 or newer",
        ) from None
    for node in converted.graph.node:
        if node.name in custom:
            node.CopyFrom(custom[node.name])
    have = {imp.domain for imp in converted.opset_import}
    for imp in proto.opset_import:
        if imp.domain not in ("", "ai.onnx") and imp.domain not in have:
            converted.opset_import.append(imp)
    converted.ir_version = max(converted.ir_version, 7)  # opset 13 needs IR 7 (onnx/helper.py VERSION_TABLE)
    # the converter leaves the initializers listed as inputs (IR 3 style): they are constants here
    _drop_initializer_inputs(converted)
    notes.append(
        f"upgraded opset {old} -> {UPGRADE_TO_OPSET}" + (f" ({len(custom)} custom-domain nodes kept as they are)" if custom else "")
    )
    return converted


def _dedupe_value_info(proto: onnx.ModelProto) -> int:
    """Drop value_info entries that repeat a graph input/output or an earlier entry (onnxruntime's
    ``quant_pre_process`` and tf2onnx write such; valid ONNX, but qonnx asserts on it). Returns how many."""
    seen = {vi.name for vi in proto.graph.input} | {vi.name for vi in proto.graph.output}
    kept = []
    for vi in proto.graph.value_info:
        if vi.name not in seen:
            kept.append(vi)
            seen.add(vi.name)
    dropped = len(proto.graph.value_info) - len(kept)
    if dropped:
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(kept)
    return dropped


def _drop_initializer_inputs(proto: onnx.ModelProto) -> int:
    """Remove graph inputs that are initializers too (``keep_initializers_as_inputs=True`` exports,
    IR < 4 files): for deployment they are the model's constants, not inputs. Returns how many."""
    inits = {i.name for i in proto.graph.initializer}
    kept = [vi for vi in proto.graph.input if vi.name not in inits]
    dropped = len(proto.graph.input) - len(kept)
    if dropped:
        del proto.graph.input[:]
        proto.graph.input.extend(kept)
        proto.ir_version = max(proto.ir_version, 4)  # IR 3 required them listed; IR 4 on does not
    return dropped


def _fix_batch(model: ModelWrapper, notes: list[str]) -> None:
    """Set the first dimension of every graph input and output to 1; reject other dynamic dims."""
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    for vi in list(graph.input) + list(graph.output):
        if vi.name in init_names:
            continue
        dims = vi.type.tensor_type.shape.dim
        is_input = any(vi is x for x in graph.input)
        for axis, dim in enumerate(dims):
            dynamic = dim.HasField("dim_param") or not dim.HasField("dim_value") or dim.dim_value <= 0
            if axis == 0:
                if dynamic or dim.dim_value != 1:
                    was = dim.dim_param if dim.HasField("dim_param") else dim.dim_value
                    dim.Clear()
                    dim.dim_value = 1
                    if is_input:
                        notes.append(f"batch dimension of '{vi.name}' ({was!s}) fixed to 1")
            elif dynamic and is_input:
                label = dim.dim_param or "?"
                raise DynamicShapeError(
                    f"input '{vi.name}' has a dynamic dimension '{label}' at axis {axis}",
                    hint="export the model with a fixed input size (only the batch axis may be dynamic)",
                )
            elif dynamic:
                dim.Clear()  # outputs are re-inferred below
    # Drop stale intermediate shapes (e.g. a static batch of 789444) and infer again.
    del graph.value_info[:]


def _strip_batch_from_reshapes(model: ModelWrapper) -> None:
    """A Reshape whose constant target starts with a batch size other than 1/-1/0 is set to 1."""
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        shape = model.get_initializer(node.input[1])
        if shape is not None and shape.ndim == 1 and shape.size > 0 and shape[0] > 1:
            fixed = shape.copy()
            fixed[0] = 1
            model.set_initializer(node.input[1], fixed)


def _declared_input_quantizer(model: ModelWrapper, notes: list[str]) -> None:
    """Make a qonnx/FINN datatype annotation on the graph input (BIPOLAR, BINARY, INTn, UINTn) an
    explicit quantizer at the input, which is the identity on every input the annotation allows:
    the first layer then sees a quantized input like any other (exact types, XNOR-popcount for a
    binary input) instead of a float one calibrated to 16 bits."""
    from edgec.data import declared_datatype

    declared = declared_datatype(model)
    if declared is None:
        return
    name = model.graph.input[0].name
    consumers = model.find_consumers(name) or []
    if len(consumers) == 1 and consumers[0].op_type in ("Quant", "BipolarQuant"):
        return  # the model quantizes its input itself
    fresh = model.make_new_valueinfo_name()
    domain = "qonnx.custom_op.general"
    scale = model.make_new_valueinfo_name()
    model.set_initializer(scale, np.asarray(1.0, dtype=np.float32))
    if declared["kind"] == "bipolar":
        node = onnx.helper.make_node("BipolarQuant", [name, scale], [fresh], name="edgec_input_datatype", domain=domain)
    else:
        zeropt, bits = model.make_new_valueinfo_name(), model.make_new_valueinfo_name()
        model.set_initializer(zeropt, np.asarray(0.0, dtype=np.float32))
        signed = declared["low"] < 0
        width = int(np.ceil(np.log2(max(declared["high"], -declared["low"]) + 1))) + (1 if signed else 0)
        model.set_initializer(bits, np.asarray(float(width), dtype=np.float32))
        node = onnx.helper.make_node(
            "Quant",
            [name, scale, zeropt, bits],
            [fresh],
            name="edgec_input_datatype",
            domain=domain,
            signed=int(signed),
            narrow=0,
            rounding_mode="ROUND",
        )
    for consumer in consumers:
        for i, tensor in enumerate(consumer.input):
            if tensor == name:
                consumer.input[i] = fresh
    model.graph.node.insert(0, node)
    if not any(imp.domain == domain for imp in model.model.opset_import):
        model.model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    notes.append(f"input '{name}' is annotated {declared['annotation']}: treated as a quantized input ({node.op_type} at the input)")


def load_model(source: str | os.PathLike | onnx.ModelProto) -> LoadedModel:
    """Load a path or ModelProto into a :class:`LoadedModel` with static, batch-1 shapes."""
    notes: list[str] = []
    if isinstance(source, onnx.ModelProto):
        data = source.SerializeToString()
        name, path, base_dir = "<ModelProto>", None, Path.cwd()
    else:
        path_obj = Path(source)
        name = str(path_obj)
        if not path_obj.exists():
            raise ModelNotFoundError(f"{name}: no such file", hint="check the path")
        if not path_obj.is_file():
            raise NotOnnxError(f"{name}: is a directory, not an ONNX file")
        data = path_obj.read_bytes()
        path, base_dir = str(path_obj.resolve()), path_obj.resolve().parent
    proto = _parse(data, name)
    if _check_external_data(proto, base_dir, name):
        onnx.load_external_data_for_model(proto, str(base_dir))
    proto = check_validity(proto, name, notes)
    _dedupe_value_info(proto)
    proto = _upgrade_opset(proto, notes)
    if _drop_initializer_inputs(proto):
        notes.append("initializers also listed as graph inputs (keep_initializers_as_inputs) are treated as constants")
    check_values(proto, name)
    check_runs_in_onnxruntime(proto, name)
    model = ModelWrapper(proto)
    _fix_batch(model, notes)
    _strip_batch_from_reshapes(model)
    try:
        model = model.transform(InferShapes())
    except Exception as exc:
        raise CorruptModelError(f"{name}: shape inference failed: {str(exc).splitlines()[0][:200]}") from None
    check_runs_in_qonnx(model, name)
    model = convert_quantized_onnx(model, notes)  # onnxruntime QDQ/QOperator -> QONNX Quant
    _declared_input_quantizer(model, notes)
    model = model.transform(InferShapes())
    missing = [
        n.name or n.op_type
        for n in model.graph.node
        for out in n.output
        if out and model.get_tensor_shape(out) is None and n.op_type not in ("Constant",)
    ]
    if missing:
        log.debug("tensors without inferred shape after load: %s", missing)
    return LoadedModel(model=model, path=path, sha256=_sha256(data), notes=notes)
