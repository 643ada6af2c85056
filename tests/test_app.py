"""The web app's handlers as plain functions (sdft_kit.app_logic, sdft_kit.app_safety): no gradio, no browser."""

import json
import os
import subprocess
import sys
import time
import zipfile

import pytest

from sdft_kit import app_data
from sdft_kit.data import load_examples
from sdft_kit import app_logic as logic
from sdft_kit.app_runs import Trainings
from sdft_kit.app_safety import (COOKIE, EXPORT_PREFIX, BrowserCookie, Limits, check_exposure, cookie_value,
                                 make_export_dir, read_logins, remove_stale_exports)
from sdft_kit.cli import build_config, make_parser
from sdft_kit.config import PAPER_TEMPLATE, PLAIN_TEMPLATE, Config, fields_by_section, preset
from sdft_kit.data import SAMPLES_DIR, DataError

SAMPLE = SAMPLES_DIR / "demo.jsonl"
TINY = dict(steps=2, batch_size=2, max_new_tokens=8, threads=1, teacher="base", report_to="none")
SFT = dict(TINY, method="sft")  # no teacher check, no rollout: the quickest real training


def test_upload_bytes_parse_as_jsonl_json_array_or_csv():
    jsonl = app_data.parse_upload(SAMPLE.read_bytes())
    csv = app_data.parse_upload((SAMPLES_DIR / "demo.csv").read_bytes())
    assert len(jsonl) == 24 and len(csv) == 8
    assert jsonl[1].prompt == "What is 7 plus 5?" and jsonl[1].demonstration == "Answer: 7 plus 5 is 12."
    assert csv[0].prompt == "What color is the sky on a clear day?"
    # a UTF-8 BOM (Excel) and CRLF line ends are fine
    assert len(app_data.parse_upload(b"\xef\xbb\xbfprompt,demonstration\r\nHi?,Hello.\r\n")) == 1
    # a JSON array (what many exports write) is read as JSON, not misreported as a CSV problem
    array = json.dumps([{"prompt": "Hi?", "demonstration": "Hello."},
                        {"messages": [{"role": "user", "content": "Bye?"}, {"role": "assistant", "content": "Bye."}]}])
    examples = app_data.parse_upload(b"\n " + array.encode())
    assert [(ex.prompt, ex.demonstration, ex.source) for ex in examples] == [
        ("Hi?", "Hello.", "record 1"), ("Bye?", "Bye.", "record 2")]


def test_uploads_in_other_formats_show_the_detected_format_and_the_command_reuses_it():
    files = SAMPLES_DIR.parent.parent / "tests" / "data_files"
    alpaca = app_data.parse_upload((files / "alpaca.json").read_bytes())
    assert app_data.upload_kind((files / "alpaca.json").read_bytes()) == "json"
    assert app_data.data_status(alpaca) == ("✓ <b>3 examples</b> loaded: Alpaca, 3 records; columns "
                                            "instruction+input -&gt; prompt, output -&gt; demonstration.")
    assert [ex.source for ex in alpaca] == ["record 1", "record 2", "record 3"]
    parquet = (files / "alpaca.parquet").read_bytes()  # binary, told by its magic number, not refused as binary
    assert app_data.upload_kind(parquet) == "parquet"
    assert [ex.source for ex in app_data.parse_upload(parquet)] == ["row 1", "row 2"]
    tsv = (files / "qa.tsv").read_bytes()
    assert app_data.upload_kind(tsv) == "tsv"
    with pytest.raises(DataError, match=r"^uploaded file \(TSV\), line 1: TSV header has columns 'question', "):
        app_data.parse_upload(tsv)
    mapped = app_data.parse_upload(tsv, columns="prompt=question,demonstration=answer")
    assert [ex.source for ex in mapped] == ["line 2", "line 3"] and mapped[1].demonstration == "Eight."
    assert "question -&gt; prompt, answer -&gt; demonstration (--columns)" in app_data.data_status(
        mapped, "prompt=question,demonstration=answer")
    command = logic.cli_command(Config(), data="demos.tsv", columns="prompt=question,demonstration=answer")
    assert command == ("sdft-kit train --data demos.tsv --columns prompt=question,demonstration=answer "
                       "--out runs/my-run")
    args = make_parser().parse_args(command.split()[1:])
    assert len(load_examples(files / "qa.tsv", columns=args.columns)) == 2  # the CLI reads what the app read
    # the sample list says what each sample holds
    import re

    for label, path in app_data.SAMPLES.items():
        assert int(re.search(r"\((\d+) ", label)[1]) == len(load_examples(path)), label


