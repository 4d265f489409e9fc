"""The base of every pruning pass: a qonnx Transformation with validated parameters and a record."""

from __future__ import annotations

from abc import abstractmethod

from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

from edgec.errors import DataError, OptionError
from edgec.passes.prune.common import PruneContext, PruneRecord
from edgec.passes.spec import with_defaults


class PruningPass(Transformation):
    """``model -> model`` plus ``self.record`` (qonnx Transformation convention: ``apply`` returns
    ``(model, False)``: one application does the whole pass).

    Subclasses set ``method``, ``PARAMS`` (accepted parameter names with defaults) and
    ``needs_data`` (True: refuses without data; False: falls back to a data-free criterion), and
    implement ``prune(model) -> model``.

    Every method also takes ``hardware_aware=true|false`` (edgec.passes.prune.hardware_aware):
    each layer ends up pruned to at least its break-even ratio on the target, or not at all.
    Unstructured methods re-prune layers through :meth:`reprune`; structured ones
    (:meth:`structured`) leave smaller dense layers and only record that.
    """

    method = "base"
    PARAMS: dict = {}
    needs_data = False

    def __init__(self, ctx: PruneContext | None = None, **params) -> None:
        super().__init__()
        self.params = with_defaults("--prune", self.method, {**self.PARAMS, "hardware_aware": None}, params)
        self.ctx = ctx or PruneContext(None, None)
        self.record = PruneRecord(self.method, self.params)
        if self.needs_data and not self.ctx.has_data:
            raise DataError(f"--prune {self.method} needs data ({self.needs_data_reason()})", hint="pass --data with inputs (and labels)")
        if self.params.get("max_drop") is not None and not self.ctx.has_data:
            raise DataError(f"--prune {self.method}: max_drop is measured on data", hint="pass --data, or drop max_drop")
        self.check_params()
        aware = self.params.get("hardware_aware")
        if aware is not None and not isinstance(aware, bool):
            raise OptionError(f"--prune {self.method}: hardware_aware={aware} must be true or false")

    @property
    def hardware_aware(self) -> bool:
        """Whether layers must end at or above their break-even pruning ratio (or unpruned)."""
        return bool(self.params.get("hardware_aware", False))

    def structured(self) -> bool:
        """Whether this pass removes whole channels (smaller dense layers, break-even ratio 0)."""
        return False

    def reprune(self, original: ModelWrapper, current: ModelWrapper, ratios: dict[str, float]) -> ModelWrapper:
        """A copy of ``current`` with each named layer pruned to ``ratios[name]`` (fraction of its
        weights) by this method's criterion; 0 restores the layer's weights in ``original``.
        The default ranks by magnitude (edgec.passes.prune.hardware_aware.magnitude_reprune)."""
        from edgec.passes.prune.hardware_aware import magnitude_reprune

        return magnitude_reprune(original, current, ratios)

    def needs_data_reason(self) -> str:
        return "its criterion is computed from activations"

    def check_params(self) -> None:
        """Validate parameter values (raise OptionError)."""

    def fraction(self, key: str) -> float | None:
        value = self.params.get(key)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
            raise OptionError(f"--prune {self.method}: {key}={value} must be a fraction in [0, 1)")
        return float(value)

    @abstractmethod
    def prune(self, model: ModelWrapper) -> ModelWrapper:
        """Prune ``model`` (a private copy) and fill ``self.record``."""

    def apply(self, model: ModelWrapper):
        model = ModelWrapper(model.model.__deepcopy__())
        original = ModelWrapper(model.model.__deepcopy__()) if self.hardware_aware else None
        pruned = self.prune(model)
        if original is not None:
            from edgec.passes.prune.hardware_aware import enforce_break_even

            pruned = enforce_break_even(self, original, pruned)
        return pruned, False
