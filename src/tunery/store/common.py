"""Small helpers shared by the store modules: cursor pagination and org lookups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from tunery.errors import InvalidRequest

T = TypeVar("T")


@dataclass
class Page(Generic[T]):
    """One page of a list: the rows and whether more follow (the SDK's has_more)."""

    data: list[T]
    has_more: bool


def org_id_of(org: Any) -> str:
    """Accept an Organization row, anything with .id, or an org id string."""
    return org if isinstance(org, str) else org.id


def paginate(session: Session, stmt: Select, model, *, order_col, after: str | None, limit: int,
             desc: bool = True, id_col=None) -> Page:
    """Cursor pagination: rows strictly after the row whose public id is `after`, in order_col order."""
    id_col = id_col if id_col is not None else model.id
    if after is not None:
        cursor = session.execute(stmt.with_only_columns(order_col).where(id_col == after)).scalar()
        if cursor is None:
            raise InvalidRequest(f"'after' names no object in this list: {after[:100]!r}", param="after",
                                 code="invalid_cursor")
        stmt = stmt.where(order_col < cursor if desc else order_col > cursor)
    stmt = stmt.order_by(order_col.desc() if desc else order_col.asc()).limit(limit + 1)
    rows = list(session.execute(stmt).scalars())
    return Page(rows[:limit], len(rows) > limit)


def select_one(session: Session, model, **where):
    stmt = select(model)
    for k, v in where.items():
        stmt = stmt.where(getattr(model, k) == v)
    return session.execute(stmt).scalar_one_or_none()