@pytest.mark.parametrize("data, expected", [
    (b"", "the file is empty"),
    (b"  \n\n", "the file is empty"),
    (b"PK\x03\x04\x00\x00binary", "binary file"),
    (b"question,answer\nHi?,Hello.\n", "line 1: CSV header has columns 'question', 'answer'"),
    (b'{"prompt": "a", "demonstration": "b"}\n{"prompt": "c"}\n', "line 2: field 'demonstration' is missing"),
    (b'{"prompt": "a", "demonstration": "b"}\n{"prompt": \n', "line 2: invalid JSON"),
    (b'{"prompt": "a", "demonstration": ""}\n', "line 1: field 'demonstration' is empty"),
    (b"prompt,demonstration\nHi?,caf\xe9\n", "line 2: byte 0xe9 is not valid UTF-8"),
    (b"x" * 2048, "2.0 KB is over the 1.0 KB limit"),
    (b'[{"prompt": "a", "demonstration": "b"},\n {"prompt": "c"}]', "(JSON array), record 2 (line 2): field 'demonstration'"),
    (b'[{"prompt": "a",\n "demonstration": "b"', "(JSON array), line 2: invalid JSON"),
    (b"[]", "(JSON array): expected a non-empty array"),
    (b'{"prompt": "a", "demonstration": "b"}\n{"prompt": "' + b"y" * 600 + b'", "demonstration": "b"}\n',
     "line 2: the record is 601 characters, over this server's limit of 500 per record"),
])
def test_bad_uploads_give_one_line_naming_line_and_field(data, expected):
    with pytest.raises(DataError) as error:
        app_data.parse_upload(data, max_bytes=1024, max_record_chars=500)
    message = str(error.value)
    assert expected in message and message.startswith("uploaded file")
    assert "/tmp" not in message and "upload." not in message  # our temporary file is never named


def test_preview_shows_the_prompts_as_the_model_sees_them_within_a_bounded_size():
    examples = app_data.parse_upload(SAMPLE.read_bytes())
    tokenizer = app_data.load_tokenizer("embedded")
    rows = app_data.preview_rows(examples, tokenizer, n=2)
    assert len(rows) == 2
    row = rows[1]
    assert "What is 7 plus 5?" in row["student_prompt"] and "Answer: 7 plus 5 is 12." not in row["student_prompt"]
    assert "<|im_start|>assistant" in row["student_prompt"]  # the chat template is applied
    # the teacher's prompt in the run's template: the default 'system' framing, or the one the Train tab picks
    assert "good response to the user's next question:\nAnswer: 7 plus 5 is 12." in row["teacher_prompt"]
    paper = app_data.preview_rows(examples, tokenizer, Config().replace(template="paper"), n=2)[1]
    assert "This is an example for a response to the question:\nAnswer: 7 plus 5 is 12." in paper["teacher_prompt"]
    assert row["student_tokens"] == len(tokenizer(row["student_prompt"], add_special_tokens=False).input_ids)
    assert paper["teacher_tokens"] > paper["student_tokens"] + paper["demonstration_tokens"]
    # a long record is counted whole but shown cut: the preview's size is bounded whatever the data
    long = app_data.parse_upload(json.dumps({"prompt": "word " * 6000, "demonstration": "ok"}).encode())
    row = app_data.preview_rows(long, tokenizer)[0]
    assert row["student_tokens"] > 6000 and len(row["student_prompt"]) < app_data.PREVIEW_CHARS + 100
    assert row["student_prompt"].endswith("more characters)")


