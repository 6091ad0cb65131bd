"""The store's files on disk.

* The file system under a run directory: SQLite's locking is unreliable on network file
  systems (NFS, Lustre, GPFS, BeeGFS, CIFS), where two hosts can both think they hold a lock
  and a database can be damaged. shoal says so once, with what to do instead.
* The files of a store: its write-ahead log and who holds it, the live copy on node-local
  disk (``state_dir``) and how the two copies are kept equal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

NETWORK = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "beegfs",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "glusterfs",
        "fuse.sshfs",
        "9p",
        "afs",
        "panfs",
        "wekafs",
    }
)


def fstype(path: Path, mounts: str = "/proc/mounts") -> str | None:
    """The type of the file system holding ``path`` (the longest mount point above it)."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def advice(path: Path, mounts: str = "/proc/mounts") -> str | None:
    """A warning with a fix when ``path`` is on a network file system, else None."""
    kind = fstype(path, mounts)
    if kind is None or kind.lower() not in NETWORK:
        return None
    return (
        f"the run directory {path} is on {kind}, a network file system, where SQLite's locks "
        "are not reliable (a store can be damaged if two processes write it). Keep the live "
        "store on node-local disk: wf.run(state_dir='/local/scratch/shoal') (or $TMPDIR); "
        "shoal then copies it into the run directory every few seconds and at the end, and "
        "resume picks the newer copy."
    )


def warn_filesystem(path: Path, log: logging.Logger, mounts: str = "/proc/mounts") -> None:
    text = advice(path, mounts)
    if text:
        log.warning("%s", text)
        print(f"shoal: warning: {text}", file=__import__("sys").stderr)


def file_ident(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of a file, None if it is gone: a store deleted under a live run
    shows as a change of it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def wal_size(db: Path) -> int:
    try:
        return os.path.getsize(f"{db}-wal")
    except OSError:
        return 0


def holders(db: Path, locks: str = "/proc/locks") -> str:
    """Who holds read locks on the database (its -shm file's reader slots): pids and their
    command lines where the kernel says (Linux), else "holder unknown"."""
    try:
        ino = os.stat(f"{db}-shm").st_ino
        lines = Path(locks).read_text().splitlines()
    except OSError:
        return "holder unknown"
    pids: set[int] = set()
    for line in lines:
        parts = line.split()
        # "1: POSIX  ADVISORY  READ 1234 fd:01:5678 123 123" (reader slots are bytes 123-127)
        if len(parts) < 8 or parts[3] != "READ" or not parts[5].endswith(f":{ino}"):
            continue
        with contextlib.suppress(ValueError):
            if 123 <= int(parts[6]) <= 127 and int(parts[4]) > 0:
                pids.add(int(parts[4]))
    if not pids:
        return "holder unknown"
    out = []
    for pid in sorted(pids):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = ""
        me = " (this process)" if pid == os.getpid() else ""
        out.append(f"pid {pid}{me}" + (f": {cmd.strip()[:80]}" if cmd.strip() else ""))
    return "held by " + "; ".join(out)


def live_path(rundir: Path, state_dir: Path) -> Path:
    """Where the live database of a run with a state directory is."""
    return Path(state_dir) / rundir.name / "shoal.db"


def copy_store(conn: sqlite3.Connection, dest: Path) -> None:
    """A consistent copy of the database behind ``conn`` at ``dest`` (atomic: a new file is
    written and renamed over the old one, so a reader always finds a whole store)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".copy")
    tmp.unlink(missing_ok=True)
    out = sqlite3.connect(tmp)
    try:
        conn.backup(out)
        out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        out.close()
    os.replace(tmp, dest)


def sync(a: Path, b: Path) -> None:
    """Make the older of two copies of a store equal to the newer (by modification time)."""
    if not a.exists() and not b.exists():
        return
    if not b.exists() or (a.exists() and _mtime(a) > _mtime(b)):
        src, dest = a, b
    else:
        src, dest = b, a
    conn = sqlite3.connect(src)
    try:
        copy_store(conn, dest)
    finally:
        conn.close()


def _mtime(db: Path) -> float:
    """A store's last change: its file, or its write-ahead log when that is newer."""
    wal = db.with_name(db.name + "-wal")
    return max(db.stat().st_mtime, wal.stat().st_mtime if wal.exists() else 0.0)
