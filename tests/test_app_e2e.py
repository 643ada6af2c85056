"""The web app end to end: over HTTP with gradio_client (two clients are two browsers; a new client with
another's cookie is that browser after a reload), and in headless Chromium with Playwright (light and dark).

The app runs in this process on a free port; training uses tiny settings (2-3 steps, batch 2,
8 new tokens, one thread). The browser is Debian's chromium (no browser download)."""

import importlib.util
import io
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sdft_kit" / "samples" / "demo.jsonl"
CHROMIUM = "/usr/bin/chromium"
# The Train tab's settings as the API lists them: the preset, then the settings (app.Page.settings' order).
NAMES = ["model", "load_in_4bit", "method", "steps", "batch_size", "learning_rate", "lora_r", "max_new_tokens",
         "threads", "teacher", "template", "custom_template", "demo_selection", "skip_first", "alpha", "vocab", "topk",
         "report_to", "held_out"]
BASE = dict(model="embedded", load_in_4bit=False, method="sdft", steps=2, batch_size=2, learning_rate=1e-3, lora_r=16,
            max_new_tokens=8, threads=1, teacher="base", template="system", custom_template="", demo_selection="own",
            skip_first=0, alpha=0.0, vocab="full", topk=100, report_to="none", held_out=15)


def _settings(preset="workshop", **changes) -> list:
    values = {**BASE, **changes}
    return [preset, *[values[name] for name in NAMES]]


