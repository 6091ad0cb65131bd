"""Commands on a remote host and files to and from it, through the system's own OpenSSH and
rsync, so that agents, ProxyJump, Kerberos and one-time passwords work as the user's ``ssh``
does. One master connection per host (ControlMaster/ControlPersist) carries every command, so
a one-time password is asked once. Nothing here listens for connections.

A command goes to the remote shell as one line built with shell quoting from an argument
list, so a name such as ``a; rm -rf ~`` stays a name. A link that drops (ssh's own exit code
255 with a transient cause, rsync's connection errors) is retried with back-off; every
operation shoal sends is safe to repeat. A refused host key or login is not retried: the
message says what to do.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from shoal.batch.base import Output
from shoal.errors import RemoteError
from shoal.remote.hosts import Host

RETRIES = 4  # tries after the first, for a dropped link
BACKOFF = 0.5  # seconds before the first retry; doubled each time
PERSIST = "10m"  # how long an idle master connection stays
# ssh's words for failures that another try may cure
TRANSIENT = (
    "Connection refused",
    "Connection timed out",
    "Connection reset",
    "Connection closed",
    "closed by remote host",
    "Broken pipe",
    "timed out",
    "mux_client",
    "Control socket",
    "ControlSocket",
    "Network is unreachable",
    "No route to host",
    "kex_exchange_identification",
)
RSYNC_TRANSIENT = (10, 12, 23, 30, 35, 255)  # socket, protocol stream, partial, timeouts


def control_dir() -> Path:
    """Where master connections' sockets live: short (a socket path is at most 108 bytes)
    and private."""
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/shoal-{os.getuid()}"
    path = Path(base) / "shoal-ssh"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


class Connection:
    """Commands and files on ``host``: ``conn(argv)`` runs a command there (a batch
    system's :class:`~shoal.batch.base.Runner`)."""

    def __init__(self, host: Host, retries: int = RETRIES, interactive: bool = False) -> None:
        self.host = host
        self.retries = retries
        self.interactive = interactive  # may ask for a password or a one-time code
        key = hashlib.sha1(f"{host.name}\0{host.ssh}\0{host.port}".encode()).hexdigest()[:16]
        self.socket = control_dir() / key

    def options(self) -> list[str]:
        """ssh's options for this host (after ``ssh``, before the destination)."""
        h = self.host
        opts = [
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self.socket}",
            "-o", f"ControlPersist={PERSIST}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4",
            "-o", "ConnectTimeout=20",
            "-o", f"StrictHostKeyChecking={'accept-new' if h.accept_new_host_key else 'yes'}",
        ]  # fmt: skip
        if not self.interactive:
            opts += ["-o", "BatchMode=yes"]
        if h.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={h.known_hosts}"]
        if h.port:
            opts += ["-p", str(h.port)]
        if h.identity:
            opts += ["-i", h.identity, "-o", "IdentitiesOnly=yes"]
        if h.proxy_jump:
            opts += ["-J", h.proxy_jump]
        for o in h.ssh_options:
            opts += ["-o", o]
        return opts

    def line(self, argv: Sequence[str], environment: bool = False) -> str:
        """The remote shell's line for ``argv``; with ``environment``, in a login shell
        after the host's ``pre_run`` lines (modules, virtual environments)."""
        command = shlex.join(argv)
        if not environment:
            return command
        script = "\n".join([*self.host.pre_run, command])
        return "bash -lc " + shlex.quote(script)

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> Output:
        return self.run(argv, stdin)

    def run(
        self,
        argv: Sequence[str],
        stdin: str | None = None,
        timeout: float = 300,
        environment: bool = False,
    ) -> Output:
        """Run ``argv`` on the host; its exit code and output. ssh's own failures raise
        :class:`RemoteError` (after retries, when they may pass)."""
        cmd = ["ssh", *self.options(), self.host.ssh, "--", self.line(argv, environment)]
        for attempt in range(self.retries + 1):
            try:
                done = subprocess.run(
                    cmd, input=stdin, capture_output=True, text=True, timeout=timeout
                )
            except FileNotFoundError:
                raise RemoteError("ssh was not found: install OpenSSH's client") from None
            except subprocess.TimeoutExpired:
                raise RemoteError(
                    f"{self.host.name}: {shlex.join(argv)[:200]} did not finish in {timeout:g} s"
                ) from None
            if done.returncode != 255 or not _ssh_failed(done.stderr):
                return Output(done.returncode, done.stdout, done.stderr)
            if not _transient(done.stderr) or attempt == self.retries:
                raise RemoteError(self.explain(done.stderr))
            self.drop()
            time.sleep(BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    def explain(self, said: str) -> str:
        """One screen on why ssh failed, and what to do."""
        h = self.host
        text = said.strip().splitlines()
        last = text[-1] if text else "no message"
        where = f"{h.name} ({h.ssh}{f' port {h.port}' if h.port else ''})"
        if "Host key verification failed" in said or "REMOTE HOST IDENTIFICATION" in said:
            return (
                f"{where}: its host key is not among the known ones (or it changed). Check "
                f"the key with the site, then connect once with ssh to record it, or add the "
                f"host with --accept-new-host-key to trust a key seen for the first time. "
                f"ssh said: {last}"
            )
        if "Permission denied" in said or "Too many authentication failures" in said:
            prompt = "" if self.interactive else "; a password or one-time code needs a terminal"
            return (
                f"{where}: the login was refused. Check that `ssh {h.ssh}` works by itself "
                f"(your key, agent or identity file{prompt}). ssh said: {last}"
            )
        if "Could not resolve hostname" in said:
            return f"{where}: no such host name. Check the name (ssh said: {last})"
        return (
            f"{where}: cannot connect after {self.retries + 1} tries: {last}. Is the host "
            "up and reachable from here (VPN, ProxyJump)?"
        )

    def drop(self) -> None:
        """Close the master connection (a stale one after a dropped link)."""
        subprocess.run(
            ["ssh", *self.options(), "-O", "exit", self.host.ssh],
            capture_output=True,
            timeout=30,
        )

    def forward(self, local: int, remote: int, cancel: bool = False) -> None:
        """Forward 127.0.0.1:``local`` here to 127.0.0.1:``remote`` there, through the master
        connection (``cancel``: stop it)."""
        self.run(["true"])  # a master to ask
        spec = f"127.0.0.1:{local}:127.0.0.1:{remote}"
        done = subprocess.run(
            ["ssh", *self.options(), "-O", "cancel" if cancel else "forward", "-L", spec,
             self.host.ssh],
            capture_output=True,
            text=True,
            timeout=30,
        )  # fmt: skip
        if done.returncode != 0 and not cancel:
            raise RemoteError(
                f"{self.host.name}: cannot forward port {local} here to {remote} there: "
                f"{done.stderr.strip()} (is port {local} taken here?)"
            )

    def master(self) -> bool:
        """Whether a master connection is up."""
        out = subprocess.run(
            ["ssh", *self.options(), "-O", "check", self.host.ssh],
            capture_output=True,
            timeout=30,
        )
        return out.returncode == 0

    def _rsync(self, source: str | list[str], dest: str, timeout: float, *flags: str) -> None:
        ssh = shlex.join(["ssh", *self.options()])
        sources = [source] if isinstance(source, str) else source
        cmd = ["rsync", "-a", "--partial", "--protect-args", *flags, "-e", ssh, *sources, dest]
        for attempt in range(self.retries + 1):
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except FileNotFoundError:
                raise RemoteError("rsync was not found: install it here and on the host") from None
            except subprocess.TimeoutExpired:
                raise RemoteError(f"copying to {dest} took over {timeout:g} s") from None
            if done.returncode == 0:
                return
            if done.returncode == 255 and _ssh_failed(done.stderr) and not _transient(done.stderr):
                raise RemoteError(self.explain(done.stderr))
            if done.returncode not in RSYNC_TRANSIENT or attempt == self.retries:
                full = "No space left on device" in done.stderr or "Disk quota" in done.stderr
                hint = (
                    " The disk (or quota) there is full: free space, or use another folder."
                    if full
                    else ""
                )
                raise RemoteError(
                    f"{self.host.name}: copying {' '.join(sources)[:300]} to {dest} failed: "
                    f"{done.stderr.strip()[-500:] or done.returncode}.{hint}"
                )
            self.drop()
            time.sleep(BACKOFF * 2**attempt)

    def put(self, local: Path | str, remote: str, timeout: float = 3600) -> None:
        """Copy a file or a folder (with a trailing /: its contents) to ``remote`` there;
        a copy cut off is resumed (rsync --partial)."""
        self._rsync(str(local), f"{self.host.ssh}:{remote}", timeout)

    def put_tree(
        self, root: Path, files: Sequence[str], remote: str, timeout: float = 3600
    ) -> None:
        """Copy ``files`` (relative to ``root``) into the folder ``remote`` there, in the
        same layout."""
        sources = [f"{root}/./{f}" for f in files]
        self._rsync(sources, f"{self.host.ssh}:{remote}/", timeout, "--relative")

    def runner(self, environment: bool = True) -> Callable[..., Output]:
        """A batch system's runner on this host (after ``pre_run``, by default: batch
        commands often come with a module)."""

        def run(argv: Sequence[str], stdin: str | None = None) -> Output:
            return self.run(argv, stdin, environment=environment)

        return run

    def get(self, remote: str, local: Path | str, timeout: float = 3600) -> None:
        """Copy ``remote`` there to ``local`` here."""
        self._rsync(f"{self.host.ssh}:{remote}", str(local), timeout)

    def private_folder(self, path: str) -> str:
        """Create ``path`` there (and its parents), readable by the user only; its absolute
        path (``$VARIABLES`` and ``~`` expanded there)."""
        script = 'umask 077 && mkdir -p -- "$1" && chmod 700 -- "$1" && cd -- "$1" && pwd -P'
        out = self.run(["sh", "-c", script, "sh", self.expand(path)])
        if out.code != 0:
            raise RemoteError(
                f"{self.host.name}: cannot create {path}: {out.stderr.strip() or out.code}. "
                "Is the disk full, or the folder someone else's?"
            )
        return out.stdout.strip()

    def expand(self, path: str) -> str:
        """``path`` with its ``$VARIABLES`` and leading ``~`` as the host sees them (the host
        record refuses anything else a shell would run)."""
        if "$" not in path and not path.startswith("~"):
            return path
        text = path.replace('"', '\\"')
        if text.startswith("~"):
            text = "$HOME" + text[1:]
        out = self.run(["sh", "-c", f'printf "%s" "{text}"'])
        if out.code != 0 or not out.stdout:
            raise RemoteError(f"{self.host.name}: cannot expand {path!r}: {out.stderr.strip()}")
        return out.stdout


def _ssh_failed(stderr: str) -> bool:
    """Whether exit code 255 came from ssh itself (it says why) rather than the command."""
    return any(
        w in stderr
        for w in (*TRANSIENT, "ssh:", "Host key", "Permission denied", "Could not resolve")
    )


def _transient(stderr: str) -> bool:
    return any(w in stderr for w in TRANSIENT) and "Permission denied" not in stderr
