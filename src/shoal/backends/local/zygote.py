"""A fork server for the local backend's workers: one interpreter start per run, not per worker.

Starting a Python interpreter and importing what a worker needs takes about 100 ms of CPU on a
small machine, and a node of 128 cores wants 128 workers at once. So the local backend starts
this process once, as ``python -m shoal.backends.local.zygote FD``; it imports the worker's code and
then forks a worker whenever the driver asks, in about a millisecond. It is single-threaded,
so forking it is safe (the driver, with its threads, never forks).

For a run without Python tasks it starts without ``site`` (``python -S``; the driver's import
path comes in PYTHONPATH): that is a third of an interpreter's start here, and commands never
need it. Should Python tasks come after all (added while the run goes on), site-packages (.pth
files, sitecustomize) are read before they run: by the zygote before it forks a worker for
them, or by a worker forked before that, before its first Python task (``worker_main.load_site``).
Such a process keeps ``sys.flags.no_site`` set, so a ``multiprocessing`` child it spawns starts
with -S too; runs with Python tasks from the start never use -S.

Protocol over the socket FD (SOCK_SEQPACKET: one pickled message per packet; a fork request
carries the worker's end of its own connection to the driver as an SCM_RIGHTS descriptor):

* in: ``("fork", n, out, err, env, argv, python)``: fork worker ``n`` with stdout and stderr
  the (new, emptied) spool files ``out`` and ``err``, ``env`` added to its environment, and
  ``argv`` (the worker's arguments after FD); ``python``: it will run Python tasks, so read
  site-packages first. ``("log", path)``: from now on write this process's own output to
  ``path`` (it starts before the run directory exists). ``("preload", names)``: more modules
  to import before forking a worker for Python tasks (now, if it has loaded them already).
  ``("watch", pgid)`` and
  ``("unwatch", pgid)``: a process group the driver started (an isolated or multi-rank task)
  began or ended. ``("stop",)``.
* If the driver goes away without saying stop (it was killed), the zygote ends what the run
  had running: the workers (each gets a second to stop by itself, and its command with it)
  and the watched groups (SIGTERM, then SIGKILL after the grace period). A resumed run then
  starts them afresh with nothing of the old run left running beside it.
* out: ``("ready",)`` once at start; ``("forked", n, pid)``; ``("exit", pid, code)`` when a
  worker ends (``code`` negative: the signal that killed it), so the driver, which is not the
  workers' parent, still learns how each one ended.

A forked worker is a session leader, as a worker started directly would be, so killing its
process group kills whatever its tasks started.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import select
import signal
import socket
import sys
import time

from shoal.backends.execute import (
    GRACE,
    PR_SET_CHILD_SUBREAPER,
    end_children,
    killpg,
    leader,
    subreaper,
)
from shoal.backends.local import worker_main

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    import subprocess
    from typing import Any

PACKET = 1 << 16  # the largest message either side sends
WORKER_GRACE = 1.0  # seconds a worker has to end by itself once the driver died


def send(sock: socket.socket, msg: Any) -> None:
    sock.send(pickle.dumps(msg, protocol=5))


def _child(
    sock: socket.socket, fd: int, out: str, err: str, env: dict[str, str], argv: list[str]
) -> None:
    """In the forked process: become the worker."""
    try:
        sock.close()
        os.setsid()
        for target, path in ((1, out), (2, err)):
            f = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, target)
            os.close(f)
        os.environ.update(env)
        _limit_threads(env)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        worker_main.REAPING = (
            LIBC is not None and LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        )
        worker_main.main([str(fd), *argv])
    except BaseException:  # report, never return into the zygote's loop
        with contextlib.suppress(Exception):
            import traceback

            print("shoal: the worker stopped on an internal error:", file=sys.stderr)
            traceback.print_exc()
    finally:
        os._exit(70)


def _limit_threads(env: dict[str, str]) -> None:
    """Size the thread pools of numerical libraries loaded before the fork (preload, or a
    fork of the driver) to the worker's cores: they read OMP_NUM_THREADS and its kin once, at
    load, so the worker's own come too late. Without this, a worker pinned to one core runs
    OpenBLAS with a pool sized to the machine, and every small LAPACK call waits on a thread
    that shares its core (seventy times slower, measured on a cell relaxation)."""
    cpus = env.get("OMP_NUM_THREADS")
    if cpus is None or not any(m in sys.modules for m in ("numpy", "scipy", "torch")):
        return
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        threadpool_limits(limits=int(cpus))
    except Exception as err:  # said in the worker's log; the task runs on
        print(f"shoal: could not size the numerical thread pools to {cpus}: {err}", file=sys.stderr)


def _reap(sock: socket.socket | None, workers: set[int]) -> None:
    """Report every worker that ended (``sock`` None: the driver is gone, tell nobody), and
    end what a dead worker's tasks left running: this process is a subreaper, so those
    orphans were given to it (any child that is not a worker)."""
    died = False
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if pid in workers:
            died = True
            workers.discard(pid)
            if sock is not None:
                send(sock, ("exit", pid, os.waitstatus_to_exitcode(status)))
    if died and LIBC is not None:
        end_children(frozenset(workers))


def _orphaned(workers: set[int], watched: set[int]) -> None:
    """The driver died without saying stop: end what the run had running, so that nothing
    goes on unsupervised (or twice, once the run is resumed). A worker sees the end too and
    stops its command itself; one busy in a Python task gets WORKER_GRACE seconds, then is
    killed with its process group. The driver's own children (isolated and multi-rank tasks,
    ``watched``) get SIGTERM now and SIGKILL after GRACE, as a cancel would."""
    for group in watched:
        if leader(group):
            killpg(group, signal.SIGTERM)
    start = time.monotonic()
    while workers and time.monotonic() - start < WORKER_GRACE:
        time.sleep(0.01)
        _reap(None, workers)
    for pid in workers:
        killpg(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    left = [g for g in watched if leader(g)]
    while left and time.monotonic() - start < GRACE:
        time.sleep(0.05)
        left = [g for g in left if leader(g)]
    for group in left:
        killpg(group, signal.SIGKILL)
    end_children()  # the workers, and the orphans their tasks left to this process


PRELOAD = "SHOAL_PRELOAD"  # modules to import before forking, comma-separated (run option)


def _preload() -> None:
    """What Python tasks need: site-packages, cloudpickle (functions sent by value), and the
    modules of the run option ``preload`` (a failure is said here, in the zygote's log, and
    met again by the worker that imports the module itself)."""
    worker_main.load_site()
    import cloudpickle  # noqa: F401

    _import(list(filter(None, os.environ.get(PRELOAD, "").split(","))))


def _more(names: list[str], preloaded: bool) -> None:
    """More modules to preload: imported now if the others were, else with them."""
    have = list(filter(None, os.environ.get(PRELOAD, "").split(",")))
    new = [n for n in names if n not in have]
    os.environ[PRELOAD] = ",".join([*have, *new])
    if preloaded:
        _import(new)


def _import(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException as err:  # any failure (even SystemExit): the workers meet it again
            print(f"shoal zygote: cannot preload {name}: {type(err).__name__}: {err}", flush=True)


def _log(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


LIBC: Any = None  # the C library, when this process could be made a subreaper (main)


def main(argv: list[str]) -> None:
    global LIBC
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides how a run stops
    if subreaper():  # orphans of dead workers' tasks come here, to be ended (_reap)
        import ctypes

        LIBC = ctypes.CDLL(None, use_errno=True)
    worker_main.SITE_PENDING = bool(sys.flags.no_site)
    sock = socket.socket(fileno=int(argv[0]))
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wake-up fd fires
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    workers: set[int] = set()  # pids of the workers alive
    watched: set[int] = set()  # process groups of the driver's own children
    try:
        send(sock, ("ready",))
        if _serve(sock, poller, wake_r, workers, watched):
            return  # told to stop: the driver closes the workers itself
    except OSError:  # a word to the driver could not be sent: it is gone
        pass
    _orphaned(workers, watched)


def _serve(
    sock: socket.socket,
    poller: select.poll,
    wake_r: int,
    workers: set[int],
    watched: set[int],
) -> bool:
    """Answer the driver until it says stop (True) or goes away (False)."""
    # Load what Python tasks need once, before the first fork of a worker for them; or when
    # idle before any fork (the workflow is still being checked), so that it is at hand.
    # Never when idle later: in a run of commands its 40 ms of CPU would delay them.
    preloaded = forked = False
    while True:
        events = poller.poll(None if preloaded or forked else 50)
        if not events:
            _preload()
            preloaded = True
        for fd, _ in events:
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _reap(sock, workers)
                continue
            try:
                data, fds, _, _ = socket.recv_fds(sock, PACKET, 1)
            except OSError:
                return False
            if not data:  # the driver went away without a word
                return False
            msg = pickle.loads(data)
            if msg[0] == "log":
                _log(msg[1])
            elif msg[0] == "preload":
                _more(msg[1], preloaded)
            elif msg[0] == "watch":
                watched.add(msg[1])
            elif msg[0] == "unwatch":
                watched.discard(msg[1])
            elif msg[0] != "fork" or not fds:
                return True  # "stop"
            else:
                _, n, out, err, env, args, python = msg
                if python and not preloaded:
                    _preload()
                    preloaded = True
                forked = True
                pid = os.fork()
                if pid == 0:
                    _child(sock, fds[0], out, err, env, args)
                os.close(fds[0])
                workers.add(pid)
                send(sock, ("forked", n, pid))
                _reap(sock, workers)


# -- the driver's side ----------------------------------------------------------------------
class Forked:
    """A worker the zygote forked: the part of ``subprocess.Popen`` the local backend uses."""

    def __init__(self, zygote: Zygote, n: int) -> None:
        self.zygote = zygote
        self.n = n
        self._pid: int | None = None
        self.returncode: int | None = None

    @property
    def unknown(self) -> bool:
        """The zygote has not said yet which process it is (nor that it ended)."""
        return self._pid is None and self.returncode is None

    @property
    def pid(self) -> int:
        deadline = time.monotonic() + self.zygote.PATIENCE
        while self._pid is None and self.returncode is None:
            left = deadline - time.monotonic()
            if left <= 0:  # a fork is answered in milliseconds: the zygote is stuck
                self.zygote.stuck(f"it did not say which process worker {self.n} is")
                break
            self.zygote.collect(left)
        return self._pid if self._pid is not None else -1

    def wait(self, timeout: float | None = None) -> int:
        """Its exit code, as the zygote reports it. Without ``timeout`` the wait is still
        bounded: a zygote that does not report an ended worker within ``PATIENCE`` seconds
        is stuck (stopped, say), and is killed; the code is then ``LOST``."""
        import subprocess

        bounded = timeout is None
        if timeout is None:
            timeout = self.zygote.PATIENCE
        deadline = time.monotonic() + timeout
        while self.returncode is None:
            left = deadline - time.monotonic()
            if left <= 0:
                if bounded:
                    self.zygote.stuck(f"it did not report the end of worker {self.n}")
                    continue
                raise subprocess.TimeoutExpired(f"worker {self.n}", timeout)
            self.zygote.collect(left)
        return self.returncode


def launch(
    python: list[str],
    module: str,
    fd: int,
    args: list[str],
    env: dict[str, str],
    out: int,
    err: int,
) -> subprocess.Popen[bytes]:
    """Start ``python -m module FD ARGS...`` in a session of its own, on connection ``fd``
    (``python``: the interpreter and its flags)."""
    import subprocess

    return subprocess.Popen(
        [*python, "-m", module, str(fd), *args],
        pass_fds=[fd],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        env=env,
        start_new_session=True,
    )


def may_fork_driver(python: str, preload: tuple[str, ...]) -> bool:
    """Whether the zygote may be a fork of the driver, not a new interpreter: when all the
    modules to preload are imported here already (a jobflow run: jobflow, atomate2 and the
    jobs' modules, seconds of imports), so the fork has them at no cost. Only when that is
    safe: this is the interpreter the workers run (``python``), no other thread runs here
    (a fork copies only the calling thread, and locks held by the others stay held), and no
    GPU context is open (a CUDA context does not survive a fork)."""
    import threading

    alone = threading.active_count() == 1 and threading.current_thread() is threading.main_thread()
    if python != sys.executable or not preload or not alone:
        return False
    if not all(name in sys.modules for name in preload):
        return False
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    return not (cuda is not None and cuda.is_initialized())


def _fork_driver(
    ours: socket.socket, theirs: socket.socket, env: dict[str, str], out: int
) -> Child:
    """Fork this process (the driver) into the zygote on ``theirs``: a session of its own, its
    output on ``out``, no descriptor of the driver's but that one (a fork keeps them all open:
    a peer of the driver's would never see it close), every object the driver had frozen out
    of the garbage collector (never collected there, so none is finalized twice, and the pages
    stay shared with the driver and the workers)."""
    import gc

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    keep = theirs.fileno()
    pid = os.fork()
    if pid != 0:
        return Child(pid)
    try:  # the zygote: never returns into the driver's code
        gc.freeze()
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        for fd in sorted(set(_open_fds()) - {0, 1, 2, keep}):
            with contextlib.suppress(OSError):
                os.close(fd)
        for sig in range(1, signal.NSIG):
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                if callable(signal.getsignal(sig)):
                    signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.environ.update(env)
        main([str(keep)])
    except BaseException:
        with contextlib.suppress(Exception):
            import traceback

            traceback.print_exc()
    finally:
        os._exit(0)


def _open_fds() -> list[int]:
    """This process's open file descriptors."""
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 1024))


