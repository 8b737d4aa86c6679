"""Writes .dvc/plots/offline.html, the page `dvc plots show` fills (.dvc/config: plots.html_template):
DVC's own page loads vega, vega-lite and vega-embed from a CDN, so its HTML shows nothing offline;
this one inlines the copies in vendor/ (npm pack vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0;
BSD-3-Clause, licences beside them). Without a {scripts} placeholder DVC adds no CDN tags.
Run from the repository root after replacing the vendored files: python .dvc/plots/make_offline_template.py"""

from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")

inline = "\n".join(f"<script>\n{(HERE / 'vendor' / name).read_text()}\n</script>" for name in SCRIPTS)
page = f"""<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- vega, vega-lite, vega-embed inlined from .dvc/plots/vendor/ (make_offline_template.py): no network -->
{inline}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""
(HERE / "offline.html").write_text(page)
