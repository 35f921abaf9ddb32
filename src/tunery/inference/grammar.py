"""JSON mode by constrained decoding, with xgrammar.

Why xgrammar rather than lm-format-enforcer: xgrammar compiles the JSON schema into a pushdown
automaton in C++ and precomputes, per grammar state, which vocabulary tokens are always/never
allowed, so each step's token mask costs microseconds even for a 49k vocabulary. lm-format-enforcer
walks a character-level parser over a token trie in pure Python per step (milliseconds, growing with
schema size). xgrammar is the default structured-output backend of vLLM, SGLang and TensorRT-LLM,
is actively maintained, and covers JSON Schema well (refs, enums, anyOf, patterns, formats). Its
cost is a heavier install (it pulls triton on Linux x86, unused on CPU). See bench/bench_inference.py
notes and README for the measured comparison.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

from tunery.errors import InvalidRequest


def schema_of(response_format: dict | None) -> dict | None:
    """The JSON schema a response_format asks for (None for plain text); 400s name the bad field."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidRequest("response_format.json_schema must be an object with a 'name' and a 'schema'",
                                 param="response_format.json_schema")
        schema = spec.get("schema")
        if schema is None:
            return {"type": "object"}
        if not isinstance(schema, dict):
            raise InvalidRequest("response_format.json_schema.schema must be a JSON Schema object",
                                 param="response_format.json_schema.schema")
        return schema
    raise InvalidRequest(f"response_format.type must be 'text', 'json_object' or 'json_schema', not {kind!r}",
                         param="response_format.type")


class GrammarFactory:
    """Compiles schemas for one tokenizer (compiled grammars cached) and makes per-sequence matchers."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        import xgrammar as xgr

        self.xgr = xgr
        self.vocab_size = vocab_size
        self.stop_ids = stop_ids
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids)
        self.compiler = xgr.GrammarCompiler(info)
        self.cache: OrderedDict[str, object] = OrderedDict()
        self.lock = threading.Lock()

    def compile(self, schema: dict):
        # Not sort_keys: xgrammar emits properties in the schema's order, which the caller chose.
        key = json.dumps(schema)
        with self.lock:
            hit = self.cache.get(key)
            if hit is not None:
                self.cache.move_to_end(key)
                return hit
        try:
            # Compact separators: a model cannot stall in endless whitespace, yet ", " and ": " stay allowed.
            compiled = self.compiler.compile_json_schema(key, any_whitespace=False, strict_mode=True)
        except Exception as exc:  # xgrammar reports unsupported or invalid schemas with its own errors
            raise InvalidRequest(f"response_format JSON schema could not be used: {exc}",
                                 param="response_format.json_schema.schema") from exc
        with self.lock:
            self.cache[key] = compiled
            while len(self.cache) > 64:
                self.cache.popitem(last=False)
        return compiled

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled, override_stop_tokens=self.stop_ids)

    def bitmask(self, rows: int):
        return self.xgr.allocate_token_bitmask(rows, self.vocab_size)

    def apply(self, logits, bitmask, rows: list[int]) -> None:
        self.xgr.apply_token_bitmask_inplace(logits, bitmask, indices=rows)


def check_schema(schema: dict) -> None:
    """A 400 for a JSON Schema xgrammar cannot use (backends whose own grammar engine would accept
    nonsense silently — llama.cpp's llguidance — check here first, so every backend refuses alike)."""
    import xgrammar as xgr

    try:
        xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
    except Exception as exc:  # xgrammar reports unsupported or invalid schemas with its own errors
        raise InvalidRequest(f"response_format JSON schema could not be used: {exc}",
                             param="response_format.json_schema.schema") from exc
