"""Organizations and API keys. Keys are stored as sha256 hashes; the key itself is shown once."""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError

from tunery.errors import InvalidRequest, NotFound
from tunery.ids import new_id, random_token
from tunery.store.db import Store, now
from tunery.store.tables import ApiKey, Organization

ORG_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KEY_PREFIX = "sk-tunery-"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def get_org(store: Store, name: str) -> Organization | None:
    with store.read() as s:
        return s.execute(select(Organization).where(Organization.name == name)).scalar_one_or_none()


def get_org_by_id(store: Store, org_id: str) -> Organization | None:
    with store.read() as s:
        return s.execute(select(Organization).where(Organization.id == org_id)).scalar_one_or_none()


def ensure_org(store: Store, name: str) -> Organization:
    """The organization called `name`, created on first use (safe under concurrent callers)."""
    if not isinstance(name, str) or not ORG_NAME_RE.fullmatch(name):  # $ alone allows a trailing "\n"
        raise InvalidRequest(f"organization name {name!r} must be 1-64 letters, digits, '.', '_' or '-'",
                             param="org")
    org = get_org(store, name)
    if org is not None:
        return org
    try:
        with store.session() as s:
            org = Organization(id=new_id("org"), name=name, created_at=now())
            s.add(org)
        return org
    except IntegrityError:
        org = get_org(store, name)
        if org is None:
            raise
        return org


def list_orgs(store: Store) -> list[Organization]:
    with store.read() as s:
        return list(s.execute(select(Organization).order_by(Organization.pk)).scalars())


def create_api_key(store: Store, org_name: str, name: str | None = None) -> tuple[ApiKey, str]:
    """Issue a key for org_name (creating the org). Returns the row and the key, which is not stored."""
    org = ensure_org(store, org_name)
    key = KEY_PREFIX + random_token(40)
    row = ApiKey(id=new_id("key", 16), org_id=org.id, name=name, prefix=key[:len(KEY_PREFIX) + 4],
                 key_hash=_hash(key), created_at=now())
    with store.session() as s:
        s.add(row)
    return row, key


def list_api_keys(store: Store, *, include_revoked: bool = False) -> list[tuple[ApiKey, Organization]]:
    with store.read() as s:
        stmt = select(ApiKey, Organization).join(Organization, Organization.id == ApiKey.org_id)
        if not include_revoked:
            stmt = stmt.where(ApiKey.revoked_at.is_(None))
        return [(k, o) for k, o in s.execute(stmt.order_by(ApiKey.pk)).all()]


def revoke_api_key(store: Store, key_id: str) -> ApiKey:
    """Revoke by key id (key-…) or by the full key."""
    with store.session() as s:
        row = s.execute(select(ApiKey).where((ApiKey.id == key_id) | (ApiKey.key_hash == _hash(key_id)))
                        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no API key {key_id!r}; `tunery keys list` shows the ids", param="key")
        if row.revoked_at is None:
            row.revoked_at = now()
        return row


def auth_required(store: Store) -> bool:
    """True once any unrevoked key exists: from then on every request must carry one."""
    with store.read() as s:
        return bool(s.execute(select(exists().where(ApiKey.revoked_at.is_(None)))).scalar())


def org_for_key(store: Store, key: str) -> Organization | None:
    with store.read() as s:
        return s.execute(
            select(Organization).join(ApiKey, ApiKey.org_id == Organization.id)
            .where(ApiKey.key_hash == _hash(key), ApiKey.revoked_at.is_(None))).scalar_one_or_none()


