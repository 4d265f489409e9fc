"""Choose the hls4ml configuration from the model, the calibration data and the target.

Precisions: quantizers in the model (QONNX Quant/BipolarQuant) fix their own types; weights that are
exact on a power-of-two grid get the narrowest exact type; everything else gets a type whose
integer part covers the range the calibration data actually produce. Strategy and ReuseFactor are
chosen per layer so the estimated design fits the target.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import qonnx.core.onnx_exec as oxe
from qonnx.core.modelwrapper import ModelWrapper

from edgec.cost.design import estimate_design
from edgec.cost.device import device_for
from edgec.cost.layer import plan_cost_layers, quantizer_type, weight_codes
from edgec.cost.resources import DSP_PORTS
from edgec.errors import TargetFitError
from edgec.fixed_point import FixedType, exact_type, range_type
from edgec.passes.exact_requant import EXACT_MARK
from edgec.targets import Target

# Fraction of each FPGA resource a generated design may use: the rest is left for the AXI/DMA
# shell and routing (Vivado commonly fails to close timing above ~80% LUT use; UG949 UltraFast
# Design Methodology, "Utilization" guidelines recommend staying below 70-80% LUT).
UTILIZATION_CAP = 0.8
MAX_CALIBRATION_SAMPLES = 128


@dataclass
class LayerChoice:
    """What edgec chose for one MatMul/Conv layer, and why."""

    node: str
    op: str
    n_in: int
    n_out: int
    multiplies: int
    weights: int
    weight_t: FixedType
    input_bits: int
    strategy: str = "Latency"
    reuse_factor: int = 1
    reason: str = "fits at full parallelism"
    sparsity: float = 0.0  # fraction of zero weights (after quantization to weight_t)
    depthwise: bool = False  # a grouped Conv with one input channel per group (hls4ml's DepthwiseConv)
    # The layer's products are bound to DSP slices (Vitis BIND_OP impl=dsp / Vivado HLS RESOURCE
    # core=DSP48) instead of being left to HLS, which builds variable products narrower than ~10
    # bits, and constant products with few signed digits, in LUTs.
    products_on_dsp: bool = False

    @property
    def can_bind_products(self) -> bool:
        """Whether binding the products to DSP slices applies: hls4ml gives the layer its plain
        ``mult`` product, which it does for weights of 3 bits and more (narrower ones get the
        binary/ternary products, built from XNORs and muxes)."""
        return self.weight_t.width >= 3

    @property
    def serial_strategy(self) -> str:
        """The strategy a reuse factor above 1 uses: Resource, except for depthwise convolutions, whose
        Resource form hls4ml 1.3.0 computes wrongly in io_stream C simulation (docs/hls4ml-notes.md),
        so they are serialized under the Latency strategy."""
        return "Latency" if self.depthwise else "Resource"


@dataclass
class LoweringPlan:
    """Everything the hls4ml backend needs to know beyond the model itself."""

    io_type: str
    width: int
    tensor_max_abs: dict[str, float]
    layers: dict[str, LayerChoice]
    notes: list[str] = field(default_factory=list)
    precision: FixedType | None = None  # one user-given type for everything (overrides the rest)

    def tensor_type(self, tensor: str) -> FixedType | None:
        if self.precision is not None:
            return self.precision
        if tensor not in self.tensor_max_abs:
            return None
        # One bit of headroom above the calibrated range: unseen inputs saturate less often.
        return range_type(self.tensor_max_abs[tensor], self.width, headroom=2.0)


def calibrate(model: ModelWrapper, inputs: np.ndarray) -> dict[str, float]:
    """Largest absolute value of every tensor over (up to 128 of) the calibration inputs."""
    from edgec.verify import batched_copy

    name = model.graph.input[0].name
    shape = list(model.get_tensor_shape(name)[1:])
    # the canonical input may be a reshaped view of the user's (same values, same order)
    samples = np.asarray(inputs[:MAX_CALIBRATION_SAMPLES], dtype=np.float32).reshape(-1, *shape)
    ranges: dict[str, float] = {}

    def record(ctx: dict) -> None:
        for tensor, value in ctx.items():
            if value is None or model.get_initializer(tensor) is not None:
                continue
            arr = np.asarray(value, dtype=np.float64)
            if arr.size:
                ranges[tensor] = max(ranges.get(tensor, 0.0), float(np.max(np.abs(arr))))

    try:  # one batched run (much faster on large inputs); graphs with batch-1 constants run per sample
        record(oxe.execute_onnx(batched_copy(model, samples.shape[0]), {name: samples}, return_full_exec_context=True))
        return ranges
    except Exception:
        ranges.clear()
    for sample in samples:
        record(oxe.execute_onnx(model, {name: sample[None]}, return_full_exec_context=True))
    return ranges


def _exact_weight_limit(node, plan_width: int, target: Target) -> int:
    """Widest exact weight type allowed: a layer the exact requantization pass produced may use the
    DSP's wide port (its per-channel scale was folded into the weights), others the plan width."""
    if EXACT_MARK in (node.doc_string or ""):
        return max(plan_width, DSP_PORTS.get(target.dsp_kind, DSP_PORTS["DSP48E1"])[0])
    return plan_width


