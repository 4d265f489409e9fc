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
with both at the layer's width (AutoQ varies both too); the graph input follows the first layer and
the logits (read by no layer) keep the widest candidate. Scales are per layer (``per=layer``,
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

**Search** (sensitivity-guided greedy). All units start at the widest candidate. Each unit's
sensitivity is measured by lowering it one step alone; then, repeatedly, the move with the largest
cost saving per accuracy point lost (among those keeping the drop within ``max_drop``) is applied.
Scores are recomputed lazily: the best-ranked move is re-measured in the current configuration and
taken if it still ranks first (before stopping, every remaining move is re-measured). The uniform
widths are evaluated too, and the result is the cheapest feasible point evaluated (ties: higher
accuracy). Every evaluation quantizes the model, measures it on the data and costs it with
:func:`edgec.estimate.estimate` (cached per width assignment); a progress line goes to stderr.
``search_seconds`` bounds the search (the best feasible point so far is returned, and the record
says so). The result is deterministic for a given ``seed`` (which orders ties) when the search
ends before the time budget.

The record (report.json ``passes[]``) holds a ``search`` section: the units, every evaluated point
on the accuracy/cost Pareto frontier (widths, accuracy, objective, LUT/DSP/latency/energy), the
greedy path, the uniform points and the chosen one.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper

from edgec.errors import DataError, OptionError
from edgec.passes.prune.common import MAX_EVAL_SAMPLES, model_outputs, prunable_layers
from edgec.passes.quant.calibrate import calibrate_ranges
from edgec.passes.quant.fixed import FixedPointQuantization, keeps_existing_quantizers
from edgec.passes.quant.registry import QuantizationPass

OBJECTIVES = ("luts", "dsp", "latency", "energy")
GRANULARITIES = ("layer", "kernel")
COST_SAMPLES = 8  # calibration samples estimate() sees: types come from the quantizers, so a few suffice
TIE_WEIGHT = 1e-3  # secondary objective's weight in a move's saving (breaks ties of the primary one)


@dataclass(frozen=True)
class Unit:
    """One searched width: a whole layer, or a group of a layer's output channels."""

    label: str
    layer: str
    channels: tuple[int, ...]  # output channels it covers (all of the layer's at layer granularity)


@dataclass
class Point:
    """One evaluated width assignment."""

    widths: tuple[int, ...]  # bits per unit
    accuracy: float
    drop: float  # points below the float model
    objective: float
    lut: int
    dsp: int
    ff: int
    bram18: int
    latency_us: float
    energy_uj: float
    feasible: bool
    index: int  # evaluation number

    def as_dict(self, units: list[Unit]) -> dict:
        return {
            "eval": self.index,
            "widths": {unit.label: int(bits) for unit, bits in zip(units, self.widths, strict=True)},
            "accuracy": round(self.accuracy, 6),
            "drop_points": round(self.drop, 4),
            "objective": round(self.objective, 6),
            "lut": self.lut,
            "dsp": self.dsp,
            "ff": self.ff,
            "bram18": self.bram18,
            "latency_us": round(self.latency_us, 6),
            "energy_uj": round(self.energy_uj, 9),
            "feasible": self.feasible,
        }


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _objective_value(totals: dict, objective: str) -> float:
    if objective == "luts":
        return float(totals["resources"]["lut"])
    if objective == "dsp":
        return float(totals["resources"]["dsp"])
    if objective == "latency":
        return float(totals["latency_us"])
    return float(totals["energy_uj"])


def pareto_frontier(points: list[Point]) -> list[Point]:
    """Points no other point beats on both accuracy (higher) and objective (lower), by objective."""
    ordered = sorted(points, key=lambda p: (p.objective, -p.accuracy, p.index))
    frontier: list[Point] = []
    best_accuracy = -math.inf
    for point in ordered:
        if point.accuracy > best_accuracy:
            frontier.append(point)
            best_accuracy = point.accuracy
    return frontier


class MixedPrecision(QuantizationPass):
    """Per-layer or per-kernel-group fixed-point widths under an accuracy budget (module docstring)."""

    method = "mixed"
    PARAMS = {
        "max_drop": 1.0,
        "objective": "luts",
        "granularity": "layer",
        "bits": [8, 6, 5, 4, 3, 2],
        "groups": 4,
        "per": "layer",
        "target": "pynq-z2",
        "seed": 0,
        "search_seconds": 120.0,
        "force": False,
    }

    def __init__(self, x: np.ndarray | None = None, *, progress: Callable[[str], None] | None = _stderr, **params) -> None:
        """``progress`` receives one line per evaluation (stderr by default; None: silent)."""
        super().__init__(x, **params)
        self.progress = progress

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
        if keeps_existing_quantizers(model, self.record, bool(self.params["force"]), self.method, "searched widths for the float model underneath"):
            return model
        if self.x is None:
            raise DataError("--quantize mixed needs data to measure accuracy on", hint="pass --data (or let edgec draw random inputs)")
        self.record.mode = "post-training mixed precision"
        helper_pass = self._fixed_pass(None)
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
        self._reference = model_outputs(model, self._x_eval).argmax(-1) if self._y_eval is None else None
        self.baseline = self._metric(model)
        self._cache: dict[tuple[int, ...], Point] = {}
        self._models: dict[tuple[int, ...], ModelWrapper] = {}
        self._points: list[Point] = []
        self._deadline = started + self.search_seconds
        self._out_of_time = False
        path, uniform = self._search()
        feasible = [p for p in self._points if p.feasible]
        notes = self.record.notes
        if feasible:
            chosen = min(feasible, key=lambda p: (p.objective, -p.accuracy, p.index))
        else:
            chosen = self._cache[tuple(self.candidates[0] for _ in self.units)]
            notes.append(f"no evaluated width assignment keeps the drop within {self.max_drop:g} points "
                         f"(all at {self.candidates[0]} bits: {chosen.drop:.2f}): returned the widest")
        if self._out_of_time:
            notes.append(f"search_seconds={self.search_seconds:g} reached after {len(self._points)} evaluations: "
                         "returned the best feasible point found so far (the greedy search had not finished)")
        final = self._quantized(chosen.widths)
        widest = self._cache[tuple(self.candidates[0] for _ in self.units)]
        self.record.layers = self._last_fixed.record.layers
        self.record.quantizers = self._last_fixed.record.quantizers
        notes.extend(n for n in self._last_fixed.record.notes if n not in notes)
        summary = ", ".join(f"{u.label}={b}" for u, b in zip(self.units, chosen.widths, strict=True))
        notes.append(
            f"chose {summary}: {self.objective} {chosen.objective:g} (uniform {self.candidates[0]} bit: {widest.objective:g}), "
            f"{self._metric_name()} {chosen.accuracy:.4f} ({chosen.drop:+.2f} points below float {self.baseline:.4f}) "
            f"after {len(self._points)} evaluations"
        )
        notes.append(f"costs: edgec.estimate on {self.params['target']} (calibrated on {COST_SAMPLES} samples; types come from the quantizers)")
        if self.granularity == "kernel":
            notes.append("per-kernel widths: one weight quantizer per layer at its widest kernel's width, per-channel scales fitted to each "
                         "kernel's width (qonnx Quant takes a scalar bit width); LUT/DSP see each constant, energy per product and "
                         "accumulators use the layer's widest width")
        self.record.extra["search"] = {
            "objective": self.objective,
            "granularity": self.granularity,
            "candidates": list(self.candidates),
            "metric": self._metric_name(),
            "baseline": round(self.baseline, 6),
            "max_drop": self.max_drop,
            "target": str(self.params["target"]),
            "units": [{"label": u.label, "layer": u.layer, "channels": list(u.channels)} for u in self.units],
            "evaluations": len(self._points),
            "seconds": round(time.perf_counter() - started, 3),
            "stopped": "time budget" if self._out_of_time else "converged",
            "chosen": chosen.as_dict(self.units),
            "uniform": [p.as_dict(self.units) for p in uniform],
            "path": [p.as_dict(self.units) for p in path],
            "frontier": [p.as_dict(self.units) for p in pareto_frontier(self._points)],
        }
        return final

    # -- units, candidates and their evaluation --------------------------------------------------

    def _fixed_pass(self, layer_bits: dict | None) -> FixedPointQuantization:
        top = self.candidates[0]
        ranges = getattr(self, "_ranges", None)
        return FixedPointQuantization(self.x, layer_bits=layer_bits, ranges=ranges, bits=top, act_bits=top, per=self.per)

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
        return units

    def _layer_bits(self, widths: tuple[int, ...]) -> dict[str, int | list[int]]:
        per_channel: dict[str, dict[int, int]] = {}
        for unit, bits in zip(self.units, widths, strict=True):
            for c in unit.channels:
                per_channel.setdefault(unit.layer, {})[c] = int(bits)
        out: dict[str, int | list[int]] = {}
        for layer, channels in per_channel.items():
            values = [channels[c] for c in sorted(channels)]
            out[layer] = values[0] if len(set(values)) == 1 else values
        return out

    def _quantized(self, widths: tuple[int, ...]) -> ModelWrapper:
        fixed = self._fixed_pass(self._layer_bits(widths))
        model = self._prepared.transform(fixed)
        self._last_fixed = fixed
        return model

    def _metric_name(self) -> str:
        return "accuracy" if self._y_eval is not None else "agreement"

    def _metric(self, model: ModelWrapper) -> float:
        predicted = model_outputs(model, self._x_eval).argmax(-1)
        target = self._y_eval if self._y_eval is not None else self._reference
        return float(np.mean(predicted == target))

    def _evaluate(self, widths: tuple[int, ...]) -> Point | None:
        """The point of ``widths`` (cached); None once the time budget is spent."""
        if widths in self._cache:
            return self._cache[widths]
        if time.perf_counter() >= self._deadline:
            self._out_of_time = True
            return None
        from edgec.estimate import estimate

        model = self._quantized(widths)
        accuracy = self._metric(model)
        report = estimate(model.model, target=str(self.params["target"]), data=(self.x[:COST_SAMPLES], None))
        totals = report["totals"]
        res = totals["resources"]
        drop = (self.baseline - accuracy) * 100.0
        point = Point(
            widths=widths, accuracy=accuracy, drop=drop, objective=_objective_value(totals, self.objective),
            lut=int(res["lut"]), dsp=int(res["dsp"]), ff=int(res["ff"]), bram18=int(res["bram18"]),
            latency_us=float(totals["latency_us"]), energy_uj=float(totals["energy_uj"]),
            feasible=drop <= self.max_drop + 1e-9, index=len(self._points) + 1,
        )
        self._cache[widths] = point
        self._points.append(point)
        if self.progress is not None:
            self.progress(
                f"mixed: eval {point.index}, widths {'/'.join(str(b) for b in widths)}, drop {drop:.2f} pt, "
                f"LUT {point.lut}, DSP {point.dsp}, {point.latency_us:g} us, {point.energy_uj:.4g} uJ"
                + ("" if point.feasible else " (over max_drop)")
            )
        return point

    # -- the greedy search -----------------------------------------------------------------------

    def _secondary(self, point: Point) -> float:
        return point.energy_uj if self.objective == "luts" else float(point.lut)

    def _score(self, current: Point, child: Point, scale: tuple[float, float]) -> float:
        """Cost saving per accuracy point lost of moving from ``current`` to ``child`` (-inf: not a move to make)."""
        if not child.feasible:
            return -math.inf
        saving = (current.objective - child.objective) / scale[0] + TIE_WEIGHT * (self._secondary(current) - self._secondary(child)) / scale[1]
        if saving <= 0:
            return -math.inf
        loss = max(child.drop - current.drop, 0.0)
        resolution = 100.0 / max(len(self._x_eval), 1)  # one sample, in points
        return saving / (loss + 0.5 * resolution)

    def _lowered(self, widths: tuple[int, ...], unit: int) -> tuple[int, ...] | None:
        step = self.candidates.index(widths[unit])
        if step + 1 >= len(self.candidates):
            return None
        return widths[:unit] + (self.candidates[step + 1],) + widths[unit + 1 :]

    def _search(self) -> tuple[list[Point], list[Point]]:
        """Run the greedy search; returns its accepted path and the uniform points."""
        n = len(self.units)
        start = self._evaluate(tuple(self.candidates[0] for _ in range(n)))
        assert start is not None  # the first evaluation always runs
        uniform = [start]
        for bits in self.candidates[1:]:
            point = self._evaluate(tuple(bits for _ in range(n)))
            if point is None:
                return [start], uniform
            uniform.append(point)
        scale = (max(abs(start.objective), 1e-12), max(abs(self._secondary(start)), 1e-12))
        order = {int(u): rank for rank, u in enumerate(np.random.default_rng(self.seed).permutation(n))}
        current, path = start, [start]
        version = 0
        scores: dict[int, tuple[float, int]] = {}  # unit -> (score, version it was measured at)
        while True:
            movable = [u for u in range(n) if self._lowered(current.widths, u) is not None]
            if not movable:
                break
            for u in movable:  # sensitivity of every unit not measured yet
                if u not in scores:
                    child = self._evaluate(self._lowered(current.widths, u))
                    if child is None:
                        return path, uniform
                    scores[u] = (self._score(current, child, scale), version)
            ranked = sorted(movable, key=lambda u: (-scores[u][0], order[u]))
            best = ranked[0]
            if scores[best][1] != version:  # stale: re-measure in the current configuration
                child = self._evaluate(self._lowered(current.widths, best))
                if child is None:
                    return path, uniform
                scores[best] = (self._score(current, child, scale), version)
                continue
            if scores[best][0] == -math.inf:
                stale = [u for u in movable if scores[u][1] != version]
                if not stale:
                    break  # no move saves cost within the budget
                for u in stale:  # re-measure every remaining move before giving up
                    child = self._evaluate(self._lowered(current.widths, u))
                    if child is None:
                        return path, uniform
                    scores[u] = (self._score(current, child, scale), version)
                continue
            current = self._cache[self._lowered(current.widths, best)]
            path.append(current)
            version += 1
            del scores[best]  # its next step is a different move: measured afresh
        return path, uniform
