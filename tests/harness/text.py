"""How the soak's and the bench's reports print: sizes in MiB, rows of a name and a value
aligned in two columns, and Markdown tables padded to read as well in a terminal."""

from __future__ import annotations

from collections.abc import Sequence

MiB = 1 << 20


def mib(size: int) -> str:
    """``size`` bytes in MiB, to a tenth."""
    return f"{size / MiB:.1f} MiB"


def columns(rows: Sequence[tuple[str, str]]) -> list[str]:
    """Each (name, value) row as an indented line, the values aligned."""
    width = max(len(name) for name, _ in rows)
    return [f"  {name:<{width}}  {value}" for name, value in rows]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table, padded so that it reads as well in a terminal."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]
