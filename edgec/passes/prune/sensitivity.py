"""`sensitivity`: provable sensitivity-sampling filter pruning (Liebenwein, Baykal, Lang, Feldman,
Rus: "Provable Filter Pruning for Efficient Neural Networks", ICLR 2020).

For every channel group (a layer's output channels, with the layers coupled to it through
residual Adds) and every layer consuming those channels, a channel's sensitivity is the largest
share it takes of any output unit's pre-activation over a calibration batch::

    s_c = max over samples x, output units o (and output positions) of
          max( sum_{i in c} (w_oi a_i(x))+ / sum_i (w_oi a_i(x))+ ,
               sum_{i in c} (w_oi a_i(x))- / sum_i (w_oi a_i(x))- )

(positive and negative parts of the products apart, as the paper splits W into W+ and W-; for
a convolution, the channel's products summed over its kernel window; for a Dense layer after a
Flatten, over the channel's rows). Channels are sampled with probability p_c = s_c / S,
S = sum_c s_c, m times with replacement; the sampled channels are kept, the others removed
from the producing layers (and everywhere downstream, see ``channels``). The budget follows the
paper's error guarantee, m = ceil((6 + 2 eps) S / eps^2 * log(8 eta / delta)) with eta the number
of channels in the network; one eps is shared by all groups and found by bisection so that the
requested ``ratio`` of weights (``measure=params``) or MACs (``measure=ops``) is removed (in
whole channels, the nearer side of the target). With ``reweight=true`` kept channels are
reweighted as in the paper: the consumers' weights reading channel c are scaled by
count_c / (m p_c) (the unbiased estimator of the full sum), for unquantized consumers only (a
weight quantizer would re-round and clip the scaled weights). It is off by default: with the
few samples small layers get, the estimator's variance costs accuracy (digits_cnn at ratio 0.5:
0.32 with reweighting, 0.85 without). Sensitivities are measured on the activation minus the
constant ``channels`` folds in place of a removed channel (its BatchNorm/bias shift), since that
difference is what removal takes away. The samples are drawn from a
stream seeded by ``seed``, so the result is reproducible and a larger budget keeps a superset.

Sensitivities are computed once on the unpruned model (one shot over all layers, not layer by
layer as in the paper's Algorithm 1).
"""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import qonnx.core.onnx_exec as oxe
from onnx import TensorProto, helper
from qonnx.core.modelwrapper import ModelWrapper

from edgec.errors import OptionError
from edgec.passes.prune.base import PruningPass
from edgec.passes.prune.channels import ChannelPlan, channel_groups, channel_plan, const_value, remove_channels
from edgec.passes.prune.common import WEIGHT_QUANTIZERS, WeightRef, attr, largest_within_drop, layer_ops, max_drop_points

# Ratio ladder the max_drop search walks (fractions of the target ratio).
LADDER_STEPS = 10
# Samples per stream: budgets above this keep every channel the stream ever drew.
STREAM_LENGTH = 200_000
# eps is searched on a log scale between these (eps -> inf: one sample per group).
EPS_RANGE = (1e-3, 1e7)
BISECTION_STEPS = 60


