"""Inputs for calibration and verification: .npz (x, optional y), .npy, or deterministic random."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper

from edgec.errors import DataError

DEFAULT_RANDOM_SAMPLES = 200


def arrays_as_data(data, input_shape: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Check in-memory data (an array of inputs, or an ``(x, y)`` tuple) like a data file."""
    x, y = data if isinstance(data, tuple) else (data, None)
    return _checked(np.asarray(x), None if y is None else np.asarray(y), input_shape, "data")


def load_data(path: str | Path, input_shape: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Load ``x`` (and ``y`` if present) and check ``x`` against the model's input shape."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file", hint="pass an .npz with array 'x' (and optional 'y') or an .npy")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a NumPy .npz/.npy file ({exc.__class__.__name__})") from None
    if isinstance(loaded, np.ndarray):
        x, y = loaded, None
    else:
        if "x" not in loaded.files:
            raise DataError(f"{path}: no array named 'x' (found: {', '.join(loaded.files) or 'none'})")
        x = loaded["x"]
        y = loaded["y"] if "y" in loaded.files else None
    return _checked(x, y, input_shape, str(path))


def _checked(x: np.ndarray, y: np.ndarray | None, input_shape: list[int], path: str) -> tuple[np.ndarray, np.ndarray | None]:
    sample_shape = list(input_shape[1:])
    if list(x.shape[1:]) != sample_shape:
        if list(x.shape) == sample_shape:
            x = x[None]
        else:
            raise DataError(
                f"{path}: x has shape {list(x.shape)}, expected [N, {', '.join(map(str, sample_shape))}] for the model input",
                hint="give inputs in the model's own layout (e.g. NCHW for a PyTorch export)",
            )
    if x.shape[0] == 0:
        raise DataError(f"{path}: x holds no samples")
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if y.shape[0] != x.shape[0]:
            raise DataError(f"{path}: y has {y.shape[0]} labels for {x.shape[0]} inputs")
        y = y.astype(np.int64)
    return x.astype(np.float32), y


def _scalar_const(model: ModelWrapper, node, data_input: str) -> float | None:
    others = [i for i in node.input if i != data_input]
    value = model.get_initializer(others[0]) if len(others) == 1 else None
    return float(np.asarray(value).reshape(-1)[0]) if value is not None and np.asarray(value).size == 1 else None


def declared_datatype(model: ModelWrapper) -> dict | None:
    """The integer domain a qonnx/FINN datatype annotation declares for the graph input
    (``quantization_annotation``: BIPOLAR, BINARY, TERNARY, INTn, UINTn), or None. qonnx's executor
    refuses inputs off that grid, so calibration and random inputs must lie on it."""
    from qonnx.core.datatype import DataType

    name = model.graph.input[0].name
    try:
        dtype = model.get_tensor_datatype(name)
    except Exception:  # an annotation qonnx cannot parse is no declaration
        return None
    if dtype is None or not dtype.is_integer() or dtype == DataType["FLOAT32"]:
        return None
    label = dtype.get_canonical_name()
    if label == "BIPOLAR":
        return {"kind": "bipolar", "scale": 1.0, "gain": 1.0, "offset": 0.0, "annotation": label}
    return {
        "kind": "int",
        "scale": 1.0,
        "zeropt": 0.0,
        "low": int(dtype.min()),
        "high": int(dtype.max()),
        "gain": 1.0,
        "offset": 0.0,
        "annotation": label,
    }


def input_domain(model: ModelWrapper) -> dict:
    """The quantized domain the model declares for its input: a qonnx datatype annotation on the
    input, or a quantizer on the input, possibly behind reshapes and scalar affine preprocessing
    (e.g. ``x * 2 - 1``), which is inverted so the domain is given in the input's own units
    (``x = (q - offset) / gain``)."""
    declared = declared_datatype(model)
    if declared is not None:
        return declared
    tensor = model.graph.input[0].name
    gain, offset = 1.0, 0.0
    for _ in range(8):
        consumers = model.find_consumers(tensor) or []
        if len(consumers) != 1:
            return {"kind": "real"}
        node = consumers[0]
        if node.op_type in ("Reshape", "Flatten", "Transpose", "Identity"):
            tensor = node.output[0]
            continue
        if node.op_type in ("Mul", "Div", "Add", "Sub") and node.input[0] == tensor:
            const = _scalar_const(model, node, tensor)
            if const is None or (node.op_type in ("Mul", "Div") and const == 0):
                return {"kind": "real"}
            if node.op_type == "Mul":
                gain, offset = gain * const, offset * const
            elif node.op_type == "Div":
                gain, offset = gain / const, offset / const
            elif node.op_type == "Add":
                offset += const
            else:
                offset -= const
            tensor = node.output[0]
            continue
        break
    else:
        return {"kind": "real"}
    domain = _quantizer_domain(model, node)
    domain.update({"gain": gain, "offset": offset})
    return domain


def _quantizer_domain(model: ModelWrapper, node) -> dict:
    if node.op_type == "BipolarQuant":
        scale = model.get_initializer(node.input[1])
        return {"kind": "bipolar", "scale": float(np.asarray(scale).reshape(-1)[0]) if scale is not None else 1.0}
    if node.op_type == "Quant":
        params = [model.get_initializer(i) for i in node.input[1:4]]
        if all(p is not None for p in params) and np.asarray(params[0]).size == 1:
            scale, zeropt, bits = (float(np.asarray(p).reshape(-1)[0]) for p in params)
            signed = next((a.i for a in node.attribute if a.name == "signed"), 1)
            narrow = next((a.i for a in node.attribute if a.name == "narrow"), 0)
            lo = -(2 ** (int(bits) - 1)) + narrow if signed else 0
            hi = 2 ** (int(bits) - 1) - 1 if signed else 2 ** int(bits) - 1 - narrow
            return {"kind": "int", "scale": scale, "zeropt": zeropt, "low": lo, "high": hi}
    return {"kind": "real"}


def random_inputs(model: ModelWrapper, n: int = DEFAULT_RANDOM_SAMPLES, seed: int = 0) -> tuple[np.ndarray, str]:
    """Deterministic inputs from the input's quantized domain, or a standard normal otherwise."""
    from qonnx.util.cleanup import cleanup_model

    shape = [n, *model.get_tensor_shape(model.graph.input[0].name)[1:]]
    rng = np.random.default_rng(seed)
    # cleanup folds exporter shape arithmetic (Shape/Gather/Concat feeding a Reshape) without
    # touching the input's layout, so the path from the input to its quantizer becomes visible.
    domain = input_domain(cleanup_model(model))
    if domain["kind"] == "bipolar":
        q = rng.choice([-1.0, 1.0], size=shape) * domain["scale"]
        x = (q - domain["offset"]) / domain["gain"]
        description = "random bipolar (+-1) inputs"
        if domain.get("annotation"):
            description += " (the input is annotated BIPOLAR)"
    elif domain["kind"] == "int":
        levels = rng.integers(domain["low"], domain["high"] + 1, size=shape)
        q = (levels - domain["zeropt"]) * domain["scale"]
        x = (q - domain["offset"]) / domain["gain"]
        description = f"random integer inputs in [{domain['low']}, {domain['high']}] x scale {domain['scale']:g}"
        if domain.get("annotation"):
            description = f"random integer inputs in [{domain['low']}, {domain['high']}] (the input is annotated {domain['annotation']})"
        if (domain["gain"], domain["offset"]) != (1.0, 0.0):
            description += f" before the model's x*{domain['gain']:g}{domain['offset']:+g}"
    else:
        x = rng.standard_normal(shape)
        description = "random standard-normal inputs"
    return x.astype(np.float32), f"{description} (seed {seed}, n={n})"


def resolve_data(data, model: ModelWrapper, random_samples: int = DEFAULT_RANDOM_SAMPLES) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(x, y, description) from what the user gave: an .npz/.npy path, an array of inputs, an
    ``(x, y)`` tuple, or nothing (deterministic random inputs from the input's domain)."""
    input_shape = model.get_tensor_shape(model.graph.input[0].name)
    if isinstance(data, (np.ndarray, tuple)):
        x, y = arrays_as_data(data, input_shape)
        _check_declared_domain(model, x, "data")
        return x, y, f"{x.shape[0]} samples given as arrays"
    if data is not None:
        x, y = load_data(data, input_shape)
        _check_declared_domain(model, x, str(data))
        return x, y, Path(data).name
    x, desc = random_inputs(model, random_samples)
    return x, None, desc


def _check_declared_domain(model: ModelWrapper, x: np.ndarray, source: str) -> None:
    """User data for an input with a datatype annotation must lie on its grid (qonnx refuses it otherwise)."""
    declared = declared_datatype(model)
    if declared is None:
        return
    if declared["kind"] == "bipolar":
        bad = ~np.isin(x, (-1.0, 1.0))
        expected = "-1 or +1"
    else:
        bad = (x != np.round(x)) | (x < declared["low"]) | (x > declared["high"])
        expected = f"integers in [{declared['low']}, {declared['high']}]"
    if np.any(bad):
        example = float(x[bad].reshape(-1)[0])
        raise DataError(
            f"{source}: the model's input '{model.graph.input[0].name}' is annotated {declared['annotation']}, "
            f"but the data holds {example:g} ({int(bad.sum())} values off that grid)",
            hint=f"give inputs as the model expects them: {expected}",
        )
