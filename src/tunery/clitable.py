"""Tables in the CLI that never cut a name or an id: a rich table on a terminal (long cells fold onto
more lines instead of ending in '…'), plain tab-separated lines when stdout is a pipe or a file, so
`tunery models list | grep NAME` finds NAME whatever the width."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_table(console: Console, columns: Sequence[str], rows: Sequence[Sequence[str]], *,
                title: str | None = None, styles: dict[int, dict[int, str]] | None = None) -> None:
    """Print `rows` (plain strings) under `columns`. `styles[row][col]` is rich markup for that cell on a
    terminal only (e.g. "green"); piped output is never styled."""
    if not console.is_terminal:
        console.file.write("\t".join(columns) + "\n")
        for row in rows:
            console.file.write("\t".join(str(c).replace("\t", " ").replace("\n", " ") for c in row) + "\n")
        console.file.flush()
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            style = (styles or {}).get(i, {}).get(j)
            text = escape(str(cell))
            cells.append(f"[{style}]{text}[/{style}]" if style else text)
        table.add_row(*cells)
    console.print(table)
