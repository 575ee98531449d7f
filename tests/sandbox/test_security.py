"""Hostile workflows: each must end in exactly the contained outcome, and the host must survive.

Every test runs the hostile code in a real sandbox next to a benign sample and checks both, so a
hostile sample that took the sandbox (or its neighbours) down would fail the test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import textwrap
import time

import pytest

from tests.conftest import REPO, run
from w4s.sandbox import isolation
from w4s.sandbox.runner import CallableHost
from w4s.sandbox.workflow import WorkflowSandbox

SECRET = "sk-w4s-test-secret-0123456789"
BENIGN = "__benign__"


@pytest.fixture(autouse=True)
def secret_in_host_env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("W4S_EXECUTOR_API_KEY", SECRET)


def hostile(body: str) -> str:
    """A workflow whose solver runs ``body`` for the hostile task and answers 'fine' otherwise."""
    return (
        "import os, sys, signal, time, socket, ctypes\n\ndef solver(agent, task):\n"
        f"    if task == {BENIGN!r}:\n        return 'fine'\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
    )


def contained(body: str, cfg, extra_tasks=0, job_uids: list | None = None):
    """Run the hostile body once beside benign samples; return the hostile sample's result.
    ``job_uids`` receives the uids the sandbox gave its jobs (as root; None otherwise)."""

    async def main():
        async with WorkflowSandbox(hostile(body), CallableHost(lambda r: ["x"]), cfg) as box:
            if job_uids is not None:
                job_uids.append(box._box.job_uids)
            return await box.run_many(
                ["attack", BENIGN] + [BENIGN] * extra_tasks, concurrency=2 + extra_tasks
            )

    results = asyncio.run(main())
    for benign in results[1:]:
        assert benign.answer == "fine", f"a neighbour was harmed: {benign.error}"
    assert os.getpid() > 0  # the host process is still here, running this line
    return results[0]


def left_behind(uids: range | None) -> list[int]:
    """Live processes that run under the given job uids (they are this test's own sandbox's: no one
    else has them), once the sandbox has had a few seconds to sweep them; [] when they are all gone."""
    if uids is None:
        return []
    found: list[int] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}").st_uid in uids:
                        with open(f"/proc/{entry}/stat") as handle:
                            if handle.read().rsplit(")", 1)[1].split()[0] != "Z":  # zombies run nothing
                                found.append(int(entry))
                except OSError:
                    pass
        if not found:
            break
        time.sleep(0.05)
    return found


# --- secrets ---------------------------------------------------------------------------------------


def test_environment_holds_no_secrets(cfg):
    result = contained("return sorted(os.environ.items())", cfg)
    assert SECRET not in repr(result.answer)
    assert {key for key, _ in result.answer} <= {"HOME", "LANG", "PATH", "MALLOC_ARENA_MAX", "PWD"}


def test_other_processes_environ_is_unreadable(cfg):
    result = contained(
        """
        found = []
        for pid in os.listdir('/proc'):
            if pid.isdigit():
                try:
                    found.append((pid, open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace')))
                except OSError as exc:
                    found.append((pid, type(exc).__name__))
        return found
    """,
        cfg,
    )
    assert SECRET not in repr(result.answer)
    assert os.environ["OPENAI_API_KEY"] == SECRET  # the secret was really there to steal
    assert all(pid != str(os.getpid()) for pid, _ in result.answer)
    assert dict(result.answer)["1"] == "PermissionError"  # the zygote's environ belongs to another uid


def test_host_processes_are_invisible(cfg):
    result = contained(
        """
        pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
        def parent(pid):
            stat = open(f'/proc/{pid}/stat').read()
            return int(stat[stat.rfind(')') + 2 :].split()[1])
        return [[pid, parent(pid)] for pid in pids]
        """,
        cfg,
    )
    # The zygote (PID 1 of the sandbox) and its children: samples and the jobs it forked ahead.
    assert result.answer[0] == [1, 0]
    assert all(ppid == 1 for _, ppid in result.answer[1:])
    assert len(result.answer) <= 4 + (cfg.warm_jobs or 0)


# --- network ---------------------------------------------------------------------------------------


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    yield server
    server.close()


def test_no_socket_to_the_hosts_loopback(cfg, listener):
    port = listener.getsockname()[1]
    result = contained(
        f"""
        try:
            socket.create_connection(('127.0.0.1', {port}), timeout=2)
            return 'connected'
        except OSError as exc:
            return type(exc).__name__
    """,
        cfg,
    )
    assert result.answer == "PermissionError"
    with pytest.raises(TimeoutError):
        listener.accept()


def test_no_socket_of_any_family_and_no_route_out(cfg):
    result = contained(
        """
        out = []
        for family, kind in ((socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_INET6, socket.SOCK_STREAM),
                             (socket.AF_UNIX, socket.SOCK_STREAM), (socket.AF_PACKET, socket.SOCK_RAW)):
            try:
                socket.socket(family, kind)
                out.append('created')
            except OSError as exc:
                out.append(type(exc).__name__)
        out.append(open('/proc/net/route').read().count('\\n'))
        return out
    """,
        cfg,
    )
    assert result.answer == ["PermissionError"] * 4 + [1]  # header line only: no routes at all


def test_ctypes_socket_syscall_is_refused(cfg):
    result = contained(
        """
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.socket(2, 1, 0)
        return [fd, ctypes.get_errno()]
    """,
        cfg,
    )
    assert result.answer == [-1, 13]  # EACCES from the seccomp filter


# --- filesystem ------------------------------------------------------------------------------------


def test_writes_outside_scratch_fail(cfg, tmp_path):
    target = tmp_path / "pwned.txt"
    os.chmod(tmp_path, 0o777)
    result = contained(
        f"""
        out = []
        for path in ({str(target)!r}, '/usr/pwned', '/w4s/code/pwned', '/w4s/runtime/worker.py', '/pwned'):
            try:
                open(path, 'w').write('x')
                out.append('written')
            except OSError as exc:
                out.append(type(exc).__name__)
        open('mine.txt', 'w').write('scratch is writable')
        out.append(open('mine.txt').read())
        return out
    """,
        cfg,
    )
    assert result.answer[:5] == ["FileNotFoundError", "OSError", "OSError", "OSError", "PermissionError"]
    assert result.answer[5] == "scratch is writable"
    assert not target.exists()


def test_benchmark_files_and_project_are_unreadable(cfg, data_dir):
    paths = [
        str(data_dir / "humaneval" / "test.jsonl"),
        str(REPO / "pyproject.toml"),
        "/root/.bashrc",
        "/etc/passwd",
        "/etc/shadow",
    ]
    result = contained(
        f"""
        out = []
        for path in {paths!r}:
            try:
                open(path).read(10)
                out.append('read')
            except OSError as exc:
                out.append(type(exc).__name__)
        return out
    """,
        cfg,
    )
    assert result.answer == ["FileNotFoundError"] * 5


def test_file_size_limit(cfg):
    result = contained("open('big.bin', 'wb').write(b'x' * (64 * 1024 * 1024))\nreturn 'wrote'", cfg)
    # CPython ignores SIGXFSZ, so the write fails with EFBIG instead of killing the process.
    assert result.error["type"] == "OSError" and "File too large" in result.error["message"]


def test_filling_scratch_is_an_error_not_a_host_problem(cfg):
    cfg.scratch_mb = 20
    result = contained(
        """
        for i in range(100):
            open(f'f{i}.bin', 'wb').write(b'x' * (8 * 1024 * 1024))
    """,
        cfg,
    )
    assert result.error["type"] == "OSError" and "No space left" in result.error["message"]


# --- processes and resources -----------------------------------------------------------------------


def test_fork_bomb_is_bounded_and_cleaned_up(cfg):
    cfg.timeout_s = 4
    uids: list = []
    result = contained(
        """
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """,
        cfg,
        job_uids=uids,
    )
    assert result.error["type"] in ("TimeoutError", "KilledBySignal")
    assert (uids[0] is not None) == (os.geteuid() == 0)
    assert left_behind(uids[0]) == []


def test_thread_bomb_is_bounded(cfg):
    result = contained(
        """
        import threading
        while True:
            threading.Thread(target=time.sleep, args=(100,), daemon=True).start()
    """,
        cfg,
    )
    assert result.error["type"] == "RuntimeError" and "can't start new thread" in result.error["message"]


def test_memory_bomb_at_once(cfg):
    result = contained("return len(bytearray(8 * 1024 ** 3))", cfg)
    assert result.error["type"] == "MemoryError"


def test_memory_bomb_gradual(cfg):
    result = contained(
        """
        hoard = []
        while True:
            hoard.append(b'x' * (50 * 1024 * 1024))
    """,
        cfg,
    )
    assert result.error["type"] == "MemoryError"


def test_infinite_loop_is_killed_at_its_time_limit(cfg):
    cfg.timeout_s = 1.5
    result = contained("while True:\n    pass", cfg)
    assert result.error["type"] == "TimeoutError" and "longer than 1.5 s" in result.error["message"]
    assert result.wall_seconds >= 1.5  # a lower bound only: it ran until its limit


def test_cpu_limit_kills_busy_code(cfg):
    cfg.cpu_seconds, cfg.timeout_s = 1, 20
    result = contained("x = 0\nwhile True:\n    x += 1", cfg)
    assert result.error["type"] == "CPUTimeLimit"


def test_sleeping_forever_is_killed(cfg):
    result = contained("time.sleep(10 ** 6)", cfg)
    assert result.error["type"] == "TimeoutError"


def test_ignoring_sigterm_does_not_help(cfg):
    result = contained(
        """
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
            signal.signal(sig, signal.SIG_IGN)
        time.sleep(10 ** 6)
    """,
        cfg,
    )
    assert result.error["type"] == "TimeoutError"


def test_daemonised_children_do_not_outlive_the_sample(cfg):
    uids: list = []
    result = contained(
        """
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(600)
            os._exit(0)
        time.sleep(0.2)
        return 'left a daemon'
    """,
        cfg,
        job_uids=uids,
    )
    assert result.answer == "left a daemon"
    assert left_behind(uids[0]) == []


def test_killing_the_parent_is_ignored(cfg):
    result = contained(
        """
        out = []
        for pid in (os.getppid(), 1):
            try:
                os.kill(pid, signal.SIGKILL)
                out.append('sent')
            except OSError as exc:
                out.append(type(exc).__name__)
        time.sleep(0.3)
        return out + ['alive', os.getppid()]
    """,
        cfg,
        extra_tasks=2,
    )
    # As root each job has its own uid and may not signal the zygote at all; without root the
    # zygote is PID 1 of the namespace, which ignores SIGKILL from inside it. Either way: alive.
    refused = "PermissionError" if os.geteuid() == 0 else "sent"
    assert result.answer == [refused, refused, "alive", 1]


@pytest.mark.skipif(os.geteuid() != 0, reason="without root, jobs share one uid and can signal each other")
def test_kill_everything_reachable_hurts_no_neighbour(cfg):
    result = contained(
        """
        if os.fork() == 0:
            time.sleep(30)
        os.kill(-1, signal.SIGKILL)
        time.sleep(0.5)
        return 'survived'
    """,
        cfg,
        extra_tasks=2,
    )
    # kill(-1) reaches every process of the job's own uid except the caller: its child, no neighbour.
    assert result.answer == "survived"


def test_deep_recursion(cfg):
    result = contained("def f(n):\n    return f(n + 1)\nreturn f(0)", cfg)
    assert result.error["type"] == "RecursionError"


def test_stack_overflow_crash_is_contained(cfg):
    result = contained(
        """
        sys.setrecursionlimit(10 ** 8)
        nested = []
        for _ in range(10 ** 6):
            nested = [nested]
        return repr(nested)
    """,
        cfg,
    )
    assert result.error["type"] == "KilledBySignal" and "SIGSEGV" in result.error["message"]


def test_privilege_escalation_attempts_fail(cfg):
    result = contained(
        """
        out = []
        for attempt in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.chroot('/'),
                        lambda: os.setgroups([0])):
            try:
                attempt()
                out.append('ok')
            except OSError as exc:
                out.append(type(exc).__name__)
        libc = ctypes.CDLL(None, use_errno=True)
        out.append([libc.unshare(0x10000000), ctypes.get_errno()])  # CLONE_NEWUSER
        # The zygote's filter lets a new job make its private scratch; a running job has no
        # capability left to use that: no mount namespace of its own, no mount, no unmount.
        out.append([libc.unshare(0x20000), ctypes.get_errno()])  # CLONE_NEWNS
        out.append([libc.mount(b"x", b"/scratch", b"tmpfs", 0, None), ctypes.get_errno()])
        out.append([libc.umount2(b"/scratch", 2), ctypes.get_errno()])
        out.append([libc.ptrace(16, 1, 0, 0), ctypes.get_errno()])  # PTRACE_ATTACH to the zygote
        out.append(os.getuid() != 0)
        return out
    """,
        cfg,
    )
    assert result.answer == ["PermissionError"] * 4 + [[-1, 1]] * 5 + [True]


def test_ctypes_can_only_hurt_itself(cfg):
    result = contained("ctypes.string_at(0)", cfg)
    assert result.error["type"] == "KilledBySignal" and "SIGSEGV" in result.error["message"]


# --- exits and answers -----------------------------------------------------------------------------


def test_os_exit_is_an_early_exit(cfg):
    assert contained("os._exit(0)", cfg).error["type"] == "EarlyExit"


def test_sys_exit_is_a_failure(cfg):
    result = contained("sys.exit(0)", cfg)
    assert result.error["type"] == "SystemExit" and result.answer is None


def test_self_kill_is_a_failure(cfg):
    result = contained("os.kill(os.getpid(), signal.SIGKILL)", cfg)
    assert result.error["type"] == "KilledBySignal"


def test_lying_answers_cannot_cross(cfg):
    result = contained(
        """
        class Liar(str):
            def __eq__(self, other):
                return True
            __hash__ = str.__hash__
        return {'answer': Liar('anything')}
    """,
        cfg,
    )
    # The subclass crosses as the honest str it holds; its __eq__ stays behind.
    assert result.answer == "anything" and type(result.answer) is str
    always = contained(
        """
        class Always:
            def __eq__(self, other):
                return True
        return Always()
    """,
        cfg,
    )
    assert always.error["type"] == "PlainDataError"


def test_forged_protocol_traffic_is_rejected(cfg):
    result = contained(
        """
        import struct
        for fd in range(3, 20):
            try:
                os.write(fd, struct.pack('>I', 2 ** 31) + b'garbage')
            except OSError:
                pass
        time.sleep(1)
        return 'sent'
    """,
        cfg,
    )
    assert result.answer is None and result.error["type"] in ("ProtocolError", "EarlyExit", "KilledBySignal")


def test_huge_output_is_truncated(cfg):
    cfg.output_bytes = 4096
    result = contained(
        """
        for _ in range(200):
            print('z' * 100_000)
        return 'done'
    """,
        cfg,
    )
    assert result.answer == "done"
    assert len(result.output) < 4200 and "[output truncated at 4096 bytes]" in result.output


def test_host_is_untouched_after_the_suite():
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler)
    assert os.environ.get("OPENAI_API_KEY") == SECRET


def test_call_floods_are_refused_beyond_the_in_flight_cap(cfg):
    from w4s.sandbox.workflow import MAX_CALLS_IN_FLIGHT

    async def slow(request):
        await asyncio.sleep(0.5)
        return ["x"]

    source = hostile("""
        from concurrent.futures import ThreadPoolExecutor
        def ask(i):
            try:
                return agent.call_llm('q')[0]
            except Exception as exc:
                return type(exc).__name__ + ': ' + str(exc).split(':')[0]
        with ThreadPoolExecutor(100) as pool:
            return sorted(set(pool.map(ask, range(100))))
    """)
    cfg.max_processes, cfg.memory_mb = 256, 2048  # 100 threads need their stacks
    result = run(source, ["attack"], cfg, host=CallableHost(slow))[0]
    assert result.answer == ["AgentError: TooManyCalls", "x"]
    assert MAX_CALLS_IN_FLIGHT < 100


def test_forged_error_reports_are_bounded(cfg):
    result = contained(
        """
        raise ValueError('m' * 10 ** 6)
    """,
        cfg,
    )
    assert result.error["type"] == "ValueError" and len(result.error["message"]) <= 2000


SHARING_PROBE = """
import os, time
def everything_visible():
    seen = {}
    for top in {'/scratch', '/tmp', os.getcwd()}:
        for root, dirs, files in os.walk(top):
            for name in files:
                path = os.path.join(root, name)
                try:
                    seen[path] = open(path).read()
                except OSError as exc:
                    seen[path] = type(exc).__name__
    for pid in os.listdir('/proc'):  # another job's files through its /proc/<pid>/root
        if pid.isdigit() and int(pid) != os.getpid():
            for top in ('scratch', 'tmp'):
                try:
                    for name in os.listdir(f'/proc/{pid}/root/{top}'):
                        seen[f'/proc/{pid}/root/{top}/{name}'] = 'listed'
                except OSError:
                    pass
    return seen

def solver(agent, task):
    mine = everything_visible()  # before writing: whatever a job before it left behind
    for path in ('note.txt', '/tmp/note.txt', '/scratch/shared.txt'):
        try:
            with open(path, 'w') as handle:
                handle.write(task)
            os.chmod(path, 0o666)
        except OSError:  # a sibling's file of that name is in the way: sharing
            pass
    for folder in ('.', '/tmp', '/scratch'):
        try:
            os.chmod(folder, 0o777)  # as open as the job can make its files
        except OSError:
            pass
    time.sleep(0.4)  # while the sibling writes its own
    return [sorted(mine), sorted(everything_visible().items())]
"""


def test_samples_share_no_files_at_the_same_time_or_one_after_another(cfg):
    cfg.warm_jobs = 0  # a fresh fork per sample as well as ...
    for warm in (0, 2):  # ... jobs forked ahead
        cfg.warm_jobs = warm
        results = run(SHARING_PROBE, ["a", "b", "c", "d"], cfg, concurrency=2)
        for result in results:
            task = "abcd"[result.index]
            before, after = result.answer
            assert before == [], f"sample {task} found files of an earlier one: {before}"
            # Its own files only: its scratch directory, which it also sees at /tmp.
            mine = [("note.txt", task), ("shared.txt", task)]
            assert after == [(f"/scratch/{n}", t) for n, t in mine] + [(f"/tmp/{n}", t) for n, t in mine]


IPC_PROBE = """
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.mq_open.restype = ctypes.c_int
KEY, CREATE, OPEN = 0x5734, 0o1000, 0o100  # IPC_CREAT; O_CREAT of mq_open
def solver(agent, task):
    if task == 'write':  # System V and POSIX IPC objects open to everyone, holding the task
        made = []
        shm = libc.shmget(KEY, 4096, 0o666 | CREATE)
        if shm >= 0:
            address = libc.shmat(shm, None, 0)
            if address not in (None, ctypes.c_void_p(-1).value):
                ctypes.memmove(address, b'secret', 7)
                made.append('shm')
        for name, made_it in (
            ('msg', libc.msgget(KEY, 0o666 | CREATE)),
            ('sem', libc.semget(KEY, 1, 0o666 | CREATE)),
            ('mq', libc.mq_open(b'/w4s-note', 2 | OPEN, 0o666, None)),
        ):
            if made_it >= 0:
                made.append(name)
        time.sleep(0.6)  # while the sibling looks
        return made
    time.sleep(0.3)
    seen = [name for name, found in (
        ('shm', libc.shmget(KEY, 0, 0)),
        ('msg', libc.msgget(KEY, 0)),
        ('sem', libc.semget(KEY, 0, 0)),
        ('mq', libc.mq_open(b'/w4s-note', 0)),
    ) if found >= 0]
    return seen
"""


def test_samples_share_no_ipc_objects(cfg):
    """System V shared memory, message queues and semaphores, and POSIX message queues live in the
    sandbox's IPC namespace, which all its jobs share: a job must not be able to make them, or the
    next sample (or a concurrent one) reads what it left there, whatever uid it has."""
    for warm in (0, 2):
        cfg.warm_jobs = warm
        written, concurrent, later = run(IPC_PROBE, ["write", "look", "look"], cfg, concurrency=2)
        assert written.error is None and written.answer == [], written.answer
        assert concurrent.answer == [] and later.answer == [], (concurrent.answer, later.answer)


def test_jobs_cannot_signal_each_other_through_the_files_they_share(cfg):
    """Every job, and every code answer's job (which sees hidden test inputs), can read the same
    system files: a lock taken on one, or a watch that sees another job open it, would be a channel
    between jobs running at the same time. Locks, leases and watches are refused; reading is not."""
    result = contained(
        """
        import fcntl, struct
        refused = []
        path = sys.executable
        with open(path, 'rb') as handle:
            for name, attempt in (
                ('flock', lambda: fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)),
                ('lockf', lambda: fcntl.lockf(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)),
                ('ofd', lambda: fcntl.fcntl(handle, 37, struct.pack('hhqqi', fcntl.F_RDLCK, 0, 0, 0, 0))),
                ('lease', lambda: fcntl.fcntl(handle, 1024, fcntl.F_RDLCK)),
            ):
                try:
                    attempt()
                except PermissionError:
                    refused.append(name)
            handle.read(16)  # reading stays allowed
        folder = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            fcntl.fcntl(folder, 1026, 0x1)  # F_NOTIFY, DN_ACCESS
        except PermissionError:
            refused.append('dnotify')
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.inotify_init1(0) == -1 and ctypes.get_errno() == 1:
            refused.append('inotify')
        return refused
    """,
        cfg,
    )
    assert result.error is None, result.error
    assert result.answer == ["flock", "lockf", "ofd", "lease", "dnotify", "inotify"]


def test_a_forged_final_message_does_not_keep_the_job_alive(cfg):
    """The host takes a sample's answer as soon as it arrives; a job that forged one to keep running
    in the background is killed all the same, with what it started. The next sample checks."""
    source = """
