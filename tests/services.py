"""Real servers for the test session: PostgreSQL 15 and a single-node Slurm with four fake GPUs.

Recipes from shared/notes/postgres.md and shared/notes/slurm.md, checked on this machine kind.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import select
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(argv: list[str]) -> list[str]:
    """The server refuses to run as root: run its tools as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--"] + argv if os.geteuid() == 0 else argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Postgres:
    root: Path
    port: int

    def run(self, argv: list[str]) -> None:
        subprocess.run(_as_postgres(argv), check=True, capture_output=True, timeout=60)

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@/{dbname}?host={self.root}&port={self.port}"

    def create_database(self, dbname: str, owner: str = "postgres") -> str:
        self._admin(f'CREATE DATABASE "{dbname}" OWNER "{owner}"')
        return self.url(dbname)

    def create_password_role(self, role: str, password: str, dbname: str) -> str:
        """A role that must give its password (scram-sha-256), owning a new database: the URL that reaches it over
        TCP, password included. The Unix socket trusts everyone, so only TCP makes the password matter."""
        self._admin(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        self.create_database(dbname, owner=role)
        return f"postgresql+psycopg://{role}:{password}@127.0.0.1:{self.port}/{dbname}"

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(
            host=str(self.root), port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(statement)

    def start(self) -> None:
        """Start the server on its data directory (again, after halt())."""
        self.run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.root / "data"),
                "-l",
                str(self.root / "pg.log"),
                "-w",
                "-o",
                f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
                "start",
            ]
        )

    def halt(self) -> None:
        """Stop the server as a failover or a maintenance restart does (fast: its connections are cut), keeping
        its data for start()."""
        self.run([str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"])

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(_tmp: Path, name: str = "pg") -> Postgres:
    """The session's server, or (another `name`) a server of a test module's own, to cut or stop as it likes."""
    if not (PG_BIN / "initdb").exists():
        raise RuntimeError(f"{PG_BIN}/initdb not found; apt-get install postgresql")
    # A directory of its own under /tmp: pytest's tmp dirs are private to root, and postgres must enter it.
    root = Path(f"/tmp/jq-{name}-{os.getpid()}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o755)
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    # A free port, not a fixed one: it is TCP's too, and other test sessions on this machine run servers of their own.
    server = Postgres(root, free_port())
    server.run([str(PG_BIN / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres", "--no-sync"])
    # The tests' URLs come through the Unix socket, which trusts every role. TCP, on 127.0.0.1 only, asks every
    # role for its password: the way to test one (create_password_role); `postgres` has none, so it cannot.
    (root / "data" / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
    server.start()
    return server


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 between clients and a server, that the test can cut: a network partition.

    cut() stops forwarding and refuses new connections. Open connections are held (the default): their bytes wait
    in the kernel's buffers, so a query in progress hangs with no error and no reset, and the kernel still
    acknowledges what the client sends, so neither TCP keepalives nor TCP_USER_TIMEOUT notice; only the client's
    own clock can. Or dropped (drop=True): closed at once, as a restarting router would. heal() forwards again,
    the held bytes first. Threads, not asyncio: a blocking relay per direction is all it needs.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._listen()

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by cut() or close()
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        while not self._closed:
            self._flowing.wait()
            try:
                ready, _, _ = select.select([source], [], [], 0.1)
                if not ready or not self._flowing.is_set():
                    continue
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
            except (OSError, ValueError):  # ValueError: closed under us by cut(drop=True) or close()
                break
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self, drop: bool = False) -> None:
        self._flowing.clear()
        self._stop_listening()
        if drop:
            self._close_connections()

    def _stop_listening(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the accept() in progress; close() alone leaves the socket listening under it.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None

    def _close_connections(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for end in pair:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def heal(self) -> None:
        self._listen()
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self._stop_listening()
        self._close_connections()


# --- Slurm -------------------------------------------------------------------------------------------


@dataclass
class Slurm:
    root: Path
    host: str
    env: dict = field(default_factory=dict)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(argv), env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60, check=check
        )

    def squeue(self) -> list[str]:
        return [line for line in self.run("squeue", "-h", "-o", "%i %t").stdout.splitlines() if line.strip()]

    def stop(self) -> None:
        for pidfile in (self.root / "run").glob("*.pid"):
            try:
                os.kill(int(pidfile.read_text().strip()), 15)
            except (OSError, ValueError):
                pass
        subprocess.run(["munged", "-S", str(self.root / "munge" / "sock"), "--stop"], capture_output=True)
        time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)


SLURM_CONF = """\
ClusterName=jqtest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={root}/munge/sock
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/slurmd-%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
GresTypes=gpu
KillWait=5
MinJobAge=300
InactiveLimit=0
NodeName={host} CPUs={cpus} RealMemory=4000 Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


def start_slurm(root: Path) -> Slurm:
    for tool in ("slurmctld", "slurmd", "munged", "sbatch"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} not found; apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        raise RuntimeError("the test Slurm runs as root (SlurmUser=root, mknod for the fake GPUs)")
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("munge", "state", "spool", "log", "run", "dev"):
        (root / sub).mkdir(parents=True)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    subprocess.run(
        [
            "munged",
            f"--key-file={key}",
            f"--socket={root}/munge/sock",
            f"--pid-file={root}/munge/munged.pid",
            f"--log-file={root}/munge/munged.log",
            f"--seed-file={root}/munge/seed",
            "--force",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    for i in range(4):
        os.mknod(root / "dev" / f"nvidia{i}", 0o600 | 0o020000, os.makedev(195, i))
    host = socket.gethostname().split(".")[0]
    cpus = min(
        os.cpu_count() or 2,
        int(subprocess.run(["slurmd", "-C"], capture_output=True, text=True).stdout.split("CPUs=")[1].split()[0]),
    )
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, root=root, ctld_port=free_port(), d_port=free_port(), cpus=cpus))
    (root / "gres.conf").write_text(f"AutoDetect=off\nNodeName={host} Name=gpu File={root}/dev/nvidia[0-3]\n")
    cluster = Slurm(root, host, {"SLURM_CONF": str(conf)})
    cluster.run("slurmctld", "-f", str(conf))
    cluster.run("slurmd", "-f", str(conf))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = cluster.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
        if state == "idle":
            return cluster
        time.sleep(0.2)
    log = (root / "log" / "slurmctld.log").read_text()[-2000:] if (root / "log" / "slurmctld.log").exists() else ""
    cluster.stop()
    raise RuntimeError(f"the node did not become idle within 30 s (state {state!r}); slurmctld.log: {log}")
