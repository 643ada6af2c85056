"""sdft-kit web app: train a model on your own demonstrations without writing code.

    python app.py                                     # http://127.0.0.1:7860, only this machine, no login
    python app.py --host 0.0.0.0 --auth ann:s3cret    # reachable from the network, with a login
    python app.py --share --auth-file logins.txt      # a public gradio.live link, logins from a file
    python app.py --allow-model Qwen/Qwen3-4B         # offer a model besides the embedded one
    python app.py --concurrency 2 --max-waiting 12    # two trainings at once, twelve more may wait

Serving beyond this machine without a login (gradio's auth) is refused unless --no-auth is given.
Runs belong to the login, or without logins to the browser (a cookie): a reload finds the live run
and the finished ones again. Everybody sees what the server trains now and who waits (as positions);
Start queues a run while every training slot is busy; its owner stops it, or cancels it while it waits.

The page is a thin front end over sdft_kit.app_data (the Data tab), sdft_kit.app_logic (the settings,
generated from the config fields; export, compare, chat), sdft_kit.app_runs (the trainings: owners, the
queue), sdft_kit.app_evaluate (the Evaluate tab), sdft_kit.app_safety (logins, the browser cookie,
allowed models, limits) and sdft_kit.views (the figures). Training runs in background threads that write
the run directories, and the page polls once a second.
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
from starlette.middleware import Middleware

from sdft_kit import app_data, app_evaluate, app_runs, views
from sdft_kit import app_logic as logic
from sdft_kit.app_safety import COOKIE, BrowserCookie, Limits, check_exposure, make_export_dir, read_logins
from sdft_kit.config import Config, preset
from sdft_kit.models import set_threads

CUDA = torch.cuda.is_available()
CHATS_AT_ONCE = 4  # chat answers generated side by side, over all sessions (each slows the others a little)
DEFAULT_DATA = {"data": "demos.jsonl"}  # the command's --data before any data is loaded
# Colours come from gradio's theme variables, so the page reads in light and dark mode alike.
CSS = """
.gradio-container {max-width: 1280px !important}
#status, #board {font-size: 1.05rem; padding: 8px 12px; border-radius: 8px; color: var(--body-text-color);
                 background: var(--background-fill-secondary); border: 1px solid var(--border-color-primary)}
.preview pre {white-space: pre-wrap; font-size: 12.5px; margin: 4px 0; padding: 8px; border-radius: 6px;
              color: var(--body-text-color); background: var(--background-fill-secondary); max-height: 220px;
              overflow: auto}
.preview .card {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 12px;
                margin-bottom: 10px; color: var(--body-text-color); background: var(--block-background-fill)}
.preview .cols {display: grid; grid-template-columns: 1fr 1fr; gap: 12px}
.preview .meta {color: var(--body-text-color); font-size: 13px; font-style: italic}
.error {color: var(--error-text-color); font-weight: 600}
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
FINAL = ("stopped", "done", "failed", "cancelled")


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


def component(setting: logic.Setting, value) -> gr.components.Component:
    """A setting's component, from its kind: choices as a radio (a few short ones) or a menu, a switch as a
    checkbox, numbers within their bounds, text as a box. Unrendered: the Train tab places it."""
    common = dict(label=setting.label, info=setting.info, value=value, visible=setting.visible,
                  interactive=setting.enabled, render=False, elem_id=f"setting-{setting.name}")
    if setting.kind == "choice":
        few = len(setting.choices) <= 3 and all(len(str(choice)) <= 10 for choice in setting.choices)
        return (gr.Radio if few else gr.Dropdown)(list(setting.choices), **common)
    if setting.kind == "switch":
        return gr.Checkbox(**common)
    if setting.kind == "text":
        return gr.Textbox(lines=2, **common)
    return gr.Number(precision=0 if setting.kind == "integer" else None, minimum=setting.minimum,
                     maximum=setting.maximum, **common)


