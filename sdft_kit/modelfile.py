"""An Ollama Modelfile for an exported GGUF: FROM the file, the chat template in Ollama's Go-template syntax,
the stop strings, and the system prompt the model's own template adds when a conversation has none.

    modelfile(tokenizer, "model-q8_0.gguf")  the Modelfile's text (and notes, one line each)

The template is chosen by the chat family the tokenizer's (Jinja) chat template belongs to: ChatML
(SmolLM2, Qwen), Llama 3, or Gemma. Each Go template renders a conversation as the Jinja one does,
without the BOS token (llama.cpp adds it where the GGUF says so); tests/test_modelfile.py renders both and
compares. Ollama itself was not run here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CHATML = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
LLAMA3 = """{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""
# Gemma has no system role: its template opens the first user turn with the system text and a blank line.
GEMMA = """{{- $system := "" }}
{{- range .Messages }}
{{- if eq .Role "system" }}{{ $system = .Content }}
{{- else if eq .Role "user" }}<start_of_turn>user
{{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>
{{ else }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}
{{- end }}<start_of_turn>model
"""


@dataclass(frozen=True)
class ChatFamily:
    name: str
    marker: str  # text that only this family's chat template holds
    template: str  # Ollama's Go template
    stop: tuple[str, ...]  # where an answer ends
    default_system: str | None  # regex over a rendered prompt: the system text the template adds by itself


FAMILIES = (
    ChatFamily("chatml", "<|im_start|>", CHATML, ("<|im_start|>", "<|im_end|>"),
               r"<\|im_start\|>system\n(.*?)<\|im_end\|>"),
    ChatFamily("llama3", "<|start_header_id|>", LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
               r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>"),
    ChatFamily("gemma", "<start_of_turn>", GEMMA, ("<start_of_turn>", "<end_of_turn>"), None),
)
PROBE = "sdft-kit probe message"


def chat_family(tokenizer) -> ChatFamily | None:
    template = tokenizer.chat_template or ""
    return next((family for family in FAMILIES if family.marker in template), None)


def default_system(tokenizer, family: ChatFamily) -> str | None:
    """The system prompt the chat template inserts when a conversation brings none (SmolLM2's), else None."""
    if family.default_system is None:
        return None
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": PROBE}], tokenize=False,
                                             add_generation_prompt=True)
    found = re.search(family.default_system, rendered.split(PROBE)[0], flags=re.DOTALL)
    return found[1] if found else None


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ValueError('a Modelfile cannot hold text with three double quotes in a row (""")')
    return f'"""{text}"""'


def modelfile(tokenizer, gguf_name: str) -> tuple[str, list[str]]:
    """The Modelfile's text for ./gguf_name, and notes (one line each) on what it could not carry."""
    lines = [f"FROM ./{gguf_name}"]
    family = chat_family(tokenizer)
    if family is None:
        return "\n".join(lines) + "\n", ["the chat template is not ChatML, Llama 3 or Gemma: the Modelfile has no "
                                         "TEMPLATE (Ollama then guesses one from the GGUF's chat_template)"]
    lines.append(f"TEMPLATE {_quoted(family.template)}")
    system = default_system(tokenizer, family)
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    stops = [*family.stop, *([tokenizer.eos_token] if tokenizer.eos_token else [])]
    lines += [f'PARAMETER stop "{stop}"' for stop in dict.fromkeys(stops)]
    return "\n".join(lines) + "\n", []
