"""What the cost models see of one lowered layer: op, shapes, precisions, strategy, weights.

``layers_from_onnx`` reads them off a canonical (channels-last) ONNX graph, the form edgec hands
to hls4ml, following hls4ml's lowering: a bias ``Add`` right after a MatMul/Conv is part of that
layer, Flatten/Reshape/Identity are wiring, and a quantizer after a layer only sets its output type.
The precisions come from a :class:`TypeOracle` (edgec's chosen types, or one ``fixed<W,I>`` for
every tensor when a published design is reproduced with ``--precision``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from onnx import helper
from qonnx.core.modelwrapper import ModelWrapper

from edgec.fixed_point import FixedType, droppable_input_quantizer

ACTIVATION_OPS = {
    "Relu": "relu",
    "LeakyRelu": "leaky_relu",
    "PRelu": "prelu",
    "Elu": "elu",
    "Selu": "selu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "HardSigmoid": "hard_sigmoid",
    "Softsign": "softsign",
    "Softplus": "softplus",
    "ThresholdedRelu": "thresholded_relu",
    "Softmax": "softmax",
}
# hls4ml implements these with a look-up table in block RAM (nnet_activation.h).
TABLE_ACTIVATIONS = {"elu", "selu", "sigmoid", "tanh", "softsign", "softplus", "softmax"}
WIRING_OPS = {"Flatten", "Reshape", "Identity", "Dropout", "Squeeze", "Unsqueeze"}
MERGE_OPS = {"Add", "Sub", "Mul", "Max", "Min", "Sum", "Div", "Concat"}
QUANTIZER_OPS = {"Quant", "BipolarQuant"}
SPATIAL_OPS = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization"}
# hls4ml's defaults for table activations (hls4ml/backends/fpga/fpga_backend.py: table_size 1024,
# table_t fixed<18,8>), which published designs use.
DEFAULT_TABLE_SIZE = 1024
DEFAULT_TABLE_BITS = 18


# the layer kinds that multiply by weights (hls4ml Dense, Conv1D/2D, DepthwiseConv1D/2D)
LINEAR_KINDS = ("dense", "conv", "depthwise")


@dataclass
class LayerConfig:
    """One lowered layer, as the cycle/resource/energy models need it.

    ``n_in`` products feed each output value; ``n_out`` output values are computed per position;
    ``positions`` output positions (pixels) are computed one after another (1 for Dense).
    """

    name: str
    kind: str  # dense | conv | depthwise | pool | global_pool | activation | batchnorm | merge | transpose | pad | quantizer
    op: str  # the ONNX op type
    output_tensor: str
    in_shape: list[int]  # without the batch dimension, channels last
    out_shape: list[int]
    io_type: str = "io_parallel"
    strategy: str = "latency"
    reuse_factor: int = 1
    input_bits: int = 16
    result_bits: int = 16
    accum_bits: int = 16
    weight_bits: int = 0
    n_in: int = 0
    n_out: int = 0
    positions: int = 1
    in_positions: int = 1
    channels: int = 1
    in_width: int = 1  # input columns (line-buffer length of io_stream convolutions/pooling)
    kernel_rows: int = 1
    weight_codes: np.ndarray | None = None  # integer weights (value * 2^fractional bits)
    binary_weights: bool = False
    compressed: bool = False  # hls4ml compressed weights (non-zeros with their indices)
    products_on_dsp: bool = False  # variable products bound to DSP slices (LayerChoice.products_on_dsp)
    nonzero_bias: int = 0
    activation: str | None = None
    table_size: int = 0
    table_bits: int = 0
    pool_op: str | None = None  # max | avg
    pool_size: int = 0  # inputs per pooling window
    variable_divisor: bool = False  # average excluding padding: a true division per output
    merge_inputs: int = 0
    fused_tensors: list[str] = field(default_factory=list)  # every tensor of the fused chain (MatMul, bias Add, quantizer)
    notes: list[str] = field(default_factory=list)

    @property
    def is_linear(self) -> bool:
        """A Dense/Conv/Depthwise layer (one of ``LINEAR_KINDS``): products and an adder tree."""
        return self.kind in LINEAR_KINDS

    @property
    def in_elems(self) -> int:
        return int(np.prod(self.in_shape)) if self.in_shape else 1

    @property
    def out_elems(self) -> int:
        return int(np.prod(self.out_shape)) if self.out_shape else 1

    @property
    def multiplies(self) -> int:
        """Products per inference (zeros included)."""
        return self.n_in * self.n_out * self.positions

    @property
    def nonzero_weights(self) -> int:
        if self.weight_codes is None:
            return self.n_in * self.n_out
        return int(np.count_nonzero(self.weight_codes))

    @property
    def effective_weight_bits(self) -> int:
        """Bits the widest constant weight really needs (sign included): HLS sizes a product by
        its constant, not by the declared weight type."""
        if self.weight_codes is None or not self.weight_codes.size:
            return self.weight_bits
        peak = int(np.max(np.abs(self.weight_codes)))
        return min(self.weight_bits, peak.bit_length() + 1) if peak else 1

    @property
    def sparsity(self) -> float:
        total = self.n_in * self.n_out
        return 1.0 - self.nonzero_weights / total if total else 0.0


@dataclass(frozen=True)
class DesignSettings:
    """Design-wide choices: the ones ``--io-type/--strategy/--reuse-factor/--precision`` override."""

    io_type: str = "io_parallel"
    strategy: str | None = None  # None: per layer from the plan
    reuse_factor: int | None = None
    precision: FixedType | None = None  # one type for every tensor, weight and accumulator


TypeOracle = Callable[[str], FixedType | None]


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _channels_last(node) -> bool:
    """qonnx moves spatial ops it converted to channels-last into its own op domain."""
    return node.op_type not in SPATIAL_OPS or str(node.domain).endswith("channels_last")


def _spatial(shape: list[int], channels_last: bool) -> tuple[list[int], int]:
    """(spatial dims, channels) of a per-sample shape."""
    if len(shape) <= 1:
        return [], shape[0] if shape else 1
    return (shape[:-1], shape[-1]) if channels_last else (shape[1:], shape[0])


def _shape(model: ModelWrapper, tensor: str) -> list[int]:
    shape = model.get_tensor_shape(tensor) or []
    return [int(d) for d in shape[1:]] if len(shape) > 1 else [int(d) for d in shape]


def weight_codes(weights: np.ndarray, wtype: FixedType) -> np.ndarray:
    """The integers the hardware multiplies by: weights on the type's grid (truncation or rounding
    per the type, then wrap/saturation to its width)."""
    scaled = np.asarray(weights, dtype=np.float64) * 2.0**wtype.fractional
    codes = np.round(scaled) if wtype.rounding.startswith("RND") else np.floor(scaled)
    lo = -(2 ** (wtype.width - 1)) if wtype.signed else 0
    hi = 2 ** (wtype.width - 1) - 1 if wtype.signed else 2**wtype.width - 1
    if wtype.saturation.startswith("SAT"):
        codes = np.clip(codes, lo, hi)
    else:
        span = hi - lo + 1
        codes = (codes - lo) % span + lo
    return codes.astype(np.int64)


def _bits(ftype: FixedType | None, default: int) -> int:
    return ftype.width if ftype is not None else default


def _chain(model: ModelWrapper, start: str, end: str) -> list[str]:
    """Tensors from ``start`` up to (not including) ``end`` along single-consumer edges."""
    chain, tensor = [], start
    while tensor != end and len(chain) < 8:
        consumers = model.find_consumers(tensor) or []
        if len(consumers) != 1:
            break
        chain.append(tensor)
        tensor = consumers[0].output[0]
    return chain


def _scale_codes(scale: np.ndarray, precision: FixedType | None, default_bits: int) -> tuple[np.ndarray, int]:
    """Codes of per-channel (or scalar) multiplier constants, on the given or an exact/ranged grid."""
    from edgec.fixed_point import exact_type, range_type

    flat = np.asarray(scale, dtype=np.float64).reshape(-1)
    ftype = precision or exact_type(flat, default_bits) or range_type(float(np.max(np.abs(flat))) if flat.size else 1.0, default_bits)
    return weight_codes(flat, ftype), ftype.width


def layers_from_onnx(
    model: ModelWrapper,
    settings: DesignSettings,
    tensor_type: TypeOracle,
    weight_type: Callable[[str, np.ndarray], FixedType],
    layer_strategy: Callable[[str], tuple[str, int]] | None = None,
) -> list[LayerConfig]:
    """The cost-relevant layers of a canonical model, in graph order.

    ``tensor_type(tensor)`` gives an activation tensor's type; ``weight_type(node, weights)`` a
    layer's weight type; ``layer_strategy(node)`` its (strategy, reuse factor) from the plan.
    """
    default_bits = settings.precision.width if settings.precision else 16

    def ttype(tensor: str) -> FixedType | None:
        return settings.precision or tensor_type(tensor)

    layers: list[LayerConfig] = []
    consumed: set[str] = set()
    # the type each layer hands on, as the backend sets it (edgec.backends.hls4ml_backend.apply_types:
    # a layer's input type is its producer's result type, through reshapes)
    handed: dict[str, FixedType] = {}

    def input_type(tensor: str) -> FixedType | None:
        return settings.precision or handed.get(tensor) or tensor_type(tensor)

    nodes = list(model.graph.node)
    dropped = droppable_input_quantizer(model) if settings.precision is None else None
    if dropped is not None:
        # the Input takes the quantizer's exact type: the backend removes the layer
        # (edgec.backends.hls4ml_backend.drop_input_quantizer)
        consumed.add(dropped.name)
    for node in nodes:
        if node.name in consumed:
            continue
        op = node.op_type
        x = node.input[0] if node.input else ""
        in_shape = _shape(model, x)
        out_tensor = node.output[0]
        if op in ("MatMul", "Conv"):
            weights = model.get_initializer(node.input[1])
            if weights is None:
                continue
            # A bias Add (constant second input) that only this layer feeds is part of the layer.
            bias = model.get_initializer(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            consumers = model.find_consumers(out_tensor) or []
            if len(consumers) == 1 and consumers[0].op_type == "Add":
                other = [i for i in consumers[0].input if i != out_tensor]
                const = model.get_initializer(other[0]) if other else None
                if const is not None:
                    bias = const if bias is None else bias + const
                    consumed.add(consumers[0].name)
                    out_tensor = consumers[0].output[0]
            # A quantizer right after only sets the output type (hls4ml folds it).
            consumers = model.find_consumers(out_tensor) or []
            own_quantizer = len(consumers) == 1 and consumers[0].op_type in QUANTIZER_OPS and settings.precision is None
            if own_quantizer:
                consumed.add(consumers[0].name)
                out_tensor = consumers[0].output[0]
            out_shape = _shape(model, out_tensor)
            wtype = settings.precision or weight_type(node.name, weights)
            layer = LayerConfig(name=node.name, kind="dense", op=op, output_tensor=out_tensor, in_shape=in_shape, out_shape=out_shape)
            layer.fused_tensors = [node.output[0]] + [
                model.find_consumers(t)[0].output[0] for t in _chain(model, node.output[0], out_tensor)
            ]
            if op == "MatMul":
                layer.n_in, layer.n_out = int(weights.shape[0]), int(weights.shape[1])
                layer.positions = int(np.prod(out_shape[:-1])) if len(out_shape) > 1 else 1
                layer.in_positions = layer.positions
                codes = weight_codes(weights, wtype)
            else:
                group = int(_attr(node, "group", 1))
                last = _channels_last(node)
                if not last:  # [C_out, C_in / group, k...] -> [C_out, k..., C_in / group]
                    weights = np.moveaxis(weights, 1, -1)
                in_spatial, c_in = _spatial(in_shape, last)
                out_spatial, _ = _spatial(out_shape, last)
                if settings.io_type == "io_stream":
                    # hls4ml's io_stream convolution reads a zero-padded input (it inserts a
                    # ZeroPadding layer in front: hls4ml/backends/vivado/passes/conv_same_pad.py)
                    pads = [int(p) for p in _attr(node, "pads", [0] * (2 * len(in_spatial)))]
                    half = len(pads) // 2
                    in_spatial = [d + pads[i] + pads[i + half] for i, d in enumerate(in_spatial)]
                layer.positions = int(np.prod(out_spatial)) if out_spatial else 1
                layer.in_positions = int(np.prod(in_spatial)) if in_spatial else 1
                layer.in_width = in_spatial[-1] if in_spatial else 1
                layer.kernel_rows = int(weights.shape[1]) if weights.ndim == 4 else 1
                layer.channels = c_in
                layer.kind = "depthwise" if group > 1 and group == c_in and weights.shape[-1] == 1 else "conv"
                layer.n_in = int(np.prod(weights.shape[1:]))
                layer.n_out = int(weights.shape[0])
                codes = weight_codes(weights.reshape(weights.shape[0], -1).T, wtype)
            layer.weight_codes = codes
            layer.weight_bits = wtype.width
            layer.binary_weights = wtype.width <= 1
            layer.nonzero_bias = int(np.count_nonzero(bias)) if bias is not None else 0
            in_t = input_type(x)
            out_t = ttype(out_tensor)
            layer.input_bits = _bits(in_t, default_bits)
            layer.result_bits = _bits(out_t, default_bits)
            if settings.precision is not None:
                layer.accum_bits = settings.precision.width
            else:
                from edgec.fixed_point import accumulator_type

                acc = accumulator_type(in_t or FixedType(default_bits, 6), wtype, layer.n_in)
                layer.accum_bits = acc.width
                reader = _single_consumer(model, out_tensor)
                while reader is not None and reader.op_type in WIRING_OPS:  # reshapes only move values
                    reader = _single_consumer(model, reader.output[0])
                if not own_quantizer and _quantizer_after(model, reader) is not None:
                    # the activation after it takes the quantizer's type; this layer hands it the
                    # exact sum (the backend types it as the accumulator: no rounding before the quantizer)
                    layer.result_bits = acc.width
                    out_t = acc
            if out_t is not None:
                handed[out_tensor] = out_t
            strategy, rf = layer_strategy(node.name) if layer_strategy else ("latency", 1)
            layer.strategy = (settings.strategy or strategy).lower()
            layer.reuse_factor = settings.reuse_factor or rf
            layers.append(layer)
            continue
        if op in WIRING_OPS or op in QUANTIZER_OPS and model.get_initializer(x) is not None:
            if op in WIRING_OPS and x in handed:
                handed[out_tensor] = handed[x]
            continue
        fused_quant = _quantizer_after(model, node) if settings.precision is None else None
        if fused_quant is not None:
            # hls4ml makes the quantizer a linear activation and merges it into this layer
            # (MergeLinearActivation, hls4ml/model/optimizer/passes/linear.py): one layer, the quantizer's type
            consumed.add(fused_quant.name)
            out_tensor = fused_quant.output[0]
        out_shape = _shape(model, out_tensor)
        layer = LayerConfig(name=node.name, kind="activation", op=op, output_tensor=out_tensor, in_shape=in_shape, out_shape=out_shape)
        layer.fused_tensors = [node.output[0], out_tensor] if fused_quant is not None else [out_tensor]
        in_t = input_type(x)
        layer.input_bits = _bits(in_t, default_bits)
        out_t = ttype(out_tensor)
        last = _channels_last(node)
        in_spatial, layer.channels = _spatial(in_shape, last)
        out_spatial, _ = _spatial(out_shape, last)
        layer.positions = int(np.prod(out_spatial)) if out_spatial else 1
        layer.in_positions = int(np.prod(in_spatial)) if in_spatial else 1
        layer.in_width = in_spatial[-1] if in_spatial else 1
        if op in ACTIVATION_OPS:
            layer.activation = ACTIVATION_OPS[op]
            if op == "LeakyRelu" and float(_attr(node, "alpha", 0.01)) == 1.0:
                layer.activation = "linear"  # an identity: hls4ml still instantiates it
            if layer.activation in TABLE_ACTIVATIONS:
                layer.table_size = DEFAULT_TABLE_SIZE
                layer.table_bits = DEFAULT_TABLE_BITS
        elif op in ("MaxPool", "AveragePool"):
            kernel = [int(k) for k in _attr(node, "kernel_shape", [1])]
            pads = [int(p) for p in _attr(node, "pads", [0] * (2 * len(kernel)))]
            auto_pad = _attr(node, "auto_pad", b"NOTSET")
            auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
            padded = any(pads) or auto_pad not in ("NOTSET", "VALID")
            layer.kind = "pool"
            layer.pool_op = "max" if op == "MaxPool" else "avg"
            layer.pool_size = int(np.prod(kernel))
            exclusive = not int(_attr(node, "count_include_pad", 0))
            layer.variable_divisor = layer.pool_op == "avg" and padded and exclusive
        elif op in ("GlobalAveragePool", "GlobalMaxPool"):
            layer.kind = "global_pool"
            layer.pool_op = "max" if op == "GlobalMaxPool" else "avg"
            layer.pool_size = layer.in_positions
        elif op == "BatchNormalization":
            layer.kind = "batchnorm"
            gamma, var = model.get_initializer(node.input[1]), model.get_initializer(node.input[4])
            if gamma is not None and var is not None:
                scale = np.asarray(gamma) / np.sqrt(np.asarray(var) + float(_attr(node, "epsilon", 1e-5)))
                layer.weight_codes, layer.weight_bits = _scale_codes(scale, settings.precision, default_bits)
        elif op in MERGE_OPS:
            consts = [model.get_initializer(i) for i in node.input]
            const = next((c for c in consts if c is not None), None)
            if const is not None and op in ("Mul", "Div"):
                # hls4ml's ApplyAlpha: one constant multiply per element (per-channel or scalar)
                layer.kind = "batchnorm"
                scale = 1.0 / np.asarray(const, dtype=np.float64) if op == "Div" else np.asarray(const, dtype=np.float64)
                layer.weight_codes, layer.weight_bits = _scale_codes(scale, settings.precision, default_bits)
            elif const is not None:
                layer.kind = "bias"  # a constant Add/Sub: one adder per element
            else:
                layer.kind = "merge"
            layer.merge_inputs = len(node.input)
        elif op == "Transpose":
            graph_in = {i.name for i in model.graph.input}
            graph_out = {o.name for o in model.graph.output}
            if x in graph_in or out_tensor in graph_out:
                continue  # a layout adapter at the model boundary: edgec transposes on the host
            layer.kind = "transpose"
        elif op == "Pad":
            layer.kind = "pad"
        elif op in QUANTIZER_OPS:
            layer.kind = "quantizer"
        else:
            layer.notes.append(f"no cost model for {op}: counted as an element-wise op")
        if layer.kind in ("pool", "global_pool") and fused_quant is None and settings.precision is None and in_t is not None:
            out_t = in_t  # the backend gives pooling its input's type
        layer.result_bits = _bits(out_t, default_bits)
        if out_t is not None:
            handed[out_tensor] = out_t
        layers.append(layer)
    for layer in layers:
        layer.io_type = settings.io_type
    return layers


# layers hls4ml merges a following quantizer into (MergeLinearActivation's safe parents: Dense,
# Conv, BatchNormalization/ApplyAlpha, Activation; hls4ml/model/optimizer/passes/linear.py)
_MERGING_OPS = set(ACTIVATION_OPS) | {"BatchNormalization"}


def _single_consumer(model: ModelWrapper, tensor: str):
    consumers = model.find_consumers(tensor) or []
    return consumers[0] if len(consumers) == 1 else None


def _quantizer_after(model: ModelWrapper, node):
    """The QONNX ``Quant`` that alone reads ``node``'s output when ``node`` is an activation (or a
    constant scale hls4ml makes an ApplyAlpha) hls4ml merges it into; else None."""
    if node is None or not node.output:
        return None
    mergeable = node.op_type in _MERGING_OPS or (
        node.op_type in ("Mul", "Div") and any(model.get_initializer(i) is not None for i in node.input[1:])
    )
    if not mergeable or node.output[0] in {o.name for o in model.graph.output}:
        return None
    consumer = _single_consumer(model, node.output[0])
    if consumer is None or consumer.op_type != "Quant" or model.get_initializer(consumer.input[0]) is not None:
        return None
    return consumer


def quantizer_type(model: ModelWrapper, tensor: str) -> FixedType | None:
    """The type a QONNX quantizer gives its output (its bit width)."""
    producer = model.find_producer(tensor)
    if producer is None:
        return None
    if producer.op_type == "BipolarQuant":
        return FixedType(1, 1)
    if producer.op_type == "Quant" and len(producer.input) > 3:
        bits = model.get_initializer(producer.input[3])
        if bits is None:
            return None
        width = int(np.asarray(bits).reshape(-1)[0])
        is_signed = bool(next((a.i for a in producer.attribute if a.name == "signed"), 1))
        return FixedType(max(width, 1), max(width, 1) if is_signed else width, is_signed)
    return None


def plan_cost_layers(model: ModelWrapper, plan, io_type: str, strategy: str | None = None) -> list[LayerConfig]:
    """The design's layers as the cost models see them, typed and configured as ``plan`` (an
    edgec.configure.LoweringPlan: ``tensor_type``, ``layers``, ``width``, ``precision``) chose."""
    from edgec.fixed_point import range_type

    settings = DesignSettings(io_type=io_type, strategy=strategy, reuse_factor=None, precision=plan.precision)

    def tensor_type(tensor: str) -> FixedType | None:
        return quantizer_type(model, tensor) or plan.tensor_type(tensor)

    def weight_type(node: str, weights: np.ndarray) -> FixedType:
        choice = plan.layers.get(node)
        return choice.weight_t if choice is not None else range_type(float(np.max(np.abs(weights))), plan.width)

    def layer_strategy(node: str) -> tuple[str, int]:
        choice = plan.layers.get(node)
        return (choice.strategy, choice.reuse_factor) if choice is not None else ("Latency", 1)

    layers = layers_from_onnx(model, settings, tensor_type, weight_type, layer_strategy)
    for layer in layers:
        choice = plan.layers.get(layer.name)
        layer.products_on_dsp = bool(choice is not None and getattr(choice, "products_on_dsp", False))
    return layers


def log2ceil(n: int) -> int:
    """Levels of a balanced binary tree over ``n`` leaves."""
    return math.ceil(math.log2(n)) if n > 1 else 0
