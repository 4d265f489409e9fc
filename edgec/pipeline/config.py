"""``BuildConfig``: everything that decides a design, resolved and validated once (from the command
line or the Python API) and handed down: the board and its FPGA device, the user's design options,
the type width, the calibration sample count, the pass specs and where nodes run. Nothing below
the pipeline re-derives any of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from edgec.cost.device import Device
from edgec.errors import OptionError
from edgec.passes.partition import PlaceNodes
from edgec.pipeline.design import DesignOptions, target_for_device
from edgec.targets import Target, load_target

MIN_WIDTH, MAX_WIDTH = 2, 64  # calibrated fixed-point widths (edgec.fixed_point.parse_fixed's range, less the sign)


@dataclass(frozen=True)
class BuildConfig:
    """The one configuration of a build or an estimate (see ``make``)."""

    target: Target  # the board, as loaded from targets/
    device: Device | None  # its FPGA with the options applied (part, clock, backend); None on a CPU-only board
    fpga_target: Target  # the board with that device's part, family and clock: what the configurator fits
    options: DesignOptions = field(default_factory=DesignOptions)
    width: int = 16
    random_samples: int = 200
    prune: tuple = ()
    quantize: tuple = ()
    place: str = "auto"
    placement: Mapping[str, str] | None = None

    @classmethod
    def make(
        cls,
        target: str = "pynq-z2",
        options: DesignOptions | None = None,
        io_type: str | None = None,
        width: int = 16,
        random_samples: int = 200,
        prune: list | None = None,
        quantize: list | None = None,
        place: str = "auto",
        placement: Mapping[str, str] | None = None,
    ) -> BuildConfig:
        """Check every option and resolve the target and its FPGA device once. ``io_type`` is a
        shortcut for ``options.io_type``. Raises OptionError / UnknownTargetError."""
        options = options or DesignOptions()
        if io_type is not None and options.io_type is None:
            options = replace(options, io_type=io_type)
        options.check()
        if isinstance(width, bool) or not isinstance(width, int) or not MIN_WIDTH <= width <= MAX_WIDTH:
            raise OptionError(f"width must be an integer from {MIN_WIDTH} to {MAX_WIDTH}, not {width!r}")
        if isinstance(random_samples, bool) or not isinstance(random_samples, int) or random_samples < 1:
            raise OptionError(f"random_samples must be a positive integer, not {random_samples!r}")
        board = load_target(target)
        placer(board, place, placement)  # validates --place and the per-node overrides against the board
        device = options.device(board) if board.has_fpga else None
        fpga_target = target_for_device(board, device) if device is not None else board
        return cls(
            board,
            device,
            fpga_target,
            options,
            width,
            random_samples,
            tuple(prune or ()),
            tuple(quantize or ()),
            place,
            dict(placement) if placement else None,
        )

    def placer(self) -> PlaceNodes:
        """The placement pass of this configuration."""
        return placer(self.target, self.place, self.placement)

    def without_passes(self, random_samples: int | None = None) -> BuildConfig:
        """The same design configuration with no pruning or quantization specs (to cost a model
        the passes already produced)."""
        return replace(self, prune=(), quantize=(), random_samples=random_samples or self.random_samples)


def placer(board: Target, place: str, placement: Mapping[str, str] | None) -> PlaceNodes:
    return PlaceNodes(place, dict(placement or {}), has_fpga=board.has_fpga, has_cpu=board.cpu is not None, target_name=board.name)
