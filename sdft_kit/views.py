"""Figures that show SDFT at work, built from step records alone (plotly, no UI library).

    token_strip(record)       the student's completion, each token coloured by a metric
    token_detail(record, i)   student and teacher top-k at one position, side by side
    curves(*runs)             loss and mean KL per step, raw points and a smoothed line (and the forgetting
                              monitor's scores, when a run has them)
    retention_matrix(...)     score on each task after each stage of a sequential run
    before_after(...)         one prompt: base answer, trained answer, teacher's answer
    token_change(a, b)        one completion's per-token loss before and after an update
    compare_scores(report)    new-task and previous-skills scores per method (a compare report)
    batch_html(...)           a batch as the model sees it: which tokens are context, which are trained
    export_token_html(...)    strip + detail as one self-contained HTML file
    show(fig)                 display a figure in a notebook, live, with a static PNG copy in the same
                              output for saved notebooks, nbconvert and GitHub (see figure_output)

Every figure reads only what a record of `metrics.jsonl` holds (see `records.StepRecord`),
so a finished run re-plots from `load_records(run_dir)`.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from .figure_output import show  # noqa: F401 (views.show: how the notebooks display every figure)
from .records import StepRecord

RED, BLUE, WHITE = "#b2182b", "#2166ac", "#f7f7f7"
DIVERGING = [[0.0, RED], [0.25, "#ef8a62"], [0.5, WHITE], [0.75, "#67a9cf"], [1.0, BLUE]]
WHITE_TO_RED = [[0.0, WHITE], [0.5, "#ef8a62"], [1.0, RED]]
RED_TO_WHITE = [[0.0, RED], [0.5, "#ef8a62"], [1.0, WHITE]]

# metric -> (label, colour-bar title, scale kind). Kinds: "signed" (symmetric around 0),
# "positive" (0 = white), "probability" (fixed 0..1, 1 = white).
METRICS = {
    "log_ratio": ("log p_teacher / p_student of the token",
                  "log p_teacher/p_student<br>blue: teacher likes the token more · red: less", "signed"),
    "kl": ("per-token KL (the SDFT loss)", "per-token KL<br>red: teacher disagrees", "positive"),
    "nll": ("per-token NLL (the SFT loss)", "per-token NLL<br>red: student surprised", "positive"),
    "student_prob": ("student probability of the token", "student p(token)<br>red: student unsure", "probability"),
    "entropy_gap": ("top-k entropy gap, student - teacher (approx.)",
                    "top-k entropy, student - teacher (approx.)<br>blue: teacher surer · red: less sure", "signed"),
}
SDFT_METRICS = ["log_ratio", "kl", "student_prob", "entropy_gap"]
SFT_METRICS = ["nll", "student_prob"]  # no teacher: the loss is the NLL of the demonstration
VISIBLE_WHITESPACE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": ""}
RUN_COLOURS = {"sdft": [BLUE, "#5aae61", "#762a83"], "sft": ["#d6604d", "#e08214", "#8c510a"]}
FONT = "DejaVu Sans Mono, Menlo, Consolas, monospace"


# -- reading a record ------------------------------------------------------------------------
def display_token(text: str) -> str:
    """A token as shown: whitespace made visible (␣ space, ↵ newline, ⇥ tab), never empty."""
    shown = "".join(VISIBLE_WHITESPACE.get(ch, ch) for ch in text)
    return shown or "∅"


def display_pieces(sample: dict) -> list[str]:
    """Each token of a sample as the strip shows it: its text with whitespace made visible, and "" for a
    token that ends inside a character (its bytes are shown, whole, on the token that completes it).

    Uses the record's `pieces` (see records.token_pieces); older records have only `tokens`."""
    pieces = sample.get("pieces")
    if pieces is None or len(pieces) != len(sample["tokens"]):
        return [display_token(t) for t in sample["tokens"]]
    return [display_token(p) if p else "" for p in pieces]


def escaped(text: str) -> str:
    """Text for plotly, which reads <b>, <br>, ... in labels as markup: a token "<br>" must stay text."""
    return html.escape(text, quote=False)


