"""PEFT LoRA → GGUF LoRA (tunery.inference.convert): greedy output of the converted adapter on llama.cpp
equals PEFT on the same weights (the dequantized base the trainer trains on, written as an f32 GGUF)."""

from __future__ import annotations

import json

import pytest

xllamacpp = pytest.importorskip("xllamacpp")

PROMPTS = ["What is the capital of France?", "Write a haiku about cats.", "Explain gravity in one sentence.",
           "List three fruits."]


def _random_lora(base_dir, out, std: float):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(0)
    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                          init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.normal_(0, std)
    pm.save_pretrained(out, safe_serialization=True)
    (out / "tunery.json").write_text(json.dumps({"base_model": str(base_dir), "method": "lora"}))
    return pm.eval()


def _agree(base_dir, tmp_path, std: float, n_tokens: int, must_agree: int) -> None:
    import torch
    from transformers import AutoTokenizer

    from tunery.inference.convert import lora_to_gguf, model_to_gguf

    pm = _random_lora(base_dir, tmp_path / "lora", std)
    base = model_to_gguf(base_dir, tmp_path / "base-f32.gguf", f32=True)
    lora = lora_to_gguf(tmp_path / "lora", base)
    assert lora.exists() and not list(tmp_path.glob("**/*.tmp"))
    p = xllamacpp.CommonParams()
    p.model.path = str(base)
    p.n_ctx, p.n_parallel = 1024, 1
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = 2
    p.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(str(lora), 0.0)]
    p.lora_init_without_apply = True
    p.verbosity = -1
    server = xllamacpp.Server(p)
    tok = AutoTokenizer.from_pretrained(base_dir)
    for prompt in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = pm.generate(torch.tensor([ids]), max_new_tokens=n_tokens, do_sample=False)[0][len(ids):].tolist()
            with pm.disable_adapter():
                plain = pm.generate(torch.tensor([ids]), max_new_tokens=n_tokens, do_sample=False)[0][len(ids):].tolist()
        got = [t["id"] for t in server.handle_completions({
            "prompt": ids, "max_tokens": n_tokens, "temperature": 0, "logprobs": 1,
            "lora": [{"id": 0, "scale": 1.0}]})["choices"][0]["logprobs"]["content"]]
        assert ref != plain, "the adapter must change the output, else the comparison proves nothing"
        k = min(must_agree, len(ref) - 1)
        assert len(got) >= k and got[:k] == ref[:k], (prompt, got, ref)


def test_tiny_model_lora_matches_peft(tiny_model_dir, tmp_path):
    # A random 2-layer model's next-token distribution is nearly flat, so fp32 reduction order alone
    # can flip a near-tie later on; the first 8 tokens check names, permutation and scale here.
    _agree(tiny_model_dir, tmp_path, std=0.3, n_tokens=16, must_agree=8)


@pytest.mark.slow
def test_bundled_model_lora_matches_peft(bundled_model_dir, tmp_path):
    _agree(bundled_model_dir, tmp_path, std=0.05, n_tokens=24, must_agree=16)


def test_export_gguf_through_the_cli(tiny_model_dir, tmp_path, capsys):
    """`tunery export --ollama` on full weights writes model.gguf and a Modelfile; a LoRA whose base has no
    GGUF to pair it with is refused with the way out (--merge)."""
    import shutil

    from tunery.cli import main
    from tunery.inference.convert import read_gguf_header

    full = tmp_path / "full"
    shutil.copytree(tiny_model_dir, full)
    (full / "tunery.json").write_text(json.dumps({"base_model": str(tiny_model_dir), "method": "full"}))
    with pytest.raises(SystemExit) as exc:
        main(["export", str(full), "--ollama", "--output", str(tmp_path / "full-ollama")])
    assert exc.value.code == 0
    assert (tmp_path / "full-ollama" / "Modelfile").read_text() == "FROM ./model.gguf\n"
    assert read_gguf_header(tmp_path / "full-ollama" / "model.gguf")[1]
    _random_lora(tiny_model_dir, tmp_path / "lora", std=0.1)
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path / "lora"), "--gguf", "--output", str(tmp_path / "lora-gguf")])
    assert exc.value.code == 1 and "export with --merge" in capsys.readouterr().err.replace("\n", " ")
