"""Errors of the environment and of the store (issue 15, point 14): each gets one message
that says what, why and what next, and exit 2 (bad input, refused), never a traceback and
exit 1 (which means "tasks failed").

Permissions cannot be taken from root (these tests may run as root), so an unwritable folder
is injected (the OSError the kernel would give); everything else is real.
"""

from __future__ import annotations

import errno
import os
import resource
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.faults.helpers import SRC, cli

from shoal.cli.main import main

FLOW = textwrap.dedent(
    """
    import sys
    import shoal

    @shoal.task
    def one(i):
        return i

    with shoal.Workflow(sys.argv[1] if len(sys.argv) > 1 else "codes") as wf:
        one(1)
    wf.run(cpus=1)
    """
)


def _one_screen(err: str) -> None:
    assert "Traceback" not in err, err
    assert err.startswith("shoal: ") or "Error: " in err, err
    assert len(err.splitlines()) <= 25, err


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    (tmp_path / "flow.py").write_text(FLOW)
    out = cli(tmp_path, "run", "flow.py")
    assert out.returncode == 0, out.stderr
    (rundir,) = tmp_path.glob("codes-*")
    return rundir


def test_a_too_long_workflow_name(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(FLOW)
    out = cli(tmp_path, "run", "flow.py", "x" * 300)
    assert out.returncode == 2, out.stderr
    _one_screen(out.stderr)
    assert "300 bytes long" in out.stderr and "at most" in out.stderr
    assert not list(tmp_path.glob("x*"))


def test_too_few_open_files(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(FLOW)

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (12, 12))

    env = dict(os.environ, NO_COLOR="1", PYTHONPATH=SRC)
    out = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "run", "flow.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=low,
    )
    assert out.returncode == 2, out.stderr
    _one_screen(out.stderr)
    assert "ulimit -n" in out.stderr


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_an_unwritable_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    (tmp_path / "flow.py").write_text(FLOW)
    real = Path.mkdir

    def mkdir(self: Path, *a: object, **k: object) -> None:
        if self.name.startswith("codes-"):
            raise OSError(code, os.strerror(code), str(self))
        real(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["run", "flow.py"])
    assert out.exit_code == 2, out.output
    _one_screen(out.output)
    assert "cannot create a run directory" in out.output and "base=" in out.output


def test_an_unwritable_run_directory_on_resume(
    finished: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shoal.store.lock as lock

    real = os.open

    def deny(path: object, *a: object, **k: object) -> int:
        if str(path).endswith("driver.lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(lock.os, "open", deny)
    out = CliRunner().invoke(main, ["resume", str(finished)])
    assert out.exit_code == 2, out.output
    _one_screen(out.output)
    assert "must be writable" in out.output


def test_a_half_truncated_store(finished: Path) -> None:
    db = finished / "shoal.db"
    with open(db, "r+b") as fh:
        fh.truncate(db.stat().st_size // 2)
    for args in (["resume", str(finished)], ["status", str(finished)]):
        out = cli(finished.parent, *args)
        assert out.returncode == 2, (args, out.stderr)
        _one_screen(out.stderr)
        assert "malformed" in out.stderr
    assert "is damaged" in cli(finished.parent, "resume", str(finished)).stderr


def test_a_flipped_bit_that_passes_sqlites_checks(finished: Path) -> None:
    with sqlite3.connect(finished / "shoal.db") as c:  # what a flipped bit in a row does
        c.execute("UPDATE tasks SET state='p%nding'")
    out = cli(finished.parent, "resume", str(finished))
    assert out.returncode == 2, out.stderr
    _one_screen(out.stderr)
    assert "is damaged" in out.stderr and "p%nding" in out.stderr


def test_a_refused_submit_exits_2(finished: Path) -> None:
    script = finished.parent / "more.py"
    script.write_text(
        textwrap.dedent(
            """
            import shoal

            @shoal.task(cpus=999)
            def huge():
                return 1

            with shoal.Workflow("more") as wf:
                huge()
            """
        )
    )
    out = cli(finished.parent, "submit", str(finished), str(script))
    assert out.returncode == 2, (out.stdout, out.stderr)
    _one_screen(out.stderr)
    assert "999 cores" in out.stderr


def test_a_line_break_in_a_path_never_splits_an_sbatch_line(tmp_path: Path) -> None:
    odd = tmp_path / "a\nb"
    odd.mkdir()
    (odd / "flow.py").write_text(FLOW)
    out = cli(odd, "slurm", "submit", "flow.py", "--time", "10", "--dry-run")
    assert out.returncode == 2, out.stdout
    assert "#SBATCH" not in out.stdout
    assert "line break" in out.stderr
