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
    """

    method = "base"
    PARAMS: dict = {}
    needs_data = False

    def __init__(self, ctx: PruneContext | None = None, **params) -> None:
        super().__init__()
        self.params = with_defaults("--prune", self.method, self.PARAMS, params)
        self.ctx = ctx or PruneContext(None, None)
        self.record = PruneRecord(self.method, self.params)
        if self.needs_data and not self.ctx.has_data:
            raise DataError(f"--prune {self.method} needs data ({self.needs_data_reason()})", hint="pass --data with inputs (and labels)")
        if self.params.get("max_drop") is not None and not self.ctx.has_data:
            raise DataError(f"--prune {self.method}: max_drop is measured on data", hint="pass --data, or drop max_drop")
        self.check_params()

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
        return self.prune(model), False
