"""Pruning benchmark: MAC (or binary-op) reduction each method reaches within 0.5 and 1 accuracy
points, without retraining unless the method fine-tunes (spp). Prints JSON (or a table with --table).

- CNN: the bundled examples/models/digits_cnn.onnx. The passes see the training split of
  scikit-learn's digits (the split examples/train_digits_cnn.py trained on: 1,497 images); the
  accuracy reported is on the 300 held-out images (examples/data/digits_test.npz) they never saw.
- MNIST CNN: examples/models/mnist_cnn.onnx (examples/train_mnist_cnn.py, trained on MNIST t10k
  0-7999; 706 k MACs): passes see 8000-8999 (spp also fine-tunes on the training images 0-7999 and
  judges max_drop on 8000-8999), accuracy on 9000-9999.
- BNN: examples/models/mnist_bnn_mlp.onnx (examples/train_mnist_bnn.py, trained on MNIST t10k
  0-7999): the passes see images 8000-8999 (tests/data/mnist_bnn_eval.npz), the accuracy reported
  is on 9000-9999 (read from the shared MNIST copy beside the repository; skipped without it).

Each run asks for a high ratio with ``max_drop`` and reports what the pass achieved; the pass's own
limit is enforced on the data it sees, so the held-out drop is reported beside it.

Usage: python benchmarks/pruning.py [--table] [--quick]
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgec.frontend.load import load_model  # noqa: E402
from edgec.passes.prune import PruneContext, run_pruning  # noqa: E402
from edgec.passes.prune.common import layer_ops, model_outputs, totals  # noqa: E402

CNN_METHODS = {
    "magnitude (per layer)": "magnitude:sparsity=0.95,max_drop={d}",
    "magnitude (global)": "magnitude:sparsity=0.95,scope=global,max_drop={d}",
    "channels (L1, Torch-Pruning style)": "channels:ratio=0.9,max_drop={d}",
    "sensitivity (Liebenwein et al.)": "sensitivity:ratio=0.9,max_drop={d}",
    "spp (fine-tuned)": "spp:ratio=0.9,group=filter,max_drop={d},validation={v},steps=300,recover=600,updates=4",
}
BNN_METHODS = {
    "bnn-latent": "bnn-latent:ratio=0.6,max_drop={d}",
}
DROPS = (0.5, 1.0)


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training and held-out split of examples/train_digits_cnn.py."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=300, random_state=0, stratify=y)
    return x_train, y_train, x_test, y_test


def mnist_images() -> tuple[np.ndarray, np.ndarray] | None:
    """The MNIST t10k split (N,1,28,28 floats in [0, 1], labels) from the shared copy beside the
    repository (idx format), if present."""
    import gzip

    root = REPO.parent / "shared" / "data" / "mnist"
    images, labels = root / "t10k-images-idx3-ubyte.gz", root / "t10k-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file():
        return None
    x = np.frombuffer(gzip.decompress(images.read_bytes())[16:], dtype=np.uint8).reshape(-1, 1, 28, 28)
    y = np.frombuffer(gzip.decompress(labels.read_bytes())[8:], dtype=np.uint8).astype(np.int64)
    return (x / 255.0).astype(np.float32), y


def mnist_unseen() -> tuple[np.ndarray, np.ndarray] | None:
    """MNIST t10k 9000-9999 as raw pixels (the BNN's input), neither trained on nor seen by the passes."""
    mnist = mnist_images()
    if mnist is None:
        return None
    x, y = mnist
    return np.round(x[9000:] * 255.0).reshape(-1, 784).astype(np.uint8), y[9000:]


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model_outputs(model, x).argmax(-1) == y))


