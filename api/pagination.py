"""The pagination block every paged list returns."""

from __future__ import annotations

import math

from core.jobs import Page


def pagination(page: Page) -> dict[str, int]:
    return {
        "page": page.page,
        "per_page": page.per_page,
        "total": page.total,
        "pages": max(1, math.ceil(page.total / page.per_page)),
    }
