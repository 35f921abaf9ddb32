"""Chat templates for base models without one: Gemma 3's turn format on a Gemma-like tokenizer, the plain
default for other tokenizers, masks token by token, the template saved with checkpoints, and chat jobs that
cannot run refused at creation (400 naming `model`), through the official SDK."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest

from templates_support import build_gemma_like_tokenizer, build_tiny_gemma
from test_api_support import make_server, server  # noqa: F401  (fixtures)
from tunery.models.templates import default_template, ensure_chat_template, template_kind
from tunery.train.tokenize import encode_chat

SYSTEM = {"role": "system", "content": "Be brief."}
CONVO = [SYSTEM, {"role": "user", "content": " hi "}, {"role": "assistant", "content": "hello there **STOP**"},
         {"role": "user", "content": "again?"}, {"role": "assistant", "content": "no way", "weight": 0},
         {"role": "user", "content": "last"}, {"role": "assistant", "content": "Yes."}]


def plain(messages):
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


def trained(tok, enc) -> list[str]:
    return [tok.decode([i]) for i, m in zip(enc.input_ids, enc.loss_mask) if m]


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory) -> Path:
    return build_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture(scope="module")
def gemma_tok(tiny_gemma):
    from tunery.models import load_tokenizer

    return load_tokenizer(str(tiny_gemma))  # as trainer and engine load it: through the registry


@pytest.fixture(scope="module")
def plain_tok(bundled_model_dir):
    """The bundled model's tokenizer with its chat template removed: a byte-level BPE base tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bundled_model_dir)
    tok.chat_template = None
    assert ensure_chat_template(tok) == "plain"
    return tok


# --- the Gemma template -----------------------------------------------------------------------

def test_gemma_like_tokenizer_gets_gemma3_turn_format(gemma_tok):
    assert template_kind(gemma_tok) == "gemma"
    render = gemma_tok.apply_chat_template
    # Gemma 3's documented rendering: system text opens the first user turn, then a blank line; contents
    # trimmed; roles user/model; each turn ends "<end_of_turn>\n"; one <bos> in front.
    assert render(plain(CONVO[:3]), tokenize=False) == (
        "<bos><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n"
        "<start_of_turn>model\nhello there **STOP**<end_of_turn>\n")
    assert render(plain(CONVO[1:4]), tokenize=False, add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nhello there **STOP**<end_of_turn>\n"
        "<start_of_turn>user\nagain?<end_of_turn>\n<start_of_turn>model\n")
    # OpenAI content parts render as their text.
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b "}]}]
    assert render(parts, tokenize=False) == "<bos><start_of_turn>user\nab<end_of_turn>\n"
    # What Gemma's own template rejects is still rendered (as user turns), so no job fails on it.
    odd = [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}, {"role": "tool", "content": "z"}]
    assert render(odd, tokenize=False) == ("<bos><start_of_turn>user\nx<end_of_turn>\n<start_of_turn>user\n"
                                           "y<end_of_turn>\n<start_of_turn>user\nz<end_of_turn>\n")


def test_gemma_mask_trains_answers_and_end_of_turn_token_by_token(gemma_tok):
    enc = encode_chat(gemma_tok, CONVO)
    rendered = gemma_tok.apply_chat_template(plain(CONVO), tokenize=False)
    assert gemma_tok.decode(enc.input_ids) == rendered
    # Exactly one BOS, first (the template writes it; encoding adds none).
    assert enc.input_ids.count(gemma_tok.bos_token_id) == 1 and enc.input_ids[0] == gemma_tok.bos_token_id
    eot = gemma_tok.convert_tokens_to_ids("<end_of_turn>")
    pieces = trained(gemma_tok, enc)
    assert "".join(pieces) == "hello there **STOP**<end_of_turn>Yes.<end_of_turn>"
    assert pieces[-1] == "<end_of_turn>" and pieces.count("<end_of_turn>") == 2
    # Masked: bos, headers, system, user text, the weight-0 answer, and the newline after each end of turn.
    for t, (i, m) in enumerate(zip(enc.input_ids, enc.loss_mask)):
        if i == eot and m:
            assert enc.loss_mask[t + 1] == 0 and gemma_tok.decode([enc.input_ids[t + 1]]) == "\n"
    untrained = gemma_tok.decode([i for i, m in zip(enc.input_ids, enc.loss_mask) if not m])
    assert "no way" in untrained and "Be brief." in untrained and "model" in untrained