def _result_tensors(model: ModelWrapper, node) -> list[str]:
    """The layer's output and, when a bias Add follows alone, the Add's output (hls4ml fuses it)."""
    tensors = [node.output[0]]
    consumers = model.find_consumers(node.output[0]) or []
    if len(consumers) == 1 and consumers[0].op_type == "Add":
        tensors.append(consumers[0].output[0])
    return tensors


def _input_quantizer_type(model: ModelWrapper, tensor: str) -> FixedType | None:
    """The quantizer type of a layer input, looking through ops that only move or select values
    (reshapes, transposes, max pooling keep every value on the quantizer's grid)."""
    producer = model.find_producer(tensor)
    while producer is not None and producer.op_type in ("Reshape", "Flatten", "Transpose", "MaxPool", "Identity", "Squeeze", "Unsqueeze"):
        tensor = producer.input[0]
        producer = model.find_producer(tensor)
    return quantizer_type(model, tensor)


def _requantized(model: ModelWrapper, node) -> bool:
    """Whether the layer's result goes straight into a quantizer (whose thresholds make it exact)."""
    last = _result_tensors(model, node)[-1]
    return any(c.op_type in ("Quant", "BipolarQuant") for c in model.find_consumers(last) or [])


def _result_max_abs(model: ModelWrapper, node, ranges: dict[str, float]) -> float:
    return max((ranges.get(t, 0.0) for t in _result_tensors(model, node)), default=0.0)


def _output_exact_weight_type(
    weight: np.ndarray, n_in: int, input_t: FixedType, result_max_abs: float, plan_width: int, target: Target
) -> FixedType | None:
    """Weights that are not on a power-of-two grid (a float scale folded into integer weights) feeding a
    result no quantizer rounds again (a float model output): give them enough fraction bits that the
    summed rounding error stays within a quarter LSB of the result type, so the C simulation is
    within one LSB of the reference. Bound: sum_i |x_i| |dw_i| <= n_in * max|x| * 2^-(F+1) <= 2^-(f_out+2)
    with max|x| from the input quantizer's type and f_out the result type's fraction bits (the same
    calibrated type apply_types gives it). None when that needs more than the DSP's wide port."""
    result_t = range_type(result_max_abs, plan_width, headroom=2.0)
    input_max = input_t.max_abs
    if input_max == 0:
        return None
    fraction = result_t.fractional + 1 + math.ceil(math.log2(n_in * input_max))
    integer = range_type(float(np.max(np.abs(weight))), 64).integer
    limit = max(plan_width, DSP_PORTS.get(target.dsp_kind, DSP_PORTS["DSP48E1"])[0])
    width = integer + fraction
    if width > limit:
        return None
    return FixedType(width, integer, True, "RND", "SAT")


