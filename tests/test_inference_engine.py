"""The inference engine on the tiny random model: sampling, stops, usage, adapters, batching, JSON mode."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tunery.errors import InvalidRequest, RateLimited
from tunery.inference import Delta, Engine, Finished, SamplingParams, Servable
from tunery.settings import InferenceSettings

CHAT = [{"role": "user", "content": "Say something about cats."}]


def make_lora(base_dir: Path, out: Path, seed: int, base_name: str | None = None) -> Path:
    """A LoRA adapter with random (non-zero) weights, saved the way the trainer saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False,
                     task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(out, safe_serialization=True)
    (out / "tunery.json").write_text(json.dumps({"base_model": base_name or str(base_dir), "method": "lora"}))
    return out


@pytest.fixture(scope="module")
def loras(tiny_model_dir, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("loras")
    return [make_lora(tiny_model_dir, root / f"a{i}", seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def engine():
    e = Engine(config=InferenceSettings(dtype="float32", max_batch=8, max_queue=64, max_adapters=2))
    yield e
    e.close()


def run(engine, model, **kw):
    messages = kw.pop("messages", CHAT)
    return engine.generate(model, messages=messages, **kw).result()


def ft(tiny_model_dir, lora: Path, name: str) -> Servable:
    return Servable(id=name, base_model=str(tiny_model_dir), adapter_dir=lora)


def test_greedy_is_deterministic_and_counts_usage(engine, tiny_model_dir):
    m = str(tiny_model_dir)
    (a,), usage = run(engine, m, max_tokens=12, temperature=0)
    (b,), _ = run(engine, m, max_tokens=12, temperature=0)
    assert a.text == b.text and a.text
    assert a.finish_reason == "length"
    n_prompt = len(engine.prepare(m).encode_chat(CHAT))
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (n_prompt, 12, n_prompt + 12)


def test_the_cache_goes_by_the_name_the_model_takes(engine, tiny_model_dir, recwarn):
    """transformers renamed forward's `past_key_values` to `cache` and warns about the old name on every
    call (14 FutureWarnings in one test run): the engine passes the cache by the name the model declares."""
    run(engine, str(tiny_model_dir), max_tokens=4, temperature=0)
    assert not [w for w in recwarn if "past_key_values" in str(w.message)], [str(w.message) for w in recwarn]


def _token_boundary_stop(engine, model) -> tuple[str, str]:
    """A greedy output and a stop string that straddles a token boundary in it."""
    handle = engine.prepare(model)
    gen = engine.generate(model, messages=CHAT, max_tokens=24, temperature=0)
    deltas = [ev.text for ev in gen if isinstance(ev, Delta)]
    text = "".join(deltas)
    # Take 2 chars before and 2 after the boundary between the 3rd and 4th delta.
    cut = sum(len(d) for d in deltas[:3])
    stop = text[cut - 2:cut + 2]
    assert len(stop) == 4 and handle
    return text, stop


def test_stop_string_split_across_tokens_is_never_emitted(engine, tiny_model_dir):
    m = str(tiny_model_dir)
    full, stop = _token_boundary_stop(engine, m)
    gen = engine.generate(m, messages=CHAT, max_tokens=24, temperature=0, stop=[stop, "never-there"])
    events = list(gen)
    deltas = [ev.text for ev in events if isinstance(ev, Delta)]
    out = "".join(deltas)
    assert out == full[: full.index(stop)]
    assert all(stop not in d for d in deltas)
    assert [ev.finish_reason for ev in events if isinstance(ev, Finished)] == ["stop"]


def test_concurrent_requests_share_batches_and_match_sequential(engine, tiny_model_dir):
    m = str(tiny_model_dir)
    prompts = [[{"role": "user", "content": f"Question number {i}" + " and more" * i}] for i in range(5)]
    lengths = [5, 17, 9, 23, 13]
    alone = [run(engine, m, messages=p, max_tokens=n, temperature=0)[0][0].text for p, n in zip(prompts, lengths)]
    steps0 = engine.steps
    gens = [engine.generate(m, messages=p, max_tokens=n, temperature=0) for p, n in zip(prompts, lengths)]
    together = [g.result()[0][0].text for g in gens]
    assert together == alone
    # Shared forward passes: far fewer steps than the 67 tokens (+5 prefills) run one by one.
    assert engine.steps - steps0 < sum(lengths)


def test_adapters_change_output_and_mix_in_one_batch(engine, tiny_model_dir, loras):
    m = str(tiny_model_dir)
    models = [m, ft(tiny_model_dir, loras[0], "ft:a0"), ft(tiny_model_dir, loras[1], "ft:a1")]
    alone = [run(engine, x, max_tokens=10, temperature=0)[0][0].text for x in models]
    assert len(set(alone)) == 3, alone  # each adapter really changes the model
    gens = [engine.generate(x, messages=CHAT, max_tokens=10, temperature=0) for x in models * 2]
    together = [g.result()[0][0].text for g in gens]
    assert together == alone * 2


def test_adapter_lru_and_unload(engine, tiny_model_dir, loras):
    m = str(tiny_model_dir)
    for i, lora in enumerate(loras):  # max_adapters=2: the first one is evicted by the third
        run(engine, ft(tiny_model_dir, lora, f"ft:lru{i}"), max_tokens=2, temperature=0)
    time.sleep(0.2)
    loaded = engine.loaded()[m]
    assert "ft:lru2" in loaded and "ft:lru0" not in loaded and len(loaded) <= 2
    engine.unload("ft:lru2")
    deadline = time.time() + 5
    while "ft:lru2" in engine.loaded()[m] and time.time() < deadline:
        time.sleep(0.05)
    assert "ft:lru2" not in engine.loaded()[m]
    # ...and it can be served again afterwards (reloaded on demand).
    (c,), _ = run(engine, ft(tiny_model_dir, loras[2], "ft:lru2"), max_tokens=3, temperature=0)
    assert c.text


def test_seed_reproduces_sampling_and_n_gives_distinct_choices(engine, tiny_model_dir):
    m = str(tiny_model_dir)
    a, _ = run(engine, m, max_tokens=8, temperature=1.0, seed=7, n=3)
    b, _ = run(engine, m, max_tokens=8, temperature=1.0, seed=7, n=3)
    c, _ = run(engine, m, max_tokens=8, temperature=1.0, seed=8, n=3)
    assert [x.index for x in a] == [0, 1, 2]
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.text for x in a] != [x.text for x in c]
    assert len({x.text for x in a}) == 3


def test_top_p_tiny_keeps_only_the_top_token(engine, tiny_model_dir):
    m = str(tiny_model_dir)
    (greedy,), _ = run(engine, m, max_tokens=8, temperature=0)
    (nucleus,), _ = run(engine, m, max_tokens=8, temperature=1.5, top_p=1e-6, seed=3)
    assert nucleus.text == greedy.text


def test_presence_penalty_stops_repeats(engine, tiny_model_dir):
    m = str(tiny_model_dir)
    handle = engine.prepare(m)
    ids = handle.encode_chat(CHAT)
    plain = engine.submit(handle, ids, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    pen = engine.submit(handle, ids, SamplingParams(max_tokens=40, temperature=0, presence_penalty=2.0,
                                                    ignore_eos=True))
    tok = handle.tokenizer
    a = tok(plain.result()[0][0].text, add_special_tokens=False)["input_ids"]
    b = tok(pen.result()[0][0].text, add_special_tokens=False)["input_ids"]
    assert len(set(a)) < len(a)  # the random model repeats itself greedily...
    assert len(set(b)) > len(set(a))  # ...and the penalty makes it pick new tokens


def test_logprobs_report_chosen_and_top_tokens(engine, tiny_model_dir):
    m = str(tiny_model_dir)
    (c,), _ = run(engine, m, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    assert len(c.logprobs) == 6
    assert "".join(lp.token for lp in c.logprobs) == c.text
    for lp in c.logprobs:
        assert len(lp.top) == 3
        assert [t[2] for t in lp.top] == sorted((t[2] for t in lp.top), reverse=True)
        assert lp.top[0][0] == lp.token and lp.logprob == pytest.approx(lp.top[0][2])
        assert lp.logprob < 0 and bytes(lp.bytes).decode() == lp.token


SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                           "color": {"type": "string", "enum": ["red", "green", "blue"]},
                                           "size": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["ok", "color", "size"], "additionalProperties": False}


def test_json_schema_is_enforced_on_a_random_model(engine, tiny_model_dir):
    m = str(tiny_model_dir)
    choices, _ = run(engine, m, max_tokens=60, temperature=1.0, seed=1, n=3, json_schema=SCHEMA)
    for c in choices:
        obj = json.loads(c.text)
        assert list(obj) == ["ok", "color", "size"]  # the schema's property order
        assert isinstance(obj["ok"], bool) and obj["color"] in ("red", "green", "blue")
        assert 0 <= obj["size"] <= 9
        assert c.finish_reason == "stop"


def test_context_length_is_enforced_with_the_limit_named(engine, tiny_model_dir):
    m = str(tiny_model_dir)
    long = [{"role": "user", "content": "word " * 1100}]
    with pytest.raises(InvalidRequest, match="maximum context length is 1024 tokens") as exc:
        engine.generate(m, messages=long, max_tokens=5)
    assert exc.value.code == "context_length_exceeded"
    with pytest.raises(InvalidRequest, match="1024"):
        engine.generate(m, messages=[{"role": "user", "content": "word " * 500}], max_tokens=600)


def test_full_queue_answers_429(tiny_model_dir):
    e = Engine(config=InferenceSettings(dtype="float32", max_batch=1, max_queue=1))
    try:
        m = str(tiny_model_dir)
        first = e.generate(m, messages=CHAT, max_tokens=900, temperature=0, ignore_eos=True)
        next(iter(first))  # running now
        second = e.generate(m, messages=CHAT, max_tokens=2, temperature=0)  # waits (batch of 1 is full)
        with pytest.raises(RateLimited) as exc:
            e.generate(m, messages=CHAT, max_tokens=2)
        assert exc.value.status_code == 429
        first.cancel()
        assert second.result()[0][0].finish_reason == "length"
    finally:
        e.close()


def test_params_are_validated_with_the_field_named():
    for kw, param in [({"temperature": 3}, "temperature"), ({"top_p": 0}, "top_p"), ({"n": 0}, "n"),
                      ({"stop": list("abcde")}, "stop"), ({"presence_penalty": 5}, "presence_penalty"),
                      ({"top_logprobs": 30}, "top_logprobs"), ({"max_tokens": 0}, "max_tokens")]:
        with pytest.raises(InvalidRequest) as exc:
            SamplingParams(**kw).validate()
        assert exc.value.param == param


def test_stop_matcher_holds_back_partial_matches():
    from tunery.inference.text import StopMatcher

    s = StopMatcher(["END", "xyz"])
    assert s.feed("abc E") == ("abc ", False)
    assert s.feed("N") == ("", False)
    assert s.feed("X more") == ("ENX more", False)
    assert s.feed(" xy") == (" ", False)
    assert s.feed("z tail") == ("", True)


def test_served_adapter_matches_peft(engine, tiny_model_dir, loras):
    """The engine's own multi-LoRA layers give the same greedy tokens as PEFT applying the adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    handle = engine.prepare(ft(tiny_model_dir, loras[1], "ft:peftcheck"))
    ids = handle.encode_chat(CHAT)
    ours = engine.submit(handle, ids, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    text = ours.result()[0][0].text
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), loras[1]).eval()
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert text == handle.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def test_multi_lora_routes_rows_to_their_adapters():
    """Every routing mode (single, all slots, gathered subset) equals applying each row's adapter alone."""
    import torch

    from tunery.inference.lora import MultiLora

    base = torch.nn.Sequential()
    base.add_module("proj", torch.nn.Linear(64, 64))
    ml = MultiLora(base)
    rng = torch.Generator().manual_seed(0)
    weights = {}
    for i, name in enumerate(["a", "b", "c", "d"]):
        r = 2 + i  # different ranks, zero-padded to the largest
        weights[name] = {"proj": (torch.randn(r, 64, generator=rng), torch.randn(r, 64, generator=rng))}
        ml.add(name, weights[name])
    x = torch.randn(5, 1, 64, generator=rng)
    plain = base.proj.base(x)

    def expect(row, name):
        if name is None:
            return plain[row]
        a, bt = weights[name]["proj"]
        return plain[row] + x[row] @ a.T @ bt

    for names in (["b"] * 5, ["a", None, "c", "d", "b"], [None, "d", None, "d", "a"], [None, "c", None, None, "c"],
                  [None] * 5):
        ml.set_batch(names)
        got = base.proj(x)
        for row, name in enumerate(names):
            torch.testing.assert_close(got[row], expect(row, name), rtol=1e-4, atol=1e-4)
    ml.set_batch([None, "d", None, "d", None])
    assert ml.route.mode == "gather"
    ml.remove("b")
    ml.set_batch(["a", "c"] + [None] * 3)
    assert ml.route.mode == "all"


def test_full_fine_tune_is_its_own_model_and_unloads(engine, tiny_model_dir, tmp_path):
    """A full-weights fine-tune dir (no tokenizer saved: the base's is used) loads as a separate model."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():  # "fine-tuned": every weight moved
            p.add_(torch.randn_like(p) * 0.5)
    full = tmp_path / "final"
    model.save_pretrained(full, safe_serialization=True)
    (full / "tunery.json").write_text(json.dumps({"base_model": str(tiny_model_dir), "method": "full"}))
    served = Servable(id="ft:full:personal::x1", base_model=str(tiny_model_dir), adapter_dir=full)
    (tuned,), _ = run(engine, served, max_tokens=8, temperature=0)
    (base,), _ = run(engine, str(tiny_model_dir), max_tokens=8, temperature=0)
    assert tuned.text != base.text
    key = str(full.resolve())
    assert key in engine.loaded()
    engine.unload("ft:full:personal::x1")
    deadline = time.time() + 5
    while key in engine.loaded() and time.time() < deadline:
        time.sleep(0.05)
    assert key not in engine.loaded()