import os, sys, time, subprocess
def solver(agent, task):
    if task == 'attack':
        import protocol
        child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)
        protocol.send(agent._channel._sock, {'op': 'done', 'answer': [os.getpid(), child.pid]})
        while True:
            pass
    time.sleep(1.0)
    alive = []
    for pid in task:
        try:
            with open(f'/proc/{pid}/stat') as handle:
                if handle.read().rsplit(')', 1)[1].split()[0] != 'Z':
                    alive.append(pid)
        except OSError:
            pass
    return alive
"""

    async def main():
        async with WorkflowSandbox(source, CallableHost(lambda request: ["x"]), cfg) as box:
            attack = await box.run("attack")
            probe = await box.run(attack.answer)
        return attack, probe

    attack, probe = asyncio.run(main())
    # Taken at once: had the host waited for the job to end, the sample would have timed out.
    assert attack.error is None and len(attack.answer) == 2
    assert probe.error is None and probe.answer == []


def test_jobs_forked_ahead_are_as_isolated_as_fresh_ones(cfg):
    """Samples served by rehearsed, pre-forked jobs get their own uid, limits, scratch and streams."""
    cfg.warm_jobs = 4
    source = """
import os, resource, sys, time
def solver(agent, task):
    time.sleep(0.1)  # leaves the zygote quiet long enough to refill its pool between samples
    print('out', task)
    return [os.getuid(), os.getcwd(), resource.getrlimit(resource.RLIMIT_NPROC)[0],
            resource.getrlimit(resource.RLIMIT_AS)[0], sys.stdout.line_buffering, sorted(os.listdir('.'))]
