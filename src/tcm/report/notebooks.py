"""The executed report notebook (its sections, shown in order) and HTML renders of executed
notebooks for MLflow."""

from __future__ import annotations

from pathlib import Path

from tcm.atomic import write_text
from tcm.jupyter_imports import skip_iri_grammar

# The executed report notebook's sections: heading -> the tables (stems) and figures (stem prefixes) under it,
# in order; anything else written goes under the last heading.
NOTEBOOK_SECTIONS = (
    ("The paper's claims, checked", ("claims",)),
    ("Runs (mean ± sd over seeds, and seed by seed)", ("runs", "runs_per_seed", "per_seed", "opis_vs_recall")),
    ("Without vs with TCM (paired over seeds)", ("tcm_comparison", "tcm_comparison_per_seed", "tcm_effect")),
    ("One global threshold: per-class FAR and FRR", ("thresholds", "class_rates")),
    ("Per-class utility vs threshold", ("utility_",)),
    ("Similarities and embeddings", ("similarities_", "embeddings_")),
    ("Training curves", ("training_curves",)),
    ("Results tables per data set", ()),
)


def notebook_sections(written: dict[str, list[Path]]) -> list[tuple[str, list[Path]]]:
    """The Markdown tables and figures of :func:`run` grouped under :data:`NOTEBOOK_SECTIONS` (empty
    sections left out)."""
    items = [p for p in written["tables"] if p.suffix == ".md"] + list(written["figures"])

    def section(p: Path) -> int:
        for i, (_, stems) in enumerate(NOTEBOOK_SECTIONS):
            if any(p.stem == s or (s.endswith("_") and p.stem.startswith(s)) for s in stems):
                return i
        return len(NOTEBOOK_SECTIONS) - 1

    groups = [(heading, [p for p in items if section(p) == i]) for i, (heading, _) in enumerate(NOTEBOOK_SECTIONS)]
    return [(heading, paths) for heading, paths in groups if paths]


def show(written: dict[str, list[Path]]) -> None:
    """The report in the executed notebook: a heading per section, then its tables and figures."""
    from IPython.display import Image, Markdown, display

    for heading, paths in notebook_sections(written):
        display(Markdown(f"## {heading}"))
        for p in paths:
            display(Markdown(p.read_text()) if p.suffix == ".md" else Image(filename=str(p)))


# nbconvert's template gives images no alt text (and warns once per notebook): an image's own
# (IPython's Image(alt=...)) or a line naming the cell that drew it.
_ALT_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- macro with_alt(html, output, cell, mime) -%}
{%- set alt = output.metadata.get(mime, {}).get('alt')
    or 'figure drawn by the cell: ' ~ (cell.source.splitlines()[:1] | join('')) -%}
{{ html | replace('<img src=', '<img alt="' ~ (alt | escape_html) ~ '" src=', 1) }}
{%- endmacro -%}
{% block data_png scoped %}{{ with_alt(super(), output, cell, 'image/png') }}{% endblock data_png %}
{% block data_jpg scoped %}{{ with_alt(super(), output, cell, 'image/jpeg') }}{% endblock data_jpg %}
"""


def notebook_html(notebook: Path, out_dir: Path) -> Path | None:
    """An HTML render of an executed notebook (what the MLflow UI can show), or None if it is missing."""
    if not notebook.is_file():
        return None
    skip_iri_grammar()
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(extra_loaders=[DictLoader({"tcm.html.j2": _ALT_TEMPLATE})], template_file="tcm.html.j2")
    html, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    out = out_dir / notebook.with_suffix(".html").name
    write_text(out, html)
    return out