def test_data_statistics_pages_and_the_editor():
    examples = app_data.parse_upload(SAMPLE.read_bytes())
    tokenizer = app_data.load_tokenizer("embedded")
    counts = app_data.token_counts(examples, tokenizer)
    stats = app_data.data_stats(examples, tokenizer)
    longest = max(range(24), key=lambda i: sum(counts[i]))
    assert stats.startswith(f"**24 records** · longest: {examples[longest].source} ({sum(counts[longest])} tokens)")
    assert f"| demonstration | {min(d for _, d in counts)} |" in stats
    assert app_data.page_count(examples) == 3
    page = app_data.data_page(examples, tokenizer, 3)
    assert [row[0] for row in page] == [21, 22, 23, 24] and page[0][2] == examples[20].prompt
    assert page[0][4:] == list(counts[20])
    assert app_data.data_page(examples, tokenizer, 99)[0][0] == 21  # pages are clamped

    fixed = app_data.edit_example(examples, 2, "What is 7 plus 6?", "Answer: 13.")
    assert (fixed[1].prompt, fixed[1].demonstration) == ("What is 7 plus 6?", "Answer: 13.")
    assert fixed[1].source == "edited 2"
    assert fixed[0] == examples[0] and len(fixed) == 24 and examples[1].prompt == "What is 7 plus 5?"  # a new list
    added = app_data.edit_example(fixed, 0, "Hi?", "Hello.")
    assert len(added) == 25 and added[-1].source == "added 25"
    assert [ex.prompt for ex in app_data.edit_example(added, 1, remove=True)[:1]] == ["What is 7 plus 6?"]
    with pytest.raises(DataError, match="record 3: field 'demonstration' is empty"):
        app_data.edit_example(examples, 3, "Q?", " ")
    with pytest.raises(ValueError, match="record 30 does not exist"):
        app_data.edit_example(examples, 30, "Q?", "A.")
    with pytest.raises(DataError, match="record 25: the record is 2,002 characters, over this server's limit of 2,000"):
        app_data.edit_example(examples, 0, "Q" * 2000, "A.", max_record_chars=2000)  # the upload's bound holds
    assert len(app_data.edit_example(examples, 0, "Q" * 1998, "A.", max_record_chars=2000)) == 25


LIMITS = dict(models=("embedded",), max_steps=500, max_batch_size=16, max_new_tokens=512, cuda=False, cpus=2)


def test_settings_are_generated_from_the_config_fields():
    """Each setting is a config field's, from its metadata: choices, type, bounds and help text; the app's own
    tables only place them, word a few of them, and add its own two (the custom template, the held-out share)."""
    table = logic.settings_table(**LIMITS)
    fields = {f.name: f for _, f in fields_by_section()}
    assert list(table) == [*logic.SHOWN["main"], *logic.SHOWN["advanced"]]
    for name, setting in table.items():
        if name in logic.APP_OWN:
            continue
        f = fields[name]
        assert setting.label and (setting.info == logic.INFO.get(name, f.metadata["help"]) or name == "load_in_4bit")
        if f.metadata["choices"]:
            assert setting.kind == "choice" and setting.choices == tuple(f.metadata["choices"])
        elif isinstance(f.default, bool) or f.default is None:
            assert setting.kind == "switch"
        elif isinstance(f.default, int):
            assert setting.kind == "integer" and setting.minimum >= f.metadata["bounds"].get(">=", setting.minimum)
    assert table["method"].choices == ("sdft", "sft") and table["alpha"].kind == "number"
    assert (table["alpha"].minimum, table["alpha"].maximum) == (0, 1)  # the loss field's bounds
    assert (table["steps"].maximum, table["batch_size"].maximum, table["max_new_tokens"].maximum) == (500, 16, 512)
    assert table["template"].choices == ("paper", "plain", "system", "custom")
    assert table["model"].choices == ("embedded",) and not table["load_in_4bit"].enabled  # no CUDA here
    # a field the app does not show keeps its preset's value: listed nowhere but SHOWN
    assert "temperature" not in table and "trust_remote_code" not in table


