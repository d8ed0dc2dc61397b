"""`jq ui`'s web server: bottle routes over the Dashboard's data, the static pages, and an HTTP server that
answers each request in a thread of its own, so a slow read never holds up another page's poll.

The pages are static files; the only data in them is the JSON the page starts from, in a
<script type="application/json"> whose `<`, `>` and `&` are escaped, so no value can close the element. The
scripts put every value from the DB into the page as text (textContent), never as HTML.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import socket
import socketserver
import sqlite3
import sys
import traceback
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import bottle

from jobqueue.errors import UserError
from jobqueue.paths import scrub
from jobqueue.ui.api import PAGE_SIZES, Dashboard, NotFound, to_json

STATIC = Path(__file__).parent / "static"
BOOT_MARK = "__BOOT_JSON__"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# Scripts only from this server, no inline script or event handler (a second line of defence after textContent),
# no frames, no plugins. Styles inline too: the chart library sets element styles.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def embed_json(value) -> str:
    """JSON to put inside a <script> element: `</script>` or `<!--` in a value cannot end or bend the element."""
    return to_json(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header, without its port: `localhost:9000` -> localhost, `[::1]:8080` -> ::1."""
    if header.startswith("["):
        return header[1:].split("]")[0].lower()
    return header.rsplit(":", 1)[0].lower()


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def make_app(dashboard: Dashboard, interval: float, host: str = "127.0.0.1") -> bottle.Bottle:
    app = bottle.Bottle()
    pages = {name: (STATIC / f"{name}.html").read_text() for name in ("runs", "run", "job")}
    allowed_hosts = None if is_wildcard(host) else LOOPBACK_NAMES | {host.lower()}

    @app.hook("before_request")
    def _check_host():
        # A page on another site can point a name of its own at 127.0.0.1 (DNS rebinding) and read what we serve;
        # its requests carry that name in Host. Through `ssh -L` the browser names localhost, as on this machine.
        name = host_name(bottle.request.get_header("Host", ""))
        if allowed_hosts is not None and name not in allowed_hosts:
            raise bottle.HTTPError(403, f"jq ui answers to {', '.join(sorted(allowed_hosts))} only")

    @app.hook("after_request")
    def _security_headers():
        for header, value in SECURITY_HEADERS.items():
            bottle.response.set_header(header, value)

    def page(name: str, boot: dict) -> str:
        bottle.response.set_header("Cache-Control", "no-store")
        try:
            boot = {name: _answer(*call) for name, call in boot.items()}
        except NotFound as exc:
            raise bottle.HTTPError(404, str(exc)) from None
        return pages[name].replace(BOOT_MARK, embed_json({"interval": interval, "page_sizes": PAGE_SIZES, **boot}))

    @app.get("/")
    def runs_page():
        return page("runs", {"runs": (dashboard.runs,)})

    @app.get("/runs/<run_id:int>")
    def run_page(run_id: int):
        return page(
            "run",
            {"run": (dashboard.run, run_id), "jobs": (dashboard.jobs, run_id)},
        )

    @app.get("/jobs/<job_id:int>")
    def job_page(job_id: int):
        return page("job", {"job": (dashboard.job, job_id)})

    @app.get("/static/<path:path>")
    def static(path: str):
        response = bottle.static_file(path, root=str(STATIC))
        response.set_header("Cache-Control", "no-cache")  # revalidated (If-Modified-Since): a new jq shows at once
        return response

    def api(route: str):
        """A JSON endpoint: the function's value as JSON; a mistake in the request as 400, a missing thing as
        404, a DB that cannot be read as 503, each {"error": "..."}."""

        def register(fn):
            @functools.wraps(fn)
            def answer(**kwargs):
                bottle.response.content_type = "application/json"
                bottle.response.set_header("Cache-Control", "no-store")
                try:
                    return to_json(fn(**kwargs))
                except bottle.HTTPError as exc:
                    return _error(exc.status_code, exc.body)
                except NotFound as exc:
                    return _error(404, str(exc))
                except (UserError, ValueError) as exc:
                    return _error(400, str(exc))

            return app.get(route)(answer)

        return register

    @api("/api/runs")
    def api_runs():
        return _answer(dashboard.runs)

    @api("/api/runs/<run_id:int>")
    def api_run(run_id: int):
        return _answer(dashboard.run, run_id)

    @api("/api/runs/<run_id:int>/columns")
    def api_columns(run_id: int):
        return _answer(dashboard.columns, run_id)

    @api("/api/runs/<run_id:int>/jobs")
    def api_jobs(run_id: int):
        return _answer(
            dashboard.jobs,
            run_id,
            state=_arg("state") or None,
            sort=_arg("sort") or "id",
            descending=_arg("order") == "desc",
            limit=_int("limit", 50),
            offset=_int("offset", 0),
        )

    @api("/api/runs/<run_id:int>/attempts")
    def api_attempts(run_id: int):
        return _answer(dashboard.attempts, run_id, after=_int("after", 0), open_ids=_ints("open"))

    @api("/api/runs/<run_id:int>/results")
    def api_results(run_id: int):
        return _answer(dashboard.results, run_id)

    @api("/api/curves")
    def api_curves():
        key = _arg("key")
        if not key:
            raise UserError("key: name the metric, e.g. ?key=loss&jobs=1,2")
        return _answer(dashboard.curves, key, _ints("jobs"))

    @api("/api/jobs/<job_id:int>")
    def api_job(job_id: int):
        return _answer(dashboard.job, job_id)

    @api("/api/jobs/<job_id:int>/log")
    def api_log(job_id: int):
        offset = _arg("offset")
        return _answer(
            dashboard.log,
            job_id,
            attempt=_int("attempt", 0) or None,
            offset=None if offset in (None, "") else _int("offset", 0),
        )

    return app


