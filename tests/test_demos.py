"""Tests for sdft_kit.demos: the exact student / teacher prompt text, and demonstration selection.

No model is loaded: a fake tokenizer renders a SmolLM2-like chat template with Jinja2.
"""

from __future__ import annotations

import jinja2
import pytest

from sdft_kit.config import PAPER_TEMPLATE, TeacherConfig
from sdft_kit.data import Example
from sdft_kit.demos import (
    PLAIN_TEMPLATE,
    DemoSelector,
    fill_template,
    student_prompt,
    teacher_chat_template,
    teacher_messages,
    teacher_prompt,
)
from sdft_kit.models import set_thinking

CHAT_TEMPLATE = (
    r"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    r"{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    r"{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    r"{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class FakeTokenizer:
    """Just enough of a tokenizer for `render`: a Jinja2 chat template (`chat_template=` renders another)."""

    def __init__(self, template: str = CHAT_TEMPLATE):
        self.chat_template = template
        self.calls: list[dict] = []

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True, chat_template=None):
        assert tokenize is False, "demos must ask for text, not token ids"
        self.calls.append({"messages": messages, "add_generation_prompt": add_generation_prompt})
        template = jinja2.Environment().from_string(chat_template or self.chat_template)
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt)


def ex(prompt: str, demo: str = "", system: str | None = None, source: str = "") -> Example:
    messages = ({"role": "system", "content": system},) if system is not None else ()
    return Example(messages=(*messages, {"role": "user", "content": prompt}), demonstration=demo, source=source)


@pytest.fixture
def tok() -> FakeTokenizer:
    return FakeTokenizer()


# --- the fake tokenizer itself ------------------------------------------------------------------


def test_fake_tokenizer_renders_like_smollm2(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# --- prompts ------------------------------------------------------------------------------------


def test_student_prompt_is_the_query_alone(tok):
    example = ex("What is 2+2?", "4")
    assert student_prompt(tok, example) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.calls[-1]["add_generation_prompt"] is True


def test_teacher_prompt_matches_paper_template_exactly(tok):
    example = ex("What is 2+2?", "2+2 equals 4.")
    got = teacher_prompt(tok, example, ["2+2 equals 4."])
    assert got == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?\n"
        "\n"
        "This is an example for a response to the question:\n"
        "2+2 equals 4.\n"
        "\n"
        "Now answer with a response of your own, including the thinking process.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.calls[-1]["add_generation_prompt"] is True


def test_system_message_is_kept_in_student_and_teacher_prompts(tok):
    example = ex("Name a colour.", "Blue.", system="Be brief.")
    assert student_prompt(tok, example) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nName a colour.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert teacher_prompt(tok, example, ["Blue."]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nName a colour.\n\n"
        "This is an example for a response to the question:\nBlue.\n\n"
        "Now answer with a response of your own, including the thinking process.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_only_the_last_user_turn_changes(tok):
    history = (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "First answer."},
    )
    example = Example(messages=(*history, {"role": "user", "content": "Second question?"}), demonstration="D")
    messages = teacher_messages(example, ["D"])
    assert messages[:3] == list(history)
    assert messages[3] == {"role": "user", "content": PAPER_TEMPLATE.replace("{prompt}", "Second question?")
                           .replace("{demonstration}", "D")}
    assert example.messages[3]["content"] == "Second question?"  # the example itself is untouched

    prefix = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nFirst question?<|im_end|>\n"
        "<|im_start|>assistant\nFirst answer.<|im_end|>\n"
    )
    assert student_prompt(tok, example) == prefix + "<|im_start|>user\nSecond question?<|im_end|>\n<|im_start|>assistant\n"
    assert teacher_prompt(tok, example, ["D"]) == prefix + (
        "<|im_start|>user\nSecond question?\n\n"
        "This is an example for a response to the question:\nD\n\n"
        "Now answer with a response of your own, including the thinking process.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_braces_and_slot_names_in_user_text_are_not_substituted():
    prompt = "Format {x} as {demonstration} and {prompt}, then {0} \\1 \\g<0>"
    demo = "Answer with {prompt} literally and {}"
    assert fill_template(PLAIN_TEMPLATE, prompt, demo) == prompt + "\n\n" + demo
    assert fill_template("A:{demonstration}|Q:{prompt}", prompt, demo) == "A:" + demo + "|Q:" + prompt


def test_teacher_prompt_keeps_literal_slot_text_from_the_user(tok):
    example = ex("Explain what {demonstration} means in {braces}.", "It is a slot.")
    got = teacher_prompt(tok, example, ["It is a slot."], template="Q: {prompt}\nEXAMPLE: {demonstration}")
    assert got == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nQ: Explain what {demonstration} means in {braces}.\nEXAMPLE: It is a slot.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_custom_template(tok):
    example = ex("Why?", "Because.")
    got = teacher_prompt(tok, example, ["Because."], template="[{demonstration}] then answer: {prompt}")
    assert got == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n[Because.] then answer: Why?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_plain_template(tok):
    assert PLAIN_TEMPLATE == "{prompt}\n\n{demonstration}"
    example = ex("Why?", "Because.")
    got = teacher_prompt(tok, example, ["Because."], template=PLAIN_TEMPLATE)
    assert got == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhy?\n\nBecause.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_multiple_demos_joined_by_blank_line(tok):
    example = ex("Q?", "A1")
    assert teacher_messages(example, ["A1", "A2", "A3"], PLAIN_TEMPLATE)[-1]["content"] == "Q?\n\nA1\n\nA2\n\nA3"
    got = teacher_prompt(tok, example, ["A1", "A2"])
    assert "This is an example for a response to the question:\nA1\n\nA2\n\nNow answer" in got


# --- DemoSelector -------------------------------------------------------------------------------


def examples4() -> list[Example]:
    return [
        ex("How do I bake sourdough bread with a starter?", "demo-bread", source="0"),
        ex("What is the capital city of France?", "demo-france", source="1"),
        ex("How long should sourdough bread dough proof with starter?", "demo-proof", source="2"),
        ex("Which river flows through the capital of France, Paris?", "demo-seine", source="3"),
    ]


def test_own_returns_own_demonstration():
    exs = examples4()
    selector = DemoSelector(exs, "own")
    for i, example in enumerate(exs):
        assert selector.indices_for(i) == [i]
        assert selector.demos_for(i) == [example.demonstration]


def test_own_works_with_a_single_example():
    assert DemoSelector([ex("Q?", "A")], "own").demos_for(0) == ["A"]


def test_retrieval_picks_most_similar_other_example():
    selector = DemoSelector(examples4(), "retrieval")
    assert selector.indices_for(0) == [2]
    assert selector.indices_for(2) == [0]
    assert selector.indices_for(1) == [3]
    assert selector.indices_for(3) == [1]
    assert selector.demos_for(0) == ["demo-proof"]
    assert selector.demos_for(3) == ["demo-france"]


def test_retrieval_never_returns_the_example_itself_even_with_duplicates():
    exs = examples4() + [ex("What is the capital city of France?", "demo-dup", source="4")]
    selector = DemoSelector(exs, "retrieval", k=2)
    for i in range(len(exs)):
        picks = selector.indices_for(i)
        assert i not in picks
        assert len(picks) == 2 and len(set(picks)) == 2
    # the exact duplicate is the best match for each of the pair
    assert selector.indices_for(1)[0] == 4
    assert selector.indices_for(4)[0] == 1


def test_retrieval_ranks_k_neighbours():
    selector = DemoSelector(examples4(), "retrieval", k=3)
    picks = selector.indices_for(0)
    assert sorted(picks) == [1, 2, 3]
    assert picks[0] == 2  # the bread question first


def test_random_is_seeded_excludes_self_and_returns_k():
    exs = [ex(f"Question number {i}?", f"demo-{i}") for i in range(10)]
    a = DemoSelector(exs, "random", k=3, seed=7)
    b = DemoSelector(exs, "random", k=3, seed=7)
    picks_a = [a.indices_for(i % 10) for i in range(40)]
    picks_b = [b.indices_for(i % 10) for i in range(40)]
    assert picks_a == picks_b
    for n, picks in enumerate(picks_a):
        assert len(picks) == 3 and len(set(picks)) == 3
        assert n % 10 not in picks
        assert all(0 <= j < 10 for j in picks)
    # different seeds give different picks somewhere, and the picks are not constant
    c = DemoSelector(exs, "random", k=3, seed=8)
    assert [c.indices_for(i % 10) for i in range(40)] != picks_a
    assert len({tuple(p) for p in picks_a}) > 5


def test_random_demos_are_the_picked_examples_demonstrations():
    exs = [ex(f"Q{i}?", f"demo-{i}") for i in range(5)]
    a = DemoSelector(exs, "random", k=2, seed=3)
    b = DemoSelector(exs, "random", k=2, seed=3)
    for i in range(5):
        assert a.demos_for(i) == [f"demo-{j}" for j in b.indices_for(i)]


def test_random_k_is_capped_at_the_number_of_others():
    exs = [ex("A?", "a"), ex("B?", "b"), ex("C?", "c")]
    selector = DemoSelector(exs, "random", k=5, seed=0)
    assert sorted(selector.indices_for(1)) == [0, 2]


@pytest.mark.parametrize("strategy", ["retrieval", "random"])
@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_examples_raises_for_non_own(strategy, n):
    with pytest.raises(ValueError, match="at least 2"):
        DemoSelector([ex("Q?", "A")] * n, strategy)


# --- TeacherConfig template ---------------------------------------------------------------------


def test_teacher_config_accepts_templates_with_both_slots():
    assert TeacherConfig().template == "system"  # the default preset's (docs/instruments.md)
    assert TeacherConfig(template=PAPER_TEMPLATE).template == PAPER_TEMPLATE
    assert TeacherConfig(template=PLAIN_TEMPLATE).template == PLAIN_TEMPLATE


@pytest.mark.parametrize("template, missing", [
    ("Question: {prompt}", "{demonstration}"),
    ("Example: {demonstration}", "{prompt}"),
    ("no slots at all", "{prompt}"),
    ("{Prompt} {demonstration}", "{prompt}"),
])
def test_teacher_config_rejects_template_missing_a_slot(template, missing):
    with pytest.raises(ValueError, match="template must contain") as info:
        TeacherConfig(template=template)
    assert missing in str(info.value)


# --- the teacher's own chat template and thinking switch ------------------------------------------

# A Qwen3-like generation prompt: an empty think block when enable_thinking is false (non-thinking mode).
THINKING_TEMPLATE = CHAT_TEMPLATE.replace(
    r"{{ '<|im_start|>assistant\n' }}{% endif %}",
    r"{{ '<|im_start|>assistant\n' }}{% if enable_thinking is defined and enable_thinking is false %}"
    r"{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}")
EMPTY_THINK = "<think>\n\n</think>\n\n"


def test_teacher_thinking_is_set_for_the_teacher_alone():
    assert THINKING_TEMPLATE != CHAT_TEMPLATE
    tok = FakeTokenizer(THINKING_TEMPLATE)
    set_thinking(tok, "off")  # a non-thinking student (model.thinking: off)
    example = ex("What is 2+2?")
    student = student_prompt(tok, example)
    assert student.endswith(EMPTY_THINK)
    same = teacher_prompt(tok, example, ["4"], chat_template=teacher_chat_template(tok, TeacherConfig()))
    assert same.endswith(EMPTY_THINK) and teacher_chat_template(tok, TeacherConfig()) is None
    thinking = teacher_prompt(tok, example, ["4"],
                              chat_template=teacher_chat_template(tok, TeacherConfig(teacher_thinking="on")))
    assert thinking == same.removesuffix(EMPTY_THINK)  # OPSD's pairing: a thinking teacher, a non-thinking student
    default = teacher_chat_template(tok, TeacherConfig(teacher_thinking="auto"))
    assert teacher_prompt(tok, example, ["4"], chat_template=default) == thinking  # the template's own default
    assert student_prompt(tok, example) == student  # the student's prompts are untouched
    with pytest.raises(ValueError, match="teacher_thinking='on'.*no thinking switch"):
        teacher_chat_template(FakeTokenizer(), TeacherConfig(teacher_thinking="on"))


def test_teacher_chat_template_from_a_file_or_a_text(tmp_path):
    tok = FakeTokenizer()
    example = ex("What is 2+2?")
    text = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"
    path = tmp_path / "teacher.jinja"
    path.write_text(text)
    for given in (str(path), text):
        prompt = teacher_prompt(tok, example, ["4"],
                                chat_template=teacher_chat_template(tok, TeacherConfig(teacher_chat_template=given)))
        assert prompt.startswith("[user] What is 2+2?") and prompt.endswith("[assistant]")
    assert student_prompt(tok, example).startswith("<|im_start|>system")  # the student keeps the tokenizer's
    with pytest.raises(ValueError, match="neither a file nor a chat template"):
        teacher_chat_template(tok, TeacherConfig(teacher_chat_template=str(tmp_path / "missing.jinja")))
