"""The heterogeneous simulator: a partitioned design's segments run in order on the host.

FPGA segments run hls4ml's C simulation (g++-compiled, bit-accurate fixed point); CPU segments run
the TVM host build of the same library that is cross-built for the board. At each seam the values
pass as float32 in the model's own layout (NCHW for convolutional models): an FPGA segment
transposes its input to channels-last and its output back (its ``input_perm``/``output_perm``), and
its C simulation converts floats to and from its fixed-point input and output types exactly as the
board's driver does (the values a CPU segment hands over are rounded once, by the FPGA's input type).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgec.runtime.csim import CSimulation


def to_canonical_layout(x: np.ndarray, input_perm: list[int] | None) -> np.ndarray:
    """The user's layout (batch first) -> the FPGA segment's (channels-last) layout."""
    return np.ascontiguousarray(x.transpose(input_perm)) if input_perm else x


def from_canonical_layout(y: np.ndarray, canonical_out_shape: list[int], output_perm: list[int] | None) -> np.ndarray:
    """An FPGA segment's flat output -> the user's layout, flattened per sample."""
    if output_perm:
        y = y.reshape(y.shape[0], *canonical_out_shape[1:]).transpose(output_perm)
    return y.reshape(y.shape[0], -1)


@dataclass
class SegmentRunner:
    """One segment of a build folder, ready to run (see ``segment_meta`` in edgec.pipeline.build)."""

    meta: dict
    folder: Path

    def __post_init__(self) -> None:
        self._impl = None

    @property
    def placement(self) -> str:
        return self.meta["placement"]

    def _load(self):
        if self._impl is None:
            if self.placement == "fpga":
                m = self.meta
                self._impl = CSimulation.from_project(self.folder / m["project_dir"], m["project_name"], m["n_in"], m["n_out"])
            else:
                from edgec.backends.tvm import HostModule

                self._impl = HostModule.load(self.folder / self.meta["library_meta"])
        return self._impl

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run ``x`` (N, *input sample shape) in the model's layout; returns (N, *output sample shape)."""
        m = self.meta
        x = np.asarray(x, dtype=np.float32).reshape(x.shape[0], *m["input_shape"][1:])
        impl = self._load()
        if self.placement == "fpga":
            y = impl.run(to_canonical_layout(x, m["input_perm"]))
            y = from_canonical_layout(y, m["canonical_output_shape"], m["output_perm"])
        else:
            y = impl.run(x)
        return np.asarray(y, dtype=np.float32).reshape(x.shape[0], *m["output_shape"][1:])


def run_chain(runners: list[SegmentRunner], x: np.ndarray, keep: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run the segments in order; returns the final output flattened per sample and, with ``keep``,
    every segment's output (for locating where a design diverges from the reference)."""
    outputs = []
    value = np.asarray(x, dtype=np.float32)
    for runner in runners:
        value = runner.run(value)
        if keep:
            outputs.append(value)
    return value.reshape(value.shape[0], -1), outputs
