"""sdft-kit web app: train a model on your own demonstrations without writing code.

    python app.py                                     # http://127.0.0.1:7860, only this machine, no login
    python app.py --host 0.0.0.0 --auth ann:s3cret    # reachable from the network, with a login
    python app.py --share --auth-file logins.txt      # a public gradio.live link, logins from a file
    python app.py --allow-model Qwen/Qwen3-4B         # offer a model besides the embedded one

Serving beyond this machine without a login (gradio's auth) is refused unless --no-auth is given.
Each browser session has its own runs (gradio session state): it sees, stops, resumes, compares,
chats with and exports only the runs it started; one training runs at a time on the server.

The page is a thin front end over sdft_kit.app_data (the Data tab), sdft_kit.app_logic (the
settings, the training worker, export, compare, chat), sdft_kit.app_safety (logins, allowed
models, limits) and sdft_kit.views (the figures); training runs in a background thread that
writes the run directory, and the page polls it once a second.
"""

from __future__ import annotations

import argparse
import atexit
import html
import os
import shutil
import sys
from types import SimpleNamespace

import gradio as gr
import torch

from sdft_kit import app_data
from sdft_kit import app_logic as logic
from sdft_kit import views
from sdft_kit.app_safety import Limits, check_exposure, make_export_dir, read_logins
from sdft_kit.config import DEMO_SELECTIONS, METHODS, REPORT_TO, TEACHER_KINDS, VOCABS, Config
from sdft_kit.models import set_threads

CUDA = torch.cuda.is_available()
CHATS_AT_ONCE = 4  # chat answers generated side by side, over all sessions (each slows the others a little)
DEFAULT_DATA = {"data": "demos.jsonl"}  # the command's --data before any data is loaded
CSS = """
.gradio-container {max-width: 1280px !important}
#status {font-size: 1.05rem; padding: 8px 12px; border-radius: 8px; background: #f0f4fa}
.preview pre {white-space: pre-wrap; font-size: 12.5px; margin: 4px 0; padding: 8px; background: #f7f7f9;
              border-radius: 6px; max-height: 220px; overflow: auto}
.preview .card {border: 1px solid #e3e6ea; border-radius: 8px; padding: 8px 12px; margin-bottom: 10px}
.preview .cols {display: grid; grid-template-columns: 1fr 1fr; gap: 12px}
.preview .meta {color: #555; font-size: 13px}
.error {color: #b2182b; font-weight: 600}
"""
# A click on a token of the strip writes its index into a hidden box, whose input event redraws the views.
# (gr.Plot has no click event; plotly's own plotly_click is attached again whenever the plot is redrawn.)
JS = """
() => {
  setInterval(() => {
    const plot = document.querySelector('#strip .js-plotly-plot');
    if (!plot || !plot._ev || plot._sdftEvents === plot._ev) return;
    plot._sdftEvents = plot._ev;
    plot.on('plotly_click', (event) => {
      const box = document.querySelector('#token-click textarea, #token-click input');
      box.value = event.points[0].pointIndex + ':' + Date.now();
      box.dispatchEvent(new Event('input', {bubbles: true}));
    });
  }, 400);
}
"""

# Gradio 6 takes the page's style and script in launch(), Gradio 5 in Blocks().
GRADIO_5 = gr.__version__.startswith("5.")
STYLE = {"css": CSS, "theme": gr.themes.Soft(), "js": JS}


def _error(message: str) -> str:
    return f'<p class="error">⚠ {html.escape(message, quote=False)}</p>'


def preview_html(rows: list[dict]) -> str:
    cards = []
    for row in rows:
        cards.append(
            f'<div class="card"><div class="meta"><b>{html.escape(row["source"])}</b> · student prompt '
            f'{row["student_tokens"]} tokens · teacher prompt {row["teacher_tokens"]} tokens · demonstration '
            f'{row["demonstration_tokens"]} tokens</div><div class="cols">'
            f'<div><div class="meta">student sees (query only)</div>'
            f'<pre>{html.escape(row["student_prompt"])}</pre></div>'
            f'<div><div class="meta">teacher sees (query + demonstration)</div>'
            f'<pre>{html.escape(row["teacher_prompt"])}</pre></div></div></div>')
    return '<div class="preview">' + "".join(cards) + "</div>"


def plain_messages(history: list[dict]) -> list[dict]:
    """The Chatbot's messages as {role, content: text} (gradio 6 gives content as a list of parts)."""
    def text(content) -> str:
        if isinstance(content, str):
            return content
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return [{"role": m["role"], "content": text(m["content"])} for m in history or []]


