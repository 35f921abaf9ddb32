"""Fast, exact token counting with a model's own tokenizer.

Two costs dominate naive counting: rendering every conversation through the Jinja chat template
(tens of microseconds each) and tokenizing one text per Python call. Here:

- Chat rendering uses a *skeleton* per sequence of roles: the template is rendered once with sentinel
  contents, split at the sentinels, and real contents are spliced in. The first few renders of every
  skeleton are checked against the real template, and anything unusual (names, tool calls, templates
  that trim content) takes the real template, so the text is always what the trainer will see.
- Texts are tokenized in batches by the Rust tokenizer. When the tokenizer has no normalizer and its
  added tokens split text cleanly (true of byte-level BPE models like SmolLM2), a text is cut at the
  added tokens exactly as the tokenizer itself does, and the pieces' counts are cached, so repeated
  system prompts and role headers are counted once. This is checked against direct encoding on the
  first texts and switched off on any mismatch.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from typing import Any

_SENTINEL = "TUNERYSENTINEL{}X"
_TEMPLATE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "function_call")
_VERIFY_FIRST = 3
_CACHE_MAX = 200_000
_CACHE_MAX_CHARS = 20_000_000
_PIECE_MAX_CHARS = 4000
_SHORT_PIECE = 64
_WORDS_MAX = 500_000
# The byte-level pre-tokenizer's own pattern (tokenizers' ByteLevel with use_regex=true, as in GPT-2).
_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# The same split for pure-ASCII text, where \p{L} is [A-Za-z], \p{N} is [0-9] and \s the six ASCII spaces
# in both regex engines; Python's built-in re runs it about twice as fast as the `regex` module.
_GPT2_ASCII = re.compile(
    r"""'(?:[stmd]|re|ve|ll)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""", re.ASCII)


def _word_regex(spec: dict):
    """The pre-tokenizer's split as a Python regex, for byte-level BPE tokenizers (GPT-2's ByteLevel with
    its own regex), where BPE runs on each pre-token alone, so a text's count is the sum of its
    pre-tokens' counts; None for any other tokenizer (those count whole pieces in Rust)."""
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout"):
        return None
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        return None
    try:
        import regex
    except ImportError:
        return None
    return regex.compile(_GPT2_PATTERN)


class TemplateFailure(Exception):
    """The chat template refused a conversation (e.g. roles out of the order it requires)."""


def _locked(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)
    return wrapper


