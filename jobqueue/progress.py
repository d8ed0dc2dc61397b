"""A live view of a run while it executes: succeeded / failed / running / queued, elapsed and ETA."""

from __future__ import annotations

import sys
import threading
import time

from jobqueue import queue
from jobqueue.db import Database


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressView:
    """Polls the run's counts from the DB in a thread; a rich live bar on a terminal, a line now and then otherwise."""

    def __init__(self, db: Database, run: str, enabled: bool = True, interval: float = 0.5):
        self.db, self.run, self.enabled, self.interval = db, run, enabled, interval
        self.started = time.monotonic()
        self.done_at_start: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tty = sys.stderr.isatty()
        self._live = None
        self._last_line = ""
        self._last_print = 0.0

    def counts(self) -> dict[str, int]:
        return {state: n for _, state, n in queue.status_counts(self.db, self.run)}

    def line(self, counts: dict[str, int]) -> str:
        total = sum(counts.values())
        done = sum(counts.get(s, 0) for s in ("succeeded", "failed", "timeout", "cancelled"))
        if self.done_at_start is None:
            self.done_at_start = done
        elapsed = time.monotonic() - self.started
        finished_here = done - self.done_at_start
        remaining = total - done
        eta = elapsed / finished_here * remaining if finished_here else None
        return (f"{self.run}: {done}/{total} done | {counts.get('succeeded', 0)} succeeded, "
                f"{counts.get('failed', 0) + counts.get('timeout', 0)} failed, {counts.get('running', 0)} running, "
                f"{counts.get('queued', 0)} queued | elapsed {format_seconds(elapsed)}, ETA {format_seconds(eta if remaining else 0)}")

    def say(self, message: str) -> None:
        """A worker event worth showing (failures, lost workers) above the bar."""
        if not self.enabled:
            return
        if self._live is not None:
            self._live.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)

    def _render(self):
        from rich.text import Text

        return Text(self.line(self.counts()))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def refresh(self) -> None:
        try:
            if self._live is not None:
                self._live.update(self._render())
            else:
                line = self.line(self.counts())
                if line.split(" | elapsed")[0] != self._last_line or time.monotonic() - self._last_print > 30:
                    self._last_line, self._last_print = line.split(" | elapsed")[0], time.monotonic()
                    print(line, file=sys.stderr, flush=True)
        except Exception:  # a busy DB must never stop the run; the next tick tries again
            pass

    def __enter__(self) -> "ProgressView":
        if self.enabled:
            if self.tty:
                from rich.console import Console
                from rich.live import Live

                self._live = Live(self._render(), console=Console(stderr=True), refresh_per_second=4, transient=False)
                self._live.__enter__()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.enabled:
            if self._live is not None:
                self._live.update(self._render())
                self._live.__exit__(None, None, None)
            else:
                print(self.line(self.counts()), file=sys.stderr, flush=True)
