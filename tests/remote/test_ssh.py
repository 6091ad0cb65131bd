"""Remote hosts over a real OpenSSH server on 127.0.0.1 (tests/infra/sshd-local.sh: a
separate local user, "cluster", whose home stands for the cluster; key login only): the
checks of ``shoal host check``, host keys, quoting, private folders, and a link cut in the
middle of a copy and between commands."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from shoal.errors import DefinitionError, RemoteError
from shoal.remote import hosts
from shoal.remote.check import check
from shoal.remote.hosts import Host
from shoal.remote.ssh import Connection

from .conftest import USER


def test_check_tries_each_part_and_says_what_is_missing(host: Host) -> None:
    steps = {s.what: s for s in check(host)}
    assert steps["ssh login"].ok and steps["work folder"].ok
    assert steps["batch system (shell)"].ok
    shoal = steps["shoal"]
    assert not shoal.ok and "shoal is not found" in shoal.said and "--pre-run" in shoal.said
    bare = "mkdir -p ~/onlysh && ln -sf /bin/sh ~/onlysh/sh && export PATH=~/onlysh"
    sge = host.but(batch="sge", pre_run=(bare,))
    batch = {s.what: s for s in check(sge)}["batch system (sge)"]
    assert not batch.ok and "qsub" in batch.said and "--pre-run" in batch.said


def test_a_work_folder_is_created_private_and_expanded_there(host: Host) -> None:
    conn = Connection(host)
    where = conn.private_folder("$HOME/t/private folder")
    assert where == f"/home/{USER}/t/private folder"
    mode = conn.run(["stat", "-c", "%a %U", where]).stdout.split()
    assert mode == ["700", USER]


def test_hostile_names_stay_names(host: Host) -> None:
    conn = Connection(host)
    base = conn.private_folder(host.workdir)
    names = ["a; touch pwned1", "$(touch pwned2)", "`touch pwned3`", "new\nline", "it's", "-x"]
    listing = 'cd "$1" && shift && mkdir -- "$@" && find . -mindepth 1 -maxdepth 1 -printf "%f\\0"'
    out = conn.run(["sh", "-c", listing, "sh", base, *names])
    assert out.code == 0, out.stderr
    assert set(out.stdout.split("\0")) - {""} == set(names)  # each made as named, nothing else
    home = conn.run(["ls", "-a", base, f"/home/{USER}"]).stdout
    assert "pwned" not in home.replace("pwned1", "").replace("pwned2", "").replace("pwned3", "")


def test_an_unknown_host_key_is_refused_unless_asked(host: Host, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    stranger = host.but(known_hosts=str(empty), name=host.name + "-k")
    with pytest.raises(RemoteError, match="host key is not among the known ones"):
        Connection(stranger, retries=0).run(["true"])
    assert empty.read_text() == ""  # nothing was trusted silently
    trusting = stranger.but(accept_new_host_key=True, name=host.name + "-a")
    try:
        assert Connection(trusting).run(["true"]).code == 0
        assert "ssh-ed25519" in empty.read_text()  # recorded, as the user asked
    finally:
        Connection(trusting).drop()


def test_a_refused_login_and_an_unreachable_host_say_so(host: Host, tmp_path: Path) -> None:
    other = tmp_path / "otherkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = host.but(identity=str(other), name=host.name + "-w")
    with pytest.raises(RemoteError, match="the login was refused"):
        Connection(wrong, retries=0).run(["true"])
    closed = host.but(port=1, name=host.name + "-c")
    with pytest.raises(RemoteError, match=r"cannot connect after 2 tries: .*Connection refused"):
        Connection(closed, retries=1).run(["true"])


def _master_pid(conn: Connection) -> int:
    out = subprocess.run(
        ["ssh", *conn.options(), "-O", "check", conn.host.ssh], capture_output=True, text=True
    )
    found = re.search(r"pid=(\d+)", out.stderr)
    assert found, out.stderr
    return int(found[1])


def test_commands_go_through_one_master_and_survive_it_being_killed(host: Host) -> None:
    conn = Connection(host)
    assert conn.run(["true"]).code == 0
    assert conn.master()
    first = _master_pid(conn)
    assert conn.run(["echo", "again"]).stdout == "again\n"
    assert _master_pid(conn) == first  # the same master carried it
    os.kill(first, 9)  # the link is cut
    assert conn.run(["echo", "after"]).stdout == "after\n"  # a new master, transparently
    assert _master_pid(conn) != first


def test_a_copy_cut_in_the_middle_is_resumed_whole(host: Host, tmp_path: Path) -> None:
    """The master connection is killed while rsync writes the file there (its temporary
    file is seen by a second connection); the copy is tried again and arrives whole."""
    conn = Connection(host)
    base = conn.private_folder(host.workdir)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(160 * 1024 * 1024))
    want = hashlib.sha256(big.read_bytes()).hexdigest()
    conn.run(["true"])
    pid = _master_pid(conn)
    watcher = Connection(host.but(name=host.name + "-watch"))
    cut = threading.Event()

    def cut_when_writing() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen = watcher.run(["ls", "-a", base]).stdout
            if ".big.bin." in seen:  # rsync's temporary file: the copy is under way
                _kill(pid)
                cut.set()
                return
            if "big.bin" in seen.split():
                return  # too late: it arrived whole already

    killer = threading.Thread(target=cut_when_writing)
    killer.start()
    try:
        conn.put(big, f"{base}/big.bin")
    finally:
        killer.join()
        watcher.drop()
    assert cut.is_set(), "the copy ended before the link could be cut"
    got = conn.run(["sha256sum", f"{base}/big.bin"]).stdout.split()[0]
    assert got == want
    back = tmp_path / "back.bin"
    conn.get(f"{base}/big.bin", back)
    assert hashlib.sha256(back.read_bytes()).hexdigest() == want


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)


def test_host_records_are_checked_kept_private_and_replaced_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "cfg"))
    with pytest.raises(DefinitionError, match="nothing a shell would run"):
        hosts.make(name="x", ssh="me@x", workdir="$(rm -rf ~)")
    with pytest.raises(DefinitionError, match="no leading -"):
        hosts.make(name="x", ssh="-oProxyCommand=evil")
    with pytest.raises(DefinitionError, match="Key=value"):
        hosts.make(name="x", ssh="me@x", ssh_options=("-oProxyCommand=evil",))
    h = hosts.make(name="perl", ssh="me@perlmutter", batch="slurm", workdir="$SCRATCH/shoal")
    path = hosts.save(h)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    with pytest.raises(DefinitionError, match="--replace"):
        hosts.save(h)
    hosts.save(h.but(account="m1234"), replace=True)
    assert hosts.find("perl").account == "m1234" and hosts.find("perl").batch == "slurm"
    with pytest.raises(DefinitionError, match=r"known: perl"):
        hosts.find("nersc")
    hosts.remove("perl")
    assert hosts.load() == {}


def test_a_project_file_of_hosts_beside_the_users_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``shoal-hosts.yaml`` in the current folder adds a project's hosts (readable by all:
    it holds no secret); a name defined there and in the user's own file is refused, so a
    project cannot redirect a host of the user's."""
    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.chdir(tmp_path)
    mine = hosts.make(name="perl", ssh="me@perlmutter", batch="slurm")
    hosts.save(mine)
    shared = hosts.make(name="group", ssh="me@frontier", batch="slurm", account="mat123")
    path = hosts.save(shared, project=True)
    assert path == tmp_path / hosts.PROJECT and oct(path.stat().st_mode & 0o777) == "0o644"
    assert set(hosts.load()) == {"perl", "group"} and hosts.find("group").account == "mat123"
    assert hosts.where("group") == path and hosts.where("perl").name == "hosts.yaml"
    with pytest.raises(DefinitionError, match=r"defined in .*hosts.yaml already"):
        hosts.save(mine, project=True)
    path.write_text(path.read_text() + "perl:\n  ssh: evil@elsewhere\n")
    with pytest.raises(DefinitionError, match=r"host 'perl' is defined in .* and in .*"):
        hosts.load()
    path.write_text("group: [not, a, mapping]\n")
    with pytest.raises(DefinitionError, match=r"shoal-hosts.yaml: host 'group'"):
        hosts.load()
    path.unlink()
    monkeypatch.chdir(tmp_path / "cfg")  # elsewhere: the project's hosts are not there
    assert set(hosts.load()) == {"perl"}


def test_shoal_host_add_list_check_remove(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from shoal.cli.main import main

    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "cfg"))
    cli = CliRunner()
    bad = cli.invoke(main, ["host", "add", "x", "--ssh", "me@x", "--workdir", "a;b"])
    assert bad.exit_code == 2 and "nothing a shell would run" in bad.output
    name = host.name + "-cli"
    args = ["host", "add", name, "--ssh", host.ssh, "--port", str(host.port)]
    args += ["-i", str(host.identity), "--known-hosts", str(host.known_hosts)]
    args += ["--batch", "shell", "--workdir", host.workdir, "--pre-run", "export A=1"]
    added = cli.invoke(main, args)
    assert added.exit_code == 0 and f"shoal host check {name}" in added.output
    listed = cli.invoke(main, ["host", "list"])
    assert name in listed.output and "shell" in listed.output
    checked = cli.invoke(main, ["host", "check", name, "--batch-mode"])
    assert checked.exit_code == 1  # no shoal on the "cluster"
    assert "ok   ssh login" in checked.output and "FAIL shoal" in checked.output
    Connection(hosts.find(name)).drop()
    assert cli.invoke(main, ["host", "remove", name]).exit_code == 0
    assert name not in cli.invoke(main, ["host", "list"]).output
