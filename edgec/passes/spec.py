"""Parsing of pass specs given on the command line: ``METHOD[:key=value,...]``."""

from __future__ import annotations

from edgec.errors import OptionError


def spec_value(text: str):
    """A spec value as bool, int, float or string."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_spec(spec: str | tuple[str, dict], flag: str, example: str) -> tuple[str, dict]:
    """``"fixed:bits=8,per=channel"`` -> ``("fixed", {"bits": 8, "per": "channel"})``.

    A bare value after ``key=value`` continues that key's list: ``"mixed:bits=8,6,4,max_drop=1"``
    -> ``{"bits": [8, 6, 4], "max_drop": 1}``. ``flag`` and ``example`` word the error message.
    """
    if isinstance(spec, tuple):
        method, params = spec
        return method, dict(params)
    method, _, rest = spec.partition(":")
    params: dict = {}
    last: str | None = None
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep and last is not None:
            previous = params[last]
            params[last] = [*(previous if isinstance(previous, list) else [previous]), spec_value(item)]
            continue
        if not sep or not key.strip():
            raise OptionError(f"{flag} {spec}: '{item}' is not key=value", hint=f"write e.g. {flag} {example}")
        last = key.strip()
        params[last] = spec_value(value)
    return method.strip(), params


def method_class(methods: dict[str, str], method: str, kind: str) -> type:
    """The pass class registered as ``"module:Class"`` for ``method`` (imported on use)."""
    import importlib

    if method not in methods:
        raise OptionError(f"unknown {kind} method '{method}'", hint=f"use one of: {', '.join(methods)}")
    module, _, cls = methods[method].partition(":")
    return getattr(importlib.import_module(module), cls)


def with_defaults(flag: str, method: str, accepted: dict, given: dict) -> dict:
    """``given`` over the non-None defaults in ``accepted``; unknown names raise OptionError."""
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise OptionError(f"{flag} {method}: unknown parameter(s) {', '.join(unknown)}", hint=f"{method} takes: {', '.join(accepted)}")
    return {**{k: v for k, v in accepted.items() if v is not None}, **given}
