from pathlib import Path

from tunery import ids
from tunery.errors import NotFound, TuneryError
from tunery.settings import Settings


def test_id_prefixes_and_uniqueness():
    made = {ids.job_id() for _ in range(500)}
    assert len(made) == 500 and all(x.startswith("ftjob-") and len(x) == 30 for x in made)
    assert ids.file_id().startswith("file-") and ids.event_id().startswith("ftevent-")
    assert ids.checkpoint_id().startswith("ftckpt-")


def test_fine_tuned_names_round_trip():
    name = ids.fine_tuned_model_name("smollm2-135m-instruct", "personal", "travel", "AbC123xy")
    assert name == "ft:smollm2-135m-instruct:personal:travel:AbC123xy"
    p = ids.parse_fine_tuned_name(name)
    assert (p.base, p.org, p.suffix, p.uid, p.step) == ("smollm2-135m-instruct", "personal", "travel", "AbC123xy", None)
    ck = ids.checkpoint_model_name(name, 40)
    assert ck.endswith(":ckpt-step-40")
    pc = ids.parse_fine_tuned_name(ck)
    assert pc.step == 40 and pc.model == name
    # no suffix leaves an empty field, as OpenAI's names do
    assert ids.fine_tuned_model_name("gpt-4o-mini", "org", None, "x1").count("::") == 1
    assert ids.parse_fine_tuned_name("gpt-4o-mini") is None


def test_error_body_shape():
    e = NotFound("No such file: file-x", param="file_id")
    assert isinstance(e, TuneryError) and e.status_code == 404
    assert e.to_body() == {"error": {"message": "No such file: file-x", "type": "invalid_request_error",
                                     "param": "file_id", "code": "not_found"}}


def test_settings_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path))
    monkeypatch.delenv("TUNERY_MODEL_CACHE")
    s = Settings.from_env()
    assert s.home == tmp_path and s.database_url == f"sqlite:///{tmp_path / 'tunery.db'}"
    assert s.model_cache == tmp_path / "models"
    monkeypatch.setenv("TUNERY_MAX_UPLOAD_BYTES", "abc")
    import pytest
    with pytest.raises(ValueError, match="TUNERY_MAX_UPLOAD_BYTES"):
        Settings.from_env()


def _readme_table() -> dict[str, tuple[str, str, str]]:
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = tuple(cells[1:])
    return rows


def test_the_readme_configuration_table_is_the_settings():
    from tunery.settings import variables

    declared = {v["name"]: (v["kind"], v["default"], v["meaning"]) for v in variables()}
    assert len(declared) >= 20
    assert _readme_table() == declared


def test_nothing_outside_settings_reads_the_environment():
    import re
    from pathlib import Path

    src = Path(__file__).parent.parent / "src" / "tunery"
    readers = [f"{p.relative_to(src)}:{i}" for p in src.rglob("*.py") if p.name != "settings.py" or p.parent != src
               for i, line in enumerate(p.read_text().splitlines(), 1)
               if re.search(r"os\.environ|getenv|\benviron\[|envvar=", line)]
    assert readers == []


def test_settings_sections_round_trip_through_a_child_environment(tmp_path):
    env = {"TUNERY_HOME": str(tmp_path), "TUNERY_DEVICE": "cpu", "TUNERY_NUM_THREADS": "3",
           "TUNERY_WORKER_PRESTART": "no", "TUNERY_WORKER_POLL_SECONDS": "0.25", "TUNERY_MAX_QUEUE": "7",
           "TUNERY_INFERENCE_BACKEND": "torch", "TUNERY_LLAMACPP_CTX": " ", "TUNERY_MODEL_DIRS": f"{tmp_path}:/x",
           "OPENAI_API_KEY": "sk-o"}
    s = Settings.from_env(env)
    assert (s.compute.device, s.compute.num_threads) == ("cpu", 3)
    assert (s.worker.prestart, s.worker.poll_seconds, s.worker.concurrency) == (False, 0.25, 1)
    assert (s.inference.max_queue, s.inference.backend, s.inference.llamacpp_ctx) == (7, "torch", 16384)
    assert s.model_dirs == (tmp_path, Path("/x")) and s.database_url == f"sqlite:///{tmp_path / 'tunery.db'}"
    assert s.client.bearer == "sk-o" and s.client.server == "http://127.0.0.1:8000/v1"
    assert Settings.from_env(s.to_env()) == s  # what a training child reads back
    moved = Settings.from_env(env, home=tmp_path / "other")
    assert moved.database_url == f"sqlite:///{tmp_path / 'other' / 'tunery.db'}"
    assert moved.model_cache == tmp_path / "other" / "models"


def test_bad_settings_name_their_variable(tmp_path):
    import pytest

    for name, raw in (("TUNERY_WORKER_POLL_SECONDS", "soon"), ("TUNERY_MAX_BATCH", "1.5"),
                      ("TUNERY_NUM_THREADS", "two")):
        with pytest.raises(ValueError, match=name):
            Settings.from_env({"TUNERY_HOME": str(tmp_path), name: raw})
    with pytest.raises(ValueError, match="TUNERY_WORKER_LEASE_SECONDS"):
        Settings.from_env({"TUNERY_HOME": str(tmp_path), "TUNERY_WORKER_LEASE_SECONDS": "1"})