def activations(model: ModelWrapper, x: np.ndarray, tensors: list[str]) -> dict[str, np.ndarray]:
    """The values of ``tensors`` for every sample of ``x`` (stacked on a new first axis): the
    tensors are exposed as graph outputs of a copy, run by onnxruntime (plain ONNX) or qonnx."""
    copy = ModelWrapper(model.model.__deepcopy__())
    present = {o.name for o in copy.graph.output}
    for tensor in tensors:
        if tensor not in present:
            copy.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
            present.add(tensor)
    in_name = copy.graph.input[0].name
    x = np.asarray(x, dtype=np.float32)
    is_qonnx = any(
        n.op_type in WEIGHT_QUANTIZERS or (n.domain and "qonnx" in n.domain) or n.domain == "onnx.brevitas" for n in copy.graph.node
    )
    results: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    if is_qonnx:
        for sample in x:
            context = oxe.execute_onnx(model, {in_name: sample[None]}, return_full_exec_context=True)
            for t in tensors:
                results[t].append(np.asarray(context[t], dtype=np.float64)[0])
    else:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(copy.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for sample in x:
            outs = session.run(tensors, {in_name: sample[None]})
            for t, value in zip(tensors, outs, strict=True):
                results[t].append(np.asarray(value, dtype=np.float64)[0])
    return {t: np.stack(v) for t, v in results.items()}


def _conv_windows(node, a: np.ndarray, kernel: tuple[int, ...]) -> np.ndarray:
    """(N, C, *spatial) -> (N, C, positions, taps): every kernel window the Conv reads."""
    spatial = a.ndim - 2
    strides = list(attr(node, "strides", [1] * spatial))
    dilations = list(attr(node, "dilations", [1] * spatial))
    pads = list(attr(node, "pads", [0] * 2 * spatial))
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * 2 * spatial
        for d in range(spatial):
            out = math.ceil(a.shape[2 + d] / strides[d])
            total = max((out - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - a.shape[2 + d], 0)
            small, large = total // 2, total - total // 2
            pads[d], pads[d + spatial] = (small, large) if auto == "SAME_UPPER" else (large, small)
    padded = np.pad(a, [(0, 0), (0, 0)] + [(pads[d], pads[d + spatial]) for d in range(spatial)])
    extent = [(k - 1) * dl + 1 for k, dl in zip(kernel, dilations, strict=True)]
    windows = np.lib.stride_tricks.sliding_window_view(padded, extent, axis=tuple(range(2, 2 + spatial)))
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(slice(None, None, dl) for dl in dilations)
    windows = windows[index]
    n, c = windows.shape[:2]
    positions = int(np.prod(windows.shape[2 : 2 + spatial]))
    return windows.reshape(n, c, positions, -1)


def _shares(pos: np.ndarray, neg: np.ndarray, onehot: np.ndarray, axis: int) -> np.ndarray:
    """Per channel: the largest share of the positive/negative product sums it takes."""
    scores = np.zeros(onehot.shape[1])
    for part in (pos, neg):
        total = part.sum(axis=axis, keepdims=True)
        grouped = np.moveaxis(np.tensordot(part, onehot, axes=([axis], [0])), -1, axis)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, grouped / np.where(total > 0, total, 1.0), 0.0)
        reduce = tuple(i for i in range(share.ndim) if i != axis)
        scores = np.maximum(scores, share.max(axis=reduce))
    return scores


def consumer_sensitivity(model: ModelWrapper, ref: WeightRef, kind: str, a: np.ndarray, owner: np.ndarray, channels: int) -> np.ndarray:
    """Sensitivity of each of ``channels`` channels for one consuming layer, from its input
    activations ``a`` (samples first) and ``owner`` (input index -> channel, -1: not ours)."""
    weight = const_value(model, ref.node.input[1])
    mask = owner >= 0
    onehot = np.zeros((owner.size, channels))
    onehot[np.flatnonzero(mask), owner[mask]] = 1.0
    w_pos, w_neg = np.maximum(weight, 0.0), np.maximum(-weight, 0.0)
    scores = np.zeros(channels)
    chunk = 16
    for start in range(0, a.shape[0], chunk):
        batch = a[start : start + chunk]
        a_pos, a_neg = np.maximum(batch, 0.0), np.maximum(-batch, 0.0)
        if kind == "conv":
            kernel = tuple(weight.shape[2:])
            wp, wn = (w.reshape(w.shape[0], w.shape[1], -1) for w in (w_pos, w_neg))
            ap, an = _conv_windows(ref.node, a_pos, kernel), _conv_windows(ref.node, a_neg, kernel)
            # (n, c, p, k) x (o, c, k) -> (n, o, c, p)
            pos = np.einsum("ncpk,ock->nocp", ap, wp, optimize=True) + np.einsum("ncpk,ock->nocp", an, wn, optimize=True)
            neg = np.einsum("ncpk,ock->nocp", an, wp, optimize=True) + np.einsum("ncpk,ock->nocp", ap, wn, optimize=True)
            scores = np.maximum(scores, _shares(pos, neg, onehot, axis=2))
        else:
            oriented = weight.T if ref.node.op_type == "Gemm" and int(attr(ref.node, "transB", 0)) else weight  # (I, O)
            wp, wn = np.maximum(oriented, 0.0), np.maximum(-oriented, 0.0)
            ap, an = a_pos.reshape(-1, owner.size), a_neg.reshape(-1, owner.size)
            pos = ap[:, None, :] * wp.T[None] + an[:, None, :] * wn.T[None]  # (n, o, i)
            neg = an[:, None, :] * wp.T[None] + ap[:, None, :] * wn.T[None]
            scores = np.maximum(scores, _shares(pos, neg, onehot, axis=2))
    return scores


def sample_budget(eps: float, total_sensitivity: float, eta: int, delta: float) -> int:
    """The paper's sample complexity: m = ceil((6 + 2 eps) S / eps^2 * log(8 eta / delta))."""
    return max(1, math.ceil((6.0 + 2.0 * eps) * total_sensitivity / eps**2 * math.log(8.0 * eta / delta)))


class SensitivityPruning(PruningPass):
    """Sample channels by their data-driven sensitivity; keep the sampled ones (reweighted)."""

    method = "sensitivity"
    PARAMS = {"ratio": 0.5, "delta": 1e-3, "samples": 64, "max_drop": None, "seed": None, "measure": "params", "reweight": False}
    needs_data = True

    def needs_data_reason(self) -> str:
        return "channel sensitivities are measured on activations of calibration samples"

    def structured(self) -> bool:
        """Whole channels go: the layers left are smaller and dense (``hardware_aware`` has nothing to do)."""
        return True

    def check_params(self) -> None:
        self.fraction("ratio")
        delta = self.params["delta"]
        if not isinstance(delta, (int, float)) or not 0.0 < float(delta) < 1.0:
            raise OptionError(f"--prune sensitivity: delta={delta} must be in (0, 1)")
        if not isinstance(self.params["samples"], int) or self.params["samples"] < 1:
            raise OptionError(f"--prune sensitivity: samples={self.params['samples']} must be a positive integer")
        if self.params["measure"] not in ("params", "ops"):
            raise OptionError(f"--prune sensitivity: measure={self.params['measure']} must be params or ops")
        if not isinstance(self.params["reweight"], bool):
            raise OptionError(f"--prune sensitivity: reweight={self.params['reweight']} must be true or false")
        if self.params.get("seed") is None:
            self.params["seed"] = int(self.ctx.seed)

    # -- analysis ---------------------------------------------------------------------------

    def _plans(self, model: ModelWrapper) -> dict[str, ChannelPlan]:
        plans = {}
        for group in channel_groups(model):
            if not group.prunable:
                self.record.notes.append(f"{group.layers[0]}: not pruned ({group.reason})")
                continue
            plan = channel_plan(model, group.layers[0])
            if not any(kind in ("conv", "dense") for _, kind in plan.consumers):
                self.record.notes.append(f"{group.layers[0]}: no layer reads its channels directly; not pruned")
                continue
            plans[group.layers[0]] = plan
        return plans

    def sensitivities(self, model: ModelWrapper, plans: dict[str, ChannelPlan]) -> dict[str, np.ndarray]:
        """Per group (keyed by its first layer): every channel's sensitivity on the calibration batch."""
        x = np.asarray(self.ctx.x[: int(self.params["samples"])], dtype=np.float32)
        tensors = sorted({ref.node.input[0] for plan in plans.values() for ref, kind in plan.consumers if kind != "depthwise"})
        acts = activations(model, x, tensors)
        result = {}
        for key, plan in plans.items():
            scores = np.zeros(plan.channels)
            for ref, kind in plan.consumers:
                if kind == "depthwise":
                    continue
                owner = plan.states[ref.node.input[0]].owner
                state = plan.states[ref.node.input[0]]
                a = acts[ref.node.input[0]]
                if state.val is not None:  # what removal changes: the activation minus the constant folded in its place
                    shift = np.where((state.owner >= 0) & np.isfinite(state.val), state.val, 0.0)
                    shape = [1] * a.ndim
                    shape[state.axis] = -1
                    a = a - shift.reshape(shape)
                scores = np.maximum(scores, consumer_sensitivity(model, ref, kind, a, owner, plan.channels))
            result[key] = scores
        return result

    # -- budgets ----------------------------------------------------------------------------

    def _cost_model(self, model: ModelWrapper, plans: dict[str, ChannelPlan]):
        """A function: kept-channel masks per group -> fraction of weights (or MACs) removed."""
        stats = layer_ops(model)
        measure = "params" if self.params["measure"] == "params" else "dense_ops"
        weight_of = {name: float(s[measure]) for name, s in stats.items()}
        total = sum(weight_of.values()) or 1.0
        producers = {ref.name: key for key, plan in plans.items() for ref in plan.producers}
        reads: dict[str, list[tuple[str, np.ndarray, str]]] = {}
        for key, plan in plans.items():
            for ref, kind in plan.consumers:
                reads.setdefault(ref.name, []).append((key, plan.states[ref.node.input[0]].owner, kind))

        def removed(keep: dict[str, np.ndarray]) -> float:
            lost = 0.0
            for name, full in weight_of.items():
                out_frac = float(keep[producers[name]].mean()) if name in producers else 1.0
                in_frac = 1.0
                for key, owner, kind in reads.get(name, []):
                    gone = float(np.isin(owner, np.flatnonzero(~keep[key])).mean())
                    if kind == "depthwise":
                        out_frac *= 1.0 - gone
                    else:
                        in_frac -= gone
                lost += full * (1.0 - out_frac * max(in_frac, 0.0))
            return lost / total

        return removed

    def _streams(self, scores: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per group: the first draw at which each channel appears (inf: never), its probability
        and the stream of draws itself."""
        streams = {}
        for index, (key, s) in enumerate(scores.items()):
            total = float(s.sum())
            if total <= 0:
                first = np.full(s.size, np.inf)
                first[0] = 0
                streams[key] = (first, np.zeros(s.size), np.zeros(0, dtype=np.int64))
                continue
            p = s / total
            rng = np.random.default_rng([int(self.params["seed"]), index])
            draws = rng.choice(s.size, size=STREAM_LENGTH, p=p)
            first = np.full(s.size, np.inf)
            positions = np.arange(STREAM_LENGTH)[::-1]
            first[draws[::-1]] = positions  # the last write per channel is its earliest draw
            streams[key] = (first, p, draws)
        return streams

    def _keep(self, eps: float, scores, streams, eta: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        keep, budgets = {}, {}
        for key, s in scores.items():
            m = sample_budget(eps, max(float(s.sum()), 1e-12), eta, float(self.params["delta"]))
            budgets[key] = m
            keep[key] = streams[key][0] < m
            if not keep[key].any():
                keep[key][int(np.argmax(s))] = True
        return keep, budgets

    def _solve(self, ratio: float, scores, streams, eta: int, removed) -> tuple[float, dict[str, np.ndarray], dict[str, int], float]:
        """The smallest eps (largest budgets) removing at least ``ratio``; the largest eps if none does."""
        lo, hi = math.log(EPS_RANGE[0]), math.log(EPS_RANGE[1])
        keep, budgets = self._keep(math.exp(hi), scores, streams, eta)
        if removed(keep) < ratio:
            return math.exp(hi), keep, budgets, removed(keep)
        for _ in range(BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            if removed(self._keep(math.exp(mid), scores, streams, eta)[0]) >= ratio:
                hi = mid
            else:
                lo = mid
        # removal moves in whole channels: take whichever side of the target is closer
        above, below = self._keep(math.exp(hi), scores, streams, eta), self._keep(math.exp(lo), scores, streams, eta)
        eps, (keep, budgets) = (math.exp(lo), below) if ratio - removed(below[0]) < removed(above[0]) - ratio else (math.exp(hi), above)
        return eps, keep, budgets, removed(keep)

    # -- the pass ---------------------------------------------------------------------------

    def _build(self, model: ModelWrapper, plans, keep, budgets, streams, scores) -> ModelWrapper:
        pruned = ModelWrapper(model.model.__deepcopy__())
        if self.params["reweight"]:
            for key, plan in plans.items():
                m = budgets[key]
                _, p, draws = streams[key]
                counts = np.bincount(draws[: min(m, draws.size)], minlength=plan.channels).astype(np.float64)
                factor = np.where(keep[key] & (p > 0), counts / np.maximum(m * p, 1e-300), 1.0)
                factor = np.where(counts > 0, factor, 1.0)
                for ref, kind in plan.consumers:
                    if kind == "depthwise" or ref.quant is not None:
                        continue
                    owner = plan.states[ref.node.input[0]].owner
                    scale = np.where(owner >= 0, factor[np.maximum(owner, 0)], 1.0)
                    weight = ref.get(pruned)
                    shape = [1] * weight.ndim
                    shape[ref.in_axis] = -1
                    ref.set(pruned, weight * scale.reshape(shape))
        for key in plans:
            drop = np.flatnonzero(~keep[key])
            if drop.size:
                pruned = remove_channels(pruned, key, drop)
        return pruned

    def prune(self, model: ModelWrapper) -> ModelWrapper:
        plans = self._plans(model)
        self.record.mode = "one-shot"
        if not plans:
            self.record.notes.append("no layer has removable channels")
            self.params["achieved_ratio"] = 0.0
            return model
        scores = self.sensitivities(model, plans)
        streams = self._streams(scores)
        eta = sum(plan.channels for plan in plans.values())
        removed = self._cost_model(model, plans)
        target = float(self.params["ratio"])
        chosen: dict[float, tuple] = {}

        def apply(ratio: float) -> ModelWrapper:
            if ratio <= 0:
                return ModelWrapper(model.model.__deepcopy__())
            eps, keep, budgets, achieved = self._solve(ratio, scores, streams, eta, removed)
            chosen[ratio] = (eps, keep, budgets, achieved)
            return self._build(model, plans, keep, budgets, streams, scores)

        ladder = [target * (i + 1) / LADDER_STEPS for i in range(LADDER_STEPS)]
        baseline = self.ctx.evaluate(model) if self.params.get("max_drop") is not None else None
        ratio, pruned, _ = largest_within_drop(ladder, apply, self.ctx, baseline, max_drop_points(self.params))
        if ratio < target:
            self.record.notes.append(
                f"stopped at ratio {ratio:.3f} short of {target:.3f}: more would lose over {self.params['max_drop']} points"
            )
        if ratio <= 0 or ratio not in chosen:
            self.params["achieved_ratio"] = 0.0
            return pruned
        eps, keep, budgets, achieved = chosen[ratio]
        if achieved < ratio - 1e-9:
            self.record.notes.append(f"ratio {ratio:.3f} not reachable: keeping one channel per group removes {achieved:.3f}")
        if self.params["reweight"]:
            quantized = sorted(
                {ref.name for plan in plans.values() for ref, kind in plan.consumers if ref.quant is not None or kind == "depthwise"}
            )
            self.record.notes.append(
                "kept channels reweighted by count/(m p) in their consumers"
                + (f" (not in quantized/depthwise {', '.join(quantized)})" if quantized else "")
            )
        self.params["achieved_ratio"] = round(achieved, 4)
        self.params["epsilon"] = round(eps, 6)
        for key, plan in plans.items():
            kept = int(keep[key].sum())
            for ref in plan.producers:
                self.record.layers[ref.name] = {
                    "epsilon": round(eps, 6),
                    "budget": int(budgets[key]),
                    "sensitivity_sum": round(float(scores[key].sum()), 4),
                    "channels_before": plan.channels,
                    "channels_after": kept,
                    "channels_removed": plan.channels - kept,
                }
        return pruned
