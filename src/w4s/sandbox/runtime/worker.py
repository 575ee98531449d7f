"""Sandbox worker: the trusted first code that runs inside the sandbox (stdlib only).

Modes:
  workflow  load a workflow once, then fork one child per sample on the host's request (the
            worker is PID 1 of the sandbox's PID namespace, so samples cannot kill it)
  function  load a candidate program and serve calls to its functions with plain-data arguments
            and results (code scoring: the trusted tests stay on the host)
  probe     report what the sandbox looks like from inside (``w4s sandbox doctor``)

The worker drops privileges, installs the seccomp filter and sets rlimits *before* it reads any
untrusted code.
"""

from __future__ import annotations

import os.path
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves the script's dir out

import argparse  # noqa: E402
import json
import os  # noqa: E402
import resource  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import traceback  # noqa: E402

import protocol  # noqa: E402

WORKFLOW_FILE = "workflow.py"


def _set_limits(limits: dict, with_cpu: bool) -> None:
    mib = 1024 * 1024
    plan = [
        (resource.RLIMIT_AS, limits["memory_mb"] * mib),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mib),
        (resource.RLIMIT_NOFILE, limits["open_files"]),
        (resource.RLIMIT_NPROC, limits["max_processes"]),
        (resource.RLIMIT_CORE, 0),
    ]
    if with_cpu:
        plan.append((resource.RLIMIT_CPU, limits["cpu_seconds"]))
    for which, value in plan:
        soft_hard = (value, value + 1) if which == resource.RLIMIT_CPU else (value, value)
        resource.setrlimit(which, soft_hard)


def _harden(args) -> dict:
    """Drop root, install seccomp, set limits. Returns what was applied (for the probe)."""
    applied = {"uid_dropped": False, "seccomp": "off"}
    if args.drop_uid is not None:
        os.setgroups([])
        os.setresgid(args.drop_uid, args.drop_uid, args.drop_uid)
        os.setresuid(args.drop_uid, args.drop_uid, args.drop_uid)
        applied["uid_dropped"] = True
    if args.seccomp:
        import seccomp

        if seccomp.supported():
            try:
                seccomp.install()
                applied["seccomp"] = "on"
            except OSError as exc:
                applied["seccomp"] = f"failed: {exc}"
        else:
            applied["seccomp"] = "unsupported architecture"
    return applied


