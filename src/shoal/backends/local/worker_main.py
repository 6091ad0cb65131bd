"""A persistent worker process: runs tasks one after another, no interpreter start each.

Started by the local backend as ``python -m shoal.backends.local.worker_main FD [HOLD COMMAND_HOLD
[PIDFILE]]``, or forked by the zygote with the same arguments, it talks to the driver over
one socket (``wire.Wire``). Messages in:

* ``("run", [(task, attempt, function, fn | None, payload, cores, env_id, env, taskdir,
  queued, command, follows)])`` queues tasks, run in order. A function and an environment are
  sent once per worker, then named by id. A payload is what ``execute.arguments`` reads: the
  arguments, or the arguments with the small outputs their references need. ``command`` is
  ``None`` for a Python task and ``(argv, shell, workdir)`` for a command, whose ``env`` is
  then its whole environment, as bytes. ``follows`` names the task a follower waits for: it
  runs only if that task ran just before it here and succeeded without a Response, and reads
  that task's output from there; otherwise it is dropped (replied ``dropped``, after every
  reply held before it).
* ``("drop", task, attempt)`` removes a queued task that has not started.
* ``("kill", task, attempt)`` stops a running command (SIGTERM to its process group, SIGKILL
  after GRACE seconds), or drops it if it has not started (a running Python task is stopped
  by killing the worker).
* ``("stop",)``.

Replies: ``("done", [(task, attempt, ok, result, kind, error, started, ended, exit_code),
...])`` (several per message, see HOLD), ``("dropped", task, attempt)``, and ``("ready",)``
once at start.

What runs now: before a task starts the worker notes ``pid task attempt`` in its marker file
(``workers/<n>.pid``; pid is 0 for a Python task, the command's once it is spawned) and clears
it when the task ends. The marker is what a death is charged by: should the worker die, the
driver reads it and fails exactly the task that was executing, and gives every other task it
had handed over back unstarted. Replies held to share a message are always sent before a
Python task starts (it cannot be interrupted to send them), so a task's outcome is never held
past the start of the next Python task, and a dead worker's marker task is the first one the
driver has no reply for.

Commands run here, not in the driver, so that starting them does not compete with the driver
for its interpreter lock: a fork and exec of a short command is mostly Python work in the
parent. A command gets its own session (its process group is killed when it ends, with
whatever it left in the background); the worker waits for it on a pidfd together with the
connection, so that a kill, or more work, arrives while it runs.

Output: file descriptors 1 and 2 point at per-worker spool files, which commands inherit. After
each task the worker moves whatever was printed into ``tasks/<id>/stdout`` and ``stderr``; a
silent task costs no file at all, which keeps tiny tasks cheap.
"""

from __future__ import annotations

import errno
import os
import pickle
import select
import signal
import sys
import time
from collections import deque

from shoal.backends import execute
from shoal.backends.execute import (
    GRACE,
    attempt_vars_bytes,
    call,
    command_reply,
    killpg,
    pin,
    start_error,
)
from shoal.backends.local.wire import Wire

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# Replies of tiny tasks share messages: a finished task's reply is held while the next queued
# task is a prefetched command (the scheduler queues only tasks it expects to take
# milliseconds), for at most COMMAND_HOLD seconds, or until BATCH replies are held. While a
# command runs, held replies go out when due. A reply is never held when nothing is queued
# behind (a dependent never waits on a quiet worker), when it is a failure, or when the next
# task is a Python task: that one cannot be interrupted to send them, and may turn out long,
# so the replies go first (an outcome is never held past the start of a task that could be
# long, and a task queued behind it starts its timeout when it starts). HOLD is that bound
# for Python tasks: 0, they are not held. Starting a command costs about half a millisecond,
# so without a hold the driver would wake every other command; 20 ms is the default prefetch
# window, the work queued behind it (measured on W2: 8 ms 0.90x, 16 ms 0.92x, 32 ms 0.95x of
# the reference). The driver passes both (LocalBackend.hold).
HOLD = 0.0
COMMAND_HOLD = 0.02
BATCH = 64

