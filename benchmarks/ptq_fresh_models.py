"""A fresh check set of small float ONNX models for edgec's 8-bit post-training quantization.

Generated after edgec's PTQ work and never used to tune it: the point is to ask whether "bit-exact and
no costlier than float" holds on models nobody looked at while developing it. Feed the output to

    python benchmarks/ptq_fresh_models.py OUT_DIR [--seed 2026]
    python benchmarks/ptq_heldout.py --models OUT_DIR/fresh_*.onnx

The 14 architectures are drawn by a seeded random generator: MLPs (1-3 hidden Linear layers, widths
8-48) and small Conv1d/Conv2d stacks (channels 4-12, kernel 2-3, optional padding, Max/AvgPool 2,
BatchNorm) followed by Flatten and 1-2 Linear layers, with ReLU, LeakyReLU, ELU, Tanh, Sigmoid, ReLU6,
Hardtanh and PReLU activations, some bias-free layers, opsets 11/13/17. Each is trained for a few
seconds on scikit-learn's digits (1200 training images, accuracy on the rest), exported with the
TorchScript exporter (batch 1, input "input", output "logits", no Softmax), checked with
``onnx.checker`` (full check) and against onnxruntime (within 1e-4 of torch). Prints one JSON line per
model; a model failing a check is deleted and reported with ``"skipped"`` (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from torch import nn

N_MODELS = 14
N_TRAIN = 1200
TOLERANCE = 1e-4
OPSETS = (11, 13, 17)
ACTIVATIONS = ("relu", "leaky_relu", "elu", "tanh", "sigmoid", "relu6", "hardtanh", "prelu")
# Activations every set must contain at least twice (Tanh and Sigmoid count together).
REQUIRED_ACTIVATIONS = ("leaky_relu", "leaky_relu", "elu", "elu", "tanh", "sigmoid")
KINDS = ("mlp",) * 5 + ("cnn2d",) * 5 + ("cnn1d",) * 4
N_BIAS_FREE = 4

Act = tuple[str, float | None]
Spec = dict[str, Any]


def draw_activation(rng: random.Random, name: str | None = None) -> Act:
    """An activation ``(name, parameter)``: the given one (or a random one) with its parameter drawn."""
    name = name or rng.choice(ACTIVATIONS)
    if name == "leaky_relu":
        return name, rng.choice((0.01, 0.1, 0.2, 0.3))
    if name == "elu":
        return name, rng.choice((1.0, 0.5))
    return name, None


def make_activation(act: Act) -> nn.Module:
    """The torch module for an activation drawn by :func:`draw_activation`."""
    name, param = act
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope=param)
    if name == "elu":
        return nn.ELU(alpha=param)
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu6": nn.ReLU6, "hardtanh": nn.Hardtanh, "prelu": nn.PReLU}[name]()


def act_label(act: Act) -> str:
    """A readable label, e.g. ``LeakyReLU(0.1)``."""
    name, param = act
    label = {
        "relu": "ReLU",
        "leaky_relu": "LeakyReLU",
        "elu": "ELU",
        "tanh": "Tanh",
        "sigmoid": "Sigmoid",
        "relu6": "ReLU6",
        "hardtanh": "Hardtanh",
        "prelu": "PReLU",
    }[name]
    return f"{label}({param:g})" if param is not None else label


def draw_spec(rng: random.Random, index: int, kind: str, act: Act, scaling: str, opset: int, bias_free: bool, layout: str) -> Spec:
    """Draw one architecture of the given kind around its main activation.

    ``layout`` (``1x64`` or ``8x8``) is the input layout of a Conv1d model. ``bias_free`` makes every
    layer but the classifier bias-free (the classifier too, one time in three); otherwise a conv followed
    by BatchNorm drops its bias half the time. Returns a JSON-serialisable spec.
    """
    other = draw_activation(rng) if rng.random() < 0.3 else act
    spec: Spec = {"index": index, "kind": kind, "scaling": scaling, "opset": opset, "act": act, "convs": [], "hidden": []}
    if kind == "mlp":
        spec["input_shape"] = [1, 64]
        n_hidden = rng.randint(1, 3)
        for i in range(n_hidden):
            layer_act = other if i == n_hidden - 1 > 0 else act
            spec["hidden"].append({"width": rng.randint(8, 48), "act": layer_act, "bias": not bias_free})
    else:
        if kind == "cnn2d":
            spec["input_shape"], channels, size = [1, 1, 8, 8], 1, 8
        elif layout == "1x64":
            spec["input_shape"], channels, size = [1, 1, 64], 1, 64
        else:
            spec["input_shape"], channels, size = [1, 8, 8], 8, 8
        for i in range(rng.randint(1, 3)):
            if size < 3:
                break
            kernel = rng.choice((2, 3))
            padding = 1 if rng.random() < 0.35 else 0
            batchnorm = rng.random() < 0.4
            bias = not bias_free and not (batchnorm and rng.random() < 0.5)
            out_channels = rng.randint(4, 12)
            size = size + 2 * padding - kernel + 1
            pool = None
            if size >= 4 and rng.random() < (0.7 if size > 16 else 0.4):
                pool = rng.choice(("max", "avg"))
                size //= 2
            conv = {"in": channels, "out": out_channels, "kernel": kernel, "padding": padding, "bias": bias}
            conv.update(batchnorm=batchnorm, pool=pool, act=act if i == 0 else rng.choice((act, act, other)))
            spec["convs"].append(conv)
            channels = out_channels
        spec["flat"] = channels * size ** (2 if kind == "cnn2d" else 1)
        if rng.random() < 0.5:
            spec["hidden"].append({"width": rng.randint(8, 48), "act": other, "bias": not bias_free})
    spec["classifier_bias"] = not (bias_free and rng.random() < 1 / 3)
    return spec


def build(spec: Spec) -> nn.Sequential:
    """The torch model of a spec (in training mode)."""
    layers: list[nn.Module] = []
    conv_cls = {
        "cnn2d": (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d),
        "cnn1d": (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d),
    }
    features = 64
    if spec["kind"] != "mlp":
        conv, norm, max_pool, avg_pool = conv_cls[spec["kind"]]
        for c in spec["convs"]:
            layers.append(conv(c["in"], c["out"], c["kernel"], padding=c["padding"], bias=c["bias"]))
            if c["batchnorm"]:
                layers.append(norm(c["out"]))
            layers.append(make_activation(c["act"]))
            if c["pool"]:
                layers.append((max_pool if c["pool"] == "max" else avg_pool)(2))
        layers.append(nn.Flatten())
        features = spec["flat"]
    for h in spec["hidden"]:
        layers += [nn.Linear(features, h["width"], bias=h["bias"]), make_activation(h["act"])]
        features = h["width"]
    layers.append(nn.Linear(features, 10, bias=spec["classifier_bias"]))
    return nn.Sequential(*layers)


def describe(spec: Spec) -> str:
    """A one-line description of the architecture, e.g. ``in(1,64) -> Linear(32) -> ELU(1) -> Linear(10)``."""
    nb = " nobias"
    parts = [f"in({','.join(str(d) for d in spec['input_shape'])})"]
    dims = "2d" if spec["kind"] == "cnn2d" else "1d"
    for c in spec["convs"]:
        pad = f" pad{c['padding']}" if c["padding"] else ""
        parts.append(f"Conv{dims}({c['out']},k{c['kernel']}{pad}{'' if c['bias'] else nb})")
        if c["batchnorm"]:
            parts.append(f"BatchNorm{dims}")
        parts.append(act_label(c["act"]))
        if c["pool"]:
            parts.append(f"{c['pool'].capitalize()}Pool{dims}(2)")
    if spec["convs"]:
        parts.append(f"Flatten({spec['flat']})")
    for h in spec["hidden"]:
        parts += [f"Linear({h['width']}{'' if h['bias'] else nb})", act_label(h["act"])]
    parts.append(f"Linear(10{'' if spec['classifier_bias'] else nb})")
    return " -> ".join(parts)


def short_name(spec: Spec) -> str:
    """The file name stem, e.g. ``fresh_03_cnn2d2_elu``."""
    depth = len(spec["convs"]) + len(spec["hidden"]) + 1
    layout = "_1x64" if spec["input_shape"] == [1, 1, 64] else "_8x8" if spec["kind"] == "cnn1d" else ""
    return f"fresh_{spec['index']:02d}_{spec['kind']}{layout}_{depth}l_{spec['act'][0].replace('_', '')}"


def draw_specs(seed: int) -> list[Spec]:
    """The 14 distinct architectures for a seed, with the required activation, bias, scaling and opset coverage."""
    rng = random.Random(seed)
    kinds = list(KINDS)
    acts = list(REQUIRED_ACTIVATIONS) + [rng.choice(ACTIVATIONS) for _ in range(N_MODELS - len(REQUIRED_ACTIVATIONS))]
    scalings = ["minmax", "standard"] * (N_MODELS // 2)
    opsets = [OPSETS[i % len(OPSETS)] for i in range(N_MODELS)]
    bias_free = [True] * N_BIAS_FREE + [False] * (N_MODELS - N_BIAS_FREE)
    n_cnn1d = kinds.count("cnn1d")
    layouts = (["1x64", "8x8"] * n_cnn1d)[:n_cnn1d]  # Conv1d input layouts, in turn
    for pool in (kinds, acts, scalings, opsets, bias_free, layouts):
        rng.shuffle(pool)
    specs: list[Spec] = []
    seen: set[str] = set()
    for i in range(N_MODELS):
        act = draw_activation(rng, acts[i])
        layout = layouts[kinds[:i].count("cnn1d")] if kinds[i] == "cnn1d" else ""
        while True:
            spec = draw_spec(rng, i, kinds[i], act, scalings[i], opsets[i], bias_free[i], layout)
            if describe(spec) not in seen:
                break
        seen.add(describe(spec))
        specs.append(spec)
    return specs


def digits_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits pixels (0..16, shape (n, 64)) and labels, permuted by the seed: 1200 for training, the rest held out."""
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    x, y = digits.data[order].astype(np.float32), digits.target[order].astype(np.int64)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def scale(x: np.ndarray, x_train: np.ndarray, scaling: str) -> tuple[np.ndarray, dict[str, float]]:
    """Pixels scaled to [0, 1] (``minmax``) or standardised with the training set's pixel mean and std
    (``standard``; one mean and std for all pixels, so never-lit corner pixels do not blow up)."""
    if scaling == "minmax":
        params = {"offset": 0.0, "divisor": 16.0}
    else:
        params = {"offset": float(x_train.mean()), "divisor": float(x_train.std())}
    return ((x - params["offset"]) / params["divisor"]).astype(np.float32), params


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int = 25, batch: int = 32) -> None:
    """A few epochs of Adam on cross-entropy; the model is left in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch):
            idx = order[start : start + batch]
            optimizer.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            optimizer.step()
        schedule.step()
    model.eval()


def export_and_check(model: nn.Module, spec: Spec, path: Path, x_check: np.ndarray, meta: dict[str, str]) -> float:
    """Export with the TorchScript exporter, run the full ONNX checker and compare onnxruntime with torch
    sample by sample (batch 1). Returns the largest absolute difference; raises ``ValueError`` on a failure."""
    dummy = torch.from_numpy(x_check[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), str(path), dynamo=False, opset_version=spec["opset"], input_names=["input"], output_names=["logits"]
        )
    proto = onnx.load(str(path))
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    if ops & {"Softmax", "LogSoftmax"}:
        raise ValueError(f"graph ends in a softmax: {sorted(ops)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for sample in x_check:
            x1 = sample[None]
            ours = session.run(["logits"], {"input": x1})[0]
            if ours.shape != (1, 10):
                raise ValueError(f"output shape {ours.shape}, expected (1, 10)")
            worst = max(worst, float(np.abs(ours - model(torch.from_numpy(x1)).numpy()).max()))
    if not worst <= TOLERANCE:
        raise ValueError(f"onnxruntime differs from torch by {worst:.3g} > {TOLERANCE:g}")
    return worst


def make_model(spec: Spec, seed: int, data: tuple[np.ndarray, ...], out_dir: Path) -> dict[str, Any]:
    """Train, evaluate, export and check one model; returns its JSON row."""
    start = time.time()
    x_train, y_train, x_test, y_test = data
    xs_train, params = scale(x_train, x_train, spec["scaling"])
    xs_test, _ = scale(x_test, x_train, spec["scaling"])
    shape = spec["input_shape"][1:]
    xs_train, xs_test = xs_train.reshape(-1, *shape), xs_test.reshape(-1, *shape)
    model_seed = seed * 100 + spec["index"]
    torch.manual_seed(model_seed)
    model = build(spec)
    train(model, torch.from_numpy(xs_train), torch.from_numpy(y_train), model_seed)
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(xs_test)).argmax(1).numpy() == y_test).mean())
    name = short_name(spec)
    row: dict[str, Any] = {"name": name, "architecture": describe(spec), "heldout_accuracy": round(accuracy, 4)}
    row.update(
        input_shape=spec["input_shape"],
        scaling=f"(pixel - {params['offset']:.6g}) / {params['divisor']:.6g}",
        opset=spec["opset"],
        parameters=sum(p.numel() for p in model.parameters()),
        heldout_images=len(y_test),
    )
    meta = {"edgec_fresh_seed": str(seed), "architecture": row["architecture"], "input_scaling": row["scaling"]}
    path = out_dir / f"{name}.onnx"
    try:
        row["max_abs_diff_ort"] = export_and_check(model, spec, path, xs_test[:64], meta)
        row["path"] = str(path)
    except Exception as exc:  # any failure skips the model; the row says why
        path.unlink(missing_ok=True)
        row["skipped"] = f"{type(exc).__name__}: {exc}"[:500]
    row["seconds"] = round(time.time() - start, 1)
    return row


def main() -> int:
    """Generate the set into OUT_DIR; exit status 1 if any model was skipped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="where the fresh_<NN>_<description>.onnx files go")
    parser.add_argument("--seed", type=int, default=2026, help="architectures, data permutation and training (default 2026)")
    args = parser.parse_args()
    start = time.time()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    data = digits_split(args.seed)
    specs = draw_specs(args.seed)
    stale = sorted(p.name for p in args.out_dir.glob("fresh_*.onnx") if p.stem not in {short_name(s) for s in specs})
    if stale:
        print(f"note: {args.out_dir} also holds {len(stale)} fresh_*.onnx from another seed: {', '.join(stale)}", file=sys.stderr)
    skipped = 0
    for spec in specs:
        row = make_model(spec, args.seed, data, args.out_dir)
        skipped += "skipped" in row
        print(json.dumps(row), flush=True)
    print(f"{len(specs) - skipped}/{len(specs)} models written to {args.out_dir} in {time.time() - start:.1f} s", file=sys.stderr)
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
