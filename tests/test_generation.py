"""Answers for people (sdft_kit.generation): streaming, stop strings, repetition penalty, turns; and `sdft-kit generate`."""

import os
import subprocess
import sys

import pytest

from sdft_kit.generation import TooLong, chat, cut_at_stop, generate_text, settled, stream_chat

QUESTION = "Name three countries in Central America."
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # generate slows down many times with two threads on two busy cores


pytestmark = pytest.mark.usefixtures("one_thread")


def test_stop_strings_cut_the_answer_and_hold_back_what_may_become_one():
    assert cut_at_stop("El Salvador, Guatemala", [", "]) == "El Salvador"
    assert cut_at_stop("a\n\nb\n\nc", ["\n\n", "b"]) == "a"  # the first stop string in the text wins
    assert cut_at_stop("no stop here", ["###", ""]) == "no stop here"
    assert settled("answer\n", ["\n\n"]) == "answer"  # "\n" may be the start of "\n\n": held back
    assert settled("answer##", ["###"]) == "answer" and settled("answer#x", ["###"]) == "answer#x"
    assert settled("anything", []) == "anything"


def test_the_answer_streams_and_each_piece_extends_the_last(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    grown = list(stream_chat(model, tokenizer, QUESTION, 16))
    assert len(grown) >= 4 and all(later.startswith(earlier) for earlier, later in zip(grown, grown[1:]))
    assert grown[-1] == chat(model, tokenizer, QUESTION, 16)  # greedy: the same answer, streamed or not


def test_stop_strings_repetition_penalty_and_turns(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    plain = chat(model, tokenizer, QUESTION, 24)
    assert ", " in plain  # greedy SmolLM2 lists the countries with commas
    stopped = chat(model, tokenizer, QUESTION, 24, stop=[", "])
    assert stopped == plain[:plain.index(", ")] and stopped
    streamed = list(stream_chat(model, tokenizer, QUESTION, 24, stop=[", "]))
    assert streamed[-1] == stopped and all(", " not in piece for piece in streamed)
    assert chat(model, tokenizer, QUESTION, 24, repetition_penalty=1.5) != plain  # it changes the greedy path
    turns = [{"role": "user", "content": "My name is Ann."}, {"role": "assistant", "content": "Hello Ann!"},
             {"role": "user", "content": "Say my name."}]
    assert chat(model, tokenizer, turns, 12) != chat(model, tokenizer, "Say my name.", 12)  # earlier turns count
    with pytest.raises(ValueError, match="repetition_penalty > 0"):
        chat(model, tokenizer, QUESTION, 8, repetition_penalty=0)


def test_closing_a_stream_stops_generation_early(model_and_tokenizer):
    import time

    model, tokenizer = model_and_tokenizer
    stream = stream_chat(model, tokenizer, "Write a long story about a dragon.", 400)
    next(stream)
    start = time.perf_counter()
    stream.close()  # the reader went away (a browser tab closed): the generating thread ends after a token
    assert time.perf_counter() - start < 5


def test_generate_talks_in_turns_in_the_terminal():
    result = subprocess.run(
        [sys.executable, "-m", "sdft_kit.cli", "generate", "--chat", "--max-new-tokens", "8",
         "--repetition-penalty", "1.2", "--stop", "\n"],
        input="What is 7 plus 5?\n/reset\nAnd 2 plus 2?\n\n", capture_output=True, text=True, timeout=300,
        env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("model> ") == 2 and "Traceback" not in result.stderr
    answers = [line.split("model> ", 1)[1] for line in result.stdout.splitlines() if "model> " in line]
    assert all(answer.strip() for answer in answers)


def test_generate_needs_a_prompt_or_chat(capsys):
    from sdft_kit.cli import main

    assert main(["generate"]) == 2
    assert "give --prompt TEXT, or --chat to talk in turns" in capsys.readouterr().err


# -- input longer than the context: refused in one line before anything is generated -----------------
LONG = "word " * 40_000  # 200k characters, about 40k tokens: over the tiny model's 512 and the embedded one's 8,192


@pytest.fixture
def tiny_model(tiny_llama_dir):
    from sdft_kit.config import ModelConfig
    from sdft_kit.models import load_model

    return load_model(str(tiny_llama_dir), ModelConfig(model=str(tiny_llama_dir)))


def test_a_prompt_over_the_context_is_refused_before_generating(tiny_model):
    model, tokenizer = tiny_model
    with pytest.raises(TooLong, match=r"^the message is \d{5} tokens; with 8 for the answer that is more than the "
                                      r"model's context of 512 tokens\. Shorten it$"):
        next(stream_chat(model, tokenizer, LONG, 8))
    turns = [{"role": "user", "content": "word " * 450}]  # fits alone, not with 100 new tokens
    with pytest.raises(TooLong, match=r"^the conversation is 4\d\d tokens; with 100 for the answer that is more than "
                                      r"the model's context of 512 tokens\. Shorten it, or ask for fewer new tokens$"):
        chat(model, tokenizer, turns, 100)
    with pytest.raises(TooLong, match=r"^prompt 2 of 2 is \d{5} tokens"):
        generate_text(model, tokenizer, ["Hi?", LONG], 8)
    with pytest.raises(TooLong, match=r"^the teacher's prompt is \d{5} tokens"):
        generate_text(model, tokenizer, [LONG], 8, names=["the teacher's prompt"])
    assert isinstance(chat(model, tokenizer, turns, 8), str)  # with room for 8 tokens it is answered


def test_generate_refuses_a_prompt_over_the_context_and_chat_goes_on_after_one(tiny_llama_dir, capsys, monkeypatch):
    from sdft_kit.cli import main

    assert main(["generate", "--model", str(tiny_llama_dir), "--prompt", LONG[:40_000], "--max-new-tokens", "4"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: the message is 8"), errors
    assert errors[0].endswith("more than the model's context of 512 tokens. Shorten it")
    lines = iter([LONG, "Hi?", ""])  # a line over the context, then one that fits, then an empty line to end
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["generate", "--chat", "--model", str(tiny_llama_dir), "--max-new-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: the conversation is "), err
    assert errors[0].endswith("(this message was left out; /reset starts over)") and "Traceback" not in err
    assert out.count("model> ") == 1  # the short message was answered
