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

import onnx
from google.protobuf.message import DecodeError
from onnx import version_converter
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.infer_shapes import InferShapes

from edgec.errors import (
    CorruptModelError,
    DynamicShapeError,
    ModelNotFoundError,
    NotOnnxError,
    UnsafeModelError,
)
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
        raise NotOnnxError(f"{name}: not an ONNX model (no graph found)", hint="pass a .onnx file exported by PyTorch, Keras, Brevitas or QONNX")
    return proto


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


def _default_opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def _upgrade_opset(proto: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    old = _default_opset(proto)
    if old >= MIN_OPSET:
        return proto
    # IR < 4 requires every initializer to be a graph input too; the converter relies on it.
    listed = {i.name for i in proto.graph.input}
    for init in proto.graph.initializer:
        if init.name not in listed:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    # The converter only knows standard ops; models with custom (QONNX) ops that it declines keep
    # their opset, which qonnx and hls4ml read as they are.
    custom = [n for n in proto.graph.node if n.domain not in ("", "ai.onnx")]
    try:
        converted = version_converter.convert_version(proto, UPGRADE_TO_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors for unknown adapters
        if custom:
            notes.append(f"opset {old} kept: version converter declined ({str(exc).splitlines()[0][:120]})")
            return proto
        raise CorruptModelError(f"cannot upgrade opset {old} to {UPGRADE_TO_OPSET}: {str(exc).splitlines()[0]}") from None
    notes.append(f"upgraded opset {old} -> {UPGRADE_TO_OPSET}")
    return converted


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
    proto = _upgrade_opset(proto, notes)
    model = ModelWrapper(proto)
    _fix_batch(model, notes)
    _strip_batch_from_reshapes(model)
    try:
        model = model.transform(InferShapes())
    except Exception as exc:
        raise CorruptModelError(f"{name}: shape inference failed: {str(exc).splitlines()[0][:200]}") from None
    model = convert_quantized_onnx(model, notes)  # onnxruntime QDQ/QOperator -> QONNX Quant
    missing = [
        n.name or n.op_type
        for n in model.graph.node
        for out in n.output
        if out and model.get_tensor_shape(out) is None and n.op_type not in ("Constant",)
    ]
    if missing:
        log.debug("tensors without inferred shape after load: %s", missing)
    return LoadedModel(model=model, path=path, sha256=_sha256(data), notes=notes)