def test_gemma_generation_prompt_ids_are_a_prefix_of_training_ids(gemma_tok):
    """What the engine feeds at inference is exactly the start of what was trained, token for token."""
    msgs = [SYSTEM, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "ค่าโดยสาร 180 บาท"}]
    enc = encode_chat(gemma_tok, msgs)
    prompt = gemma_tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    ids = gemma_tok(prompt, add_special_tokens=False)["input_ids"]
    assert enc.input_ids[:len(ids)] == ids and enc.loss_mask[:len(ids)] == [0] * len(ids)
    assert all(enc.loss_mask[len(ids):-1])  # the answer and its <end_of_turn>; only the final "\n" is not
    assert gemma_tok.decode(enc.input_ids[len(ids):]) == "ค่าโดยสาร 180 บาท<end_of_turn>\n"


def test_system_message_followed_by_an_answer_is_never_trained(gemma_tok):
    msgs = [SYSTEM, {"role": "assistant", "content": "Hi!"}]
    enc = encode_chat(gemma_tok, msgs)
    assert "".join(trained(gemma_tok, enc)) == "Hi!<end_of_turn>"


@pytest.mark.gemma
def test_real_gemma_tokenizer_gets_the_same_format():
    from tunery.models import BUILTIN, is_available, load_tokenizer

    assert is_available(BUILTIN["gemma-3-270m"]), "run `tunery models pull gemma-3-270m` first"
    tok = load_tokenizer("gemma-3-270m")
    assert template_kind(tok) == "gemma"
    enc = encode_chat(tok, CONVO)
    assert enc.input_ids[:3] == [2, 105, tok.convert_tokens_to_ids("user")]  # <bos><start_of_turn>user
    assert "".join(trained(tok, enc)) == "hello there **STOP**<end_of_turn>Yes.<end_of_turn>"


# --- other base models ----------------------------------------------------------------------------

def test_plain_default_ends_answers_with_eos_and_trains_it(plain_tok):
    text = plain_tok.apply_chat_template(plain(CONVO[:3]), tokenize=False)
    eos = plain_tok.eos_token
    assert text == f"### System:\nBe brief.\n\n### User:\nhi\n\n### Assistant:\nhello there **STOP**{eos}\n\n"
    assert plain_tok.apply_chat_template(plain(CONVO[:2]), tokenize=False, add_generation_prompt=True) \
        .endswith("### User:\nhi\n\n### Assistant:\n")
    enc = encode_chat(plain_tok, CONVO)
    assert "".join(trained(plain_tok, enc)) == f"hello there **STOP**{eos}Yes.{eos}"
    assert plain_tok.decode(enc.input_ids) == plain_tok.apply_chat_template(plain(CONVO), tokenize=False)


def test_own_template_is_kept_and_no_eos_means_no_template(bundled_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bundled_model_dir)
    own = tok.chat_template
    assert ensure_chat_template(tok) == "own" and tok.chat_template == own
    no_eos = build_gemma_like_tokenizer(tmp_path / "t", eos=False)
    assert default_template(no_eos)[0] == "gemma"  # Gemma's turns end with <end_of_turn>, not EOS
    tok.chat_template = None
    tok.eos_token = None
    assert default_template(tok) is None and ensure_chat_template(tok) is None and not tok.chat_template


def test_template_is_saved_with_every_checkpoint_and_the_final_model(tiny_gemma, tmp_path):
    from transformers import AutoTokenizer

    from tunery.models import load_tokenizer
    from tunery.train import TrainCallbacks, TrainConfig, train

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": plain(CONVO[:3])}) + "\n" for _ in range(4)))
    res = train(TrainConfig(model=str(tiny_gemma), training_file=data, output_dir=tmp_path / "out", n_epochs=2,
                            batch_size=2, seed=1), TrainCallbacks())
    assert res.status == "succeeded"
    base = load_tokenizer(str(tiny_gemma)).chat_template
    dirs = [res.model_dir] + [c.path for c in res.checkpoints]
    assert len(dirs) == 3
    for d in dirs:
        assert (Path(d) / "chat_template.jinja").read_text() == base
        assert AutoTokenizer.from_pretrained(d).chat_template == base


