"""The SSH server standing for a cluster (tests/infra/sshd-local.sh), a host record for it,
and shoal installed there for its user (a virtual environment from a wheel of this tree)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.remote.hosts import Host
from shoal.remote.ssh import Connection

ROOT = Path(__file__).parents[2]
INFRA = Path(__file__).parents[1] / "infra" / "sshd-local.sh"
DIR = Path(os.environ.get("SSHD_LOCAL_DIR", "/tmp/sshd-local"))
PORT = int(os.environ.get("SSHD_LOCAL_PORT", "2222"))
USER = os.environ.get("SSHD_LOCAL_USER", "cluster")


@pytest.fixture(scope="module")
def server() -> dict[str, Any]:
    """The SSH server (started here when it is not up and this is root), and its host key."""
    up = subprocess.run(["bash", str(INFRA), "status"], capture_output=True)
    if up.returncode != 0:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("no SSH server on 127.0.0.1: run tests/infra/sshd-local.sh up as root")
        started = subprocess.run(["bash", str(INFRA), "up"], capture_output=True, text=True)
        if started.returncode != 0:
            pytest.skip(f"tests/infra/sshd-local.sh up failed: {started.stderr[-500:]}")
    hostkey = (DIR / "hostkey.pub").read_text().split()
    return {"line": f"[127.0.0.1]:{PORT} {hostkey[0]} {hostkey[1]}\n"}


@pytest.fixture()
def host(server: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Host]:
    """A host record for the server: its key known, a name (so a master connection) of its
    own for each test."""
    known = tmp_path / "known_hosts"
    known.write_text(server["line"])
    key = tmp_path / "key"
    shutil.copy(DIR / "userkey", key)
    key.chmod(0o600)
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:60]
    h = Host(
        name=name,
        ssh=f"{USER}@127.0.0.1",
        port=PORT,
        identity=str(key),
        known_hosts=str(known),
        workdir=f"~/t/{name}",
    )
    yield h
    conn = Connection(h)
    conn.run(["rm", "-rf", f"t/{name}"])  # the "cluster" home outlives the test
    conn.drop()


@pytest.fixture(scope="session")
def remote_shoal(tmp_path_factory: pytest.TempPathFactory) -> str:
    """shoal installed for the cluster's user from a wheel of this tree, in ~/venv (kept
    between sessions; installed again when the wheel changed): the pre_run line that
    activates it."""
    up = subprocess.run(["bash", str(INFRA), "status"], capture_output=True)
    if up.returncode != 0:
        pytest.skip("no SSH server on 127.0.0.1 (tests/infra/sshd-local.sh up)")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        ["python", "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("shoal-*.whl")
    # numpy: the LAMMPS example's analysis (tests/remote/test_lammps.py); part of the recipe
    digest = hashlib.sha256(wheel.read_bytes() + b"+numpy").hexdigest()[:16]
    key = out / "key"
    shutil.copy(DIR / "userkey", key)
    key.chmod(0o600)
    known = out / "known_hosts"
    hostkey = (DIR / "hostkey.pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{PORT} {hostkey[0]} {hostkey[1]}\n")
    h = Host(
        name="install",
        ssh=f"{USER}@127.0.0.1",
        port=PORT,
        identity=str(key),
        known_hosts=str(known),
    )
    conn = Connection(h)
    try:
        have = conn.run(["cat", "venv/.shoal-wheel"]).stdout.strip()
        if have != digest:
            conn.put(wheel, wheel.name)
            script = (
                "python3 -m venv ~/venv && ~/venv/bin/pip install -q --force-reinstall "
                '--no-deps "$1" && ~/venv/bin/pip install -q "$1[dashboard]" numpy'
                ' && echo "$2" > ~/venv/.shoal-wheel'
            )
            done = conn.run(["sh", "-c", script, "sh", wheel.name, digest], timeout=600)
            if done.code != 0:
                pytest.fail(f"installing shoal for {USER} failed: {done.stderr[-1000:]}")
    finally:
        conn.drop()
    return "source ~/venv/bin/activate"
