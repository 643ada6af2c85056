"""Figures as notebook outputs: the live plotly figure and a static PNG in one output, and the quiet
fallback (one line) where kaleido or a browser is missing."""

import base64
import sys
import time
import types

import plotly.graph_objects as go
import pytest
from test_views import make_record

from sdft_kit import figure_output, views
from sdft_kit.figure_output import PLOTLY_MIME, STATIC_SCALE, STATIC_WIDTH, plotly_bundle, png_size, stack_png


def test_plotly_bundle_without_png_draws_with_or_without_the_plotly_extension():
    fig = go.Figure(go.Bar(x=[1, 2], text=["</script>", "x"]), layout=dict(height=222, title="a <b>bar</b>"))
    data, metadata = plotly_bundle(fig)
    assert data[PLOTLY_MIME]["data"][0]["text"] == ["</script>", "x"]  # the spec Jupyter's extension draws
    page = data["text/html"]
    assert page.count("</script>") == 1  # a "</script>" in the data does not cut the fallback's script short
    assert 'style="min-height:222px"' in page and "Plotly.newPlot" in page and "script.onload = draw" in page
    assert "image/png" not in data and "<img" not in page and metadata == {}
    assert data["text/plain"] == "<Figure: a bar>"


def test_a_figure_carries_a_png_of_its_own_size_in_the_same_output(static_images):
    fig = views.token_strip(make_record())
    data, metadata = plotly_bundle(fig, static=True)
    png = base64.b64decode(data["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_size(png) == (STATIC_WIDTH * STATIC_SCALE, fig.layout.height * STATIC_SCALE)
    assert metadata == {"image/png": {"width": STATIC_WIDTH, "height": fig.layout.height}}
    # the HTML fallback holds the same PNG, which plotly.js replaces where it runs (Colab, nbconvert online)
    assert data["text/html"].count("<img ") == 1 and data["image/png"] in data["text/html"]
    assert data[PLOTLY_MIME]["data"][0]["text"] == list(fig.data[0].text)  # the live one is still there


def test_stacked_figures_make_one_png_as_tall_as_their_sum(static_images):
    record = make_record()
    parts = [views.curves([record]), views.token_strip(record), views.token_detail(record, 0)]
    started = time.perf_counter()
    png = stack_png(parts, "step 1/3 · SDFT · loss 0.5 < remaining 00:04")
    seconds = time.perf_counter() - started
    assert png_size(png) == (STATIC_WIDTH * STATIC_SCALE, (36 + sum(f.layout.height for f in parts)) * STATIC_SCALE)
    assert seconds < 30, f"four renders took {seconds:.1f} s"


def fresh_renderer(monkeypatch):
    renderer = figure_output._Renderer()
    monkeypatch.setattr(figure_output, "renderer", renderer)
    return renderer


def test_without_kaleido_figures_stay_live_and_one_line_says_so(monkeypatch, capsys):
    fresh_renderer(monkeypatch)
    monkeypatch.setitem(sys.modules, "kaleido", None)  # `import kaleido` raises ImportError
    fig = views.curves([make_record()])
    assert figure_output.static_png(fig) is None
    data, _ = plotly_bundle(fig, static=True)
    assert "image/png" not in data and PLOTLY_MIME in data
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["sdft-kit: figures are live only, with no static PNG copy for saved notebooks, nbconvert and "
                     "GitHub: kaleido is not installed (pip install 'kaleido>=1')."]


def test_a_missing_browser_or_the_switch_turns_pngs_off(monkeypatch, capsys):
    renderer = fresh_renderer(monkeypatch)
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")
    assert "no Chrome or Chromium found at BROWSER_PATH=/nonexistent/chromium" in renderer.unavailable()
    assert figure_output.static_png(go.Figure()) is None and figure_output.static_png(go.Figure()) is None
    assert len(capsys.readouterr().out.splitlines()) == 1  # said once, not per figure
    monkeypatch.setenv(figure_output.SWITCH, "0")
    quiet = fresh_renderer(monkeypatch)
    assert figure_output.static_png(go.Figure()) is None and quiet.unavailable() == f"{figure_output.SWITCH}=0"
    assert capsys.readouterr().out == ""  # switched off on purpose: nothing to say


def test_a_render_that_hangs_turns_pngs_off_after_the_timeout(monkeypatch, capsys):
    renderer = fresh_renderer(monkeypatch)
    hung = types.SimpleNamespace(start_sync_server=lambda **kwargs: None,
                                 calc_fig_sync=lambda *args, **kwargs: time.sleep(30))
    monkeypatch.setitem(sys.modules, "kaleido", hung)
    monkeypatch.setattr(renderer, "unavailable", lambda: renderer.off)
    monkeypatch.setattr(figure_output, "RENDER_TIMEOUT", 0.5)
    started = time.perf_counter()
    assert figure_output.static_png(go.Figure()) is None
    assert time.perf_counter() - started < 5
    assert renderer.off == "rendering failed (TimeoutError: no image after 0.5 s)"
    assert figure_output.static_png(go.Figure()) is None  # off for the rest of the process: no second wait
    assert capsys.readouterr().out.count("\n") == 1
