"""Post-training quantization of a float model to fixed point (``--quantize fixed:bits=N,...``).

The pass turns a float ONNX model into a QONNX model whose quantizers all have power-of-two scales,
so each one is exactly an ``ap_fixed<W,I>`` (signed) or ``ap_ufixed<W,I>`` (unsigned) and hls4ml
takes the precisions unchanged:

* **Weights** of every MatMul/Conv/Gemm: ``Quant(W, 2^e, 0, bits, signed=1, narrow=1, ROUND)``, one
  scale per layer or (``per=channel``) per output channel. ``e`` is the smallest exponent whose
  largest level, ``(2^(bits-1) - 1) * 2^e``, covers the calibrated ``max |w|``. Narrow range keeps
  the grid symmetric (``-127..127`` at 8 bits): ``-max`` and ``+max`` are both representable,
  and hls4ml maps it to ``AP_SAT_SYM``.
* **Activations**: the graph input and the output of each layer (after its bias and activation:
  ``Conv -> Relu -> Quant``), ``Quant(x, 2^e, 0, act_bits, signed, narrow=0, ROUND)``, unsigned
  when the calibrated minimum is >= 0 (after a ReLU), signed otherwise; ``e`` is the smallest
  exponent whose largest level covers the calibrated maximum (or the ``percentile`` of ``|x|``).
  Values beyond it saturate. Ops that keep values on their input's grid (max-pooling, reshapes)
  get no quantizer; Softmax outputs are left as they are.
* **Biases** are rounded (half to even) onto their layer's accumulator grid ``s_in * s_w``, so the
  bias addition is exact in the accumulator; they stay plain initializers.

Rounding is ``ROUND`` (half to even; ``AP_RND_CONV`` in ap_fixed), saturation ``SAT`` (``SAT_SYM``
for the narrow-range weights). With power-of-two scales every product and sum of the float32
reference is exact as long as an accumulator stays below 2^24 of its LSBs (checked and recorded),
so the QONNX model's qonnx execution is the fixed-point computation itself.

**Mixed precision** (programmatic: ``FixedPointQuantization(x, layer_bits={layer: bits or
[bits per output channel]})``, used by ``--quantize mixed``): a listed layer's weights take its own
width, one per output channel when a list is given (per-channel scales then). qonnx 1.0's ``Quant``
takes a scalar bit width only (``int_quant`` tests ``bitwidth == 1``; ``get_output_dtype`` asserts a
0-d bit width), so a layer whose kernels have different widths gets one weight quantizer with the
widest kernel's width and a per-channel scale chosen for each kernel's own width: kernel ``c`` at
``b_c`` bits has ``|w| <= (2^(b_c-1) - 1) * 2^e_c``, so its levels never reach beyond ``b_c`` bits and
the wider quantizer computes exactly the ``b_c``-bit grid. The layer's weight type covers the widest
kernel. Each activation quantizer then takes the widest width of the layers that read it (through
max-pooling/reshapes); one no layer reads (the logits) keeps ``act_bits``.

A model that already holds quantizers (QONNX from Brevitas/QKeras, or QDQ) is left unchanged
unless ``force=true``, which removes the Quant/BipolarQuant/Trunc nodes and quantizes the float
model underneath (BatchNorm is folded into the preceding layer first in any case).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from onnx import helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.batchnorm_to_affine import BatchNormToAffine
from qonnx.transformation.general import RemoveUnusedTensors
from qonnx.transformation.infer_shapes import InferShapes

from edgec.errors import DataError, OptionError
from edgec.fixed_point import LAYOUT_OPS, FixedType, exact_type, table_input_type
from edgec.passes.fold_affine import FoldAffineIntoLinear
from edgec.passes.graph_utils import bypass
from edgec.passes.hoist_affine import HoistAffineAboveSqueeze
from edgec.passes.prune.common import WeightRef, attr, prunable_layers
from edgec.passes.quant.calibrate import TensorRange, accumulator_name, calibrate_ranges
from edgec.passes.quant.registry import QuantizationPass

QONNX_DOMAIN = "qonnx.custom_op.general"
QUANTIZER_OPS = ("Quant", "BipolarQuant", "Trunc", "IntQuant")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
# Ops whose output lies on their input's grid: no quantizer of their own.
GRID_PRESERVING_OPS = ("MaxPool", "GlobalMaxPool", "Reshape", "Flatten", "Transpose", "Identity", "Squeeze", "Unsqueeze")
# Elementwise ops that continue a layer: its quantizer goes after them (bias, scale, activation).
CONTINUATION_OPS = ("Add", "Sub", "Mul", "Div", "BatchNormalization")
ACTIVATION_OPS = ("Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "Elu", "Selu", "Softplus", "PRelu")
UNQUANTIZED_OUTPUT_OPS = ("Softmax", "LogSoftmax")  # probabilities: hls4ml computes them with tables
FLOAT32_EXACT_LEVELS = 2**24  # float32 holds every integer multiple of a power of two up to 2^24 LSBs
FLOAT32_SIGNIFICAND_BITS = 24  # IEEE 754 binary32: 23 stored bits and the implicit one
MIN_SLOPE_BITS = 3  # a LeakyRelu/PRelu slope rounded to fewer significant bits would change the model too much
ROUNDING = "ROUND"
MIN_IR_VERSION = 7
ROUNDING_NOTE = "ROUND: half to even (ap_fixed AP_RND_CONV)"


def _dyadic(values: np.ndarray, sig_bits: int) -> np.ndarray:
    """Each value rounded (half to even) to ``sig_bits`` significant bits: m * 2^e with |m| < 2^sig_bits."""
    values = np.asarray(values, dtype=np.float64)
    magnitude = np.where(values == 0, 1.0, np.abs(values))
    step = np.exp2(np.floor(np.log2(magnitude)) - sig_bits + 1)
    return np.where(values == 0, 0.0, np.round(values / step) * step)


def _exponent(bound: float, levels: int) -> int:
    """Smallest ``e`` with ``levels * 2^e >= bound`` (0 for an all-zero tensor)."""
    if not bound > 0 or not math.isfinite(bound):
        return 0
    e = math.ceil(math.log2(bound / levels))
    while levels * 2.0 ** (e - 1) >= bound:  # guard against log2 rounding up across a power of two
        e -= 1
    while levels * 2.0**e < bound:
        e += 1
    return e


def quant_type(bits: int, exponent: int, signed: bool, narrow: bool = False) -> FixedType:
    """The ap_fixed type of ``Quant(scale=2^exponent, bits, signed)``: its LSB is the scale."""
    return FixedType(bits, bits + exponent, signed, "RND_CONV", "SAT_SYM" if narrow else "SAT")


def _quantizers_in(model: ModelWrapper) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZER_OPS + QDQ_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _strip_quantizers(model: ModelWrapper) -> int:
    """Remove every Quant/BipolarQuant/Trunc node, wiring its input straight to its consumers
    (``graph_utils.bypass``; one that copies the graph input straight to the output stays)."""
    return sum(bypass(model, node) for node in list(model.graph.node) if node.op_type in QUANTIZER_OPS)


def _unique(model: ModelWrapper, base: str) -> str:
    taken = {t for n in model.graph.node for t in list(n.input) + list(n.output)}
    taken |= {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def _add_quant(model: ModelWrapper, source: str, output: str, scale: np.ndarray, bits: int, signed: bool, narrow: bool, name: str):
    """A QONNX ``Quant`` node reading ``source`` and writing ``output`` (its constants as initializers)."""
    scale_name = _unique(model, f"{name}_scale")
    model.set_initializer(scale_name, np.asarray(scale, dtype=np.float32))
    zero_name = _unique(model, f"{name}_zeropt")
    model.set_initializer(zero_name, np.asarray(0.0, dtype=np.float32))
    bits_name = _unique(model, f"{name}_bitwidth")
    model.set_initializer(bits_name, np.asarray(float(bits), dtype=np.float32))
    return helper.make_node(
        "Quant",
        [source, scale_name, zero_name, bits_name],
        [output],
        name=name,
        domain=QONNX_DOMAIN,
        signed=int(signed),
        narrow=int(narrow),
        rounding_mode=ROUNDING,
    )


def _channels(model: ModelWrapper, ref: WeightRef) -> int:
    """Output channels of a layer (the length of its weights' output axis)."""
    return int(np.asarray(model.get_initializer(ref.tensor)).shape[ref.out_axis])


def _insert_before(model: ModelWrapper, anchor, node) -> None:
    nodes = list(model.graph.node)
    model.graph.node.insert(nodes.index(anchor) if anchor is not None else 0, node)


def keeps_existing_quantizers(model: ModelWrapper, record, force: bool, method: str, instead: str) -> bool:
    """A model that is already quantized keeps its widths (True: leave it, noted in ``record``);
    with ``force`` its quantizers are removed so the float model underneath is quantized again."""
    found = _quantizers_in(model)
    if not found:
        return False
    listed = ", ".join(f"{n} {op}" for op, n in sorted(found.items()))
    if not force:
        record.changed = False
        record.mode = "unchanged"
        record.notes.append(f"model is already quantized ({listed}): kept its own widths; pass force=true to re-quantize it")
        return True
    if any(op in QDQ_OPS for op in found):
        raise OptionError(f"--quantize {method}: force=true cannot re-quantize a QDQ model", hint="convert it to QONNX first")
    _strip_quantizers(model)
    record.notes.append(f"force=true: removed the model's quantizers ({listed}) and {instead}")
    return False


class FixedPointQuantization(QuantizationPass):
    """Post-training fixed-point quantization with power-of-two scales (see module docstring)."""

    method = "fixed"
    PARAMS = {"bits": 8, "per": "layer", "percentile": None, "act_bits": None, "force": False}

    def __init__(
        self,
        x: np.ndarray | None = None,
        layer_bits: dict[str, int | Sequence[int]] | None = None,
        ranges: dict[str, TensorRange] | None = None,
        **params,
    ) -> None:
        """``layer_bits``: weight width per layer name (or per output channel of it), see the module
        docstring; ``ranges``: calibration ranges of the (BatchNorm-folded) model to reuse instead
        of calibrating again (a search quantizes the same model many times)."""
        super().__init__(x, **params)
        self.layer_bits = {name: np.asarray(bits, dtype=np.int64).reshape(-1) for name, bits in (layer_bits or {}).items()}
        for name, bits in self.layer_bits.items():
            if bits.size == 0 or bits.min() < 2 or bits.max() > 24:
                raise OptionError(f"--quantize {self.method}: widths of layer {name} must be integers from 2 to 24")
        self.ranges = ranges
        self._point_bits: dict[str, int] = {}

    def check_params(self) -> None:
        self.bits = self.int_param("bits", 2, 24)
        self.act_bits = self.int_param("act_bits", 2, 24) or self.bits
        per = str(self.params.get("per", "layer")).lower()
        if per not in ("layer", "channel"):
            raise OptionError(f"--quantize fixed: per={per} must be 'layer' or 'channel'")
        self.per_channel = per == "channel"
        percentile = self.params.get("percentile")
        if percentile is not None and (isinstance(percentile, (bool, str)) or not 0.0 < float(percentile) <= 100.0):
            raise OptionError(f"--quantize fixed: percentile={percentile} must be a number in (0, 100], e.g. 99.99")
        self.percentile = None if percentile is None else float(percentile)
        if not isinstance(self.params.get("force", False), bool):
            raise OptionError(f"--quantize fixed: force={self.params['force']} must be true or false")
        self.force = bool(self.params.get("force", False))

    # -- the pass --------------------------------------------------------------------------------

    def quantize(self, model: ModelWrapper) -> ModelWrapper:
        if keeps_existing_quantizers(model, self.record, self.force, self.method, "quantized the float model underneath"):
            return model
        if self.x is None:
            raise DataError("--quantize fixed needs calibration inputs", hint="pass --data (or let edgec draw random inputs)")
        self.record.mode = "post-training"
        model = self._fold_batchnorm(model)
        ranges = self.ranges if self.ranges is not None else calibrate_ranges(model, self.x, self.percentile)
        layers = prunable_layers(model)
        unknown = sorted(set(self.layer_bits) - {ref.name for ref in layers})
        if unknown:
            raise OptionError(f"--quantize {self.method}: no layer named {', '.join(unknown)}")
        points = self._activation_points(model, ranges)
        self._point_bits = self._widths_of_points(model, layers, points)
        weight_exp = {ref.name: self._quantize_weights(model, ref, ranges[ref.tensor]) for ref in layers}
        act_types = self._quantize_activations(model, points, ranges)
        act_types.update(self._quantize_table_inputs(model, ranges, act_types))
        for ref in layers:
            self._quantize_bias_and_record(model, ref, weight_exp[ref.name], act_types, ranges)
        if not any(op.domain == QONNX_DOMAIN for op in model.model.opset_import):
            model.model.opset_import.append(helper.make_opsetid(QONNX_DOMAIN, 1))
        # Old exports (IR 3) list initializers as graph inputs; once those are gone (edgec's loader
        # removes them) ONNX shape inference only sees initializers' shapes from IR 4 on, and the
        # quantizers' outputs would stay shapeless. Opset 13, which loading upgrades to, is IR 7.
        model.model.ir_version = max(model.model.ir_version, MIN_IR_VERSION)
        model = model.transform(RemoveUnusedTensors())
        return model.transform(InferShapes())

    def _fold_batchnorm(self, model: ModelWrapper) -> ModelWrapper:
        """Fold BatchNorm (also as the Mul/Add exporters write, also behind a Squeeze) into the
        preceding MatMul/Conv so its scale is quantized with the weights."""
        affine_after_squeeze = any(
            n.op_type == "Squeeze" and any(c.op_type in ("Add", "Sub", "Mul", "Div") for c in model.find_consumers(n.output[0]) or [])
            for n in model.graph.node
        )
        if not any(n.op_type == "BatchNormalization" for n in model.graph.node) and not affine_after_squeeze:
            return model
        model = model.transform(InferShapes()).transform(BatchNormToAffine()).transform(HoistAffineAboveSqueeze()).transform(InferShapes())
        model = model.transform(FoldAffineIntoLinear())
        left = [n.name for n in model.graph.node if n.op_type in ("Mul", "Div", "Sub")]
        self.record.notes.append(
            "BatchNorm folded into the preceding layers before quantization" + (f" (affine ops left: {', '.join(left)})" if left else "")
        )
        return model.transform(InferShapes())

    def weight_bits(self, ref: WeightRef, channels: int) -> np.ndarray:
        """The weight width of every output channel of ``ref`` (``bits`` unless ``layer_bits`` says)."""
        bits = self.layer_bits.get(ref.name)
        if bits is None:
            return np.full(channels, self.bits, dtype=np.int64)
        if bits.size == 1:
            return np.full(channels, int(bits[0]), dtype=np.int64)
        if bits.size != channels:
            raise OptionError(f"--quantize {self.method}: layer {ref.name} has {channels} output channels, got {bits.size} widths")
        return bits.copy()

    def _split_widths(self, ref: WeightRef) -> bool:
        bits = self.layer_bits.get(ref.name)
        return bits is not None and bits.size > 1 and bool(np.any(bits != bits[0]))

    def _widths_of_points(self, model: ModelWrapper, layers: list[WeightRef], points: list[str]) -> dict[str, int]:
        """Width of every activation quantizer: ``act_bits``, or with ``layer_bits`` the widest
        weight width of the layers reading it (through grid-preserving ops)."""
        widths = {point: self.act_bits for point in points}
        if not self.layer_bits:
            return widths
        by_node = {id(ref.node): ref for ref in layers}
        for point in points:
            readers, frontier = [], [point]
            while frontier:
                tensor = frontier.pop()
                for consumer in model.find_consumers(tensor) or []:
                    if consumer.op_type in GRID_PRESERVING_OPS and consumer.input[0] == tensor:
                        frontier.append(consumer.output[0])
                    elif id(consumer) in by_node and consumer.input[0] == tensor:
                        readers.append(by_node[id(consumer)])
            if readers:
                widths[point] = max(int(self.weight_bits(ref, _channels(model, ref)).max()) for ref in readers)
        return widths

    def _quantize_weights(self, model: ModelWrapper, ref: WeightRef, rng: TensorRange) -> np.ndarray:
        """Put a narrow-range weight quantizer on ``ref``'s initializer; returns the exponent per
        output channel (equal entries for per-layer scales)."""
        weights = np.asarray(model.get_initializer(ref.tensor), dtype=np.float64)
        channels = weights.shape[ref.out_axis]
        widths = self.weight_bits(ref, channels)
        bits = int(widths.max())
        levels = 2 ** (bits - 1) - 1
        layer_e = _exponent(rng.abs_max, levels)
        if self.per_channel or self._split_widths(ref):
            exps = np.array(
                [
                    _exponent(m, 2 ** (int(b) - 1) - 1) if m > 0 else _exponent(rng.abs_max, 2 ** (int(b) - 1) - 1)
                    for m, b in zip(rng.channel_abs_max, widths, strict=True)
                ],
                dtype=np.int64,
            )
            shape = [1] * weights.ndim
            shape[ref.out_axis] = channels
            scale = np.exp2(exps.astype(np.float64)).reshape(shape)
        else:
            exps = np.full(channels, layer_e, dtype=np.int64)
            scale = np.asarray(2.0**layer_e)
        out = _unique(model, f"{ref.tensor}_quant")
        node = _add_quant(model, ref.tensor, out, scale, bits, True, True, _unique(model, f"{ref.name}_weight_quant"))
        consumers = model.find_consumers(ref.tensor) or []
        for consumer in consumers:
            for i, name in enumerate(consumer.input):
                if name == ref.tensor:
                    consumer.input[i] = out
        _insert_before(model, consumers[0] if consumers else None, node)
        return exps

    def _activation_points(self, model: ModelWrapper, ranges: dict[str, TensorRange]) -> list[str]:
        """The tensors that get an activation quantizer: the graph input and the end of each layer."""
        outputs = {o.name for o in model.graph.output}
        points = [model.graph.input[0].name]
        for node in model.graph.node:
            if node.op_type in GRID_PRESERVING_OPS + UNQUANTIZED_OUTPUT_OPS + QUANTIZER_OPS:
                continue
            for tensor in node.output:
                if tensor not in ranges or ranges[tensor].kind == "weight":
                    continue
                # look through reshapes (tf2onnx's Conv1D is Conv2D between ExpandDims and Squeeze,
                # with its bias after): the layer continues where the next real op does
                after, consumers = tensor, model.find_consumers(tensor) or []
                while (
                    after not in outputs and len(consumers) == 1 and consumers[0].op_type in LAYOUT_OPS and consumers[0].input[0] == after
                ):
                    after = consumers[0].output[0]
                    consumers = model.find_consumers(after) or []
                continues = (
                    after not in outputs
                    and len(consumers) == 1
                    and consumers[0].input[0] == after
                    and (
                        consumers[0].op_type in ACTIVATION_OPS
                        or (
                            consumers[0].op_type in CONTINUATION_OPS
                            and all(model.get_initializer(i) is not None for i in consumers[0].input[1:])
                        )
                    )
                )
                if not continues:
                    points.append(tensor)
        return points

    def _quantize_activations(self, model: ModelWrapper, points: list[str], ranges: dict[str, TensorRange]) -> dict[str, tuple[int, bool]]:
        """Insert the activation quantizers; returns tensor -> (exponent, signed)."""
        chosen: dict[str, tuple[int, bool]] = {}
        in_name = model.graph.input[0].name
        for tensor in points:
            bits = self._point_bits.get(tensor, self.act_bits)
            rng = ranges[tensor]
            signed = rng.min < 0
            top = rng.max if rng.percentile is None else min(rng.max, rng.percentile)
            if signed:
                bottom = -rng.min if rng.percentile is None else min(-rng.min, rng.percentile)
                e = max(_exponent(top, 2 ** (bits - 1) - 1), _exponent(bottom, 2 ** (bits - 1)))
            else:
                e = _exponent(top, 2**bits - 1)
            chosen[tensor] = (e, signed)
            name = _unique(model, f"{tensor}_act_quant")
            if tensor == in_name:
                out = _unique(model, f"{tensor}_quant")
                consumers = model.find_consumers(tensor) or []
                for consumer in consumers:
                    for i, inp in enumerate(consumer.input):
                        if inp == tensor:
                            consumer.input[i] = out
                node = _add_quant(model, tensor, out, np.asarray(2.0**e), bits, signed, False, name)
                _insert_before(model, consumers[0] if consumers else None, node)
            else:  # the producer writes a new float tensor; the quantizer takes over the old name
                producer = model.find_producer(tensor)
                raw = _unique(model, f"{tensor}_float")
                producer.output[list(producer.output).index(tensor)] = raw
                node = _add_quant(model, raw, tensor, np.asarray(2.0**e), bits, signed, False, name)
                model.graph.node.insert(list(model.graph.node).index(producer) + 1, node)
            self.record.quantizers[tensor] = quant_type(bits, e, signed).hls4ml()
        return chosen

    def _quantize_table_inputs(
        self, model: ModelWrapper, ranges: dict[str, TensorRange], act_types: dict[str, tuple[int, bool]]
    ) -> dict[str, tuple[int, bool]]:
        """A quantizer on the grid of the activation's table in front of each Tanh/Sigmoid/ELU
        (hls4ml computes them by table look-up): the look-up is then exact, where a wider input
        would be truncated to a table entry and miss the quantized reference. ``act_types``: the
        activation quantizers already placed (ELU's grid follows the one after it). Returns
        tensor -> (exponent, signed)."""
        chosen: dict[str, tuple[int, bool]] = {}
        for node in list(model.graph.node):
            if not node.input:
                continue
            observed = ranges.get(node.input[0])
            peak = max(abs(observed.min), abs(observed.max)) if observed is not None else 0.0
            after = model.find_consumers(node.output[0]) or [] if node.output else []
            output_exponent = None
            if len(after) == 1 and after[0].op_type == "Quant" and after[0].output[0] in act_types:
                output_exponent = act_types[after[0].output[0]][0]
            grid = table_input_type(node.op_type, peak, output_exponent)
            if grid is None:
                continue
            producer = model.find_producer(node.input[0])
            if producer is not None and producer.op_type in QUANTIZER_OPS:
                continue
            tensor = node.input[0]
            quantized = _unique(model, f"{tensor}_table_grid")
            name = _unique(model, f"{node.name or node.op_type}_input_quant")
            quant = _add_quant(model, tensor, quantized, np.asarray(2.0**-grid.fractional), grid.width, True, False, name)
            node.input[0] = quantized
            _insert_before(model, node, quant)
            chosen[quantized] = (-grid.fractional, True)
            self.record.quantizers[quantized] = quant_type(grid.width, -grid.fractional, True).hls4ml()
            self.record.notes.append(
                f"{node.name or node.op_type}: input quantized to its look-up table's grid "
                f"({grid.width} bits, step 2^{-grid.fractional}) so the table activation is exact"
            )
        return chosen

    # -- biases and the per-layer record ---------------------------------------------------------

    def _input_scale(self, model: ModelWrapper, tensor: str) -> float | None:
        """The power-of-two scale of the activation quantizer ``tensor`` comes from (through
        grid-preserving ops), or None."""
        for _ in range(16):
            producer = model.find_producer(tensor)
            if producer is None:
                return None
            if producer.op_type == "Quant":
                scale = model.get_initializer(producer.input[1])
                return float(np.asarray(scale).reshape(-1)[0]) if scale is not None and np.asarray(scale).size == 1 else None
            if producer.op_type not in GRID_PRESERVING_OPS:
                return None
            tensor = producer.input[0]
        return None

    def _output_point(self, model: ModelWrapper, node, act_types: dict[str, tuple[int, bool]]) -> tuple[str | None, list[str]]:
        """The quantized tensor that ends ``node``'s layer, and the op types on the way to it."""
        tensor, chain = node.output[0], []
        for _ in range(16):
            consumers = model.find_consumers(tensor) or []
            if len(consumers) != 1:
                return None, chain
            nxt = consumers[0]
            if nxt.op_type == "Quant":
                return (nxt.output[0] if nxt.output[0] in act_types else None), chain
            if nxt.op_type not in CONTINUATION_OPS + ACTIVATION_OPS + LAYOUT_OPS:
                return None, chain
            chain.append(nxt.op_type)
            tensor = nxt.output[0]
        return None, chain

    def _bias_slot(self, model: ModelWrapper, node) -> tuple[object, int] | None:
        """(node, input index) of the constant bias the layer adds: Conv/Gemm input 2, or the
        ``Add`` right after a MatMul."""
        if node.op_type in ("Conv", "Gemm"):
            if len(node.input) > 2 and node.input[2] and model.get_initializer(node.input[2]) is not None:
                return node, 2
            return None
        consumers = model.find_consumers(node.output[0]) or []
        if len(consumers) == 1 and consumers[0].op_type == "Add":
            add = consumers[0]
            for i, name in enumerate(add.input):
                if name != node.output[0] and model.get_initializer(name) is not None:
                    return add, i
        return None

    def _quantize_bias_and_record(self, model: ModelWrapper, ref: WeightRef, exps: np.ndarray, act_types: dict, ranges: dict) -> None:
        node = ref.node
        entry: dict = {"op": node.op_type}
        widths = self.weight_bits(ref, exps.size)
        if self.per_channel or self._split_widths(ref):
            entry["weight"] = [quant_type(int(b), int(e), True, True).hls4ml() for b, e in zip(widths, exps, strict=True)]
            entry["weight_integer_bits"] = [int(b + e) for b, e in zip(widths, exps, strict=True)]
        else:
            entry["weight"] = quant_type(int(widths[0]), int(exps[0]), True, True).hls4ml()
            entry["weight_integer_bits"] = int(widths[0] + exps[0])
        if self.layer_bits:
            entry["weight_bits"] = [int(b) for b in widths] if self._split_widths(ref) else int(widths[0])
        s_in = self._input_scale(model, node.input[0])
        in_tensor = self._input_tensor(model, node.input[0])
        entry["input"] = self.record.quantizers.get(in_tensor) if in_tensor else None
        out_tensor, chain = self._output_point(model, node, act_types)
        if out_tensor is not None:
            e, signed = act_types[out_tensor]
            act_bits = self._point_bits.get(out_tensor, self.act_bits)
            entry["activation"] = quant_type(act_bits, e, signed).hls4ml()
            entry["activation_integer_bits"] = int(act_bits + e)
            entry["activation_signed"] = bool(signed)
            entry["activation_tensor"] = out_tensor
            entry["activation_chain"] = chain
        else:
            entry["activation"] = None
            self.record.notes.append(f"{ref.name}: output feeds no quantizer directly (its values stay float until the next one)")
        entry["rounding"] = ROUNDING_NOTE
        entry["saturation"] = {"weight": "SAT_SYM (narrow range, symmetric)", "activation": "SAT"}
        grid = None
        gemm_scaled = node.op_type == "Gemm" and (float(attr(node, "alpha", 1.0)) != 1.0 or float(attr(node, "beta", 1.0)) != 1.0)
        if s_in is not None and not gemm_scaled:
            grid = s_in * np.exp2(exps.astype(np.float64))  # per output channel
        slot = self._bias_slot(model, node)
        if slot is not None and grid is not None:
            entry["bias"] = self._round_bias(model, ref, slot, grid)
        elif slot is not None:
            entry["bias"] = None
            self.record.notes.append(
                f"{ref.name}: bias kept in float (the layer input has no power-of-two quantizer, or Gemm alpha/beta != 1)"
            )
        if grid is not None:
            acc = ranges.get(accumulator_name(node))
            if acc is not None:
                lsb = float(grid.min())
                levels = acc.abs_max / lsb
                acc_bits = max(2, math.ceil(math.log2(levels + 1)) + 1) if levels > 0 else 2
                entry["accumulator"] = FixedType(acc_bits, acc_bits + int(round(math.log2(lsb))), True).hls4ml()
                entry["accumulator_note"] = "observed calibration range on the accumulator grid s_in * s_w"
                if levels >= FLOAT32_EXACT_LEVELS:
                    self.record.notes.append(
                        f"{ref.name}: accumulator reaches {levels:.3g} LSBs (>= 2^24): the float32 reference rounds its sums, "
                        "so it is not bit-exact against fixed point there"
                    )
                self._exact_slopes(model, node, levels)
        self.record.layers[ref.name] = entry

    def _exact_slopes(self, model: ModelWrapper, node, levels: float) -> None:
        """Round the slope of a LeakyRelu/PRelu on ``node``'s way to its quantizer to a dyadic
        number short enough that ``slope * x`` is exact in float32 for every accumulator value x
        (``levels`` LSBs, with one bit of margin): the reference then rounds the product once, at
        the quantizer, as the fixed-point design does. A float slope such as 0.3 would make
        onnxruntime round the product to 24 bits first and land on the quantizer's ties."""
        x_bits = math.ceil(math.log2(2.0 * levels + 1.0)) if levels > 0 else 1
        sig_bits = min(self.bits, FLOAT32_SIGNIFICAND_BITS - x_bits)
        tensor = node.output[0]
        for _ in range(16):
            consumers = model.find_consumers(tensor) or []
            if len(consumers) != 1 or consumers[0].op_type not in CONTINUATION_OPS + ACTIVATION_OPS + LAYOUT_OPS:
                return
            nxt = consumers[0]
            tensor = nxt.output[0]
            if nxt.op_type not in ("LeakyRelu", "PRelu"):
                continue
            name = nxt.name or nxt.op_type
            if sig_bits < MIN_SLOPE_BITS:
                self.record.notes.append(
                    f"{name}: slope kept (the accumulator needs {x_bits} of float32's 24 bits): its product is rounded twice by the reference"
                )
                return
            if nxt.op_type == "LeakyRelu":
                alpha = float(attr(nxt, "alpha", 0.01))
                rounded = float(_dyadic(np.asarray([alpha]), sig_bits)[0])
                if rounded != alpha:
                    for a in nxt.attribute:
                        if a.name == "alpha":
                            a.f = rounded
                            break
                    else:
                        nxt.attribute.append(helper.make_attribute("alpha", rounded))
                    self.record.notes.append(f"{name}: slope {alpha:.6g} -> {rounded:.6g} ({sig_bits} significant bits, exact in float32)")
            elif len(nxt.input) > 1 and model.get_initializer(nxt.input[1]) is not None:
                slopes = model.get_initializer(nxt.input[1])
                rounded = _dyadic(slopes, sig_bits).astype(slopes.dtype)
                if not np.array_equal(rounded, slopes):
                    model.set_initializer(nxt.input[1], rounded)
                    change = float(np.max(np.abs(rounded - slopes)))
                    self.record.notes.append(
                        f"{name}: slopes rounded to {sig_bits} significant bits (exact in float32; largest change {change:.3g})"
                    )
            return

    def _input_tensor(self, model: ModelWrapper, tensor: str) -> str | None:
        """The record key of the activation quantizer a layer input comes from (through grid-preserving ops)."""
        for _ in range(16):
            producer = model.find_producer(tensor)
            if producer is None:
                return None
            if producer.op_type == "Quant":  # the graph input's quantizer is recorded under the input's name
                for key in (producer.output[0], producer.input[0]):
                    if key in self.record.quantizers:
                        return key
                return None
            if producer.op_type not in GRID_PRESERVING_OPS:
                return None
            tensor = producer.input[0]
        return None

    def _round_bias(self, model: ModelWrapper, ref: WeightRef, slot: tuple, grid: np.ndarray) -> str | None:
        holder, index = slot
        name = holder.input[index]
        bias = np.asarray(model.get_initializer(name), dtype=np.float64)
        channels = grid.size
        if bias.size == 1:
            if not np.all(grid == grid[0]):
                self.record.notes.append(f"{ref.name}: scalar bias with per-channel grids kept in float")
                return None
            bias_grid = np.asarray(grid[0])
        elif bias.shape[-1] == channels and bias.size == channels:
            bias_grid = grid.reshape(bias.shape)
        else:
            self.record.notes.append(f"{ref.name}: bias of shape {list(bias.shape)} kept in float")
            return None
        levels = np.round(bias / bias_grid)  # half to even
        rounded = levels * bias_grid
        if np.any(np.abs(levels) >= FLOAT32_EXACT_LEVELS):
            self.record.notes.append(f"{ref.name}: bias needs more than 24 bits on the accumulator grid; float32 keeps it rounded")
        new_name = _unique(model, f"{name}_quant")
        model.set_initializer(new_name, rounded.astype(np.float32))
        holder.input[index] = new_name
        bias_t = exact_type(rounded.astype(np.float32), 64)
        return bias_t.hls4ml() if bias_t is not None else None
