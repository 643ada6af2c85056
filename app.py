"""sdft-kit web app: train a model on your own demonstrations without writing code.

    python app.py                      # http://127.0.0.1:7860, only this machine
    python app.py --host 0.0.0.0       # reachable from the network (no login: mind who can reach it)
    python app.py --share              # a public gradio.live link, only when asked for

The page is a thin front end over sdft_kit.app_logic (parsing, the training worker,
export, compare) and sdft_kit.views (the figures); training runs in a background
thread that writes the run directory, and the page polls it once a second.
"""

from __future__ import annotations

import argparse
import html
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import torch

from sdft_kit import app_logic as logic
from sdft_kit import views
from sdft_kit.config import METHODS, TEACHER_KINDS, Config
from sdft_kit.data import DataError
from sdft_kit.models import set_threads

CUDA = torch.cuda.is_available()
METRIC_CHOICES = [(views.METRICS[m][0], m) for m in ("log_ratio", "kl", "student_prob", "entropy_gap", "nll")]
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

# Gradio 6 takes the page's style in launch(), Gradio 5 in Blocks().
GRADIO_5 = gr.__version__.startswith("5.")
STYLE = {"css": CSS, "theme": gr.themes.Soft()}


def _error(message: str) -> str:
    return f'<p class="error">⚠ {html.escape(message, quote=False)}</p>'


def preview_html(rows: list[dict]) -> str:
    cards = []
    for row in rows:
        cards.append(
            f'<div class="card"><div class="meta"><b>{html.escape(row["source"])}</b> · student prompt '
            f'{row["student_tokens"]} tokens · teacher prompt {row["teacher_tokens"]} tokens · demonstration '
            f'{row["demonstration_tokens"]} tokens</div><div class="cols">'
            f'<div><div class="meta">student sees (query only)</div><pre>{html.escape(row["student_prompt"])}</pre></div>'
            f'<div><div class="meta">teacher sees (query + demonstration)</div>'
            f'<pre>{html.escape(row["teacher_prompt"])}</pre></div></div></div>')
    return '<div class="preview">' + "".join(cards) + "</div>"


class Page:
    """What the tabs share: the training worker, the runs folder, limits, and the Train tab's settings.

    `settings` maps each training setting's name (a keyword of `logic.make_config`) to its
    component, in the order the HTTP API lists them; handlers get the values back by name.
    """

    def __init__(self, runs_dir: str, max_upload_mb: int, threads: int):
        self.worker = logic.TrainingWorker(runs_dir)
        self.runs_dir, self.max_upload_mb, self.threads = runs_dir, max_upload_mb, threads
        self.max_bytes = max_upload_mb * 2**20
        self.export_dir = Path(tempfile.mkdtemp(prefix="sdft-kit-export-"))  # a folder of ours that gradio may serve
        self.settings = make_settings(threads)
        self.examples = gr.State([])
        self.data_name = gr.State("demos.jsonl")

    def config(self, values) -> Config:
        """The Config of the settings' values (in `settings` order)."""
        named = dict(zip(self.settings, values))
        named["load_in_4bit"] = bool(named["load_in_4bit"]) if CUDA else None  # the box is inert without CUDA
        return logic.make_config(**named)

    def command(self, data_name: str, *values) -> str:
        try:
            return logic.cli_command(self.config(values), data=data_name)
        except ValueError as err:
            return f"# {err}"

    def run_choices(self, selected: str | None = None):
        names = [p.name for p in logic.list_runs(self.runs_dir)]
        current = self.worker.run_dir.name if self.worker.run_dir is not None else None
        current = current if current in names else None
        value = selected if selected in names else current or (names[0] if names else None)
        return gr.update(choices=names, value=value)

    def run_path(self, name: str | None) -> Path:
        if not name or name not in {p.name for p in logic.list_runs(self.runs_dir)}:  # only folders we list
            raise ValueError("pick a run (train one first)")
        return Path(self.runs_dir) / name


