"""Inputs for calibration and verification: .npz (x, optional y), .npy, or deterministic random."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper

from edgec.errors import DataError

DEFAULT_RANDOM_SAMPLES = 200


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


def input_domain(model: ModelWrapper) -> dict:
    """The quantized domain the model declares for its input, if its first op is a quantizer."""
    name = model.graph.input[0].name
    consumers = model.find_consumers(name) or []
    if len(consumers) != 1:
        return {"kind": "real"}
    node = consumers[0]
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
    shape = [n, *model.get_tensor_shape(model.graph.input[0].name)[1:]]
    rng = np.random.default_rng(seed)
    domain = input_domain(model)
    if domain["kind"] == "bipolar":
        x = rng.choice([-1.0, 1.0], size=shape) * domain["scale"]
        description = "random bipolar (+-1) inputs"
    elif domain["kind"] == "int":
        levels = rng.integers(domain["low"], domain["high"] + 1, size=shape)
        x = (levels - domain["zeropt"]) * domain["scale"]
        description = f"random integer inputs in [{domain['low']}, {domain['high']}] x scale {domain['scale']:g}"
    else:
        x = rng.standard_normal(shape)
        description = "random standard-normal inputs"
    return x.astype(np.float32), f"{description} (seed {seed}, n={n})"
