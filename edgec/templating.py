"""Render generated files from the Jinja2 templates in ``templates/`` (never from string pasting)."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


def render(template_name: str, **context) -> str:
    """Render ``templates/<template_name>`` with ``context``; undefined names are an error."""
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template(template_name).render(**context)
