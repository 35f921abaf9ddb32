"""Chat templates for base models that ship without one.

A tokenizer with its own `chat_template` keeps it. One without gets a template that fits its vocabulary:

- **gemma**: the tokenizer has Gemma's turn tokens `<start_of_turn>`/`<end_of_turn>` (every Gemma, base or
  instruction-tuned). Gemma 3's own turn format, written here from its documented rendering: roles `user`
  and `model`, a leading system message becomes the start of the first user turn followed by a blank line,
  contents are trimmed, every turn ends `<end_of_turn>\\n`, the generation prompt is
  `<start_of_turn>model\\n`. Conversations Gemma's own template rejects (roles that do not alternate, a
  system message later on, tool messages) are rendered too, as user turns, instead of failing a job.
- **plain**: anything else. Markdown-style role headers the base model has seen in its pretraining text
  (`### User:\\n…\\n\\n### Assistant:\\n…`), with the assistant turn ended by the tokenizer's own EOS token:
  no invented tokens whose embeddings a LoRA run would never train, and the engine already stops at EOS.
  A tokenizer without an EOS token gets no template (a chat turn could never end): chat jobs on it are
  refused at creation.

Both start with the BOS token exactly when the tokenizer adds one to plain text, because chat text is
rendered first and then tokenized with add_special_tokens=False (trainer and engine alike). Either way the
template is set on the tokenizer object, so `save_pretrained` writes it into every checkpoint and final
model directory, and serving a fine-tune uses the very template it was trained with.
"""

from __future__ import annotations

from typing import Literal

TemplateKind = Literal["own", "gemma", "plain"]

# Text of a message's content: a string, or the text parts of an OpenAI content list.
_TEXT_MACRO = (
    "{%- macro text(c) -%}"
    "{%- if c is string -%}{{ c }}"
    "{%- elif c is iterable and c is not mapping -%}"
    "{%- for p in c -%}{%- if p is mapping and p.get('type') == 'text' -%}{{ p.get('text') or '' }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)

_GEMMA_BODY = (
    "{%- set ns = namespace(prefix='', turns=messages) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.prefix = text(messages[0]['content']) -%}"
    "{%- set ns.turns = messages[1:] -%}"
    # Gemma has no system turn: the system text opens the first user turn, followed by a blank line. When the
    # conversation does not go on with a user turn, it is a user turn of its own (so it is never trained).
    "{%- if not ns.turns or ns.turns[0]['role'] == 'assistant' -%}"
    "{{- '<start_of_turn>user\\n' ~ (ns.prefix | trim) ~ '<end_of_turn>\\n' -}}"
    "{%- set ns.prefix = '' -%}"
    "{%- else -%}"
    "{%- set ns.prefix = ns.prefix ~ '\\n\\n' -%}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- for m in ns.turns -%}"
    "{{- '<start_of_turn>' ~ ('model' if m['role'] == 'assistant' else 'user') ~ '\\n' -}}"
    "{%- if loop.first -%}{{- ns.prefix -}}{%- endif -%}"
    "{{- text(m['content']) | trim -}}"
    "{{- '<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)

_PLAIN_BODY = (
    "{%- for m in messages -%}"
    "{%- if m['role'] in ('system', 'developer') -%}{%- set role = 'System' -%}"
    "{%- elif m['role'] == 'assistant' -%}{%- set role = 'Assistant' -%}"
    "{%- elif m['role'] == 'tool' -%}{%- set role = 'Tool' -%}"
    "{%- else -%}{%- set role = 'User' -%}{%- endif -%}"
    "{{- '### ' ~ role ~ ':\\n' ~ (text(m['content']) | trim) -}}"
    "{%- if m['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
    "{{- '\\n\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### Assistant:\\n' -}}{%- endif -%}"
)


def _bos(tokenizer) -> str:
    """'{{ bos_token }}' when the tokenizer puts BOS in front of plain text, else ''."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return ""
    try:
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    except Exception:  # a tokenizer that cannot encode plain text adds no BOS we could match
        return ""
    return "{{- bos_token -}}" if ids and ids[0] == bos else ""


def _single_token(tokenizer, text: str) -> bool:
    try:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    except Exception:  # treated as absent
        return False
    return len(ids) == 1 and ids[0] != getattr(tokenizer, "unk_token_id", None)


def has_gemma_turns(tokenizer) -> bool:
    return _single_token(tokenizer, "<start_of_turn>") and _single_token(tokenizer, "<end_of_turn>")


def default_template(tokenizer) -> tuple[TemplateKind, str] | None:
    """The template tunery gives a tokenizer without one, or None when none can work (no EOS token)."""
    if has_gemma_turns(tokenizer):
        return "gemma", _TEXT_MACRO + _bos(tokenizer) + _GEMMA_BODY
    if getattr(tokenizer, "eos_token", None) is None:
        return None
    return "plain", _TEXT_MACRO + _bos(tokenizer) + _PLAIN_BODY


def ensure_chat_template(tokenizer) -> TemplateKind | None:
    """Give `tokenizer` a chat template when it has none; which kind it now has (None: it still has none)."""
    if getattr(tokenizer, "chat_template", None):
        return "own"
    found = default_template(tokenizer)
    if found is None:
        return None
    kind, template = found
    tokenizer.chat_template = template
    return kind


def template_kind(tokenizer) -> TemplateKind | None:
    """Which of our templates a tokenizer carries ('own' for any other), None when it has none."""
    current = getattr(tokenizer, "chat_template", None)
    if not current:
        return None
    found = default_template(tokenizer)
    return found[0] if found and found[1] == current else "own"