class Page:
    """What the tabs share: the server's trainings, the limits, the Train tab's settings and the data.

    `settings` maps each setting's name (a config field, or one of app_logic.APP_OWN) to its component,
    generated from app_logic.settings_table; the API lists the preset, then the settings in that order.
    """

    def __init__(self, runs_dir: str, limits: Limits, threads: int, concurrency: int = 1, max_waiting: int = 8):
        self.limits, self.threads = limits, threads
        self.trainings = app_runs.Trainings(runs_dir, concurrency, max_waiting)
        self.export_dir = make_export_dir()  # a folder of ours that gradio may serve; removed at exit
        atexit.register(shutil.rmtree, self.export_dir, True)
        self.table = logic.settings_table(limits.models, limits.max_steps, limits.max_batch_size,
                                          limits.max_new_tokens, CUDA, os.cpu_count() or 1)
        self.start_preset = logic.start_preset(CUDA)
        values = {**logic.APP_DEFAULTS, **self.preset_values(self.start_preset)}
        self.preset = gr.Dropdown(logic.preset_choices(), value=self.start_preset, label="Preset", render=False,
                                  info="named settings; every field below can still be changed", elem_id="preset")
        self.settings = {name: component(setting, values[name]) for name, setting in self.table.items()}
        self.examples = gr.State([])
        self.data_name = gr.State(DEFAULT_DATA)  # what the command's --data (and --columns) name
        self.task = gr.State(None)  # the bundled task the data came from (Evaluate scores its eval split)

    @property
    def inputs(self) -> list:
        return [self.preset, *self.settings.values()]

    def preset_values(self, name: str) -> dict:
        values = logic.setting_values(preset(name), self.table)
        values["threads"] = values["threads"] or self.threads
        return values

    def owner(self, request: gr.Request | None) -> str:
        """Whose runs: the login, else the browser (its cookie), else this page's session."""
        if request is None:
            return app_runs.owner_key(None, None)
        return app_runs.owner_key(request.username, request.cookies.get(COOKIE), request.session_hash)

    def named(self, values) -> dict:
        return dict(zip(self.settings, values))

    def config(self, preset_name: str, values) -> Config:
        """The Config of the settings' values (in `settings` order) over the preset, within the server's limits;
        a setting that cannot take effect here (shown greyed) keeps the preset's value."""
        named = self.named(values)
        named["model"] = self.limits.check_model(named["model"])
        return self.limits.check(logic.config_of(preset_name, named, self.table))

    def command(self, data: dict, preset_name: str, *values) -> str:
        try:
            config = self.config(preset_name, values)
        except ValueError as err:
            return f"# {err}"
        command = logic.cli_command(config, data=data["data"], preset_name=preset_name, columns=data.get("columns"))
        percent = self.named(values)["held_out"]
        return command + (f"\n# Start keeps {percent}% of the records (of 10 or more) out of training for the Evaluate "
                          "tab:\n# to train on exactly the run's records, use --data runs/<run>/data.jsonl"
                          if percent else "")

    def run_choices(self, request: gr.Request, selected=None, multiselect: bool = False):
        names = self.trainings.run_names(self.owner(request))
        if multiselect:
            return gr.update(choices=names, value=[n for n in selected or [] if n in names] or names[:1])
        return gr.update(choices=names, value=selected if selected in names else names[0] if names else None)


def data_layout(page: Page) -> SimpleNamespace:
    """1 · Data: upload or pick a sample; statistics, a paged table, an editor, the examples as the model sees
    them."""
    ui = SimpleNamespace()
    with gr.Tab("1 · Data"):
        with gr.Row():
            ui.upload = gr.File(label=f"Upload JSONL, JSON, CSV, TSV or Parquet (prompt + demonstration, OpenAI "
                                      f"messages, ShareGPT, Alpaca or the SDFT paper's files; up to "
                                      f"{page.limits.max_upload_mb} MB)", type="binary", elem_id="upload", scale=2)
            with gr.Column(scale=1):
                ui.columns_box = gr.Textbox("", label="Columns (optional, before uploading)", elem_id="columns",
                                            placeholder="prompt=question,demonstration=answer",
                                            info="your column names, when no format is recognised (--columns)")
                ui.sample = gr.Dropdown(list(app_data.SAMPLES), value=next(iter(app_data.SAMPLES)),
                                        label="or a bundled sample")
                ui.use_sample = gr.Button("Use this sample", elem_id="use-sample")
        ui.status = gr.HTML(elem_id="data-status")
        ui.stats = gr.Markdown(elem_id="data-stats")
        ui.table = gr.Dataframe(headers=["#", "source", "prompt", "demonstration", "prompt tokens",
                                         "demonstration tokens"], interactive=False, wrap=True, elem_id="data-table",
                                column_widths=["5%", "10%", "35%", "34%", "8%", "8%"])
        with gr.Row():
            ui.previous = gr.Button("◀ Previous", size="sm")
            ui.page_number = gr.Number(1, label="Page", precision=0, minimum=1, scale=0, min_width=120)
            ui.pages = gr.Markdown("")
            ui.following = gr.Button("Next ▶", size="sm")
        with gr.Accordion("Add or fix a demonstration", open=False):
            with gr.Row():
                ui.record = gr.Number(0, label="Record # (0 = a new one)", precision=0, minimum=0, scale=0,
                                      min_width=160)
                ui.load_record = gr.Button("Load it", size="sm")
            ui.edit_prompt = gr.Textbox(label="Prompt", lines=2)
            ui.edit_demonstration = gr.Textbox(label="Demonstration", lines=3)
            with gr.Row():
                ui.save = gr.Button("Save", variant="primary", size="sm")
                ui.remove = gr.Button("Remove", variant="stop", size="sm")
        ui.preview_title = gr.Markdown("**As the model sees them** (the first three examples, chat template applied, "
                                       "the teacher's prompt in the Train tab's template):")
        ui.preview = gr.HTML(elem_id="preview")
    return ui