def run_case(model_path: Path, methods: dict[str, str], seen: tuple, held_out: tuple, train: tuple | None = None) -> list[dict]:
    """Each method at each max_drop. ``train`` (the network's own training data) is prepended to
    ``seen`` for spp, which fine-tunes on it and judges max_drop on ``seen`` (its validation part)."""
    model = load_model(model_path).model
    base_ops, _ = totals(layer_ops(model))
    base_acc = accuracy(model, *held_out)
    rows = []
    for label, template in methods.items():
        for drop in DROPS:
            data = seen
            validation = 0.2
            if template.startswith("spp") and train is not None:
                data = (np.concatenate([train[0], seen[0]]), np.concatenate([train[1], seen[1]]))
                validation = round(len(seen[0]) / len(data[0]), 4)
            spec = template.format(d=drop, v=validation)
            start = time.perf_counter()
            try:
                pruned, records = run_pruning(model, [spec], PruneContext(data[0], data[1], seed=0))
            except Exception as exc:  # a method that cannot run on this model: say why
                rows.append(
                    {"method": label, "spec": spec, "max_drop": drop, "error": (str(exc) or type(exc).__name__).splitlines()[0][:200]}
                )
                continue
            ops, _ = totals(layer_ops(pruned))
            held = accuracy(pruned, *held_out)
            record = records[0]
            rows.append(
                {
                    "method": label,
                    "spec": spec,
                    "max_drop": drop,
                    "mode": record.get("mode"),
                    "ops_before": base_ops,
                    "ops_after": ops,
                    "op_reduction": round(base_ops / max(ops, 1), 3),
                    "ops_removed": round(1 - ops / base_ops, 4) if base_ops else 0.0,
                    "accuracy_seen_before": record["accuracy_before"],
                    "accuracy_seen_after": record["accuracy_after"],
                    "accuracy_held_out_before": base_acc,
                    "accuracy_held_out_after": held,
                    "held_out_drop_points": round((base_acc - held) * 100, 3),
                    "seconds": round(time.perf_counter() - start, 2),
                    "notes": record.get("notes", []),
                }
            )
    return rows


def main() -> None:
    warnings.filterwarnings("ignore")
    x_train, y_train, x_test, y_test = digits_split()
    mnist = mnist_images()
    # digits: the passes see the training split; spp fine-tunes on its first 80% and validates on the rest
    result = {
        "cnn": {
            "model": "examples/models/digits_cnn.onnx",
            "rows": run_case(REPO / "examples/models/digits_cnn.onnx", CNN_METHODS, (x_train, y_train), (x_test, y_test)),
        }
    }
    if mnist is not None:
        x, y = mnist
        result["mnist_cnn"] = {
            "model": "examples/models/mnist_cnn.onnx",
            "seen": "MNIST t10k images 8000-8999",
            "held_out": "MNIST t10k images 9000-9999",
            "rows": run_case(
                REPO / "examples/models/mnist_cnn.onnx",
                CNN_METHODS,
                (x[8000:9000], y[8000:9000]),
                (x[9000:], y[9000:]),
                train=(x[:8000], y[:8000]),
            ),
        }
    bnn_model = REPO / "examples" / "models" / "mnist_bnn_mlp.onnx"
    seen_data = np.load(REPO / "tests" / "data" / "mnist_bnn_eval.npz")  # MNIST t10k 8000-8999 (held out from training)
    unseen = mnist_unseen()
    if unseen is not None:
        result["bnn"] = {
            "model": "examples/models/mnist_bnn_mlp.onnx",
            "seen": "MNIST t10k images 8000-8999",
            "held_out": "MNIST t10k images 9000-9999",
            "rows": run_case(bnn_model, BNN_METHODS, (seen_data["x"], seen_data["y"]), unseen),
        }
    if "--table" in sys.argv:
        for case, data in result.items():
            print(f"\n{case}: {data['model']}")
            print(f"{'method':<36} {'max_drop':>8} {'ops removed':>11} {'x fewer':>8} {'held-out drop':>13}  mode")
            for row in data["rows"]:
                if "error" in row:
                    print(f"{row['method']:<36} {row['max_drop']:>8} error: {row['error']}")
                    continue
                print(
                    f"{row['method']:<36} {row['max_drop']:>8} {row['ops_removed'] * 100:>10.1f}% {row['op_reduction']:>8.2f} "
                    f"{row['held_out_drop_points']:>12.2f}  {row['mode']}"
                )
        return
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