def test_settings_make_a_config_and_the_command_rebuilds_it():
    table = logic.settings_table(**LIMITS)
    for name in ("default", "workshop", "paper"):  # settings <-> config, for every preset
        config = preset(name)
        assert logic.config_of(name, logic.setting_values(config, table), table) == config
    config = logic.make_config("workshop", model=" embedded ", method="sft", steps=7, learning_rate=1e-3, lora_r=8,
                               alpha=1.0, vocab="topk", topk=50, template="custom",
                               custom_template="Q: {prompt} -- e.g. {demonstration}", skip_first=5,
                               demo_selection="retrieval", held_out=20)
    assert (config.train.method, config.train.steps, config.model.lora_r, config.train.batch_size) == ("sft", 7, 8, 2)
    assert (config.loss.alpha, config.loss.vocab, config.loss.topk, config.loss.skip_first) == (1.0, "topk", 50, 5)
    assert (config.teacher.template, config.teacher.demo_selection) == ("Q: {prompt} -- e.g. {demonstration}",
                                                                        "retrieval")
    assert logic.make_config(template="plain").teacher.template == "plain"
    assert logic.template_setting(PAPER_TEMPLATE) == ("paper", "")
    assert logic.template_setting(PLAIN_TEMPLATE) == ("plain", "")
    assert logic.template_setting("A {prompt} B {demonstration}") == ("custom", "A {prompt} B {demonstration}")
    # the teacher check's advice, as the settings one click sets (check.advised_settings' fields)
    advice = {"template": "plain", "skip_first": 14, "demo_selection": "retrieval"}
    values = logic.advised_values(advice)
    assert values == {"template": "plain", "custom_template": "", "skip_first": 14, "demo_selection": "retrieval"}
    applied = logic.make_config(**values)
    assert (applied.teacher.template, applied.loss.skip_first, applied.teacher.demo_selection) == (
        "plain", 14, "retrieval")
    assert logic.advice_label(advice) == ("Use the teacher check's advice: teacher template 'plain', skip first "
                                          "tokens 14, demonstration shown 'retrieval'")
    assert logic.advised_values({"template": "Q {prompt} A {demonstration}"}) == {
        "template": "custom", "custom_template": "Q {prompt} A {demonstration}"}
    assert logic.advised_values({}) == {}
    with pytest.raises(ValueError, match="steps must be >= 1"):
        logic.make_config(steps=0)
    with pytest.raises(ValueError, match="alpha must be >= 0 and <= 1"):
        logic.make_config(alpha=2.0)
    with pytest.raises(ValueError, match="template must contain {demonstration}"):
        logic.make_config(template="custom", custom_template="just {prompt}")
    config = config.replace(load_in_4bit=False)
    command = logic.cli_command(config, data="my data.jsonl", out="runs/x", preset_name="workshop")
    assert command.startswith("sdft-kit train --data 'my data.jsonl' --out runs/x --preset workshop ")
    assert "--no-load-in-4bit" in command and "--lora-r 8" in command and "--batch-size" not in command
    import shlex

    args = make_parser().parse_args(shlex.split(command)[1:])
    assert build_config(args).to_dict() == config.to_dict()  # the command trains exactly this config
    assert logic.cli_command(Config()) == "sdft-kit train --data demos.jsonl --out runs/my-run"
    assert logic.cli_command(preset("workshop"), preset_name="workshop").endswith("--preset workshop")


def test_settings_save_as_the_clis_yaml_and_load_back(tmp_path):
    table = logic.settings_table(**LIMITS)
    config = logic.make_config("workshop", template="plain", steps=9, alpha=0.5, skip_first=2)
    values, ignored = logic.load_settings_yaml(config.to_yaml().encode(), "workshop", table)
    assert logic.config_of("workshop", values, table) == config and ignored == []
    (tmp_path / "config.yaml").write_text(config.to_yaml())  # the same file the CLI reads
    args = make_parser().parse_args(["train", "--data", "x", "--out", "y", "--config", str(tmp_path / "config.yaml")])
    assert build_config(args) == config
    # a partial file layers over the preset; fields the app does not show are named, not silently dropped
    values, ignored = logic.load_settings_yaml(b"train:\n  steps: 4\nrollout:\n  temperature: 0.7\n", "paper", table)
    assert values["steps"] == 4 and values["template"] == "paper" and ignored == ["temperature"]
    with pytest.raises(ValueError, match=r"^uploaded config, line 3, column 1: not valid YAML"):
        logic.load_settings_yaml(b"train:\n  steps: [4\n", "default", table)
    with pytest.raises(ValueError, match="uploaded config: unknown field.*'stpes'"):
        logic.load_settings_yaml(b"train:\n  stpes: 4\n", "default", table)