# True once this process is a child subreaper (execute.subreaper): the zygote makes each
# worker it forks one, before it runs this module's main.
REAPING = False

# True in a process started with -S (the zygote, and workers it forked early) until it has
# read its site-packages (.pth files, sitecustomize): that is a third of an interpreter's
# start here, and commands never need it, so it happens before the first Python task.
SITE_PENDING = False


def load_site() -> None:
    """Do what ``python`` without -S does at start, once (see SITE_PENDING)."""
    global SITE_PENDING
    if SITE_PENDING:
        SITE_PENDING = False
        import site

        site.main()


def _drain(fd: int, taskdir: str, name: str) -> int:
    """Append what was written to spool ``fd`` to ``taskdir/name`` (where earlier attempts'
    output stays); the offset in that file where it begins, or -1 if nothing was written."""
    size = os.lseek(fd, 0, os.SEEK_CUR)
    if size <= 0:
        return -1
    os.makedirs(taskdir, exist_ok=True)
    with open(os.path.join(taskdir, name), "ab") as out:
        start = out.tell()
        os.lseek(fd, 0, os.SEEK_SET)
        left = size
        while left > 0:
            chunk = os.pread(fd, min(left, 1 << 20), size - left)
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    return start


MARKER = 36  # bytes of the marker: three numbers of 11 digits, spaces, a newline


class _Marker:
    """The marker file, mapped into memory: a note costs a copy of 36 bytes, not a system
    call (it is written twice per task). The driver reads the file; a shared mapping is the
    file's own page cache, so it reads what was written last, also after this process died."""

    def __init__(self, path: str | None) -> None:
        self.map = None
        if path:
            import mmap

            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.ftruncate(fd, MARKER)
                self.map = mmap.mmap(fd, MARKER)
            finally:
                os.close(fd)
        self.note(0, 0, 0)

    def note(self, pid: int, task: int, attempt: int) -> None:
        """What runs now: a command's pid (0: none, or a Python task), and the task and
        attempt executing (0 0: none)."""
        if self.map is not None:
            self.map[:MARKER] = b"%11d %11d %11d\n" % (pid, task, attempt)


def running(path: str) -> tuple[int, int, int]:
    """``(pid, task, attempt)`` from a worker's marker file: the command it ran (pid 0: none)
    and the task executing (task 0: none). All 0 if the file is missing or unreadable."""
    try:
        with open(path, "rb") as fh:
            pid, task, attempt = (int(x) for x in fh.read(MARKER).split())
            return pid, task, attempt
    except (OSError, ValueError):
        return 0, 0, 0


def spool_of(workers: str, task: int, attempt: int) -> tuple[str, str] | None:
    """The spool files (stdout, stderr) of the worker in the folder ``workers`` (a run's
    ``workers/``) whose marker says it executes ``(task, attempt)``; None if none does. What
    a running task printed is there until it ends (``shoal logs --follow``)."""
    try:
        names = os.listdir(workers)
    except OSError:
        return None
    for name in names:
        if name.endswith(".pid") and running(os.path.join(workers, name))[1:] == (task, attempt):
            stem = os.path.join(workers, name[:-4])
            return stem + ".out", stem + ".err"
    return None


class _Stop(Exception):
    """The driver said stop, or went away: end the worker."""