class Page:
    """What the tabs share: the session's worker (gradio state), the limits, and the Train tab's settings.

    `settings` maps each training setting's name (a keyword of `logic.make_config`) to its
    component, in the order the HTTP API lists them; handlers get the values back by name.
    """

    def __init__(self, runs_dir: str, limits: Limits, threads: int):
        self.runs_dir, self.limits, self.threads = runs_dir, limits, threads
        self.export_dir = make_export_dir()  # a folder of ours that gradio may serve; removed at exit
        atexit.register(shutil.rmtree, self.export_dir, True)
        def new_session() -> logic.TrainingWorker:
            return logic.TrainingWorker(runs_dir)

        # Each browser session gets its own worker: its runs, its training, its status.
        self.worker = gr.State(new_session)
        self.settings = make_settings(limits, threads)
        self.examples = gr.State([])
        self.data_name = gr.State(DEFAULT_DATA)  # what the command's --data (and --columns) name

    def named(self, values) -> dict:
        return dict(zip(self.settings, values))

    def config(self, values) -> Config:
        """The Config of the settings' values (in `settings` order), within the server's limits."""
        named = self.named(values)
        named["load_in_4bit"] = bool(named["load_in_4bit"]) if CUDA else None  # the box is inert without CUDA
        named["model"] = self.limits.check_model(named["model"])
        return self.limits.check(logic.make_config(**named))

    def command(self, data: dict, *values) -> str:
        try:
            return logic.cli_command(self.config(values), data=data["data"], columns=data.get("columns"))
        except ValueError as err:
            return f"# {err}"

    @staticmethod
    def run_choices(worker: logic.TrainingWorker, selected: str | None = None):
        names = worker.run_names()
        return gr.update(choices=names, value=selected if selected in names else names[0] if names else None)


def make_settings(limits: Limits, threads: int) -> dict[str, gr.components.Component]:
    """The Train tab's settings, unrendered (the Train tab places them; the other tabs read some)."""
    return {
        "model": gr.Dropdown(list(limits.models), value=limits.models[0], label="Model", render=False,
                             info="the models this server offers ('embedded': SmolLM2-135M, offline)"),
        "load_in_4bit": gr.Checkbox(CUDA, label="4-bit base (QLoRA)", interactive=CUDA, render=False,
                                    info="on a CUDA GPU" if CUDA else "needs a CUDA GPU (none here)"),
        "method": gr.Radio(list(METHODS), value="sdft", label="Method", render=False,
                           info="SDFT: learn from own answers · SFT: the baseline"),
        "steps": gr.Number(12, label="Steps", precision=0, minimum=1, maximum=limits.max_steps, elem_id="steps",
                           render=False),
        "learning_rate": gr.Number(5e-4, label="Learning rate", minimum=1e-8, maximum=1.0, render=False),
        "lora_r": gr.Number(16, label="LoRA rank", precision=0, minimum=1, maximum=256, render=False,
                            info="4-64 is usual"),
        "max_new_tokens": gr.Slider(8, limits.max_new_tokens, value=48, step=8, label="New tokens per answer",
                                    render=False),
        "batch_size": gr.Number(2, label="Batch size", precision=0, minimum=1, maximum=limits.max_batch_size,
                                render=False),
        "teacher": gr.Dropdown(list(TEACHER_KINDS), value="ema", label="Teacher kind", render=False,
                               info="ema (paper): a moving average of the student · base: adapter off · live: "
                                    "the current student"),
        "divergence": gr.Dropdown(list(logic.DIVERGENCES), value="forward KL (paper)", label="Divergence",
                                  info="how the student's per-token distribution is pulled to the teacher's",
                                  render=False),
        "vocab": gr.Dropdown(list(VOCABS), value="full", label="Vocabulary", render=False,
                             info="compared over: the full vocabulary, the teacher's top-k + a tail, or the "
                                  "sampled token + the rest"),
        "topk": gr.Number(100, label="k (for top-k)", precision=0, minimum=1, maximum=1000, render=False),
        "template": gr.Dropdown(list(logic.TEMPLATE_CHOICES), value="paper", label="Teacher template", render=False,
                                info="how the demonstration is shown: paper's wording, plain (no added words), "
                                     "system message, or your own text"),
        "custom_template": gr.Textbox("", label="Custom template", lines=2, render=False,
                                      placeholder="{prompt}\n\nA good answer: {demonstration}",
                                      info="used with 'custom': a text with {prompt} and {demonstration}"),
        "skip_first": gr.Number(3, label="Skip first tokens", precision=0, minimum=0, maximum=64, render=False,
                                info="answer tokens left out of the loss at the start (paper: 3)"),
        "demo_selection": gr.Radio(list(DEMO_SELECTIONS), value="own", label="Demonstration shown", render=False,
                                   info="own: the example's (paper) · retrieval: the most similar other one · "
                                        "random: another one"),
        "threads": gr.Number(threads, label="CPU threads", precision=0, minimum=1, maximum=os.cpu_count() or 1,
                             visible=not CUDA, render=False),
        "report_to": gr.Dropdown(list(REPORT_TO), value="auto", label="Experiment tracking", render=False,
                                 info="log each step's scalars and sampled answer: auto = trackio when installed "
                                      "(local), tensorboard (the run's tensorboard/ folder), wandb, or none"),
    }