def test_records_held_out_for_the_evaluate_tab():
    examples = app_data.parse_upload(SAMPLE.read_bytes())
    train, held = logic.split_held_out(examples, 15, seed=0)
    sources = [ex.source for ex in train], [ex.source for ex in held]
    assert (len(train), len(held)) == (20, 4) and sorted(sum(sources, []), key=lambda s: int(s.split()[-1])) == [
        ex.source for ex in examples]  # apart, and every record in one of them
    assert logic.split_held_out(examples, 15, seed=0) == (train, held)  # seeded
    assert sources[0] == sorted(sources[0], key=lambda s: int(s.split()[-1]))  # in the data's order
    assert logic.split_held_out(examples[:9], 15) == (examples[:9], [])  # too few records to spare any
    assert logic.split_held_out(examples, 0) == (examples, [])
    assert logic.held_out_count(10, 1) == 1


def test_the_teacher_check_in_words():
    from sdft_kit.check import TeacherCheck, TemplateResult

    def result(template, verdict, teacher):
        return TemplateResult(template, 8, -1.2, -0.6, 7, 0.0, 0.0, student_similarity=0.42,
                              teacher_similarity=teacher, verdict=verdict)

    check = TeacherCheck(8, 32, None, [result("paper", "weak", 0.33), result("system", "ready", 0.69)], "system",
                         "ready", ["Template 'system' teaches best on this sample: train with it."], 41.0,
                         {"template": "system"})
    text = logic.check_text(check)
    assert text.startswith("**Teacher check: READY** with the template 'system', best of 2 (8 records, 41 s).")
    assert "paper WEAK (0.42 → 0.33) · system READY (0.42 → 0.69)" in text and "\n- Template 'system'" in text
    assert logic.advice_for(check, preset("paper")) == {"template": "system"}
    assert logic.advice_for(check, Config()) == {}  # the run had it already: no button


def test_limits_bound_steps_sizes_and_models_with_one_message_for_any_model_not_allowed(tmp_path):
    limits = Limits(models=("embedded", "Org/Allowed"), max_steps=100, max_batch_size=8, max_new_tokens=64)
    assert limits.check(logic.make_config(steps=100, batch_size=8, max_new_tokens=64)).train.steps == 100
    for settings, name in ((dict(steps=10**12), "steps 1000000000000 is over this server's limit of 100"),
                           (dict(batch_size=9), "batch size 9"), (dict(max_new_tokens=72), "new tokens per answer 72")):
        with pytest.raises(ValueError, match=name):
            limits.check(logic.make_config(**settings))
    assert limits.check_model(" Org/Allowed ") == "Org/Allowed" and limits.check_model("") == "embedded"
    (tmp_path / "exists").mkdir()
    messages = set()
    for name in ("/etc", "/no/such/path", str(tmp_path / "exists"), "../../etc/passwd", "gpt2"):
        with pytest.raises(ValueError) as error:
            limits.check_model(name)
        messages.add(str(error.value))
    assert messages == {"this server does not offer that model; choose one of: embedded, Org/Allowed (the operator "
                        "adds models with --allow-model)"}  # the same words whether a path exists or not


def test_logins_from_flags_a_file_and_the_environment(tmp_path):
    file = tmp_path / "logins.txt"
    file.write_text("# team\nbob:pw:with:colons\n\ncat: spaced pw\n")
    logins = read_logins(["ann:s3cret"], file, env={"SDFT_KIT_AUTH": "dan:x, eve:y"})
    assert logins == [("ann", "s3cret"), ("bob", "pw:with:colons"), ("cat", " spaced pw"), ("dan", "x"), ("eve", "y")]
    assert read_logins(env={}) == []
    with pytest.raises(ValueError, match="--auth: expected user:password, got 'ann:…'"):
        read_logins(["ann:"], env={})
    file.write_text("ok:1\nnocolon\n")
    with pytest.raises(ValueError, match=r"logins.txt, line 2: expected user:password, got a value without ':'"):
        read_logins(file=file, env={})
    with pytest.raises(ValueError, match="SDFT_KIT_AUTH: expected user:password") as error:
        read_logins(env={"SDFT_KIT_AUTH": ":topsecret"})
    assert "topsecret" not in str(error.value)  # a password is never echoed


