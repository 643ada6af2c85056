"""Tests for sdft_kit.modelfile: the Ollama Modelfile's template renders a conversation exactly as the model's own
chat template does. Ollama cannot be installed here, so a small renderer of the Go-template subset the
templates use stands in for it (text, {{ .Field }}, $variables, if / else if / else, range, eq, trim markers)."""

from __future__ import annotations

import re

import pytest

from sdft_kit.modelfile import FAMILIES, modelfile

CONVERSATION = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a color."},
                {"role": "assistant", "content": "Red."}, {"role": "user", "content": "And another?"}]


# -- a renderer for the Go-template subset of sdft_kit.modelfile's templates ---------------------------
def _tokens(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)] with Go's trim markers applied ({{- trims the text before, -}} after)."""
    parts: list[tuple[str, str]] = []
    position, trim_next = 0, False
    for match in re.finditer(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", template, flags=re.DOTALL):
        text = template[position:match.start()]
        text = text.lstrip() if trim_next else text
        parts.append(("text", text.rstrip() if match[1] else text))
        parts.append(("action", match[2]))
        position, trim_next = match.end(), bool(match[3])
    tail = template[position:]
    parts.append(("text", tail.lstrip() if trim_next else tail))
    return parts


def _parse(tokens: list, index: int = 0, stop: tuple = ()) -> tuple[list, int, str]:
    """A node list up to an action starting with one of `stop` (returned with the index after it)."""
    nodes: list = []
    while index < len(tokens):
        kind, value = tokens[index]
        index += 1
        if kind == "text":
            nodes.append(("text", value))
        elif value.startswith(stop) and stop:
            return nodes, index, value
        elif value.startswith("range "):
            body, index, _ = _parse(tokens, index, ("end",))
            nodes.append(("range", value[6:], body))
        elif value.startswith("if "):
            branches, condition = [], value[3:]
            while True:
                body, index, ended = _parse(tokens, index, ("else", "end"))
                branches.append((condition, body))
                if ended == "end":
                    break
                condition = ended[8:] if ended.startswith("else if ") else "true"
            nodes.append(("if", branches))
        else:
            nodes.append(("action", value))
    return nodes, index, ""


def _value(expr: str, dot: dict, variables: dict):
    expr = expr.strip()
    if expr.startswith("eq "):
        left, right = re.fullmatch(r'eq (\S+) (".*?"|\S+)', expr).groups()
        return _value(left, dot, variables) == _value(right, dot, variables)
    if expr == "true":
        return True
    if expr.startswith('"'):
        return expr[1:-1]
    if expr.startswith("$"):
        return variables[expr]
    return dot[expr[1:]]


def _render(nodes: list, dot: dict, root: dict, variables: dict) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "range":
            for item in _value(node[1], root, variables):
                out.append(_render(node[2], item, root, variables))
        elif node[0] == "if":
            body = next((body for condition, body in node[1] if _value(condition, dot, variables)), [])
            out.append(_render(body, dot, root, variables))
        elif (assign := re.fullmatch(r"(\$\w+) :?= (.*)", node[1])) is not None:
            variables[assign[1]] = _value(assign[2], dot, variables)
        else:
            out.append(str(_value(node[1], dot, variables)))
    return "".join(out)


def render_go(template: str, messages: list[dict], system: str = "") -> str:
    nodes, _, _ = _parse(_tokens(template))
    root = {"Messages": messages, "System": system}
    return _render(nodes, root, root, {})


def test_the_go_renderer_follows_go_semantics():
    template = '{{- $s := "" }}\n{{- range .Messages }}{{ if eq .Role "a" }}A{{ $s = .Content }}{{ else }}B{{ end }}{{ end }} {{ $s -}}\n  !'
    assert render_go(template, [{"Role": "a", "Content": "x"}, {"Role": "b", "Content": "y"}]) == "AB x!"


# -- the Modelfiles --------------------------------------------------------------------------------
def parse_modelfile(text: str) -> dict:
    template = re.search(r'^TEMPLATE """(.*?)"""', text, flags=re.DOTALL | re.MULTILINE)
    system = re.search(r'^SYSTEM """(.*?)"""', text, flags=re.DOTALL | re.MULTILINE)
    return {"from": re.search(r"^FROM (.*)$", text, flags=re.MULTILINE)[1],
            "template": template[1] if template else None, "system": system[1] if system else None,
            "stop": re.findall(r'^PARAMETER stop "(.*)"$', text, flags=re.MULTILINE)}


def ollama_prompt(parsed: dict, messages: list[dict]) -> str:
    """What Ollama renders: the Modelfile's SYSTEM goes first when the conversation has no system message."""
    if parsed["system"] and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": parsed["system"]}, *messages]
    return render_go(parsed["template"], [{"Role": m["role"], "Content": m["content"]} for m in messages])


def without_bos(tokenizer, text: str) -> str:
    """llama.cpp adds BOS itself where the tokenizer does (the GGUF's add_bos_token): the template must not."""
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    return text.removeprefix(tokenizer.bos_token) if adds_bos else text


@pytest.fixture(scope="module")
def tokenizers(tiny_model_dir):
    from transformers import AutoTokenizer

    from sdft_kit.models import embedded_model_dir

    folders = {"embedded": embedded_model_dir(), **{f: tiny_model_dir(f) for f in ("llama3", "qwen3", "gemma3")}}
    return {name: AutoTokenizer.from_pretrained(folder) for name, folder in folders.items()}


@pytest.mark.parametrize("name, family", [("embedded", "chatml"), ("llama3", "llama3"), ("qwen3", "chatml"),
                                          ("gemma3", "gemma")])
def test_the_template_renders_conversations_as_the_chat_template_does(tokenizers, name, family):
    tokenizer = tokenizers[name]
    text, notes = modelfile(tokenizer, "model-q8_0.gguf")
    parsed = parse_modelfile(text)
    assert parsed["from"] == "./model-q8_0.gguf" and notes == []
    assert parsed["template"] == next(f.template for f in FAMILIES if f.name == family)
    for messages in (CONVERSATION, CONVERSATION[1:], CONVERSATION[1:2]):
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert ollama_prompt(parsed, messages) == without_bos(tokenizer, expected), (name, messages)
    assert tokenizer.convert_tokens_to_ids(parsed["stop"][-1]) is not None
    assert len(set(parsed["stop"])) == len(parsed["stop"])


def test_smollm2_default_system_prompt_and_stops(tokenizers):
    parsed = parse_modelfile(modelfile(tokenizers["embedded"], "m.gguf")[0])
    assert parsed["system"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert parsed["stop"] == ["<|im_start|>", "<|im_end|>"]
    assert parse_modelfile(modelfile(tokenizers["gemma3"], "m.gguf")[0])["stop"] == [
        "<start_of_turn>", "<end_of_turn>", "<eos>"]
    assert parse_modelfile(modelfile(tokenizers["qwen3"], "m.gguf")[0])["system"] is None


def test_an_unknown_chat_template_gets_no_template_and_a_note(tokenizers):
    import copy

    tokenizer = copy.deepcopy(tokenizers["embedded"])
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    text, notes = modelfile(tokenizer, "m.gguf")
    assert text == "FROM ./m.gguf\n" and "no TEMPLATE" in notes[0]