def data_tab(page: Page) -> SimpleNamespace:
    """1 · Data: upload or pick a sample; errors inline; statistics, a paged table, an editor, and the first
    examples as the model sees them."""
    with gr.Tab("1 · Data"):
        with gr.Row():
            upload = gr.File(label=f"Upload JSONL, JSON, CSV, TSV or Parquet (prompt + demonstration, OpenAI "
                                   f"messages, ShareGPT, Alpaca or the SDFT paper's files; up to "
                                   f"{page.limits.max_upload_mb} MB)", type="binary", elem_id="upload", scale=2)
            with gr.Column(scale=1):
                columns = gr.Textbox("", label="Columns (optional, before uploading)", elem_id="columns",
                                     placeholder="prompt=question,demonstration=answer",
                                     info="your column names, when no format is recognised (--columns)")
                sample = gr.Dropdown(list(app_data.SAMPLES), value=next(iter(app_data.SAMPLES)),
                                     label="or a bundled sample")
                use_sample = gr.Button("Use this sample", elem_id="use-sample")
        status = gr.HTML(elem_id="data-status")
        stats = gr.Markdown(elem_id="data-stats")
        table = gr.Dataframe(headers=["#", "source", "prompt", "demonstration", "prompt tokens",
                                      "demonstration tokens"], interactive=False, wrap=True, elem_id="data-table",
                             column_widths=["5%", "10%", "35%", "34%", "8%", "8%"])
        with gr.Row():
            previous = gr.Button("◀ Previous", size="sm")
            page_number = gr.Number(1, label="Page", precision=0, minimum=1, scale=0, min_width=120)
            pages = gr.Markdown("")
            following = gr.Button("Next ▶", size="sm")
        with gr.Accordion("Add or fix a demonstration", open=False):
            with gr.Row():
                record = gr.Number(0, label="Record # (0 = a new one)", precision=0, minimum=0, scale=0, min_width=160)
                load_record = gr.Button("Load it", size="sm")
            edit_prompt = gr.Textbox(label="Prompt", lines=2)
            edit_demonstration = gr.Textbox(label="Demonstration", lines=3)
            with gr.Row():
                save = gr.Button("Save", variant="primary", size="sm")
                remove = gr.Button("Remove", variant="stop", size="sm")
        gr.Markdown("**As the model sees them** (the first three examples, chat template applied):")
        preview = gr.HTML()

    model = page.settings["model"]

    def views_of(examples: list, model_name: str, number: int = 1):
        """Status, statistics, the table page, the page number and count, and the preview cards."""
        text = f"✓ <b>{len(examples)} examples</b> loaded."
        try:
            tokenizer = app_data.load_tokenizer(page.limits.check_model(model_name))
        except (ValueError, RuntimeError) as err:
            return text, "", None, gr.skip(), "", _error(f"no preview: {err}")
        last = app_data.page_count(examples)
        number = min(max(int(number or 1), 1), last)
        return (text, app_data.data_stats(examples, tokenizer), app_data.data_page(examples, tokenizer, number),
                gr.update(value=number, maximum=last), f"of {last}",
                preview_html(app_data.preview_rows(examples, tokenizer)))

    def loaded(examples, data: dict, model_name: str, values) -> tuple:
        """Every output of a new data set: the states, the views (the status names the detected format), the
        Compare fields, the command."""
        _, *views = views_of(examples, model_name)
        return (examples, data, app_data.data_status(examples, data.get("columns")), *views, examples[0].prompt,
                examples[0].demonstration, page.command(data, *values))

    # The mapping is kept in session state, so the HTTP API's load_data keeps its (file, *settings) signature.
    columns_text = gr.State("")
    columns.change(lambda text: text, columns, columns_text, api_name="set_columns", show_progress="hidden")

    def on_upload(data: bytes | None, columns_text: str, *values):
        if data is None:
            command = page.command(DEFAULT_DATA, *values)
            return [], DEFAULT_DATA, "", "", None, 1, "", "", gr.skip(), gr.skip(), command
        try:
            examples = app_data.parse_upload(data, page.limits.max_upload_bytes, page.limits.max_record_chars,
                                             columns=columns_text)
        except (app_data.DataError, ValueError) as err:  # ValueError: a malformed --columns text
            return [], DEFAULT_DATA, _error(str(err)), "", None, 1, "", "", gr.skip(), gr.skip(), gr.skip()
        # an upload has no path: the command names a file of its kind
        named = {"data": f"demos.{app_data.upload_kind(data)}", "columns": columns_text.strip() or None}
        return loaded(examples, named, page.named(values)["model"], values)

    def on_sample(name: str, *values):
        path = app_data.SAMPLES[name]
        examples = app_data.parse_upload(path.read_bytes(), page.limits.max_upload_bytes)
        shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
        return (*loaded(examples, {"data": shown}, page.named(values)["model"], values), None)

    def on_page(examples, number, model_name, step=0):
        if not examples:
            return None, 1, ""
        _, _, rows, number_update, count, _ = views_of(examples, model_name, int(number or 1) + step)
        return rows, number_update, count

    def on_load_record(examples, number):
        number = int(number or 0)
        if not 1 <= number <= len(examples):
            return "", "", _error(f"record {number} does not exist: pick 1 to {len(examples)} (0 adds a new one)")
        return examples[number - 1].prompt, examples[number - 1].demonstration, ""

    def on_edit(examples, number, prompt, demonstration, model_name, remove_it=False):
        number = int(number or 0)
        try:
            edited = app_data.edit_example(examples, number, prompt, demonstration, remove=remove_it,
                                           max_record_chars=page.limits.max_record_chars)
        except ValueError as err:
            return (examples, _error(str(err)), *[gr.skip()] * 5)
        where = number or len(edited)  # the record fixed or removed, or the one added
        text, *shown = views_of(edited, model_name, (min(where, len(edited)) - 1) // app_data.PAGE_ROWS + 1)
        action = "removed" if remove_it else "saved" if number else "added"
        return (edited, f"{text} Record {where} {action}.", *shown)

    edit_outputs = [page.examples, status, stats, table, page_number, pages, preview]
    save.click(lambda ex, n, p, d, m: on_edit(ex, n, p, d, m), [page.examples, record, edit_prompt,
               edit_demonstration, model], edit_outputs, api_name="edit_record")
    remove.click(lambda ex, n, m: on_edit(ex, n, "", "", m, True), [page.examples, record, model], edit_outputs,
                 api_name="remove_record")
    load_record.click(on_load_record, [page.examples, record], [edit_prompt, edit_demonstration, status],
                      api_name=False)
    table_outputs = [table, page_number, pages]
    page_number.submit(on_page, [page.examples, page_number, model], table_outputs, api_name="data_page")
    previous.click(lambda ex, n, m: on_page(ex, n, m, -1), [page.examples, page_number, model], table_outputs,
                   api_name=False)
    following.click(lambda ex, n, m: on_page(ex, n, m, 1), [page.examples, page_number, model], table_outputs,
                    api_name=False)
    # The outputs that live on other tabs (the Compare fields, the command) are wired in `build`.
    outputs = [page.examples, page.data_name, status, stats, table, page_number, pages, preview]
    return SimpleNamespace(upload=upload, columns=columns_text, sample=sample, use_sample=use_sample, outputs=outputs,
                           on_upload=on_upload, on_sample=on_sample, inputs=list(page.settings.values()))


def train_tab(page: Page) -> SimpleNamespace:
    """2 · Train: the settings, Start / Stop / Resume, live status, curves and the token view."""
    s = page.settings
    with gr.Tab("2 · Train"):
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                s["model"].render()
                s["load_in_4bit"].render()
                s["method"].render()
                with gr.Row():
                    s["steps"].render()
                    s["batch_size"].render()
                with gr.Row():
                    s["learning_rate"].render()
                    s["lora_r"].render()
                s["max_new_tokens"].render()
                s["threads"].render()
                with gr.Accordion("Advanced: the teacher and the loss", open=False, elem_id="advanced"):
                    for name in ("teacher", "template", "custom_template", "demo_selection", "skip_first",
                                 "divergence", "vocab", "topk", "report_to"):
                        s[name].render()
            with gr.Column(scale=2):
                status = gr.Markdown("no training yet", elem_id="status")
                with gr.Row():
                    start = gr.Button("Start", variant="primary", elem_id="start")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    run = gr.Dropdown([], label="Run to resume", scale=2, allow_custom_value=True)
                    resume = gr.Button("Resume", elem_id="resume")
                message = gr.HTML()
                apply_advice = gr.Button("Apply the teacher check's advice", visible=False, elem_id="apply-advice")
                curves_plot = gr.Plot(label="loss and mean KL", elem_id="curves")
                gr.Markdown("The latest step's first answer, token by token (SDFT: the student's own answer; SFT: "
                            "the demonstration). **Click a token** (or move the slider) to see both models' top-k.")
                with gr.Row():
                    metric = gr.Dropdown(_metric_choices(views.SDFT_METRICS), value="log_ratio",
                                         label="Colour tokens by", scale=2, allow_custom_value=True)
                    position = gr.Slider(0, 1, value=0, step=1, label="Inspect token # (starts at the most "
                                         "divergent one)", scale=2, elem_id="position")
                # No component label: the figures carry their own titles (a label makes gradio pad the top).
                strip_plot = gr.Plot(show_label=False, elem_id="strip")
                detail_plot = gr.Plot(show_label=False, elem_id="detail")
                clicked = gr.Textbox(visible="hidden", elem_id="token-click")
        command = gr.Code(label="Equivalent command (copy-paste to train from a terminal)", language="shell",
                          interactive=False)
    seen = gr.State([])

    def on_start(worker, examples, *values):
        try:
            run_dir = worker.start(page.config(values), examples)
        except (ValueError, logic.BusyError, OSError) as err:
            return _error(str(err)), gr.skip()
        return f"Started <b>{html.escape(run_dir.name)}</b>.", page.run_choices(worker, run_dir.name)

    def on_stop(worker):
        if not worker.is_running():
            return "Nothing is training in this session."
        worker.stop()
        return "Stopping after the current step; the checkpoint will be saved for Resume."

    def on_resume(worker, name, steps):
        try:
            run_dir = worker.resume(name, steps=int(steps), check=page.limits.check)
        except (ValueError, logic.BusyError, OSError) as err:
            return _error(str(err))
        return f"Resuming <b>{html.escape(run_dir.name)}</b> to step {int(steps)}."

    def on_apply(worker):
        """The Advanced settings that act on the teacher check's advice, set in one click."""
        values = logic.advised_values(worker.advice)
        if not values:
            return ["No advice to apply (the teacher check has none)."] + [gr.skip()] * len(ADVISED)
        done = ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in worker.advice.items())
        return (f"Applied: {html.escape(done)}. Start a new run to train with them.",
                *[values.get(name, gr.skip()) for name in ADVISED])

    def token_views(record: dict, metric: str, at: int | None = None):
        """Strip and top-k detail of a record at token `at` (default: its most divergent token)."""
        metric = metric if metric in views.metrics_for(record) else views.metrics_for(record)[0]
        if at is None:
            at = views.loudest_token(record, metric)
        last = max(len(record["sample"]["tokens"]) - 1, 1) if record.get("sample") else 1
        return (views.token_strip(record, metric, selected=at, chars_per_row=64),
                views.token_detail(record, at), gr.update(maximum=last, value=min(at, last)))

    def poll(worker, seen_key, metric):
        state = worker.status()
        records = worker.records()
        key = (str(state.run_dir), len(records), state.state)
        advice = gr.update(visible=bool(worker.advice))
        if key == tuple(seen_key or ()):  # nothing new: keep the figures as they are
            return state.markdown, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), advice, seen_key
        if not records:
            return state.markdown, None, None, None, gr.skip(), gr.skip(), advice, list(key)
        available = views.metrics_for(records[-1])  # SFT records have no teacher: NLL and the student's p
        metric = metric if metric in available else available[0]
        return (state.markdown, views.curves(records), *token_views(records[-1], metric),
                gr.update(choices=_metric_choices(available), value=metric), advice, list(key))

    def on_token(worker, metric, at=None):
        records = worker.records()
        if not records:
            return gr.skip(), gr.skip(), gr.skip()
        return token_views(records[-1], metric, None if at is None else int(at))

    def on_click(worker, metric, value):
        index = value.split(":")[0] if value else ""
        return on_token(worker, metric, int(index)) if index.isdigit() else (gr.skip(), gr.skip(), gr.skip())

    settings = list(s.values())
    for setting in settings:
        setting.change(page.command, [page.data_name, *settings], command, api_name=False, show_progress="hidden")
    def shown_status(worker):
        return worker.status().markdown

    # The status shows the first phase ("loading the model") as soon as Start or Resume returns, rather than
    # at the timer's next tick, which a busy machine can hold back for seconds.
    start.click(on_start, [page.worker, page.examples, *settings], [message, run], api_name="start").then(
        shown_status, page.worker, status, api_name=False, show_progress="hidden")
    stop.click(on_stop, page.worker, message, api_name="stop")
    resume.click(on_resume, [page.worker, run, s["steps"]], message, api_name="resume").then(
        shown_status, page.worker, status, api_name=False, show_progress="hidden")
    apply_advice.click(on_apply, page.worker, [message, *[s[name] for name in ADVISED]], api_name="apply_advice")
    gr.Timer(1.0).tick(poll, [page.worker, seen, metric], [status, curves_plot, strip_plot, detail_plot, position,
                                                          metric, apply_advice, seen],
                       api_name="poll", show_progress="hidden")
    token_outputs = [strip_plot, detail_plot, position]
    metric.input(on_token, [page.worker, metric], token_outputs, api_name=False)
    # release, not change: the slider moved by a new step must not trigger a redraw of its own
    position.release(on_token, [page.worker, metric, position], token_outputs, api_name=False)
    clicked.change(on_click, [page.worker, metric, clicked], token_outputs, api_name="select_token",
                  show_progress="hidden")
    return SimpleNamespace(run=run, command=command)


