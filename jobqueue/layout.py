"""Plain text tables: columns two spaces apart, written a page at a time. Light to import: `jq results` and
`jq list` lay out their rows with it, and a command's import time is part of what a researcher waits for."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, islice, starmap

# How many rows a plain listing lays out together. A listing up to this long is one table, each column as wide as
# its widest cell; a longer one is written a page at a time, each column as wide as the widest cell so far, so its
# columns only ever move right (where a later page holds a longer name) and no listing is held whole.
ALIGN_ROWS = 10_000


def aligned(columns: list[str], rows: list[list[str]], right: frozenset[int] = frozenset()) -> str:
    """Plain text in columns two spaces apart (those in `right` right-aligned), the last one unpadded: a long
    command stays whole, to be copied into a shell or grepped. Written at once as plain text, it stays fast for any
    number of rows, where a rich Table or a print per line does work per row."""
    return _lines([columns, *rows], _widths([len(c) for c in columns], rows), right)


def write_aligned(out, columns: list[str], rows: Iterable[list[str]], right: frozenset[int] = frozenset()) -> None:
    """aligned(), written ALIGN_ROWS rows at a time."""
    table = AlignedTable(out, columns, right)
    for page in pages(rows, ALIGN_ROWS):
        table.write(page)
    table.close()


class AlignedTable:
    """aligned()'s columns, written a page at a time (see ALIGN_ROWS): the header with the first page."""

    def __init__(self, out, columns: list[str], right: frozenset[int] = frozenset()):
        self.out, self.right = out, right
        self.widths = [len(c) for c in columns]
        self._header = [columns]

    def write(self, rows: Sequence[Sequence[str]]) -> None:
        self.widths = _widths(self.widths, rows)
        self.out.write(_lines(chain(self._header, rows), self.widths, self.right) + "\n")
        self._header = []

    def write_columns(self, columns: Sequence[Sequence[str]]) -> None:
        """write() of the rows these columns make, when the cells were made a column at a time."""
        self.widths = [max(w, max(map(len, column), default=0)) for w, column in zip(self.widths, columns)]
        self.out.write(_lines(chain(self._header, zip(*columns)), self.widths, self.right) + "\n")
        self._header = []

    def close(self) -> None:
        if self._header:  # no rows: the header alone
            self.write([])


def _widths(widths: list[int], rows: Sequence[Sequence[str]]) -> list[int]:
    if not rows:
        return widths
    return [max(w, max(map(len, column))) for w, column in zip(widths, zip(*rows))]


def _lines(rows: Iterable[Sequence[str]], widths: list[int], right: frozenset[int]) -> str:
    # One format string pads a whole row: str.format does in C what a ljust/rjust per cell does in Python.
    padded = [f"{{:{'>' if i in right else '<'}{w}}}" for i, w in enumerate(widths[:-1])]
    return "\n".join(starmap("  ".join([*padded, "{}"]).format, rows))


def pages(items: Iterable, size: int) -> Iterator[list]:
    items = iter(items)
    while page := list(islice(items, size)):
        yield page
