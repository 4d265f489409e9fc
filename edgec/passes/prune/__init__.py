"""Pruning passes over ONNX/QONNX models (`--prune METHOD[:key=value,...]`).

Each method is one module with one qonnx ``Transformation`` subclass of :class:`PruningPass`.
``run_pruning`` runs a list of specs in order and returns the pruned model and one report
record per pass (MACs, parameters and accuracy before/after, per-layer ratios).
"""

from __future__ import annotations

from qonnx.core.modelwrapper import ModelWrapper

from edgec.passes.prune.base import PruningPass
from edgec.passes.prune.common import PruneContext, layer_ops, timer, totals
from edgec.passes.spec import method_class, parse_spec

# method -> "module:class" (imported on use)
METHODS = {
    "magnitude": "edgec.passes.prune.magnitude:MagnitudePruning",
    "channels": "edgec.passes.prune.channels:ChannelPruning",
    "sensitivity": "edgec.passes.prune.sensitivity:SensitivityPruning",
    "spp": "edgec.passes.prune.spp:StructuredProbabilisticPruning",
    "bnn-latent": "edgec.passes.prune.bnn_latent:BnnLatentPruning",
}

__all__ = ["METHODS", "PruneContext", "PruningPass", "parse_prune_spec", "pass_class", "run_pruning"]


def parse_prune_spec(spec: str | tuple[str, dict]) -> tuple[str, dict]:
    """``"magnitude:sparsity=0.5,scope=global"`` -> ``("magnitude", {"sparsity": 0.5, "scope": "global"})``."""
    return parse_spec(spec, "--prune", "magnitude:sparsity=0.5,max_drop=0.5")


def pass_class(method: str) -> type[PruningPass]:
    return method_class(METHODS, method, "pruning")


def run_pruning(
    model: ModelWrapper, specs: list, ctx: PruneContext, metrics: PruneContext | None = None
) -> tuple[ModelWrapper, list[dict]]:
    """Run the pruning specs in order; returns the pruned model and one record per pass.

    ``metrics`` measures the before/after figures when the passes themselves run without data
    (data-free criteria): e.g. agreement with the unpruned model on random inputs.
    """
    metrics = metrics or ctx
    parsed = [parse_prune_spec(spec) for spec in specs]
    passes = []
    for method, params in parsed:  # check every spec before running any
        cls = pass_class(method)
        passes.append(cls(ctx, **params))
    ctx.set_reference(model)
    if metrics is not ctx:
        metrics.set_reference(model)
    records = []
    for prune_pass in passes:
        elapsed = timer()
        before = layer_ops(model)
        accuracy_before = metrics.evaluate(model)
        ctx.say(f"prune {prune_pass.method}: {prune_pass.params}")
        model = model.transform(prune_pass)
        after = layer_ops(model)
        accuracy_after = metrics.evaluate(model)
        ops_before, params_before = totals(before)
        ops_after, params_after = totals(after)
        record = prune_pass.record
        layers = {}
        for name, stat in after.items():
            base = before.get(name, stat)
            layers[name] = {
                "ratio": round(1.0 - stat["nonzero"] / base["nonzero"], 4) if base["nonzero"] else 0.0,
                "sparsity": round(1.0 - stat["nonzero"] / stat["params"], 4) if stat["params"] else 0.0,
                "ops_before": base["ops"],
                "ops_after": stat["ops"],
                "binary": stat["binary"],
                **record.layers.get(name, {}),
            }
        for name in before:
            if name not in after:
                layers[name] = {"ratio": 1.0, "removed": True, "ops_before": before[name]["ops"], "ops_after": 0}
        records.append(
            {
                "name": prune_pass.method,
                "params": prune_pass.params,
                "seconds": elapsed(),
                "ops_before": ops_before,
                "ops_after": ops_after,
                "params_before": params_before,
                "params_after": params_after,
                "accuracy_before": accuracy_before,
                "accuracy_after": accuracy_after,
                "metric": (metrics.metric if metrics is ctx else "agreement on random inputs") if metrics.has_data else None,
                "mode": record.mode,
                "layers": layers,
                "notes": record.notes,
            }
        )
        ctx.say(
            f"prune {prune_pass.method}: ops {ops_before} -> {ops_after}, non-zero params {params_before} -> {params_after}"
            + (f", {metrics.metric} {accuracy_before:.4f} -> {accuracy_after:.4f}" if accuracy_before is not None else "")
        )
    return model, records
