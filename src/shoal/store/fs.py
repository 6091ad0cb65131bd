"""The file system under a run directory: SQLite's locking is unreliable on network file
systems (NFS, Lustre, GPFS, BeeGFS, CIFS), where two hosts can both think they hold a lock
and a database can be damaged. shoal says so once, with what to do instead."""

from __future__ import annotations

import logging
import os
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