def make_settings(threads: int) -> dict[str, gr.components.Component]:
    """The Train tab's settings, unrendered (the Train tab places them; the Data tab reads them too)."""
    return {
        "model": gr.Textbox("embedded", label="Model", render=False,
                            info="'embedded' (SmolLM2-135M, offline), a Hugging Face id or a local path"),
        "load_in_4bit": gr.Checkbox(CUDA, label="4-bit base (QLoRA)", interactive=CUDA, render=False,
                                    info="on a CUDA GPU" if CUDA else "needs a CUDA GPU (none here)"),
        "method": gr.Radio(list(METHODS), value="sdft", label="Method", render=False,
                           info="SDFT: learn from own answers · SFT: the baseline"),
        "steps": gr.Number(12, label="Steps", precision=0, minimum=1, elem_id="steps", render=False),
        "learning_rate": gr.Number(5e-4, label="Learning rate", render=False),
        "lora_r": gr.Dropdown([4, 8, 16, 32, 64], value=16, label="LoRA rank", render=False),
        "max_new_tokens": gr.Slider(8, 512, value=48, step=8, label="New tokens per answer", render=False),
        "batch_size": gr.Number(2, label="Batch size", precision=0, minimum=1, render=False),
        "teacher": gr.Dropdown(list(TEACHER_KINDS), value="ema", label="Teacher", render=False,
                               info="ema (paper) · base: adapter off · live: current student"),
        "divergence": gr.Dropdown(list(logic.DIVERGENCES), value="forward KL (paper)", label="Divergence",
                                  info="what the student's per-token distribution is pulled by", render=False),
        "topk": gr.Number(0, label="Top-k", precision=0, minimum=0, render=False,
                          info="compare the teacher's top-k tokens plus a tail bucket (0 = full vocabulary)"),
        "threads": gr.Number(threads, label="CPU threads", precision=0, minimum=1, visible=not CUDA, render=False),
    }


def data_tab(page: Page) -> SimpleNamespace:
    """1 · Data: upload a file or pick a sample; errors inline; the first examples as the model sees them."""
    settings = list(page.settings.values())
    with gr.Tab("1 · Data"):
        with gr.Row():
            upload = gr.File(label=f"Upload JSONL or CSV (prompt + demonstration, up to {page.max_upload_mb} MB)",
                             type="binary", elem_id="upload", scale=2)
            with gr.Column(scale=1):
                sample = gr.Dropdown(list(logic.SAMPLES), value=next(iter(logic.SAMPLES)), label="or a bundled sample")
                use_sample = gr.Button("Use this sample", elem_id="use-sample")
        status = gr.HTML(elem_id="data-status")
        preview = gr.HTML()

    def show(examples, model):
        text = f"✓ <b>{len(examples)} examples</b> loaded. Below: the first ones exactly as the model sees them."
        try:
            rows = logic.preview_rows(examples, logic.load_tokenizer(model or "embedded"))
        except RuntimeError as err:
            return text, _error(f"no preview: {err}")
        return text, preview_html(rows)

    def on_upload(data: bytes | None, *values):
        command = page.command("demos.jsonl", *values)  # an upload has no path: the command names a placeholder
        if data is None:
            return [], "demos.jsonl", "", "", gr.skip(), gr.skip(), command
        try:
            examples = logic.parse_upload(data, page.max_bytes)
        except DataError as err:
            return [], "demos.jsonl", _error(str(err)), "", gr.skip(), gr.skip(), command
        model = dict(zip(page.settings, values))["model"]
        return examples, "demos.jsonl", *show(examples, model), examples[0].prompt, examples[0].demonstration, command

    def on_sample(name: str, *values):
        path = logic.SAMPLES[name]
        examples = logic.parse_upload(path.read_bytes(), page.max_bytes)
        shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
        model = dict(zip(page.settings, values))["model"]
        return (examples, shown, *show(examples, model), examples[0].prompt, examples[0].demonstration,
                None, page.command(shown, *values))  # the command in the same update: no race with a setting

    # The outputs that live on other tabs (the Compare fields, the command) are wired in `build`.
    return SimpleNamespace(upload=upload, sample=sample, use_sample=use_sample, status=status, preview=preview,
                           on_upload=on_upload, on_sample=on_sample, inputs=settings)


