"""What a pass that optimises for hardware cost is handed: the design its model would become, as
the build would make and cost it. The pipeline implements it (``edgec.pipeline.flow.DesignCoster``,
made from the build's one configuration); passes only see this protocol, so they never import the
flow and what they optimise is what the build reports."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from edgec.errors import OptionError

if TYPE_CHECKING:
    import numpy as np
    from qonnx.core.modelwrapper import ModelWrapper

    from edgec.cost.device import Device
    from edgec.cost.layer import LayerConfig
    from edgec.targets import Target


class DesignCosting(Protocol):
    """The build's target (``target``: the board; ``device``: its FPGA as configured, None on a
    CPU-only board), where layers run (``placement``: layer name -> fpga | cpu, as the user pinned
    them), and the design of a model under the build's options."""

    target: Target
    device: Device | None
    placement: dict[str, str] | None

    def planned_layers(self, model: ModelWrapper, x: np.ndarray) -> list[LayerConfig]:
        """The model's Dense/Conv layers, in order, as the cost models see them in the design the
        build would plan for the whole model (types, strategy and reuse factor fitted to the board)."""
        ...

    def totals(self, model: ModelWrapper, x: np.ndarray) -> dict:
        """The design's totals as the build would report them for ``model`` calibrated on ``x``:
        ``lut``, ``dsp``, ``ff``, ``bram18``, ``latency_us``, ``energy_uj``."""
        ...


_default_factory: Callable[[str], DesignCosting] | None = None


def register_default_coster(factory: Callable[[str], DesignCosting]) -> None:
    """Register how to make the design of a board with the default options (the pipeline does,
    when it is imported: ``import edgec`` imports it), for passes used on their own."""
    global _default_factory
    _default_factory = factory


def default_coster(target: str) -> DesignCosting:
    """The design a build for ``target`` with default options would make, for a pass used on its
    own without a coster."""
    if _default_factory is None:
        raise OptionError(
            "this pass costs the design the build makes, and no design was given",
            hint="import edgec (which provides the default design) or pass coster=edgec.DesignCoster.for_target(...)",
        )
    return _default_factory(target)
