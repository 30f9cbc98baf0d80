"""Response bodies of the service (they also document the API at ``/docs``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    """An error: what went wrong, in one line."""

    detail: str


class HitOut(BaseModel):
    """A registered item similar to the query."""

    item_id: int
    label: str
    score: float = Field(description="cosine similarity to the query, in [-1, 1]")


class ClassifyOut(BaseModel):
    """The decision for one image and the hits it rests on."""

    label: str = Field(description="the nearest item's class, or 'unknown' under the threshold")
    score: float = Field(description="cosine similarity of the nearest item")
    known: bool = Field(description="whether the score reached the threshold")
    threshold: float
    top: list[HitOut] = Field(description="the k nearest items, best first")


class SearchOut(BaseModel):
    """The k nearest registered items, best first."""

    hits: list[HitOut]


class TextQuery(BaseModel):
    """A caption to find images for."""

    text: str = Field(..., max_length=1000, description="what the image shows, in words")


class BatchClassifyItem(BaseModel):
    """One image of a batch: its result, or why it could not be read."""

    file: str
    result: ClassifyOut | None = None
    error: str | None = None


class BatchClassifyOut(BaseModel):
    """Results in the order the images were sent."""

    results: list[BatchClassifyItem]


class BatchSearchItem(BaseModel):
    """One image of a batch: its hits, or why it could not be read."""

    file: str
    hits: list[HitOut] | None = None
    error: str | None = None


class BatchSearchOut(BaseModel):
    """Results in the order the images were sent."""

    results: list[BatchSearchItem]


class SkippedOut(BaseModel):
    """An image that was not registered, and why."""

    file: str
    reason: str


class RegisterOut(BaseModel):
    """What a registration added and skipped, and the gallery's size after it."""

    label: str
    added: list[int] = Field(description="ids of the new items")
    skipped: list[SkippedOut]
    items: int
    classes: int
    saved: bool = Field(description="whether the gallery folder was saved after the change")


class RemoveOut(BaseModel):
    """How many items a removal took out, and the gallery's size after it."""

    removed: int
    items: int
    classes: int
    saved: bool


class ClassOut(BaseModel):
    """A class and its number of items."""

    label: str
    count: int


class ClassesOut(BaseModel):
    """Every class, sorted by label."""

    classes: list[ClassOut]
    items: int


class ItemOut(BaseModel):
    """A registered item."""

    item_id: int
    label: str
    source: str = Field(description="the file it came from; 'upload:<name>' if sent here")


class ItemsOut(BaseModel):
    """A page of items by increasing id."""

    items: list[ItemOut]
    total: int = Field(description="items matching the filter, on every page")
    offset: int
    limit: int


class HealthOut(BaseModel):
    """The service is up; what it serves."""

    status: str
    items: int
    classes: int
    threshold: float
    index: str
    shared: bool = Field(description="items kept in PostgreSQL, shared with other processes")
    model: dict[str, Any]
    engine: str
    writes: str = Field(description="'api-key', 'open' (no key needed) or 'disabled'")
    protect_reads: bool
    persistent: bool = Field(description="whether writes are saved to the gallery folder")
