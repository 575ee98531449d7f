"""A memory limit for a child process: a cgroup of its own (v2, else v1) under this process's cgroup.

Used by the slow memory test and ``perf/train_memory.py`` (which also uses it so that a run that would
grow past the machine's memory is killed inside its group, not by the kernel's global OOM killer).
``MemoryCgroup.create(limit_bytes)`` returns one, or raises ``Unavailable`` saying why not (no cgroup
filesystem, memory controller not delegated, not writable).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from w4s.training.memory import cgroup_dirs

_names = itertools.count()


class Unavailable(Exception):
    """No memory cgroup can be made here; the message says why."""


class MemoryCgroup:
    def __init__(self, path: Path, version: str, limit: int):
        self.path, self.version, self.limit = path, version, limit

    @classmethod
    def create(cls, limit: int) -> MemoryCgroup:
        dirs = cgroup_dirs()
        reasons = []
        if "v2" in dirs:
            own = dirs["v2"]
            try:
                if "memory" not in (own / "cgroup.subtree_control").read_text().split():
                    (own / "cgroup.subtree_control").write_text("+memory")
                child = own / f"w4s-limit-{os.getpid()}-{next(_names)}"
                child.mkdir()
                try:
                    (child / "memory.max").write_text(str(limit))
                    if (child / "memory.swap.max").exists():
                        (child / "memory.swap.max").write_text("0")
                except OSError:
                    child.rmdir()
                    raise
                return cls(child, "v2", limit)
            except OSError as exc:
                reasons.append(f"cgroup v2 at {own}: {exc.strerror or exc}")
        if "v1" in dirs:
            own = dirs["v1"]
            try:
                child = own / f"w4s-limit-{os.getpid()}-{next(_names)}"
                child.mkdir()
                try:
                    (child / "memory.limit_in_bytes").write_text(str(limit))
                except OSError:
                    child.rmdir()
                    raise
                return cls(child, "v1", limit)
            except OSError as exc:
                reasons.append(f"cgroup v1 at {own}: {exc.strerror or exc}")
        if not dirs:
            reasons.append("no memory cgroup of this process found under /sys/fs/cgroup")
        raise Unavailable("; ".join(reasons))

    def join(self) -> None:
        """Move the calling process into the group (``preexec_fn`` of a child: it moves before exec)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak(self) -> int | None:
        """The group's peak charge (RSS and page cache), where the kernel reports it."""
        name = "memory.peak" if self.version == "v2" else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        try:
            if self.version == "v2":
                for line in (self.path / "memory.events").read_text().splitlines():
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
                return 0
            text = (self.path / "memory.oom_control").read_text()
            for line in text.splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass

    def __enter__(self) -> MemoryCgroup:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
