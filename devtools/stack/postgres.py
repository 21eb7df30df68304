"""The embedded PostgreSQL 15: a throwaway cluster in ``<state>/postgres/data`` on loopback.

Owns: ``initdb`` on first start, ``pg_ctl start`` with fsync off, the ``fleet`` database, and the
clean-up after a killed postmaster. As root, the Postgres tools run as the ``postgres`` user
(they refuse root), so the state directory is handed to that user and made traversable.
Must not: touch a system cluster or any postmaster whose argv lacks our data directory.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import stat
from pathlib import Path

import asyncpg

from devtools.stack.process import (
    Signature,
    StackError,
    pids_with_cwd,
    read_pid,
    run,
    running_pid,
    wait_gone,
    wait_reaped,
)

DATABASE = "fleet"
SUPERUSER = "postgres"
_FALLBACK_BIN = Path("/usr/lib/postgresql/15/bin")
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class Postgres:
    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: open sessions are rolled back, not waited for
    ready_timeout_s = 30.0

    def __init__(self, state_dir: Path, *, port: int) -> None:
        self.home = state_dir / "postgres"
        self.data_dir = self.home / "data"
        self.port = port
        self.ports: tuple[int, ...] = (port,)
        self.pid_file = self.data_dir / "postmaster.pid"  # written and removed by the postmaster
        self.log_files: tuple[Path, ...] = (self.home / "postgres.log",)
        self.signature = Signature("postgres", str(self.data_dir))
        self._os_user = SUPERUSER if os.geteuid() == 0 else None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def dsn(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def running_pid(self) -> int | None:
        return running_pid(self.pid_file, self.signature)

    async def clean_stale(self) -> list[str]:
        """What a killed postmaster leaves: backends still exiting, a zombie not yet reaped by init, and
        lock files naming its pid. Postgres itself discards a lock file whose pid is gone, but not one
        whose pid is a zombie or has been reused, so once nothing of ours runs we remove them."""
        notes = await self._wait_for_orphans()
        old_pid = read_pid(self.pid_file)
        if old_pid is not None and not await wait_reaped(old_pid, 10.0):
            raise StackError(f"the killed postmaster (pid {old_pid}) is still not reaped; try again shortly")
        for lock in [self.pid_file, *self.data_dir.glob(".s.PGSQL.*.lock")]:
            if lock.exists():
                lock.unlink()
                notes.append(f"stale {lock.name} removed")
        return notes

    async def _wait_for_orphans(self) -> list[str]:
        """After ``kill -9`` of the postmaster its backends notice and exit within moments; until they
        have, the old shared memory is in use and a new postmaster refuses to start. Every live postgres
        process whose working directory is our data directory is such a backend."""
        orphans = pids_with_cwd(self.data_dir, self.signature.program)
        if not orphans:
            return []
        if not await wait_gone(orphans, 10.0):
            raise StackError(f"processes {orphans} still run in {self.data_dir}; stop them first")
        return [f"waited for {len(orphans)} orphaned backend(s) to exit"]

    async def start(self) -> list[str]:
        bin_dir = _bin_dir()
        notes = self._prepare_home()
        if not (self.data_dir / "PG_VERSION").exists():
            await self._initdb(bin_dir)
            notes.append("cluster initialised")
        # max_connections: every instance of every worker may open PostgresSettings.max_pool (32)
        options = (
            f"-p {self.port} -k {shlex.quote(str(self.data_dir))} -c fsync=off -c listen_addresses=127.0.0.1"
            " -c max_connections=400"
        )
        argv = [str(bin_dir / "pg_ctl"), "start", "-w", "-t", "30", "-D", str(self.data_dir)]
        argv += ["-l", str(self.log_files[0]), "-o", options]
        await run(argv, cwd=self.home, user=self._os_user, what="pg_ctl start")
        if await self._create_database():
            notes.append(f"database {DATABASE} created")
        return notes

    def _prepare_home(self) -> list[str]:
        self.home.mkdir(parents=True, exist_ok=True)
        if self._os_user is None:
            return []
        owner = pwd.getpwnam(self._os_user)
        if self.home.stat().st_uid != owner.pw_uid:
            for path in [self.home, *self.home.rglob("*")]:
                os.chown(path, owner.pw_uid, owner.pw_gid, follow_symlinks=False)
        return _make_traversable(self.home.parent)

    async def _initdb(self, bin_dir: Path) -> None:
        # a data directory without PG_VERSION is what an interrupted initdb leaves; initdb refuses it
        shutil.rmtree(self.data_dir, ignore_errors=True)
        argv = [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-A", "trust", "--no-sync"]
        argv += ["-U", SUPERUSER, "-E", "UTF8", "--locale=C"]
        await run(argv, cwd=self.home, user=self._os_user, what="initdb")

    async def _create_database(self) -> bool:
        conn = await asyncpg.connect(self.dsn("postgres"))
        try:
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
                return False
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
            return True
        finally:
            await conn.close()

    async def probe(self) -> bool:
        try:
            conn = await asyncpg.connect(self.dsn(), timeout=5)
        except _DB_ERRORS:
            return False
        try:
            return bool(await conn.fetchval("SELECT 1"))
        finally:
            await conn.close()


def _bin_dir() -> Path:
    """Where initdb and pg_ctl live: next to the ``initdb`` on PATH (a symlink is followed, so
    both come from one installation), else Debian's PostgreSQL 15 directory."""
    found = shutil.which("initdb")
    bin_dir = Path(found).resolve().parent if found else _FALLBACK_BIN
    if not (bin_dir / "pg_ctl").exists():
        raise StackError("PostgreSQL 15 is not installed (apt-get install -y postgresql-15)")
    return bin_dir


def _make_traversable(directory: Path) -> list[str]:
    """Give "others" search permission (x only, not read) on ``directory`` and each parent that
    lacks it, so the postgres user can reach its data directory; each change is reported."""
    changed = []
    for path in [directory, *directory.parents]:
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            changed.append(f"o+x added to {path}")
    return changed