TINY = _settings()
SFT = _settings(method="sft")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_app():
    spec = importlib.util.spec_from_file_location("sdft_app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    module = _load_app()
    runs = tmp_path_factory.mktemp("runs")
    missing = str(tmp_path_factory.mktemp("models") / "not-there")  # allowed by the operator, fails to load
    limits = module.Limits(models=("embedded", missing), max_steps=50, max_upload_mb=1, max_record_chars=2000)
    demo = module.build(str(runs), limits, threads=1, max_waiting=1)
    port = _free_port()
    module.launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    yield demo, f"http://127.0.0.1:{port}/", runs, missing
    demo.page.trainings.wait(timeout=300)
    export_dir = demo.page.export_dir
    module.close_app(demo)
    assert not export_dir.exists()  # the app's temporary export folder goes with it


def _client(url: str, like=None, **kwargs):
    """A client (one browser); like=another client: the same browser after a reload (its cookie)."""
    cookies = dict(like.cookies) if like is not None else {}
    return gradio_client.Client(url, verbose=False, httpx_kwargs={"cookies": cookies}, **kwargs)


def _bad_files(folder: Path) -> dict[str, Path]:
    files = {"binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "columns": b"question,answer\nHi?,Hello.\n",
             "empty": b"", "json": b'{"prompt": "a", "demonstration": "b"}\n{"prompt": "c"}\n',
             "long": b'{"prompt": "' + b"a" * 2500 + b'", "demonstration": "b"}\n'}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_bytes(data)
    return paths


def _poll(client) -> dict:
    board, status, message, curves, strip, detail, position, metric = client.predict("log_ratio", api_name="/poll")
    line = status.split("\n\n")[0]  # the run's name, then the status line; the teacher check follows
    return dict(board=board, status=status, line=line.split(" · ", 1)[1] if line.startswith("**") else line,
                message=message, curves=curves, strip=strip, detail=detail)


def _wait_done(client, timeout=600) -> dict:
    deadline = time.time() + timeout
    while True:
        polled = _poll(client)
        if polled["line"].endswith(("done", "stopped (Resume continues from the checkpoint)")) or \
                "failed" in polled["line"] or time.time() > deadline:
            return polled
        time.sleep(1)


def test_upload_train_chat_and_read_back_the_plots_over_http(app, tmp_path):
    demo, url, runs, _ = app
    client = _client(url)
    expected = {"binary": "binary file", "columns": "CSV header has columns 'question', 'answer'",
                "empty": "the file is empty", "json": "line 2: field 'demonstration' is missing",
                "long": "line 1: the record is 2,501 characters, over this server's limit of 2,000"}
    for name, path in _bad_files(tmp_path).items():
        status, stats, *_ = client.predict(gradio_client.handle_file(str(path)), *TINY, api_name="/load_data")
        assert expected[name] in status and stats == "", name
    big = tmp_path / "big.jsonl"
    big.write_bytes(b'{"prompt": "a", "demonstration": "b"}\n' * 40_000)  # 1.5 MB > the 1 MB limit
    with pytest.raises(Exception, match="(?i)size|large"):
        client.predict(gradio_client.handle_file(str(big)), *TINY, api_name="/load_data")
    message, _ = client.predict(*TINY, api_name="/start")
    assert "no data yet" in message  # nothing was loaded in this session: a clear message, nothing started

    status, stats, table, page, pages, preview, prompt, demonstration, command = client.predict(
        gradio_client.handle_file(str(SAMPLE)), *_settings(template="paper"), api_name="/load_data")
    assert "24 examples" in status and "teacher sees" in preview and prompt == "What color is the sky on a clear day?"
    assert "This is an example for a response to the question" in preview  # the preview follows the template
    assert stats.startswith("**24 records** · longest: ") and "| demonstration |" in stats
    assert [row[0] for row in table["data"]] == list(range(1, 11)) and pages == "of 3"
    table, _, _ = client.predict(3, *TINY, api_name="/data_page")
    assert [row[0] for row in table["data"]] == [21, 22, 23, 24]
    status, _, table, _, pages, preview = client.predict(0, "What is 9 plus 9?", "Answer: 18.", *TINY,
                                                         api_name="/edit_record")  # the inline editor adds one
    assert "25 examples" in status and "Record 25 added" in status and pages == "of 3", status
    assert table["data"][-1][:4] == [25, "added 25", "What is 9 plus 9?", "Answer: 18."]
    assert "good response to the user" in preview  # the 'system' template of these settings
    refused = client.predict(0, "Q" * 2500, "A.", *TINY, api_name="/edit_record")[0]
    assert "over this server's limit of 2,000" in refused  # the upload's record bound holds for the editor
    status = client.predict(25, "", "", *TINY, api_name="/remove_record")[0]
    assert "24 examples" in status and "Record 25 removed" in status, status
    assert command.splitlines()[0] == ("sdft-kit train --data demos.jsonl --out runs/my-run --preset workshop "
                                       "--template paper --max-new-tokens 8 --steps 2 --report-to none")
    assert command.splitlines()[1].startswith("# Start keeps 15% of the records")  # what the run trains on
    message, _ = client.predict(*_settings(template="paper"), api_name="/start")
    assert message.startswith("Started <b>sdft-paper-lr1e-3-") and "4 records held out" in message, message
    busy, _ = client.predict(*TINY, api_name="/start")
    assert "You already have sdft-paper-lr1e-3-" in busy
    polled = _wait_done(client)
    text = polled["line"]
    assert "step 2/2, elapsed " in text and text.endswith("done") and "remaining" not in text, text
    # the check compared every template, and says so in words under the status
    assert "\n\n**Teacher check: " in polled["status"] and ", best of 3 (8 records" in polled["status"]
    curves = json.loads(polled["curves"]["plot"])
    loss = [trace for trace in curves["data"] if trace["name"] == "SDFT loss"][0]
    assert loss["x"] == [1, 2] and all(y > 0 for y in loss["y"])
    assert {"raw value at each step", "smoothed (EMA, weight 0.6)"} <= {t["name"] for t in curves["data"]}
    strip = json.loads(polled["strip"]["plot"])
    assert strip["data"][0]["type"] == "bar" and len(strip["data"][0]["text"]) >= 1  # one bar per token
    assert json.loads(polled["detail"]["plot"])["layout"]["title"]["text"].startswith("token #")
    strip, detail, _ = client.predict("log_ratio", "0:1", api_name="/select_token")  # what a click on token 0 sends
    assert json.loads(detail["plot"])["layout"]["title"]["text"].startswith("token #0:")

    run_name = next(runs.iterdir()).name
    # One click applies the teacher check's advice (a better template than 'paper', if it found one)
    check = json.loads((runs / run_name / "teacher_check.json").read_text())
    advised = {k: v for k, v in check["settings"].items() if (k, v) != ("template", "paper")}
    message, *values = client.predict(api_name="/apply_advice")
    if advised:
        applied = dict(zip(NAMES, values))
        assert message.startswith("Applied: ") and {k: applied[k] for k in advised} == advised, (message, values)
    else:
        assert message.startswith("No advice to apply"), message
    note, path = client.predict(run_name, api_name="/export_adapter")
    assert "adapter.zip" in note and Path(path).stat().st_size > 10_000
    note, _ = client.predict("../../etc", api_name="/export_adapter")
    assert "pick one of your runs" in note  # run names are checked against the owner's runs
    table, _, tracker = client.predict([run_name], api_name="/evaluate_runs")
    assert table == "Not scored yet." and "Not logged to a tracker" in tracker

    # Chat: the answer streams (several updates, each extending the last), from the trained run
    job = client.submit([], "What is 7 plus 5?", "trained", run_name, "", "embedded", "paper", "", 8, 0, 1, 1.1, "",
                        api_name="/chat")
    updates = [answer for history, _, _ in job for answer in [history[-1]["content"][0]["text"]] if history]
    assert job.outputs()[-1][2] == "", job.outputs()[-1][2]
    assert len(updates) >= 3 and updates[-1] != "…" and updates[-1].startswith(updates[-2]), updates


def test_uploads_name_their_format_and_a_column_mapping_reaches_the_command(app):
    """Alpaca (a JSON array) is detected and named; a question/answer TSV loads once the mapping is set, and the
    Train tab's equivalent command carries --data of the upload's kind and --columns."""
    _, url, _, _ = app
    client = _client(url)
    files = ROOT / "tests" / "data_files"
    status, *_, command = client.predict(gradio_client.handle_file(str(files / "alpaca.json")), *TINY,
                                         api_name="/load_data")
    assert "3 examples</b> loaded: Alpaca, 3 records; columns instruction+input -&gt; prompt" in status, status
    assert command.startswith("sdft-kit train --data demos.json --out ") and "--columns" not in command
    status, *_ = client.predict(gradio_client.handle_file(str(files / "qa.tsv")), *TINY, api_name="/load_data")
    assert "TSV header has columns 'question', 'answer'" in status
    client.predict("prompt=question,demonstration=answer", api_name="/set_columns")
    status, *_, command = client.predict(gradio_client.handle_file(str(files / "qa.tsv")), *TINY,
                                         api_name="/load_data")
    assert "2 examples</b> loaded" in status and "(--columns)" in status, status
    assert command.startswith("sdft-kit train --data demos.tsv --columns prompt=question,demonstration=answer --out ")


def test_settings_presets_and_yaml_over_http(app, tmp_path):
    demo, url, _, _ = app
    client = _client(url)
    values = client.predict("paper", api_name="/preset")  # the preset sets the fields
    named = dict(zip(NAMES, values))
    assert (named["template"], named["teacher"], named["skip_first"]) == ("paper", "ema", 3)
    path, note = client.predict(*_settings(steps=7, template="plain"), api_name="/save_settings")
    saved = Path(path["value"] if isinstance(path, dict) else path).read_text()
    assert "steps: 7" in saved and "template: plain" in saved and "saved" not in note.lower() or "--config" in note
    yaml_file = tmp_path / "config.yaml"
    yaml_file.write_text(saved)
    note, *values = client.predict(gradio_client.handle_file(str(yaml_file)), "default", api_name="/load_settings")
    named = dict(zip(NAMES, values))
    assert note.startswith("✓ Settings loaded") and (named["steps"], named["template"]) == (7, "plain")
    yaml_file.write_text("train:\n  steps: [3\n")
    note = client.predict(gradio_client.handle_file(str(yaml_file)), "default", api_name="/load_settings")[0]
    assert "uploaded config, line 3, column 1: not valid YAML" in note


def test_runs_belong_to_their_browser_a_reload_reattaches_and_a_second_start_queues(app):
    demo, url, runs, _ = app
    demo.page.trainings.wait(timeout=600)  # an earlier test's run
    ann, bob = _client(url), _client(url)
    assert ann.cookies and ann.cookies != bob.cookies  # each browser gets its own cookie
    for client in (ann, bob):
        client.predict(gradio_client.handle_file(str(SAMPLE)), *SFT, api_name="/load_data")
    message, runs_update = ann.predict(*_settings(method="sft", steps=12), api_name="/start")
    assert message.startswith("Started"), message
    ann_run = runs_update["value"]
    deadline = time.time() + 300
    while "step 1/12" not in _poll(ann)["line"] and "step 2/12" not in _poll(ann)["line"]:
        assert time.time() < deadline, _poll(ann)["line"]
        time.sleep(0.5)
    # F5: a new page (a new client) with Ann's cookie finds her live run, its curves and her runs
    reloaded = _client(url, like=ann)
    polled = _poll(reloaded)
    assert polled["status"].startswith(f"**{ann_run}** · step ") and polled["curves"] is not None, polled["status"]
    assert f"training now: `{ann_run}` (yours), step " in polled["board"] and "left" in polled["board"]
    # Bob sees the server's state, not Ann's run as his; his Start waits in the queue, at a position
    assert _poll(bob)["status"] == "no training yet" and f"training now: `{ann_run}`, step " in _poll(bob)["board"]
    message, _ = bob.predict(*_settings(method="sft", steps=1), api_name="/start")
    assert "waits: #1 in the queue" in message, message
    assert _poll(bob)["line"].startswith("waiting: #1 in the queue (training now: step ")
    assert "1. `sft-lr1e-3-" in _poll(ann)["board"] and "(yours)" in _poll(bob)["board"].split("waiting:")[1]
    cat = _client(url)
    cat.predict(gradio_client.handle_file(str(SAMPLE)), *SFT, api_name="/load_data")
    assert "The queue is full" in cat.predict(*SFT, api_name="/start")[0]  # the fixture allows 1 waiting
    assert "pick one of your runs" in bob.predict(ann_run, 3, api_name="/resume")
    assert "pick one of your runs" in bob.predict(ann_run, api_name="/export_adapter")[0]
    assert bob.predict(api_name="/stop").startswith("Cancelled sft-lr1e-3-")  # his own waiting run
    assert _poll(ann)["line"].startswith("step ")  # Bob's Stop did not stop Ann
    assert reloaded.predict(api_name="/stop").startswith(f"Stopping {ann_run}")  # the reloaded page owns it
    polled = _wait_done(ann)
    assert polled["line"].endswith("stopped (Resume continues from the checkpoint)"), polled["line"]
    assert polled["message"] == ""  # "Stopping..." is gone once it stopped
    assert "pick one of your runs" in bob.predict("Hi?", "", ann_run, "embedded", api_name="/compare")[0]
    assert "adapter.zip" in reloaded.predict(ann_run, api_name="/export_adapter")[0]


def test_api_takes_integers_and_refuses_models_and_settings_beyond_the_limits(app):
    demo, url, runs, missing = app
    client = _client(url)
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/start"]["parameters"]
    types = {p["label"]: p["type"]["type"] for p in api}
    assert types["LoRA rank"] == types["Steps"] == types["Batch size"] == "integer"
    demo.page.trainings.wait(timeout=600)
    client.predict(gradio_client.handle_file(str(SAMPLE)), *SFT, api_name="/load_data")
    before = sorted(runs.iterdir())

    def refusal(endpoint: str, name: str) -> str:
        """What a request naming model `name` gets back (gradio's own check of the choices, or ours)."""
        data = [gradio_client.handle_file(str(SAMPLE))] if endpoint == "/load_data" else []
        try:
            return str(client.predict(*data, *_settings(model=name), api_name=endpoint)[0]).replace(name, "NAME")
        except Exception as err:
            return str(err).replace(name, "NAME")

    for endpoint in ("/start", "/load_data"):  # the preview's tokenizer is checked too
        errors = {refusal(endpoint, name) for name in ("/etc", "/no/such/dir", "../../etc/passwd", "gpt2")}
        assert len(errors) == 1, errors  # the same words whether the path exists or not
        assert "not in the list of choices" in errors.pop()
    with pytest.raises(Exception, match="greater than maximum"):
        client.predict(*_settings(steps=10**12), api_name="/start")  # gradio refuses it before our handler
    with pytest.raises(Exception, match="less than minimum"):
        client.predict(*_settings(steps=0), api_name="/start")
    assert client.predict(*_settings(method="sft", lora_r=8, steps=1), api_name="/start")[0].startswith("Started")
    assert _wait_done(client)["line"].endswith("done")
    # a failed start (an allowed model that does not load) leaves no run folder holding the uploaded data
    client.predict(*_settings(model=missing), api_name="/start")
    text = _wait_done(client)["line"]
    assert "failed" in text and "the run folder was removed" in text
    assert len(sorted(runs.iterdir())) == len(before) + 1  # only the run that trained


def test_one_sessions_long_answer_does_not_hold_up_another_sessions_chat(app):
    demo, url, runs, _ = app
    ann, bob = _client(url), _client(url)

    def chat(message: str, new_tokens: int) -> list:  # the base model, greedy, no stop string
        return [[], message, "base", "", "", "embedded", "paper", "", new_tokens, 0, 1, 1.0, ""]

    long = ann.submit(*chat("Count from 1 to 1000, separated by commas.", 512), api_name="/chat")
    deadline = time.monotonic() + 300
    while len(long.outputs()) < 3:  # Ann's answer is streaming
        assert time.monotonic() < deadline and not long.done(), long.outputs()[-1:]
        time.sleep(0.2)
    start = time.monotonic()
    history, _, note = bob.predict(*chat("What is 7 plus 5?", 8), api_name="/chat")
    waited = time.monotonic() - start
    assert note == "" and history[-1]["role"] == "assistant" and history[-1]["content"], (history, note)
    answered = long.outputs()[-1][0][-1]["content"][0]["text"]
    # gradio's default (one chat at a time) made Bob wait for the whole of Ann's 512 tokens
    assert not long.done(), f"Ann's answer ended ({len(answered)} characters) before Bob's; Bob waited {waited:.1f} s"
    # A message over the context is refused at once, in one line, without holding anyone up either.
    start = time.monotonic()
    history, _, note = bob.predict(*chat("word " * 40_000, 8), api_name="/chat")
    assert "tokens; with 8 for the answer that is more than the model's context of 8192 tokens" in note, note
    assert time.monotonic() - start < 60 and not long.done()
    long.cancel()


def test_a_login_owns_its_runs_from_any_browser(tmp_path):
    module = _load_app()
    demo = module.build(str(tmp_path / "runs"), threads=1)
    port = _free_port()
    module.launch(demo, port=port, auth=[("ann", "s3cret"), ("bob", "pw")], prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(Exception):
            _client(url).predict(api_name="/stop")
        with pytest.raises(Exception):
            _client(url, auth=("ann", "wrong"))
        ann, bob = _client(url, auth=("ann", "s3cret")), _client(url, auth=("bob", "pw"))
        assert ann.predict(api_name="/stop") == "Nothing of yours is training or waiting."
        ann.predict(gradio_client.handle_file(str(SAMPLE)), *SFT, api_name="/load_data")
        assert ann.predict(*_settings(method="sft", steps=1), api_name="/start")[0].startswith("Started")
        _wait_done(ann)
        elsewhere = _client(url, auth=("ann", "s3cret"))  # another browser, the same login: the same runs
        assert _poll(elsewhere)["line"].endswith("done") and _poll(bob)["line"] == "no training yet"
        run = next((tmp_path / "runs").iterdir())
        assert json.loads((run / "app_run.json").read_text())["tracker_project"] == "sdft-kit-ann"
    finally:
        module.close_app(demo)


def _contrast(foreground: str, background: str) -> float:
    """WCAG contrast ratio of two CSS rgb()/rgba() colours."""
    def luminance(colour: str) -> float:
        channels = [float(x) / 255 for x in colour[colour.index("(") + 1:-1].split(",")[:3]]
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    high, low = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)


# The text colour of an element and the first opaque background behind it, as the browser computes them.
COLOURS_JS = """(selector) => [...document.querySelectorAll(selector)].filter(e => e.offsetParent).map(e => {
  let node = e, background = 'rgba(0, 0, 0, 0)';
  while (node && node.nodeType === 1) {
    const fill = getComputedStyle(node).backgroundColor;
    if (!fill.startsWith('rgba') || !fill.endsWith(', 0)')) { background = fill; break; }
    node = node.parentElement;
  }
  return [getComputedStyle(e).color, background];
})"""


def _readable(page, selectors: list[str]) -> dict:
    """For each selector, the worst contrast of its text against its background (every element shown)."""
    worst = {}
    for selector in selectors:
        pairs = page.evaluate(COLOURS_JS, selector)
        assert pairs, f"nothing shown matches {selector}"
        worst[selector] = min(_contrast(colour, background) for colour, background in pairs)
    return worst


def test_browser_light_and_dark_a_reload_mid_run_click_a_token_and_chat(app, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium (CI installs it in .ci/run)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download)")
    import numpy
    from PIL import Image

    demo, url, runs, _ = app
    demo.page.trainings.wait(timeout=600)  # one training at a time
    bad = _bad_files(tmp_path)["binary"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})  # one browser: one cookie
        page = context.new_page()
        # Bounds for a busy 2-core machine (another test run beside this one): generous, but each one ends.
        page.set_default_timeout(120_000)
        page.goto(url)
        upload = page.locator("#upload input[type=file]")
        upload.set_input_files(str(bad))
        page.get_by_text("binary file").wait_for()  # the error is shown in the page
        page.locator("#upload button[aria-label='Clear']").first.click()
        upload.set_input_files(str(SAMPLE))
        page.get_by_text("24 examples").wait_for()  # the app is still usable
        page.get_by_text("teacher sees (query + demonstration)").first.wait_for()
        page.locator("#data-stats").get_by_text("24 records").wait_for()
        page.locator("#data-table").get_by_text("What is 7 plus 5?").wait_for()  # the table's first page
        light_data = _readable(page, ["#preview .card pre", "#preview .meta"])
        page.get_by_role("tab", name="2 · Train").click()
        steps = page.locator("#setting-steps input")
        steps.fill("3")
        steps.press("Tab")
        page.get_by_text("--steps 3").wait_for()  # the equivalent command follows the settings
        for setting, value in (("max_new_tokens", "8"), ("report_to", None)):
            if value:
                page.locator(f"#setting-{setting} input").fill(value)
                page.locator(f"#setting-{setting} input").press("Tab")
        page.locator("#advanced").get_by_text("Advanced: the teacher and the loss").click()
        page.get_by_text("Teacher template").first.wait_for()
        page.locator("#start").click()
        page.locator("#status").get_by_text("step 1/3").wait_for(timeout=600_000)
        run_name = page.locator("#status strong").first.text_content()
        page.reload()  # F5 mid-run: the page finds the run again
        page.get_by_role("tab", name="2 · Train").click()
        page.locator("#status").get_by_text(run_name).wait_for(timeout=30_000)
        page.locator("#board").get_by_text("(yours)").wait_for(timeout=30_000)
        page.locator("#status").get_by_text("done").wait_for(timeout=600_000)
        page.locator("#strip .js-plotly-plot").wait_for()
        page.wait_for_timeout(1500)  # let plotly finish drawing

        # A one-line answer (8 tokens) keeps a full row: the plot area is not squashed to a sliver.
        shot = Image.open(io.BytesIO(page.locator("#strip .nsewdrag").first.screenshot()))  # the plot area
        inked = int((numpy.asarray(shot.convert("RGB")).min(axis=2) < 200).sum())  # tokens are drawn in it
        assert shot.height >= 30 and inked > 50, (shot.size, inked)
        # Clicking a token selects it: the top-k detail follows.
        bars = page.locator("#strip .bars .point path")
        title = page.locator("#detail .gtitle").first
        assert "p = 0.0000" not in title.text_content()  # tiny probabilities print as 3.2e-06
        current = int(title.text_content().split("#")[1].split(":")[0])
        target = (current + 1) % bars.count()
        box = bars.nth(target).bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.locator("#detail .gtitle").get_by_text(f"token #{target}:").wait_for()
        page.mouse.move(0, 0)
        page.wait_for_timeout(500)
        light = _readable(page, ["#status p", "#board p"])
        screenshot = tmp_path / "app.png"
        page.screenshot(path=str(screenshot), full_page=True)

        # Dark mode (gradio follows the OS; ?__theme=dark forces it): the same texts stay readable.
        dark_page = context.new_page()  # the same browser (its cookie): the same runs
        dark_page.goto(url + "?__theme=dark")
        dark_page.get_by_role("tab", name="2 · Train").click()
        dark_page.locator("#status").get_by_text("done").wait_for(timeout=60_000)
        dark = _readable(dark_page, ["#status p", "#board p"])
        dark_page.wait_for_timeout(1500)
        dark_shot = tmp_path / "app-dark.png"
        dark_page.screenshot(path=str(dark_shot), full_page=True)
        background = dark_page.evaluate("getComputedStyle(document.querySelector('gradio-app')).backgroundColor")
        dark_page.close()

        page.get_by_role("tab", name="4 · Chat").click()
        page.locator("#chat-message textarea").fill("What is 7 plus 5?")
        page.locator("#chat-send").click()
        page.locator("#chatbot .message.bot").first.wait_for(timeout=180_000)
        page.wait_for_function("() => { const m = document.querySelectorAll('#chatbot .message.bot');"
                               " return m.length && m[m.length - 1].innerText.trim().length > 3; }", timeout=180_000)
        browser.close()
    assert _contrast(background, "rgb(255, 255, 255)") > 4, background  # the page really is dark
    for worst in (light_data, light, dark):  # WCAG AA for body text: 4.5
        assert all(ratio >= 4.5 for ratio in worst.values()), worst
    assert screenshot.stat().st_size > 20_000 and dark_shot.stat().st_size > 20_000
    if os.environ.get("SDFT_KIT_UPDATE_SCREENSHOT"):  # refresh the README's pictures
        shutil.copy(screenshot, ROOT / "docs" / "img" / "app.png")
        shutil.copy(dark_shot, ROOT / "docs" / "img" / "app-dark.png")