def _layer_choice(model: ModelWrapper, node, plan_width: int, ranges: dict[str, float], target: Target) -> LayerChoice | None:
    weight = model.get_initializer(node.input[1])
    if weight is None:
        return None
    if node.op_type == "MatMul":
        n_in, n_out = weight.shape[0], weight.shape[1]
        multiplies = n_in * n_out
    else:  # Conv, OIHW: one output pixel needs C_in/group * kh * kw * C_out products
        n_out = weight.shape[0]
        n_in = int(np.prod(weight.shape[1:]))
        multiplies = n_in * n_out
    quantized_input = _input_quantizer_type(model, node.input[0])
    weight_t = exact_type(weight, max_width=_exact_weight_limit(node, plan_width, target))
    if weight_t is None and quantized_input is not None and not _requantized(model, node):
        weight_t = _output_exact_weight_type(weight, n_in, quantized_input, _result_max_abs(model, node, ranges), plan_width, target)
    weight_t = weight_t or range_type(float(np.max(np.abs(weight))), plan_width)
    in_bits = quantized_input.width if quantized_input is not None else plan_width

    sparsity = float(np.mean(weight_codes(weight, weight_t) == 0)) if weight.size else 0.0
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return LayerChoice(
        # one input channel per group, in OIHW or channels-last OHWI weights alike: C_in/group * kernel == kernel
        depthwise=node.op_type == "Conv"
        and group > 1
        and n_in == int(np.prod([a.ints for a in node.attribute if a.name == "kernel_shape"][0] or [1])),
        sparsity=sparsity,
        node=node.name,
        op="Dense" if node.op_type == "MatMul" else "Conv",
        n_in=n_in,
        n_out=n_out,
        multiplies=multiplies,
        weights=int(weight.size),
        weight_t=weight_t,
        input_bits=in_bits,
    )


@functools.cache
def _valid_reuse_factors(n_in: int, n_out: int) -> tuple[int, ...]:
    """Reuse factors hls4ml accepts for an n_in x n_out kernel (hls4ml's own rule)."""
    from hls4ml.backends import get_backend

    return tuple(sorted(set(get_backend("Vitis").get_valid_reuse_factors(n_in, n_out))))