class Child:
    """The zygote forked from the driver: the part of ``subprocess.Popen`` used here."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                done, status = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.005)
        return self.returncode if self.returncode is not None else 0

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


class Zygote:
    """Starts the fork server and asks it for workers (see the module's docstring)."""

    LOST = 70  # the exit code of a worker whose end nobody saw (the zygote itself died)
    PATIENCE = 10.0  # seconds to answer a question that takes it milliseconds (see stuck)

    def __init__(
        self,
        python: str,
        env: dict[str, str],
        log: str | None = None,
        site: bool = True,
        fork: bool = False,
    ) -> None:
        """Start it; its own output goes to ``log``, or to this process's stderr until
        ``log`` is called; without ``site``: with -S (see the module's docstring); ``fork``:
        as a fork of this process (see :func:`may_fork_driver`), not a new interpreter."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        line = [python] if site else [python, "-S"]
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log else 2
        self.proc: subprocess.Popen[bytes] | Child
        try:
            if fork:
                self.proc = _fork_driver(ours, theirs, env, out)
            else:
                self.proc = launch(
                    line, "shoal.backends.local.zygote", theirs.fileno(), [], env, out, out
                )
        finally:
            if log:
                os.close(out)
        theirs.close()
        self.sock = ours
        self.alive = True
        self.by_n: dict[int, Forked] = {}
        self.by_pid: dict[int, Forked] = {}

    def fileno(self) -> int:
        return self.sock.fileno()

    def log(self, path: str) -> None:
        """Send its own output to ``path`` from now on."""
        self.tell(("log", path))

    def tell(self, msg: tuple[Any, ...]) -> None:
        """Send a message that needs no answer (any thread: one packet is one message)."""
        if self.alive:
            with contextlib.suppress(OSError):
                send(self.sock, msg)

    def fork(
        self,
        n: int,
        fd: int,
        out: str,
        err: str,
        env: dict[str, str],
        argv: list[str],
        python: bool = True,
    ) -> Forked | None:
        """Ask for worker ``n`` on connection ``fd``; it starts when the zygote is ready, as a
        directly started worker would after its imports (``python``: it will run Python
        tasks). None if the zygote is gone (``fd`` is then still the caller's)."""
        msg = pickle.dumps(("fork", n, out, err, env, argv, python), protocol=5)
        self.collect(0)  # has it died?
        if not self.alive:
            return None
        try:
            socket.send_fds(self.sock, [msg], [fd])
        except OSError:
            self._gone()
            return None
        f = self.by_n[n] = Forked(self, n)
        return f

    def collect(self, timeout: float | None) -> None:
        """Read what the zygote said, waiting up to ``timeout`` seconds for the first word."""
        if not self.alive:
            return
        ready, _, _ = select.select([self.sock], [], [], timeout)
        while ready:
            try:
                data = self.sock.recv(PACKET, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._gone()
                return
            msg = pickle.loads(data)
            if msg[0] == "forked":  # ("ready",) says nothing a fork request needs
                f = self.by_n.pop(msg[1])
                f._pid = msg[2]
                self.by_pid[msg[2]] = f
            elif msg[0] == "exit":
                ended = self.by_pid.pop(msg[1], None)
                if ended is not None:
                    ended.returncode = msg[2]

    def stuck(self, why: str) -> None:
        """It does not answer (stopped, or hung): kill it, so that nothing waits on it for
        ever; the workers it forked run on, and new ones start directly."""
        if not self.alive:
            return
        print(
            f"shoal: the worker fork server stopped answering ({why}): it was killed; "
            "new workers start directly",
            file=sys.stderr,
        )
        with contextlib.suppress(OSError):
            self.proc.kill()
        self._gone()

    def _gone(self) -> None:
        """The zygote died: its workers' ends are unknown; no more forks."""
        self.alive = False
        for f in [*self.by_n.values(), *self.by_pid.values()]:
            if f.returncode is None:
                f.returncode = self.LOST
        self.by_n.clear()
        self.by_pid.clear()

    def close(self) -> None:
        import subprocess

        if self.alive:
            with contextlib.suppress(OSError):
                send(self.sock, ("stop",))
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(self.PATIENCE)  # SIGKILL ends even a stopped process
        self.sock.close()


if __name__ == "__main__":
    main(sys.argv[1:])
    os._exit(0)  # nothing to finalize: the run's end need not wait for a teardown