def _error_info(exc: BaseException, source_lines: list[str] | None) -> dict:
    info = {"type": type(exc).__name__, "message": str(exc)[:2000], "line": None, "lineno": None}
    if source_lines is not None:
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if frame.filename == WORKFLOW_FILE:
                info["lineno"] = frame.lineno
                if frame.lineno and 0 < frame.lineno <= len(source_lines):
                    info["line"] = source_lines[frame.lineno - 1].strip()
                break
    info["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
    return info


# --- workflow mode ---------------------------------------------------------------------------------


def _run_sample(args, namespace: dict, source_lines: list[str], sample_id: int, rpc_fd: int, out_fd: int):
    """Body of a forked sample child. Never returns."""
    status = 0
    try:
        os.setsid()
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        resource.setrlimit(resource.RLIMIT_CPU, (args.limits["cpu_seconds"], args.limits["cpu_seconds"] + 1))
        workdir = os.path.join(args.scratch, f"sample-{sample_id}")
        os.makedirs(workdir, exist_ok=True)
        os.chdir(workdir)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        sock = socket.socket(fileno=rpc_fd)
        first = protocol.recv(sock)
        task = protocol.decode(first.get("task"))
        import agent as agent_module  # already imported by the parent: a dict lookup

        channel = agent_module._Channel(sock)
        agent = agent_module.Agent(channel, sys.executable, {"timeout": args.limits["code_timeout"]})
        try:
            answer = namespace["solver"](agent, task)
            if isinstance(answer, dict) and "answer" in answer:
                answer = answer["answer"]
            message = {"op": "done", "answer": protocol.encode(answer)}
        except BaseException as exc:  # noqa: BLE001 - every workflow failure is reported, none escapes
            message = {"op": "failed", "error": _error_info(exc, source_lines)}
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        protocol.send(sock, message)
    except BaseException:  # noqa: BLE001 - the child must reach os._exit whatever happens
        status = 70
    os._exit(status)


def _proc_children(parent: int) -> list[int]:
    """PIDs whose parent is ``parent`` (reads /proc; the sandbox's own view)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == parent:
            found.append(int(entry))
    return found


def _become_subreaper() -> None:
    """Orphans of sample processes must come back to us (automatic when we are PID 1)."""
    if os.getpid() == 1:
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _serve_workflow(args, ctrl: socket.socket) -> None:
    import agent  # noqa: F401 - loaded once here so that forked samples start warm

    _become_subreaper()
    source = open(os.path.join(args.code_dir, WORKFLOW_FILE), encoding="utf-8").read()
    source_lines = source.splitlines()
    namespace = {"__name__": "workflow", "__file__": WORKFLOW_FILE}
    try:
        exec(compile(source, WORKFLOW_FILE, "exec"), namespace)
        if not callable(namespace.get("solver")):
            raise NameError("the workflow defines no function `solver(agent, task)`")
    except BaseException as exc:  # noqa: BLE001 - a broken workflow is feedback, not a crash
        ctrl.send(json.dumps({"op": "load_error", "error": _error_info(exc, source_lines)}).encode())
        return
    ctrl.send(json.dumps({"op": "ready"}).encode())

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(ctrl, selectors.EVENT_READ, "ctrl")
    selector.register(wake_r, selectors.EVENT_READ, "wake")
    running: dict[int, int] = {}  # pid -> sample id
    me = os.getpid()

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            sample_id = running.pop(pid, None)
            if sample_id is None:
                continue
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            shutil.rmtree(os.path.join(args.scratch, f"sample-{sample_id}"), ignore_errors=True)
            report = {"op": "exit", "id": sample_id}
            if os.WIFSIGNALED(status):
                report["signal"] = os.WTERMSIG(status)
            else:
                report["code"] = os.WEXITSTATUS(status)
            ctrl.send(json.dumps(report).encode())
        # Processes that escaped their sample's group were re-parented to us: end them.

    def sweep() -> None:
        for pid in _proc_children(me):
            if pid not in running:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    while True:
        for key, _ in selector.select():
            if key.data == "wake":
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                reap()
                sweep()
                continue
            data, fds, _flags, _addr = socket.recv_fds(ctrl, 65536, 4)
            if not data:
                return
            message = json.loads(data)
            op = message.get("op")
            if op == "run":
                rpc_fd, out_fd = fds
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    os.close(wake_r)
                    os.close(wake_w)
                    ctrl.close()
                    _run_sample(args, namespace, source_lines, message["id"], rpc_fd, out_fd)
                os.close(rpc_fd)
                os.close(out_fd)
                running[pid] = message["id"]
            elif op == "kill":
                for pid, sample_id in list(running.items()):
                    if sample_id == message["id"]:
                        for kill in (os.killpg, os.kill):
                            try:
                                kill(pid, signal.SIGKILL)
                            except OSError:
                                pass
            else:
                for fd in fds:
                    os.close(fd)


# --- function mode ---------------------------------------------------------------------------------


def _serve_functions(args, ctrl: socket.socket) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    source = open(os.path.join(args.code_dir, "candidate.py"), encoding="utf-8").read()
    namespace = {"__name__": "__main__"}
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    try:
        exec(compile(source, "candidate.py", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - a broken candidate is a failed answer
        protocol.send(ctrl, {"op": "load_error", "error": {"type": type(exc).__name__, "message": str(exc)[:500]}})
        return
    callables = sorted(name for name, value in namespace.items() if callable(value) and not name.startswith("__"))
    protocol.send(ctrl, {"op": "ready", "callables": callables})
    while True:
        try:
            message = protocol.recv(ctrl)
        except EOFError:
            return
        reply = {"op": "reply", "id": message.get("id")}
        try:
            function = namespace[message["name"]]
            call_args = protocol.decode(message["args"])
            call_kwargs = protocol.decode(message["kwargs"])
            reply["value"] = protocol.encode(function(*call_args, **call_kwargs))
            reply["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - the host turns it into the same exception type name
            reply["ok"] = False
            reply["error"] = {"type": type(exc).__name__, "message": str(exc)[:500]}
        protocol.send(ctrl, reply)


# --- probe mode ------------------------------------------------------------------------------------


def _probe(args, ctrl: socket.socket, applied: dict) -> None:
    report = dict(applied)
    report["uid"] = os.getuid()
    report["pid"] = os.getpid()
    report["env_keys"] = sorted(os.environ)
    report["visible_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=1).close()
        report["network"] = "reachable"
    except OSError as exc:
        report["network"] = f"blocked: {exc.strerror or exc}"
    report["readable"] = {}
    for path in args.probe_read:
        try:
            with open(path, "rb") as handle:
                handle.read(1)
            report["readable"][path] = True
        except OSError:
            report["readable"][path] = False
    report["writable"] = {}
    for path in args.probe_write + [os.path.join(args.scratch, "probe.txt")]:
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
    protocol.send(ctrl, {"op": "probe", "report": report})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["workflow", "function", "probe"], required=True)
    parser.add_argument("--ctrl-fd", type=int, required=True)
    parser.add_argument("--code-dir", required=True)
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--limits", type=json.loads, required=True)
    parser.add_argument("--drop-uid", type=int)
    parser.add_argument("--seccomp", type=int, default=1)
    parser.add_argument("--sys-path", type=json.loads, default=[])
    parser.add_argument("--probe-read", action="append", default=[])
    parser.add_argument("--probe-write", action="append", default=[])
    args = parser.parse_args(argv)
    kind = socket.SOCK_SEQPACKET if args.mode == "workflow" else socket.SOCK_STREAM
    ctrl = socket.socket(socket.AF_UNIX, kind, fileno=args.ctrl_fd)
    applied = _harden(args)
    _set_limits(args.limits, with_cpu=args.mode != "workflow")
    sys.path.extend(args.sys_path)
    os.makedirs(args.scratch, exist_ok=True)
    os.chdir(args.scratch)
    # From here on a failure is the code's doing, not the sandbox's: tell the host we are up.
    started = {"op": "started", "applied": applied}
    if args.mode == "workflow":
        ctrl.send(json.dumps(started).encode())
    else:
        protocol.send(ctrl, started)
    if args.mode == "workflow":
        _serve_workflow(args, ctrl)
    elif args.mode == "function":
        _serve_functions(args, ctrl)
    else:
        _probe(args, ctrl, applied)


if __name__ == "__main__":
    main()
