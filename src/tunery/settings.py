"""One typed Settings object, read from the environment (TUNERY_*)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    """Where tunery keeps its state and how it behaves; every field has a TUNERY_* variable."""

    home: Path
    """TUNERY_HOME: root of all state (database, files, checkpoints, model cache). Default ~/.tunery."""

    database_url: str
    """TUNERY_DATABASE_URL: SQLAlchemy URL. Default sqlite under home; postgresql+psycopg://… to scale."""

    model_cache: Path
    """TUNERY_MODEL_CACHE: converted base models (safetensors). Default <home>/models; may be shared."""

    max_upload_bytes: int = 512 * 1024 * 1024
    """TUNERY_MAX_UPLOAD_BYTES: largest accepted file upload."""

    device: str = "auto"
    """TUNERY_DEVICE: auto | cpu | cuda | cuda:N | mps."""

    num_threads: int = 0
    """TUNERY_NUM_THREADS: torch CPU threads; 0 means one per core this process may use (the trainer: one fewer, at least 1)."""

    default_org: str = "personal"
    """TUNERY_DEFAULT_ORG: the organization served when no API keys exist."""

    model_dirs: tuple[Path, ...] = ()
    """TUNERY_MODEL_DIRS: directories (separated by ':') under which a local model directory may be named
    over the API once API keys exist. Without keys, on loopback, any local directory may be used."""

    extra: dict = field(default_factory=dict)

    @property
    def files_dir(self) -> Path:
        return self.home / "files"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def aliases_file(self) -> Path:
        return self.home / "aliases.json"

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        home = Path(overrides.pop("home", None) or os.environ.get("TUNERY_HOME") or Path.home() / ".tunery")
        home = home.expanduser().resolve()
        db = os.environ.get("TUNERY_DATABASE_URL") or f"sqlite:///{home / 'tunery.db'}"
        cache = Path(os.environ.get("TUNERY_MODEL_CACHE") or home / "models").expanduser().resolve()
        s = cls(
            home=home,
            database_url=db,
            model_cache=cache,
            max_upload_bytes=_env_int("TUNERY_MAX_UPLOAD_BYTES", 512 * 1024 * 1024),
            device=os.environ.get("TUNERY_DEVICE", "auto"),
            num_threads=_env_int("TUNERY_NUM_THREADS", 0),
            default_org=os.environ.get("TUNERY_DEFAULT_ORG", "personal"),
            model_dirs=tuple(Path(p).expanduser().resolve()
                             for p in os.environ.get("TUNERY_MODEL_DIRS", "").split(os.pathsep) if p.strip()),
        )
        return replace(s, **overrides) if overrides else s

    def ensure_dirs(self) -> "Settings":
        for p in (self.home, self.files_dir, self.jobs_dir, self.model_cache):
            p.mkdir(parents=True, exist_ok=True)
        return self


def get_settings() -> Settings:
    """Settings from the current environment (read fresh each call, so tests can change env)."""
    return Settings.from_env()