class Worker:
    def __init__(
        self,
        conn: Wire,
        hold: float = HOLD,
        command_hold: float = COMMAND_HOLD,
        pidfile: str | None = None,
    ) -> None:
        self.conn = conn
        self.holds = (hold, command_hold)
        # The pid of the command running now (0: none), for the driver to stop it should
        # this worker die: the command leads a session of its own, so nothing else would.
        self.marker = _Marker(pidfile)
        self.functions: dict[int, Callable[..., Any]] = {}
        self.payloads: dict[int, bytes] = {}  # pickled functions not loaded yet
        self.envs: dict[int, dict[str, str]] = {}
        self.command_envs: dict[int, dict[bytes, bytes]] = {}
        self.pending: deque[tuple[Any, ...]] = deque()
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        # The spool files behind descriptors 1 and 2, kept to restore them should a task
        # close or redirect them: descriptors of our own, and the files' inode numbers.
        self.spools = [os.dup(1), os.dup(2)]
        self.inos = [os.fstat(1).st_ino, os.fstat(2).st_ino]
        self.kill: tuple[int, int] | None = None  # a "kill" for the running command
        self.found: dict[tuple[str, bytes], str] = {}  # executables found on a PATH
        self.home = os.getcwd()
        self.replies: list[tuple[Any, ...]] = []  # held, to share one message
        # The task run last: (id, succeeded without a Response, its pickled output).
        self.last: tuple[int, bool, bytes | None] | None = None
        self.due = 0.0  # monotonic time by which the held replies go out

    def receive(self) -> None:
        """Handle one message (blocking until there is one)."""
        try:
            msg = pickle.loads(self.conn.recv_bytes())
        except EOFError:
            raise _Stop from None
        if msg[0] == "stop":
            raise _Stop
        if msg[0] == "run":
            # Functions and environments are sent once per worker, with the first task that
            # needs them: keep them now, since that task may be dropped before it runs.
            for item in msg[1]:
                if item[3] is not None:
                    self.payloads[item[2]] = item[3]
                if item[7] is not None:
                    (self.envs if item[10] is None else self.command_envs)[item[6]] = item[7]
            self.pending.extend(msg[1])
        elif msg[0] == "kill" and not self.drop(msg[1], msg[2]):  # not queued: running
            self.kill = (msg[1], msg[2])
        elif msg[0] == "drop":
            self.drop(msg[1], msg[2])

    def drop(self, task: int, attempt: int) -> bool:
        """Remove a queued task that has not started (True), saying so to the driver."""
        for item in self.pending:
            if item[0] == task and item[1] == attempt:
                self.pending.remove(item)
                self.conn.send_bytes(pickle.dumps(("dropped", task, attempt)))
                return True
        return False

    def flush(self) -> None:
        """Send the held replies."""
        self.conn.send_bytes(pickle.dumps(("done", self.replies), protocol=5))
        self.replies = []

    def run(self) -> None:
        env_now: dict[str, str] = {}
        cores_now: list[int] | None = None
        pending = self.pending
        while True:
            if self.replies and (
                not pending
                or not pending[0][9]  # the next task was not prefetched: it may be long
                or pending[0][10] is None  # a Python task: it cannot be interrupted
                or not self.replies[-1][2]  # a failure
                or len(self.replies) >= BATCH
                or time.monotonic() >= self.due
            ):
                self.flush()
            # Take every message that is already here (blocking only when there is no work),
            # so a "drop" reaches a queued task before it starts.
            while not pending or self.conn.poll():
                self.receive()
            item = pending.popleft()
            task, attempt, fid, _, payload, cores, env_id, _, taskdir = item[:9]
            command, follows = item[10], item[11]
            if command is None and self.replies:  # it came while we waited: as above
                self.flush()
            last = self.last
            if follows is not None and (last is None or last[0] != follows or not last[1]):
                # What it follows did not succeed here: the driver takes it back. Say so after
                # that task's own reply, so that the driver sees them in that order.
                self.last = (task, False, None)
                if self.replies:
                    self.flush()
                self.conn.send_bytes(pickle.dumps(("dropped", task, attempt)))
                continue
            if cores != cores_now:
                cores_now = cores
                pin(cores, {})
            self.marker.note(0, task, attempt)
            if command is not None:
                reply: tuple[Any, ...] = self.command(
                    task, attempt, command, self.command_envs[env_id], taskdir
                )
            else:
                if SITE_PENDING:
                    load_site()
                env = self.envs[env_id]
                if env is not env_now:  # change only what differs from the previous task
                    for key, value in env.items():
                        if env_now.get(key) != value:
                            os.environ[key] = value
                    for key in env_now.keys() - env.keys():
                        os.environ.pop(key, None)
                    env_now = env
                # Not in os.environ: glibc's setenv keeps every distinct value it was ever
                # given, so per-task values there leak about 100 bytes a task. Tasks call
                # shoal.current().
                execute.CURRENT = execute.Current(task, attempt, taskdir)
                local = last[2] if follows is not None and last is not None else None
                reply = self.python(fid, payload, taskdir, local)
            if not pending:  # else the next task's note replaces it
                self.marker.note(0, 0, 0)
            if not self.replies:
                self.due = time.monotonic() + self.holds[command is not None]
            self.replies.append((task, attempt, *reply))
            self.last = (task, bool(reply[0]) and reply[2] != "response", reply[1])

    def python(
        self, fid: int, payload: bytes, taskdir: str, local: bytes | None
    ) -> tuple[Any, ...]:
        """Run a Python task; whatever happens, the reply says it, and the worker lives on."""
        fn = self.functions.get(fid)
        if fn is None:
            started = time.time()
            try:
                import cloudpickle

                fn = self.functions[fid] = cloudpickle.loads(self.payloads[fid])
                del self.payloads[fid]
            except BaseException as err:  # a module missing here, say: the task's failure
                why = f"cannot load the task's function in the worker: {type(err).__name__}: {err}"
                return False, None, "error", why, started, time.time(), None
        reply = (*call(fn, payload, taskdir, local), None)
        trouble = self.keep_output(taskdir)
        if trouble and reply[0]:  # it returned, but what it printed is lost
            why = f"the task's output could not be saved in {taskdir}: {trouble}"
            return False, None, "error", why, reply[4], reply[5], None
        return reply

    def keep_output(self, taskdir: str) -> str:
        """Move what a task printed into its folder, after mending what it may have broken:
        closed ``sys.stdout``/``sys.stderr``, closed or redirected descriptors 1 and 2. The
        reason it could not be saved (a full disk, say), or ""."""
        inos = self.inos
        try:  # the usual case, cheaply: nothing broken (it runs after every task)
            sys.stdout.flush()
            sys.stderr.flush()
            intact = os.fstat(1).st_ino == inos[0] and os.fstat(2).st_ino == inos[1]
        except Exception:
            intact = False
        if not intact:
            self.mend()
        try:
            _drain(1, taskdir, "stdout")
            _drain(2, taskdir, "stderr")
        except OSError as err:
            for fd in (1, 2):  # what is kept must not go to the next task
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
            return str(err)
        return ""

    def mend(self) -> None:
        """Give back descriptors 1 and 2 their spool files, and Python streams on them."""
        for fd, saved, ino in zip((1, 2), self.spools, self.inos, strict=True):
            try:
                same = os.fstat(fd).st_ino == ino
            except OSError:
                same = False
            if not same:
                os.dup2(saved, fd)
        for name, fd in (("stdout", 1), ("stderr", 2)):
            try:
                getattr(sys, name).flush()
            except Exception:  # closed, or replaced by something without flush
                setattr(sys, name, open(fd, "w", closefd=False))  # noqa: SIM115

    def command(
        self,
        task: int,
        attempt: int,
        command: tuple[list[str], bool, str | None],
        base: dict[bytes, bytes],
        taskdir: str,
    ) -> tuple[Any, ...]:
        argv, shell, workdir = command
        line = ["/bin/sh", "-c", argv[0]] if shell else argv
        env = {**base, **attempt_vars_bytes(task, attempt, taskdir)}
        started = time.time()
        self.kill = None
        try:
            pid = self.spawn(line, env, workdir)
        except OSError as e:
            return False, None, "exit", start_error(e, argv, workdir), started, time.time(), 127
        except Exception as e:  # anything else must still come back as this task's failure
            msg = f"cannot start the process: {type(e).__name__}: {e}"
            return False, None, "error", msg, started, time.time(), None
        self.marker.note(pid, task, attempt)
        try:
            code = self.wait(pid, (task, attempt))
        finally:
            killpg(pid, signal.SIGKILL)  # what it left in its process group
            self.marker.note(0, task, attempt)
        ended = time.time()
        try:
            start = _drain(1, taskdir, "stdout")
            _drain(2, taskdir, "stderr")
        except OSError as err:  # a full disk, say: the command's failure, not the worker's
            for fd in (1, 2):
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
            why = f"the command's output could not be saved in {taskdir}: {err}"
            return False, None, "error", why, started, ended, code
        return command_reply(argv, code, taskdir, start, started, ended)

    def spawn(self, line: list[str], env: dict[bytes, bytes], workdir: str | None) -> int:
        """Start a command in a session of its own, stdin from /dev/null, stdout and stderr
        the spool files, pinned as this worker is. posix_spawn costs about half the CPU of
        subprocess.Popen here (no Python between the fork and the exec); it cannot change
        directory, so the worker (one thread) steps into ``workdir`` around it."""
        path = self.executable(line[0], env)
        if workdir:
            os.chdir(workdir)
        try:
            return os.posix_spawn(
                path, line, env, setsid=True, file_actions=[(os.POSIX_SPAWN_DUP2, self.devnull, 0)]
            )
        except OSError as e:
            if e.filename == path:
                e.filename = line[0]
            raise
        finally:
            if workdir:
                os.chdir(self.home)

    def executable(self, name: str, env: dict[bytes, bytes]) -> str:
        """``name`` found on the command's own PATH, as subprocess does (remembered)."""
        if "/" in name:
            return name
        search = env.get(b"PATH", os.defpath.encode())
        key = (name, search)
        hit = self.found.get(key)
        if hit is None:
            for folder in os.fsdecode(search).split(os.pathsep):
                candidate = os.path.join(folder or ".", name)
                if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                    hit = self.found[key] = candidate
                    break
            else:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
        return hit

    def wait(self, pid: int, me: tuple[int, int]) -> int:
        """Wait for a command while reading messages (more work, a kill, a stop) and sending
        held replies when they fall due, so that a long command delays no earlier outcome.
        Returns its exit code (negative: the signal that ended it)."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfd (Linux < 5.3): look every 10 ms
            pidfd = -1
        watch = select.poll()
        watch.register(self.conn.fileno(), select.POLLIN)
        if pidfd >= 0:
            watch.register(pidfd, select.POLLIN)
        deadline: float | None = None  # SIGKILL then, after a SIGTERM
        signalled = False
        try:
            while True:
                if pidfd < 0:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        return os.waitstatus_to_exitcode(status)
                timeout = 10.0 if pidfd < 0 else None
                for when in (deadline, self.due if self.replies else None):
                    if when is not None:
                        left = max(0.0, (when - time.monotonic()) * 1000)
                        timeout = left if timeout is None else min(timeout, left)
                ready = watch.poll(timeout)
                if self.replies and time.monotonic() >= self.due:
                    self.flush()
                if any(fd == pidfd for fd, _ in ready):
                    break
                if ready:
                    try:
                        self.receive()
                    except _Stop:
                        killpg(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        raise
                    if self.kill == me and not signalled:
                        signalled = True
                        killpg(pid, signal.SIGTERM)
                        deadline = time.monotonic() + GRACE
                if deadline is not None and time.monotonic() >= deadline:
                    killpg(pid, signal.SIGKILL)
                    deadline = None
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides how a run stops
    fd = int(argv[0])
    # Not for the commands it starts: one holding the connection open would hide this
    # worker's death from the driver for as long as the command runs.
    os.set_inheritable(fd, False)
    conn = Wire(fd)
    hold = float(argv[1]) if len(argv) > 1 else HOLD
    command_hold = float(argv[2]) if len(argv) > 2 else COMMAND_HOLD
    pidfile = argv[3] if len(argv) > 3 else None
    if not REAPING:  # started directly, not forked by the zygote (which did it already)
        execute.subreaper()
    conn.send_bytes(pickle.dumps(("ready",)))
    try:  # noqa: SIM105 - contextlib is one import more at a worker's start
        Worker(conn, hold, command_hold, pidfile=pidfile).run()
    except _Stop:
        pass
    # What its tasks started and left running (a daemon, a double fork: given to this
    # process, a subreaper) ends with it.
    execute.end_children()
    # Nothing is left to flush or finalize (output goes straight to the spool files): skip the
    # interpreter's teardown, so that the run's end does not wait for it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