# The settings the teacher check's advice can change (see logic.advised_values), in the outputs' order.
ADVISED = ("template", "custom_template", "demo_selection", "skip_first")


def _metric_choices(metrics: list[str]) -> list[tuple[str, str]]:
    return [(views.METRICS[m][0], m) for m in metrics]


def compare_tab(page: Page) -> SimpleNamespace:
    """3 · Compare: one prompt answered by the base model, a trained adapter and the teacher, timed."""
    with gr.Tab("3 · Compare") as tab:
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", lines=2, scale=2)
            demonstration = gr.Textbox(label="Demonstration (for the teacher)", lines=2, scale=2)
            run = gr.Dropdown([], label="Trained run", scale=1, allow_custom_value=True)
        button = gr.Button("Answer with all three", variant="primary")
        note = gr.HTML(elem_id="compare-note")
        with gr.Row():
            base_answer = gr.Textbox(label="Base model", lines=6)
            trained_answer = gr.Textbox(label="Trained adapter", lines=6)
            teacher_answer = gr.Textbox(label="Teacher (base + demonstration)", lines=6)

    def on_compare(worker, prompt_text, demonstration_text, name, model, progress=gr.Progress()):
        try:
            run_dir = worker.run_path(name) if name else None
            answers = logic.compare_answers(prompt_text, demonstration_text or "", page.limits.check_model(model),
                                            run_dir, progress=lambda fraction, phase: progress(fraction, desc=phase))
        except (ValueError, RuntimeError, OSError) as err:
            return _error(str(err)), "", "", ""
        timing = " · ".join(f"{name} {seconds:.1f} s" for name, seconds in answers["seconds"].items())
        shown = f"Measured: {timing}." + ("" if run_dir else " No run picked: only the base model and the teacher.")
        return (shown, answers["base"], answers["trained"] or "(no trained adapter)",
                answers["teacher"] or "(no demonstration given)")

    button.click(on_compare, [page.worker, prompt, demonstration, run, page.settings["model"]],
                 [note, base_answer, trained_answer, teacher_answer], api_name="compare")
    return SimpleNamespace(tab=tab, run=run, prompt=prompt, demonstration=demonstration)