# --- job creation through the API --------------------------------------------------------------

def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)
    return value


def upload_chat(client, tmp_path: Path, rows: list[list[dict]]) -> str:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": r}, ensure_ascii=False) + "\n" for r in rows))
    fid = client.files.create(file=path.open("rb"), purpose="fine-tune").id
    wait_for(lambda: client.files.retrieve(fid).status in ("processed", "error"), 30, "the file")
    return fid


THAI_ROWS = [[{"role": "system", "content": "ตอบสั้น ๆ"}, {"role": "user", "content": f"ค่าโดยสารเท่าไร ({i})"},
              {"role": "assistant", "content": f"ค่าโดยสารคนละ {180 + i} บาท **STOP**"}] for i in range(10)]


def test_chat_job_on_a_gemma_base_model_is_accepted_trains_and_serves(make_server, tiny_gemma, tmp_path,
                                                                      monkeypatch):
    """The job that crashed three times in the worker ("tokenizer.chat_template is not set")."""
    from tunery.worker import start_background_worker

    monkeypatch.setenv("TUNERY_WORKER_POLL_SECONDS", "0.25")
    srv = make_server()
    bg = start_background_worker(srv.settings)
    try:
        client = srv.client()
        fid = upload_chat(client, tmp_path, THAI_ROWS)
        job = client.fine_tuning.jobs.create(model=str(tiny_gemma), training_file=fid,
                                             hyperparameters={"n_epochs": 1})
        assert job.status in ("validating_files", "queued")
        job = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status
                       in ("succeeded", "failed") and j, 180, "the job")
        assert job.status == "succeeded", job.error
        assert job.trained_tokens > 0
        # Served with the template it was trained with: the reply streams and ends at <end_of_turn> or the
        # token limit, and no special token text leaks into it.
        stream = client.chat.completions.create(
            model=job.fine_tuned_model, messages=THAI_ROWS[0][:2], max_tokens=12, temperature=0, stream=True)
        chunks = [c for c in stream if c.choices]
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert "<end_of_turn>" not in text and "<start_of_turn>" not in text
    finally:
        bg.stop()


def test_chat_job_that_cannot_run_is_refused_at_creation_naming_model(server, bundled_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from conftest import build_tiny_model
    from tunery.store.tables import FineTuningJob

    client = server.client()
    fid = upload_chat(client, tmp_path, THAI_ROWS)

    # 1. No template and no EOS token: a chat turn could never end.
    no_eos = tmp_path / "no-eos"
    build_tiny_model(no_eos, bundled_model_dir)
    cfg = json.loads((no_eos / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    cfg["eos_token"] = None
    cfg["pad_token"] = "<|endoftext|>"
    (no_eos / "tokenizer_config.json").write_text(json.dumps(cfg))
    (no_eos / "chat_template.jinja").unlink(missing_ok=True)
    assert AutoTokenizer.from_pretrained(no_eos).eos_token is None

    # 2. Its own template renders earlier turns differently once later turns come (no assistant-only mask).
    rewrites = tmp_path / "rewrites"
    build_tiny_model(rewrites, bundled_model_dir)
    (rewrites / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['role'] }}{% if loop.last %}!{% endif %}: {{ m['content'] }}\n{% endfor %}")

    for model_dir, words in ((no_eos, "end-of-sequence"), (rewrites, "renders earlier turns differently")):
        with pytest.raises(openai.BadRequestError) as err:
            client.fine_tuning.jobs.create(model=str(model_dir), training_file=fid)
        body = err.value.body
        assert err.value.status_code == 400 and body["param"] == "model", body
        assert words in body["message"] and body["code"] == "unsupported_model"
    from sqlalchemy import func, select

    with server.store.read() as s:
        assert s.execute(select(func.count()).select_from(FineTuningJob)).scalar() == 0
