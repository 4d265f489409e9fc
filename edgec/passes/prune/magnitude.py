"""`magnitude`: unstructured magnitude pruning, per layer or global, to a target sparsity.

The smallest-magnitude weights (latent weights where a weight quantizer reads them) are set to
zero; a QONNX ``Quant`` maps zero to zero, so the zeros survive quantization and reach hls4ml,
where an unrolled (Latency) layer drops those products. Binary layers (``BipolarQuant``, whose
sign(0) is +1) are left to ``bnn-latent``. With ``max_drop`` the pass takes the largest sparsity
up to the target that loses at most that many accuracy points on the data, and says so.
"""

from __future__ import annotations

from qonnx.core.modelwrapper import ModelWrapper

from edgec.errors import OptionError
from edgec.passes.prune.base import PruningPass
from edgec.passes.prune.common import largest_within_drop, magnitude_masks, magnitude_score, max_drop_points, prunable_layers

# Sparsity ladder the max_drop search walks (fractions of the target).
LADDER_STEPS = 20


class MagnitudePruning(PruningPass):
    method = "magnitude"
    PARAMS = {"sparsity": 0.5, "ratio": None, "scope": "layer", "max_drop": None}
    needs_data = False

    def check_params(self) -> None:
        if self.params.get("ratio") is not None:
            self.params["sparsity"] = self.params.pop("ratio")
        self.fraction("sparsity")
        if self.params["scope"] not in ("layer", "global"):
            raise OptionError(f"--prune magnitude: scope={self.params['scope']} must be layer or global")

    def prune(self, model: ModelWrapper) -> ModelWrapper:
        refs = [r for r in prunable_layers(model) if not r.binary]
        skipped = [r.name for r in prunable_layers(model) if r.binary]
        if skipped:
            self.record.notes.append(f"binary layers left to bnn-latent: {', '.join(skipped)}")
        weights = {r.name: r.get(model) for r in refs}
        # rank by the weight the layer really multiplies by, then by the latent weight: weights a
        # quantizer already maps to zero go first and cost nothing to remove
        scores = {r.name: magnitude_score(r.effective(model), weights[r.name]) for r in refs}
        target = float(self.params["sparsity"])
        scope = self.params["scope"]

        def apply(sparsity: float) -> ModelWrapper:
            pruned = ModelWrapper(model.model.__deepcopy__())
            masks = magnitude_masks(scores, sparsity, scope)
            for ref in refs:
                ref.set(pruned, weights[ref.name] * masks[ref.name])
            return pruned

        ladder = [target * (i + 1) / LADDER_STEPS for i in range(LADDER_STEPS)]
        baseline = self.ctx.evaluate(model) if self.params.get("max_drop") is not None else None
        chosen, pruned, _ = largest_within_drop(ladder, apply, self.ctx, baseline, max_drop_points(self.params))
        self.record.mode = "one-shot"
        if chosen < target:
            self.record.notes.append(
                f"stopped at sparsity {chosen:.3f} short of {target:.3f}: more would lose over {self.params['max_drop']} points"
            )
        self.params["achieved_sparsity"] = round(chosen, 4)
        return pruned