def chat_tab(page: Page) -> SimpleNamespace:
    """4 · Chat: talk in turns with the base model, a trained run or the teacher; answers stream."""
    s = page.settings
    with gr.Tab("4 · Chat") as tab:
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                source = gr.Radio([("base model", "base"), ("a trained run", "trained"),
                                   ("the teacher: base + a demonstration", "teacher")], value="base",
                                  label="Who answers")
                run = gr.Dropdown([], label="Trained run", allow_custom_value=True)
                demonstration = gr.Textbox(label="Demonstration (the teacher sees it with your last message, "
                                                 "framed by the Train tab's template)", lines=3)
                with gr.Accordion("Sampling", open=False):
                    max_new_tokens = gr.Slider(8, page.limits.max_new_tokens, value=96, step=8, label="New tokens")
                    temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature", info="0 = greedy")
                    top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p")
                    repetition_penalty = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="Repetition penalty",
                                                   info="> 1 discourages repeating itself (1 = off)")
                    stop = gr.Textbox(label="Stop strings", lines=2, info="one per line: the answer ends before "
                                                                          "the first one")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=380)
                message = gr.Textbox(label="Message", placeholder="Type and press Enter", elem_id="chat-message")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="chat-send")
                    clear = gr.Button("Clear the conversation")
                note = gr.HTML()

    def on_send(worker, history, text, who, name, demo, model, template, custom, *sampling):
        messages = [*plain_messages(history), {"role": "user", "content": text or ""}]
        new_tokens, temp, nucleus, penalty, stop_text = sampling
        try:
            run_dir = worker.run_path(name) if who == "trained" else None
            template_text = logic.make_config(template=template, custom_template=custom).teacher.template
            answers = logic.chat_answer(
                messages, model=page.limits.check_model(model), run_dir=run_dir,
                demonstration=(demo or "") if who == "teacher" else None, template=template_text,
                max_new_tokens=min(int(new_tokens), page.limits.max_new_tokens), temperature=float(temp),
                top_p=float(nucleus), repetition_penalty=float(penalty),
                stop=tuple(line for line in (stop_text or "").split("\n") if line))
            yield [*messages, {"role": "assistant", "content": "…"}], "", ""
            for answer in answers:
                yield [*messages, {"role": "assistant", "content": answer}], "", ""
        except (ValueError, RuntimeError, OSError) as err:
            yield history, text, _error(str(err))

    inputs = [page.worker, chatbot, message, source, run, demonstration, s["model"], s["template"],
              s["custom_template"], max_new_tokens, temperature, top_p, repetition_penalty, stop]
    # gradio runs one event of a kind at a time by default: one session's long answer would hold up every other
    # session's chat. Generation only reads the shared model, so a few answers are generated side by side.
    send.click(on_send, inputs, [chatbot, message, note], api_name="chat", concurrency_limit=CHATS_AT_ONCE,
               concurrency_id="chat")
    message.submit(on_send, inputs, [chatbot, message, note], api_name=False, concurrency_limit=CHATS_AT_ONCE,
                   concurrency_id="chat")
    clear.click(lambda: ([], ""), None, [chatbot, note], api_name=False)
    return SimpleNamespace(tab=tab, run=run)