def data_views(page: Page, examples: list, preset_name: str, values, number: int = 1) -> tuple:
    """Status, statistics, the table page, the page number and count, and the preview cards (in the Train tab's
    template and demonstration choice)."""
    text = f"✓ <b>{len(examples)} examples</b> loaded."
    try:
        config = page.config(preset_name, values)
        tokenizer = app_data.load_tokenizer(config.model.model)
    except (ValueError, RuntimeError) as err:
        return text, "", None, gr.skip(), "", _error(f"no preview: {err}")
    last = app_data.page_count(examples)
    number = min(max(int(number or 1), 1), last)
    return (text, app_data.data_stats(examples, tokenizer), app_data.data_page(examples, tokenizer, number),
            gr.update(value=number, maximum=last), f"of {last}",
            preview_html(app_data.preview_rows(examples, tokenizer, config)))


def data_tab(page: Page) -> SimpleNamespace:
    """The Data tab's events: load (upload or sample), page, edit; the preview follows the template."""
    ui = data_layout(page)

    def loaded(examples, data: dict, task, preset_name, values) -> tuple:
        """Every output of a new data set: the states, the views (the status names the detected format), the
        Compare fields, the command."""
        _, *views = data_views(page, examples, preset_name, values)
        return (examples, data, task, app_data.data_status(examples, data.get("columns")), *views,
                examples[0].prompt, examples[0].demonstration, page.command(data, preset_name, *values))

    # The mapping is kept in session state, so the HTTP API's load_data keeps its (file, *settings) signature.
    ui.columns = gr.State("")
    ui.columns_box.change(lambda text: text, ui.columns_box, ui.columns, api_name="set_columns",
                          show_progress="hidden")

    def on_upload(data: bytes | None, columns_text: str, preset_name, *values):
        if data is None:
            command = page.command(DEFAULT_DATA, preset_name, *values)
            return [], DEFAULT_DATA, None, "", "", None, 1, "", "", gr.skip(), gr.skip(), command
        try:
            examples = app_data.parse_upload(data, page.limits.max_upload_bytes, page.limits.max_record_chars,
                                             columns=columns_text)
        except (app_data.DataError, ValueError) as err:  # ValueError: a malformed --columns text
            return [], DEFAULT_DATA, None, _error(str(err)), "", None, 1, "", "", gr.skip(), gr.skip(), gr.skip()
        # an upload has no path: the command names a file of its kind
        named = {"data": f"demos.{app_data.upload_kind(data)}", "columns": columns_text.strip() or None}
        return loaded(examples, named, None, preset_name, values)

    def on_sample(name: str, preset_name, *values):
        path = app_data.SAMPLES[name]
        examples = app_data.parse_upload(path.read_bytes(), page.limits.max_upload_bytes)
        shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
        return (*loaded(examples, {"data": shown}, app_data.SAMPLE_TASKS.get(name), preset_name, values), None)

    def on_page(examples, number, step, preset_name, *values):
        if not examples:
            return None, 1, ""
        _, _, rows, number_update, count, _ = data_views(page, examples, preset_name, values, int(number or 1) + step)
        return rows, number_update, count

    def on_load_record(examples, number):
        number = int(number or 0)
        if not 1 <= number <= len(examples):
            return "", "", _error(f"record {number} does not exist: pick 1 to {len(examples)} (0 adds a new one)")
        return examples[number - 1].prompt, examples[number - 1].demonstration, ""

    def on_edit(examples, number, prompt, demonstration, remove_it, preset_name, *values):
        number = int(number or 0)
        try:
            edited = app_data.edit_example(examples, number, prompt, demonstration, remove=remove_it,
                                           max_record_chars=page.limits.max_record_chars)
        except ValueError as err:
            return (examples, _error(str(err)), *[gr.skip()] * 5)
        where = number or len(edited)  # the record fixed or removed, or the one added
        text, *shown = data_views(page, edited, preset_name, values,
                                  (min(where, len(edited)) - 1) // app_data.PAGE_ROWS + 1)
        action = "removed" if remove_it else "saved" if number else "added"
        return (edited, f"{text} Record {where} {action}.", *shown)

    ui.on_upload, ui.on_sample = on_upload, on_sample
    data_events(page, ui, on_page, on_load_record, on_edit)
    return ui


def data_events(page: Page, ui: SimpleNamespace, on_page, on_load_record, on_edit) -> None:
    """Wire the Data tab's paging and editing (loading is wired in `build`: its outputs span tabs)."""
    keep, remove = gr.State(False), gr.State(True)
    edit_outputs = [page.examples, ui.status, ui.stats, ui.table, ui.page_number, ui.pages, ui.preview]
    ui.save.click(on_edit, [page.examples, ui.record, ui.edit_prompt, ui.edit_demonstration, keep, *page.inputs],
                  edit_outputs, api_name="edit_record")
    ui.remove.click(on_edit, [page.examples, ui.record, ui.edit_prompt, ui.edit_demonstration, remove, *page.inputs],
                    edit_outputs, api_name="remove_record")
    ui.load_record.click(on_load_record, [page.examples, ui.record], [ui.edit_prompt, ui.edit_demonstration,
                                                                        ui.status], api_name=False)
    table_outputs = [ui.table, ui.page_number, ui.pages]
    for trigger, step, api_name in ((ui.page_number.submit, 0, "data_page"), (ui.previous.click, -1, False),
                                    (ui.following.click, 1, False)):
        trigger(on_page, [page.examples, ui.page_number, gr.State(step), *page.inputs], table_outputs,
                api_name=api_name)
    # The preview shows the teacher's prompt in the template the Train tab has: it follows those settings.
    s = page.settings
    gr.on([page.preset.change, *(s[n].change for n in ("model", "template", "custom_template", "demo_selection"))],
          lambda examples, preset_name, *values: data_views(page, examples, preset_name, values)[5] if examples
          else gr.skip(),
          [page.examples, *page.inputs], ui.preview, api_name=False, show_progress="hidden",
          trigger_mode="always_last")
    ui.outputs = [page.examples, page.data_name, page.task, ui.status, ui.stats, ui.table, ui.page_number,
                  ui.pages, ui.preview]


def settings_column(page: Page) -> SimpleNamespace:
    """The Train tab's left column: the preset, the settings (Advanced ones folded), YAML save and load."""
    s, ui = page.settings, SimpleNamespace()
    page.preset.render()
    for name, setting in page.table.items():
        if setting.group == "main":
            s[name].render()
    with gr.Accordion("Advanced: the teacher and the loss", open=False, elem_id="advanced"):
        for name, setting in page.table.items():
            if setting.group == "advanced":
                s[name].render()
    with gr.Row():
        ui.save_yaml = gr.Button("Save settings (config.yaml)", size="sm", elem_id="save-yaml")
        ui.load_yaml = gr.UploadButton("Load settings (YAML)", file_types=[".yaml", ".yml"], type="binary",
                                       size="sm", elem_id="load-yaml")
    ui.yaml_file = gr.File(label="config.yaml (what `sdft-kit train --config` reads)", visible=False,
                           interactive=False)
    ui.yaml_note = gr.HTML()
    return ui


def train_layout(page: Page) -> SimpleNamespace:
    """2 · Train: the settings, Start / Stop / Resume, the status, curves and the token view."""
    with gr.Tab("2 · Train"):
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                ui = settings_column(page)
            with gr.Column(scale=2):
                ui.status = gr.Markdown("no training yet", elem_id="status")
                with gr.Row():
                    ui.start = gr.Button("Start", variant="primary", elem_id="start")
                    ui.stop = gr.Button("Stop (or cancel while waiting)", variant="stop", elem_id="stop")
                    ui.run = gr.Dropdown([], label="Run to resume", scale=2, allow_custom_value=True)
                    ui.resume = gr.Button("Resume", elem_id="resume")
                ui.message = gr.HTML(elem_id="message")
                ui.apply_advice = gr.Button("Use the teacher check's advice", visible=False, elem_id="apply-advice")
                # No component label: the figure names its plots (a label would sit over its first legend entry).
                ui.curves = gr.Plot(show_label=False, elem_id="curves")
                gr.Markdown("The latest step's first answer, token by token (SDFT: the student's own answer; SFT: "
                            "the demonstration). **Click a token** (or move the slider) to see both models' top-k.")
                with gr.Row():
                    ui.metric = gr.Dropdown(_metric_choices(views.SDFT_METRICS), value="log_ratio",
                                            label="Colour tokens by", scale=2, allow_custom_value=True)
                    ui.position = gr.Slider(0, 1, value=0, step=1, label="Inspect token # (starts at the most "
                                            "divergent readable one)", scale=2, elem_id="position")
                ui.strip = gr.Plot(show_label=False, elem_id="strip")
                ui.detail = gr.Plot(show_label=False, elem_id="detail")
                ui.clicked = gr.Textbox(visible="hidden", elem_id="token-click")
        ui.command = gr.Code(label="Equivalent command (copy-paste to train from a terminal)", language="shell",
                             interactive=False, elem_id="command")
    ui.seen = gr.State([])
    return ui


def _metric_choices(metrics: list[str]) -> list[tuple[str, str]]:
    return [(views.METRICS[m][0], m) for m in metrics]


def token_views(record: dict, metric: str, at: int | None = None):
    """Strip and top-k detail of a record at token `at` (default: its most divergent readable token)."""
    metric = metric if metric in views.metrics_for(record) else views.metrics_for(record)[0]
    if at is None:
        at = views.loudest_token(record, metric)
    last = max(len(record["sample"]["tokens"]) - 1, 1) if record.get("sample") else 1
    return (views.token_strip(record, metric, selected=at, chars_per_row=64),
            views.token_detail(record, at), gr.update(maximum=last, value=min(at, last)))


def train_controls(page: Page, ui: SimpleNamespace) -> None:
    """Start, Stop, Resume and the teacher check's advice."""
    def on_start(request: gr.Request, examples, data_name, task, preset_name, *values):
        try:
            config = page.config(preset_name, values)
            percent = 0 if task else page.named(values)["held_out"] or 0  # a task has its own eval split
            train, held = logic.split_held_out(examples, percent, config.train.seed)
            job = page.trainings.start(page.owner(request), config, train, held, data_name["data"], task)
        except (ValueError, app_runs.BusyError, OSError) as err:
            return _error(str(err)), gr.skip()
        held_text = f" ({len(held)} records held out for the Evaluate tab)" if held else ""
        waits = page.trainings.position(job)
        said = f"<b>{html.escape(job.name)}</b> waits: #{waits} in the queue" if waits else \
            f"Started <b>{html.escape(job.name)}</b>"
        return said + held_text + ".", page.run_choices(request, job.name)

    def on_stop(request: gr.Request):
        return html.escape(page.trainings.stop(page.owner(request)))

    def on_resume(request: gr.Request, name, steps):
        try:
            job = page.trainings.resume(page.owner(request), name, steps=int(steps), check=page.limits.check)
        except (ValueError, app_runs.BusyError, OSError) as err:
            return _error(str(err))
        waits = page.trainings.position(job)
        return f"Resuming <b>{html.escape(job.name)}</b> to step {int(steps)}" + (
            f": #{waits} in the queue." if waits else ".")

    def on_apply(request: gr.Request):
        """The settings the teacher check advises, set in one click."""
        job = page.trainings.job(page.owner(request))
        advice = logic.advice_for(job.check, job.config) if job is not None and job.check is not None else {}
        values = logic.advised_values(advice)
        if not values:
            return ["No advice to apply (the teacher check has none)."] + [gr.skip()] * len(page.settings)
        done = logic.advice_label(advice).split(": ", 1)[1]
        return (f"Applied: {html.escape(done)}. Start a new run to train with them.",
                *[values.get(name, gr.skip()) for name in page.settings])

    settings = list(page.settings.values())
    ui.start.click(on_start, [page.examples, page.data_name, page.task, *page.inputs], [ui.message, ui.run],
                   api_name="start")
    ui.stop.click(on_stop, None, ui.message, api_name="stop")
    ui.resume.click(on_resume, [ui.run, page.settings["steps"]], ui.message, api_name="resume")
    ui.apply_advice.click(on_apply, None, [ui.message, *settings], api_name="apply_advice")


def train_poll(page: Page, ui: SimpleNamespace, board) -> None:
    """Once a second: the server's board, this owner's status, curves and token view (figures only when a step
    or the state changed), the advice button; a finished stop clears the 'Stopping...' message."""
    def poll(request: gr.Request, seen_key, metric):
        owner = page.owner(request)
        state = page.trainings.status(owner, logic.check_text)
        records = page.trainings.records(owner)
        job = page.trainings.job(owner)
        advice = logic.advice_for(job.check, job.config) if job is not None and job.check is not None else {}
        button = gr.update(visible=True, value=logic.advice_label(advice)) if advice else gr.update(visible=False)
        key = [str(state.run_dir), len(records), state.state]
        ended = state.state in FINAL and list(seen_key or [])[2:] != key[2:]
        common = (page.trainings.board(owner), state.markdown, button, key, "" if ended else gr.skip())
        if key == list(seen_key or []):  # nothing new: keep the figures as they are
            return (*common, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        if not records:
            return (*common, None, None, None, gr.skip(), gr.skip())
        available = views.metrics_for(records[-1])  # SFT records have no teacher: NLL and the student's p
        metric = metric if metric in available else available[0]
        return (*common, views.curves(records), *token_views(records[-1], metric),
                gr.update(choices=_metric_choices(available), value=metric))

    def on_token(request: gr.Request, metric, at=None):
        records = page.trainings.records(page.owner(request))
        if not records:
            return gr.skip(), gr.skip(), gr.skip()
        return token_views(records[-1], metric, None if at is None else int(at))

    def on_click(request: gr.Request, metric, value):
        index = value.split(":")[0] if value else ""
        return on_token(request, metric, int(index)) if index.isdigit() else (gr.skip(), gr.skip(), gr.skip())

    outputs = [board, ui.status, ui.apply_advice, ui.seen, ui.message, ui.curves, ui.strip, ui.detail, ui.position,
               ui.metric]
    # Every open page polls once a second, and the handler takes about a millisecond: outside gradio's queue
    # (one plain POST, no event stream), so 20 pages cost the server little and wait behind no other event.
    gr.Timer(1.0).tick(poll, [ui.seen, ui.metric], outputs, api_name="poll", show_progress="hidden", queue=False)
    token_outputs = [ui.strip, ui.detail, ui.position]
    ui.metric.input(on_token, ui.metric, token_outputs, api_name=False)
    # release, not change: the slider moved by a new step must not trigger a redraw of its own
    ui.position.release(on_token, [ui.metric, ui.position], token_outputs, api_name=False)
    ui.clicked.change(on_click, [ui.metric, ui.clicked], token_outputs, api_name="select_token",
                      show_progress="hidden")


def train_settings_events(page: Page, ui: SimpleNamespace) -> None:
    """The preset sets the fields; the settings save as and load from the CLI's YAML; the command follows."""
    settings = list(page.settings.values())

    def on_preset(name: str):
        values = page.preset_values(name)
        return [values.get(setting, gr.skip()) for setting in page.settings]

    def on_save_yaml(preset_name, *values):
        try:
            config = page.config(preset_name, values)
        except ValueError as err:
            return gr.update(visible=False), _error(str(err))
        path = page.export_dir / "config.yaml"
        config.save(path)
        return gr.update(value=str(path), visible=True), ("✓ Train from a terminal with <code>sdft-kit train --config "
                                                          "config.yaml --data ... --out ...</code>.")

    def on_load_yaml(data: bytes | None, preset_name):
        try:
            values, ignored = logic.load_settings_yaml(data or b"", preset_name, page.table)
        except ValueError as err:
            return [_error(str(err))] + [gr.skip()] * len(settings)
        note = "✓ Settings loaded." + (f" Not settable in the app (kept at the preset's value; the CLI takes them): "
                                       f"{html.escape(', '.join(ignored))}." if ignored else "")
        return [note, *[values.get(name, gr.skip()) for name in page.settings]]

    page.preset.input(on_preset, page.preset, settings, api_name="preset")
    ui.save_yaml.click(on_save_yaml, page.inputs, [ui.yaml_file, ui.yaml_note], api_name="save_settings")
    ui.load_yaml.upload(on_load_yaml, [ui.load_yaml, page.preset], [ui.yaml_note, *settings],
                        api_name="load_settings")
    gr.on([c.change for c in page.inputs], page.command, [page.data_name, *page.inputs], ui.command,
          api_name=False, show_progress="hidden", trigger_mode="always_last")


def train_tab(page: Page, board) -> SimpleNamespace:
    ui = train_layout(page)
    train_controls(page, ui)
    train_poll(page, ui, board)
    train_settings_events(page, ui)
    return ui


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

    def on_compare(request: gr.Request, prompt_text, demonstration_text, name, model, progress=gr.Progress()):
        try:
            run_dir = page.trainings.run_path(page.owner(request), name) if name else None
            answers = logic.compare_answers(prompt_text, demonstration_text or "", page.limits.check_model(model),
                                            run_dir, progress=lambda fraction, phase: progress(fraction, desc=phase))
        except (ValueError, RuntimeError, OSError) as err:
            return _error(str(err)), "", "", ""
        timing = " · ".join(f"{name} {seconds:.1f} s" for name, seconds in answers["seconds"].items())
        shown = f"Measured: {timing}." + ("" if run_dir else " No run picked: only the base model and the teacher.")
        return (shown, answers["base"], answers["trained"] or "(no trained adapter)",
                answers["teacher"] or "(no demonstration given)")

    button.click(on_compare, [prompt, demonstration, run, page.settings["model"]],
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

    def on_send(request: gr.Request, history, text, who, name, demo, model, template, custom, *sampling):
        messages = [*plain_messages(history), {"role": "user", "content": text or ""}]
        new_tokens, temp, nucleus, penalty, stop_text = sampling
        try:
            run_dir = page.trainings.run_path(page.owner(request), name) if who == "trained" else None
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

    inputs = [chatbot, message, source, run, demonstration, s["model"], s["template"], s["custom_template"],
              max_new_tokens, temperature, top_p, repetition_penalty, stop]
    # gradio runs one event of a kind at a time by default: one session's long answer would hold up every other
    # session's chat. Generation only reads the shared model, so a few answers are generated side by side.
    send.click(on_send, inputs, [chatbot, message, note], api_name="chat", concurrency_limit=CHATS_AT_ONCE,
               concurrency_id="chat")
    message.submit(on_send, inputs, [chatbot, message, note], api_name=False, concurrency_limit=CHATS_AT_ONCE,
                   concurrency_id="chat")
    clear.click(lambda: ([], ""), None, [chatbot, note], api_name=False)
    return SimpleNamespace(tab=tab, run=run)


def evaluate_tab(page: Page) -> SimpleNamespace:
    """5 · Evaluate: a finished run beside the base model (new task, prior skills), several runs' curves on one
    plot, and where the run was logged."""
    with gr.Tab("5 · Evaluate") as tab:
        runs = gr.Dropdown([], multiselect=True, label="Runs (all are plotted; the first is scored)",
                           allow_custom_value=True, elem_id="evaluate-runs")
        score = gr.Button("Score the first run beside the base model", variant="primary", elem_id="score")
        table = gr.Markdown(elem_id="scores")
        curves = gr.Plot(show_label=False, elem_id="evaluate-curves")
        tracker = gr.Markdown(elem_id="tracker")

    def run_dirs(request: gr.Request, names):
        owner = page.owner(request)
        return [page.trainings.run_path(owner, name) for name in names or []]

    def on_runs(request: gr.Request, names):
        try:
            dirs = run_dirs(request, names)
        except ValueError as err:
            return _error(str(err)), None, ""
        if not dirs:
            return "Pick one of your runs (train one first).", None, ""
        saved = app_evaluate.saved_evaluation(dirs[0])
        return (app_evaluate.score_table(saved) if saved else "Not scored yet.", app_evaluate.runs_curves(dirs),
                app_evaluate.tracker_note(dirs[0]))

    def on_score(request: gr.Request, names, progress=gr.Progress()):
        try:
            dirs = run_dirs(request, names)
            if not dirs:
                raise ValueError("pick one of your runs (train one first)")
            result = app_evaluate.evaluate_run(dirs[0], lambda fraction, phase: progress(fraction, desc=phase))
        except (ValueError, RuntimeError, OSError) as err:
            return _error(str(err))
        return app_evaluate.score_table(result)

    def choices(request: gr.Request, names):
        return page.run_choices(request, names, multiselect=True)

    runs.change(on_runs, runs, [table, curves, tracker], api_name="evaluate_runs")
    score.click(on_score, runs, table, api_name="score")
    return SimpleNamespace(tab=tab, run=runs, choices=choices)


def export_tab(page: Page) -> SimpleNamespace:
    """6 · Export: the adapter (PEFT, with its model card), the merged model in 16-bit or as GGUF with an Ollama
    Modelfile, as a zip to download,
    or the adapter pushed to the Hugging Face Hub."""
    with gr.Tab("6 · Export") as tab:
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

    exports = {"adapter": logic.export_adapter_zip, "merged": logic.export_merged_zip, "gguf": logic.export_gguf_zip}

    def on_export(request: gr.Request, name, kind):
        try:
            run_dir = page.trainings.run_path(page.owner(request), name)
            path = exports[kind](run_dir, page.export_dir)
        except (ValueError, RuntimeError, OSError) as err:
            return _error(str(err)), None
        return f"✓ {path.name} ({path.stat().st_size / 2**20:.1f} MB) is ready below.", str(path)

    def on_push(request: gr.Request, name, repo_id, token, private):
        try:
            url = logic.push_adapter(page.trainings.run_path(page.owner(request), name), repo_id, token=token,
                                     private=private)
        except (ValueError, RuntimeError, OSError) as err:
            return _error(str(err))
        return f"✓ pushed to {html.escape(url)}"

    adapter.click(on_export, [run, gr.State("adapter")], [note, file], api_name="export_adapter")
    merged.click(on_export, [run, gr.State("merged")], [note, file], api_name="export_merged")
    gguf.click(on_export, [run, gr.State("gguf")], [note, file], api_name="export_gguf")
    push.click(on_push, [run, repo, token, private], pushed, api_name="push")
    return SimpleNamespace(tab=tab, run=run)


def build(runs_dir: str = "runs", limits: Limits | None = None, threads: int = 1, concurrency: int = 1,
          max_waiting: int = 8) -> gr.Blocks:
    limits = limits or Limits()
    # delete_cache: gradio's copies of the files it served (the exports) go after an hour, and at shutdown.
    with gr.Blocks(title="sdft-kit", analytics_enabled=False, delete_cache=(3600, 3600),
                   **({"css": CSS, "theme": gr.themes.Soft(), "js": JS} if GRADIO_5 else {})) as demo:
        page = Page(runs_dir, limits, threads, concurrency, max_waiting)
        gr.Markdown("# sdft-kit · Self-Distillation Fine-Tuning\n"
                    "Teach a model from your demonstrations: it learns from its own answers, scored by itself "
                    "shown the demonstration. **1** load data · **2** train · **3** compare · **4** chat · "
                    "**5** evaluate · **6** export. Your runs stay yours: a reload finds them again.")
        board = gr.Markdown(page.trainings.board(), elem_id="board")
        data = data_tab(page)
        train = train_tab(page, board)
        compare = compare_tab(page)
        chat = chat_tab(page)
        evaluate = evaluate_tab(page)
        export = export_tab(page)

        # Across tabs: loading data fills the Compare fields and the Train tab's command.
        outputs = [*data.outputs, compare.prompt, compare.demonstration, train.command]
        data.upload.upload(data.on_upload, [data.upload, data.columns, *page.inputs], outputs, api_name="load_data")
        data.use_sample.click(data.on_sample, [data.sample, *page.inputs], [*outputs, data.upload],
                              api_name="load_sample")
        demo.load(page.command, [page.data_name, *page.inputs], train.command, api_name=False)
        demo.load(page.run_choices, train.run, train.run, api_name=False)  # a reload finds the owner's runs
        for tab, dropdown in ((compare.tab, compare.run), (chat.tab, chat.run), (export.tab, export.run)):
            tab.select(page.run_choices, dropdown, dropdown, api_name=False)  # the owner's runs
        evaluate.tab.select(evaluate.choices, evaluate.run, evaluate.run, api_name=False)
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
    parser.add_argument("--concurrency", type=int, default=1, help="trainings at once (1: a CPU trains one well)")
    parser.add_argument("--max-waiting", type=int, default=8, help="runs that may wait for a slot; a Start beyond "
                                                                   "is refused with a message")
    args = parser.parse_args(argv)
    try:
        logins = read_logins(args.auth, args.auth_file)
        warning = check_exposure(args.host, args.share, logins, args.no_auth)
        if args.concurrency < 1 or args.max_waiting < 0:
            raise ValueError("--concurrency must be at least 1 and --max-waiting at least 0")
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    if warning:
        print(warning, file=sys.stderr)
    set_threads(args.threads)
    limits = Limits(models=tuple(dict.fromkeys(["embedded", *args.allow_model])), max_steps=args.max_steps,
                    max_upload_mb=args.max_upload_mb)
    launch(build(args.runs_dir, limits, args.threads, args.concurrency, args.max_waiting), args.host, args.port,
           args.share, logins or None)


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           auth: list[tuple[str, str]] | None = None, **kwargs):
    """Serve the app (gradio's auth when logins are given; a cookie naming each browser, see BrowserCookie);
    gradio refuses larger uploads before they reach a handler."""
    return demo.queue().launch(
        server_name=host, server_port=port, share=share, auth=auth, max_file_size=f"{demo.page.limits.max_upload_mb}mb",
        app_kwargs={"middleware": [Middleware(BrowserCookie)]}, **({} if GRADIO_5 else STYLE), **kwargs)


if __name__ == "__main__":
    main()
