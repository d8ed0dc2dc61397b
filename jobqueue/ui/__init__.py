"""`jq ui`: a read-only web page of the runs, their jobs, attempts, logs and results, live while a sweep runs.

Only `jq ui` imports this package (and bottle, its server library): readonly.py opens the DB, counts.py keeps the
runs' counts, api.py reads what the pages show, server.py serves them with the files in static/.
"""

from __future__ import annotations

import socket
import sys

from jobqueue.errors import UserError

try:
    import bottle  # noqa: F401 - server.py's; checked here for the one line a user reads
except ModuleNotFoundError:
    raise UserError('jq ui needs bottle: pip install "jobqueue[ui]" (or pip install bottle)') from None

from jobqueue.ui.api import Dashboard
from jobqueue.ui.readonly import ReadOnlyDB
from jobqueue.ui.server import is_loopback, is_wildcard, make_app, make_server

DEFAULT_PORT = 8080
DEFAULT_INTERVAL = 2.0  # seconds between a page's polls


def serve(
    db_arg: str | None, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, interval: float = DEFAULT_INTERVAL
) -> None:
    """Serve the dashboard until Ctrl-C or SIGTERM. Raises UserError when the DB cannot be read or the port taken."""
    db = ReadOnlyDB(db_arg)
    try:
        server = make_server(host, port, make_app(Dashboard(db), interval, host))
        if not is_loopback(host):
            print(
                f"jq: warning: --host {host}: anyone who can reach this machine's port {server.server_port} can read "
                "the queue, with no password; the default, 127.0.0.1 with `ssh -L`, keeps it yours",
                file=sys.stderr,
            )
        shown = "127.0.0.1" if is_wildcard(host) else (f"[{host}]" if ":" in host else host)
        print(f"jq ui: {db.shown}, read-only, at http://{shown}:{server.server_port}/ (Ctrl-C stops it)", flush=True)
        if is_loopback(host):
            print(
                f"  from another machine: ssh -L {server.server_port}:localhost:{server.server_port} "
                f"{socket.gethostname()}, then open http://localhost:{server.server_port}/",
                flush=True,
            )
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        db.close()
