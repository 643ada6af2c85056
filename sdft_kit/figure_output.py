"""A plotly figure as a notebook output that survives saving: live where plotly.js runs, a PNG elsewhere.

    from sdft_kit.views import show
    show(views.curves(records))     # instead of leaving the figure as a cell's last value

One output carries three forms of the figure, and each front end picks the one it can draw:

    application/vnd.plotly.v1+json   JupyterLab, Notebook 7, VS Code: the live, hoverable figure
    text/html                        Colab and nbconvert's HTML: plotly.js from the CDN replaces the
                                     PNG inside it when it loads; offline, or where scripts are
                                     stripped (GitHub), the PNG stays
    image/png                        exports that take no HTML (LaTeX/PDF), and any viewer that
                                     prefers images

The PNG is rendered by kaleido (>= 1), which drives a Chrome or Chromium found on the machine
(Debian: `apt-get install chromium`). The browser starts once per process (5-7 s on a busy 2-core
machine) and stays open; each figure then takes about 0.5 s (docs/views.md). Where kaleido or a browser is missing (Colab has no
Chrome), figures stay live only and one line says so. `SDFT_KIT_STATIC_FIGURES=0` turns the
PNGs off.
"""

from __future__ import annotations

import base64
import html
import json
import os
import queue
import struct
import threading
import uuid

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs_version

PLOTLY_MIME = "application/vnd.plotly.v1+json"
PLOTLY_CDN = f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"
STATIC_WIDTH = 960   # px: the figures set their height, not their width; wide enough for an 80-character strip
STATIC_SCALE = 2     # device pixels per layout pixel: sharp on high-DPI screens and in print
RENDER_TIMEOUT = 60  # s for one image, the browser's start included; past it PNGs are turned off
SWITCH = "SDFT_KIT_STATIC_FIGURES"

# Loads plotly.js before plotting: a plain <script src> races the plotting code when Colab
# puts HTML inside an ipywidgets Output, which leaves a blank chart ("Plotly is not defined").
# The static image inside the div is what shows until then, or for good where no script runs.
DRAW = """<div id="{id}" style="min-height:{height}px">{static}</div>
<script>(function () {{
  var fig = {fig};
  function draw() {{
    var div = document.getElementById("{id}");
    div.innerHTML = "";
    Plotly.newPlot(div, fig.data, fig.layout, {{responsive: true}});
  }}
  if (window.Plotly) {{ draw(); return; }}
  var script = document.createElement("script");
  script.src = "{cdn}"; script.onload = draw; document.head.appendChild(script);
}})();</script>"""


class _Renderer:
    """kaleido's browser, started on first use and kept for the process; `off` says why there is none."""

    def __init__(self):
        self.started = False
        self.off: str | None = None
        self.told = False

    def unavailable(self) -> str | None:
        """Why no PNG can be made here (None: kaleido and a browser are there), without starting anything."""
        if os.environ.get(SWITCH, "1") == "0":
            return f"{SWITCH}=0"
        if self.off:
            return self.off
        try:
            import kaleido
            from choreographer.browsers import Chromium
        except ImportError:
            return "kaleido is not installed (pip install 'kaleido>=1')"
        if not callable(getattr(kaleido, "start_sync_server", None)):
            return "kaleido >= 1 is needed (pip install -U 'kaleido>=1')"
        browser = os.environ.get("BROWSER_PATH") or Chromium.find_browser(skip_local=False)
        if not browser or not os.path.isfile(browser):
            return (f"no Chrome or Chromium found{f' at BROWSER_PATH={browser}' if browser else ''} "
                    "(Debian: apt-get install chromium; elsewhere: plotly_get_chrome)")
        return None

    def png(self, fig: go.Figure, width: int) -> bytes | None:
        """The figure as PNG bytes, or None (after one line saying why, the first time)."""
        reason = self.unavailable()
        if reason is None:
            try:
                return self._render(fig, width)
            except Exception as err:  # a browser that would not start or a render that failed: live figures only
                first_line = (str(err).splitlines() or [""])[0]
                self.off = reason = f"rendering failed ({type(err).__name__}: {first_line})"
        if not self.told and reason != f"{SWITCH}=0":
            self.told = True
            print(f"sdft-kit: figures are live only, with no static PNG copy for saved notebooks, nbconvert and "
                  f"GitHub: {reason}.")
        return None

    def _render(self, fig: go.Figure, width: int) -> bytes:
        import kaleido

        if not self.started:
            # mathjax off: it would be fetched from a CDN, and no figure here uses LaTeX
            kaleido.start_sync_server(n=1, timeout=RENDER_TIMEOUT, mathjax=False, silence_warnings=True)
            self.started = True
        options = dict(format="png", width=width, height=fig.layout.height or 450, scale=STATIC_SCALE)
        # A daemon thread with a deadline: kaleido's server waits for ever if its browser died on start.
        answer: queue.Queue = queue.Queue(maxsize=1)

        def render():
            try:
                answer.put(kaleido.calc_fig_sync(fig, opts=options))
            except Exception as err:
                answer.put(err)

        threading.Thread(target=render, daemon=True).start()
        try:
            result = answer.get(timeout=RENDER_TIMEOUT)
        except queue.Empty:
            raise TimeoutError(f"no image after {RENDER_TIMEOUT} s") from None
        if isinstance(result, Exception):
            raise result
        return result


