"""Run by test_isolation as an unprivileged user: doctor, a few samples, and what they left behind.

Usage: python nonroot_probe.py JSON_SYS_PATH ISOLATION
"""

import asyncio
import json
import os
import sys
import time

sys.path[:0] = json.loads(sys.argv[1])

from w4s.sandbox import doctor  # noqa: E402
from w4s.sandbox.config import SandboxConfig  # noqa: E402
from w4s.sandbox.runner import CallableHost  # noqa: E402
from w4s.sandbox.workflow import WorkflowSandbox  # noqa: E402

WORKFLOW = """
import os, time
def solver(agent, task):
    if task == "daemon":
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(600)
            os._exit(0)
        return "left"
    if task == "mark":  # files as open as a job can make them, in its scratch and /tmp
        for path in ("mark.txt", "/tmp/mark.txt"):
            with open(path, "w") as handle:
                handle.write("mark")
            os.chmod(path, 0o666)
        os.chmod(".", 0o777)
        time.sleep(0.6)
        return "marked"
    if task == "look":  # a sibling, after the mark: it must see none of it
        time.sleep(0.3)
        return sorted(os.listdir("/tmp") + os.listdir("/scratch") + os.listdir("."))
    if task == "escalate":  # the zygote holds CAP_SYS_ADMIN of its user namespace; a job must not
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        tried = [libc.unshare(0x20000), ctypes.get_errno(), libc.mount(b"x", b"/tmp", b"tmpfs", 0, None)]
        caps = [line.split()[1] for line in open("/proc/self/status") if line.startswith(("CapEff", "CapAmb"))]
        return tried + [ctypes.get_errno()] + caps
    if task == "hang":
        time.sleep(100)
    if task == "peek":  # every other process of this uid: memory writable? environment readable?
        time.sleep(0.3)  # the zygote has forked jobs ahead by now
        reached = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            for name, mode in (("mem", "r+b"), ("environ", "rb")):
                try:
                    with open(f"/proc/{pid}/{name}", mode, buffering=0) as handle:
                        if name == "environ":
                            handle.read(1)
                    reached.append(f"{pid}/{name}")
                except OSError:
                    pass
        return reached
    return agent.call_llm(task)[0] + agent.execute_code("6*7")
"""
cfg = SandboxConfig(isolation=sys.argv[2], timeout_s=2, warm_jobs=2, allow_degraded=sys.argv[2] == "process")


async def main():
    async with WorkflowSandbox(WORKFLOW, CallableHost(lambda request: ["ok"]), cfg) as box:
        tasks = ["a", "daemon", "hang", "b", "peek"]
        if cfg.isolation != "process":  # process isolation shares the host's /tmp: nothing to check there
            tasks += ["mark", "look", "escalate"]
        return await box.run_many(tasks, concurrency=4)


def alive(pid: str) -> bool:
    """A live process of ours (zombies wait for the host's init to reap them; they run nothing)."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return False
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


results = asyncio.run(main())
time.sleep(1.5)
left = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid() and alive(p)]
report = {
    "layers": {c.layer: c.ok for c in doctor.diagnose(cfg)},
    "results": [[r.answer, r.error and r.error["type"]] for r in results],
    "left": left,
}
sys.stdout.write(json.dumps(report) + "\n")
