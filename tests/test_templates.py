"""core.html: the one Jinja2 environment, escaping and table macro of the labeling pages and the report."""

import fnmatch
import tomllib
from pathlib import Path

import jinja2
import pytest
from markupsafe import Markup

from t2ialign.core import html as core_html
from t2ialign.label import pages
from t2ialign.label.auth import Account
from t2ialign.report import html as report_html

SRC = Path(core_html.__file__).parents[1]  # src/t2ialign
FOLDERS = (core_html.TEMPLATES, pages.TEMPLATES, report_html.TEMPLATES)


def test_escape_is_the_standard_librarys_and_markup_passes():
    assert core_html.escape('<a href="x">\'&') == "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;"
    assert core_html.escape(Markup("<b>ok</b>")) == "<b>ok</b>"
    assert core_html.escape(3) == "3"


def test_table_escapes_cells_unless_they_are_markup():
    out = core_html.table(["<h>", "n"], [["<script>x</script>", Markup("<b>1</b>")], [None, 2.5]], "kv")
    assert out == (
        '<table class="kv"><thead><tr><th>&lt;h&gt;</th><th>n</th></tr></thead><tbody>'
        "<tr><td>&lt;script&gt;x&lt;/script&gt;</td><td><b>1</b></td></tr><tr><td>None</td><td>2.5</td></tr>"
        "</tbody></table>"
    )
    assert 'class="' not in core_html.table(["a"], [])


def test_html_templates_autoescape_and_a_missing_name_is_an_error(tmp_path):
    (tmp_path / "t.html").write_text("{{ x }}")
    (tmp_path / "t.js").write_text("{{ x }}")
    assert core_html.render(tmp_path, "t.html", x="<i>") == "&lt;i&gt;"
    assert core_html.render(tmp_path, "t.js", x="a && b") == "a && b"  # static text: not HTML
    with pytest.raises(jinja2.UndefinedError):
        core_html.render(tmp_path, "t.html")


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f.parent.name)
def test_every_template_compiles_and_is_package_data(folder):
    env = core_html.environment(folder)
    globs = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    files = sorted(folder.iterdir())
    assert files
    for f in files:
        env.get_template(f.name)  # parses: a syntax error fails here, not on a page
        rel = f.relative_to(SRC).as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs["t2ialign"]), rel


def test_the_labeling_pages_and_the_report_share_the_table_macro():
    table1 = {"count": {"good": 33.3, "bad": None}}
    admin = pages.admin_page(Account(1, "admin", True), {"table1": table1}, 3, "n0nce")
    assert str(core_html.table(["category", "good", "bad"], [["count", "33.3", "–"]])) in admin
    report = report_html.render_report({"timings": {"pretrain": 2.0}}, Path("/tmp/run"))
    timings = [["pretrain", "2.0"], [Markup("<b>total</b>"), "2.0"]]
    assert str(core_html.table(["stage", "seconds"], timings)) in report


def test_the_pages_scripts_are_included_verbatim_with_the_nonce():
    acc = Account(1, "ann", False)
    query = {"id": 1, "prompt": "p", "A": ["/a"], "B": ["/b"]}
    page = pages.compare_page(acc, query, {"mine": 0, "complete": 0, "queries": 1}, "n0nce")
    assert '<script nonce="n0nce">' in page
    assert "!(answers.alignment && answers.fidelity)" in page  # not &amp;&amp;
    assert 'headers["Content-Type"] = "application/json"' in page  # not &quot;
    assert page.count("<script") == 1
