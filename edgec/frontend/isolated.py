"""Run a native-code check in a forked child, so a crash in it cannot take edgec down with it.

onnx.checker's full check is C++; on some malformed files (found by tests/test_fuzz.py) it dies with
a segmentation fault instead of raising. A forked child costs a few milliseconds on Linux; its
death by a signal becomes an ordinary answer the caller turns into a clear error.
"""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Outcome:
    """What the child did: ``value`` when it returned, ``error`` (type name, message) when it raised,
    ``signal`` when it died."""

    value: object = None
    error: tuple[str, str] | None = None
    signal: int | None = None


def _child(conn, function: Callable, args: tuple) -> None:
    import faulthandler
    import os

    faulthandler.disable()  # a crash here is an answer, not something to dump on the user's terminal
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        result = Outcome(value=function(*args))
    except BaseException as exc:  # report any failure to the parent, which decides what it means
        result = Outcome(error=(exc.__class__.__name__, str(exc)))
    try:
        conn.send_bytes(pickle.dumps(result))
    except Exception:  # an unpicklable value: report it as an error
        conn.send_bytes(pickle.dumps(Outcome(error=("PicklingError", "result could not be returned"))))
    conn.close()


def run_isolated(function: Callable, *args, timeout: float = 300.0) -> Outcome:
    """``function(*args)`` in a forked child; falls back to running in-process where fork is
    unavailable (or edgec itself runs in a daemonic multiprocessing worker)."""
    try:
        context = multiprocessing.get_context("fork")
        if multiprocessing.current_process().daemon:  # a daemonic worker (multiprocessing.Pool) may not fork
            raise ValueError("no children from a daemonic process")
    except ValueError:
        try:
            return Outcome(value=function(*args))
        except Exception as exc:
            return Outcome(error=(exc.__class__.__name__, str(exc)))
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child, function, args), daemon=True)
    process.start()
    child.close()
    received = None
    if parent.poll(timeout):
        try:
            received = pickle.loads(parent.recv_bytes())
        except (EOFError, OSError):
            received = None
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join()
        return Outcome(error=("TimeoutError", f"no answer within {timeout:g} s"))
    if received is None:
        code = process.exitcode or 0
        return Outcome(signal=-code if code < 0 else None, error=None if code < 0 else ("ChildError", f"exit code {code}"))
    return received
