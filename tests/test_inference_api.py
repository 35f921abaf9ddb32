"""/v1/chat/completions and /v1/completions through the official openai SDK over real HTTP (uvicorn),
the same module on every backend (llama.cpp, vLLM and the torch engine): each promise of the API holds on
each. vLLM runs from its own venv (`make vllm`, which `make test` runs)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from test_api_support import make_server, start_server  # noqa: F401  (make_server is a fixture)
from test_inference_engine import SCHEMA, make_lora
from tunery.settings import Settings

MSG = [{"role": "user", "content": "Say something about cats."}]


BACKENDS = ["llamacpp", "torch", "vllm"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    if request.param == "llamacpp":
        pytest.importorskip("xllamacpp")
    if request.param == "vllm":
        from tunery.inference.vllm import available

        if not available(Settings.from_env()):
            pytest.skip("vLLM is not installed for the vLLM backend: run `make vllm` (make test does it)")
    return request.param


@pytest.fixture(scope="module")
def tiny_model_dir(bundled_model_dir, tmp_path_factory) -> Path:
    """This module's tiny model: 2 layers, hidden 256 in 4 heads (head_dim 64, as the bundled model), since
    vLLM's CPU attention kernels have no head_dim 16 (the shared tiny model's); every backend serves it."""
    from conftest import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model-hd64"), bundled_model_dir, hidden=256)


@pytest.fixture(scope="module")
def srv(backend, tiny_model_dir, tmp_path_factory):
    """One server (and router) per backend; the tiny model is served by its directory name."""
    home = tmp_path_factory.mktemp("inference-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("TUNERY_INFERENCE_DTYPE", "float32")
    mp.setenv("TUNERY_INFERENCE_BACKEND", backend)
    server = start_server(Settings.from_env(home=home))
    warm_up(server, backend, tiny_model_dir)
    yield server
    engine = getattr(server.app.state, "engine", None)
    server.stop()
    if engine is not None:
        engine.close()
    mp.undo()


def warm_up(server, backend: str, model) -> None:
    """vLLM: start the model's server before the SDK's 30 s timeouts run (on a loaded 2-core CPU a vLLM
    server took 70-140 s to start); the other backends load at the first request, as tested."""
    if backend == "vllm":
        from tunery.inference.router import get_engine

        get_engine(server.app).prepare(str(model))


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> str:
    return str(tiny_model_dir)


@pytest.fixture(scope="module")
def ft_model(srv, tiny_model_dir, tmp_path_factory) -> str:
    from tunery.store import ensure_org, register_model

    lora = make_lora(tiny_model_dir, tmp_path_factory.mktemp("ft") / "final", seed=11)
    org = ensure_org(srv.store, "personal")
    name = "ft:tiny:personal:cats:abc12345"
    register_model(srv.store, org, model_id=name, base_model=str(tiny_model_dir), job_id=None, path=lora)
    return name


@pytest.fixture
def client(srv):
    return srv.client()


def test_chat_greedy_with_usage(client, model):
    a = client.chat.completions.create(model=model, messages=MSG, temperature=0, max_tokens=10)
    b = client.chat.completions.create(model=model, messages=MSG, temperature=0, max_completion_tokens=10)
    assert a.object == "chat.completion" and a.id.startswith("chatcmpl-")
    assert a.choices[0].message.role == "assistant" and a.choices[0].message.content
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].finish_reason == "length"
    assert a.usage.completion_tokens == 10 and a.usage.total_tokens == a.usage.prompt_tokens + 10
    assert a.model == model


def test_chat_stream_stop_split_across_chunks_and_usage(client, model):
    full = client.chat.completions.create(model=model, messages=MSG, temperature=0, max_tokens=20)
    text = full.choices[0].message.content
    pieces = [c.choices[0].delta.content for c in client.chat.completions.create(
        model=model, messages=MSG, temperature=0, max_tokens=20, stream=True) if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == text
    cut = len(pieces[0]) + len(pieces[1])
    stop = text[cut - 2:cut + 2]  # straddles the boundary of two streamed tokens
    chunks = list(client.chat.completions.create(model=model, messages=MSG, temperature=0, max_tokens=20, stop=stop,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(deltas) == text[: text.index(stop)]
    assert all(stop not in d for d in deltas)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_sse_ends_with_done(srv, model):
    with httpx.stream("POST", srv.base_url + "/chat/completions", timeout=30, json={
            "model": model, "messages": MSG, "max_tokens": 3, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_fine_tuned_adapter_served_then_deleted(client, srv, model, ft_model):
    base = client.chat.completions.create(model=model, messages=MSG, temperature=0, max_tokens=8)
    tuned = client.chat.completions.create(model=ft_model, messages=MSG, temperature=0, max_tokens=8)
    assert tuned.model == ft_model
    assert tuned.choices[0].message.content != base.choices[0].message.content
    assert ft_model in srv.app.state.engine.loaded()[model]
    assert client.models.delete(ft_model).deleted
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model=ft_model, messages=MSG, max_tokens=2)
    assert exc.value.code == "model_not_found"
    deadline = time.time() + 60  # llama.cpp: a new server instance without the adapter takes over
    while ft_model in srv.app.state.engine.loaded()[model] and time.time() < deadline:
        time.sleep(0.05)
    assert ft_model not in srv.app.state.engine.loaded()[model]


def test_checkpoint_model_is_served(client, srv, model, tiny_model_dir, tmp_path):
    import io

    from test_api_support import chat_jsonl
    from tunery.store.tables import FineTuningJobCheckpoint

    f = client.files.create(file=("train.jsonl", io.BytesIO(chat_jsonl()), "application/jsonl"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=model, training_file=f.id, suffix="ck")
    ckpt = "ft:tiny:personal:ck:Ck1:ckpt-step-3"
    lora = make_lora(tiny_model_dir, tmp_path / "step-3", seed=21)
    with srv.store.session() as s:
        s.add(FineTuningJobCheckpoint(id="ftckpt-inf1", job_id=job.id, created_at=5, step_number=3,
                                      fine_tuned_model_checkpoint=ckpt, metrics={}, path=str(lora)))
    base = client.chat.completions.create(model=model, messages=MSG, temperature=0, max_tokens=8)
    r = client.chat.completions.create(model=ckpt, messages=MSG, temperature=0, max_tokens=8)
    assert r.model == ckpt and r.choices[0].message.content != base.choices[0].message.content


def test_top_p_and_penalties(client, model):
    greedy = client.chat.completions.create(model=model, messages=MSG, temperature=0, max_tokens=16)
    nucleus = client.chat.completions.create(model=model, messages=MSG, temperature=1.5, top_p=1e-6, seed=1,
                                             max_tokens=16)
    assert nucleus.choices[0].message.content == greedy.choices[0].message.content
    for kw in ({"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        pen = client.chat.completions.create(model=model, messages=MSG, temperature=0, max_tokens=16, **kw)
        assert pen.choices[0].message.content != greedy.choices[0].message.content, kw


def test_concurrent_requests_match_sequential(client, model, srv, backend):
    prompts = [[{"role": "user", "content": f"Tell me about {i}" + "!" * i}] for i in range(6)]
    alone = [client.chat.completions.create(model=model, messages=p, temperature=0, max_tokens=12)
             .choices[0].message.content for p in prompts]
    out: dict[int, str] = {}
    steps0 = srv.app.state.engine.steps

    def call(i):
        out[i] = client.chat.completions.create(model=model, messages=prompts[i], temperature=0,
                                                max_tokens=12).choices[0].message.content

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [out[i] for i in range(6)] == alone
    if backend == "torch":
        assert srv.app.state.engine.steps - steps0 < 6 * 12  # forward passes were shared


def test_seed_n_and_logprobs(client, model):
    kw = dict(model=model, messages=MSG, temperature=1.0, max_tokens=6, n=2, seed=5)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    r = client.chat.completions.create(model=model, messages=MSG, temperature=0, max_tokens=4, logprobs=True,
                                       top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == 4 and "".join(t.token for t in content) == r.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in content)


def test_json_schema_response_format(client, model):
    r = client.chat.completions.create(
        model=model, messages=MSG, temperature=1.0, seed=3, max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}})
    obj = json.loads(r.choices[0].message.content)
    assert set(obj) == {"ok", "color", "size"} and obj["color"] in ("red", "green", "blue")
    assert r.choices[0].finish_reason == "stop"


def test_errors_name_the_problem(client, model):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi " * 1100}], max_tokens=5)
    assert "1024" in exc.value.message and exc.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="ft:nope:personal::zzzz", messages=MSG)
    assert exc.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model, messages=MSG, temperature=5)
    assert exc.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model, messages=MSG,
                                       response_format={"type": "json_schema", "json_schema": {"name": "x",
                                                        "schema": {"type": "nonsense"}}})
    assert exc.value.param.startswith("response_format")


def test_completions_prompts_n_echo_logprobs(client, model):
    r = client.completions.create(model=model, prompt=["Once upon", "The cat"], n=2, max_tokens=5, temperature=0,
                                  logprobs=2)
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text  # greedy: n copies agree
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 5 and len(lp.token_logprobs) == 5 and all(len(t) <= 2 for t in lp.top_logprobs)
    assert "".join(lp.tokens) == r.choices[0].text and lp.text_offset[0] == 0
    assert r.usage.completion_tokens == 20
    e = client.completions.create(model=model, prompt="Once upon", max_tokens=5, temperature=0, echo=True)
    assert e.choices[0].text == "Once upon" + r.choices[0].text
    d = client.completions.create(model=model, prompt="Once upon", temperature=0)
    assert d.usage.completion_tokens == 16 or d.choices[0].finish_reason == "stop"  # legacy default max_tokens


def test_completions_stream(client, model):
    whole = client.completions.create(model=model, prompt="Once upon", max_tokens=8, temperature=0).choices[0].text
    chunks = list(client.completions.create(model=model, prompt="Once upon", max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 8


def test_full_queue_gives_429(make_server, monkeypatch, model, backend):
    monkeypatch.setenv("TUNERY_INFERENCE_BACKEND", backend)
    monkeypatch.setenv("TUNERY_MAX_BATCH", "1")
    monkeypatch.setenv("TUNERY_MAX_QUEUE", "1")
    monkeypatch.setenv("TUNERY_INFERENCE_DTYPE", "float32")
    server = make_server()
    warm_up(server, backend, model)
    client = server.client()
    try:
        stream = client.chat.completions.create(model=model, messages=MSG, max_tokens=900, temperature=0, stream=True)
        next(iter(stream))  # the first request is running
        waiting = threading.Thread(target=lambda: client.chat.completions.create(model=model, messages=MSG,
                                                                                 max_tokens=2))
        waiting.start()
        deadline = time.time() + 10
        while time.time() < deadline and not server.app.state.engine.waiting():
            time.sleep(0.02)
        with pytest.raises(openai.RateLimitError) as exc:
            client.chat.completions.create(model=model, messages=MSG, max_tokens=2)
        assert exc.value.status_code == 429 and "TUNERY_MAX_QUEUE" in exc.value.message
        stream.close()
        waiting.join(timeout=30)
    finally:
        server.app.state.engine.close()


@pytest.mark.slow
def test_bundled_model_json_mode_and_alias(make_server, monkeypatch, backend):
    monkeypatch.setenv("TUNERY_INFERENCE_BACKEND", backend)
    server = make_server()
    client = server.client().with_options(timeout=600)
    try:
        r = client.chat.completions.create(
            model="gpt-4o-mini", temperature=0, max_tokens=80, response_format={"type": "json_object"},
            messages=[{"role": "user", "content": "Give a JSON object with the name and age of a fictional person."}])
        obj = json.loads(r.choices[0].message.content)
        assert isinstance(obj, dict) and r.choices[0].finish_reason == "stop"
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="gpt-4o-mini", temperature=0, max_tokens=12, stream=True,
            messages=[{"role": "user", "content": "What is the capital of France?"}]) if c.choices)
        assert text.strip()
        if backend in ("torch", "vllm"):
            # The safetensors weights (both serve the same directory) answer "Paris". llama.cpp serves the Q4_1 GGUF with quantized activations and
            # its greedy answer already diverges ("L'Étoile…", -1.85 vs "The" -2.01): the documented reason it
            # is not the default backend yet (README, Inference).
            assert "Paris" in text
    finally:
        server.app.state.engine.close()


def register_lora(srv, tiny_model_dir, tmp_path, tag: str, seed: int) -> str:
    from tunery.store import ensure_org, register_model

    name = f"ft:tiny:personal:{tag}:abc{seed:05d}"
    register_model(srv.store, ensure_org(srv.store, "personal"), model_id=name, base_model=str(tiny_model_dir),
                   job_id=None, path=make_lora(tiny_model_dir, tmp_path / tag, seed=seed))
    return name


def test_models_say_which_backend_serves_them(client, srv, model, tiny_model_dir, tmp_path, backend):
    ft_model = register_lora(srv, tiny_model_dir, tmp_path, "listed", 31)
    listed = {m.id: m for m in client.models.list()}
    assert listed[ft_model].model_extra["backend"] == backend
    assert listed[ft_model].owned_by == "personal" and listed[ft_model].object == "model"  # OpenAI's stay
    assert listed["smollm2-135m-instruct"].model_extra["backend"] == backend  # a Llama GGUF / safetensors
    assert client.models.retrieve(model).model_extra["backend"] == backend
    assert client.models.retrieve(ft_model).model_extra["backend"] == backend


def test_node_sdk_chat_on_each_backend(srv, tiny_model_dir, tmp_path, backend):
    import os
    import shutil
    import subprocess
    from pathlib import Path

    ft_model = register_lora(srv, tiny_model_dir, tmp_path, "node", 32)
    node_dir = Path(__file__).parent / "node"
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: apt-get install nodejs npm (make test does it as root)")
    if not (node_dir / "node_modules" / "openai").is_dir():
        pytest.skip("NODE SDK TEST SKIPPED: run `npm ci` in tests/node (make install-dev does it)")
    env = {**os.environ, "TUNERY_BASE_URL": srv.base_url, "TUNERY_MODEL": ft_model, "TUNERY_BACKEND": backend}
    proc = subprocess.run([node, "--test", "inference.test.mjs"], cwd=node_dir, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# pass 1" in proc.stdout and "# skipped 0" in proc.stdout, proc.stdout[-2000:]


def test_default_backend_is_llamacpp_on_cpu(monkeypatch, tiny_model_dir, tmp_path):
    """No TUNERY_INFERENCE_BACKEND: llama.cpp on CPU; on a GPU vLLM where its interpreter is found, else the
    torch engine; the variable overrides."""
    pytest.importorskip("xllamacpp")
    from tunery.inference.router import Router, configured_backend
    from tunery.inference.vllm import available

    monkeypatch.delenv("TUNERY_INFERENCE_BACKEND", raising=False)
    monkeypatch.setenv("TUNERY_DEVICE", "cpu")
    assert configured_backend(Settings.from_env().inference.backend) == "auto"
    assert Router(Settings.from_env()).backend_for(str(tiny_model_dir)) == "llamacpp"
    assert Router(Settings.from_env()).backend_for("smollm2-135m-instruct") == "llamacpp"
    monkeypatch.setenv("TUNERY_DEVICE", "cuda")
    assert available(Settings.from_env())  # make test installs it
    assert Router(Settings.from_env()).backend_for("smollm2-135m-instruct") == "vllm"
    monkeypatch.setenv("TUNERY_VLLM_PYTHON", str(tmp_path / "no-such-python"))
    assert Router(Settings.from_env()).backend_for("smollm2-135m-instruct") == "torch"
    monkeypatch.delenv("TUNERY_VLLM_PYTHON")
    monkeypatch.setenv("TUNERY_DEVICE", "cpu")
    monkeypatch.setenv("TUNERY_INFERENCE_BACKEND", "torch")
    assert Router(Settings.from_env()).backend_for("smollm2-135m-instruct") == "torch"
    monkeypatch.setenv("TUNERY_INFERENCE_BACKEND", "vllm")
    assert Router(Settings.from_env()).backend_for(str(tiny_model_dir)) == "vllm"


def test_stream_in_flight_survives_hot_swap(client, srv, model, tiny_model_dir, tmp_path, backend):
    """A stream open on an adapter while a new model arrives (llama.cpp: a new instance with the longer
    adapter list takes over, the old one drains) ends intact: the same text, reason and usage as alone."""
    first = register_lora(srv, tiny_model_dir, tmp_path, "inflight", 41)
    kw = dict(messages=MSG, temperature=0, max_tokens=120)
    alone = client.chat.completions.create(model=first, **kw)
    stream = client.chat.completions.create(model=first, stream=True, stream_options={"include_usage": True}, **kw)
    it = iter(stream)
    chunks = [next(it)]  # the stream is open and its request is in flight
    gguf = srv.app.state.engine.engine("llamacpp").models[str(tiny_model_dir)] if backend == "llamacpp" else None
    before = gguf.current if gguf else None
    second = register_lora(srv, tiny_model_dir, tmp_path, "arrives", 42)
    swapped = client.chat.completions.create(model=second, messages=MSG, temperature=0, max_tokens=4)
    assert swapped.model == second and swapped.usage.completion_tokens >= 1
    if gguf is not None:
        assert gguf.current is not before and before.retired  # a new instance took over; the old drains
    chunks += list(it)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == alone.choices[0].message.content
    assert reasons == [alone.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == alone.usage.completion_tokens
    if gguf is not None:
        deadline = time.time() + 30
        while before.server is not None and time.time() < deadline:
            time.sleep(0.05)
        assert before.server is None  # stopped once its last request ended


def test_vllm_not_installed_is_a_400_naming_the_fix(make_server, monkeypatch, model, tmp_path):
    """TUNERY_INFERENCE_BACKEND=vllm without vLLM's interpreter: each request is a 400 saying how to install
    it (`make vllm` or TUNERY_VLLM_PYTHON), never a 500."""
    monkeypatch.setenv("TUNERY_INFERENCE_BACKEND", "vllm")
    monkeypatch.setenv("TUNERY_VLLM_PYTHON", str(tmp_path / "no-such-python"))
    client = make_server().client()
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model, messages=MSG, max_tokens=2)
    assert "make vllm" in exc.value.message and exc.value.code == "model_unavailable"
    assert client.models.retrieve(model).model_extra["backend"] == "vllm"


def test_vllm_server_that_died_is_started_again(make_server, monkeypatch, model):
    """vLLM only (its servers are child processes; the other backends live in tunery's own process): a vLLM
    server killed from outside is started anew by the next request, which answers as before."""
    import os
    import signal

    monkeypatch.setenv("TUNERY_INFERENCE_BACKEND", "vllm")
    monkeypatch.setenv("TUNERY_INFERENCE_DTYPE", "float32")
    server = make_server()
    warm_up(server, "vllm", model)
    client = server.client().with_options(timeout=900)  # the second request waits for a new server
    try:
        before = client.chat.completions.create(model=model, messages=MSG, temperature=0, max_tokens=6)
        m = server.app.state.engine.engine("vllm").models[model]
        dead = m.proc
        os.killpg(dead.pid, signal.SIGKILL)
        dead.wait(timeout=30)
        after = client.chat.completions.create(model=model, messages=MSG, temperature=0, max_tokens=6)
        assert after.choices[0].message.content == before.choices[0].message.content
        assert server.app.state.engine.engine("vllm").models[model].proc is not dead
    finally:
        server.app.state.engine.close()
