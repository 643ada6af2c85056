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

import gradio as gr
import torch

from sdft_kit import app_logic as logic
from sdft_kit import views
from sdft_kit.data import DataError

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


def build(runs_dir: str = "runs", max_upload_mb: int = 20, threads: int = 1) -> gr.Blocks:
    worker = logic.TrainingWorker(runs_dir)
    max_bytes = max_upload_mb * 2**20
    export_dir = Path(tempfile.mkdtemp(prefix="sdft-kit-export-"))  # a folder of ours that gradio may serve

    def run_choices(selected: str | None = None):
        names = [p.name for p in logic.list_runs(runs_dir)]
        current = worker.run_dir.name if worker.run_dir is not None and worker.run_dir.name in names else None
        value = selected if selected in names else current or (names[0] if names else None)
        return gr.update(choices=names, value=value)

    def run_path(name: str | None) -> Path:
        if not name or name not in {p.name for p in logic.list_runs(runs_dir)}:  # only folders we list
            raise ValueError("pick a run (train one first)")
        return Path(runs_dir) / name

    # -- data --
    def show_data(examples, model):
        text = f"✓ <b>{len(examples)} examples</b> loaded. Below: the first ones exactly as the model sees them."
        try:
            rows = logic.preview_rows(examples, logic.load_tokenizer(model or "embedded"))
        except RuntimeError as err:
            return text, _error(f"no preview: {err}")
        return text, preview_html(rows)

    def on_upload(data: bytes | None, *knobs):
        command = on_knobs("demos.jsonl", *knobs)  # an upload has no path: the command names a placeholder
        if data is None:
            return [], "demos.jsonl", "", "", gr.skip(), gr.skip(), command
        try:
            examples = logic.parse_upload(data, max_bytes)
        except DataError as err:
            return [], "demos.jsonl", _error(str(err)), "", gr.skip(), gr.skip(), command
        return (examples, "demos.jsonl", *show_data(examples, knobs[0]), examples[0].prompt,
                examples[0].demonstration, command)

    def on_sample(name: str, *knobs):
        path = logic.SAMPLES[name]
        examples = logic.parse_upload(path.read_bytes(), max_bytes)
        shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
        return (examples, shown, *show_data(examples, knobs[0]), examples[0].prompt, examples[0].demonstration,
                None, on_knobs(shown, *knobs))  # the command in the same update: no race with a knob change

    # -- train --
    def config_from(*knobs):
        model, four_bit, *rest = knobs
        return logic.make_config(model, (bool(four_bit) if CUDA else None), *rest)

    def on_knobs(data_name, *knobs):
        try:
            return logic.cli_command(config_from(*knobs), data=data_name)
        except ValueError as err:
            return f"# {err}"

    def on_start(examples, *knobs):
        try:
            run_dir = worker.start(config_from(*knobs), examples)
        except (ValueError, logic.BusyError, OSError) as err:
            return _error(str(err)), gr.skip()
        return f"Started <b>{run_dir.name}</b> in {html.escape(str(run_dir))}.", run_choices(run_dir.name)

    def on_stop():
        if not worker.is_running():
            return "Nothing is training."
        worker.stop()
        return "Stopping after the current step; the checkpoint will be saved for Resume."

    def on_resume(name, steps):
        try:
            run_dir = worker.resume(run_path(name), steps=int(steps))
        except (ValueError, logic.BusyError, OSError) as err:
            return _error(str(err))
        return f"Resuming <b>{run_dir.name}</b> to step {int(steps)}."

    def token_views(record: dict, metric: str, position: int | None = None):
        """Strip and top-k detail of a record at `position` (default: its most divergent token)."""
        metric = metric if metric in views.metrics_for(record) else views.metrics_for(record)[0]
        if position is None:
            position = views.loudest_token(record, metric)
        last = max(len(record["sample"]["tokens"]) - 1, 1) if record.get("sample") else 1
        return (views.token_strip(record, metric, selected=position, chars_per_row=64),
                views.token_detail(record, position), gr.update(maximum=last, value=min(position, last)))

    def poll(seen, metric):
        status = worker.status()
        records = worker.records()
        key = (str(status.run_dir), len(records), status.state)
        if key == tuple(seen or ()):  # nothing new: keep the figures as they are
            return status.markdown, gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen
        if not records:
            return status.markdown, None, None, None, gr.skip(), list(key)
        return (status.markdown, views.curves(records), *token_views(records[-1], metric), list(key))

    def on_token(metric, position=None):
        records = worker.records()
        if not records:
            return gr.skip(), gr.skip(), gr.skip()
        return token_views(records[-1], metric, None if position is None else int(position))

    # -- compare and export --
    def on_compare(prompt, demonstration, name, model):
        try:
            run_dir = run_path(name) if name else None
            answers = logic.compare_answers(prompt, demonstration or "", model or "embedded", run_dir)
        except (ValueError, RuntimeError, OSError) as err:
            return _error(str(err)), "", "", ""
        note = "" if run_dir else "No run picked: only the base model and the teacher answer."
        return (note, answers["base"], answers["trained"] or "(no trained adapter)",
                answers["teacher"] or "(no demonstration given)")

    def on_export(name, merged):
        try:
            run_dir = run_path(name)
            path = (logic.export_merged_zip if merged else logic.export_adapter_zip)(run_dir, export_dir)
        except (ValueError, RuntimeError, OSError) as err:
            return _error(str(err)), None
        return f"✓ {path.name} ({path.stat().st_size / 2**20:.1f} MB) is ready below.", str(path)

    with gr.Blocks(title="sdft-kit", analytics_enabled=False, **(STYLE if GRADIO_5 else {})) as demo:
        examples = gr.State([])
        data_name = gr.State("demos.jsonl")
        seen = gr.State([])
        gr.Markdown("# sdft-kit · Self-Distillation Fine-Tuning\n"
                    "Teach a model from your demonstrations: it learns from its own answers, scored by itself "
                    "shown the demonstration. **1** load data · **2** train · **3** compare · **4** export.")
        with gr.Tab("1 · Data"):
            with gr.Row():
                upload = gr.File(label=f"Upload JSONL or CSV (prompt + demonstration, up to {max_upload_mb} MB)",
                                 type="binary", elem_id="upload", scale=2)
                with gr.Column(scale=1):
                    sample = gr.Dropdown(list(logic.SAMPLES), value=next(iter(logic.SAMPLES)), label="or a bundled sample")
                    use_sample = gr.Button("Use this sample", elem_id="use-sample")
            data_status = gr.HTML(elem_id="data-status")
            preview = gr.HTML()
        with gr.Tab("2 · Train"):
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    model = gr.Textbox("embedded", label="Model",
                                       info="'embedded' (SmolLM2-135M, offline), a Hugging Face id or a local path")
                    four_bit = gr.Checkbox(CUDA, label="4-bit base (QLoRA)", interactive=CUDA,
                                           info="on a CUDA GPU" if CUDA else "needs a CUDA GPU (none here)")
                    method = gr.Radio(["sdft", "sft"], value="sdft", label="Method",
                                      info="SDFT: learn from own answers · SFT: the baseline")
                    with gr.Row():
                        steps = gr.Number(12, label="Steps", precision=0, minimum=1, elem_id="steps")
                        batch = gr.Number(2, label="Batch size", precision=0, minimum=1)
                    with gr.Row():
                        lr = gr.Number(5e-4, label="Learning rate")
                        lora_r = gr.Dropdown([4, 8, 16, 32, 64], value=16, label="LoRA rank")
                    new_tokens = gr.Slider(8, 512, value=48, step=8, label="New tokens per answer")
                    teacher = gr.Dropdown(["ema", "base", "live"], value="ema", label="Teacher",
                                          info="ema (paper) · base: adapter off · live: current student")
                    divergence = gr.Dropdown(list(logic.DIVERGENCES), value="forward KL (paper)", label="Divergence",
                                             info="what the student's per-token distribution is pulled by")
                    topk = gr.Number(0, label="Top-k", precision=0, minimum=0,
                                     info="compare the teacher's top-k tokens plus a tail bucket (0 = full vocabulary)")
                    threads = gr.Number(threads, label="CPU threads", precision=0, minimum=1, visible=not CUDA)
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
        with gr.Tab("3 · Compare") as compare_tab:
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", lines=2, scale=2)
                demonstration = gr.Textbox(label="Demonstration (for the teacher)", lines=2, scale=2)
                compare_run = gr.Dropdown([], label="Trained run", scale=1, allow_custom_value=True)
            compare = gr.Button("Answer with all three", variant="primary")
            compare_note = gr.HTML()
            with gr.Row():
                base_answer = gr.Textbox(label="Base model", lines=6)
                trained_answer = gr.Textbox(label="Trained adapter", lines=6)
                teacher_answer = gr.Textbox(label="Teacher (base + demonstration)", lines=6)
        with gr.Tab("4 · Export") as export_tab:
            export_run = gr.Dropdown([], label="Run", allow_custom_value=True)
            with gr.Row():
                export_adapter = gr.Button("Adapter (.zip, PEFT format)", variant="primary")
                export_merged = gr.Button("Merged model (.zip)" + (" · not for 4-bit bases" if CUDA else ""))
            export_note = gr.HTML()
            export_file = gr.File(label="Download", interactive=False)
        timer = gr.Timer(1.0)

        knobs = [model, four_bit, method, steps, lr, lora_r, new_tokens, batch, teacher, divergence, topk, threads]
        data_outputs = [examples, data_name, data_status, preview, prompt, demonstration]
        upload.upload(on_upload, [upload, *knobs], [*data_outputs, command], api_name="load_data")
        use_sample.click(on_sample, [sample, *knobs], [*data_outputs, upload, command], api_name="load_sample")
        for knob in knobs:
            knob.change(on_knobs, [data_name, *knobs], command, api_name=False, show_progress="hidden")
        start.click(on_start, [examples, *knobs], [message, run], api_name="start")
        stop.click(on_stop, None, message, api_name="stop")
        resume.click(on_resume, [run, steps], message, api_name="resume")
        timer.tick(poll, [seen, metric], [status, curves_plot, strip_plot, detail_plot, position, seen],
                   api_name="poll", show_progress="hidden")
        metric.change(on_token, metric, [strip_plot, detail_plot, position], api_name=False)
        # release, not change: the slider moved by a new step must not trigger a redraw of its own
        position.release(on_token, [metric, position], [strip_plot, detail_plot, position], api_name=False)
        compare.click(on_compare, [prompt, demonstration, compare_run, model],
                      [compare_note, base_answer, trained_answer, teacher_answer], api_name="compare")
        export_adapter.click(lambda name: on_export(name, False), export_run, [export_note, export_file],
                             api_name="export_adapter")
        export_merged.click(lambda name: on_export(name, True), export_run, [export_note, export_file],
                            api_name="export_merged")
        demo.load(run_choices, None, run, api_name=False).then(on_knobs, [data_name, *knobs], command, api_name=False)
        for tab, dropdown in ((compare_tab, compare_run), (export_tab, export_run)):
            tab.select(run_choices, dropdown, dropdown, api_name=False)  # runs made since the page opened
            demo.load(run_choices, None, dropdown, api_name=False)
    demo.worker = worker  # for tests: wait for the run to finish
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
    torch.set_num_threads(args.threads)
    launch(build(args.runs_dir, args.max_upload_mb, args.threads), args.host, args.port, args.share, args.max_upload_mb)


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False, max_upload_mb: int = 20,
           **kwargs):
    """Serve the app; gradio refuses larger uploads before they reach a handler."""
    return demo.queue().launch(server_name=host, server_port=port, share=share, max_file_size=f"{max_upload_mb}mb",
                               **({} if GRADIO_5 else STYLE), **kwargs)


if __name__ == "__main__":
    main()
