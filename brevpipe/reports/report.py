"""A job's report: charts, a pivot summary, thumbnail atlases and one self-contained HTML file.

``report.html`` needs no network: Vega, Vega-Lite and vega-embed are inlined (the bundle comes
from vl-convert-python, which ships them), images are inlined as data URLs.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import vl_convert


def pivot(samples: pd.DataFrame, rows: Sequence[str], cols: Sequence[str]) -> dict[str, Any]:
    """Counts of the sample table by ``rows`` x ``cols`` fields, as JSON-ready data."""
    table = samples.copy()
    if "category" in table:
        table["category"] = table["category"].map(lambda c: "+".join(c))
    counts = pd.crosstab([table[r] for r in rows], [table[c] for c in cols])
    return {
        "rows": list(rows),
        "cols": list(cols),
        "row_keys": [list(k) if isinstance(k, tuple) else [k] for k in counts.index],
        "col_keys": [list(k) if isinstance(k, tuple) else [k] for k in counts.columns],
        "counts": counts.to_numpy().tolist(),
    }


@functools.cache
def javascript_bundle() -> str:
    """Vega-embed, Vega-Lite and Vega in one script (no network), from vl-convert-python.
    vl-convert bundles it anew on every call (2 s), so it is kept in the user cache folder,
    one file per vl-convert version."""

    from brevpipe.io.cache import user_cache_folder

    kept = user_cache_folder() / "assets" / f"vega-bundle-{vl_convert.__version__}.js"
    try:
        return kept.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    bundle = vl_convert.javascript_bundle()
    try:  # written whole or not at all; a cache folder that cannot be written costs 2 s
        kept.parent.mkdir(parents=True, exist_ok=True)
        partial = kept.with_name(f"{kept.name}.tmp-{os.getpid()}")
        partial.write_text(bundle, encoding="utf-8")
        os.replace(partial, kept)
    except OSError:
        pass
    return bundle


def _table(pivot_data: dict[str, Any]) -> str:
    header = "".join(f"<th>{html.escape(' / '.join(map(str, k)))}</th>"
                     for k in pivot_data["col_keys"])  # fmt: skip
    body = "".join(
        "<tr><th>"
        + html.escape(" / ".join(map(str, key)))
        + "</th>"
        + "".join(f"<td>{v}</td>" for v in values)
        + "</tr>"
        for key, values in zip(pivot_data["row_keys"], pivot_data["counts"], strict=True)
    )
    corner = html.escape(" / ".join(pivot_data["rows"]) + " \\ " + " / ".join(pivot_data["cols"]))
    return f"<table><tr><th>{corner}</th>{header}</tr>{body}</table>"


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_html(
    *,
    title: str,
    summary: dict[str, Any],
    metrics: dict[str, float],
    charts: dict[str, dict[str, Any]],
    pivot_data: dict[str, Any],
    images: dict[str, bytes],
) -> str:
    """One HTML page: job summary, key metrics, every chart, the pivot table, the atlases."""
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in summary.items())  # fmt: skip
    scalars = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{v:.4f}</td></tr>"
        for k, v in sorted(metrics.items()) if k.count("/") == 1
    )  # fmt: skip
    divs = "".join(f'<section><div class="chart" id="chart-{i}"></div></section>'
                   for i in range(len(charts)))  # fmt: skip
    specs = json.dumps(list(charts.values())).replace("</", "<\\/")
    pictures = "".join(f"<section><h2>{html.escape(name)}</h2>{_image(png, name)}</section>"
                       for name, png in images.items())  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
section {{ margin: 2em 0; }} img {{ image-rendering: pixelated; max-width: 100%; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<table>{facts}</table>
<h2>Metrics</h2><table>{scalars}</table>
<h2>Charts</h2>{divs}
<h2>Samples by {html.escape(" / ".join(pivot_data["rows"]))} and
{html.escape(" / ".join(pivot_data["cols"]))}</h2>{_table(pivot_data)}
{pictures}
<script>{javascript_bundle()}</script>
<script>
const specs = {specs};
specs.forEach((spec, i) => vegaEmbed("#chart-" + i, spec, {{actions: false}})
  .catch(error => {{ console.error(error); document.getElementById("chart-" + i)
    .textContent = "Chart could not be drawn: " + error; }}));
</script>
</body></html>
"""


def thumbnails(images: np.ndarray, captions: Sequence[str]) -> bytes:
    """A labelled thumbnail atlas (PNG) of ``images`` (0..255)."""
    from brevpipe.data.visual import preview_png

    return preview_png(np.asarray(images), list(captions))


# Class colours of mask overlays (index 0, the background, stays unpainted).
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], np.float32)


def overlay(images: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``images`` (0..255, ``[n, h, w, c]``) with each mask class painted in its colour."""
    images = np.asarray(images, np.float32)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    masks = np.asarray(masks).reshape(images.shape[:3])
    colours = PALETTE[np.where(masks > 0, (masks - 1) % (len(PALETTE) - 1) + 1, 0)]
    painted = masks[..., None] > 0
    return np.where(painted, (1 - alpha) * images + alpha * colours, images).astype(np.uint8)
