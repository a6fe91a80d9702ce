"""Offset pagination shared by the list endpoints: the `limit`/`offset` query parameters and the page shape."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Self, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import Select, func
from sqlalchemy.orm import Session

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
MAX_OFFSET = 2**31 - 1  # well inside every database's OFFSET range (a 64-bit integer, with limit added)

ItemT = TypeVar("ItemT")
RowT = TypeVar("RowT")


@dataclass(frozen=True)
class PageParams:
    limit: int
    offset: int


def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="largest number of items to return")] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="number of items to skip")] = 0,
) -> PageParams:
    return PageParams(limit=limit, offset=offset)


PageDep = Annotated[PageParams, Depends(page_params)]


class Page(BaseModel, Generic[ItemT]):
    """One page of a list; ask for the next with `offset + limit` while that is below `total`."""

    items: list[ItemT]
    total: int = Field(description="number of items matching the query (and its filters), over all pages")
    limit: int
    offset: int

    @classmethod
    def of(cls, rows: Sequence[Any], total: int, params: PageParams) -> Self:
        """The page of the ORM rows (read through the item model's attributes)."""
        return cls.model_validate(
            {"items": rows, "total": total, "limit": params.limit, "offset": params.offset}, from_attributes=True
        )


def fetch_page(session: Session, query: Select[RowT], params: PageParams) -> tuple[list[RowT], int]:
    """One page of an ordered query, and how many rows the query matches in all."""
    count = query.with_only_columns(func.count(), maintain_column_froms=True).order_by(None)
    total = session.scalar(count) or 0
    rows = session.scalars(query.limit(params.limit).offset(params.offset))
    return list(rows), total
