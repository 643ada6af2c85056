"""A live notebook dashboard for a training run, on ipywidgets (JupyterLab, Notebook 7, Colab).

    from sdft_kit.dashboard import watch
    dash = watch(trainer.steps())          # shows the dashboard, updates it at every step

or, to keep the loop in your hands:

    dash = Dashboard()
    dash.show()
    for record in trainer.steps():
        dash.update(record)
    dash.finish()

It shows the loss and mean-KL curves growing step by step, the latest rollout as a token
strip, and the student's and teacher's top-k at one token; a dropdown picks the colouring
metric and a slider the token. All figures come from `sdft_kit.views`. ipywidgets is
imported when a Dashboard is made, so importing this module needs only plotly.

A saved notebook keeps no widget state (JupyterLab's default), so nbconvert, GitHub and a
printout would show an empty dashboard. `finish()` (which `watch` calls when the run ends or
is stopped) therefore puts a static picture of the last state, one PNG of the status, curves,
strip and detail, into the dashboard's own output: live front ends keep drawing the widget,
the others show the picture (see `figure_output`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import plotly.graph_objects as go

from .figure_output import plotly_bundle, png_bundle, stack_png
from .records import StepRecord
from .views import METRICS, SDFT_METRICS, curves, loudest_token, metrics_for, token_detail, token_strip


def status_line(record: StepRecord) -> str:
    """The headline of a step record, as HTML: step, method, loss, mean KL, speed."""
    parts = [f"<b>step {record.get('step', '?')}/{record.get('steps', '?')}</b>", str(record.get("method", "")).upper(),
             f"loss {record['loss']:.4f}" if record.get("loss") is not None else ""]
    if record.get("mean_kl") is not None:
        parts.append(f"mean KL {record['mean_kl']:.4f}")
    seconds = (record.get("seconds") or {}).get("total")
    if seconds:
        parts.append(f"{seconds:.1f} s/step")
    if record.get("tokens"):
        parts.append(f"{record['tokens']} tokens")
    elapsed, step, steps = record.get("elapsed_s"), record.get("step"), record.get("steps")
    if elapsed and step and steps:  # as tqdm shows it: the run's mean step time so far, for the steps left
        left = f" < remaining {_clock(elapsed / step * (steps - step))}" if step < steps else ""
        parts.append(f"elapsed {_clock(elapsed)}{left}")
    return " · ".join(part for part in parts if part)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes:02d}:{seconds:02d}"


class Dashboard:
    """Curves, the latest rollout's token strip and one token's top-k, kept up to date.

    `update(record)` is a plain state update (widgets and `figures`), so it can be tested
    without a browser. `compare` is a finished run's records (e.g. SFT) to draw on the
    curves; `records` re-plots a run so far (e.g. `load_records(run_dir)`)."""

    def __init__(self, records: Iterable[StepRecord] = (), compare: list[StepRecord] | None = None):
        import ipywidgets as widgets

        self.records: list[StepRecord] = []
        self.compare = list(compare or [])
        self.figures: dict[str, go.Figure] = {}
        self.status = widgets.HTML("waiting for the first step…")
        self.metric = widgets.Dropdown(description="colour by", options=self._metric_options(SDFT_METRICS),
                                       layout=widgets.Layout(width="440px"))
        self.position = widgets.IntSlider(description="token #", min=0, max=0, disabled=True,
                                          continuous_update=False, layout=widgets.Layout(width="440px"))
        self.views = {name: widgets.Output() for name in ("curves", "strip", "detail")}
        self.widget = widgets.VBox([self.status, self.views["curves"], widgets.HBox([self.metric, self.position]),
                                    self.views["strip"], self.views["detail"]])
        self._syncing = False  # set while update() moves the controls, so they redraw once
        self._handle = None  # the display of the widget, once show() made it: finish() adds the picture to it
        self.metric.observe(self._on_control, "value")
        self.position.observe(self._on_control, "value")
        records = list(records)
        self.records.extend(records[:-1])
        if records:
            self.update(records[-1])

    @staticmethod
    def _metric_options(metrics: list[str]) -> list[tuple[str, str]]:
        return [(METRICS[m][0], m) for m in metrics]

    def update(self, record: StepRecord) -> None:
        """Add one step record: grow the curves, show its rollout, point at its loudest token."""
        self.records.append(record)
        runs = [self.records] + ([self.compare] if self.compare else [])
        self.figures["curves"] = curves(*runs)
        self.status.value = status_line(record)
        tokens = (record.get("sample") or {}).get("tokens") or []
        self._syncing = True
        options = self._metric_options(metrics_for(record))
        if list(self.metric.options) != options:
            self.metric.options = options
            self.metric.value = options[0][1]
        self.position.max = max(len(tokens) - 1, 0)
        self.position.value = loudest_token(record, self.metric.value)
        self.position.disabled = not tokens
        self._syncing = False
        self._draw_tokens()
        self._show("curves")

    def _on_control(self, change) -> None:
        if not self._syncing and self.records:
            self._draw_tokens()

    def _draw_tokens(self) -> None:
        record = self.records[-1]
        self.figures["strip"] = token_strip(record, self.metric.value, selected=self.position.value)
        self.figures["detail"] = token_detail(record, self.position.value)
        self._show("strip")
        self._show("detail")

    def _show(self, name: str) -> None:
        from IPython import get_ipython
        from IPython.display import clear_output, display

        if get_ipython() is None:  # a plain script or test: nowhere to draw, the state is enough
            return
        with self.views[name]:
            clear_output(wait=True)  # replace, without the flicker of an empty frame
            data, _ = plotly_bundle(self.figures[name])  # no PNG at every step: finish() leaves the picture
            display(data, raw=True)

    def show(self) -> None:
        """Display the dashboard, as an output that `finish()` can later add the static picture to."""
        from IPython.display import display

        self._handle = display(self.widget, display_id=True)

    def static_bundle(self) -> tuple[dict, dict]:
        """(data, metadata) of the last state as a static picture: one PNG of the status line, the curves,
        the strip and the detail, as an image and as HTML. Empty where no step came or no PNG can be made."""
        if not self.records:
            return {}, {}
        status = re.sub(r"</?b>", "", status_line(self.records[-1]))  # plain text
        parts = [self.figures[name] for name in ("curves", "strip", "detail")]
        png = stack_png(parts, "dashboard at the end: " + status)
        image = png_bundle(png, f"training dashboard, last state: {status}")
        if not image:
            return {}, {}
        return ({"text/html": image["img"], "image/png": image["image/png"],
                 "text/plain": f"training dashboard, last state: {status}"}, image["metadata"])

    def finish(self) -> None:
        """Leave the last state as a static picture behind the widget (see the module's docstring).

        Shown with `show()`, the picture joins the widget's own output; otherwise it is displayed
        as an output of its own."""
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is None:
            return
        data, metadata = self.static_bundle()
        if not data:
            return
        if self._handle is None:
            display(data, metadata=metadata, raw=True)
        else:  # the widget view stays: live front ends draw it; a saved notebook has no widget state, so
            # nbconvert skips it for the picture
            self._handle.update({**self.widget._repr_mimebundle_(), **data}, metadata=metadata, raw=True)


def watch(records: Iterable[StepRecord], compare: list[StepRecord] | None = None) -> Dashboard:
    """Display a Dashboard and update it with each record as it arrives (e.g. `trainer.steps()`); when the
    records end, or the run is stopped, leave its last state as a static picture (`Dashboard.finish`)."""
    dashboard = Dashboard(compare=compare)
    dashboard.show()
    try:
        for record in records:
            dashboard.update(record)
    finally:
        dashboard.finish()
    return dashboard