def metrics_for(record: StepRecord) -> list[str]:
    """The metrics a record can be coloured by, default first (SFT records have no teacher)."""
    sample = record.get("sample") or {}
    return SDFT_METRICS if sample.get("teacher_logprob") is not None else SFT_METRICS


def _number(x) -> float:
    return float("nan") if x is None else float(x)


def probability_text(p: float) -> str:
    """A probability as people read it: 4 decimals, or 2 significant digits in scientific notation below 0.001
    (3.2e-06, not 0.0000)."""
    if not math.isfinite(p):
        return "–"
    return f"{p:.4f}" if p >= 1e-3 or p == 0 else f"{p:.1e}"


def topk_entropy(topk: list) -> float:
    """Entropy (nats) of a top-k list, with the mass outside it (1 - sum) as one more outcome.

    Records keep only the top-k, so this approximates the full entropy (it is a lower bound)."""
    probs = [float(p) for _, p in topk]
    probs.append(max(0.0, 1.0 - sum(probs)))
    return -sum(p * math.log(p) for p in probs if p > 0)


def token_values(sample: dict, metric: str) -> list[float]:
    """The per-token values of `metric` for a record's sample, NaN where undefined."""
    if metric in ("kl", "nll"):
        return [_number(v) for v in sample["values"]]
    if metric == "student_prob":
        return [math.exp(_number(lp)) for lp in sample["student_logprob"]]
    if metric == "log_ratio":
        return [_number(t) - _number(s) for t, s in zip(sample["teacher_logprob"], sample["student_logprob"])]
    if metric == "entropy_gap":
        return [topk_entropy(s) - topk_entropy(t) for s, t in zip(sample["student_topk"], sample["teacher_topk"])]
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def robust_bounds(values: list[float], kind: str, quantile: float = 0.95) -> tuple[float, float]:
    """Colour-scale bounds: the `quantile` of the finite |values|, so one outlier cannot wash out the rest."""
    if kind == "probability":
        return 0.0, 1.0
    finite = sorted(abs(v) for v in values if math.isfinite(v))
    if not finite:
        top = 0.0
    else:
        rank = quantile * (len(finite) - 1)
        low = int(rank)
        high = min(low + 1, len(finite) - 1)
        top = finite[low] + (finite[high] - finite[low]) * (rank - low)
    top = top if top > 0 else 1.0
    return (-top, top) if kind == "signed" else (0.0, top)


def clamp(values: list[float], low: float, high: float, neutral: float) -> list[float]:
    """Values clipped into [low, high] for colouring: ±inf to the bounds, NaN to `neutral` (white)."""
    return [neutral if math.isnan(v) else min(max(v, low), high) for v in values]


def text_colours(colours: list[float], low: float, high: float, kind: str) -> list[str]:
    """White text on the dark ends of the scale, near-black elsewhere, so every token stays readable."""
    def darkness(c):  # 0 at the white end of the scale, 1 at a saturated end
        if kind == "signed":
            return abs(c) / high
        return (high - c) / (high - low) if kind == "probability" else (c - low) / (high - low)
    return ["white" if darkness(c) > 0.62 else "#111" for c in colours]


def _no_data(title: str, message: str, height: int = 160) -> go.Figure:
    fig = go.Figure(layout=dict(title=escaped(title), height=height, template="plotly_white"))
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14, color="#666"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):  # chat messages: show the last user turn
        prompt = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
    return _short(prompt)


def record_title(record: StepRecord) -> str:
    """One line naming a record: step, method and (shortened) prompt, as plain text."""
    sample = record.get("sample") or {}
    parts = [f"step {record['step']}" + (f"/{record['steps']}" if record.get("steps") else "")
             if "step" in record else "", str(record.get("method", "")).upper(), _prompt_text(sample.get("prompt", ""))]
    return " · ".join(part for part in parts if part)


# -- token strip -----------------------------------------------------------------------------
PIECE_WIDTH = 0.5  # the box of a token that ends inside a character: narrow, joined to the next token's box
ROW_PX, STRIP_TOP_PX, STRIP_BOTTOM_PX = 34, 60, 90  # a row of tokens; the title above, the colour bar below


