"""Walking a store's execution listing page by page, as the tests of every store do."""

from __future__ import annotations

from spearlet.core.models import Status
from spearlet.store.base import Store


async def pages_of(store: Store, limit: int = 100, max_bytes: int = 0) -> list[list[str]]:
    """The execution ids of each page of the whole listing, following `next_start_after`."""
    pages: list[list[str]] = []
    start_after = ""
    while True:
        page = await store.list_executions("", Status.UNKNOWN, limit, start_after, max_bytes=max_bytes)
        pages.append([r.execution_id for r in page.executions])
        if not page.has_more:
            return pages
        start_after = page.next_start_after