def export_tab(page: Page) -> SimpleNamespace:
    """5 · Export: the adapter (PEFT, with its model card), the merged model in 16-bit or as GGUF with an Ollama
    Modelfile, as a zip to download,
    or the adapter pushed to the Hugging Face Hub."""
    with gr.Tab("5 · Export") as tab:
        run = gr.Dropdown([], label="Run", allow_custom_value=True)
        with gr.Row():
            adapter = gr.Button("Adapter (.zip, PEFT format, with its model card)", variant="primary")
            merged = gr.Button("Merged model (.zip, bfloat16)")
            gguf = gr.Button("GGUF + Ollama Modelfile (.zip, q8_0)")
        note = gr.HTML()
        file = gr.File(label="Download", interactive=False)
        gr.Markdown("**Push the adapter to the Hugging Face Hub** (its model card names the real base model)")
        with gr.Row():
            repo = gr.Textbox(label="Repo id", placeholder="your-name/my-sdft-adapter")
            token = gr.Textbox(label="Token (write access; empty: HF_TOKEN or your login)", type="password")
            private = gr.Checkbox(label="private", value=True)
        push = gr.Button("Push to the Hub")
        pushed = gr.HTML()

    def on_export(worker, name, kind):
        exports = {"adapter": logic.export_adapter_zip, "merged": logic.export_merged_zip,
                   "gguf": logic.export_gguf_zip}
        try:
            run_dir = worker.run_path(name)
            path = exports[kind](run_dir, page.export_dir)
        except (ValueError, RuntimeError, OSError) as err:
            return _error(str(err)), None
        return f"✓ {path.name} ({path.stat().st_size / 2**20:.1f} MB) is ready below.", str(path)

    def on_push(worker, name, repo_id, token, private):
        try:
            url = logic.push_adapter(worker.run_path(name), repo_id, token=token, private=private)
        except (ValueError, RuntimeError, OSError) as err:
            return _error(str(err))
        return f"✓ pushed to {html.escape(url)}"

    adapter.click(lambda worker, name: on_export(worker, name, "adapter"), [page.worker, run], [note, file],
                  api_name="export_adapter")
    merged.click(lambda worker, name: on_export(worker, name, "merged"), [page.worker, run], [note, file],
                 api_name="export_merged")
    gguf.click(lambda worker, name: on_export(worker, name, "gguf"), [page.worker, run], [note, file],
               api_name="export_gguf")
    push.click(on_push, [page.worker, run, repo, token, private], pushed, api_name="push")
    return SimpleNamespace(tab=tab, run=run)