def token_width(text: str) -> float:
    return len(text) if text else PIECE_WIDTH


def strip_layout(shown: list[str], chars_per_row: int, gap: float = 0.6) -> list[tuple[int, float]]:
    """(row, start) of each token laid out like wrapped text; a row also ends after a newline.

    A token shown as "" (part of the next token's character) gets a narrow box with no gap after it,
    so the pieces of one character stay together."""
    places, row, start = [], 0, 0.0
    for i, text in enumerate(shown):
        width = token_width(text)
        joined = i > 0 and not shown[i - 1]  # continues the previous token's character: same row
        if start > 0 and start + width > chars_per_row and not joined:
            row, start = row + 1, 0.0
        places.append((row, start))
        start += width + (gap if text else 0.0)
        if text.endswith("↵"):
            row, start = row + 1, 0.0
    return places


def token_strip(record: StepRecord, metric: str | None = None, selected: int | None = None,
                chars_per_row: int = 80) -> go.Figure:
    """The student's completion as tokens, each coloured by `metric` (see METRICS).

    Read it like text: red marks tokens the demonstration-conditioned teacher rates lower than
    the student did (or, for KL/NLL, where the loss is large), blue ones it rates higher.
    The colour scale is clamped to the 95th percentile of |value| so one outlier cannot wash
    out the rest; hover shows the exact value and both models' probabilities. Faded tokens
    are outside the loss (the first `skip_first`). `selected` outlines one position.
    A character split over several byte-level tokens (an emoji) shows whole on its last token;
    the tokens before it are narrow boxes joined to it, each with its own colour.
    SFT records have no teacher: `metric` falls back to the NLL."""
    sample = record.get("sample")
    if not sample:
        return _no_data(record_title(record), "this record has no sample to show")
    available = metrics_for(record)
    metric = metric if metric in available else available[0]
    label, bar_title, kind = METRICS[metric]
    tokens = sample["tokens"]
    if not tokens:
        return _no_data(record_title(record), "empty completion: the student stopped at once")
    values = token_values(sample, metric)
    low, high = robust_bounds(values, kind)
    colours = clamp(values, low, high, neutral=high if kind == "probability" else 0.0)
    shown = display_pieces(sample)
    places = strip_layout(shown, chars_per_row)
    student_p = [math.exp(_number(lp)) for lp in sample["student_logprob"]]
    teacher_p = [math.exp(_number(lp)) for lp in sample["teacher_logprob"]] if sample.get("teacher_logprob") else None
    in_loss = sample.get("in_loss") or [1] * len(tokens)
    hover = [f"#{i} <b>{escaped(shown[i]) or 'a byte-level piece of the next character'}</b>"
             f"<br>student p = {probability_text(student_p[i])}"
             + (f"<br>teacher p = {probability_text(teacher_p[i])}" if teacher_p else "<br>teacher p = – (SFT)")
             + f"<br>{label} = {values[i]:.4f}" + ("" if in_loss[i] else "<br><i>not in the loss</i>")
             for i in range(len(tokens))]
    fig = go.Figure(go.Bar(
        orientation="h", y=[row for row, _ in places], base=[start for _, start in places],
        x=[token_width(text) for text in shown], width=0.78, text=[escaped(t) for t in shown], textposition="inside",
        insidetextanchor="middle", textangle=0, cliponaxis=False,
        textfont=dict(family=FONT, size=14, color=[colour if keep else "#111" for colour, keep  # faded: light
                                                   in zip(text_colours(colours, low, high, kind), in_loss)]),
        hovertext=hover, hoverinfo="text",
        marker=dict(color=colours, colorscale=DIVERGING if kind == "signed" else
                    RED_TO_WHITE if kind == "probability" else WHITE_TO_RED,
                    cmin=low, cmax=high, opacity=[1.0 if keep else 0.45 for keep in in_loss],
                    line=dict(color="#c8c8c8", width=1),
                    colorbar=dict(title=dict(text=bar_title, side="top"), orientation="h",
                                  y=-0.02, yanchor="top", len=0.6, thickness=12)),
    ))
    rows = places[-1][0] + 1
    if selected is not None and 0 <= selected < len(tokens):
        row, start = places[selected]
        fig.add_shape(type="rect", x0=start - 0.2, x1=start + token_width(shown[selected]) + 0.2,
                      y0=row - 0.5, y1=row + 0.5, line=dict(color="#111", width=2.5))
    # The height is the margins plus the rows, so a one-line answer keeps its row's full height.
    fig.update_layout(title=dict(text=escaped(record_title(record)), font=dict(size=15)), template="plotly_white",
                      height=STRIP_TOP_PX + STRIP_BOTTOM_PX + ROW_PX * rows + 10,
                      margin=dict(l=20, r=20, t=STRIP_TOP_PX, b=STRIP_BOTTOM_PX),
                      uniformtext=dict(minsize=14, mode="show"), bargap=0)
    fig.update_xaxes(visible=False, range=[-0.5, chars_per_row + 0.5])
    fig.update_yaxes(visible=False, range=[rows - 0.5, -0.5])
    return fig


