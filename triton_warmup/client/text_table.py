"""Plain-text tables for the commands' output."""

from typing import Sequence


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, a rule under the header; the last
    column is not padded, so a long note does not widen the table."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * width for width in widths + [len(rows[0][-1])]))
    return "\n".join(lines)