renderer = _Renderer()


def static_png(fig: go.Figure, width: int = STATIC_WIDTH) -> bytes | None:
    """The figure as a PNG (`width` layout pixels wide, its own height, STATIC_SCALE times the pixels),
    or None where kaleido or a browser is missing (see the module's docstring)."""
    return renderer.png(fig, width)


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, read from the PNG header."""
    return struct.unpack(">II", png[16:24])


def png_bundle(png: bytes | None, alt: str) -> dict:
    """The image/png entry of a display bundle, and the <img> tag that shows it in HTML, at layout size."""
    if png is None:
        return {}
    data = base64.b64encode(png).decode("ascii")
    width, height = (size // STATIC_SCALE for size in png_size(png))
    tag = (f'<img src="data:image/png;base64,{data}" width="{width}" alt="{html.escape(alt)}" '
           f'style="max-width:100%;height:auto">')
    return {"image/png": data, "metadata": {"image/png": {"width": width, "height": height}}, "img": tag}


def figure_title(fig: go.Figure) -> str:
    """The figure's title as plain text (for alt text and text/plain), or a generic name."""
    title = fig.layout.title.text if fig.layout.title and fig.layout.title.text else "plotly figure"
    return html.unescape(title.replace("<b>", "").replace("</b>", "").replace("<br>", " "))


def plotly_bundle(fig: go.Figure, static: bool = False) -> tuple[dict, dict]:
    """(data, metadata) of one display output that draws the figure in any front end (see above).

    `static` adds the PNG (a browser render, ~0.3 s): for figures that stay in the notebook,
    not for the dashboard's per-step redraws."""
    spec = fig.to_json()  # writes "<" as \u003c, so a token "</script>" cannot end the script below
    image = png_bundle(static_png(fig), figure_title(fig)) if static else {}
    page = DRAW.format(id=f"sdft-{uuid.uuid4().hex}", height=fig.layout.height or 450, fig=spec, cdn=PLOTLY_CDN,
                       static=image.get("img", ""))
    data = {PLOTLY_MIME: json.loads(spec), "text/html": page, "text/plain": f"<Figure: {figure_title(fig)}>"}
    if image:
        data["image/png"] = image["image/png"]
    return data, image.get("metadata", {})


def show(fig: go.Figure) -> None:
    """Display a figure live, with a static PNG beside it in the same output (see the module's docstring)."""
    from IPython.display import display

    data, metadata = plotly_bundle(fig, static=True)
    display(data, metadata=metadata, raw=True)


def stack_png(parts: list[go.Figure], heading: str, width: int = STATIC_WIDTH) -> bytes | None:
    """Several figures rendered one below the other as one PNG, under a line of plain text `heading`.

    Each figure is rendered on its own and placed as an image in an empty figure, which is
    rendered once more: one picture of a whole dashboard, with nothing but plotly and kaleido."""
    pngs = [static_png(fig, width) for fig in parts]
    if any(png is None for png in pngs):
        return None
    heading_px = 36
    heights = [png_size(png)[1] // STATIC_SCALE for png in pngs]
    total = heading_px + sum(heights)
    images, top = [], heading_px
    for png, height in zip(pngs, heights):
        images.append(dict(source="data:image/png;base64," + base64.b64encode(png).decode("ascii"),
                           xref="paper", yref="paper", x=0, y=1 - top / total, sizex=1, sizey=height / total,
                           xanchor="left", yanchor="top", sizing="stretch", layer="above"))
        top += height
    sheet = go.Figure(layout=dict(
        width=width, height=total, margin=dict(l=0, r=0, t=0, b=0), images=images, template="plotly_white",
        xaxis=dict(visible=False), yaxis=dict(visible=False),
        annotations=[dict(text=html.escape(heading), x=0.01, y=1 - 6 / total, xref="paper", yref="paper",
                          xanchor="left", yanchor="top", showarrow=False, font=dict(size=15))]))
    return static_png(sheet, width)