READABLE_P = 1e-3  # a probability this small reads as noise in the top-k bars: start elsewhere


def loudest_token(record: StepRecord, metric: str) -> int:
    """Where to look first: the position with the largest finite |value| of `metric` among the tokens that
    both models give at least READABLE_P (their bars and probabilities can be read); any position if none."""
    sample = record.get("sample") or {}
    if not sample.get("tokens"):
        return 0
    values = token_values(sample, metric)
    models = [sample["student_logprob"]] + ([sample["teacher_logprob"]] if sample.get("teacher_logprob") else [])
    readable = [i for i in range(len(values))
                if all(math.exp(_number(logprobs[i])) >= READABLE_P for logprobs in models)]
    return max(readable or range(len(values)), key=lambda i: abs(values[i]) if math.isfinite(values[i]) else -1.0)


# -- token detail ----------------------------------------------------------------------------
SAMPLED, SHARED, ONE_ONLY = "#e66101", "#4393c3", "#c7c7c7"


def _topk_bars(topk: list, sampled: str, other: set[str]) -> go.Bar:
    names = [t for t, _ in topk]
    colours = [SAMPLED if t == sampled else SHARED if t in other else ONE_ONLY for t in names]
    return go.Bar(orientation="h", x=[float(p) for _, p in topk], y=list(range(len(topk))),
                  text=[f"{float(p):.3f}" for _, p in topk], textposition="outside", cliponaxis=False,
                  marker=dict(color=colours, line=dict(color=["#111" if t == sampled else "rgba(0,0,0,0)"
                                                               for t in names], width=2)),
                  hovertext=[f"{escaped(display_token(t))}: p = {probability_text(float(p))}" for t, p in topk],
                  hoverinfo="text", showlegend=False)


