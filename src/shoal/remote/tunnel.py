"""``shoal remote dashboard RUN``: the dashboard of a remote run, served on the host (bound
to its 127.0.0.1, every request needing its token, since a login node is shared) and
reached through the master SSH connection's port forward. Nothing listens here but the
forward on this machine's 127.0.0.1."""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

from shoal.errors import RemoteError
from shoal.remote.ssh import Connection
from shoal.remote.submit import in_folder

START = (
    'cd "$1" && rm -f dashboard.out && umask 077 && '
    "{ nohup shoal dashboard . --port 0 --private > dashboard.out 2>&1 < /dev/null & }"
    " && echo $!"
)


@dataclass
class Tunnel:
    conn: Connection
    pid: str  # the dashboard there
    remote_port: int
    local_port: int
    token: str

    @property
    def link(self) -> str:
        return f"http://127.0.0.1:{self.local_port}/#token={self.token}"

    def close(self) -> None:
        """Stop the forward and the dashboard there."""
        self.conn.forward(self.local_port, self.remote_port, cancel=True)
        self.conn.run(["kill", self.pid])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_tunnel(conn: Connection, folder: str, local_port: int = 0, wait: float = 60) -> Tunnel:
    """Start the dashboard in ``folder`` there, and forward a port here to it."""
    started = conn.run(["sh", "-c", START, "sh", folder], environment=True)
    pid = started.stdout.strip()
    if started.code != 0 or not pid.isdigit():
        raise RemoteError(f"{conn.host.name}: cannot start the dashboard: {started.stderr.strip()}")
    deadline = time.monotonic() + wait
    said = ""
    while time.monotonic() < deadline:
        said = conn.run(in_folder(folder, ["cat", "dashboard.out"])).stdout
        found = re.search(r"open: http://127\.0\.0\.1:(\d+)/#token=(\S+)", said)
        if found:
            port = local_port or free_port()
            conn.forward(port, int(found[1]))
            return Tunnel(conn, pid, int(found[1]), port, found[2])
        if "shoal:" in said or "Error" in said:
            break
        time.sleep(0.3)
    conn.run(["kill", pid])
    raise RemoteError(
        f"{conn.host.name}: the dashboard did not start ({said.strip()[-400:] or 'no word'}). "
        'Is the dashboard extra installed there (pip install "shoal[dashboard]")?'
    )