def build(runs_dir: str = "runs", limits: Limits | None = None, threads: int = 1) -> gr.Blocks:
    limits = limits or Limits()
    # delete_cache: gradio's copies of the files it served (the exports) go after an hour, and at shutdown.
    with gr.Blocks(title="sdft-kit", analytics_enabled=False, delete_cache=(3600, 3600),
                   **({"css": CSS, "theme": gr.themes.Soft(), "js": JS} if GRADIO_5 else {})) as demo:
        page = Page(runs_dir, limits, threads)
        gr.Markdown("# sdft-kit · Self-Distillation Fine-Tuning\n"
                    "Teach a model from your demonstrations: it learns from its own answers, scored by itself "
                    "shown the demonstration. **1** load data · **2** train · **3** compare · **4** chat · "
                    "**5** export. This browser session sees only the runs it starts.")
        data = data_tab(page)
        train = train_tab(page)
        compare = compare_tab(page)
        chat = chat_tab(page)
        export = export_tab(page)

        # Across tabs: loading data fills the Compare fields and the Train tab's command.
        outputs = [*data.outputs, compare.prompt, compare.demonstration, train.command]
        data.upload.upload(data.on_upload, [data.upload, data.columns, *data.inputs], outputs, api_name="load_data")
        data.use_sample.click(data.on_sample, [data.sample, *data.inputs], [*outputs, data.upload],
                              api_name="load_sample")
        demo.load(page.command, [page.data_name, *data.inputs], train.command, api_name=False)
        for tab, dropdown in ((compare.tab, compare.run), (chat.tab, chat.run), (export.tab, export.run)):
            tab.select(page.run_choices, [page.worker, dropdown], dropdown, api_name=False)  # this session's runs
    demo.page = page  # for tests and for close_app
    return demo


