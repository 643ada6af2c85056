"""Tests for sdft_kit.check: the teacher check's detectors, verdict logic, figures on a real model, and CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from sdft_kit.check import (
    READY_ACCURACY,
    READY_SIMILARITY,
    READY_SIMILARITY_LIFT,
    TeacherCheck,
    TemplateResult,
    check_teacher,
    contains_scorer,
    copies,
    echo_span,
    echoes,
    exact_scorer,
    judge,
    similarity,
    template_label,
    tool_scorer,
)
from sdft_kit.batch import mean_logprobs
from sdft_kit.cli import main
from sdft_kit.config import PAPER_TEMPLATE, PLAIN_TEMPLATE, SYSTEM_TEMPLATE, TEMPLATES, TeacherConfig
from sdft_kit.data import Example
from sdft_kit.demos import student_prompt, teacher_messages, teacher_prompt


def ex(prompt: str, demo: str, system: str | None = None) -> Example:
    messages = ({"role": "system", "content": system},) if system else ()
    return Example((*messages, {"role": "user", "content": prompt}), demo)


# Invented facts: the query alone cannot give the answer, the demonstration does.
INFORMATIVE = [
    ex("What is the secret code word of the Zorblat club?", "The secret code word of the Zorblat club is 'marmalade'."),
    ex("What is the name of Captain Vrell's ship?", "Captain Vrell's ship is called the Silver Heron."),
    ex("In which year was the town of Quastow founded?", "The town of Quastow was founded in 1427."),
    ex("What is the favourite fruit of the Plimbo robot?", "The Plimbo robot's favourite fruit is the kumquat."),
    ex("Who invented the Tarnish engine?", "The Tarnish engine was invented by Odile Brevant."),
    ex("What colour is the flag of the Norvane republic?", "The flag of the Norvane republic is teal and orange."),
]
# The query already holds the answer: the demonstration adds nothing. (Random text would not
# do here: the teacher sees the demonstration it is scored on, so copying unpredictable text
# raises its log-prob the most of all. That is what the echo/copy figures are for.)
UNINFORMATIVE = [ex(f"Reply with exactly this sentence and nothing else: {s}", s) for s in (
    "The meeting is on Tuesday at noon.", "The train leaves from platform four.", "Please close the door behind you.",
    "The library opens at nine.", "Dinner will be ready soon.", "The cat is sleeping on the sofa.")]


# --- detectors on hand-written strings -------------------------------------------------------------


@pytest.mark.parametrize("answer, expected", [
    ("This is an example for a response to the question: Paris.", True),
    ("Sure! this is an EXAMPLE for a response, to the question", True),  # case and punctuation ignored
    ("Now answer with a response of your own: Paris is the capital.", True),  # the template's second phrase
    ("This is an example of a riddle.", False),  # 4 words of the phrase only
    ("The capital of France is Paris, as everyone knows. This is an example for a response", False),  # too late
    ("Paris.", False),
])
def test_echo_of_the_paper_template(answer, expected):
    assert echoes(answer, "paper") is expected
    assert echoes(answer, PAPER_TEMPLATE) is expected  # a name or the text itself


def test_echo_span_covers_the_longest_run():
    answer = "This is an example for a response to the question: the sky is blue."
    start, end = echo_span(answer, "paper")
    assert (start, answer[start:end]) == (0, "This is an example for a response to the question")


def test_echo_of_other_templates():
    assert echoes("Here is an example of a good response: blue.", "system")
    assert not echoes("This is an example for a response to the question:", "system")
    assert not echoes("This is an example for a response to the question:", "plain")  # no words of its own
    assert not echoes("Example: blue.", "Q: {prompt}\nEXAMPLE: {demonstration}")  # phrases under 3 words: too generic
    assert echoes("Reference answer follows below. Blue.", "Reference answer follows below: {demonstration}\n{prompt}")


def test_copies():
    demo = "The secret code word of the Zorblat club is 'marmalade'."
    assert copies("Sure. The secret code word of the zorblat club is marmalade!", demo)
    assert not copies("The code word is marmalade.", demo)
    assert not copies("Bees make honey.", "Bees make honey.")  # under 5 words: too generic to call a copy
    long_demo = " ".join(f"w{i}" for i in range(30))
    assert copies("so: " + " ".join(f"w{i}" for i in range(5, 17)), long_demo)  # 12 in a row, answer cut short
    assert not copies(" ".join(f"w{i}" for i in range(5, 16)), long_demo)  # 11 in a row


def test_scorers():
    example = ex("What is 7 plus 5?", "Answer: 7 plus 5 is 12.")
    assert exact_scorer("  answer:  7 plus 5 IS 12.\n", example)
    assert not exact_scorer("Answer: 7 plus 5 is 12. Easy.", example)
    assert contains_scorer("Sure. Answer: 7 plus 5 is 12. Easy.", example)
    assert not contains_scorer("It is 12.", example)
    call = ex("Tide at Saltmere?", 'Action: tide_level\nAction Input: {"harbor": "Saltmere", "date": "2025-09-21"}')
    assert tool_scorer('Action: tide_level\nAction Input: {"date": "2025-09-21", "harbor": "Saltmere"}\nObservation:', call)
    assert not tool_scorer('Action: tide_level\nAction Input: {"harbor": "Saltmere"}', call)
    assert not tool_scorer("The tide is high.", call)


def test_similarity_is_rouge_l_f1_over_words():
    # 6 of the demonstration's 7 words, in order, and nothing else: P = 1, R = 6/7, F1 = 12/13
    assert similarity("The capital of France is Paris.", "Answer: The capital of France is Paris.") == \
        pytest.approx(12 / 13)
    assert similarity("PARIS is the capital", "the capital is paris") == pytest.approx(0.5)  # LCS: 2 words of 4
    assert similarity("", "Answer: blue.") == 0.0 and similarity("Answer: blue.", "answer blue") == 1.0


# --- verdict logic on hand-made figures --------------------------------------------------------------


def figures(**overrides) -> TemplateResult:
    base = dict(template="paper", records=10, student_logprob=-1.2, teacher_logprob=-0.3, teacher_better=10,
                echo_rate=0.0, copy_rate=0.0, student_similarity=0.3, teacher_similarity=0.8, control_logprob=-1.0)
    return TemplateResult(**{**base, **overrides})


def test_ready_when_every_figure_passes():
    assert judge(figures()) == ("ready", [])
    # the paper's Qwen2.5-7B tool-use numbers: 42% -> 100%
    assert judge(figures(student_accuracy=0.42, teacher_accuracy=1.0))[0] == "ready"
    assert judge(figures(teacher_better=8, echo_rate=0.19))[0] == "ready"  # at the thresholds


def test_small_gain_is_weak_and_suggests_a_larger_model():
    verdict, advice = judge(figures(teacher_logprob=-1.0))  # +0.2 nats/token
    assert verdict == "weak"
    assert len(advice) == 1 and "larger model" in advice[0] and "+0.20" in advice[0]
    assert judge(figures(teacher_better=7))[0] == "weak"  # better on 70% only


def test_no_gain_is_not_ready():
    verdict, advice = judge(figures(teacher_logprob=-1.6, teacher_better=0))
    assert verdict == "not ready" and "not at all" in advice[0]
    assert judge(figures(teacher_logprob=-1.0, teacher_better=4))[0] == "not ready"  # gain > 0 on 40% only


def test_echo_makes_it_weak_and_suggests_plain_and_a_longer_skip():
    verdict, advice = judge(figures(echo_rate=0.56, echo_tokens=14), skip_first=3)
    assert verdict == "weak"
    assert len(advice) == 1 and "56%" in advice[0]
    assert "the template 'plain'" in advice[0] and "(skip_first 14, now 3)" in advice[0]
    assert "--" not in advice[0]  # words a CLI user and an app user both read (the table adds the flags)
    # a skip that already covers the echo is not suggested again, nor 'plain' to itself
    assert "skip_first" not in judge(figures(echo_rate=0.5, echo_tokens=3), skip_first=3)[1][0]
    assert "template 'plain'" not in judge(figures(template="plain", echo_rate=0.5, echo_tokens=9))[1][0]


def test_accuracy_that_does_not_rise_is_weak():
    # the embedded model on the paper's tool-use data: 0% -> 9%, gain +0.89 on every row
    verdict, advice = judge(figures(student_logprob=-1.23, teacher_logprob=-0.34, student_accuracy=0.0,
                                    teacher_accuracy=0.09))
    assert verdict == "weak" and "9%" in advice[0] and "larger model" in advice[0]


def test_a_log_prob_lift_alone_is_not_ready():
    # the embedded model on ToolAlpaca records: +0.97 nats/token on 12/12 records, yet poor answers
    verdict, advice = judge(figures(student_logprob=-1.3, teacher_logprob=-0.33, student_similarity=0.35,
                                    teacher_similarity=0.42))
    assert verdict == "weak" and len(advice) == 1
    assert "ROUGE-L F1 0.35 -> 0.42 (+0.07)" in advice[0] and f"{READY_SIMILARITY:.2f}" in advice[0]
    # good answers that are no better than the student's are not enough either
    assert judge(figures(student_similarity=0.8, teacher_similarity=0.8 + READY_SIMILARITY_LIFT / 2))[0] == "weak"
    assert judge(figures(student_similarity=None, teacher_similarity=None))[0] == "weak"  # unmeasured: never ready


def test_a_teacher_that_gains_as_much_from_another_records_demonstration_reads_the_format():
    verdict, advice = judge(figures(control_logprob=-0.35))  # +0.85 from a wrong demonstration, +0.90 from its own
    assert verdict == "weak" and "reads the demonstrations' format" in advice[0] and "+0.85 vs +0.90" in advice[0]
    assert judge(figures(control_logprob=None))[0] == "ready"  # one record: no control to compare with


def test_a_scorer_overrides_similarity_and_needs_a_right_answer_on_half():
    # the bundled tool-use task's teacher (template plain): 0% -> 19%, READY before this check asked for more
    verdict, advice = judge(figures(student_accuracy=0.0, teacher_accuracy=0.19, teacher_similarity=0.1))
    assert verdict == "weak" and "accuracy 0% -> 19%" in advice[0] and f"{READY_ACCURACY:.0%}" in advice[0]
    assert judge(figures(student_accuracy=0.0, teacher_accuracy=READY_ACCURACY, teacher_similarity=0.1))[0] == "ready"
    assert judge(figures(student_accuracy=0.45, teacher_accuracy=0.5))[0] == "weak"  # +5 points only


def test_copying_earns_a_note_not_a_worse_verdict():
    verdict, advice = judge(figures(copy_rate=0.8))
    assert verdict == "ready" and "retrieval" in advice[0]


def test_check_result_prints_saves_and_picks_the_best_template(tmp_path):
    results = [figures(echo_rate=0.6, echo_tokens=12), figures(template="plain", teacher_logprob=-0.5)]
    for r in results:
        r.verdict, r.advice = judge(r)
    check = TeacherCheck(records=10, max_new_tokens=48, scorer=None, results=results, best="plain", verdict="ready",
                         advice=["Template 'plain' teaches best on this sample: train with it."],
                         seconds=3.0, settings={"template": "plain", "skip_first": 12})
    table = check.table()
    assert "paper     weak" in table and "plain     ready" in table and "+0.90" in table and "60%" in table
    assert "verdict: READY" in table and "0.30 -> 0.80 (+0.50)" in table
    assert "settings that take the advice: --template plain --skip-first 12" in table  # the CLI's flags
    assert "+0.20" in table  # the control's gain
    assert "READY needs ROUGE-L F1" in table
    assert check.summary().startswith("Teacher check (10 records, template 'plain', best of 2): READY.")
    saved = json.loads(check.save(tmp_path / "run" / "teacher_check.json").read_text())
    assert saved["verdict"] == "ready" and saved["results"][0]["gain"] == pytest.approx(0.9)
    again = TeacherCheck.load(tmp_path / "run" / "teacher_check.json")  # read back: the app shows it after Resume
    assert again.summary() == check.summary() and again.results[0].gain == pytest.approx(0.9)


# --- templates ---------------------------------------------------------------------------------------


def test_templates_by_name_and_the_system_framing(model_and_tokenizer):
    _, tok = model_and_tokenizer
    assert set(TEMPLATES) == {"paper", "plain", "system"}
    assert TeacherConfig(template="system").template == "system"
    with pytest.raises(ValueError, match="template must contain"):
        TeacherConfig(template="plainer")
    example = ex("What is 2+2?", "4")
    assert teacher_prompt(tok, example, ["4"], "plain") == teacher_prompt(tok, example, ["4"], PLAIN_TEMPLATE)
    assert teacher_prompt(tok, example, ["4"], "paper") == teacher_prompt(tok, example, ["4"])
    note = SYSTEM_TEMPLATE.replace("{demonstration}", "4")
    assert teacher_messages(example, ["4"], "system") == [{"role": "system", "content": note}, *example.messages]
    system = teacher_prompt(tok, example, ["4"], "system")
    assert system.endswith(student_prompt(tok, example).split("<|im_end|>\n", 1)[1])  # the query turn is unchanged
    assert note in system
    with_system = ex("What is 2+2?", "4", system="Be brief.")
    assert teacher_messages(with_system, ["4"], "system")[0] == {"role": "system", "content": "Be brief.\n\n" + note}


def test_template_labels_and_bad_template_lists():
    assert [template_label(t) for t in ("plain", PLAIN_TEMPLATE, PAPER_TEMPLATE, "{demonstration} {prompt}")] == [
        "plain", "plain", "paper", "custom"]
    with pytest.raises(ValueError, match="distinct"):
        check_teacher(None, None, INFORMATIVE, templates=["paper", "paper"])
    with pytest.raises(ValueError, match="at least one example"):
        check_teacher(None, None, [])
    with pytest.raises(ValueError, match="n >= 1"):
        check_teacher(None, None, INFORMATIVE, n=0)


# --- figures on the embedded model ---------------------------------------------------------------------


def test_mean_logprobs_of_demonstrations_do_not_depend_on_batching(model_and_tokenizer, one_thread):
    model, tok = model_and_tokenizer
    examples = INFORMATIVE[:3]
    prompts = [student_prompt(tok, e) for e in examples]
    demos = [e.demonstration for e in examples]
    together = mean_logprobs(model, tok, prompts, demos)
    alone = [mean_logprobs(model, tok, [p], [d])[0] for p, d in zip(prompts, demos)]
    assert together == pytest.approx(alone, abs=1e-4)
    assert all(-10 < x < 0 for x in together)


def test_informative_demonstrations_teach_and_redundant_ones_do_not(model_and_tokenizer, one_thread):
    model, tok = model_and_tokenizer
    model.train()
    good = check_teacher(model, tok, INFORMATIVE, templates=["paper"], max_new_tokens=16)
    poor = check_teacher(model, tok, UNINFORMATIVE, templates=["paper"], max_new_tokens=16)
    assert model.training  # left as it was
    (g,), (p,) = good.results, poor.results
    assert g.gain > 0.8 and p.gain < 0.2, (g.gain, p.gain)  # about +1.3 vs -0.4 nats/token
    assert g.teacher_better == 6 and p.teacher_better <= 1
    assert (good.verdict, poor.verdict) == ("ready", "not ready")
    assert not any("larger model" in line for line in good.advice)
    assert any("larger model" in line for line in poor.advice)
    assert len(g.rows) == 6 and all(row["teacher_answer"] for row in g.rows)
    assert g.rows[0]["teacher_logprob"] > g.rows[0]["student_logprob"]


def test_echoing_and_copying_answers_are_counted_and_advised_on(model_and_tokenizer, monkeypatch, one_thread):
    model, tok = model_and_tokenizer
    echo = "This is an example for a response to the question:"
    canned = [f"{echo} {INFORMATIVE[0].demonstration}", "Marmalade."] * 3  # student and teacher answers alike
    monkeypatch.setattr("sdft_kit.check._answers", lambda *args: canned)
    check = check_teacher(model, tok, INFORMATIVE, templates=["paper", "plain"], scorer="contains")
    paper, plain = check.results
    assert (paper.echo_rate, plain.echo_rate) == (0.5, 0.0)
    assert paper.echo_tokens == len(tok(echo[:-1], add_special_tokens=False)["input_ids"])
    assert paper.copy_rate == plain.copy_rate == 1 / 6  # the first record's answer holds its own demonstration
    assert paper.teacher_accuracy == paper.student_accuracy == 1 / 6
    assert paper.verdict == "weak" and "accuracy 17% -> 17%" in paper.advice[0]
    assert "the template 'plain'" in paper.advice[-1]
    assert f"skip_first {paper.echo_tokens}" in paper.advice[-1]
    assert [row["echo"] for row in paper.rows] == [True, False] * 3


# --- CLI -------------------------------------------------------------------------------------------


def _run(*args):
    return subprocess.run([sys.executable, "-m", "sdft_kit.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_check_teacher_prints_the_table_and_a_verdict(tmp_path):
    result = _run("check-teacher", "--data", "sdft_kit/samples/demo.jsonl", "--n", "4", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("template ") for line in lines)
    for name in TEMPLATES:  # ROUGE-L F1 of the student's and the teacher's answers, and the lift
        assert any(line.startswith(name + " ") and re.search(r"\d\.\d\d -> \d\.\d\d \([+-]\d\.\d\d\)", line)
                   for line in lines), name
    assert any(line.startswith("verdict: ") for line in lines)


def test_cli_check_teacher_with_a_scorer_saves_its_result(tmp_path, capsys, one_thread):
    code = main(["check-teacher", "--data", "sdft_kit/samples/demo.jsonl", "--n", "3", "--max-new-tokens", "4",
                 "--templates", "plain", "--scorer", "exact", "--threads", "0", "--out", str(tmp_path)])
    assert code == 0
    assert "0% -> 0%" in capsys.readouterr().out  # 4 tokens cannot hold a whole demonstration
    saved = json.loads((tmp_path / "teacher_check.json").read_text())
    assert saved["records"] == 3 and saved["scorer"] == "exact" and saved["results"][0]["template"] == "plain"
    assert saved["results"][0]["rows"][0]["student_correct"] is False


def test_cli_check_teacher_fails_cleanly_on_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi"}\n')
    assert main(["check-teacher", "--data", str(bad)]) == 2  # before any model is loaded
    assert "bad.jsonl, line 1" in capsys.readouterr().err
    assert main(["check-teacher", "--data", "sdft_kit/samples/demo.jsonl", "--templates", "paper,fancy"]) == 2
    assert "--templates takes names from paper, plain, system" in capsys.readouterr().err


def test_cli_train_checks_the_teacher_first(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    assert main(["train", "--data", "sdft_kit/samples/demo.jsonl", "--out", str(out), "--steps", "1",
                 "--batch-size", "2", "--max-new-tokens", "4", "--threads", "1", "--template", "plain"]) == 0
    printed = capsys.readouterr().out
    assert "Teacher check (8 records, template 'plain'):" in printed
    assert printed.index("Teacher check") < printed.index("step   1/1")
    saved = json.loads((out / "teacher_check.json").read_text())
    assert saved["records"] == 8 and saved["best"] == "plain" and saved["max_new_tokens"] == 4  # no longer than training's


# --- the verdict on the bundled data ------------------------------------------------------------------


def test_the_bundled_tool_use_task_is_not_ready_unless_its_teacher_writes_the_right_calls(model_and_tokenizer,
                                                                                          one_thread):
    """The log-prob lift is large here, yet the teacher rarely writes the right call: READY must follow the answers."""
    from sdft_kit.tasks import load_task

    model, tok = model_and_tokenizer
    check = check_teacher(model, tok, load_task("tooluse").train, templates=["plain"], n=6, max_new_tokens=40,
                          progress=False)
    (plain,) = check.results
    by_source = {ex.source: ex for ex in load_task("tooluse").train}
    right = sum(tool_scorer(row["teacher_answer"], by_source[row["source"]]) for row in plain.rows)
    assert plain.gain > 0.3 and plain.share_better >= 0.8  # the log-prob signal alone would say ready
    assert check.verdict != "ready" or right / plain.records >= READY_ACCURACY, (check.verdict, right)
    assert check.verdict == "weak" and "not good enough" in check.summary()


def test_on_the_demo_sample_the_verdict_is_explained_by_the_numbers(model_and_tokenizer, demo_examples, one_thread):
    model, tok = model_and_tokenizer
    check = check_teacher(model, tok, demo_examples, templates=["system"], n=6, max_new_tokens=24, progress=False)
    (system,) = check.results
    summary = check.summary()
    # the figures the verdict rests on are in the one paragraph users read...
    assert f"ROUGE-L F1 {system.student_similarity:.2f} -> {system.teacher_similarity:.2f}" in summary
    assert f"{system.gain:+.2f} nats" in summary and f"{system.control_gain:+.2f} with another record's" in summary
    # ...and they give the verdict: recomputed from them, and each failed bar named in the advice
    assert judge(system)[0] == check.verdict
    lift = system.teacher_similarity - system.student_similarity
    good = system.teacher_similarity >= READY_SIMILARITY and lift >= READY_SIMILARITY_LIFT
    assert good == ("not good enough" not in summary)
    assert (check.verdict == "ready") == (good and system.gain >= 0.3 and system.share_better >= 0.8
                                          and system.gain - system.control_gain >= 0.1 and system.echo_rate < 0.2)
    by_source = {ex.source: ex for ex in demo_examples}
    for row in system.rows:
        assert row["teacher_similarity"] == similarity(row["teacher_answer"], by_source[row["source"]].demonstration)
    assert system.teacher_similarity == pytest.approx(sum(r["teacher_similarity"] for r in system.rows) / 6)


def test_advice_becomes_settings_that_one_click_applies():
    from sdft_kit.check import advised_settings

    assert advised_settings(figures()) == {}  # ready: nothing to change
    assert advised_settings(figures(teacher_logprob=-1.0)) == {}  # "try a larger model" is no setting
    assert advised_settings(figures(echo_rate=0.56, echo_tokens=14)) == {"template": "plain"}
    # plain already, or the best of several templates compared: cover the echo with skip_first instead
    assert advised_settings(figures(template="plain", echo_rate=0.5, echo_tokens=9), skip_first=3) == {"skip_first": 9}
    assert advised_settings(figures(echo_rate=0.5, echo_tokens=9), skip_first=3, compared=True) == {"skip_first": 9}
    assert advised_settings(figures(template="plain", echo_rate=0.5, echo_tokens=3), skip_first=3) == {}
    assert advised_settings(figures(copy_rate=0.6)) == {"demo_selection": "retrieval"}
    from sdft_kit.config import Config

    config = Config().replace(**advised_settings(figures(echo_rate=0.5, copy_rate=0.6)))  # valid config fields
    assert (config.teacher.template, config.teacher.demo_selection) == ("plain", "retrieval")


def test_cli_check_teacher_refuses_a_record_over_the_context_before_any_model_call(tmp_path, tiny_llama_dir, capsys):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "Hi?", "demonstration": "Hello."}) + "\n"
                    + json.dumps({"prompt": "word " * 40_000, "demonstration": "Fine."}) + "\n")  # 200k characters
    assert main(["check-teacher", "--data", str(data), "--model", str(tiny_llama_dir), "--n", "2"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, errors
    assert re.fullmatch(r"error: .*long\.jsonl:2: the student prompt is \d{5} tokens; with 48 for the answer that is "
                        r"more than the model's context of 512 tokens\. Shorten it", errors[0]), errors
    long_demo = tmp_path / "long_demo.jsonl"  # the demonstration is scored after the student prompt: it counts too
    long_demo.write_text(json.dumps({"prompt": "Hi?", "demonstration": "word " * 600}) + "\n")
    assert main(["check-teacher", "--data", str(long_demo), "--model", str(tiny_llama_dir)]) == 2
    assert re.search(r"long_demo\.jsonl:1: the student prompt is \d+ tokens; with 6\d\d for the answer",
                     capsys.readouterr().err)


def test_quick_check_compares_templates_with_the_runs_own_and_reports_its_progress(tiny_llama_dir, demo_examples,
                                                                                   one_thread):
    """What the app asks of the check before a run: every named template beside the run's own (a custom text
    too), the answers' progress as they come (its time left); without templates, the run's own only (the CLI)."""
    from sdft_kit.check import quick_check
    from sdft_kit.config import Config, PAPER_TEMPLATE
    from sdft_kit.trainer import Trainer

    config = Config().replace(model=str(tiny_llama_dir), max_new_tokens=4, template=PAPER_TEMPLATE, threads=1)
    trainer = Trainer(config, demo_examples)
    seen = []
    check = quick_check(trainer, progress=False, templates=["system", "plain", "paper"],
                        on_progress=lambda done, total: seen.append((done, total)))
    assert [r.template for r in check.results] == ["system", "plain", "paper"]  # the paper text counted once
    assert seen[-1] == (32, 32) and [done for done, _ in seen] == sorted(done for done, _ in seen)  # 8 + 3 x 8
    assert check.best in ("system", "plain", "paper") and len(check.advice) >= 1
    assert [r.template for r in quick_check(trainer, progress=False).results] == ["paper"]
    custom = trainer.config.replace(template="Q: {prompt}\nA model answer: {demonstration}")
    trainer.config = custom
    assert [r.template for r in quick_check(trainer, progress=False, templates=["plain"]).results] == [
        "plain", "custom2"]
