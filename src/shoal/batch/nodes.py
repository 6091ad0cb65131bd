"""The nodes of the allocation a job runs in, as its batch system tells the job: Grid
Engine's ``PE_HOSTFILE`` (``host slots queue processors`` a line) and PBS's ``PBS_NODEFILE``
(a host a line, once per slot). Slurm's come from ``scontrol`` (backends/slurm)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from shoal.errors import BatchError


def pe_hostfile(text: str) -> list[tuple[str, int]]:
    """(host, slots) of each line of a Grid Engine PE_HOSTFILE, in its order."""
    out: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[1].isdigit():
            raise BatchError(f"PE_HOSTFILE line {number} is not 'host slots ...': {line!r}")
        out[parts[0]] = out.get(parts[0], 0) + int(parts[1])
    return list(out.items())


def pbs_nodefile(text: str) -> list[tuple[str, int]]:
    """(host, slots) from a PBS_NODEFILE (a host once per slot), in first-seen order."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        host = line.strip()
        if host:
            out[host] = out.get(host, 0) + 1
    return list(out.items())


def allocated(environ: Mapping[str, str] | None = None) -> list[tuple[str, int]] | None:
    """The hosts and slots of the Grid Engine or PBS allocation this process runs in; None
    outside one."""
    env = os.environ if environ is None else environ
    for var, parse in (("PE_HOSTFILE", pe_hostfile), ("PBS_NODEFILE", pbs_nodefile)):
        path = env.get(var)
        if path:
            try:
                return parse(Path(path).read_text())
            except OSError as err:
                raise BatchError(f"{var}={path} cannot be read: {err}") from None
    return None


def slots_here(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """(slots on this host, hosts in all) of the Grid Engine or PBS allocation this process
    runs in; None outside one, or when this host is not among its hosts."""
    import socket

    hosts = allocated(environ)
    if not hosts:
        return None
    names = {socket.gethostname(), socket.getfqdn(), "localhost"}
    short = {n.split(".")[0] for n in names}
    for host, slots in hosts:
        if host in names or host.split(".")[0] in short:
            return slots, len(hosts)
    return None
