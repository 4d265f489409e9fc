"""Load a build folder's compiled hls4ml C-simulation library and run it with ctypes.

The library exports ``<project>_double(double *in, double *out)`` (hls4ml's bridge); this is what
hls4ml's own ``predict`` calls, reopened here so a build folder can be simulated later without
re-running the conversion.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgec.errors import BuildFolderError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def captured_c_stderr():
    """Send what C++ code writes to stderr (ap_fixed warnings) to the log, not the user's terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            if text.strip():
                lines = text.strip().splitlines()
                log.info("C simulation printed %d line(s) to stderr, first: %s", len(lines), lines[0][:200])


class CSimulation:
    def __init__(self, library: Path, project_name: str, n_in: int, n_out: int) -> None:
        self.library = Path(library)
        self.n_in, self.n_out = n_in, n_out
        self._lib = ctypes.cdll.LoadLibrary(str(self.library.resolve()))
        self._fn = getattr(self._lib, f"{project_name}_double")
        self._fn.restype = None
        self._fn.argtypes = [np.ctypeslib.ndpointer(ctypes.c_double, flags="C_CONTIGUOUS")] * 2

    @classmethod
    def from_project(cls, project_dir: Path, project_name: str, n_in: int, n_out: int) -> CSimulation:
        libs = sorted((Path(project_dir) / "firmware").glob(f"{project_name}-*.so"), key=lambda p: p.stat().st_mtime)
        if not libs:
            raise BuildFolderError(f"{project_dir}: no compiled C-simulation library in firmware/", hint="rebuild with `edgec build`")
        return cls(libs[-1], project_name, n_in, n_out)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run every sample of ``x`` (canonical layout, any shape with batch first)."""
        flat = np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float64)
        if flat.shape[1] != self.n_in:
            raise BuildFolderError(f"input has {flat.shape[1]} values per sample, the design takes {self.n_in}")
        out = np.zeros((flat.shape[0], self.n_out), dtype=np.float64)
        with captured_c_stderr():
            for i in range(flat.shape[0]):
                row_in = np.ascontiguousarray(flat[i])
                row_out = np.zeros(self.n_out, dtype=np.float64)
                self._fn(row_in, row_out)
                out[i] = row_out
        return out