def train_tab(page: Page) -> SimpleNamespace:
    """2 · Train: the settings, Start / Stop / Resume, live status, curves and the token view."""
    worker, s = page.worker, page.settings
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
                for name in ("max_new_tokens", "teacher", "divergence", "topk", "threads"):
                    s[name].render()
            with gr.Column(scale=2):
                status = gr.Markdown("no training yet", elem_id="status")
                with gr.Row():
                    start = gr.Button("Start", variant="primary", elem_id="start")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    run = gr.Dropdown([], label="Run to resume", scale=2, allow_custom_value=True)
                    resume = gr.Button("Resume", elem_id="resume")
                message = gr.HTML()
                curves_plot = gr.Plot(label="loss and mean KL", elem_id="curves")
                with gr.Row():
                    metric = gr.Dropdown(METRIC_CHOICES, value="log_ratio", label="Colour tokens by", scale=2)
                    position = gr.Slider(0, 1, value=0, step=1, label="Inspect token # (starts at the most "
                                         "divergent one)", scale=2, elem_id="position")
                strip_plot = gr.Plot(label="latest rollout, token by token", elem_id="strip")
                detail_plot = gr.Plot(label="student vs teacher top-k at the inspected token")
        command = gr.Code(label="Equivalent command (copy-paste to train from a terminal)", language="shell",
                          interactive=False)
    seen = gr.State([])

    def on_start(examples, *values):
        try:
            run_dir = worker.start(page.config(values), examples)
        except (ValueError, logic.BusyError, OSError) as err:
            return _error(str(err)), gr.skip()
        return f"Started <b>{run_dir.name}</b> in {html.escape(str(run_dir))}.", page.run_choices(run_dir.name)

    def on_stop():
        if not worker.is_running():
            return "Nothing is training."
        worker.stop()
        return "Stopping after the current step; the checkpoint will be saved for Resume."

    def on_resume(name, steps):
        try:
            run_dir = worker.resume(page.run_path(name), steps=int(steps))
        except (ValueError, logic.BusyError, OSError) as err:
            return _error(str(err))
        return f"Resuming <b>{run_dir.name}</b> to step {int(steps)}."

    def token_views(record: dict, metric: str, at: int | None = None):
        """Strip and top-k detail of a record at token `at` (default: its most divergent token)."""
        metric = metric if metric in views.metrics_for(record) else views.metrics_for(record)[0]
        if at is None:
            at = views.loudest_token(record, metric)
        last = max(len(record["sample"]["tokens"]) - 1, 1) if record.get("sample") else 1
        return (views.token_strip(record, metric, selected=at, chars_per_row=64),
                views.token_detail(record, at), gr.update(maximum=last, value=min(at, last)))

    def poll(seen_key, metric):
        state = worker.status()
        records = worker.records()
        key = (str(state.run_dir), len(records), state.state)
        if key == tuple(seen_key or ()):  # nothing new: keep the figures as they are
            return state.markdown, gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen_key
        if not records:
            return state.markdown, None, None, None, gr.skip(), list(key)
        return (state.markdown, views.curves(records), *token_views(records[-1], metric), list(key))

    def on_token(metric, at=None):
        records = worker.records()
        if not records:
            return gr.skip(), gr.skip(), gr.skip()
        return token_views(records[-1], metric, None if at is None else int(at))

    settings = list(s.values())
    for setting in settings:
        setting.change(page.command, [page.data_name, *settings], command, api_name=False, show_progress="hidden")
    start.click(on_start, [page.examples, *settings], [message, run], api_name="start")
    stop.click(on_stop, None, message, api_name="stop")
    resume.click(on_resume, [run, s["steps"]], message, api_name="resume")
    gr.Timer(1.0).tick(poll, [seen, metric], [status, curves_plot, strip_plot, detail_plot, position, seen],
                       api_name="poll", show_progress="hidden")
    metric.change(on_token, metric, [strip_plot, detail_plot, position], api_name=False)
    # release, not change: the slider moved by a new step must not trigger a redraw of its own
    position.release(on_token, [metric, position], [strip_plot, detail_plot, position], api_name=False)
    return SimpleNamespace(run=run, command=command)


