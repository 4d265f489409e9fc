"""Mixed-precision post-training quantization (``--quantize mixed:max_drop=P[,...]``).

Chooses a fixed-point width per layer (``granularity=layer``) or per group of output channels of
each layer (``granularity=kernel``, the kernel-wise widths AutoQ searched: Lou et al., "AutoQ:
Automated Kernel-Wise Neural Network Quantization", ICLR 2020) that minimizes a hardware cost from
edgec's cost model (``objective=luts|dsp|latency|energy``) while the accuracy on the data (argmax
agreement with the float model when there are no labels) stays within ``max_drop`` points of the
float model's.

**Quantization.** Every candidate is a :class:`~edgec.passes.quant.fixed.FixedPointQuantization`
model with power-of-two scales (so it builds bit-exactly), its weight widths set per layer or per
output channel (``layer_bits``). Widths apply to weights and activations: each activation quantizer
takes the widest width of the layers that read it, so a layer's products are ``w_l x a_l`` bits
with both at the layer's width (AutoQ varies both too); the graph input follows the first layer.
The quantizers no layer reads (the logits) are one more unit of the search, ``output``. So the
point with every unit at ``N`` bits is exactly ``fixed:bits=N`` (same model, byte for byte; with
``granularity=kernel``, ``fixed:bits=N,per=channel``). Scales are per layer (``per=layer``,
default, like ``fixed:bits=N``) or per channel; with ``granularity=kernel`` they are per channel
(each kernel's scale fits its own width).

**Kernel groups.** With ``granularity=kernel`` each layer's output channels are sorted by their
weight range (``max |w|``) and split into ``groups`` groups of neighbouring ranges; a group is the
unit of the search. qonnx 1.0's ``Quant`` takes only a scalar bit width (a per-channel bit-width
tensor fails in ``int_quant``), so a layer's weight quantizer has the width of its widest kernel and
per-channel scales chosen for each kernel's own width: the levels of a ``b``-bit kernel never exceed
``2^(b-1) - 1``, so the computation is exactly the ``b``-bit one (see fixed.py). hls4ml types the
layer's weights with the exact type of the folded weights, which covers the widest kernel. The cost
model sizes every constant product by its own constant (canonical signed digits: edgec.cost.resources),
so LUTs and DSPs see each kernel's width; the terms that use the layer's single declared weight width
(``LayerConfig.weight_bits``: energy per DSP product, accumulator and pipeline-register widths,
weights in memory at ReuseFactor > 1) are costed at the widest kernel's width, an upper bound.

**Cost.** A point is costed with :func:`edgec.pipeline.estimate.estimate` on the build's target and design
options, so the configurator picks strategy and reuse factor for every candidate as the build will
(this makes the cost non-monotone in the widths: a narrower design can fit at a smaller reuse
factor and use more LUTs, or a wider one need a larger reuse factor and take longer). Accuracy is
measured first (a fraction of the cost of an estimate); a point over ``max_drop`` is not costed,
except the uniform ones. The search calibrates the estimate on ``COST_SAMPLES`` inputs (types come
from the quantizers); the chosen point and the best feasible uniform one are costed again on the
build's own calibration data, and those are the figures reported (the record says whether they
agree with the search's).

**Search.** Points are ranked by the objective, then a secondary cost (``SECONDARY``), then higher
accuracy; a point is feasible when its drop is at most ``max_drop``.

1. *uniform*: every candidate width on every unit (always costed). The result is never worse on the
   ranking than the best feasible uniform point: that is where the search starts.
2. *greedy*: from the widest point, sensitivity-guided descent: repeatedly the lowering of one unit
   with the largest cost saving per accuracy point lost that stays feasible (scores re-measured
   lazily; before stopping every remaining move is re-measured).
3. *ascent*: from the widest infeasible uniform point, raise the unit that recovers the most
   accuracy until the point is feasible.
4. *local*: first-improvement local search from the best uniform point and from the ends of 2 and 3.
   Moves (in a seeded order): lower one unit a step, lower one and raise another (at most
   ``MAX_PAIR_MOVES`` pairs a step when there are more), raise one (under the non-monotone
   configurator raising a unit can lower the cost).
5. *restart* (``restarts`` times): perturb the best point so far (a seeded random set of units moved
   one or two steps), repair it by ascent when it is infeasible, and search locally from there.

Every evaluation prints a progress line (stderr by default). ``search_seconds`` bounds the search
(the best feasible point so far is returned and the record says so). The search is deterministic
for a given ``seed`` when it ends before the time budget.

The record (report.json ``passes[]``) holds a ``search`` section: the units, the chosen point, the
uniform points, the greedy path, the local searches (start and end), every explored point (widths,
accuracy, objective when costed) and the costed points on the accuracy/cost Pareto frontier (with
LUT/DSP/latency/energy).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper

from edgec.cost.coster import DesignCosting, default_coster
from edgec.errors import DataError, OptionError
from edgec.passes.prune.common import MAX_EVAL_SAMPLES, agreeing_samples, model_outputs, prunable_layers
from edgec.passes.quant.calibrate import calibrate_ranges
from edgec.passes.quant.fixed import FixedPointQuantization, keeps_existing_quantizers
from edgec.passes.quant.registry import QuantizationPass

OBJECTIVES = ("luts", "dsp", "latency", "energy")
# Ties on the objective are broken by this cost (then by accuracy): the cheaper design of two equal ones.
SECONDARY = {"luts": "energy", "dsp": "luts", "latency": "energy", "energy": "luts"}
GRANULARITIES = ("layer", "kernel")
COST_SAMPLES = 8  # calibration samples the search's estimates see: types come from the quantizers, so a few suffice
TIE_WEIGHT = 1e-3  # secondary cost's weight in a greedy move's saving (breaks ties of the objective)
MAX_PAIR_MOVES = 48  # lower-one-raise-another moves tried per local-search step (a seeded sample when there are more)
OUTPUT_LABEL = "output"
EPSILON = 1e-9


@dataclass(frozen=True)
class Unit:
    """One searched width: a whole layer, a group of a layer's output channels, or the output quantizers."""

    label: str
    layer: str | None  # None for the output unit
    channels: tuple[int, ...]  # output channels it covers (all of the layer's at layer granularity)
    tensors: tuple[str, ...] = ()  # the output unit's quantized tensors

    def as_dict(self) -> dict:
        if self.layer is None:
            return {"label": self.label, "kind": "output", "tensors": list(self.tensors)}
        return {
            "label": self.label,
            "kind": "layer" if self.label == self.layer else "kernels",
            "layer": self.layer,
            "channels": list(self.channels),
        }


