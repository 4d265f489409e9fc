"""Render generated files from the Jinja2 templates in ``templates/`` (never from string pasting)."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


def render(template_name: str, **context) -> str:
    """Render ``templates/<template_name>`` with ``context``; undefined names are an error.

    ``*.html.j2`` (and ``.htm.j2``/``.xml.j2``/``.svg.j2``) templates are autoescaped; source-code templates are not.
    """
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=select_autoescape(enabled_extensions=("html.j2", "htm.j2", "xml.j2", "svg.j2"), default_for_string=False, default=False),
    )
    return env.get_template(template_name).render(**context)