def compare_tab(page: Page) -> SimpleNamespace:
    """3 · Compare: one prompt answered by the base model, a trained adapter and the teacher."""
    with gr.Tab("3 · Compare") as tab:
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", lines=2, scale=2)
            demonstration = gr.Textbox(label="Demonstration (for the teacher)", lines=2, scale=2)
            run = gr.Dropdown([], label="Trained run", scale=1, allow_custom_value=True)
        button = gr.Button("Answer with all three", variant="primary")
        note = gr.HTML()
        with gr.Row():
            base_answer = gr.Textbox(label="Base model", lines=6)
            trained_answer = gr.Textbox(label="Trained adapter", lines=6)
            teacher_answer = gr.Textbox(label="Teacher (base + demonstration)", lines=6)

    def on_compare(prompt_text, demonstration_text, name, model):
        try:
            run_dir = page.run_path(name) if name else None
            answers = logic.compare_answers(prompt_text, demonstration_text or "", model or "embedded", run_dir)
        except (ValueError, RuntimeError, OSError) as err:
            return _error(str(err)), "", "", ""
        shown = "" if run_dir else "No run picked: only the base model and the teacher answer."
        return (shown, answers["base"], answers["trained"] or "(no trained adapter)",
                answers["teacher"] or "(no demonstration given)")

    button.click(on_compare, [prompt, demonstration, run, page.settings["model"]],
                 [note, base_answer, trained_answer, teacher_answer], api_name="compare")
    return SimpleNamespace(tab=tab, run=run, prompt=prompt, demonstration=demonstration)


def export_tab(page: Page) -> SimpleNamespace:
    """4 · Export: the adapter (PEFT) or the merged model, as a zip to download."""
    with gr.Tab("4 · Export") as tab:
        run = gr.Dropdown([], label="Run", allow_custom_value=True)
        with gr.Row():
            adapter = gr.Button("Adapter (.zip, PEFT format)", variant="primary")
            merged = gr.Button("Merged model (.zip)" + (" · not for 4-bit bases" if CUDA else ""))
        note = gr.HTML()
        file = gr.File(label="Download", interactive=False)

    def on_export(name, as_merged):
        try:
            run_dir = page.run_path(name)
            path = (logic.export_merged_zip if as_merged else logic.export_adapter_zip)(run_dir, page.export_dir)
        except (ValueError, RuntimeError, OSError) as err:
            return _error(str(err)), None
        return f"✓ {path.name} ({path.stat().st_size / 2**20:.1f} MB) is ready below.", str(path)

    adapter.click(lambda name: on_export(name, False), run, [note, file], api_name="export_adapter")
    merged.click(lambda name: on_export(name, True), run, [note, file], api_name="export_merged")
    return SimpleNamespace(tab=tab, run=run)


def build(runs_dir: str = "runs", max_upload_mb: int = 20, threads: int = 1) -> gr.Blocks:
    with gr.Blocks(title="sdft-kit", analytics_enabled=False, **(STYLE if GRADIO_5 else {})) as demo:
        page = Page(runs_dir, max_upload_mb, threads)
        gr.Markdown("# sdft-kit · Self-Distillation Fine-Tuning\n"
                    "Teach a model from your demonstrations: it learns from its own answers, scored by itself "
                    "shown the demonstration. **1** load data · **2** train · **3** compare · **4** export.")
        data = data_tab(page)
        train = train_tab(page)
        compare = compare_tab(page)
        export = export_tab(page)

        # Across tabs: loading data fills the Compare fields and the Train tab's command.
        loaded = [page.examples, page.data_name, data.status, data.preview, compare.prompt, compare.demonstration]
        data.upload.upload(data.on_upload, [data.upload, *data.inputs], [*loaded, train.command], api_name="load_data")
        data.use_sample.click(data.on_sample, [data.sample, *data.inputs], [*loaded, data.upload, train.command],
                              api_name="load_sample")
        demo.load(page.run_choices, None, train.run, api_name=False).then(
            page.command, [page.data_name, *data.inputs], train.command, api_name=False)
        for tab, dropdown in ((compare.tab, compare.run), (export.tab, export.run)):
            tab.select(page.run_choices, dropdown, dropdown, api_name=False)  # runs made since the page opened
            demo.load(page.run_choices, None, dropdown, api_name=False)
    demo.worker = page.worker  # for tests: wait for the run to finish
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="sdft-kit web app")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--runs-dir", default="runs", help="where training runs are written")
    parser.add_argument("--max-upload-mb", type=int, default=20, help="largest data file accepted")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy small CPU)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    launch(build(args.runs_dir, args.max_upload_mb, args.threads), args.host, args.port, args.share, args.max_upload_mb)


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False, max_upload_mb: int = 20,
           **kwargs):
    """Serve the app; gradio refuses larger uploads before they reach a handler."""
    return demo.queue().launch(server_name=host, server_port=port, share=share, max_file_size=f"{max_upload_mb}mb",
                               **({} if GRADIO_5 else STYLE), **kwargs)


if __name__ == "__main__":
    main()
