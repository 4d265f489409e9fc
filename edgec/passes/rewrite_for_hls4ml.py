"""Rewrite ops hls4ml's ONNX reader cannot take into equivalent ops it lowers correctly.

- PRelu with one slope for every channel -> LeakyRelu (Relu for slope 0); with per-channel slopes
  -> Relu(x) - a * Relu(-x), which hls4ml lowers as activations, per-channel scales and a Sub.
- GlobalAveragePool -> AveragePool over the whole feature map (then as below).
- AveragePool without padding, or with padding counted (count_include_pad=1) -> a depthwise Conv
  with weights 1/kernel_size (hls4ml's depthwise convolution). Exclusive averages over padded
  borders have a different divisor per position and are left for the support check to report.
- Clip with constant bounds on a computed tensor (ReLU6 and Hardtanh, as every PyTorch/TF export
  writes them; hls4ml's ONNX reader has no Clip) -> ``lo + Relu(x - lo) - Relu(x - hi)``, which is
  exactly ``min(max(x, lo), hi)`` and lowers as activations, biases and a Sub (a bound that is
  absent or infinite drops its term).
- Squeeze/Unsqueeze of a computed tensor (axes as attribute or, from opset 13, as a constant input)
  -> the Reshape to its static shape (tf2onnx writes Conv1D as Unsqueeze -> Conv2D -> Squeeze).
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def constant_value(model: ModelWrapper, name: str) -> np.ndarray | None:
    """An initializer's value, or the value of the ``Constant`` node producing ``name`` (PyTorch's
    TorchScript exporter writes Clip bounds and shapes as Constant nodes)."""
    value = model.get_initializer(name)
    if value is not None:
        return np.asarray(value)
    producer = model.find_producer(name)
    if producer is not None and producer.op_type == "Constant":
        from onnx import numpy_helper

        for attr in producer.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
            if attr.name in ("value_float", "value_int"):
                return np.asarray(helper.get_attribute_value(attr))
    return None


MISSING = object()  # an optional parameter the node does not give


def constant_parameter(model: ModelWrapper, node, index: int, attribute: str):
    """A node's constant parameter that newer opsets pass as input ``index`` and older ones as
    ``attribute`` (Clip's min/max, Squeeze's axes): its value, None when the input is computed at
    run time, or MISSING when the node gives neither."""
    if len(node.input) > index and node.input[index]:
        return constant_value(model, node.input[index])
    value = _attr(node, attribute)
    return MISSING if value is None else np.asarray(value)


def clip_bounds(model: ModelWrapper, node) -> tuple[float | None, float | None] | None:
    """Constant (lo, hi) of a Clip, None for a side it leaves open (absent or infinite); None
    altogether when a bound is computed at run time or is not a scalar."""
    bounds: list[float | None] = []
    for index, attribute in ((1, "min"), (2, "max")):
        value = constant_parameter(model, node, index, attribute)
        if value is None or (value is not MISSING and np.size(value) != 1):
            return None
        bound = None if value is MISSING else float(np.asarray(value).reshape(-1)[0])
        bounds.append(bound if bound is not None and np.isfinite(bound) else None)
    return bounds[0], bounds[1]


class RewriteForHls4ml(Transformation):
    def __init__(self, pooling: bool = True) -> None:
        """``pooling=False`` leaves average pooling alone (cost estimates of hls4ml's own Pooling layers)."""
        super().__init__()
        self.pooling = pooling
        self.records: list[dict] = []

    def apply(self, model: ModelWrapper):
        for node in list(model.graph.node):
            if node.op_type == "PRelu" and self._prelu(model, node):
                return model, True
            if node.op_type == "Clip" and self._clip(model, node):
                return model, True
            if node.op_type in ("Squeeze", "Unsqueeze") and self._squeeze(model, node):
                return model, True
            if not self.pooling:
                continue
            if node.op_type == "AveragePool" and self._average_pool(model, node):
                return model, True
            if node.op_type == "GlobalAveragePool" and self._global_average_pool(model, node):
                return model, True
        return model, False

    def _replace(self, model: ModelWrapper, old, new_nodes: list) -> None:
        index = list(model.graph.node).index(old)
        model.graph.node.remove(old)
        for offset, new in enumerate(new_nodes):
            model.graph.node.insert(index + offset, new)

    def _prelu(self, model: ModelWrapper, node) -> bool:
        slope = model.get_initializer(node.input[1])
        shape = model.get_tensor_shape(node.input[0])
        if slope is None or shape is None:
            return False
        x, y, name = node.input[0], node.output[0], node.name or "prelu"
        flat = np.asarray(slope, dtype=np.float32).reshape(-1)
        if np.all(flat == flat[0]):
            alpha = float(flat[0])
            new = (
                helper.make_node("Relu", [x], [y], name=name)
                if alpha == 0
                else helper.make_node("LeakyRelu", [x], [y], name=name, alpha=alpha)
            )
            self._replace(model, node, [new])
            self.records.append({"node": name, "rewrite": f"PRelu -> {new.op_type}"})
            return True
        # Per-channel slopes: y = relu(x) - a * relu(-x), with a broadcast along the channel axis.
        channels = flat.size
        rank = len(shape)
        axis = 1 if rank > 2 else rank - 1
        if shape[axis] != channels:
            return False
        a_shape = [channels] + [1] * (rank - axis - 1)
        names = {k: model.make_new_valueinfo_name() for k in ("neg", "neg_x", "relu_neg", "scaled", "relu_x", "minus_one", "a")}
        model.set_initializer(names["minus_one"], np.array(-1.0, dtype=np.float32))
        model.set_initializer(names["a"], flat.reshape(a_shape))
        new_nodes = [
            helper.make_node("Relu", [x], [names["relu_x"]], name=f"{name}_pos"),
            helper.make_node("Mul", [x, names["minus_one"]], [names["neg_x"]], name=f"{name}_neg"),
            helper.make_node("Relu", [names["neg_x"]], [names["relu_neg"]], name=f"{name}_negrelu"),
            helper.make_node("Mul", [names["relu_neg"], names["a"]], [names["scaled"]], name=f"{name}_slope"),
            helper.make_node("Sub", [names["relu_x"], names["scaled"]], [y], name=f"{name}_sub"),
        ]
        self._replace(model, node, new_nodes)
        self.records.append({"node": name, "rewrite": "PRelu -> Relu(x) - a*Relu(-x)"})
        return True

    def _clip(self, model: ModelWrapper, node) -> bool:
        """min(max(x, lo), hi) = lo + Relu(x - lo) - Relu(x - hi) for lo <= hi (see module docstring)."""
        x, y, name = node.input[0], node.output[0], node.name or "clip"
        if constant_value(model, x) is not None:
            return False  # a constant: folded by cleanup
        bounds = clip_bounds(model, node)
        if bounds is None:
            return False  # a bound computed at run time
        lo, hi = bounds
        if lo is None and hi is None:
            new_nodes = [helper.make_node("Identity", [x], [y], name=name)]
        else:
            new_nodes = []
            names = {
                k: model.make_new_valueinfo_name() for k in ("low", "high", "shift_lo", "shift_hi", "relu_lo", "relu_hi", "lower", "base")
            }

            def shifted(bound: float, key: str) -> str:
                const = model.make_new_valueinfo_name()
                model.set_initializer(const, np.array(-bound, dtype=np.float32))
                new_nodes.append(helper.make_node("Add", [x, const], [names[f"shift_{key}"]], name=f"{name}_{key}_shift"))
                new_nodes.append(helper.make_node("Relu", [names[f"shift_{key}"]], [names[f"relu_{key}"]], name=f"{name}_{key}_relu"))
                return names[f"relu_{key}"]

            if lo is not None:
                lower = shifted(lo, "lo")  # max(x, lo) - lo
                if lo != 0.0:
                    back = model.make_new_valueinfo_name()
                    model.set_initializer(back, np.array(lo, dtype=np.float32))
                    new_nodes.append(helper.make_node("Add", [lower, back], [names["lower"]], name=f"{name}_lo_back"))
                    lower = names["lower"]
            else:
                lower = x
            if hi is not None:
                if lo is not None and hi < lo:
                    return False  # ONNX then gives hi everywhere: not worth a rewrite
                upper = shifted(hi, "hi")  # max(x, hi) - hi
                new_nodes.append(helper.make_node("Sub", [lower, upper], [y], name=f"{name}_sub"))
            else:
                new_nodes[-1].output[0] = y
        self._replace(model, node, new_nodes)
        self.records.append({"node": name, "rewrite": f"Clip [{lo}, {hi}] -> lo + Relu(x - lo) - Relu(x - hi)"})
        return True

    def _squeeze(self, model: ModelWrapper, node) -> bool:
        """Squeeze/Unsqueeze of a computed tensor -> Reshape to the (static) output shape."""
        if model.get_initializer(node.input[0]) is not None:
            return False
        out_shape = model.get_tensor_shape(node.output[0])
        if out_shape is None or any(not isinstance(d, int) or d < 1 for d in out_shape):
            return False
        shape_name = model.make_new_valueinfo_name()
        model.set_initializer(shape_name, np.asarray(out_shape, dtype=np.int64))
        reshape = helper.make_node("Reshape", [node.input[0], shape_name], [node.output[0]], name=node.name or node.op_type.lower())
        self._replace(model, node, [reshape])
        self.records.append({"node": reshape.name, "rewrite": f"{node.op_type} -> Reshape to {list(out_shape)}"})
        return True

    def _global_average_pool(self, model: ModelWrapper, node) -> bool:
        """GlobalAveragePool is an AveragePool whose kernel is the whole feature map."""
        shape = model.get_tensor_shape(node.input[0])
        if shape is None or len(shape) < 3:
            return False
        kernel = list(shape[2:])
        pool = helper.make_node(
            "AveragePool", [node.input[0]], [node.output[0]], name=node.name or "gap", kernel_shape=kernel, strides=kernel
        )
        self._replace(model, node, [pool])
        return self._average_pool(model, pool)

    def _average_pool(self, model: ModelWrapper, node) -> bool:
        kernel = list(_attr(node, "kernel_shape", []))
        pads = list(_attr(node, "pads", [0] * (2 * len(kernel))))
        auto_pad = _attr(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        include_pad = int(_attr(node, "count_include_pad", 0))
        if not kernel or int(_attr(node, "ceil_mode", 0)) or auto_pad not in ("NOTSET", "VALID"):
            return False
        if any(pads) and not include_pad:
            return False
        shape = model.get_tensor_shape(node.input[0])
        if shape is None:
            return False
        channels = shape[1]
        weight = np.full([channels, 1, *kernel], 1.0 / float(np.prod(kernel)), dtype=np.float32)
        w_name = model.make_new_valueinfo_name()
        model.set_initializer(w_name, weight)
        strides = list(_attr(node, "strides", [1] * len(kernel)))
        conv = helper.make_node(
            "Conv",
            [node.input[0], w_name],
            [node.output[0]],
            name=node.name or "avgpool",
            kernel_shape=kernel,
            strides=strides,
            pads=pads,
            group=channels,
            dilations=[1] * len(kernel),
        )
        self._replace(model, node, [conv])
        self.records.append({"node": conv.name, "rewrite": "AveragePool -> depthwise Conv (1/k weights)"})
        return True