class TokenCounter:
    """Counts tokens exactly as `tokenizer(apply_chat_template(...), add_special_tokens=False)` would."""

    def __init__(self, tokenizer: Any, name: str = ""):
        self.tokenizer = tokenizer
        self.name = name
        self.lock = threading.RLock()  # one counter serves concurrent API requests; its caches are shared
        self.raw = getattr(tokenizer, "_tokenizer", None) or getattr(tokenizer, "backend_tokenizer", None)
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        template = getattr(tokenizer, "chat_template", None) or ""
        self._template_trims = isinstance(template, str) and ("trim" in template or "strip" in template)
        self._skeletons: dict[tuple, list[str] | None] = {}
        self._verified: dict[tuple, int] = {}
        self._cache: dict[str, int] = {}
        self._words: dict[str, int] = {}
        self._once: set[int] = set()
        self._skel_parts: dict[tuple, list[list[str]]] = {}
        self._cache_chars = 0
        self._word_re = None
        self._ascii_re = None
        self._added_first: frozenset = frozenset()
        self._split = self._piece_splitter()
        self._checks = 0
        self._piece_checks = 0
        self.eos_id = getattr(tokenizer, "eos_token_id", None)
        try:
            self.n_special_added = len(tokenizer("", add_special_tokens=True)["input_ids"])
        except Exception:  # a tokenizer that cannot encode "" adds nothing we could count
            self.n_special_added = 0

    # --- tokenizing -------------------------------------------------------------------------------

    def _piece_splitter(self):
        """A regex that cuts text at added tokens, when that is provably how the tokenizer works."""
        if self.raw is None:
            return None
        try:
            spec = json.loads(self.raw.to_str())
        except Exception:  # a tokenizer that cannot serialise itself: just encode whole texts
            return None
        if spec.get("normalizer") is not None or "Metaspace" in json.dumps(spec.get("pre_tokenizer")):
            return None
        added = spec.get("added_tokens") or []
        if not added or any(a.get("lstrip") or a.get("rstrip") or a.get("single_word") for a in added):
            return None
        self._word_re = _word_regex(spec)
        if self._word_re is not None:
            self._ascii_re = _GPT2_ASCII
        words = sorted({a["content"] for a in added if a.get("content")}, key=len, reverse=True)
        self._added_first = frozenset(w[0] for w in words)
        return re.compile("|".join(re.escape(w) for w in words))

    def _encode_lengths(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self.raw is not None:
            encs = self.raw.encode_batch_fast(texts, add_special_tokens=False)
            return [len(e.ids) for e in encs]
        out = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(x) for x in out]

    def _findall(self, piece: str) -> list[str]:
        if self._ascii_re is not None and piece.isascii():
            return self._ascii_re.findall(piece)
        return self._word_re.findall(piece)

    def _count_pieces(self, pieces: list[str]) -> list[int]:
        """Counts of texts without added tokens: by pre-token words (cached) when possible."""
        if self._word_re is None:
            return self._encode_lengths(pieces)
        words = self._words
        findall = self._word_re.findall
        ascii_findall = self._ascii_re.findall if self._ascii_re is not None else findall
        per = [ascii_findall(p) if p.isascii() else findall(p) for p in pieces]
        unknown: dict[str, None] = {}
        for ws in per:
            for w in ws:
                if w not in words:
                    unknown[w] = None
        if unknown:
            if len(words) + len(unknown) > _WORDS_MAX:
                words.clear()
                unknown = dict.fromkeys(w for ws in per for w in ws)
            keys = list(unknown)
            words.update(zip(keys, self._encode_lengths(keys)))
        get = words.__getitem__
        return [sum(map(get, ws)) for ws in per]

    @_locked
    def count_texts(self, texts: list[str]) -> list[int]:
        """Token counts of plain texts (added tokens like <|im_end|> count as one token each)."""
        if self._split is None:
            return self._encode_lengths(texts)
        split = self._split.split
        counts = self._count_piece_lists([split(t) for t in texts])
        if self._checks < _VERIFY_FIRST and texts:
            # The shortcuts must give exactly the tokenizer's own counts; check, and drop them if not.
            self._checks += 1
            sample = texts[:: max(1, len(texts) // 64)][:64]
            direct = self._encode_lengths(sample)
            if direct != self.count_texts_uncached(sample):
                self._split = self._word_re = self._ascii_re = None
                self._cache.clear()
                return self._encode_lengths(texts)
        return counts

    def _count_piece_lists(self, lists: list[list[str]]) -> list[int]:
        """Counts of texts given as their pieces between added tokens (len(pieces) - 1 added tokens)."""
        cache = self._cache
        if len(cache) > _CACHE_MAX or self._cache_chars > _CACHE_MAX_CHARS:
            cache.clear()
            self._cache_chars = 0
        missing: dict[str, None] = {}
        for parts in lists:
            for p in parts:
                if p and p not in cache:
                    missing[p] = None
        local = cache
        if missing:
            keys = list(missing)
            got = dict(zip(keys, self._count_pieces(keys)))
            local = _Overlay(cache, got)
            # Keep short pieces (role headers) and pieces seen before (system prompts); a long piece
            # seen once is most likely unique and would only bloat the cache.
            once = self._once
            if len(once) > _CACHE_MAX:
                once.clear()
            for k, n in got.items():
                if len(k) <= _SHORT_PIECE:
                    cache[k] = n
                    self._cache_chars += len(k)
                else:
                    h = hash(k)
                    if h in once and len(k) <= _PIECE_MAX_CHARS:
                        cache[k] = n
                        self._cache_chars += len(k)
                    else:
                        once.add(h)
        get = local.__getitem__
        return [len(parts) - 1 + sum(get(p) for p in parts if p) for parts in lists]

    def count_texts_uncached(self, texts: list[str]) -> list[int]:
        """Same as count_texts, recomputed through the same shortcuts without the caches (for checks)."""
        if self._split is None:
            return self._encode_lengths(texts)
        out = []
        for t in texts:
            parts = [p for p in self._split.split(t)]
            n = len(parts) - 1
            real = [p for p in parts if p]
            if self._word_re is not None:
                n += sum(len(self.raw.encode(w, add_special_tokens=False).ids)
                         for p in real for w in self._findall(p))
            else:
                n += sum(self._encode_lengths(real))
            out.append(n)
        return out

    # --- rendering --------------------------------------------------------------------------------

    @_locked
    def render_chat(self, messages: list[dict], tools: list | None = None) -> str:
        """The conversation as the chat template renders it (raises TemplateFailure if it refuses)."""
        if not self.has_chat_template:  # reported once as no_chat_template; count a plain rendering
            return "".join(f"{m.get('role')}: {m.get('content') or ''}\n" for m in messages)
        key = self._skeleton_key(messages, tools)
        if key is not None:
            sk = self._skeletons.get(key, _UNSET)
            if sk is _UNSET:
                sk = self._skeletons[key] = self._make_skeleton(key)
            if sk is not None:
                parts = [sk[0]]
                for m, lit in zip(messages, sk[1:]):
                    parts.append(m["content"])
                    parts.append(lit)
                text = "".join(parts)
                seen = self._verified.get(key, 0)
                if seen < _VERIFY_FIRST:
                    self._verified[key] = seen + 1
                    slow = self._render_slow(messages, tools)
                    if slow != text:
                        self._skeletons[key] = None
                        return slow
                return text
        return self._render_slow(messages, tools)

    def _chat_pieces(self, messages: list[dict], tools) -> list[str] | None:
        """The rendered conversation already cut at added tokens, built from the skeleton's pre-cut
        literals without rendering or splitting the text; None when that shortcut does not apply."""
        if self._split is None or not self.has_chat_template:
            return None
        key = self._skeleton_key(messages, tools)
        if key is None or self._verified.get(key, 0) < _VERIFY_FIRST or not self._skeletons.get(key):
            return None
        marks = self._added_first
        for m in messages:
            c = m["content"]
            for ch in marks:
                if ch in c:
                    return None
        lp = self._skel_parts.get(key)
        if lp is None:
            lp = self._skel_parts[key] = [self._split.split(lit) for lit in self._skeletons[key]]
        first = lp[0]
        pieces = first[:-1]
        carry = first[-1]
        for m, parts in zip(messages, lp[1:]):
            carry = carry + m["content"] + parts[0]
            if len(parts) > 1:
                pieces.append(carry)
                pieces.extend(parts[1:-1])
                carry = parts[-1]
        pieces.append(carry)
        return pieces

    def _skeleton_key(self, messages: list[dict], tools) -> tuple | None:
        if tools:
            return None
        key = []
        for m in messages:
            c = m.get("content")
            if type(c) is not str or len(m) > 2 and (m.keys() - {"role", "content", "weight"}):
                return None
            if self._template_trims and c != c.strip():
                return None
            key.append(m["role"])
        return tuple(key)

    def _make_skeleton(self, roles: tuple) -> list[str] | None:
        msgs = [{"role": r, "content": _SENTINEL.format(i)} for i, r in enumerate(roles)]
        try:
            text = self._render_slow(msgs, None)
        except TemplateFailure:
            return None
        lits, pos = [], 0
        for i in range(len(roles)):
            s = _SENTINEL.format(i)
            j = text.find(s, pos)
            if j < 0 or text.count(s) != 1:
                return None
            lits.append(text[pos:j])
            pos = j + len(s)
        lits.append(text[pos:])
        return lits

    def _render_slow(self, messages: list[dict], tools) -> str:
        if not self.has_chat_template:
            raise TemplateFailure(f"model {self.name!r} has no chat template")
        # What the trainer gives the template (tunery.train.tokenize): no `weight`, null content as "".
        msgs = []
        for m in messages:
            c = {k: m[k] for k in _TEMPLATE_KEYS if m.get(k) is not None}
            c.setdefault("content", "")
            msgs.append(c)
        try:
            return self.tokenizer.apply_chat_template(msgs, tools=tools or None, tokenize=False)
        except Exception as exc:  # jinja TemplateError, raise_exception(...), type errors inside templates
            raise TemplateFailure(str(exc) or type(exc).__name__) from exc

    # --- per-format counts ------------------------------------------------------------------------

    @_locked
    def count_examples(self, examples: list) -> list[int | str]:
        """Tokens per example (the longer side for preference pairs), or a template error message."""
        texts: list[str] = []
        owners: list[int] = []
        piece_lists: list[list[str]] = []
        piece_owners: list[int] = []
        results: list[int | str] = [0] * len(examples)
        extra = [0] * len(examples)
        for i, ex in enumerate(examples):
            try:
                if ex.kind == "chat":
                    pieces = self._chat_pieces(ex.messages, ex.tools)
                    if pieces is not None:
                        piece_lists.append(pieces)
                        piece_owners.append(i)
                    else:
                        texts.append(self.render_chat(ex.messages, ex.tools))
                        owners.append(i)
                elif ex.kind == "completion":
                    # As the trainer encodes it: prompt (with the tokenizer's own special tokens) and
                    # completion tokenized apart, then EOS.
                    texts.append(ex.prompt)
                    texts.append(ex.completion)
                    owners.append(i)
                    owners.append(i)
                    extra[i] = (1 if self.eos_id is not None else 0) + self.n_special_added
                else:
                    for out in (ex.preferred, ex.non_preferred):
                        texts.append(self.render_chat(ex.messages + out, ex.tools))
                        owners.append(i)
            except TemplateFailure as exc:
                results[i] = str(exc)
        counted = self.count_texts(texts)
        if piece_lists:
            by_pieces = self._count_piece_lists(piece_lists) if self._split is not None else None
            if by_pieces is not None and self._piece_checks < _VERIFY_FIRST:
                self._piece_checks += 1
                step = max(1, len(piece_owners) // 16)
                sample = [examples[i] for i in piece_owners[::step][:16]]
                direct = self._encode_lengths([self.render_chat(e.messages, e.tools) for e in sample])
                if direct != by_pieces[::step][:16]:
                    self._split = self._word_re = self._ascii_re = None
                    self._cache.clear()
                    by_pieces = None
            if by_pieces is None:  # the shortcuts are off: render and count the texts
                by_pieces = self.count_texts([self.render_chat(examples[i].messages, examples[i].tools)
                                              for i in piece_owners])
            counted += by_pieces
            owners += piece_owners
        sums = [0] * len(examples)
        for i, n in zip(owners, counted):
            if examples[i].kind == "completion":
                sums[i] += n
            else:
                sums[i] = max(sums[i], n)
        for i in set(owners):
            if isinstance(results[i], int):
                results[i] = sums[i] + extra[i]
        return results

    @_locked
    def count_assistant(self, examples: list) -> list[int]:
        """Trained tokens per example, as the trainer masks them: each trained assistant message's content
        plus its end-of-turn token (weight != 0; the preferred output for pairs); completion + EOS."""
        texts, owners = [], []
        out = [0] * len(examples)
        eot = 1 if self.has_chat_template else 0
        for i, ex in enumerate(examples):
            if ex.kind == "chat":
                for m in ex.messages:
                    if m["role"] == "assistant" and m.get("weight", 1) and isinstance(m.get("content"), str):
                        texts.append(m["content"])
                        owners.append(i)
                        out[i] += eot
            elif ex.kind == "completion":
                texts.append(ex.completion)
                owners.append(i)
                out[i] += 1 if self.eos_id is not None else 0
            else:
                c = ex.preferred[0].get("content")
                if isinstance(c, str):
                    texts.append(c)
                    owners.append(i)
                    out[i] += eot
        for i, n in zip(owners, self.count_texts(texts)):
            out[i] += n
        return out


_UNSET: Any = object()


class _Overlay(dict):
    """Lookups in a batch's fresh counts, then the cache (without copying either)."""

    def __init__(self, base: dict, fresh: dict):
        super().__init__(fresh)
        self.base = base

    def __missing__(self, key):
        return self.base[key]
_COUNTERS: dict[str, TokenCounter] = {}


def get_counter(model: str, settings=None) -> TokenCounter:
    """A TokenCounter for a model name (tokenizer loaded once per process); settings: see models.resolve."""
    from tunery.models import load_tokenizer, materialize

    key = str(materialize(model, settings))
    c = _COUNTERS.get(key)
    if c is None:
        c = TokenCounter(load_tokenizer(model, settings), model)
        if len(_COUNTERS) > 4:
            _COUNTERS.clear()
        _COUNTERS[key] = c
    return c
