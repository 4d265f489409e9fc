"""A differentiable PyTorch module built from an ONNX/QONNX graph, for fine-tuning while pruning.

:class:`TorchGraph` interprets the graph node by node with ``torch.nn.functional`` for a useful op
subset (:data:`SUPPORTED_OPS`): dense and convolutional layers, element-wise arithmetic, the usual
activations, pooling, reshapes, inference-form batch normalization, softmax, and QONNX ``Quant`` /
``BipolarQuant`` with a straight-through estimator. Chosen initializers (the weights and biases of
the linear layers by default) become trainable ``nn.Parameter``s; every other initializer is a
constant. Each trainable tensor can carry a keep-mask that multiplies it in the forward pass, and
:meth:`TorchGraph.write_back` stores the trained, masked values into the ONNX initializers, leaving
the graph otherwise untouched.

The module works in the model's own layout with a free batch dimension (the model is expected to
be loaded with a static batch of 1; ``Reshape`` targets whose first entry is that batch of 1 follow
the actual batch size). torch is imported on use of this module only: callers check
``importlib.util.find_spec("torch")`` first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from qonnx.core.modelwrapper import ModelWrapper
from torch import nn

from edgec.passes.prune.common import attr, layer_bias, prunable_layers

SUPPORTED_OPS = frozenset({
    "MatMul", "Gemm", "Conv", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape", "Transpose",
    "BatchNormalization", "Softmax", "Identity", "Dropout", "Constant", "Quant", "BipolarQuant",
})  # fmt: skip


class UnsupportedGraph(Exception):
    """The graph uses an op (or an attribute combination) :class:`TorchGraph` does not translate."""


def unsupported_ops(model: ModelWrapper) -> list[str]:
    """Op types of ``model`` that :class:`TorchGraph` cannot translate (sorted, unique)."""
    return sorted({node.op_type for node in model.graph.node if node.op_type not in SUPPORTED_OPS})


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def default_trainable(model: ModelWrapper) -> list[str]:
    """The initializers worth fine-tuning: every prunable layer's (latent) weights, its bias
    (Conv/Gemm third input, or the initializer of the ``Add`` right after a MatMul) and the
    scale/shift of batch normalizations."""
    names: list[str] = []
    for ref in prunable_layers(model):
        names.append(ref.tensor)
        bias = layer_bias(model, ref.node)
        if bias is not None:
            names.append(bias)
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            names.extend(n for n in node.input[1:3] if model.get_initializer(n) is not None)
    return list(dict.fromkeys(names))


def _round_fn(mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    mode = mode.upper()
    if mode in ("ROUND", "HALF_EVEN"):
        return torch.round
    if mode == "CEIL":
        return torch.ceil
    if mode == "FLOOR":
        return torch.floor
    if mode == "UP":
        return lambda t: torch.sign(t) * torch.ceil(torch.abs(t))
    if mode == "DOWN":
        return torch.trunc
    if mode == "HALF_UP":
        return lambda t: torch.sign(t) * torch.floor(torch.abs(t) + 0.5)
    raise UnsupportedGraph(f"Quant rounding_mode {mode}")


def _ste(value: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """``rounded`` in the forward pass, the identity's gradient in the backward pass."""
    return value + (rounded - value).detach()


def _same_pads(in_sizes: list[int], kernel: list[int], strides: list[int], dilations: list[int], upper: bool) -> list[int]:
    begins, ends = [], []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    return begins + ends