@dataclass
class Point:
    """One evaluated width assignment (costs are None until it is costed)."""

    widths: tuple[int, ...]  # bits per unit
    accuracy: float
    drop: float  # points below the float model
    feasible: bool
    index: int  # evaluation number
    phase: str  # the search phase that evaluated it first
    costs: dict | None = None  # lut, dsp, ff, bram18, latency_us, energy_uj
    objective: float | None = None
    secondary: float | None = None

    @property
    def costed(self) -> bool:
        return self.costs is not None

    def rank(self) -> tuple[float, float, float]:
        """The search's order (lower is better): objective, secondary cost, then higher accuracy."""
        assert self.objective is not None and self.secondary is not None
        return (self.objective, self.secondary, -self.accuracy)

    def as_dict(self, units: list[Unit]) -> dict:
        out = {
            "eval": self.index,
            "phase": self.phase,
            "widths": {unit.label: int(bits) for unit, bits in zip(units, self.widths, strict=True)},
            "accuracy": round(self.accuracy, 6),
            "drop_points": round(self.drop, 4),
            "feasible": self.feasible,
        }
        if self.costs is not None:
            out["objective"] = round(float(self.objective), 9)
            out.update(self.costs)
        return out

    def compact(self) -> list:
        """``[eval, phase, [widths], accuracy, objective or None, feasible]`` (the explored set)."""
        objective = None if self.objective is None else round(float(self.objective), 9)
        return [self.index, self.phase, [int(b) for b in self.widths], round(self.accuracy, 6), objective, self.feasible]


