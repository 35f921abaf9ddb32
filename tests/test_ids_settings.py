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
