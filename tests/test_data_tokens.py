"""Token counting with the model's own tokenizer: exactness of the fast path, its self-check, template
failures, models without a chat template, and token counts for every format."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from tunery.data import validate_file
from tunery.data.formats import Example
from tunery.data.tokens import TokenCounter

ALTERNATING = (
    "{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


def _variant(src, dst, template: str | None):
    """A copy of the tiny model dir with another chat template (or none)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name == "chat_template.jinja":
            continue
        if f.suffix == ".safetensors":
            (dst / f.name).symlink_to(f)
        elif f.name == "tokenizer_config.json":
            cfg = json.loads(f.read_text())
            cfg.pop("chat_template", None)
            (dst / f.name).write_text(json.dumps(cfg))
        elif f.is_file():
            shutil.copy(f, dst / f.name)
    if template is not None:
        (dst / "chat_template.jinja").write_text(template)
    return dst


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def chat(i: int) -> dict:
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{i} + {i}?"},
                         {"role": "assistant", "content": f"{2 * i}"}]}


def write(path, objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def random_examples(seed: int, n: int):
    rnd = random.Random(seed)
    alphabet = ["ab", " cd", "\n\n", "  ", "\t", "é", "漢字", "<|im_end|>", "'s", " 12", ",.!", "<|im_start|>",
                "don't", "   x", "\r\n", "😀", "Ġ", "  \n ", "\x0b", "\x0c", "\x1c", "'S", "'ll", "'re", "I'VE",
                "12345", "\u00a0", "\u2003", "x\u0085", "½", "Ω"]
    exs = []
    for i in range(n):
        msgs = [{"role": "system", "content": "Be brief."}] if rnd.random() < 0.5 else []
        for _ in range(rnd.randint(1, 2)):
            for role in ("user", "assistant"):
                msgs.append({"role": role, "content": "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 25)))})
        exs.append(Example(i, "chat", messages=msgs))
    return exs


def test_fast_counts_equal_template_plus_tokenizer(tok):
    counter = TokenCounter(tok, "tiny")
    assert counter._split is not None and counter._word_re is not None and counter._ascii_re is not None
    exs = random_examples(0, 150)
    want = [len(tok.apply_chat_template(e.messages, tokenize=True, return_dict=False)) for e in exs]
    assert counter.count_examples(exs) == want
    assert counter.count_examples(exs) == want  # again, now from the caches
    assert counter._split is not None and counter._word_re is not None  # the self-check kept them
    assert counter._piece_checks > 0  # the pre-cut chat pieces were used (and checked) on the second pass


def test_ascii_split_is_the_unicode_split_on_ascii_text():
    from tunery.data.tokens import _GPT2_ASCII, _GPT2_PATTERN
    import regex

    uni = regex.compile(_GPT2_PATTERN)
    rnd = random.Random(5)
    chars = [chr(i) for i in range(128)] + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "  ", " \n"]
    for _ in range(3000):
        text = "".join(rnd.choice(chars) for _ in range(rnd.randint(0, 30)))
        assert _GPT2_ASCII.findall(text) == uni.findall(text), repr(text)


def test_a_wrong_shortcut_is_detected_and_dropped(tok):
    import regex

    counter = TokenCounter(tok, "tiny")
    counter._word_re = counter._ascii_re = regex.compile(r".")  # one "word" per character: overcounts
    exs = random_examples(1, 40)
    want = [len(tok.apply_chat_template(e.messages, tokenize=True, return_dict=False)) for e in exs]
    assert counter.count_examples(exs) == want
    assert counter._word_re is None and counter._split is None


def test_skeleton_render_matches_template_and_falls_back(tok):
    counter = TokenCounter(tok, "tiny")
    msgs = [{"role": "user", "content": "hi", "name": "bob"}, {"role": "assistant", "content": "yo", "weight": 1}]
    assert counter.render_chat(msgs) == tok.apply_chat_template(
        [{"role": "user", "content": "hi", "name": "bob"}, {"role": "assistant", "content": "yo"}], tokenize=False)
    plain = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    for _ in range(5):
        assert counter.render_chat(plain) == tok.apply_chat_template(plain, tokenize=False)
    assert counter._skeletons[("user", "assistant")] is not None


def test_counts_for_completion_and_preference_formats(tmp_path, tiny_model_dir, tok):
    comp = [{"prompt": f"Question {i}:", "completion": f" answer {i} " * (i + 1)} for i in range(12)]
    r = validate_file(write(tmp_path / "c.jsonl", comp), model=str(tiny_model_dir))
    from tunery.train.tokenize import encode_completion  # what the trainer will actually train on

    want = [len(encode_completion(tok, c["prompt"], c["completion"])) for c in comp]
    assert r.ok and r.token_stats["tokens"]["min"] == min(want) and r.token_stats["tokens"]["max"] == max(want)
    assert r.token_stats["tokens"]["total"] == sum(want)

    def pref(i):
        return {"input": {"messages": [{"role": "user", "content": f"q{i}"}]},
                "preferred_output": [{"role": "assistant", "content": "good " * i}],
                "non_preferred_output": [{"role": "assistant", "content": "bad"}]}
    prefs = [pref(i) for i in range(12)]
    r = validate_file(write(tmp_path / "p.jsonl", prefs), model=str(tiny_model_dir))

    def n(msgs):
        return len(tok.apply_chat_template(msgs, tokenize=True, return_dict=False))
    want = [max(n(p["input"]["messages"] + p["preferred_output"]), n(p["input"]["messages"] + p["non_preferred_output"]))
            for p in prefs]
    assert r.ok and r.token_stats["tokens"]["total"] == sum(want)


def test_template_error_is_reported_with_its_line(tmp_path, tiny_model_dir):
    model = _variant(tiny_model_dir, tmp_path / "alt-model", ALTERNATING)
    lines = [chat(i) for i in range(12)]
    lines.insert(8, {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                  {"role": "assistant", "content": "c"}]})
    r = validate_file(write(tmp_path / "t.jsonl", lines), model=str(model))
    p = r.problems[("template_error", "training")]
    assert p.lines == [9] and "alternate" in p.details[0] and not r.ok


def test_model_without_chat_template(tmp_path, tiny_model_dir):
    # A base model without a template gets tunery's default one (models/templates.py) and takes chat data,
    # counted with that template; only one that can get none (no EOS token to end a turn) is refused.
    from tunery.models import load_tokenizer

    model = _variant(tiny_model_dir, tmp_path / "base-model", None)
    rows = [chat(i) for i in range(12)]
    r = validate_file(write(tmp_path / "t.jsonl", rows), model=str(model))
    assert r.ok, r.summary()
    tok = load_tokenizer(str(model))
    assert "### Assistant:" in tok.chat_template
    want = [len(tok.apply_chat_template(x["messages"], tokenize=True, return_dict=False)) for x in rows]
    assert r.token_stats["tokens"]["total"] == sum(want)
    no_eos = _variant(tiny_model_dir, tmp_path / "no-eos", None)
    cfg = json.loads((no_eos / "tokenizer_config.json").read_text())
    cfg.update(eos_token=None, pad_token="<|endoftext|>")
    (no_eos / "tokenizer_config.json").write_text(json.dumps(cfg))
    r = validate_file(write(tmp_path / "t2.jsonl", rows), model=str(no_eos))
    assert not r.ok and "no_chat_template" in r.kinds() and "template_error" not in r.kinds()
    comp = [{"prompt": f"Q{i}", "completion": f" A{i}"} for i in range(12)]
    r = validate_file(write(tmp_path / "c.jsonl", comp), model=str(no_eos))
    assert r.ok, r.summary()


def test_long_and_uneven_warnings(tmp_path, tiny_model_dir):
    lines = [chat(i) for i in range(60)]
    lines[9] = {"messages": [{"role": "user", "content": "go " * 600}, {"role": "assistant", "content": "ok"}]}
    r = validate_file(write(tmp_path / "t.jsonl", lines), model=str(tiny_model_dir))
    assert r.ok  # warnings only
    assert r.problems[("long_example", "training")].lines == [10]
    assert r.problems[("uneven_lengths", "training")].lines == [10]


def test_counts_stay_exact_when_the_caches_overflow(tok, monkeypatch):
    from tunery.data import tokens

    monkeypatch.setattr(tokens, "_CACHE_MAX", 7)
    monkeypatch.setattr(tokens, "_WORDS_MAX", 11)
    counter = TokenCounter(tok, "tiny")
    exs = random_examples(2, 60)
    want = [len(tok.apply_chat_template(e.messages, tokenize=True, return_dict=False)) for e in exs]
    for i in range(0, 60, 6):
        assert counter.count_examples(exs[i:i + 6]) == want[i:i + 6]
    assert len(counter._cache) <= 7 + 6 * 8 and counter._word_re is not None


def test_counts_match_the_trainers_encoding_including_tool_calls(tmp_path, tiny_model_dir, tok):
    from tunery.data import read_examples
    from tunery.train.tokenize import encode_example

    tool = {"messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "draft", "weight": 0},
        {"role": "assistant", "content": "It is sunny.", "weight": 1}]}
    lines = [chat(i) for i in range(11)] + [tool]
    path = write(tmp_path / "t.jsonl", lines)
    r = validate_file(path, model=str(tiny_model_dir))
    assert r.ok, r.summary()
    want = [len(encode_example(tok, ex)) for ex in read_examples(path)]
    assert r.token_stats["tokens"]["total"] == sum(want) and r.token_stats["tokens"]["max"] == max(want)


def test_one_counter_is_safe_across_threads(tok, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from tunery.data import tokens

    monkeypatch.setattr(tokens, "_CACHE_MAX", 5)  # clears all the time: the race a lock must prevent
    counter = TokenCounter(tok, "tiny")
    exs = random_examples(3, 80)
    want = [len(tok.apply_chat_template(e.messages, tokenize=True, return_dict=False)) for e in exs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: counter.count_examples(exs[i:i + 4]), range(0, 80, 4)))
    assert [n for batch in got for n in batch] == want


def test_assistant_tokens_match_the_trainers_loss_mask(tok):
    from tunery.train.tokenize import encode_example

    counter = TokenCounter(tok, "tiny")
    exs = [Example(i, "chat", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What is {i} squared?"},
        {"role": "assistant", "content": f"It is {i * i}, since {i} times {i} is {i * i}."},
        {"role": "user", "content": "And cubed?"},
        {"role": "assistant", "content": f"{i ** 3}.", "weight": i % 2}]) for i in range(12)]
    exs.append(Example(99, "completion", prompt="Q: 2+2\nA:", completion=" 4"))
    assert counter.count_assistant(exs) == [encode_example(tok, e).n_trained for e in exs]
