"""Sandbox worker: the trusted first code that runs inside the sandbox (stdlib only).

The worker is a *zygote*: it never runs untrusted code itself. Inside bubblewrap it is PID 1 of
the sandbox's PID namespace, so no sandboxed process can signal it. On the host's request it forks
one fresh child per job; the child isolates itself, then runs the untrusted code:

* as root (the host ran as root): the child takes a uid of its own, so jobs cannot signal, trace
  or starve one another (RLIMIT_NPROC counts per uid), and when the job ends the zygote kills every
  process of that uid;
* otherwise: the child is marked non-dumpable (no ptrace or /proc/<pid>/mem access between jobs),
  its process group is killed at the end and processes that escaped it are swept.

To keep that cheap, the zygote may fork children ahead of demand while the host is quiet; such a
child rehearses the runtime's own code paths on dummy data (so the pages they write are copied
then) and waits for a job. It takes its uid and limits only when it gets one, exactly like a child
forked on demand, and nothing of the workflow runs before that.

Jobs:
  sample    run ``solver(agent, task)`` of the workflow (compiled once by the zygote)
  check     run the workflow's module only, and say whether it defines ``solver``
  function  load a candidate program and serve calls to its functions with plain-data arguments
            and results (code scoring: the trusted tests stay on the host)
  probe     report what the sandbox looks like from inside (``w4s sandbox doctor``)

Control messages travel as JSON packets on a SOCK_SEQPACKET socket; the host passes each job its
private RPC socket and output socket as file descriptors with the request.
"""

from __future__ import annotations

import os.path
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves the script's dir out

import ctypes
import gc
import io
import json
import os
import resource
import selectors
import signal
import socket
import time

import agent
import protocol

WORKFLOW_FILE = "workflow.py"
CANDIDATE_FILE = "candidate.py"
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522
_CLONE_NEWNS = 0x00020000
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_QUIET_S = 0.05  # jobs are forked ahead only after this long without requests from the host
_LIMITS = (
    resource.RLIMIT_AS,
    resource.RLIMIT_FSIZE,
    resource.RLIMIT_NOFILE,
    resource.RLIMIT_NPROC,
    resource.RLIMIT_CORE,
    resource.RLIMIT_CPU,
)
# Needed only when a job fails or ends: imported once the zygote is idle, not before it can start jobs.
_LATER_MODULES = ("traceback", "shutil")
_WARM_MODULES = (
    "re",
    "json",
    "math",
    "random",
    "collections",
    "itertools",
    "functools",
    "string",
    "typing",
    "concurrent.futures",
    "statistics",
    "fractions",
    "decimal",
    "heapq",
    "bisect",
)


_LIBC = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    _LIBC.prctl(option, value, 0, 0, 0)