def test_serving_beyond_this_machine_needs_a_login_or_an_explicit_no_auth():
    assert check_exposure("127.0.0.1", False, [], False) is None
    assert check_exposure("localhost", False, [], False) is None and check_exposure("::1", False, [], False) is None
    assert check_exposure("0.0.0.0", True, [("ann", "pw")], False) is None
    for host, share, where in (("0.0.0.0", False, "--host 0.0.0.0"), ("127.0.0.1", True, "--share"),
                               ("myhost.example", False, "--host myhost.example")):
        with pytest.raises(ValueError, match=f"refusing to serve .*{where}.* without a login: add --auth"):
            check_exposure(host, share, [], False)
        assert check_exposure(host, share, [], True).startswith("warning: serving on")
    # the app's command line refuses before building anything
    result = subprocess.run([sys.executable, "app.py", "--share"], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 2 and "refusing to serve on a public gradio.live link" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_folders_are_named_by_their_process_and_stale_ones_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{EXPORT_PREFIX}{dead.stdout.strip()}-abc"
    old = tmp_path / f"{EXPORT_PREFIX}k2j3h4"  # an older version's name: removed after a day
    young = tmp_path / f"{EXPORT_PREFIX}zz9"
    mine = tmp_path / f"{EXPORT_PREFIX}{os.getpid()}-keep"
    for folder in (stale, old, young, mine):
        folder.mkdir()
        (folder / "run-adapter.zip").write_bytes(b"zip")
    os.utime(old, (time.time() - 2 * 86_400,) * 2)
    made = make_export_dir(tmp_path)
    assert made.name.startswith(f"{EXPORT_PREFIX}{os.getpid()}-") and made.is_dir()
    assert not stale.exists() and not old.exists() and young.exists() and mine.exists()
    assert remove_stale_exports(tmp_path) == []


def _trained_run(tmp_path, **settings):
    trainings = Trainings(tmp_path / "runs")
    job = trainings.start("login:ann", Config().replace(**{**SFT, "steps": 1, **settings}),
                          app_data.parse_upload(SAMPLE.read_bytes()))
    trainings.wait()
    assert job.state == "done", trainings.status("login:ann").text
    return job.run_dir


def test_export_compare_and_chat_on_a_trained_run(tmp_path):
    run_dir = _trained_run(tmp_path)
    archive = logic.export_adapter_zip(run_dir, tmp_path)
    names = zipfile.ZipFile(archive).namelist()
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors",
            "adapter/sdft_kit_config.yaml"} <= set(names)

    phases = []
    answers = logic.compare_answers("What is 7 plus 5?", "Answer: 7 plus 5 is 12.", run_dir=run_dir,
                                    max_new_tokens=6, progress=lambda fraction, phase: phases.append(phase))
    assert all(isinstance(answers[k], str) and answers[k] for k in ("base", "trained", "teacher"))
    assert list(answers["seconds"]) == ["load", "base", "teacher", "trained"]  # measured, each part
    assert all(seconds > 0 for seconds in answers["seconds"].values())
    assert phases == ["loading the model", "answering with the base model", "answering with the teacher model",
                      "answering with the trained model"]
    assert logic.compare_answers("Hi?", "", max_new_tokens=4)["trained"] is None

    # the Chat tab: a trained run's answer grows token by token; the teacher needs a demonstration
    grown = list(logic.chat_answer([{"role": "user", "content": "What is 7 plus 5?"}], run_dir=run_dir,
                                   max_new_tokens=6))
    assert len(grown) >= 2 and all(b.startswith(a) for a, b in zip(grown, grown[1:]))
    with pytest.raises(ValueError, match="paste a demonstration"):
        next(logic.chat_answer([{"role": "user", "content": "Hi?"}], demonstration=" "))