def token_detail(record: StepRecord, position: int) -> go.Figure:
    """Student top-k and teacher top-k at one position of the completion, as bars.

    Orange (outlined) is the token the student actually sampled; blue bars are tokens both
    models rank in their top-k, grey ones only one does. The title gives both probabilities
    of the sampled token even when it is outside a top-k. SFT records show the student only
    (their tokens are the demonstration's, not sampled)."""
    sample = record.get("sample")
    if not sample:
        return _no_data(record_title(record), "this record has no sample to show")
    tokens = sample["tokens"]
    if not tokens:
        return _no_data(record_title(record), "empty completion: no token to inspect")
    position = min(max(int(position), 0), len(tokens) - 1)
    sampled = tokens[position]
    student = sample["student_topk"][position]
    teacher = sample["teacher_topk"][position] if sample.get("teacher_topk") else None
    student_p = math.exp(_number(sample["student_logprob"][position]))
    what = "sampled" if teacher is not None else "demonstration"
    shown = display_pieces(sample)
    name = shown[position] or "a piece of " + next((piece for piece in shown[position:] if piece), "a character")
    title = f"token #{position}: {what} <b>{escaped(name)}</b> · student p = {probability_text(student_p)}"
    if teacher is None:
        fig = make_subplots(rows=1, cols=1, subplot_titles=["student top-k (SFT: no teacher)"])
        fig.add_trace(_topk_bars(student, sampled, set()), row=1, col=1)
    else:
        teacher_p = math.exp(_number(sample["teacher_logprob"][position]))
        title += f" · teacher p = {probability_text(teacher_p)}"
        fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.22,
                            subplot_titles=["student (query only)", "teacher (query + demonstration)"])
        fig.add_trace(_topk_bars(student, sampled, {t for t, _ in teacher}), row=1, col=1)
        fig.add_trace(_topk_bars(teacher, sampled, {t for t, _ in student}), row=1, col=2)
    for col, topk in enumerate([student] + ([teacher] if teacher is not None else []), start=1):
        fig.update_yaxes(tickvals=list(range(len(topk))), ticktext=[escaped(display_token(t)) for t, _ in topk],
                         autorange="reversed", tickfont=dict(family=FONT, size=13), row=1, col=col)
        fig.update_xaxes(range=[0, 1.18], title_text="probability", row=1, col=col)
    legend = ("orange: the sampled token · blue: in both top-k · grey: in one only" if teacher is not None
              else "orange: the demonstration's token · grey: other candidates")
    fig.update_layout(title=dict(text=title, font=dict(size=15), subtitle=dict(text=legend, font=dict(color="#555"))),
                      template="plotly_white", height=320, margin=dict(l=20, r=30, t=95, b=50), bargap=0.25)
    return fig


# -- training curves -------------------------------------------------------------------------
def smooth(values: list[float | None], weight: float = 0.6) -> list[float | None]:
    """Exponential moving average with bias correction (as TensorBoard); gaps stay gaps."""
    out, average, total = [], 0.0, 0.0
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(None)
            continue
        average = weight * average + (1 - weight) * v
        total = weight * total + (1 - weight)
        out.append(average / total)
    return out


