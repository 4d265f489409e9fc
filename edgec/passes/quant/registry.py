"""Quantization passes (`--quantize METHOD[:key=value,...]`): registry, spec parsing and the runner.

Each method is one qonnx ``Transformation`` subclass of :class:`QuantizationPass`, imported on use.
``run_quantization`` runs a list of specs in order and returns the quantized model and one report
record per pass (accuracy or agreement before/after on the data, per-layer types, notes).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

from edgec.errors import OptionError
from edgec.passes.prune.common import PruneContext, timer
from edgec.passes.spec import method_class, parse_spec, with_defaults

# method -> "module:class" (imported on use)
METHODS = {
    "fixed": "edgec.passes.quant.fixed:FixedPointQuantization",
    "mixed": "edgec.passes.quant.mixed:MixedPrecision",
}

__all__ = ["METHODS", "QuantRecord", "QuantizationPass", "parse_quant_spec", "quant_pass_class", "run_quantization"]


@dataclass
class QuantRecord:
    """What one quantization pass did (becomes a report.json ``passes[]`` entry)."""

    name: str
    params: dict
    layers: dict[str, dict] = field(default_factory=dict)  # per layer: types, integer bits, modes
    quantizers: dict[str, str] = field(default_factory=dict)  # activation tensor -> its quantizer's type
    notes: list[str] = field(default_factory=list)
    mode: str | None = None
    changed: bool = True
    extra: dict = field(default_factory=dict)  # method-specific sections (e.g. a search's frontier), merged into the record


class QuantizationPass(Transformation):
    """``model -> model`` plus ``self.record`` (qonnx Transformation convention: ``apply`` returns
    ``(model, False)``: one application does the whole pass).

    Subclasses set ``method`` and ``PARAMS`` (accepted parameter names with defaults), may
    validate them in ``check_params``, and implement ``quantize(model) -> model``. ``x`` is the
    calibration data in the model's layout, ``y`` its labels when known (a search that judges
    accuracy needs them; without labels it measures argmax agreement with the model it was given).
    """

    method = "base"
    PARAMS: dict = {}

    def __init__(self, x: np.ndarray | None = None, *, y: np.ndarray | None = None, **params) -> None:
        super().__init__()
        self.params = with_defaults("--quantize", self.method, self.PARAMS, params)
        self.x = None if x is None else np.asarray(x, dtype=np.float32)
        self.y = None if y is None else np.asarray(y)
        self.record = QuantRecord(self.method, self.params)
        self.check_params()

    def check_params(self) -> None:
        """Validate parameter values (raise OptionError)."""

    def int_param(self, key: str, low: int, high: int) -> int | None:
        value = self.params.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise OptionError(f"--quantize {self.method}: {key}={value} must be an integer from {low} to {high}")
        return int(value)

    @abstractmethod
    def quantize(self, model: ModelWrapper) -> ModelWrapper:
        """Quantize ``model`` (a private copy) and fill ``self.record``."""

    def apply(self, model: ModelWrapper):
        model = ModelWrapper(model.model.__deepcopy__())
        return self.quantize(model), False


def parse_quant_spec(spec: str | tuple[str, dict]) -> tuple[str, dict]:
    """``"fixed:bits=8,per=channel"`` -> ``("fixed", {"bits": 8, "per": "channel"})`` (see edgec.passes.spec)."""
    return parse_spec(spec, "--quantize", "fixed:bits=8,per=channel")


def quant_pass_class(method: str) -> type[QuantizationPass]:
    return method_class(METHODS, method, "quantization")


def run_quantization(
    model: ModelWrapper,
    specs: list,
    x: np.ndarray | None,
    y: np.ndarray | None,
    defaults: dict | None = None,
    pass_arguments: dict | None = None,
) -> tuple[ModelWrapper, list[dict]]:
    """Run the quantization specs in order on ``model`` (as loaded: the model's own layout).

    ``x`` calibrates the ranges and measures the result: accuracy with labels ``y``, otherwise
    argmax agreement with the model as it was before the first pass. Without ``x`` the passes
    calibrate on deterministic random inputs (edgec's usual verification inputs) and agreement is
    measured on those. Every spec is checked before any runs (unknown method or parameter:
    :class:`edgec.errors.OptionError`). ``defaults`` fill parameters a pass accepts but the spec
    does not give (the build passes its target this way). ``pass_arguments`` are keyword arguments
    (not spec parameters) given to every pass whose constructor takes them (the build gives the
    mixed search the design it will be built into as ``coster``). Returns the quantized model and one record
    per pass.
    """
    parsed = [parse_quant_spec(spec) for spec in specs]
    for method, params in parsed:
        accepted = quant_pass_class(method).PARAMS
        for key, value in (defaults or {}).items():
            if key in accepted and key not in params:
                params[key] = value
    notes: list[str] = []
    if x is None:
        from edgec.data import random_inputs

        x, description = random_inputs(model)
        y = None
        notes.append(f"no data given: calibrated and measured on {description}")

    def constructor_arguments(cls) -> dict:
        import inspect

        accepted = inspect.signature(cls.__init__).parameters
        return {k: v for k, v in (pass_arguments or {}).items() if k in accepted}

    passes = [quant_pass_class(method)(x, y=y, **constructor_arguments(quant_pass_class(method)), **params) for method, params in parsed]
    metrics = PruneContext(x, y)
    metrics.set_reference(model)
    deviations = PruneContext(x, None)  # how far the outputs move, whatever the labels say
    deviations.set_reference(model)
    records = []
    for quant_pass in passes:
        elapsed = timer()
        before = metrics.evaluate(model)
        transformed = model.transform(quant_pass)
        record = quant_pass.record
        if record.changed:  # an unchanged model is handed back as it was (not even re-cleaned)
            model = transformed
        after = metrics.evaluate(model) if record.changed else before
        moved = deviations.deviation(model)
        if moved is not None:
            record.notes.append(f"outputs moved by {moved * 100:.2f}% (relative RMS against the unquantized model)")
        records.append(
            {
                "name": quant_pass.method,
                "params": quant_pass.params,
                "seconds": elapsed(),
                "metric": metrics.metric,
                "accuracy_before": before,
                "accuracy_after": after,
                "output_deviation": moved,
                "mode": record.mode,
                "changed": record.changed,
                "layers": record.layers,
                "quantizers": record.quantizers,
                "notes": notes + record.notes,
                **record.extra,
            }
        )
        notes = []
    return model, records
