import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunery.cli import app
from tunery.errors import InvalidRequest, ModelNotFound, ModelUnavailable
from tunery.models import registry
from tunery.settings import Settings


def test_openai_names_resolve_to_bundled_model():
    for name in ("gpt-3.5-turbo", "gpt-3.5-turbo-0125", "gpt-4o-mini", "babbage-002", "davinci-002"):
        r = registry.resolve(name)
        assert r.spec.name == "smollm2-135m-instruct"
        assert r.alias_of == "smollm2-135m-instruct"
    assert registry.resolve("smollm2-135m-instruct").alias_of is None


def test_user_alias_overrides_default_and_persists(tunery_home, tiny_model_dir):
    registry.set_alias("gpt-4o-mini", str(tiny_model_dir))
    assert registry.resolve("gpt-4o-mini").spec.kind == "local"
    assert json.loads((tunery_home / "aliases.json").read_text()) == {"gpt-4o-mini": str(tiny_model_dir)}
    registry.remove_alias("gpt-4o-mini")
    assert registry.resolve("gpt-4o-mini").spec.name == "smollm2-135m-instruct"


def test_aliases_are_read_once_and_reread_when_the_file_changes(tunery_home, tiny_model_dir):
    """resolve() runs on every request: aliases.json is parsed once, then again only when it changes,
    whoever changes it (set_alias here, or another process such as `tunery models alias`)."""
    from tunery.settings import get_settings

    path = get_settings().aliases_file
    registry.set_alias("mine", str(tiny_model_dir))
    assert registry.resolve("mine").spec.kind == "local"
    reads = []
    real = Path.read_text

    def counting(self, *a, **kw):
        if self == path:
            reads.append(self)
        return real(self, *a, **kw)

    Path.read_text = counting
    try:
        for _ in range(5):
            assert registry.resolve("mine").alias_of == str(tiny_model_dir)
        assert reads == []  # served from the cache
        path.write_text(json.dumps({"mine": "smollm2-135m-instruct", "other": "smollm2-135m-instruct"}))
        assert registry.resolve("mine").name == "smollm2-135m-instruct"
        assert registry.resolve("other").alias_of == "smollm2-135m-instruct"
        assert len(reads) == 1
        registry.remove_alias("other")
        with pytest.raises(ModelNotFound):
            registry.resolve("other")
    finally:
        Path.read_text = real


def test_alias_to_unknown_model_is_refused():
    with pytest.raises(ModelNotFound):
        registry.set_alias("mine", "no-such-model")
    with pytest.raises(InvalidRequest):
        registry.set_alias("smollm2-135m-instruct", "gpt-4o-mini")


def test_unknown_and_empty_names():
    with pytest.raises(ModelNotFound) as exc:
        registry.resolve("definitely not a model")
    assert exc.value.param == "model" and exc.value.status_code == 404
    with pytest.raises(InvalidRequest):
        registry.resolve("")


def test_local_directory_loads_and_reports_context(tiny_model_dir):
    info = registry.spec_info(str(tiny_model_dir))
    assert info["kind"] == "local" and info["context_length"] == 1024 and info["available"]
    model, tok = registry.load_model(str(tiny_model_dir))
    assert model.config.num_hidden_layers == 2
    registry.require_chat_template(tok, "tiny")


def test_local_directory_with_only_pickle_weights_is_refused(tmp_path, tiny_model_dir):
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelUnavailable) as exc:
        registry.materialize(str(tmp_path))
    # Named as given, never with the directory's listing (the API echoes this message).
    assert "pickle" in exc.value.message and "pytorch_model.bin" not in exc.value.message
    assert exc.value.param == "model" and str(tmp_path) in exc.value.message


@pytest.mark.parametrize("junk", ["config", "weights", "header"])
def test_junk_model_directory_is_refused_before_loading(tmp_path, tiny_model_dir, junk):
    d = tmp_path / "junk"
    d.mkdir()
    (d / "config.json").write_text("not json" if junk == "config" else (tiny_model_dir / "config.json").read_text())
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes({"config": weights, "weights": b"junk" * 10,
                                           "header": weights[:8] + b"{" + weights[9:200]}[junk])
    with pytest.raises(ModelUnavailable) as exc:
        registry.materialize(str(d))
    assert exc.value.param == "model" and exc.value.code == "invalid_model"


