"""Render metric dictionaries as Markdown tables and JSON files.

The same Markdown pipe table is printed in the terminal and pasted into the docs, so it is
padded to aligned columns (readable as plain text) while staying valid Markdown.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["format_table", "metrics_to_json"]

_MISSING = ""
_NAN = "n/a"


def _is_number(value: Any) -> bool:
    # bool is an int subclass but reads better as True/False than as 1/0.
    if isinstance(value, bool | np.bool_):
        return False
    return isinstance(value, int | float | np.integer | np.floating)


def _format_cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return _MISSING
    if _is_number(value):
        if isinstance(value, int | np.integer):
            return str(int(value))
        number = float(value)
        if math.isnan(number):
            return _NAN
        return format(number, floatfmt)
    # A literal pipe would end the cell early; newlines would break the row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    title: str | None = None,
    floatfmt: str = ".3f",
) -> str:
    """Format a list of metric dicts as an aligned Markdown pipe table.

    One row per dict, one column per key. Floats are formatted with ``floatfmt``, integers as
    integers, NaN as ``n/a`` and missing keys or ``None`` as an empty cell. Columns holding
    only numbers are right-aligned (``---:``), the others (e.g. a model name in the first
    column) left-aligned.

    Args:
        rows: The table rows, e.g. ``[{"model": "r50", "p@1": 0.91}, ...]``.
        columns: Column keys in display order; defaults to every key in order of first
            appearance across ``rows``.
        title: Optional title, rendered as a ``###`` heading above the table.
        floatfmt: Format spec for floats, as in ``format(x, floatfmt)``.

    Returns:
        The table as a string without trailing newline.

    Raises:
        ValueError: If there are no columns to show or ``floatfmt`` is not a valid float
            format spec.

    """
    try:
        format(0.5, floatfmt)
    except ValueError as exc:
        raise ValueError(f"invalid floatfmt {floatfmt!r} for a float") from exc
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    columns = [str(c) for c in columns]
    if not columns:
        raise ValueError("nothing to tabulate: no columns given and rows have no keys")

    cells = [[_format_cell(row.get(col), floatfmt) for col in columns] for row in rows]
    numeric = [
        any(col in row and row[col] is not None for row in rows)
        and all(_is_number(row[col]) for row in rows if row.get(col) is not None)
        for col in columns
    ]
    headers = [_format_cell(col, floatfmt) for col in columns]
    # Markdown needs at least three dashes in the separator, so columns are at least 3 wide.
    widths = [max(3, len(headers[i]), *(len(r[i]) for r in cells)) for i in range(len(columns))]

    def line(values: list[str]) -> str:
        padded = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    separator = [
        "-" * (w - 1) + ":" if num else "-" * w for w, num in zip(widths, numeric, strict=True)
    ]
    lines = [line(headers), "| " + " | ".join(separator) + " |"]
    lines.extend(line(r) for r in cells)
    if title:
        lines = [f"### {title}", ""] + lines
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        # Strict JSON has no NaN/Infinity; null is what every reader understands.
        return number if math.isfinite(number) else None
    return value


def metrics_to_json(metrics: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a metrics dict to ``path`` as pretty-printed, strict JSON.

    NaN and infinite floats become ``null``, numpy scalars and arrays become Python numbers and
    lists, nested dicts and lists are converted recursively. Parent directories are created.

    Args:
        metrics: The metrics, e.g. the output of
            :func:`openrecog.eval.metrics.evaluate_embeddings`.
        path: Destination file.

    Raises:
        TypeError: If a value cannot be represented in JSON.

    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_jsonable(metrics), indent=2, allow_nan=False)
    out.write_text(text + "\n", encoding="utf-8")