def close_app(demo: gr.Blocks) -> None:
    """Stop serving and remove the app's temporary export folder."""
    demo.close()
    shutil.rmtree(demo.page.export_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="sdft-kit web app")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--auth", action="append", metavar="USER:PASSWORD",
                        help="a login (repeat for several); also --auth-file and the SDFT_KIT_AUTH variable")
    parser.add_argument("--auth-file", help="a file of logins, one user:password a line")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve --share or a non-loopback --host without a login (refused otherwise)")
    parser.add_argument("--allow-model", action="append", default=[], metavar="MODEL",
                        help="a model the Model field may name besides 'embedded' (a Hub id or a local path; "
                             "repeat for several)")
    parser.add_argument("--runs-dir", default="runs", help="where training runs are written")
    parser.add_argument("--max-upload-mb", type=int, default=20, help="largest data file accepted")
    parser.add_argument("--max-steps", type=int, default=Limits.max_steps, help="most steps one run may ask for")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy small CPU)")
    args = parser.parse_args(argv)
    try:
        logins = read_logins(args.auth, args.auth_file)
        warning = check_exposure(args.host, args.share, logins, args.no_auth)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    if warning:
        print(warning, file=sys.stderr)
    set_threads(args.threads)
    limits = Limits(models=tuple(dict.fromkeys(["embedded", *args.allow_model])), max_steps=args.max_steps,
                    max_upload_mb=args.max_upload_mb)
    launch(build(args.runs_dir, limits, args.threads), args.host, args.port, args.share, logins or None)


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           auth: list[tuple[str, str]] | None = None, **kwargs):
    """Serve the app (gradio's auth when logins are given); gradio refuses larger uploads before they reach a
    handler."""
    return demo.queue().launch(server_name=host, server_port=port, share=share, auth=auth,
                               max_file_size=f"{demo.page.limits.max_upload_mb}mb",
                               **({} if GRADIO_5 else STYLE), **kwargs)


if __name__ == "__main__":
    main()
