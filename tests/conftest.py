"""Shared fixtures: an isolated TUNERY_HOME per test, a tiny random model with the bundled model's
real tokenizer, and the real bundled model for tests marked slow. No test touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Converted base models are shared by all tests (and kept between runs) so the bundled GGUF is
# dequantized once per machine, not once per test.
SHARED_MODEL_CACHE = Path(os.environ.get("TUNERY_TEST_MODEL_CACHE", REPO / ".cache" / "models"))

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TUNERY_NUM_THREADS", "2")
# The product's default backend is `auto` (llama.cpp on CPU). Tests that do not choose keep the torch
# engine their expectations were written on; tests/test_inference_api.py runs every API promise on both
# backends and checks the default itself.
os.environ.setdefault("TUNERY_INFERENCE_BACKEND", "torch")


@pytest.fixture(autouse=True)
def tunery_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own empty TUNERY_HOME; only the model cache is shared."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("TUNERY_HOME", str(home))
    monkeypatch.setenv("TUNERY_MODEL_CACHE", str(SHARED_MODEL_CACHE))
    monkeypatch.delenv("TUNERY_DATABASE_URL", raising=False)
    return home


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    """The bundled SmolLM2-135M-Instruct as a safetensors directory (converted once)."""
    from tunery.models import materialize
    from tunery.settings import Settings

    SHARED_MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env(home=SHARED_MODEL_CACHE.parent / "home", model_cache=SHARED_MODEL_CACHE)
    return materialize("smollm2-135m-instruct", settings)


def build_tiny_model(out: Path, tokenizer_dir: Path, *, layers: int = 2, hidden: int = 64, seed: int = 0,
                     vocab_size: int | None = None) -> Path:
    """A randomly initialised Llama-architecture causal LM with the bundled model's real tokenizer
    (`vocab_size` smaller than the tokenizer's makes a model that loads but crashes on most inputs)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(
        vocab_size=vocab_size or len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(bundled_model_dir, tmp_path_factory) -> Path:
    """Path of a tiny (2-layer, hidden 64) model directory usable anywhere a model name is."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), bundled_model_dir)


def gemma_pulled() -> bool:
    """gemma-3-270m converted in the shared model cache (`tunery models pull gemma-3-270m` ran here)."""
    return (SHARED_MODEL_CACHE / "gemma-3-270m" / "config.json").exists()


def _opt_in(marker: str) -> bool:
    if marker == "gemma":
        return os.environ.get("TUNERY_TEST_GEMMA") == "1" or gemma_pulled()
    return os.environ.get("TUNERY_TEST_CHAIN") == "1"


def pytest_collection_modifyitems(config, items):
    """Tests marked `gemma` need gemma-3-270m, which tests may not download (a 242 MB pull plus minutes of
    conversion). They run where it is pulled, or always with TUNERY_TEST_GEMMA=1 (then a missing pull is a
    failure); elsewhere they are deselected, not skipped, so `make test` in CI does not fail for want of it.
    Tests marked `chain` (the whole documents → guarded bot chain on the real model: generation alone is one
    request per section on a 135M model, tens of minutes on 2 cores) run with TUNERY_TEST_CHAIN=1 only."""
    for marker in ("gemma", "chain"):
        if _opt_in(marker):
            continue
        keep = [i for i in items if i.get_closest_marker(marker) is None]
        if len(keep) != len(items):
            config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker(marker) is not None])
            items[:] = keep


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """`make test` installs every program a test needs (.ci/test-deps; in CI .ci/services), so a skip
    means something is missing: report it as a failure naming what to install, instead of passing
    with less. TUNERY_ALLOW_SKIPS=1 (never in CI) accepts the skips."""
    outcome = yield
    _fail_a_skip(outcome.get_result())


def _skips_allowed() -> tuple[bool, str]:
    in_ci = os.environ.get("CI", "").lower() in ("1", "true")
    allowed = not in_ci and os.environ.get("TUNERY_ALLOW_SKIPS") == "1"
    return allowed, "in CI, where nothing may be skipped" if in_ci else "(set TUNERY_ALLOW_SKIPS=1 to accept it)"


def _reason(report) -> str:
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)


def _fail_a_skip(report) -> None:
    allowed, where = _skips_allowed()
    if report.skipped and not hasattr(report, "wasxfail") and not allowed:
        reason = _reason(report)
        report.outcome = "failed"
        report.longrepr = f"skipped {where}: {reason}"


_SKIPPED_MODULES: list[str] = []


def pytest_collectreport(report):
    """A whole module skipped at import (a module-level pytest.importorskip) leaves no test to fail: the
    run fails at its end instead (a collection error would stop every other test from running)."""
    if report.skipped and not _skips_allowed()[0]:
        _SKIPPED_MODULES.append(f"{report.nodeid}: {_reason(report)}")


def pytest_terminal_summary(terminalreporter):
    if _SKIPPED_MODULES:
        where = _skips_allowed()[1]
        for line in _SKIPPED_MODULES:
            terminalreporter.write_line(f"FAILED (module skipped {where}) {line}", red=True)


def pytest_sessionfinish(session, exitstatus):
    if _SKIPPED_MODULES and exitstatus == 0:
        session.exitstatus = 1
