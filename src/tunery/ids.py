"""Id makers in OpenAI's shapes: file-…, ftjob-…, ftevent-…, ftckpt-…, ft:<base>:<org>:<suffix>:<id>."""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass

_ALPHABET = string.ascii_letters + string.digits


def random_token(n: int = 24) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def new_id(prefix: str, n: int = 24) -> str:
    """prefix-<n random base62 chars>, e.g. new_id("ftjob")."""
    return f"{prefix}-{random_token(n)}"


def file_id() -> str:
    return new_id("file")


def job_id() -> str:
    return new_id("ftjob")


def event_id() -> str:
    return new_id("ftevent")


def checkpoint_id() -> str:
    return new_id("ftckpt")


SUFFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def fine_tuned_model_name(base: str, org: str, suffix: str | None, rand: str | None = None) -> str:
    """ft:<base>:<org>:<suffix>:<id>; an absent suffix leaves its field empty, as OpenAI does."""
    return f"ft:{base}:{org}:{suffix or ''}:{rand or random_token(8)}"


def checkpoint_model_name(fine_tuned_model: str, step: int) -> str:
    return f"{fine_tuned_model}:ckpt-step-{step}"


@dataclass(frozen=True)
class FineTunedName:
    base: str
    org: str
    suffix: str
    uid: str
    step: int | None = None

    @property
    def model(self) -> str:
        """The fine-tuned model name without any checkpoint part."""
        return f"ft:{self.base}:{self.org}:{self.suffix}:{self.uid}"


_FT_RE = re.compile(r"^ft:(?P<base>.+):(?P<org>[^:]*):(?P<suffix>[^:]*):(?P<uid>[A-Za-z0-9]+)"
                    r"(?::ckpt-step-(?P<step>\d+))?$")


def parse_fine_tuned_name(name: str) -> FineTunedName | None:
    """Split an ft:… name into its parts, or None when it is not one."""
    m = _FT_RE.match(name)
    if not m:
        return None
    step = m.group("step")
    return FineTunedName(m.group("base"), m.group("org"), m.group("suffix"), m.group("uid"),
                         int(step) if step else None)
