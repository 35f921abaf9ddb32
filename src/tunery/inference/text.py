"""Turning generated token ids into text: incremental detokenizing, stop strings, token bytes."""

from __future__ import annotations

from functools import lru_cache


class Detokenizer:
    """Incremental decoding that never emits half a UTF-8 character (the prefix/read offset method)."""

    def __init__(self, tokenizer, prompt_tail: list[int] | None = None):
        self.tok = tokenizer
        # A few prompt tokens as context, so a leading space of the first generated token survives decoding.
        self.ids: list[int] = list(prompt_tail or [])
        self.prefix = 0
        self.read = len(self.ids)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        dec = self.tok.decode
        prefix_text = dec(self.ids[self.prefix:self.read], skip_special_tokens=True)
        new_text = dec(self.ids[self.prefix:], skip_special_tokens=True)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return new_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back, less an incomplete character at the very end: generation that stops
        (max_tokens) between the tokens of one character cannot show it, and U+FFFD in its place would be
        a broken character in the answer."""
        dec = self.tok.decode
        prefix_text = dec(self.ids[self.prefix:self.read], skip_special_tokens=True)
        new_text = dec(self.ids[self.prefix:], skip_special_tokens=True)
        self.prefix = self.read = len(self.ids)
        return new_text[len(prefix_text):].rstrip("\ufffd") if len(new_text) > len(prefix_text) else ""


class StopMatcher:
    """Finds stop strings in streamed text; holds back any tail that could still become one.

    `feed(delta)` returns (text safe to emit, stopped). Emitted text never contains a stop string,
    even when the stop string arrives split over several tokens.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        if not self.stops:
            return delta, False
        text = self.pending + delta
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return text[: min(hits)], True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        self.pending = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    # GPT-2's reversible byte <-> printable-unicode table, used by byte-level BPE vocabularies.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class TokenText:
    """The text and raw bytes of single tokens (what logprobs report), cached per id."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        hit = self.cache.get(token_id)
        if hit is not None:
            return hit
        piece = self.tok.convert_ids_to_tokens(token_id)
        table = _byte_decoder()
        if isinstance(piece, str) and piece and all(ch in table for ch in piece):
            raw = bytes(table[ch] for ch in piece)
        else:
            raw = self.tok.decode([token_id]).encode("utf-8")
        out = (raw.decode("utf-8", errors="replace"), list(raw))
        self.cache[token_id] = out
        return out