def test_the_browser_cookie_names_a_browser_and_reaches_the_request_that_set_it():
    import asyncio

    seen = []

    async def app(scope, receive, send):
        seen.append(dict(scope["headers"]).get(b"cookie", b"").decode())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def request(cookie: str | None) -> list:
        sent = []

        async def send(message):
            sent.append(message)

        headers = [(b"cookie", cookie.encode())] if cookie else []
        asyncio.run(BrowserCookie(app)({"type": "http", "headers": headers}, None, send))
        return dict(sent[0]["headers"]).get(b"set-cookie", b"").decode()

    setting = request(None)
    value = cookie_value(setting.split(";")[0])
    assert setting.startswith(f"{COOKIE}=") and "HttpOnly" in setting and "SameSite=Lax" in setting
    assert len(value) >= 32 and cookie_value(seen[-1]) == value  # this very request already carries it
    assert request("theme=dark") and cookie_value(seen[-1]) != value and "theme=dark" in seen[-1]  # a new browser
    assert request(f"theme=dark; {COOKIE}={value}") == "" and cookie_value(seen[-1]) == value  # known: kept


def test_merged_export_matches_base_plus_adapter(tmp_path):
    import torch
    from safetensors.torch import load

    run_dir = _trained_run(tmp_path, learning_rate=1e-2)
    archive = zipfile.ZipFile(logic.export_merged_zip(run_dir, tmp_path, "float16"))
    assert {"merged/config.json", "merged/tokenizer_config.json", "merged/README.md"} <= set(archive.namelist())
    merged = load(archive.read("merged/model.safetensors"))
    from sdft_kit.models import load_adapter, load_model

    model, _ = load_adapter(run_dir / "adapter")
    expected = model.merge_and_unload().state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert merged[name].dtype == torch.float16  # shared in 16-bit, not the run's float32
    assert torch.allclose(merged[name].float(), expected[name], rtol=1e-3, atol=1e-5)  # fp16 rounding: 2^-11
    base, _ = load_model("embedded")
    assert not torch.allclose(merged[name].float(), base.state_dict()[name], rtol=1e-3, atol=1e-5)  # adapter in
    # the Push button: a repo id it can use, and one line offline (the tests run with HF_HUB_OFFLINE=1)
    with pytest.raises(ValueError, match="owner/name"):
        logic.push_adapter(run_dir, "no-owner")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        logic.push_adapter(run_dir, "me/my-sdft-adapter")
    # a 4-bit run's adapter is merged into a 16-bit copy of its base, never into 4-bit weights
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace(
        "load_in_4bit: null", "load_in_4bit: true"))
    (tmp_path / "again").mkdir()
    again = zipfile.ZipFile(logic.export_merged_zip(run_dir, tmp_path / "again"))
    assert load(again.read("merged/model.safetensors"))[name].dtype == torch.bfloat16


def test_gguf_export_zip_holds_the_file_and_the_modelfile(tiny_model_dir, tmp_path):
    from tiny_models import write_lora_run

    run_dir = write_lora_run(tiny_model_dir("qwen3"), tmp_path / "runs" / "my-run", lora_r=4)
    archive = zipfile.ZipFile(logic.export_gguf_zip(run_dir, tmp_path))
    assert archive.filename.endswith("my-run-gguf.zip")
    assert sorted(archive.namelist()) == ["gguf/Modelfile", "gguf/model-q8_0.gguf"]
    assert archive.read("gguf/Modelfile").decode().startswith("FROM ./model-q8_0.gguf\nTEMPLATE")
    assert archive.read("gguf/model-q8_0.gguf")[:4] == b"GGUF"


def test_chat_and_compare_refuse_a_message_over_the_context_at_once(tiny_llama_dir):
    from sdft_kit.generation import TooLong

    model, long = str(tiny_llama_dir), "word " * 40_000  # 200k characters; the tiny model's context is 512 tokens
    start = time.perf_counter()
    with pytest.raises(TooLong, match=r"^the conversation is \d{5} tokens; with 96 for the answer that is more than "
                                      r"the model's context of 512 tokens"):
        next(logic.chat_answer([{"role": "user", "content": long}], model=model))
    with pytest.raises(TooLong, match=r"^the prompt is \d{5} tokens; with 64 for the answer"):
        logic.compare_answers(long, "", model=model)
    with pytest.raises(TooLong, match=r"^the prompt with the demonstration is \d{5} tokens"):
        logic.compare_answers("Hi?", long, model=model)
    assert time.perf_counter() - start < 60  # tokenizing, not generating (which ran out of memory or time before)
    assert next(logic.chat_answer([{"role": "user", "content": "Hi?"}], model=model, max_new_tokens=4)) is not None