def _finite_or_none(x) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def curves(*runs: list[StepRecord], names: list[str] | None = None, weight: float = 0.6) -> go.Figure:
    """Loss (left) and mean per-token KL (right) against the optimizer step, for one or more runs.

    Each run is a list of step records; pass an SDFT and an SFT run to compare them on one
    chart. Points are the raw values, the line an EMA (`weight`); the legend names the runs (their
    colours) and, in grey, the two marks. The SDFT loss is the KL
    to the teacher, the SFT loss the NLL of the demonstration; SFT has no KL curve.

    Runs scored by the forgetting monitor (records with `monitor`, see monitor.py) get a third panel: the
    prior-skills score (solid) and the new-task score (dashed) from step 0, the weights before training."""
    monitored = [[r[key] for r in records for key in ("monitor_start", "monitor") if r.get(key)] for records in runs]
    titles = ["loss (SDFT: KL to teacher · SFT: NLL)", "mean per-token KL (SDFT)"]
    if any(monitored):
        titles.append("forgetting monitor: prior skills · new task")
    fig = make_subplots(rows=1, cols=len(titles), horizontal_spacing=0.1 if len(titles) == 2 else 0.07,
                        subplot_titles=titles)
    used: dict[str, int] = {}
    for i, records in enumerate(runs):
        method = str(records[0].get("method", "sdft")) if records else "sdft"
        count = used[method] = used.get(method, 0) + 1
        name = names[i] if names else method.upper() + ("" if count == 1 else f" {count}")
        palette = RUN_COLOURS.get(method, RUN_COLOURS["sdft"])
        colour = palette[(count - 1) % len(palette)]
        steps = [r["step"] for r in records]
        for col, key in ((1, "loss"), (2, "mean_kl")):
            raw = [_finite_or_none(r.get(key)) for r in records]
            if all(v is None for v in raw):
                continue
            fig.add_trace(go.Scatter(x=steps, y=raw, mode="markers", name=f"{name} {key}", legendgroup=name,
                                     marker=dict(color=colour, size=7, opacity=0.35), showlegend=False),
                          row=1, col=col)
            fig.add_trace(go.Scatter(x=steps, y=smooth(raw, weight), mode="lines", name=name, legendgroup=name,
                                     line=dict(color=colour, width=2.5), connectgaps=True,
                                     showlegend=col == 1), row=1, col=col)
        for key, label, dash in (("prior_skills", "prior skills", "solid"), ("new_task", "new task", "dash")):
            if not monitored[i]:
                break
            fig.add_trace(go.Scatter(
                x=[e["step"] for e in monitored[i]], y=[e[key] for e in monitored[i]], mode="lines+markers",
                name=f"{name} {label}", legendgroup=name, showlegend=False, line=dict(color=colour, width=2, dash=dash),
                customdata=[e["new_task_measure"] if key == "new_task" else "accuracy" for e in monitored[i]],
                hovertemplate=f"{escaped(name)} {label}: %{{y:.3f}} (%{{customdata}}) at step %{{x}}<extra></extra>"),
                row=1, col=3)
    # A key to the two marks, in grey: what a dot is and what a line is, whatever the run.
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="raw value at each step",
                             marker=dict(color="#777", size=7, opacity=0.5)), row=1, col=1)
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"smoothed (EMA, weight {weight:g})",
                             line=dict(color="#777", width=2.5)), row=1, col=1)
    if any(monitored):
        for label, dash in (("prior skills (accuracy on the probe)", "solid"), ("new task (held-out score)", "dash")):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=label,
                                     line=dict(color="#777", width=2, dash=dash)), row=1, col=3)
        fig.update_yaxes(range=[0, 1.03], title_text="score (0-1)", row=1, col=3)
    last_step = max((r["step"] for records in runs for r in records), default=1)
    fig.update_xaxes(title_text="step", dtick=max(1, math.ceil(last_step / 10)))  # whole steps only
    # The legend goes under the plots: above them it sits where a UI puts the component's label (gradio's
    # Plot), and the subplot titles are there already.
    fig.update_layout(template="plotly_white", height=380, margin=dict(l=50, r=20, t=40, b=90),
                      legend=dict(orientation="h", y=-0.22, yanchor="top", x=0, xanchor="left"))
    return fig


# -- sequential runs and answers -------------------------------------------------------------
def retention_matrix(tasks: list[str], scores: list[list[float | None]],
                     stages: list[str] | None = None) -> go.Figure:
    """Heatmap of `scores[i][j]`: the score on task `tasks[j]` after training stage i.

    Rows are stages in training order (default labels: "after <task i>", or with one extra
    first row, "base" then those), columns the evaluated tasks. Read down a column to see a
    task learned and then kept or forgotten. None/NaN marks a cell not evaluated."""
    if stages is None:
        stages = [f"after {t}" for t in tasks]
        if len(scores) == len(tasks) + 1:
            stages = ["base"] + stages
    if len(stages) != len(scores) or any(len(row) != len(tasks) for row in scores):
        raise ValueError(f"scores must be {len(stages)} rows (stages) x {len(tasks)} columns (tasks)")
    z = [[_finite_or_none(v) for v in row] for row in scores]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(tasks), y=list(stages), text=[["" if v is None else f"{v:.2f}" for v in row] for row in z],
        texttemplate="%{text}", colorscale="Blues", colorbar=dict(title="score"),
        hovertemplate="%{y}<br>task %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="training stage")
    fig.update_xaxes(title_text="evaluated task", side="top")
    fig.update_layout(title="retention: score on each task after each training stage", template="plotly_white",
                      height=160 + 40 * len(stages), margin=dict(l=20, r=20, t=110, b=20))
    return fig