def test_a_model_that_fails_inside_transformers_is_a_model_error(tmp_path, tiny_model_dir):
    """Headers fine, tensors wrong for the config: the library's failure becomes a 400-class error."""
    import shutil

    d = tmp_path / "wrong"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden_size"] = 128  # the weights are hidden 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelUnavailable) as exc:
        registry.load_model(str(d))
    assert exc.value.param == "model" and "could not be loaded" in exc.value.message


def test_hf_repo_without_network_gives_one_clear_error():
    r = registry.resolve("someorg/some-model")
    assert r.spec.kind == "hf"
    with pytest.raises(ModelUnavailable) as exc:
        registry.materialize("someorg/some-model")
    assert "someorg/some-model" in exc.value.message and "local directory" in exc.value.message


def test_missing_chat_template_names_the_fix(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    with pytest.raises(ModelUnavailable) as exc:
        registry.require_chat_template(tok, "base-model")
    assert "chat_template" in exc.value.message and exc.value.code == "no_chat_template"


def test_uninstalled_package_model_says_how_to_pull(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "_package_dir", lambda module: None)
    monkeypatch.setenv("TUNERY_MODEL_CACHE", str(tmp_path))  # not converted either (the shared cache may hold it)
    spec = registry.BUILTIN["gemma-3-270m"]
    # A fresh model cache: the shared one may hold a converted copy from an earlier `models pull`.
    assert not registry.is_available(spec, Settings.from_env(model_cache=tmp_path))
    with pytest.raises(ModelUnavailable) as exc:
        registry._locate_gguf(spec)
    assert "tunery models pull gemma-3-270m" in exc.value.message


def test_cli_models_list_json_and_show():
    runner = CliRunner()
    res = runner.invoke(app, ["models", "list", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["gpt-4o-mini"]["resolves_to"] == "smollm2-135m-instruct"
    assert rows["smollm2-135m-instruct"]["context_length"] == 8192
    res = runner.invoke(app, ["models", "show", "davinci-002"])
    assert res.exit_code == 0 and '"alias_of": "smollm2-135m-instruct"' in res.output


def test_every_command_has_help():
    runner = CliRunner()
    for args in (["--help"], ["models", "--help"], ["models", "list", "--help"], ["models", "pull", "--help"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0 and "Usage" in res.output


@pytest.mark.slow
def test_bundled_model_is_cached_as_safetensors_and_answers(bundled_model_dir):
    import time

    import torch

    assert (bundled_model_dir / "model.safetensors").exists()
    t = time.perf_counter()
    model, tok = registry.load_model("gpt-3.5-turbo", registry.get_settings())
    load_s = time.perf_counter() - t
    registry.require_chat_template(tok, "gpt-3.5-turbo")
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    print(f"cached load {load_s:.2f}s")


def test_gguf_conversion_parsed_once_changes_nothing(tiny_model_dir, tmp_path):
    """registry._gguf_parsed_once shares transformers' GGUF parses during a conversion. Round trip: the tiny
    model written as an all-f32 GGUF and read back through it gives the model's own weights bit for bit and its
    own tokenizer's token ids; the module's attributes are put back afterwards."""
    import gguf
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunery.inference.convert import model_to_gguf

    path = model_to_gguf(tiny_model_dir, tmp_path / "tiny.gguf", f32=True)
    originals = (gguf.GGUFReader, gguf.get_tensor_name_map)
    with registry._gguf_parsed_once():
        assert (gguf.GGUFReader, gguf.get_tensor_name_map) != originals
        tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
        got = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).state_dict()
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == originals
    want = {}
    for f in tiny_model_dir.glob("*.safetensors"):
        want.update(load_file(str(f)))
    assert len(want) > 10 and {k for k in want} <= got.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    own = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Hello world! The ferry leaves at 7:45 am, costs 70 baht. สวัสดีครับ <|im_start|>user\n?"
    assert tok(text)["input_ids"] == own(text)["input_ids"]
