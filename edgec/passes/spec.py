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
