"""HTML from Jinja2 templates: one environment, one escaping and one table macro for every page.

The labeling app's pages (``label/templates``) and the report (``report/templates``) are rendered here;
each layer's folder comes first on the search path and ``core/templates`` (the shared ``table.html``)
after it. Autoescaping is on for ``.html`` templates: every value from the run (prompts, model and
labeler names, paths) is escaped unless it is :class:`markupsafe.Markup` (HTML built by a template or
a macro). ``.css`` and ``.js`` templates are static text included verbatim.

Escaping is the standard library's ``html.escape(quote=True)`` (``&quot;``, ``&#x27;``), as the pages
have always written it, rather than markupsafe's ``&#34;``: the same safety, and the same bytes for
whoever searches a page for an escaped prompt.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_eval_context, select_autoescape
from markupsafe import Markup

TEMPLATES = Path(__file__).parent / "templates"


def escape(value: Any) -> Markup:
    """``value`` as safe HTML: Markup (anything with ``__html__``) as it is, the rest ``html.escape``d."""
    if hasattr(value, "__html__"):
        return Markup(value.__html__())
    return Markup(html.escape(str(value), quote=True))


@pass_eval_context
def _finalize(eval_ctx, value: Any) -> Any:
    # Runs on every {{ ... }} before autoescaping; Markup passes the autoescape unchanged.
    return escape(value) if eval_ctx.autoescape else value


@cache
def environment(templates: Path) -> Environment:
    """The Jinja2 environment of a layer's ``templates`` folder (then the shared ``core/templates``)."""
    return Environment(
        loader=FileSystemLoader([str(templates), str(TEMPLATES)]),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True),
        finalize=_finalize,
        undefined=StrictUndefined,  # a name missing from the context is an error, not an empty string
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(templates: Path, name: str, **context: Any) -> str:
    """Template ``name`` of ``templates`` rendered with ``context``."""
    return environment(templates).get_template(name).render(**context)


def macros(templates: Path, name: str) -> Any:
    """The macros of template ``name`` as a module: ``macros(T, "x.html").m(...)`` returns Markup."""
    return environment(templates).get_template(name).module


def table(header: list[Any], rows: list[list[Any]], cls: str = "") -> Markup:
    """The shared table (``core/templates/table.html``) from Python: header cells, rows of cells."""
    return macros(TEMPLATES, "table.html").table(header, rows, cls)