def _checked(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _drop_capabilities() -> None:
    """Clear every capability set (the zygote keeps CAP_SYS_ADMIN of its user namespace to make
    each job's private scratch; a job without root must not keep it, nor pass it on through exec)."""
    _checked(_LIBC.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: two words each, all zero
    _checked(_LIBC.capset(header, data), "capset")


def _line_stream_on(stream, fd: int) -> bool:
    try:
        return stream is not None and stream.fileno() == fd and stream.line_buffering
    except (AttributeError, OSError, ValueError):
        return False


def _error_info(exc: BaseException, filename: str, source_lines: list[str]) -> dict:
    info = {"type": type(exc).__name__, "message": str(exc)[:2000], "line": None, "lineno": None}
    import traceback  # see _LATER_MODULES

    frames = traceback.extract_tb(exc.__traceback__)
    lineno = None
    for frame in reversed(frames):
        if frame.filename == filename:
            lineno = frame.lineno
            break
    if lineno is None and isinstance(exc, SyntaxError) and exc.filename == filename:
        lineno = exc.lineno
    if lineno and 0 < lineno <= len(source_lines):
        info["lineno"] = lineno
        info["line"] = source_lines[lineno - 1].strip()
    info["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
    return info


class Zygote:
    def __init__(self, args, ctrl: socket.socket):
        self.args = args
        self.ctrl = ctrl
        self.limits = args.limits
        self.me = os.getpid()
        self.running: dict[int, tuple[int, int | None]] = {}  # pid -> (job id, uid)
        self.ready: dict[int, socket.socket] = {}  # pid -> channel of a child forked ahead, waiting for a job
        self._private_fds: list[int] = []
        self.workflow = None
        self.workflow_lines: list[str] = []
        self.private = False  # jobs get a private scratch (decided by harden)
        self.shared_mounts = False  # mounts here propagate: a job makes its own private first
        self.quiet: set = set()  # jobs whose exit the host does not want reported

    # --- setup -----------------------------------------------------------------------------------
    def harden(self) -> dict:
        # Non-dumpable before anything else, and so every child forked from here: a job sharing
        # this uid (no root) must not write the zygote's or a waiting child's memory via /proc.
        _prctl(_PR_SET_DUMPABLE, 0)
        applied = {"seccomp": "off", "job_uids": self.args.uid_base is not None, "private_scratch": "off"}
        if self.args.seccomp:
            import seccomp

            if seccomp.supported():
                try:
                    seccomp.install(allow_mounts=self.args.private_scratch)
                    applied["seccomp"] = "on"
                except OSError as exc:
                    applied["seccomp"] = f"failed: {exc}"
            else:
                applied["seccomp"] = "unsupported architecture"
        if self.args.private_scratch:
            with open("/proc/self/mountinfo") as handle:  # optional fields "shared:N" mark propagation
                self.shared_mounts = "shared:" in handle.read()
            applied["private_scratch"] = self.try_private_scratch()
        self.private = applied["private_scratch"] == "on"
        if self.me != 1:
            _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        return applied

    def try_private_scratch(self) -> str:
        """Make a private scratch once in a throwaway child, so that jobs are never the first to try."""
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            status = 0
            try:
                self.make_private_scratch()
            except BaseException as exc:  # noqa: BLE001 - reported to the host, the child must exit
                os.write(write_end, str(exc).encode()[:500])
                status = 1
            os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:
            detail = reader.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        return "on" if status == 0 else f"failed: {detail or status}"

    def make_private_scratch(self) -> None:
        """In a new job, before it runs anything: a tmpfs of its own (one size limit) as its scratch
        directory, also seen at /tmp, in a mount namespace of its own. Siblings never share a file,
        whatever permissions a job sets, and nothing outlives the job."""
        _checked(_LIBC.unshare(_CLONE_NEWNS), "unshare a mount namespace")
        if self.shared_mounts:
            _checked(_LIBC.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make mounts private")
        scratch = os.fsencode(self.args.scratch)
        size = f"size={self.limits['scratch_mb'] * 1024 * 1024},mode=0700".encode()
        _checked(_LIBC.mount(b"w4s-job", scratch, b"tmpfs", _MS_NOSUID | _MS_NODEV, size), "mount a tmpfs")
        _checked(_LIBC.mount(scratch, b"/tmp", None, _MS_BIND, None), "bind it at /tmp")

    def enclose(self) -> None:
        """The filesystem part of a job's isolation, done before it knows which job it runs: its
        private scratch, and, without root, no capabilities left (as root the uid change drops them).

        The seccomp filter the job inherits allows mount and unshare of a mount namespace for this;
        a job cannot use them: both need CAP_SYS_ADMIN, which it no longer has and, with user
        namespaces refused by the same filter, cannot regain. (A second, stricter filter per job
        cost as much CPU as the rest of a sample's start.)"""
        if not self.private:
            return
        self.make_private_scratch()
        if self.args.uid_base is None:
            _drop_capabilities()

    def warm_up(self) -> list[str]:
        """Import, once for all jobs, the common modules the workflow imports (all of them when there
        is no workflow: candidate programs for code scoring). Only what is used: each module
        imported here is copied into every job, and ``threading`` adds a handler to every fork."""
        names: set[str] = set()
        if self.workflow is not None:
            code_objects = [self.workflow]
            while code_objects:
                code = code_objects.pop()
                names.update(code.co_names)
                code_objects.extend(c for c in code.co_consts if isinstance(c, type(code)))
        warmed = []
        for module in _WARM_MODULES:
            first, _, last = module.partition(".")
            if self.workflow is None or module in names or (last and first in names and last in names):
                try:
                    __import__(module)
                    warmed.append(module)
                except ImportError:
                    pass
        return warmed

    def compile_workflow(self) -> dict | None:
        path = os.path.join(self.args.code_dir, WORKFLOW_FILE)
        if not os.path.exists(path):
            return None
        source = open(path, encoding="utf-8").read()
        self.workflow_lines = source.splitlines()
        try:
            self.workflow = compile(source, WORKFLOW_FILE, "exec")
        except (SyntaxError, ValueError) as exc:
            return _error_info(exc, WORKFLOW_FILE, self.workflow_lines)
        return None

    # --- the loop --------------------------------------------------------------------------------
    def serve(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        selector = selectors.DefaultSelector()
        selector.register(self.ctrl, selectors.EVENT_READ, "ctrl")
        selector.register(wake_r, selectors.EVENT_READ, "wake")
        self._private_fds = [selector.fileno(), wake_r, wake_w, self.ctrl.fileno()]
        gc.collect()
        gc.freeze()  # jobs inherit these objects: collections in a job must not touch (copy) their pages
        last_request = 0.0
        later = list(_LATER_MODULES)
        while True:
            # Keep jobs forked ahead of demand, but only once requests have been quiet for a while:
            # forking while samples start would take CPU from exactly the moments that are short of it.
            timeout = None
            if len(self.ready) < self.args.warm_jobs:
                timeout = max(0.0, last_request + _QUIET_S - time.monotonic())
            if later and timeout is None:
                timeout = 0.0
            events = selector.select(timeout)
            if not events:
                if later:
                    __import__(later.pop())
                    if not later:
                        gc.freeze()
                elif time.monotonic() >= last_request + _QUIET_S:
                    self.fork_ready()
                continue
            for key, _ in events:
                if key.data == "wake":
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        pass
                    self.reap()
                    continue
                data, fds, _flags, _addr = socket.recv_fds(self.ctrl, 65536, 4)
                if not data:
                    return
                last_request = time.monotonic()
                message = json.loads(data)
                if message.get("op") == "spawn":
                    self.start_job(message, data, fds)
                elif message.get("op") == "kill":
                    for pid, (job, _uid) in list(self.running.items()):
                        if job == message.get("id"):
                            if message.get("quiet"):  # only jobs still running: the set stays small
                                self.quiet.add(job)
                            self.kill_job(pid)
                else:
                    for fd in fds:
                        os.close(fd)

    def start_job(self, message: dict, data: bytes, fds: list[int]) -> None:
        """Hand the job to a ready child, or fork one for it now; the zygote keeps none of its fds."""
        pid = None
        while self.ready and pid is None:
            candidate, channel = self.ready.popitem()
            try:
                socket.send_fds(channel, [data], fds)
                pid = candidate
            except OSError:  # it died while waiting: reaped later
                self.kill_job(candidate)
            channel.close()
        if pid is None:
            pid = os.fork()
            if pid == 0:
                self.close_private_fds()
                self.child(message, fds)
        for fd in fds:
            os.close(fd)
        self.running[pid] = (message["id"], self.job_uid(message["id"]))

    def fork_ready(self) -> None:
        """Fork a child that prepares itself and waits for a job (fork and page copies off the critical path)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            self.close_private_fds()
            status = 70
            try:
                self.detach()
                self.enclose()
                self.rehearse()
                data, fds, _flags, _addr = socket.recv_fds(theirs, 65536, 4)
                theirs.close()
                if data:
                    self.child(json.loads(data), fds, detached=True)
                status = 0
            except BaseException:  # noqa: BLE001 - the child must reach os._exit whatever happens
                pass
            os._exit(status)
        theirs.close()
        self.ready[pid] = ours

    def rehearse(self) -> None:
        """In a child forked ahead: run the job's own (trusted) code paths once on dummy data.

        Every page of the zygote a job writes to (Python writes reference counts on every object
        it touches) is copied on first write, at several microseconds a page. Done here, while the
        sandbox idles, those copies are no longer paid while a sample waits. Nothing of the
        workflow runs here, and nothing here changes state a job relies on.
        """
        for which in _LIMITS:
            resource.setrlimit(which, resource.getrlimit(which))
        os.path.join(self.args.scratch, "job-0")
        io.TextIOWrapper(io.BytesIO(), line_buffering=True).write("rehearsal\n")
        messages = agent._as_messages("rehearsal")
        for message in (
            {"task": protocol.encode("rehearsal")},
            {"op": "call", "id": 1, "method": "call_llm", "params": {"messages": messages, "n": 1}},
            {"op": "reply", "id": 1, "ok": True, "value": protocol.encode(["rehearsal"])},
            {"op": "done", "answer": protocol.encode({"answer": [1, 2.5, "x"]})},
        ):
            frame = protocol.pack(message)
            decoded = protocol.unpack(frame[protocol.HEADER_SIZE :])
            protocol.decode(decoded.get("value") or decoded.get("task") or decoded.get("answer"))
        agent.Agent(agent._Channel(None), sys.executable, dict(self.limits))

    def close_private_fds(self) -> None:
        """In a fresh child: drop the zygote's control channel, its selector and other children's channels."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in self._private_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        for channel in self.ready.values():
            channel.close()
        self.ready = {}

    def job_uid(self, job: int) -> int | None:
        if self.args.uid_base is None:
            return None
        return self.args.uid_base + 1 + job % self.args.uid_span

    def kill_job(self, pid: int) -> None:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            channel = self.ready.pop(pid, None)
            if channel is not None:  # a ready child died before it had a job
                channel.close()
                continue
            job = self.running.pop(pid, None)
            if job is None:
                continue
            job_id, uid = job
            self.kill_job(pid)
            self.sweep(uid)
            if not self.private:  # a private scratch ends with the job's mount namespace
                import shutil  # see _LATER_MODULES

                shutil.rmtree(os.path.join(self.args.scratch, f"job-{job_id}"), ignore_errors=True)
            if job_id in self.quiet:  # the host has what it needs of this job
                self.quiet.discard(job_id)
                continue
            report = {"op": "exit", "id": job_id}
            if os.WIFSIGNALED(status):
                report["signal"] = os.WTERMSIG(status)
            else:
                report["code"] = os.WEXITSTATUS(status)
            try:
                self.ctrl.send(json.dumps(report).encode())
            except OSError:
                return

    def sweep(self, uid: int | None) -> None:
        """End what a finished job left behind: every process of its uid, or orphans re-parented to us.

        Only processes the zygote did not fork itself need a look: the zygote, its running jobs and
        the children waiting for one are never the finished job's (other uids, or no job yet). In
        the sandbox's own PID namespace that usually leaves none, so the common case costs one
        listing of /proc instead of a stat per process."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid == self.me or pid in self.running or pid in self.ready:
                continue
            try:
                if uid is not None:
                    if os.stat(f"/proc/{entry}").st_uid != uid:
                        continue
                else:
                    with open(f"/proc/{entry}/stat", "rb") as handle:
                        stat = handle.read()
                    ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
                    if ppid != self.me:
                        continue
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                continue

    # --- a job -----------------------------------------------------------------------------------
    def detach(self) -> None:
        """The first steps of every job, before it knows which: own session, die with the zygote."""
        os.setsid()
        os.umask(0o077)  # nothing a job writes is readable by its siblings
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # a job never outlives its zygote
        if os.getppid() != self.me:
            os._exit(70)

    def child(self, message: dict, fds: list[int], detached: bool = False) -> None:
        """Body of a forked job. Never returns."""
        status = 0
        try:
            job = message["id"]
            if not detached:
                self.detach()
                self.enclose()
            uid = self.job_uid(job)
            if self.private:
                workdir = self.args.scratch
                if uid is not None:
                    os.chown(workdir, uid, uid)  # the job's tmpfs (also its /tmp)
            else:
                workdir = os.path.join(self.args.scratch, f"job-{job}")
            if uid is not None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            _prctl(_PR_SET_DUMPABLE, 0)
            self.set_limits(uid is not None)
            if not self.private:
                os.mkdir(workdir, 0o700)
            os.chdir(workdir)
            os.environ["HOME"] = workdir
            rpc = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fds[0])
            out_fd = fds[1] if len(fds) > 1 else os.open(os.devnull, os.O_WRONLY)
            os.dup2(out_fd, 1)
            os.dup2(out_fd, 2)
            os.close(out_fd)
            # The zygote's own line-buffered streams on fds 1 and 2 now write to the job's output.
            if not _line_stream_on(sys.stdout, 1):
                sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
            if not _line_stream_on(sys.stderr, 2):
                sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
            kind = message.get("kind")
            if kind == "sample":
                self.run_sample(rpc)
            elif kind == "check":
                self.run_sample(rpc, solve=False)
            elif kind == "function":
                self.serve_functions(rpc)
            elif kind == "probe":
                self.probe(rpc, message)
        except BaseException:  # noqa: BLE001 - the child must reach os._exit whatever happens
            status = 70
            try:
                import traceback

                traceback.print_exc()
            except BaseException:  # noqa: BLE001 - even a broken stderr must not keep us alive
                pass
        os._exit(status)

    def set_limits(self, own_uid: bool) -> None:
        mib = 1024 * 1024
        limits = self.limits
        nproc = limits["max_processes"] if own_uid else limits["max_processes_shared"]
        cpu = limits["cpu_seconds"]
        for which, value in (
            (resource.RLIMIT_AS, limits["memory_mb"] * mib),
            (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mib),
            (resource.RLIMIT_NOFILE, limits["open_files"]),
            (resource.RLIMIT_NPROC, nproc),
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_CPU, cpu),
        ):
            resource.setrlimit(which, (value, value + 1 if which == resource.RLIMIT_CPU else value))

    def run_sample(self, rpc: socket.socket, solve: bool = True) -> None:
        """Run the workflow's module, then ``solver(agent, task)``; ``solve=False`` (a *check* job)
        stops before the solver: what a sample meets first (an exception at import, no solver)."""
        first = protocol.recv(rpc)
        task = protocol.decode(first.get("task"))
        channel = agent._Channel(rpc)
        helper = agent.Agent(channel, sys.executable, {"timeout": self.limits["code_timeout"]})
        try:
            if self.workflow is None:
                raise RuntimeError("no workflow was loaded")
            namespace = {"__name__": "workflow", "__file__": WORKFLOW_FILE}
            exec(self.workflow, namespace)
            solver = namespace.get("solver")
            if not callable(solver):
                raise NameError("the workflow defines no function `solver(agent, task)`")
            answer = solver(helper, task) if solve else None
            if isinstance(answer, dict) and "answer" in answer:
                answer = answer["answer"]
            message = {"op": "done", "answer": protocol.encode(answer)}
        except BaseException as exc:  # noqa: BLE001 - every workflow failure is reported, none escapes
            message = {"op": "failed", "error": _error_info(exc, WORKFLOW_FILE, self.workflow_lines)}
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        protocol.send(rpc, message)

    def serve_functions(self, rpc: socket.socket) -> None:
        first = protocol.recv(rpc)
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
        namespace = {"__name__": "__main__"}
        try:
            exec(compile(str(first.get("program", "")), CANDIDATE_FILE, "exec"), namespace)
        except BaseException as exc:  # noqa: BLE001 - a broken candidate is a failed answer
            protocol.send(rpc, {"op": "load_error", "error": {"type": type(exc).__name__}})
            return
        names = first.get("names") if isinstance(first.get("names"), list) else []
        missing = [name for name in names if not callable(namespace.get(name))]
        protocol.send(rpc, {"op": "ready", "missing": missing})
        while True:
            try:
                message = protocol.recv(rpc)
            except EOFError:
                return
            reply = {"op": "reply", "id": message.get("id")}
            try:
                function = namespace[message["name"]]
                value = function(*protocol.decode(message["args"]), **protocol.decode(message["kwargs"]))
                reply["value"] = protocol.encode(value, opaque=True)
                reply["ok"] = True
            except BaseException as exc:  # noqa: BLE001 - reported to the host as a failed call
                reply["ok"] = False
                reply["error"] = {"type": type(exc).__name__}
            protocol.send(rpc, reply)

    def probe(self, rpc: socket.socket, message: dict) -> None:
        report = {"uid": os.getuid(), "pid": os.getpid(), "env_keys": sorted(os.environ)}
        report["visible_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        try:
            socket.create_connection(("127.0.0.1", int(message.get("port", 9))), timeout=1).close()
            report["network"] = "reachable"
        except (OSError, LookupError) as exc:
            report["network"] = f"blocked: {getattr(exc, 'strerror', None) or exc}"
        report["readable"] = {}
        for path in message.get("read", []):
            try:
                with open(path, "rb") as handle:
                    handle.read(1)
                report["readable"][path] = True
            except OSError:
                report["readable"][path] = False
        report["writable"] = {}
        for path in [*message.get("write", []), os.path.join(os.getcwd(), "probe.txt")]:
            try:
                with open(path, "w") as handle:
                    handle.write("x")
                os.unlink(path)
                report["writable"][path] = True
            except OSError:
                report["writable"][path] = False
        report["rlimits"] = {
            name: resource.getrlimit(getattr(resource, name))[0]
            for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_NOFILE")
        }
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Seccomp:"):
                    report["seccomp_mode"] = int(line.split()[1])
                if line.startswith("CapEff:"):
                    report["capabilities"] = line.split()[1]
        protocol.send(rpc, {"op": "probe", "report": report})


class Settings:
    """The zygote's settings: one JSON object on the command line (the host writes it)."""

    def __init__(
        self,
        ctrl_fd: int,
        code_dir: str,
        scratch: str,
        limits: dict,
        uid_base: int | None = None,
        uid_span: int = 10000,
        seccomp: bool = True,
        warm_jobs: int = 0,
        sys_path: list | None = None,
        private_scratch: bool = False,
    ):
        self.ctrl_fd = ctrl_fd
        self.code_dir = code_dir
        self.scratch = scratch
        self.limits = limits
        self.uid_base = uid_base
        self.uid_span = uid_span
        self.seccomp = seccomp
        self.warm_jobs = warm_jobs
        self.sys_path = sys_path or []
        self.private_scratch = private_scratch


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: worker.py SETTINGS_JSON")
    args = Settings(**json.loads(argv[0]))
    ctrl = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=args.ctrl_fd)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # jobs print through these: line by line, so a killed job loses nothing
            stream.reconfigure(line_buffering=True)
    zygote = Zygote(args, ctrl)
    applied = zygote.harden()
    sys.path.extend(args.sys_path)
    os.makedirs(args.scratch, exist_ok=True)
    os.chdir(args.scratch)
    load_error = zygote.compile_workflow()
    applied["warm_modules"] = zygote.warm_up()
    ctrl.send(json.dumps({"op": "started", "applied": applied, "load_error": load_error}).encode())
    zygote.serve()


if __name__ == "__main__":
    main()