class TorchGraph(nn.Module):
    """The ONNX graph of ``model`` as a differentiable module: ``forward(x) -> first graph output``.

    ``trainable`` names the initializers that become parameters (default: :func:`default_trainable`).
    ``set_mask(name, mask)`` makes the forward pass use ``parameter * mask`` for that tensor.
    Raises :class:`UnsupportedGraph` for ops or attributes it does not translate.
    """

    def __init__(self, model: ModelWrapper, trainable: Iterable[str] | None = None) -> None:
        super().__init__()
        missing = unsupported_ops(model)
        if missing:
            raise UnsupportedGraph(f"op(s) {', '.join(missing)}")
        self.nodes = list(model.graph.node)
        self.input_name = model.graph.input[0].name
        self.output_name = model.graph.output[0].name
        self.opset = next((o.version for o in model.model.opset_import if o.domain in ("", "ai.onnx")), 13)
        names = list(default_trainable(model) if trainable is None else trainable)
        self.keys = {name: f"p{i}" for i, name in enumerate(names)}
        self.weights = nn.ParameterDict()
        self.constants: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        for init in model.graph.initializer:
            value = numpy_helper.to_array(init)
            if init.name in self.keys:
                self.weights[self.keys[init.name]] = nn.Parameter(torch.tensor(np.asarray(value, dtype=np.float32)))
            elif np.issubdtype(value.dtype, np.floating):
                self.constants[init.name] = torch.tensor(np.asarray(value, dtype=np.float32))
            else:
                self.constants[init.name] = torch.tensor(np.asarray(value, dtype=np.int64))
        absent = [name for name in self.keys if self.keys[name] not in self.weights]
        if absent:
            raise ValueError(f"not initializers: {', '.join(absent)}")
        self.ops: dict[str, Callable] = {
            "MatMul": lambda n, a: [torch.matmul(a[0], a[1])],
            "Add": lambda n, a: [a[0] + a[1]],
            "Sub": lambda n, a: [a[0] - a[1]],
            "Mul": lambda n, a: [a[0] * a[1]],
            "Div": lambda n, a: [a[0] / a[1]],
            "Relu": lambda n, a: [F.relu(a[0])],
            "LeakyRelu": lambda n, a: [F.leaky_relu(a[0], float(attr(n, "alpha", 0.01)))],
            "Sigmoid": lambda n, a: [torch.sigmoid(a[0])],
            "Tanh": lambda n, a: [torch.tanh(a[0])],
            "Identity": lambda n, a: [a[0]],
            "Dropout": lambda n, a: [a[0], torch.ones_like(a[0], dtype=torch.bool)],
            "GlobalAveragePool": lambda n, a: [a[0].mean(dim=tuple(range(2, a[0].dim())), keepdim=True)],
            "GlobalMaxPool": lambda n, a: [a[0].amax(dim=tuple(range(2, a[0].dim())), keepdim=True)],
            "Transpose": lambda n, a: [a[0].permute(*(attr(n, "perm") or list(range(a[0].dim()))[::-1]))],
            "Gemm": self._gemm,
            "Conv": self._conv,
            "MaxPool": self._maxpool,
            "AveragePool": self._avgpool,
            "Flatten": self._flatten,
            "Reshape": self._reshape,
            "BatchNormalization": self._batchnorm,
            "Softmax": self._softmax,
            "Clip": self._clip,
            "Constant": self._constant,
            "Quant": self._quant,
            "BipolarQuant": self._bipolar,
        }

    # -- parameters and masks -------------------------------------------------------------
    def parameter(self, name: str) -> nn.Parameter:
        """The trainable tensor standing for initializer ``name`` (unmasked)."""
        return self.weights[self.keys[name]]

    def set_mask(self, name: str, mask: np.ndarray | None) -> None:
        """Multiply initializer ``name`` by ``mask`` (broadcastable to it) in the forward pass; None clears it."""
        if mask is None:
            self.masks.pop(name, None)
        else:
            self.masks[name] = torch.tensor(np.asarray(mask, dtype=np.float32))

    def masked(self, name: str) -> torch.Tensor:
        value = self.parameter(name)
        mask = self.masks.get(name)
        return value if mask is None else value * mask

    def write_back(self, model: ModelWrapper) -> None:
        """Store every trainable tensor (times its mask) into ``model``'s initializers."""
        with torch.no_grad():
            for name in self.keys:
                model.set_initializer(name, self.masked(name).detach().cpu().numpy().astype(np.float32))

    # -- evaluation -----------------------------------------------------------------------
    def _value(self, name: str, values: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if not name:
            return None
        if name in values:
            return values[name]
        if name in self.keys:
            return self.masked(name)
        if name in self.constants:
            return self.constants[name]
        raise KeyError(f"tensor {name} is neither computed nor an initializer")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {self.input_name: x}
        for node in self.nodes:
            args = [self._value(name, values) for name in node.input]
            outputs = self.ops[node.op_type](node, args)
            for name, out in zip(node.output, outputs):
                if name:
                    values[name] = out
        return values[self.output_name]

    def run(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        """Forward ``x`` (numpy, batch first) without gradients; returns float64 numpy."""
        outs = []
        with torch.no_grad():
            for start in range(0, len(x), batch):
                chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + batch], dtype=np.float32))
                outs.append(self.forward(chunk).cpu().numpy().astype(np.float64))
        return np.concatenate(outs)

    # -- op translations ------------------------------------------------------------------
    def _gemm(self, node, a: list) -> list[torch.Tensor]:
        left = a[0].transpose(0, 1) if int(attr(node, "transA", 0)) else a[0]
        right = a[1].transpose(0, 1) if int(attr(node, "transB", 0)) else a[1]
        out = float(attr(node, "alpha", 1.0)) * torch.matmul(left, right)
        if len(a) > 2 and a[2] is not None:
            out = out + float(attr(node, "beta", 1.0)) * a[2]
        return [out]

    def _spatial(self, node, x: torch.Tensor, kernel: list[int]) -> tuple[list[int], list[int], list[int]]:
        """(strides, dilations, pads as [begins..., ends...]) of a conv/pool node."""
        dims = len(kernel)
        strides = list(attr(node, "strides", None) or [1] * dims)
        dilations = list(attr(node, "dilations", None) or [1] * dims)
        auto_pad = _text(attr(node, "auto_pad", "NOTSET"))
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = _same_pads(list(x.shape[2:]), kernel, strides, dilations, auto_pad == "SAME_UPPER")
        elif auto_pad == "VALID":
            pads = [0] * (2 * dims)
        else:
            pads = list(attr(node, "pads", None) or [0] * (2 * dims))
        return strides, dilations, pads

    @staticmethod
    def _pad(x: torch.Tensor, pads: list[int], value: float = 0.0) -> torch.Tensor:
        dims = len(pads) // 2
        spec: list[int] = []
        for axis in reversed(range(dims)):
            spec += [pads[axis], pads[axis + dims]]
        return F.pad(x, spec, value=value) if any(spec) else x

    def _conv(self, node, a: list) -> list[torch.Tensor]:
        x, w = a[0], a[1]
        bias = a[2] if len(a) > 2 else None
        kernel = list(attr(node, "kernel_shape", None) or w.shape[2:])
        strides, dilations, pads = self._spatial(node, x, kernel)
        dims = len(kernel)
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(dims)
        if fn is None:
            raise UnsupportedGraph(f"{dims}-d Conv")
        if pads[:dims] == pads[dims:]:
            padding = pads[:dims]
        else:
            x, padding = self._pad(x, pads), [0] * dims
        return [fn(x, w, bias, stride=strides, padding=padding, dilation=dilations, groups=int(attr(node, "group", 1)))]

    def _maxpool(self, node, a: list) -> list[torch.Tensor]:
        x = a[0]
        kernel = list(attr(node, "kernel_shape"))
        strides, dilations, pads = self._spatial(node, x, kernel)
        dims = len(kernel)
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
        symmetric = pads[:dims] == pads[dims:] and all(2 * p <= k for p, k in zip(pads[:dims], kernel))
        if symmetric:
            padding = pads[:dims]
        else:
            x, padding = self._pad(x, pads, value=-math.inf), [0] * dims
        ceil = bool(int(attr(node, "ceil_mode", 0)))
        return [fn(x, kernel, stride=strides, padding=padding, dilation=dilations, ceil_mode=ceil)]

    def _avgpool(self, node, a: list) -> list[torch.Tensor]:
        x = a[0]
        kernel = list(attr(node, "kernel_shape"))
        strides, dilations, pads = self._spatial(node, x, kernel)
        dims = len(kernel)
        if any(d != 1 for d in dilations):
            raise UnsupportedGraph("dilated AveragePool")
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
        include = bool(int(attr(node, "count_include_pad", 0)))
        ceil = bool(int(attr(node, "ceil_mode", 0)))
        if pads[:dims] == pads[dims:] and all(2 * p <= k for p, k in zip(pads[:dims], kernel)):
            return [fn(x, kernel, stride=strides, padding=pads[:dims], ceil_mode=ceil, count_include_pad=include)]
        if not include:
            raise UnsupportedGraph("asymmetric AveragePool padding without count_include_pad")
        return [fn(self._pad(x, pads), kernel, stride=strides, padding=0, ceil_mode=ceil)]

    def _flatten(self, node, a: list) -> list[torch.Tensor]:
        x = a[0]
        axis = int(attr(node, "axis", 1))
        axis = axis + x.dim() if axis < 0 else axis
        if axis == 0 and x.shape[0] != 1:  # axis 0 of a static batch-1 model: keep the real batch
            axis = 1
        return [x.reshape(int(np.prod(x.shape[:axis])) if axis else 1, -1)]

    def _reshape(self, node, a: list) -> list[torch.Tensor]:
        x, shape = a[0], [int(v) for v in a[1].reshape(-1).tolist()]
        if not int(attr(node, "allowzero", 0)):
            shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
        # a static batch-1 target follows the real batch (the model is run batch-first)
        if shape and shape[0] == 1 and x.shape[0] != 1 and -1 not in shape[1:]:
            shape[0] = x.shape[0]
        return [x.reshape(shape)]

    def _batchnorm(self, node, a: list) -> list[torch.Tensor]:
        x, scale, shift, mean, var = a[:5]
        out = F.batch_norm(x, mean, var, scale, shift, training=False, eps=float(attr(node, "epsilon", 1e-5)))
        return [out]

    def _softmax(self, node, a: list) -> list[torch.Tensor]:
        x = a[0]
        if self.opset >= 13:
            return [F.softmax(x, dim=int(attr(node, "axis", -1)))]
        axis = int(attr(node, "axis", 1))
        axis = axis + x.dim() if axis < 0 else axis
        flat = x.reshape(int(np.prod(x.shape[:axis])) if axis else 1, -1)
        return [F.softmax(flat, dim=1).reshape(x.shape)]

    def _clip(self, node, a: list) -> list[torch.Tensor]:
        x = a[0]
        if self.opset >= 11:
            low = a[1] if len(a) > 1 and a[1] is not None else None
            high = a[2] if len(a) > 2 and a[2] is not None else None
        else:
            low, high = attr(node, "min"), attr(node, "max")
        if low is not None:
            x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype))
        if high is not None:
            x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype))
        return [x]

    def _constant(self, node, a: list) -> list[torch.Tensor]:
        for item in node.attribute:
            if item.name == "value":
                value = numpy_helper.to_array(item.t)
            elif item.name in ("value_float", "value_floats", "value_int", "value_ints"):
                value = np.asarray(attr(node, item.name))
            else:
                continue
            dtype = torch.float32 if np.issubdtype(value.dtype, np.floating) else torch.int64
            return [torch.tensor(np.asarray(value), dtype=dtype)]
        raise UnsupportedGraph(f"Constant {node.name} without a value")

    def _quant(self, node, a: list) -> list[torch.Tensor]:
        x, scale, zeropt, bits = a[:4]
        bits = float(bits.reshape(-1)[0])
        signed, narrow = bool(int(attr(node, "signed", 1))), bool(int(attr(node, "narrow", 0)))
        scaled = x / scale + zeropt
        if bits == 1 and signed:  # qonnx treats signed 1-bit Quant as bipolar
            ints = _ste(scaled, torch.where(scaled >= 0, torch.ones_like(scaled), -torch.ones_like(scaled)))
        else:
            if signed:
                low = -(2 ** (bits - 1)) + (1 if narrow else 0)
                high = 2 ** (bits - 1) - 1
            else:
                low, high = 0.0, 2**bits - (2 if narrow else 1)
            clamped = torch.clamp(scaled, low, high)
            ints = _ste(clamped, _round_fn(_text(attr(node, "rounding_mode", "ROUND")))(clamped))
        return [(ints - zeropt) * scale]

    def _bipolar(self, node, a: list) -> list[torch.Tensor]:
        x, scale = a[0], a[1]
        signs = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
        return [_ste(x, signs) * scale]
