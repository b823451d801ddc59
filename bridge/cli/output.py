"""How the CLI prints: a JSON document with --json, otherwise aligned plain text."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=_default)
    sys.stdout.write("\n")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in
              enumerate(columns)]
    print("  ".join(column.upper().ljust(width) for column, width in zip(columns, widths,
                                                                        strict=True)).rstrip())
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths,
                                                                strict=True)).rstrip())


def print_record(record: dict[str, Any]) -> None:
    width = max(len(key) for key in record) if record else 0
    for key, value in record.items():
        print(f"{key.ljust(width)}  {_cell(value, wide=True)}")


def _cell(value: Any, wide: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    text = str(value).replace("\n", " ")
    return text if wide or len(text) <= 60 else text[:57] + "..."


def emit(data: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
    """Print a list (as a table) or one record, or JSON when asked."""
    if as_json:
        print_json(data)
    elif isinstance(data, list):
        print_table(data, columns or (list(data[0]) if data else []))
    else:
        print_record(data)