"""
    results = run(source, [str(i) for i in range(8)], cfg, concurrency=2)
    answers = [r.answer for r in results]
    assert all(r.output == f"out {i}\n" for i, r in enumerate(results))
    assert all(cwd == "/scratch" for _, cwd, *_ in answers)  # a private scratch, empty at start
    assert all(listing == [] for *_, listing in answers)
    assert all(nproc == cfg.max_processes for _, _, nproc, *_ in answers) or os.geteuid() != 0
    assert all(mem == cfg.memory_mb * 1024 * 1024 and buffered for *_, mem, buffered, _ in answers)
    if os.geteuid() == 0:
        assert len({uid for uid, *_ in answers}) == 8 and all(
            uid >= isolation._UID_BASE for uid, *_ in answers
        )


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _wait_for_pool(box, count: int) -> set[int]:
    """The zygote (bwrap's child) and ``count`` jobs forked ahead, once they all exist."""
    deadline = time.time() + 5
    while len(_descendants(box._proc.pid)) < count + 1 and time.time() < deadline:
        time.sleep(0.02)
    found = _descendants(box._proc.pid)
    assert len(found) >= count + 1
    return found


def test_jobs_forked_ahead_end_with_their_sandbox(cfg):
    from w4s.sandbox.host import Sandbox

    cfg.warm_jobs = 3
    box = Sandbox(cfg, {"workflow.py": "def solver(agent, task):\n    return 1\n"})
    try:
        before = _wait_for_pool(box, 3)
    finally:
        box.close()
    deadline = time.time() + 5
    while any(os.path.exists(f"/proc/{pid}") for pid in before) and time.time() < deadline:
        time.sleep(0.02)
    assert not [pid for pid in before if os.path.exists(f"/proc/{pid}")]


def test_killed_waiting_jobs_are_replaced(cfg):
    """Jobs forked ahead that die before they get a sample (without root a sibling sharing their
    uid can kill them) cost nothing: samples go to the survivors or to fresh forks."""
    cfg.warm_jobs = 3

    async def main():
        source = "def solver(agent, task):\n    return task * 2\n"
        async with WorkflowSandbox(source, CallableHost(lambda r: ["x"]), cfg) as box:
            zygote = {int(p) for p in os.popen(f"pgrep -P {box._box._proc.pid}").read().split()}
            waiting = _wait_for_pool(box._box, 3) - zygote
            for pid in waiting:
                os.kill(pid, signal.SIGKILL)
            # Until the zygote has reaped them: a kill still in flight at the very moment of the
            # hand-over would cost that one sample, like a kill of a running sibling.
            deadline = time.time() + 5
            while waiting & _descendants(box._box._proc.pid) and time.time() < deadline:
                await asyncio.sleep(0.01)
            return await box.run_many([1, 2, 3, 4, 5], concurrency=2)

    results = asyncio.run(main())
    assert [r.answer for r in results] == [2, 4, 6, 8, 10], [r.error for r in results]


# --- what a sample sends the host --------------------------------------------------------------------

FORGE = """
import json, os, struct, sys, time
def solver(agent, task):
    if task == 'benign':
        time.sleep(0.5)  # in flight while the host receives the attack
        return 'fine'
    modulus = (1 << 61) - 1
    if task == 'colliding set':  # 200,000 ints that all hash alike: minutes to build as a set
        value = {'__w4s__': 'set', 'v': [{'__w4s__': 'int', 'v': hex(7 + i * modulus)} for i in range(200_000)]}
        message = {'op': 'done', 'answer': value}
    elif task == 'colliding dict':
        pairs = [[{'__w4s__': 'int', 'v': hex(7 + i * modulus)}, 0] for i in range(200_000)]
        message = {'op': 'done', 'answer': {'__w4s__': 'dict', 'v': pairs}}
    elif task == 'million items':
        message = {'op': 'done', 'answer': [[] for _ in range(1_500_000)]}
    else:  # 'call without an id'
        message = {'op': 'call', 'id': 'x' * 100, 'method': 'call_llm', 'params': {}}
    body = json.dumps(message).encode()
    sock = agent._channel._sock
    sock.sendall(struct.pack('>I', len(body)) + body)
    time.sleep(30)
"""


@pytest.mark.parametrize(
    ("attack", "error"),
    [
        ("colliding set", "share one hash"),
        ("colliding dict", "share one hash"),
        ("million items", "more than 1000000 items"),
        ("call without an id", "integer id"),
    ],
)
def test_forged_frames_are_refused_quickly_and_harm_no_neighbour(cfg, attack, error):
    cfg.timeout_s = 60  # the attack must end on its refusal, far sooner
    results = run(FORGE, [attack, "benign", "benign"], cfg, concurrency=3)
    assert [r.answer for r in results[1:]] == ["fine", "fine"]
    assert results[0].answer is None and error in results[0].error["message"], results[0].error
    assert results[0].error["type"] in ("AnswerError", "ProtocolError")


def test_a_large_honest_answer_crosses(cfg):
    result = run("def solver(agent, task):\n    return list(range(300_000))\n", ["t"], cfg)[0]
    assert result.error is None and result.answer == list(range(300_000)) and result.answer_bytes > 1 << 20
