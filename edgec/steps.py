"""Where a build is: the step it runs and the node it works on, for one-line internal errors.

A bug in edgec or in a library under it (qonnx, hls4ml, TVM, onnxruntime) must not reach the user
as a traceback. The flow marks each step with :func:`step` (and loops over nodes may mark the node
with :func:`on_node`); :func:`guarded` turns any unexpected exception into an
:class:`edgec.errors.InternalError` that names the step and, where it can be told, the node:
"internal error in step canonicalize on node MatMul_3: ...; please report it with the model".
The original exception stays chained (``__cause__``) for ``edgec --debug``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
from collections.abc import Callable, Iterator
from typing import TypeVar

from edgec.errors import EdgecError, InternalError

_STEP: contextvars.ContextVar[str | None] = contextvars.ContextVar("edgec_step", default=None)
_NODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("edgec_node", default=None)
_MODEL: contextvars.ContextVar[object | None] = contextvars.ContextVar("edgec_model", default=None)

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def step(name: str, model: object | None = None) -> Iterator[None]:
    """Mark the code inside as step ``name`` (working on ``model``, a qonnx ModelWrapper or
    ModelProto, used to name the node an error mentions)."""
    tokens = (_STEP.set(name), _NODE.set(None), _MODEL.set(model if model is not None else _MODEL.get()))
    try:
        yield
    except EdgecError:
        raise
    except Exception as exc:
        if not hasattr(exc, "edgec_step"):
            exc.edgec_step = name
            exc.edgec_node = _NODE.get() or _node_mentioned(exc, _MODEL.get())
        raise
    finally:
        _MODEL.reset(tokens[2])
        _NODE.reset(tokens[1])
        _STEP.reset(tokens[0])


@contextlib.contextmanager
def on_node(name: str) -> Iterator[None]:
    """Mark the code inside as working on node ``name`` (within the current step)."""
    token = _NODE.set(name)
    try:
        yield
    except EdgecError:
        raise
    except Exception as exc:
        if not hasattr(exc, "edgec_node"):
            exc.edgec_node = name
        raise
    finally:
        _NODE.reset(token)


def enter(name: str, model: object | None = None) -> None:
    """Mark the rest of the current :func:`guarded` call as step ``name`` (on ``model``): a flat
    alternative to :func:`step` for a flow written top to bottom."""
    _STEP.set(name)
    _NODE.set(None)
    if model is not None:
        _MODEL.set(model)


def current_step() -> str | None:
    return _STEP.get()


def _graph_of(model: object | None):
    graph = getattr(model, "graph", None)
    if graph is None and hasattr(model, "model"):
        graph = getattr(model.model, "graph", None)
    return graph


def _node_mentioned(exc: BaseException, model: object | None) -> str | None:
    """A node of ``model`` the exception's message names, directly or through a tensor it produces
    or reads (qonnx and hls4ml name tensors, not nodes, in most of their errors)."""
    graph = _graph_of(model)
    if graph is None:
        return None
    text = str(exc)
    words = set(re.findall(r"[A-Za-z0-9_./:\-]+", text))
    if not words:
        return None
    for node in graph.node:
        if node.name and node.name in words:
            return node.name
    for node in graph.node:
        for tensor in list(node.output) + list(node.input):
            if tensor and tensor in words:
                return node.name or f"{node.op_type} -> {node.output[0] if node.output else '?'}"
    return None


def internal_error(exc: BaseException, fallback_step: str) -> InternalError:
    """The one-line InternalError for an unexpected exception (chained to it)."""
    where = getattr(exc, "edgec_step", None) or _STEP.get() or fallback_step
    node = getattr(exc, "edgec_node", None)
    message = " ".join(str(exc).split()) or exc.__class__.__name__
    if len(message) > 300:
        message = message[:297] + "..."
    location = f"step {where}" + (f" on node {node}" if node else "")
    error = InternalError(
        f"internal error in {location}: {exc.__class__.__name__}: {message}",
        hint="please report it with the model; `edgec --debug ...` shows the traceback",
    )
    error.step = where
    error.node = node
    error.__cause__ = exc
    return error


def guarded(fallback_step: str) -> Callable[[F], F]:
    """Decorate a public entry point so unexpected exceptions become :class:`InternalError`."""

    def wrap(function: F) -> F:
        @functools.wraps(function)
        def inner(*args, **kwargs):
            tokens = (_STEP.set(_STEP.get()), _NODE.set(_NODE.get()), _MODEL.set(_MODEL.get()))
            try:
                return function(*args, **kwargs)
            except EdgecError:
                raise
            except (KeyboardInterrupt, SystemExit, GeneratorExit):
                raise
            except (Exception, RecursionError, MemoryError) as exc:  # anything else is a bug: one line, not a traceback
                if not hasattr(exc, "edgec_node"):
                    exc.edgec_node = _NODE.get() or _node_mentioned(exc, _MODEL.get())
                raise internal_error(exc, fallback_step) from exc
            finally:
                _MODEL.reset(tokens[2])
                _NODE.reset(tokens[1])
                _STEP.reset(tokens[0])

        return inner  # type: ignore[return-value]

    return wrap