def _design_resources(cost_layers: list, plan: LoweringPlan, device) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Total resources of the design the plan describes, and each Dense/Conv layer's (full cost
    model). ``cost_layers`` are the plan's layers, re-configured here with the plan's choices."""
    for layer in cost_layers:
        choice = plan.layers.get(layer.name)
        if choice is not None:
            layer.strategy, layer.reuse_factor = choice.strategy.lower(), choice.reuse_factor
    design = estimate_design(cost_layers, device)
    per_layer = {cost.layer.name: cost.resources.as_dict() for cost in design.layers if cost.layer.name in plan.layers}
    return design.resources(), per_layer


def fit_to_target(model: ModelWrapper, plan: LoweringPlan, target: Target, backend: str | None = None) -> list[str]:
    """Raise reuse factors (switching to the Resource strategy) until the design, as the cost model
    of edgec.cost estimates it, uses at most UTILIZATION_CAP of every resource of the target."""
    device = device_for(target, backend=backend)
    budget = {
        "dsp": target.resources.dsp * UTILIZATION_CAP,
        "lut": target.resources.lut * UTILIZATION_CAP,
        "ff": target.resources.ff * UTILIZATION_CAP,
        "bram18": target.resources.bram18 * UTILIZATION_CAP,
    }
    layers = plan.layers
    cost_layers = plan_cost_layers(model, plan, plan.io_type)
    while True:
        totals, per_layer = _design_resources(cost_layers, plan, device)
        over = [k for k in budget if totals[k] > budget[k]]
        if not over:
            return [f"{c.node}: {c.reason}" for c in layers.values() if c.reuse_factor > 1]
        worst = over[0]
        # Relieve the resource that is over: serialize the layer using most of it by one step.
        candidates = sorted(layers.values(), key=lambda c: per_layer.get(c.node, {}).get(worst, 0), reverse=True)
        moved = False
        for choice in candidates:
            if per_layer.get(choice.node, {}).get(worst, 0) == 0:
                break
            valid = [r for r in _valid_reuse_factors(choice.n_in, choice.n_out) if r > choice.reuse_factor]
            if not valid:
                continue
            # jump to the reuse factor that would bring the total within budget if this layer's use
            # fell in proportion (at least one step), instead of walking every valid factor
            used = per_layer[choice.node][worst]
            excess = totals[worst] - budget[worst]
            wanted = choice.reuse_factor * used / max(used - excess, used / 2, 1e-9)  # at most double per step
            choice.reuse_factor = next((r for r in valid if r >= wanted), valid[-1]) if wanted > valid[0] else valid[0]
            choice.strategy = choice.serial_strategy
            choice.reason = (
                f"{worst.upper()} over {int(UTILIZATION_CAP * 100)}% of {target.name} at full parallelism; "
                f"{choice.strategy} strategy, reuse factor {choice.reuse_factor}"
            )
            moved = True
            break
        if not moved:
            largest = max(layers.values(), key=lambda c: c.weights) if layers else None
            where = f" (largest layer: {largest.node}, {largest.weights} weights)" if largest else ""
            raise TargetFitError(
                f"model does not fit {target.name} even at the largest reuse factor: estimated "
                f"{worst.upper()} {totals[worst]:.0f} > {budget[worst]:.0f} available to the design{where}",
                hint="prune or quantize the model, or pick a larger target (`edgec targets`)",
            )


def nearest_valid_reuse_factor(choice: LayerChoice, wanted: int) -> int:
    """The smallest reuse factor hls4ml accepts for the layer that is at least ``wanted``."""
    valid = _valid_reuse_factors(choice.n_in, choice.n_out)
    above = [r for r in valid if r >= wanted]
    return above[0] if above else valid[-1]


def neighbouring_reuse_factors(choice: LayerChoice) -> tuple[int | None, int | None]:
    """The next smaller and next larger reuse factor hls4ml accepts for the layer (None at the ends)."""
    valid = _valid_reuse_factors(choice.n_in, choice.n_out)
    below = [r for r in valid if r < choice.reuse_factor]
    above = [r for r in valid if r > choice.reuse_factor]
    return (below[-1] if below else None), (above[0] if above else None)


def plan_lowering(
    model: ModelWrapper,
    calibration_inputs: np.ndarray,
    target: Target,
    io_type: str | None = None,
    width: int = 16,
    strategy: str | None = None,
    reuse_factor: int | None = None,
    precision: FixedType | None = None,
    backend: str | None = None,
) -> LoweringPlan:
    """Calibrate ranges, choose per-layer types, strategy and reuse factor for ``target``.

    ``strategy``, ``reuse_factor`` and ``precision`` override edgec's choices for every layer
    (to reproduce a published hls4ml design): ``precision`` is then every tensor's, weight's and
    accumulator's type, as hls4ml's ``default_precision`` would make it.
    """
    ranges = calibrate(model, calibration_inputs)
    has_conv = any(n.op_type == "Conv" for n in model.graph.node)
    chosen_io = io_type or ("io_stream" if has_conv else "io_parallel")
    layers = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Conv"):
            choice = _layer_choice(model, node, width, ranges, target)
            if choice is not None:
                if precision is not None:
                    choice.weight_t = precision
                    choice.input_bits = precision.width
                layers[node.name] = choice
    notes: list[str] = []
    plan = LoweringPlan(
        io_type=chosen_io,
        width=precision.width if precision else width,
        tensor_max_abs=ranges,
        layers=layers,
        notes=notes,
        precision=precision,
    )
    if strategy is None and reuse_factor is None:
        notes.extend(fit_to_target(model, plan, target, backend=backend))
    else:
        for choice in layers.values():
            choice.strategy = (strategy or (choice.serial_strategy if (reuse_factor or 1) > 1 else "Latency")).capitalize()
            if choice.depthwise and choice.strategy == "Resource":
                choice.strategy = "Latency"
                notes.append(
                    f"{choice.node}: depthwise convolution kept at the Latency strategy (hls4ml 1.3.0's Resource form is wrong in io_stream)"
                )
            wanted = reuse_factor or 1
            choice.reuse_factor = nearest_valid_reuse_factor(choice, wanted)
            choice.reason = f"set by the user: {choice.strategy} strategy, reuse factor {choice.reuse_factor}"
            if choice.reuse_factor != wanted:
                notes.append(
                    f"{choice.node}: reuse factor {wanted} is not valid for a {choice.n_in}x{choice.n_out} kernel in hls4ml; using {choice.reuse_factor}"
                )
    if io_type is None and has_conv:
        notes.append("io_stream chosen for a convolutional model (line-buffer convolutions)")
    if precision is not None:
        notes.append(f"every type set to {precision.hls4ml()} by the user (no calibrated or exact types)")
    return plan
