"""One exception hierarchy for edgec; the CLI maps each class to a message and an exit code.

Every user-facing failure is an :class:`EdgecError` subclass carrying a distinct exit code, so
scripts can tell a missing file from a model that does not fit the board without parsing text.
"""

from __future__ import annotations


class EdgecError(Exception):
    """Base class: a problem the user can act on (no traceback is shown for these)."""

    exit_code = 1
    hint = ""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint

    def user_message(self) -> str:
        """One line for stderr: the problem and, where known, what to do about it."""
        text = str(self)
        return f"{text} ({self.hint})" if self.hint else text


class VerificationError(EdgecError):
    """The C simulation disagrees with the reference more than the threshold allows."""

    exit_code = 3


class ModelNotFoundError(EdgecError):
    exit_code = 10


class NotOnnxError(EdgecError):
    exit_code = 11


class CorruptModelError(EdgecError):
    """The file looks like ONNX but is truncated or damaged."""

    exit_code = 12


class UnsupportedOpsError(EdgecError):
    """The model contains operators edgec cannot lower (all of them are listed at once)."""

    exit_code = 13


class DynamicShapeError(EdgecError):
    exit_code = 14


class TargetFitError(EdgecError):
    """The design does not fit the target even at the largest reuse factor."""

    exit_code = 15


class OutputExistsError(EdgecError):
    exit_code = 16


class DataError(EdgecError):
    """A data file (npz/npy) is missing, malformed or does not match the model's input."""

    exit_code = 17


class UnsafeModelError(EdgecError):
    """The model refers to external data outside its own folder."""

    exit_code = 18


class UnknownTargetError(EdgecError):
    exit_code = 19


class ToolchainError(EdgecError):
    """hls4ml, g++ or another tool failed on a model edgec accepted."""

    exit_code = 20


class BuildFolderError(EdgecError):
    """A folder given to `edgec simulate` is not an edgec build."""

    exit_code = 21


class OptionError(EdgecError):
    """An option value edgec cannot use (a malformed --precision, an unknown --part...)."""

    exit_code = 22


class CrossCompilerError(ToolchainError):
    """The board's cross compiler is missing, or it produced a library for another machine."""


class BundleError(EdgecError):
    """The board bundle (deploy/) cannot be made: the target has no FPGA or no Zynq processing
    system to drive it, or a segment does not match its hls4ml project or TVM library."""

    exit_code = 23


class InvalidModelError(CorruptModelError):
    """The file parses as ONNX but breaks the ONNX specification (onnx.checker's full check)."""

    exit_code = 24


class InternalError(EdgecError):
    """An unexpected failure inside edgec or a library under it: a bug to report, shown as one line
    naming the step and node (the traceback only with ``edgec --debug``)."""

    exit_code = 70  # EX_SOFTWARE (sysexits.h): internal software error
