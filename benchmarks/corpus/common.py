"""Shared helpers of the corpus generators: data sets, held-out splits, data files and manifest fragments.

Imported by every generator in every exporter env (main venv, .venv-keras2, .venv-keras3), so it needs
numpy, onnx and scikit-learn only. Data sets:

- ``digits``: scikit-learn's ``load_digits()`` (8x8, values 0..16, scaled to 0..1). A fixed permutation
  (seed 0) puts 1,400 images in training and the remaining 397 in held-out; data files take the first
  64 held-out images.
- ``mnist``: the MNIST test split (t10k) in ``/work/shared/data/mnist`` (or ``$EDGEC_MNIST_DIR``), read at
  generation time only. Training uses images 0-7999, held-out data files take images 9000-9063.
- ``signal``: a synthetic 1-D task (4 classes of noisy tones/chirps/steps, 64 samples, 1 channel).

Each generator calls :func:`record` for every model it writes and :func:`write_fragment` at the end; the
fragment (``tests/corpus/fragments/<generator>.json``) holds what only the exporter's env knows (exporter
and framework versions, options, features). ``finalize.py`` (main venv) merges the fragments into
``tests/corpus/manifest.json`` and adds what is measured on the files (opset, IR, shapes, accuracy, split).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus"
MODELS = CORPUS / "models"
DATA = CORPUS / "data"
FRAGMENTS = CORPUS / "fragments"
MNIST_DIR = Path(os.environ.get("EDGEC_MNIST_DIR", "/work/shared/data/mnist"))

N_HELDOUT = 64
SEED = 0

_entries: list[dict[str, Any]] = []


def seed_everything(seed: int = SEED) -> None:
    """Seed Python's and numpy's generators (frameworks seed their own on top of this)."""
    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as float32 (N, 8, 8) in 0..1: (x_train, y_train, x_heldout, y_heldout), fixed permutation."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    perm = np.random.RandomState(SEED).permutation(len(x))
    tr, te = perm[:1400], perm[1400:]
    return x[tr], y[tr], x[te], y[te]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist_split(n_train: int = 8000) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST t10k as uint8 (N, 28, 28): (x_train, y_train, x_heldout, y_heldout); held-out = 9000..9999."""
    x = _read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    y = _read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return x[:n_train], y[:n_train], x[9000:], y[9000:]


def make_signal(n: int, seed: int, length: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic 1-D classification: float32 (n, length) signals and int64 labels in 0..3.

    Class 0: low tone, 1: high tone, 2: chirp, 3: step; random phase, amplitude and noise.
    """
    rng = np.random.RandomState(seed)
    t = np.linspace(0.0, 1.0, length, dtype=np.float64)
    y = rng.randint(0, 4, size=n)
    x = np.empty((n, length), dtype=np.float64)
    for i, c in enumerate(y):
        ph = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.5, 1.0)
        if c == 0:
            s = np.sin(2 * np.pi * 3 * t + ph)
        elif c == 1:
            s = np.sin(2 * np.pi * 11 * t + ph)
        elif c == 2:
            s = np.sin(2 * np.pi * (2 + 10 * t) * t + ph)
        else:
            s = np.where(t > rng.uniform(0.3, 0.7), 1.0, -1.0)
        x[i] = amp * s + 0.3 * rng.randn(length)
    return x.astype(np.float32), y.astype(np.int64)


def signal_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The synthetic 1-D task: 2,000 training signals (seed 1) and 64 held-out ones (seed 2)."""
    xtr, ytr = make_signal(2000, seed=1)
    xte, yte = make_signal(N_HELDOUT, seed=2)
    return xtr, ytr, xte, yte


def save_data(name: str, x: np.ndarray, y: np.ndarray | None = None) -> str:
    """Write ``tests/corpus/data/<name>.npz`` (``x`` and, for classifiers, int64 ``y``); returns the file name."""
    DATA.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"x": np.ascontiguousarray(x)}
    if y is not None:
        arrays["y"] = np.asarray(y, dtype=np.int64)
    path = DATA / f"{name}.npz"
    # like np.savez_compressed, but with fixed zip timestamps so that regenerating gives identical bytes
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
    return path.name


def model_path(name: str) -> Path:
    """``tests/corpus/models/<name>.onnx`` (the folder is created)."""
    MODELS.mkdir(parents=True, exist_ok=True)
    return MODELS / f"{name}.onnx"


def record(
    name: str,
    *,
    data: str,
    family: str,
    exporter: str,
    exporter_version: str,
    framework_version: str,
    options: dict[str, Any],
    features: list[str],
    task: str,
    trained_on: str,
    size: str = "small",
    extra_files: list[str] | None = None,
    notes: str = "",
) -> None:
    """Remember one model's manifest fields known at export time (see :func:`write_fragment`)."""
    entry: dict[str, Any] = {
        "name": name,
        "file": f"models/{name}.onnx",
        "data": f"data/{data}",
        "family": family,
        "exporter": exporter,
        "exporter_version": exporter_version,
        "framework_version": framework_version,
        "options": options,
        "features": features,
        "task": task,
        "trained_on": trained_on,
        "size": size,
    }
    if extra_files:
        entry["extra_files"] = [f"models/{f}" for f in extra_files]
    if notes:
        entry["notes"] = notes
    _entries.append(entry)
    print(f"  wrote {name}", flush=True)


def write_fragment(generator: str) -> Path:
    """Write the recorded entries to ``tests/corpus/fragments/<generator>.json`` (sorted by name)."""
    FRAGMENTS.mkdir(parents=True, exist_ok=True)
    path = FRAGMENTS / f"{generator}.json"
    for e in _entries:
        e["generator"] = f"benchmarks/corpus/{generator}.py"
    path.write_text(json.dumps(sorted(_entries, key=lambda e: e["name"]), indent=1) + "\n")
    print(f"{generator}: {len(_entries)} models -> {path.relative_to(REPO)}", flush=True)
    return path


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of (N, C) scores (or (N, C, 1, ...) squeezed) against labels."""
    s = np.asarray(logits).reshape(len(y), -1)
    return float((s.argmax(1) == y).mean())
