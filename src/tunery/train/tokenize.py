"""Examples → token ids with a loss mask, built from rendered prefixes of the chat template.

Chat: only assistant messages are trained (system/user/tool tokens are masked), an assistant message with
`weight: 0` is excluded, and each trained turn includes its end-of-turn token so the model learns to stop.
The trained span of assistant message i is the text between render(messages[:i], add_generation_prompt=True)
and render(messages[:i+1]), minus trailing whitespace after the end-of-turn token. Both prefixes must be
prefixes of the full rendering; when a template breaks that (it rewrites earlier turns), we refuse rather
than silently training on every token.

Prompt/completion: prompt and completion are tokenized separately (exactly as /v1/completions sees a prompt
and then generates) and the completion + EOS is trained.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunery.errors import InvalidRequest

# Keys the chat template sees; `weight` is ours, not the template's.
_TEMPLATE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "function_call")


@dataclass
class Encoded:
    """One tokenized example: ids, a parallel 0/1 loss mask (1 = predict this token), its source line."""

    input_ids: list[int]
    loss_mask: list[int]
    line: int
    truncated: bool = False
    original_length: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        return sum(self.loss_mask)


def _clean(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        c = {k: m[k] for k in _TEMPLATE_KEYS if k in m and m[k] is not None}
        if c.get("content") is None:
            c["content"] = ""
        out.append(c)
    return out


def _render(tokenizer, messages: list[dict], *, gen: bool = False, tools=None, line: int = 0) -> str:
    kw = {"tools": tools} if tools else {}
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, **kw)
    except Exception as exc:  # jinja's TemplateError, raise_exception(...), a missing template: all are data
        # the model cannot take, so they fail the job once with the line, instead of crashing every attempt.
        raise InvalidRequest(f"line {line}: the model's chat template cannot render this conversation "
                             f"({type(exc).__name__}: {str(exc)[:300]})", param="training_file") from exc


def chat_spans(tokenizer, messages: list[dict], line: int = 0, tools=None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that are trained."""
    clean = _clean(messages)
    full = _render(tokenizer, clean, tools=tools, line=line)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant" or m.get("weight", 1) == 0:
            continue
        before = _render(tokenizer, clean[:i], gen=True, tools=tools, line=line)
        after = _render(tokenizer, clean[: i + 1], tools=tools, line=line)
        if not full.startswith(before) or not full.startswith(after) or len(after) <= len(before):
            raise InvalidRequest(
                f"line {line}: the model's chat template renders earlier turns differently once later turns "
                "are added, so assistant-only loss masks cannot be built for it; use prompt/completion data "
                "or a model whose template renders conversations incrementally.", param="training_file")
        end = len(after.rstrip())  # keep the end-of-turn token, drop the newline the template puts after it
        if end > len(before):
            spans.append((len(before), end))
    return full, spans


# How many chat examples job creation renders to prove the template can build every loss mask; the
# trainer renders them all and fails the job (once, with the line) on a later one.
CHECK_EXAMPLES = 2000


def chat_training_problem(tokenizer, name: str, training_file) -> str | None:
    """Why chat fine-tuning `name` on this file cannot run (None when it can): no template could be given,
    or its template cannot render these conversations incrementally (so no assistant-only mask)."""
    from tunery.data.reading import read_examples

    if not getattr(tokenizer, "chat_template", None):
        return (f"Model {name[:200]} has no chat template, and tunery cannot give it one: its tokenizer has no "
                "end-of-sequence token, so a chat turn could never end. Fine-tune it on prompt/completion data "
                "instead, or add a chat_template to its tokenizer_config.json.")
    for n, ex in enumerate(read_examples(training_file, "chat")):
        if n >= CHECK_EXAMPLES:
            break
        try:
            chat_spans(tokenizer, ex.messages, ex.line, getattr(ex, "tools", None))
        except InvalidRequest as exc:
            return f"Model {name[:200]} cannot be chat fine-tuned on this file: {exc.message}"
    return None


def encode_chat(tokenizer, messages: list[dict], line: int = 0, tools=None) -> Encoded:
    full, spans = chat_spans(tokenizer, messages, line, tools)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    mask = [0] * len(ids)
    for t, (s, e) in enumerate(enc["offset_mapping"]):
        if e <= s:
            continue
        # A token is trained when it starts inside a trained span (a token straddling the start of the
        # assistant content belongs to the header and stays masked).
        for a, b in spans:
            if a <= s < b:
                mask[t] = 1
                break
    return Encoded(ids, mask, line, original_length=len(ids))


def encode_completion(tokenizer, prompt: str, completion: str, line: int = 0) -> Encoded:
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    c = list(c) + ([eos] if eos is not None else [])
    ids = list(p) + c
    return Encoded(ids, [0] * len(p) + [1] * len(c), line, original_length=len(ids))


def encode_example(tokenizer, example) -> Encoded:
    """Encode a tunery.data Example (chat or prompt/completion)."""
    kind = example.kind
    if kind == "chat":
        return encode_chat(tokenizer, example.messages, example.line, getattr(example, "tools", None))
    if kind == "completion":
        return encode_completion(tokenizer, example.prompt or "", example.completion or "", example.line)
    raise InvalidRequest(
        f"line {example.line}: {kind} examples are preference pairs: train them with the dpo method "
        "(method type 'dpo'), or use chat or prompt/completion data for supervised fine-tuning.",
        param="training_file")


def encode_preference(tokenizer, example) -> tuple[Encoded, Encoded]:
    """A preference pair → (chosen, rejected): input + preferred / non-preferred output, each a full chat.

    Only the output's tokens are trained (assistant turns inside the input get weight 0), with the same
    template-prefix masks as SFT, so a DPO log-prob sums exactly the tokens SFT would train on that output.
    """
    if example.kind != "preference":
        raise InvalidRequest(f"line {example.line}: the dpo method needs preference pairs ({{input, "
                             f"preferred_output, non_preferred_output}}), not {example.kind} examples",
                             param="training_file")
    prompt = [dict(m, weight=0) if m.get("role") == "assistant" else m for m in example.messages or []]
    tools = getattr(example, "tools", None)
    chosen = encode_chat(tokenizer, prompt + list(example.preferred), example.line, tools)
    rejected = encode_chat(tokenizer, prompt + list(example.non_preferred), example.line, tools)
    return chosen, rejected


def truncate(enc: Encoded, max_length: int) -> Encoded:
    if len(enc) <= max_length:
        return enc
    return Encoded(enc.input_ids[:max_length], enc.loss_mask[:max_length], enc.line, True, enc.original_length)