def before_after(prompt: str, base_answer: str, trained_answer: str, teacher_answer: str | None = None) -> go.Figure:
    """One prompt's answers side by side: the base model's, the trained model's and, if given,
    the teacher's (the base model shown the demonstration) — what training moved towards."""
    headers = ["<b>base model</b>", "<b>after training</b>"]
    answers = [base_answer, trained_answer]
    if teacher_answer is not None:
        headers.append("<b>teacher (with demonstration)</b>")
        answers.append(teacher_answer)
    chars_per_line = 120 // len(answers)  # a rough guess at the column width, for the height
    lines = max(len(a) // chars_per_line + a.count("\n") + 1 for a in answers)
    fig = go.Figure(go.Table(
        header=dict(values=headers, fill_color="#e8eef6", align="left", font=dict(size=13)),
        cells=dict(values=[[escaped(a).replace("\n", "<br>")] for a in answers], align="left", font=dict(size=13),
                    height=30)))
    fig.update_layout(title=dict(text=f"prompt: {escaped(_short(prompt, 120))}", font=dict(size=15)),
                      height=min(180 + 22 * lines, 900), margin=dict(l=10, r=10, t=50, b=10))
    return fig


def token_change(before: StepRecord, after: StepRecord, metric: str | None = None) -> go.Figure:
    """The same completion's per-token values in two records (e.g. before and after an update).

    Both records must hold the same tokens. Bars per position: grey before, blue after;
    positions outside the loss are faded. The title gives the mean over the tokens in the
    loss and how many of them went down."""
    a, b = before.get("sample") or {}, after.get("sample") or {}
    if a.get("token_ids") != b.get("token_ids"):
        raise ValueError("token_change needs two records of the same completion (their token_ids differ)")
    metric = metric or ("kl" if a.get("teacher_logprob") is not None else "nll")
    label = METRICS[metric][0]
    x = [f"{i}:{display_token(t)}" for i, t in enumerate(a["tokens"])]
    va, vb = token_values(a, metric), token_values(b, metric)
    in_loss = a.get("in_loss") or [1] * len(x)
    used = [i for i, keep in enumerate(in_loss) if keep and math.isfinite(va[i]) and math.isfinite(vb[i])]
    mean_a = sum(va[i] for i in used) / max(len(used), 1)
    mean_b = sum(vb[i] for i in used) / max(len(used), 1)
    down = sum(vb[i] < va[i] for i in used)
    opacity = [1.0 if keep else 0.35 for keep in in_loss]
    fig = go.Figure([
        go.Bar(x=x, y=va, name=before.get("label", "before"), marker=dict(color="#999999", opacity=opacity)),
        go.Bar(x=x, y=vb, name=after.get("label", "after"), marker=dict(color=BLUE, opacity=opacity)),
    ])
    fig.update_layout(barmode="group", template="plotly_white", height=340, margin=dict(l=50, r=20, t=70, b=90),
                      title=f"{label}: mean {mean_a:.3f} → {mean_b:.3f}; lower on {down} of {len(used)} tokens",
                      legend=dict(orientation="h", y=1.12, x=0), xaxis=dict(tickangle=-60, tickfont=dict(size=10)))
    return fig


def compare_scores(report: dict) -> go.Figure:
    """Bars of a compare report: score on the new task and on previous skills, per method
    (mean over seeds, with the std as error bars when there are several)."""
    table = report["table"]
    methods = list(table)
    fig = go.Figure()
    for key, name, colour in (("new_task", f"new task ({report['task']})", BLUE),
                              ("previous_skills", "previous skills (probe)", "#5aae61")):
        means = [table[m][key]["mean"] * 100 for m in methods]
        stds = [table[m][key]["std"] * 100 for m in methods]
        fig.add_trace(go.Bar(x=[m.upper() if m != "base" else m for m in methods], y=means, name=name,
                             marker_color=colour, text=[f"{v:.1f}" for v in means], textposition="outside",
                             error_y=dict(type="data", array=stds, visible=len(report["seeds"]) > 1)))
    fig.update_layout(barmode="group", template="plotly_white", height=360, yaxis=dict(title="score %",
                      range=[0, 110]), title=f"{report['task']}: learned (new task) vs kept (previous skills)",
                      margin=dict(l=50, r=20, t=70, b=40), legend=dict(orientation="h", y=1.12, x=0))
    return fig


def batch_html(tokenizer, batch, loss_mask, rows: list[int] | None = None) -> str:
    """A batch as the model sees it, token by token, as HTML (display it with IPython's HTML).

    Grey: the prompt (chat template applied), context only. Green: completion tokens in the
    loss. Amber: completion tokens outside it (skip_first). Padding is left out."""
    style = {"prompt": "background:#eeeeee;color:#555", "loss": "background:#c7e9c0",
             "skipped": "background:#fdd49e"}

    def span(text: str, kind: str) -> str:
        return f"<span style='{style[kind]};margin:1px;padding:0 2px;border-radius:3px'>{html.escape(text)}</span>"

    def token(token_id: int, kind: str) -> str:
        return span(display_token(tokenizer.decode([token_id])), kind)

    rows = range(batch.completion_ids.shape[0]) if rows is None else rows
    legend = (("prompt", "prompt: context, not trained"), ("loss", "completion: in the loss"),
              ("skipped", "completion: not in the loss"))
    parts = ["<div style='font-family:monospace;font-size:13px;line-height:1.9'>",
             "<p>" + " ".join(span(label, kind) for kind, label in legend) + "</p>"]
    for row in rows:
        prompt = [int(t) for t, m in zip(batch.prompt_ids[row], batch.prompt_mask[row]) if m]
        completion = [(int(t), int(k)) for t, m, k in zip(batch.completion_ids[row], batch.completion_mask[row],
                                                           loss_mask[row]) if m]
        trained = sum(k for _, k in completion)
        parts.append(f"<p><b>row {row}</b>: {len(prompt)} prompt tokens, {len(completion)} completion tokens, "
                     f"{trained} in the loss<br>"
                     + "".join(token(t, "prompt") for t in prompt)
                     + "".join(token(t, "loss" if k else "skipped") for t, k in completion) + "</p>")
    return "".join(parts) + "</div>"


# -- static HTML export ----------------------------------------------------------------------
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:16px 24px;color:#222}} p{{margin:4px 0}}
.hint{{color:#666;font-size:14px}}</style>
<script>{plotlyjs}</script></head>
<body><p><b>{title}</b></p><p class="hint">{hint}</p>
<div id="strip"></div><div id="detail"></div>
<script>
var strip = {strip}, details = {details};
Plotly.newPlot("strip", strip.data, strip.layout, {{responsive: true}});
Plotly.newPlot("detail", details[{start}].data, details[{start}].layout, {{responsive: true}});
document.getElementById("strip").on("plotly_click", function (event) {{
  var i = event.points[0].pointIndex, t = strip.data[0], d = details[i];
  Plotly.relayout("strip", {{"shapes[0].x0": t.base[i] - 0.2, "shapes[0].x1": t.base[i] + t.x[i] + 0.2,
                            "shapes[0].y0": t.y[i] - 0.5, "shapes[0].y1": t.y[i] + 0.5}});
  Plotly.react("detail", d.data, d.layout);
}});
</script></body></html>
"""


def export_token_html(record: StepRecord, path: str | Path, metric: str | None = None) -> Path:
    """Write the token view of one record as a single HTML file that needs no network:
    the token strip, and below it the top-k detail of the token clicked (initially the one
    with the largest |value|). plotly.js is inlined (about 4.7 MB)."""
    path = Path(path)
    sample = record.get("sample") or {}
    metric = metric if metric in metrics_for(record) else metrics_for(record)[0]
    tokens = sample.get("tokens") or []
    start = loudest_token(record, metric)
    details = [token_detail(record, i) for i in range(len(tokens))] or [token_detail(record, 0)]
    hint = (f"Colour: {METRICS[metric][0]}. Hover a token for its probabilities; click it to see the top-k "
            + ("of the student and of the teacher" if sample.get("teacher_topk") else "of the student")
            + " at that position.")
    page = PAGE.format(title=html.escape(f"sdft-kit token view · {record_title(record)}"), hint=html.escape(hint),
                       plotlyjs=get_plotlyjs(), start=start,
                       # to_json writes "<" as \u003c, so a token "</script>" cannot end the script
                       strip=token_strip(record, metric, selected=start).to_json(),
                       details="[" + ",".join(fig.to_json() for fig in details) + "]")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