@dataclass
class _Descent:
    """One local search: where it started and where it ended."""

    phase: str
    start: Point
    end: Point | None = None
    steps: list[Point] = field(default_factory=list)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _cost_value(costs: dict, name: str) -> float:
    key = {"luts": "lut", "dsp": "dsp", "latency": "latency_us", "energy": "energy_uj"}[name]
    return float(costs[key])


def pareto_frontier(points: list[Point]) -> list[Point]:
    """Costed points no other costed point beats on both accuracy (higher) and objective (lower), by objective."""
    ordered = sorted((p for p in points if p.costed), key=lambda p: (p.objective, -p.accuracy, p.index))
    frontier: list[Point] = []
    best_accuracy = -math.inf
    for point in ordered:
        if point.accuracy > best_accuracy:
            frontier.append(point)
            best_accuracy = point.accuracy
    return frontier


class _OutOfTime(Exception):
    """The time budget ran out (internal: unwinds the search)."""


class MixedPrecision(QuantizationPass):
    """Per-layer or per-kernel-group fixed-point widths under an accuracy budget (module docstring)."""

    method = "mixed"
    PARAMS = {
        "max_drop": 1.0,
        "objective": "luts",
        "granularity": "layer",
        "bits": [8, 7, 6, 5, 4, 3, 2],
        "groups": 4,
        "per": "layer",
        "target": "pynq-z2",
        "seed": 0,
        "restarts": 4,
        "search_seconds": 120.0,
        "force": False,
    }

    def __init__(
        self,
        x: np.ndarray | None = None,
        *,
        progress: Callable[[str], None] | None = _stderr,
        coster: DesignCosting | None = None,
        **params,
    ) -> None:
        """``progress`` receives one line per evaluation (stderr by default; None: silent).
        ``coster`` is the design the build will make (``edgec.cost.coster.DesignCosting``: its
        target, options, width and placement), so candidates are costed as the build will cost the
        result; the pipeline hands it over (default: a build for ``target`` with default options)."""
        for name, ok in (
            ("progress", progress is None or callable(progress)),
            ("coster", coster is None or (callable(getattr(coster, "totals", None)) and hasattr(coster, "target"))),
        ):
            if not ok:  # a spec key that is not a parameter lands here: say so as with_defaults does
                raise OptionError(f"--quantize mixed: unknown parameter(s) {name}", hint=f"mixed takes: {', '.join(self.PARAMS)}")
        super().__init__(x, **params)
        self.progress = progress
        self.coster = coster

    def check_params(self) -> None:
        p = self.params
        try:
            self.max_drop = float(p["max_drop"])
        except (TypeError, ValueError):
            raise OptionError(f"--quantize mixed: max_drop={p['max_drop']} must be a number of accuracy points, e.g. 1") from None
        if isinstance(p["max_drop"], bool) or not 0.0 <= self.max_drop <= 100.0:
            raise OptionError(f"--quantize mixed: max_drop={p['max_drop']} must be from 0 to 100 (accuracy points)")
        self.objective = str(p["objective"]).lower()
        if self.objective in ("lut", "area"):
            self.objective = "luts"
        if self.objective not in OBJECTIVES:
            raise OptionError(f"--quantize mixed: objective={p['objective']} must be one of {', '.join(OBJECTIVES)}")
        self.granularity = str(p["granularity"]).lower()
        if self.granularity not in GRANULARITIES:
            raise OptionError(f"--quantize mixed: granularity={p['granularity']} must be 'layer' or 'kernel'")
        bits = p["bits"]
        values = bits if isinstance(bits, (list, tuple)) else str(bits).replace("/", " ").replace(",", " ").split()
        try:
            candidates = sorted({int(v) for v in values if not isinstance(v, bool) and float(v) == int(v)}, reverse=True)
        except (TypeError, ValueError):
            candidates = []
        if not candidates or len(candidates) != len(values) or candidates[-1] < 2 or candidates[0] > 16:
            raise OptionError(f"--quantize mixed: bits={bits} must list distinct integer widths from 2 to 16, e.g. bits=8,6,4")
        self.candidates = candidates
        self.groups = self.int_param("groups", 1, 1024)
        per = str(p["per"]).lower()
        if per not in ("layer", "channel"):
            raise OptionError(f"--quantize mixed: per={per} must be 'layer' or 'channel'")
        self.per = "channel" if self.granularity == "kernel" else per
        self.seed = self.int_param("seed", 0, 2**32 - 1)
        self.restarts = self.int_param("restarts", 0, 1000)
        try:
            self.search_seconds = float(p["search_seconds"])
        except (TypeError, ValueError):
            self.search_seconds = -1.0
        if isinstance(p["search_seconds"], bool) or not self.search_seconds > 0:
            raise OptionError(f"--quantize mixed: search_seconds={p['search_seconds']} must be a positive number of seconds")
        if not isinstance(p["force"], bool):
            raise OptionError(f"--quantize mixed: force={p['force']} must be true or false")
        from edgec.errors import UnknownTargetError
        from edgec.targets import load_target

        try:
            load_target(str(p["target"]))  # an unknown target fails here, before the search
        except UnknownTargetError as exc:
            raise OptionError(f"--quantize mixed: target={p['target']}: {exc}") from None

    # -- the pass --------------------------------------------------------------------------------

    def quantize(self, model: ModelWrapper) -> ModelWrapper:
        started = time.perf_counter()
        if keeps_existing_quantizers(
            model, self.record, bool(self.params["force"]), self.method, "searched widths for the float model underneath"
        ):
            return model
        if self.x is None:
            raise DataError("--quantize mixed needs data to measure accuracy on", hint="pass --data (or let edgec draw random inputs)")
        self.record.mode = "post-training mixed precision"
        helper_pass = self._fixed_pass(None, self.candidates[0])
        prepared = helper_pass._fold_batchnorm(model)
        self.record.notes.extend(helper_pass.record.notes)
        self._prepared = prepared
        self._ranges = calibrate_ranges(prepared, self.x)
        self._layers = prunable_layers(prepared)
        if not self._layers:
            raise OptionError("--quantize mixed: the model has no MatMul/Conv/Gemm layer to give a width")
        self.units = self._make_units()
        self._x_eval = self.x[:MAX_EVAL_SAMPLES]
        self._y_eval = None if self.y is None else self.y[:MAX_EVAL_SAMPLES]
        self._reference = model_outputs(model, self._x_eval) if self._y_eval is None else None
        self.baseline = self._metric(model)
        self._cache: dict[tuple[int, ...], Point] = {}
        self._points: list[Point] = []
        self._descents: list[_Descent] = []
        self._path: list[Point] = []
        self._rng = np.random.default_rng(self.seed)
        self._deadline = started + self.search_seconds
        self._out_of_time = False
        try:
            self._search()
        except _OutOfTime:
            self._out_of_time = True
        if self._descents and self._descents[-1].end is None:  # cut short by the time budget
            last = self._descents[-1]
            last.end = last.steps[-1] if last.steps else last.start
        uniform = [self._cache[self._uniform(bits)] for bits in self.candidates if self._uniform(bits) in self._cache]
        notes = self.record.notes
        chosen, check = self._choose(uniform)
        if self._out_of_time:
            notes.append(
                f"search_seconds={self.search_seconds:g} reached after {len(self._points)} evaluations: "
                "returned the best feasible point found so far (the search had not finished)"
            )
        final = self._quantized(chosen.widths)
        widest = uniform[0]
        self.record.layers = self._last_fixed.record.layers
        self.record.quantizers = self._last_fixed.record.quantizers
        notes.extend(n for n in self._last_fixed.record.notes if n not in notes)
        summary = ", ".join(f"{u.label}={b}" for u, b in zip(self.units, chosen.widths, strict=True))
        best_uniform = self._best([p for p in uniform if p.feasible])
        versus = (
            f"best feasible uniform: {best_uniform.widths[0]} bit, {best_uniform.objective:g}"
            if best_uniform
            else "no uniform width is feasible"
        )
        notes.append(
            f"chose {summary}: {self.objective} {chosen.objective:g} ({versus}; uniform {self.candidates[0]} bit: {widest.objective:g}), "
            f"{self._metric_name()} {chosen.accuracy:.4f} ({chosen.drop:+.2f} points below float {self.baseline:.4f}) "
            f"after {len(self._points)} evaluations ({sum(p.costed for p in self._points)} costed)"
        )
        notes.append(
            f"costs: edgec.pipeline.estimate on {self.params['target']} (search calibrated on {COST_SAMPLES} samples; the chosen point "
            f"re-costed on the build's calibration data: {'same figures' if check['agrees'] else 'figures differ, reported as re-costed'})"
        )
        if self.granularity == "kernel":
            notes.append(
                "per-kernel widths: one weight quantizer per layer at its widest kernel's width, per-channel scales fitted to each "
                "kernel's width (qonnx Quant takes a scalar bit width); LUT/DSP see each constant, energy per product and "
                "accumulators use the layer's widest width"
            )
        self.record.extra["search"] = {
            "objective": self.objective,
            "secondary": SECONDARY[self.objective],
            "granularity": self.granularity,
            "candidates": list(self.candidates),
            "metric": self._metric_name(),
            "baseline": round(self.baseline, 6),
            "max_drop": self.max_drop,
            "target": str(self.params["target"]),
            "seed": self.seed,
            "units": [u.as_dict() for u in self.units],
            "evaluations": len(self._points),
            "costed": sum(p.costed for p in self._points),
            "seconds": round(time.perf_counter() - started, 3),
            "stopped": "time budget" if self._out_of_time else "converged",
            "chosen": chosen.as_dict(self.units),
            "cost_check": check,
            "uniform": [p.as_dict(self.units) for p in uniform],
            "path": [p.as_dict(self.units) for p in self._path],
            "local_searches": [
                {"phase": d.phase, "start": d.start.as_dict(self.units), "end": d.end.as_dict(self.units), "steps": len(d.steps)}
                for d in self._descents
                if d.end is not None
            ],
            "frontier": [p.as_dict(self.units) for p in pareto_frontier(self._points)],
            "explored_columns": ["eval", "phase", "widths", self._metric_name(), "objective", "feasible"],
            "explored": [p.compact() for p in self._points],
        }
        return final

    def _choose(self, uniform: list[Point]) -> tuple[Point, dict]:
        """The best feasible costed point, its figures re-costed on the build's calibration data
        (the best feasible uniform point too, so the result is never worse than it)."""
        feasible = [p for p in self._points if p.feasible and p.costed]
        if not feasible:
            chosen = uniform[0]
            self.record.notes.append(
                f"no evaluated width assignment keeps the drop within {self.max_drop:g} points "
                f"(all at {self.candidates[0]} bits: {chosen.drop:.2f}): returned the widest"
            )
            feasible = [chosen]
        chosen = self._best(feasible)
        contenders = [chosen]
        best_uniform = self._best([p for p in uniform if p.feasible])
        if best_uniform is not None and best_uniform is not chosen:
            contenders.append(best_uniform)
        check = {"build_samples": int(min(len(self.x), 128)), "search_samples": COST_SAMPLES, "agrees": True, "changed": []}
        for point in contenders:
            before = dict(point.costs)
            self._set_costs(point, self._estimate(self._quantized(point.widths), self.x))
            if point.costs != before:
                check["agrees"] = False
                check["changed"].append({"eval": point.index, "search": before, "build": dict(point.costs)})
        chosen = self._best(contenders)
        return chosen, check

    @staticmethod
    def _best(points: list[Point]) -> Point | None:
        return min(points, key=lambda p: (*p.rank(), p.index)) if points else None

    # -- units, candidates and their evaluation --------------------------------------------------

    def _fixed_pass(self, layer_bits: dict | None, output_bits: int) -> FixedPointQuantization:
        ranges = getattr(self, "_ranges", None)
        return FixedPointQuantization(
            self.x, layer_bits=layer_bits, ranges=ranges, bits=self.candidates[0], act_bits=output_bits, per=self.per
        )

    def _make_units(self) -> list[Unit]:
        units = []
        for ref in self._layers:
            weights = np.asarray(self._prepared.get_initializer(ref.tensor))
            channels = int(weights.shape[ref.out_axis])
            if self.granularity == "layer" or channels == 1:
                units.append(Unit(ref.name, ref.name, tuple(range(channels))))
                continue
            spread = self._ranges[ref.tensor].channel_abs_max
            order = np.argsort(spread, kind="stable")  # narrowest range first
            for k, group in enumerate(np.array_split(order, min(self.groups, channels))):
                units.append(Unit(f"{ref.name}/g{k}", ref.name, tuple(sorted(int(c) for c in group))))
        tensors = self._output_tensors(units)
        if tensors:
            taken = {u.label for u in units}
            label = OUTPUT_LABEL
            while label in taken:
                label = f"({label})"
            units.append(Unit(label, None, (), tensors))
        return units

    def _output_tensors(self, layer_units: list[Unit]) -> tuple[str, ...]:
        """The activation quantizers no layer reads (their width is ``act_bits``): found by
        quantizing twice with every layer at the widest width and two output widths."""
        top = self.candidates[0]
        other = top - 1 if top > 2 else top + 1
        layer_bits = {u.layer: top for u in layer_units}
        found = []
        for bits in (top, other):
            fixed = self._fixed_pass(layer_bits, bits)
            self._prepared.transform(fixed)
            found.append(fixed.record.quantizers)
        return tuple(t for t in found[0] if found[0][t] != found[1].get(t))

    def _uniform(self, bits: int) -> tuple[int, ...]:
        return tuple(bits for _ in self.units)

    def _layer_bits(self, widths: tuple[int, ...]) -> tuple[dict[str, int | list[int]], int]:
        per_channel: dict[str, dict[int, int]] = {}
        output_bits = self.candidates[0]
        for unit, bits in zip(self.units, widths, strict=True):
            if unit.layer is None:
                output_bits = int(bits)
                continue
            for c in unit.channels:
                per_channel.setdefault(unit.layer, {})[c] = int(bits)
        out: dict[str, int | list[int]] = {}
        for layer, channels in per_channel.items():
            values = [channels[c] for c in sorted(channels)]
            out[layer] = values[0] if len(set(values)) == 1 else values
        return out, output_bits

    def _quantized(self, widths: tuple[int, ...]) -> ModelWrapper:
        layer_bits, output_bits = self._layer_bits(widths)
        fixed = self._fixed_pass(layer_bits, output_bits)
        model = self._prepared.transform(fixed)
        self._last_fixed = fixed
        return model

    def _metric_name(self) -> str:
        return "accuracy" if self._y_eval is not None else "agreement"

    def _metric(self, model: ModelWrapper) -> float:
        outputs = model_outputs(model, self._x_eval)
        if self._y_eval is not None:
            return float(np.mean(outputs.argmax(-1) == self._y_eval))
        # without labels: same class and outputs close to the unquantized model's (passes/prune/common.py)
        return float(np.mean(agreeing_samples(self._reference, outputs)))

    def _estimate(self, model: ModelWrapper, x: np.ndarray) -> dict:
        """LUT/DSP/FF/BRAM, latency and energy of ``model``'s design, as the build would make it."""
        if self.coster is None:
            self.coster = default_coster(str(self.params["target"]))
        if str(self.params["target"]) != self.coster.target.name:
            raise OptionError(
                f"--quantize mixed: target={self.params['target']}, but the design is for {self.coster.target.name}",
                hint="leave target out of the spec: the build's target is used",
            )
        return self.coster.totals(model, x)

    def _set_costs(self, point: Point, costs: dict) -> None:
        point.costs = costs
        point.objective = _cost_value(costs, self.objective)
        point.secondary = _cost_value(costs, SECONDARY[self.objective])

    def _evaluate(self, widths: tuple[int, ...], phase: str, need_cost: bool = False, always: bool = False) -> Point:
        """The point of ``widths`` (cached): accuracy, and costs when it is feasible (or ``need_cost``).
        Raises _OutOfTime once the time budget is spent (``always``: evaluate anyway)."""
        point = self._cache.get(widths)
        if point is not None and (point.costed or not (point.feasible or need_cost)):
            return point
        if not always and time.perf_counter() >= self._deadline:
            raise _OutOfTime
        model = self._quantized(widths)
        fresh = point is None
        if point is None:
            accuracy = self._metric(model)
            drop = (self.baseline - accuracy) * 100.0
            point = Point(
                widths=widths,
                accuracy=accuracy,
                drop=drop,
                feasible=drop <= self.max_drop + EPSILON,
                index=len(self._points) + 1,
                phase=phase,
            )
            self._cache[widths] = point
            self._points.append(point)
        if point.feasible or need_cost:
            self._set_costs(point, self._estimate(model, self.x[:COST_SAMPLES]))
        if self.progress is not None:
            line = f"mixed: {'eval' if fresh else 'cost of eval'} {point.index} ({phase}), widths {'/'.join(str(b) for b in widths)}, drop {point.drop:.2f} pt"
            if point.costs is not None:
                c = point.costs
                line += f", LUT {c['lut']}, DSP {c['dsp']}, {c['latency_us']:g} us, {c['energy_uj']:.4g} uJ"
            if not point.feasible:
                line += " (over max_drop" + ("" if point.costed else "; not costed") + ")"
            self.progress(line)
        return point

    def _better(self, child: Point, current: Point) -> bool:
        return child.feasible and child.costed and child.rank() < current.rank()

    # -- the search ------------------------------------------------------------------------------

    def _search(self) -> None:
        """The phases of the module docstring; the points land in ``self._points``."""
        top = self._evaluate(self._uniform(self.candidates[0]), "uniform", need_cost=True, always=True)
        self._path = [top]
        for bits in self.candidates[1:]:
            self._evaluate(self._uniform(bits), "uniform", need_cost=True)
        uniform = [self._cache[self._uniform(bits)] for bits in self.candidates]
        starts: list[tuple[str, Point]] = []
        best_uniform = self._best([p for p in uniform if p.feasible])
        if best_uniform is not None:
            starts.append(("local from best uniform", best_uniform))
        if len(self.candidates) == 1:
            return
        if top.feasible:
            self._greedy(top)
            starts.append(("local from greedy", self._path[-1]))
        infeasible = [p for p in uniform if not p.feasible and p is not top]
        if infeasible and best_uniform is not None:
            repaired = self._ascend(infeasible[0], "ascent")
            if repaired is not None:
                starts.append(("local from ascent", repaired))
        seen: set[tuple[int, ...]] = set()
        for phase, start in starts:
            if start.widths not in seen:
                seen.add(start.widths)
                self._descend(start, phase)
        for _ in range(self.restarts):
            incumbent = self._best([p for p in self._points if p.feasible and p.costed])
            if incumbent is None:
                return
            start = self._perturbed(incumbent, seen)
            if start is None:
                return
            seen.add(start.widths)
            if not start.feasible:
                start = self._ascend(start, "restart")
                if start is None or start.widths in seen:
                    continue
                seen.add(start.widths)
            self._descend(start, "restart")

    def _step(self, widths: tuple[int, ...], unit: int, delta: int) -> tuple[int, ...] | None:
        """``widths`` with ``unit`` moved ``delta`` steps along the candidates (+: narrower), or None off the end."""
        step = self.candidates.index(widths[unit]) + delta
        if not 0 <= step < len(self.candidates):
            return None
        return widths[:unit] + (self.candidates[step],) + widths[unit + 1 :]

    def _score(self, current: Point, child: Point, scale: tuple[float, float]) -> float:
        """Cost saving per accuracy point lost of moving from ``current`` to ``child`` (-inf: not a move to make)."""
        if not child.feasible or not child.costed:
            return -math.inf
        saving = (current.objective - child.objective) / scale[0] + TIE_WEIGHT * (current.secondary - child.secondary) / scale[1]
        if saving <= 0:
            return -math.inf
        loss = max(child.drop - current.drop, 0.0)
        resolution = 100.0 / max(len(self._x_eval), 1)  # one sample, in points
        return saving / (loss + 0.5 * resolution)

    def _greedy(self, start: Point) -> None:
        """Sensitivity-guided descent from the widest point (the accepted moves go to ``self._path``)."""
        n = len(self.units)
        scale = (max(abs(start.objective), 1e-12), max(abs(start.secondary), 1e-12))
        order = {int(u): rank for rank, u in enumerate(self._rng.permutation(n))}
        current = start
        version = 0
        scores: dict[int, tuple[float, int]] = {}  # unit -> (score, version it was measured at)

        def measure(u: int) -> None:
            child = self._evaluate(self._step(current.widths, u, 1), "greedy")
            scores[u] = (self._score(current, child, scale), version)

        while True:
            movable = [u for u in range(n) if self._step(current.widths, u, 1) is not None]
            if not movable:
                return
            for u in movable:  # sensitivity of every unit not measured yet
                if u not in scores:
                    measure(u)
            ranked = sorted(movable, key=lambda u: (-scores[u][0], order[u]))
            best = ranked[0]
            if scores[best][1] != version:  # stale: re-measure in the current configuration
                measure(best)
                continue
            if scores[best][0] == -math.inf:
                stale = [u for u in movable if scores[u][1] != version]
                if not stale:
                    return  # no move saves cost within the budget
                for u in stale:  # re-measure every remaining move before giving up
                    measure(u)
                continue
            current = self._cache[self._step(current.widths, best, 1)]
            self._path.append(current)
            version += 1
            del scores[best]  # its next step is a different move: measured afresh

    def _ascend(self, start: Point, phase: str) -> Point | None:
        """Raise one unit a step at a time (the one recovering the most accuracy; among feasible
        raises the best ranked) until the point is feasible; None if it cannot be repaired."""
        current = start
        order = {int(u): rank for rank, u in enumerate(self._rng.permutation(len(self.units)))}
        while not current.feasible:
            children = []
            for u in sorted(range(len(self.units)), key=order.get):
                widths = self._step(current.widths, u, -1)
                if widths is not None:
                    children.append(self._evaluate(widths, phase))
            if not children:
                return None
            feasible = [c for c in children if c.feasible and c.costed]
            current = self._best(feasible) if feasible else max(children, key=lambda c: c.accuracy)  # first on ties: seeded order
        return current

    def _moves(self, widths: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Neighbours of ``widths`` in the order local search tries them (seeded)."""
        n = len(self.units)
        lowers = [self._step(widths, int(u), 1) for u in self._rng.permutation(n)]
        raises = [self._step(widths, int(u), -1) for u in self._rng.permutation(n)]
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        if len(pairs) > MAX_PAIR_MOVES:
            pairs = [pairs[k] for k in sorted(self._rng.choice(len(pairs), size=MAX_PAIR_MOVES, replace=False))]
        swaps = []
        for k in self._rng.permutation(len(pairs)):
            i, j = pairs[int(k)]
            lowered = self._step(widths, i, 1)
            swapped = self._step(lowered, j, -1) if lowered is not None else None
            swaps.append(swapped)
        return [w for w in lowers + swaps + raises if w is not None]

    def _descend(self, start: Point, phase: str) -> Point:
        """First-improvement local search from ``start`` (feasible and costed); returns the local optimum."""
        descent = _Descent(phase, start)
        self._descents.append(descent)
        current = start
        improved = True
        while improved:
            improved = False
            for widths in self._moves(current.widths):
                child = self._evaluate(widths, "local" if phase != "restart" else "restart")
                if self._better(child, current):
                    current = child
                    descent.steps.append(child)
                    improved = True
                    break
        descent.end = current
        return current

    def _perturbed(self, incumbent: Point, seen: set[tuple[int, ...]], attempts: int = 20) -> Point | None:
        """A seeded random neighbourhood of ``incumbent`` (one to all units moved one or two steps)
        not searched from yet; None when none is found in ``attempts`` draws."""
        n = len(self.units)
        last = len(self.candidates) - 1
        for _ in range(attempts):
            count = int(self._rng.integers(1, n + 1))
            widths = list(incumbent.widths)
            for u in self._rng.choice(n, size=count, replace=False):
                step = self.candidates.index(widths[int(u)]) + int(self._rng.choice([-2, -1, 1, 2]))
                widths[int(u)] = self.candidates[min(max(step, 0), last)]
            key = tuple(widths)
            if key != incumbent.widths and key not in seen:
                return self._evaluate(key, "restart")
        return None
