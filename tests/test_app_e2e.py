"""The web app end to end: over HTTP with gradio_client (two clients are two browser sessions), and in
headless Chromium with Playwright.

The app runs in this process on a free port; training uses tiny settings (2 steps, batch 2,
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

from sdft_kit import app_logic as logic

gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sdft_kit" / "samples" / "demo.jsonl"
CHROMIUM = "/usr/bin/chromium"
# The Train tab's settings in the API's order: model, 4-bit, method, steps, learning rate, LoRA rank, new tokens,
# batch size, teacher kind, divergence, vocabulary, k, template, custom template, skip first, demonstration, threads,
# tracking
TINY = ["embedded", False, "sdft", 2, 5e-4, 16, 8, 2, "base", "forward KL (paper)", "full", 100, "paper", "", 3,
        "own", 1, "none"]
SFT = [*TINY[:2], "sft", *TINY[3:]]


def _settings(**changes) -> list:
    names = ["model", "load_in_4bit", "method", "steps", "learning_rate", "lora_r", "max_new_tokens", "batch_size",
             "teacher", "divergence", "vocab", "topk", "template", "custom_template", "skip_first",
             "demo_selection", "threads", "report_to"]
    values = dict(zip(names, SFT))
    values.update(changes)
    return [values[name] for name in names]


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
    demo = module.build(str(runs), limits, threads=1)
    port = _free_port()
    module.launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    yield demo, f"http://127.0.0.1:{port}/", runs, missing
    logic.wait_until_idle(timeout=300)
    export_dir = demo.page.export_dir
    module.close_app(demo)
    assert not export_dir.exists()  # the app's temporary export folder goes with it


def _bad_files(folder: Path) -> dict[str, Path]:
    files = {"binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "columns": b"question,answer\nHi?,Hello.\n",
             "empty": b"", "json": b'{"prompt": "a", "demonstration": "b"}\n{"prompt": "c"}\n',
             "long": b'{"prompt": "' + b"a" * 2500 + b'", "demonstration": "b"}\n'}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_bytes(data)
    return paths


def _wait_done(client, timeout=420) -> tuple:  # a busy 2-core machine: minutes, bounded
    deadline = time.time() + timeout
    while True:
        result = client.predict("log_ratio", api_name="/poll")
        text = result[0].split("\n\n")[0]  # the status line; the teacher check's verdict follows it
        if text.endswith("done") or "failed" in text or time.time() > deadline:
            return text, result
        time.sleep(1)


def test_upload_train_chat_and_read_back_the_plots_over_http(app, tmp_path):
    demo, url, runs, _ = app
    client = gradio_client.Client(url, verbose=False)
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
        gradio_client.handle_file(str(SAMPLE)), *TINY, api_name="/load_data")
    assert "24 examples" in status and "teacher sees" in preview and prompt == "What color is the sky on a clear day?"
    assert stats.startswith("**24 records** · longest: ") and "| demonstration |" in stats
    assert [row[0] for row in table["data"]] == list(range(1, 11)) and pages == "of 3"
    table, _, _ = client.predict(3, api_name="/data_page")
    assert [row[0] for row in table["data"]] == [21, 22, 23, 24]
    status, _, table, _, pages, _ = client.predict(0, "What is 9 plus 9?", "Answer: 18.", "embedded",
                                                   api_name="/edit_record")  # the inline editor adds a record
    assert "25 examples" in status and "Record 25 added" in status and pages == "of 3", status
    assert table["data"][-1][:4] == [25, "added 25", "What is 9 plus 9?", "Answer: 18."]
    refused = client.predict(0, "Q" * 2500, "A.", "embedded", api_name="/edit_record")[0]
    assert "over this server's limit of 2,000" in refused  # the upload's record bound holds for the editor
    status = client.predict(25, "embedded", api_name="/remove_record")[0]
    assert "24 examples" in status and "Record 25 removed" in status, status
    assert command == ("sdft-kit train --data demos.jsonl --out runs/my-run --teacher base --max-new-tokens 8 "
                       "--steps 2 --batch-size 2 --threads 1 --report-to none")
    message, _ = client.predict(*TINY, api_name="/start")
    assert message.startswith("Started"), message
    busy, _ = client.predict(*TINY, api_name="/start")
    assert "already training" in busy
    text, (shown, curves, strip, detail, position, metric) = _wait_done(client)
    assert text.startswith("step 2/2, elapsed ") and text.endswith("done") and "remaining" not in text, text
    assert "\n\nTeacher check (8 records" in shown  # run before SDFT training, shown under the status
    curves = json.loads(curves["plot"])
    loss = [trace for trace in curves["data"] if trace["name"] == "SDFT loss"][0]
    assert loss["x"] == [1, 2] and all(y > 0 for y in loss["y"])
    assert {"raw value at each step", "smoothed (EMA, weight 0.6)"} <= {t["name"] for t in curves["data"]}
    strip = json.loads(strip["plot"])
    assert strip["data"][0]["type"] == "bar" and len(strip["data"][0]["text"]) >= 1  # one bar per token
    assert json.loads(detail["plot"])["layout"]["title"]["text"].startswith("token #")
    strip, detail, _ = client.predict("log_ratio", "0:1", api_name="/select_token")  # what a click on token 0 sends
    assert json.loads(detail["plot"])["layout"]["title"]["text"].startswith("token #0:")

    run_name = next(runs.iterdir()).name
    # One click applies the teacher check's advice to the Advanced settings (or says there is none)
    advised = logic.advised_values(json.loads((runs / run_name / "teacher_check.json").read_text())["settings"])
    message, *values = client.predict(api_name="/apply_advice")
    if advised:
        applied = dict(zip(("template", "custom_template", "demo_selection", "skip_first"), values))
        assert message.startswith("Applied: ") and {k: applied[k] for k in advised} == advised, (message, values)
    else:
        assert message.startswith("No advice to apply"), message
    note, path = client.predict(run_name, api_name="/export_adapter")
    assert "adapter.zip" in note and Path(path).stat().st_size > 10_000
    note, _ = client.predict("../../etc", api_name="/export_adapter")
    assert "pick one of this session's runs" in note  # run names are checked against the session's runs

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
    client = gradio_client.Client(url, verbose=False)
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


def test_two_clients_are_two_sessions_that_see_only_their_own_runs(app):
    demo, url, runs, _ = app
    logic.wait_until_idle(timeout=300)  # one training at a time: let an earlier test's run finish
    ann, bob = gradio_client.Client(url, verbose=False), gradio_client.Client(url, verbose=False)
    for client in (ann, bob):
        client.predict(gradio_client.handle_file(str(SAMPLE)), *SFT, api_name="/load_data")
    message, runs_update = ann.predict(*_settings(steps=2), api_name="/start")
    assert message.startswith("Started"), message
    ann_run = runs_update["value"]
    busy, _ = bob.predict(*SFT, api_name="/start")
    assert "in progress on this server" in busy  # one training at a time, across sessions
    assert bob.predict("log_ratio", api_name="/poll")[0] == "no training yet"  # not Ann's status, curves or text
    assert bob.predict(api_name="/stop") == "Nothing is training in this session."
    assert "pick one of this session's runs" in bob.predict(ann_run, 3, api_name="/resume")
    assert "pick one of this session's runs" in bob.predict(ann_run, api_name="/export_adapter")[0]
    text, _ = _wait_done(ann)
    assert text.endswith("done"), text  # Bob's Stop did not stop Ann
    assert "pick one of this session's runs" in bob.predict("Hi?", "", ann_run, "embedded", api_name="/compare")[0]
    assert "adapter.zip" in ann.predict(ann_run, api_name="/export_adapter")[0]


def test_api_takes_integers_and_refuses_models_and_settings_beyond_the_limits(app):
    demo, url, runs, missing = app
    client = gradio_client.Client(url, verbose=False)
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/start"]["parameters"]
    types = {p["label"]: p["type"]["type"] for p in api}
    assert types["LoRA rank"] == types["Steps"] == types["Batch size"] == "integer"
    logic.wait_until_idle(timeout=300)
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
    assert client.predict(*_settings(lora_r=8, steps=1), api_name="/start")[0].startswith("Started")
    assert _wait_done(client)[0].endswith("done")
    # a failed start (an allowed model that does not load) leaves no run folder holding the uploaded data
    client.predict(*_settings(model=missing), api_name="/start")
    text, _ = _wait_done(client)
    assert "failed" in text and "the run folder was removed" in text
    assert len(sorted(runs.iterdir())) == len(before) + 1  # only the run that trained


def test_one_sessions_long_answer_does_not_hold_up_another_sessions_chat(app):
    demo, url, runs, _ = app
    ann, bob = gradio_client.Client(url, verbose=False), gradio_client.Client(url, verbose=False)

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


def test_a_login_is_asked_for_when_logins_are_given(tmp_path):
    module = _load_app()
    demo = module.build(str(tmp_path / "runs"), threads=1)
    port = _free_port()
    module.launch(demo, port=port, auth=[("ann", "s3cret")], prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(Exception):
            gradio_client.Client(url, verbose=False).predict(api_name="/stop")
        with pytest.raises(Exception):
            gradio_client.Client(url, auth=("ann", "wrong"), verbose=False)
        client = gradio_client.Client(url, auth=("ann", "s3cret"), verbose=False)
        assert client.predict(api_name="/stop") == "Nothing is training in this session."
    finally:
        module.close_app(demo)


def test_browser_data_train_click_a_token_and_chat(app, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium (CI installs it in .ci/run)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download)")
    import numpy
    from PIL import Image

    demo, url, runs, _ = app
    logic.wait_until_idle(timeout=300)  # one training at a time
    bad = _bad_files(tmp_path)["binary"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
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
        page.get_by_role("tab", name="2 · Train").click()
        steps = page.locator("#steps input")
        steps.fill("2")
        steps.press("Tab")
        page.get_by_text("--steps 2").wait_for()  # the equivalent command follows the settings
        page.locator("#advanced").get_by_text("Advanced: the teacher and the loss").click()
        page.get_by_text("Teacher template").first.wait_for()
        page.locator("#start").click()
        # Progress shows before any step: the first phase as soon as Start returns, or already the second
        # where the model loaded within that moment (a transient phase can be missed; the next one cannot).
        page.locator("#status").get_by_text(re.compile("loading the model|checking the teacher")).wait_for()
        page.locator("#status").get_by_text(re.compile(r"step [12]/2, elapsed")).wait_for(timeout=300_000)
        page.locator("#status").get_by_text("done").wait_for(timeout=300_000)
        page.locator("#strip .js-plotly-plot").wait_for()
        page.wait_for_timeout(1500)  # let plotly finish drawing

        # A one-line answer (8 tokens) keeps a full row: the plot area is not squashed to a sliver.
        shot = Image.open(io.BytesIO(page.locator("#strip .nsewdrag").first.screenshot()))  # the plot area
        inked = int((numpy.asarray(shot.convert("RGB")).min(axis=2) < 200).sum())  # tokens are drawn in it
        assert shot.height >= 30 and inked > 50, (shot.size, inked)
        # Clicking a token selects it: the top-k detail follows.
        bars = page.locator("#strip .bars .point path")
        title = page.locator("#detail .gtitle").first
        current = int(title.text_content().split("#")[1].split(":")[0])
        target = (current + 1) % bars.count()
        box = bars.nth(target).bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.locator("#detail .gtitle").get_by_text(f"token #{target}:").wait_for()
        page.mouse.move(0, 0)
        page.wait_for_timeout(500)
        screenshot = tmp_path / "app.png"
        page.screenshot(path=str(screenshot), full_page=True)

        page.get_by_role("tab", name="4 · Chat").click()
        page.locator("#chat-message textarea").fill("What is 7 plus 5?")
        page.locator("#chat-send").click()
        page.locator("#chatbot .message.bot").first.wait_for(timeout=180_000)
        page.wait_for_function("() => { const m = document.querySelectorAll('#chatbot .message.bot');"
                               " return m.length && m[m.length - 1].innerText.trim().length > 3; }", timeout=180_000)
        browser.close()
    assert screenshot.stat().st_size > 20_000
    if os.environ.get("SDFT_KIT_UPDATE_SCREENSHOT"):  # refresh the README's picture
        shutil.copy(screenshot, ROOT / "docs" / "img" / "app.png")
