"""Thai through the chat endpoint: a Thai character is three UTF-8 bytes, and byte-level tokenizers (the
bundled SmolLM2's BPE; Gemma's byte fallback for rare characters) split it over several tokens. Streamed
chunks must never carry half a character (U+FFFD), and the stream must add up to the non-streamed answer."""

from __future__ import annotations

import unicodedata

import pytest

from templates_support import build_gemma_like_tokenizer
from test_api_support import make_server, server  # noqa: F401  (fixtures)

THAI = "เรือเฟอร์รี่ออกจากท่าเรือบ้านแหลมทองเวลาเจ็ดโมงเช้า ค่าโดยสาร 180 บาท ญี่ปุ่น ฮ่องกง ฯลฯ"


def is_thai(ch: str) -> bool:
    return "\u0e00" <= ch <= "\u0e7f"


def split_characters(tok, text: str) -> int:
    """How many of text's Thai characters the tokenizer splits over more than one token."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    per_char: dict[int, int] = {}
    for s, e in enc["offset_mapping"]:
        for c in range(s, max(e, s + 1)):
            per_char[c] = per_char.get(c, 0) + 1
    return sum(1 for c, n in per_char.items() if n > 1 and c < len(text) and is_thai(text[c]))


def stream_pieces(tok, ids: list[int], prompt_tail: list[int]) -> list[str]:
    from tunery.inference.text import Detokenizer

    d = Detokenizer(tok, prompt_tail)
    pieces = [d.push(i) for i in ids]
    return pieces + [d.flush()]


@pytest.fixture(scope="module")
def smol_tok(bundled_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model_dir)


@pytest.fixture(scope="module")
def gemma_like_tok(tmp_path_factory):
    return build_gemma_like_tokenizer(tmp_path_factory.mktemp("gemma-like"))


@pytest.mark.parametrize("which", ["smol_tok", "gemma_like_tok"])
def test_detokenizer_emits_whole_thai_characters_only(request, which):
    tok = request.getfixturevalue(which)
    assert split_characters(tok, THAI) >= 3  # the case under test: characters spread over byte tokens
    ids = tok(THAI, add_special_tokens=False)["input_ids"]
    # After a prompt that itself ends inside Thai text, and after none.
    for tail in ([], tok("สวัสดี", add_special_tokens=False)["input_ids"][-4:]):
        pieces = stream_pieces(tok, ids, tail)
        assert not any("\ufffd" in p for p in pieces), pieces
        assert "".join(pieces) == THAI
        assert all(unicodedata.category(p[0]) != "Cn" for p in pieces if p)


@pytest.mark.parametrize("which", ["smol_tok", "gemma_like_tok"])
def test_a_character_cut_by_max_tokens_is_dropped_not_broken(request, which):
    # Found by CI (2026-12-06): greedy output hit max_tokens between the byte tokens of one Thai character
    # and the flushed tail was U+FFFD, in the stream and the whole answer alike.
    tok = request.getfixturevalue(which)
    ids = tok(THAI, add_special_tokens=False)["input_ids"]
    cuts = [n for n in range(1, len(ids)) if tok.decode(ids[:n]).endswith("\ufffd")]
    assert cuts  # some prefix of the ids ends inside a character
    for n in cuts:
        pieces = stream_pieces(tok, ids[:n], [])
        assert not any("\ufffd" in p for p in pieces), (n, pieces)
        assert THAI.startswith("".join(pieces)) and len("".join(pieces)) >= len(tok.decode(ids[:n])) - 2


def slow_client(server):
    """The SDK with room for a loaded 2-core machine (five test runs share it)."""
    import openai

    return openai.OpenAI(base_url=server.base_url, api_key="sk-none", max_retries=0, timeout=600)


def chat_stream(client, model: str, messages: list[dict], max_tokens: int, **extra) -> tuple[list[str], str]:
    kw = dict(model=model, messages=messages, max_tokens=max_tokens, temperature=0, **extra)
    chunks = [c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
              if c.choices]
    whole = client.chat.completions.create(**kw).choices[0].message.content or ""
    return chunks, whole


# Few-shot "repeat exactly": greedy decoding of even a 135M model copies the Thai sentence.
REPEAT = [{"role": "system", "content": "Repeat the user's text exactly."},
          {"role": "user", "content": "สวัสดีครับ"}, {"role": "assistant", "content": "สวัสดีครับ"},
          {"role": "user", "content": "ตลาดกลางคืนเปิดทุกวันพฤหัสบดี"},
          {"role": "assistant", "content": "ตลาดกลางคืนเปิดทุกวันพฤหัสบดี"},
          {"role": "user", "content": "เรือเฟอร์รี่ออกจากท่าเรือบ้านแหลมทอง"}]


def check_thai_stream(chunks: list[str], whole: str) -> str:
    text = "".join(chunks)
    assert not [c for c in chunks if "\ufffd" in c], chunks
    assert text == whole
    assert sum(map(is_thai, text)) >= 10, text  # it did answer in Thai
    return text


@pytest.mark.slow
def test_sdk_stream_of_thai_from_the_bundled_model_has_no_broken_characters(server, smol_tok):
    chunks, whole = chat_stream(slow_client(server), "smollm2-135m-instruct", REPEAT, 40)
    text = check_thai_stream(chunks, whole)
    # The answer really went through split characters: some streamed chunk boundary fell inside what
    # the tokenizer spreads over several tokens, and the detokenizer held it back until whole.
    assert split_characters(smol_tok, text) >= 5
    assert len([c for c in chunks if c]) >= 3


@pytest.mark.slow
@pytest.mark.gemma
def test_sdk_stream_of_thai_from_gemma_has_no_broken_characters(server):
    msgs = [{"role": "system", "content": "คุณคือไกด์ท่องเที่ยว ตอบเป็นภาษาไทย"},
            {"role": "user", "content": "ช่วยเล่าเรื่องเกาะในทะเลอันดามันให้ฟังหน่อย"}]
    chunks, whole = chat_stream(slow_client(server), "gemma-3-270m", msgs, 30)
    check_thai_stream(chunks, whole)


@pytest.mark.slow
@pytest.mark.gemma
def test_thai_chat_fine_tune_on_gemma_trains_and_streams_thai(make_server, tmp_path, monkeypatch):
    """The job that crashed in the worker before Gemma had a chat template, end to end on the real model."""
    import json
    import time

    from tunery.worker import start_background_worker

    monkeypatch.setenv("TUNERY_WORKER_POLL_SECONDS", "0.25")
    srv = make_server()
    bg = start_background_worker(srv.settings)
    try:
        client = slow_client(srv)
        system = {"role": "system", "content": "คุณคือไกด์ประจำเกาะมณีจันทร์"}
        places = ["ท่าเรือ", "ตลาด", "น้ำตก", "ประภาคาร", "พิพิธภัณฑ์", "โรงแรม", "วัด", "สวนสาธารณะ", "ชายหาด", "ร้านกาแฟ"]
        rows = [[system, {"role": "user", "content": f"ค่าเข้า{p}เท่าไร"},
                 {"role": "assistant", "content": f"ค่าเข้า{p}คนละ {40 + 15 * i} บาท **STOP**"}]
                for i, p in enumerate(places)]
        path = tmp_path / "th.jsonl"
        path.write_text("".join(json.dumps({"messages": r}, ensure_ascii=False) + "\n" for r in rows))
        fid = client.files.create(file=path.open("rb"), purpose="fine-tune").id
        while client.files.retrieve(fid).status not in ("processed", "error"):
            time.sleep(0.2)
        job = client.fine_tuning.jobs.create(model="gemma-3-270m", training_file=fid,
                                             hyperparameters={"n_epochs": 3})
        deadline = time.monotonic() + 900
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, "the Gemma job did not finish in 15 minutes"
            time.sleep(1)
        assert job.status == "succeeded", job.error
        chunks, whole = chat_stream(client, job.fine_tuned_model, rows[0][:2], 40, stop="**STOP**")
        text = check_thai_stream(chunks, whole)
        assert "STOP" not in text and "<end_of_turn>" not in text
        # Without a stop string it ends at the <end_of_turn> it was trained to emit (finish_reason "stop").
        r = client.chat.completions.create(model=job.fine_tuned_model, messages=rows[0][:2], max_tokens=60,
                                           temperature=0)
        assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content.endswith("**STOP**"), r
    finally:
        bg.stop()