def _answer(fn, *args, **kwargs):
    """fn's answer; a DB that cannot be read now (locked past the timeout, a server gone) as HTTP 503."""
    try:
        return fn(*args, **kwargs)
    except (UserError, ValueError, bottle.HTTPError):
        raise
    except Exception as exc:  # noqa: BLE001 - the page shows it and polls again
        if not _is_db_error(exc):
            traceback.print_exc()
            raise bottle.HTTPError(500, "internal error; see jq ui's output") from None
        raise bottle.HTTPError(503, f"the DB cannot be read now: {scrub(str(exc).splitlines()[0])}") from None


def _is_db_error(exc: Exception) -> bool:
    if isinstance(exc, sqlite3.Error):
        return True
    psycopg = sys.modules.get("psycopg")
    sqlalchemy = sys.modules.get("sqlalchemy")
    return bool(
        (psycopg and isinstance(exc, psycopg.Error)) or (sqlalchemy and isinstance(exc, sqlalchemy.exc.DBAPIError))
    )


def _error(status: int, message: str) -> str:
    bottle.response.status = status
    return to_json({"error": message})


def _arg(name: str) -> str | None:
    return bottle.request.query.get(name)


def _int(name: str, default: int) -> int:
    text = _arg(name)
    if text in (None, ""):
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name}={text!r}: not a whole number") from None


def _ints(name: str) -> list[int]:
    text = _arg(name) or ""
    try:
        return [int(part) for part in text.split(",") if part]
    except ValueError:
        raise UserError(f"{name}={text[:40]!r}: give whole numbers separated by commas") from None


# --- the HTTP server ---------------------------------------------------------------------------------


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # Ctrl-C does not wait for a page's open request

    def server_bind(self):
        # HTTPServer.server_bind looks the host's name up in DNS (getfqdn), which can take seconds on a cluster.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the polls would fill the terminal
        pass


def make_server(host: str, port: int, app) -> WSGIServer:
    """A server bound to host:port (0: a free port), or a UserError saying why it cannot be."""
    server_class = type(
        "_Server", (_ThreadingServer,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET}
    )
    try:
        server = server_class((host, port), _QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(
                f"--port {port}: already in use on {host} (another jq ui?); stop it or choose another, "
                f"e.g. --port {port + 1}"
            ) from None
        if exc.errno == errno.EACCES:
            raise UserError(
                f"--port {port}: not allowed for this user (ports below 1024 need root); use e.g. --port 8080"
            ) from None
        raise UserError(
            f"--host {host}: cannot listen there ({exc.strerror or exc}); use 127.0.0.1 or an address of this machine"
        ) from None
    server.set_app(app)
    return server
