"""A seccomp-BPF filter for sandbox workers, built with ctypes (stdlib only).

It is a second line behind the namespaces, and the only network barrier where no network
namespace can be made (an unprivileged Kubernetes pod): new sockets are refused outright
(``socketpair`` stays allowed, and the channel to the host is inherited, never created), and the
calls that reach across the process boundary (System V and POSIX IPC included: its objects are
shared by every job of a sandbox) or reconfigure the kernel are refused too.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

# BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JSET_K = 0x45
_RET_K = 0x06

_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_KILL_PROCESS = 0x80000000

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

# struct seccomp_data offsets
_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG0_LO = 16
_OFF_ARG1_LO = 24

# fcntl commands that set a lock or a lease, or watch a directory (F_SETLK, F_SETLKW, F_OFD_SETLK,
# F_OFD_SETLKW, F_SETLEASE, F_NOTIFY): with flock and inotify, the ways one job could signal another
# through a file both can only read.
_FCNTL_SIGNALS = (6, 7, 37, 38, 1024, 1026)

_CLONE_NEWNS = 0x00020000
_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

# Per architecture: audit arch value and syscall numbers. Only what the filter names.
_ARCHES = {
    "x86_64": {
        "audit": 0xC000003E,
        "x32_bit": 0x40000000,
        "socket": 41,
        "clone": 56,
        "clone3": 435,
        "deny": {
            "ptrace": 101,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "io_uring_setup": 425,
            "bpf": 321,
            "perf_event_open": 298,
            "keyctl": 250,
            "add_key": 248,
            "request_key": 249,
            "userfaultfd": 323,
            "unshare": 272,
            "setns": 308,
            "mount": 165,
            "umount2": 166,
            "pivot_root": 155,
            "chroot": 161,
            "init_module": 175,
            "finit_module": 313,
            "delete_module": 176,
            "kexec_load": 246,
            "open_by_handle_at": 304,
            "name_to_handle_at": 303,
            "fanotify_init": 300,
            "personality": 135,
            "acct": 163,
            "swapon": 167,
            "swapoff": 168,
            "reboot": 169,
            "sethostname": 170,
            "setdomainname": 171,
            "iopl": 172,
            "ioperm": 173,
            "quotactl": 179,
            "lookup_dcookie": 212,
            "move_mount": 429,
            "open_tree": 428,
            "fsopen": 430,
            "fsconfig": 431,
            "fsmount": 432,
            "fspick": 433,
            "pidfd_getfd": 438,
            # System V and POSIX IPC: objects in the sandbox's IPC namespace outlive a job and are
            # shared by all its jobs, whatever their uid (one sample could leave data for the next).
            "shmget": 29,
            "shmat": 30,
            "shmctl": 31,
            "shmdt": 67,
            "semget": 64,
            "semop": 65,
            "semctl": 66,
            "semtimedop": 220,
            "msgget": 68,
            "msgsnd": 69,
            "msgrcv": 70,
            "msgctl": 71,
            "mq_open": 240,
            "mq_unlink": 241,
            "mq_timedsend": 242,
            "mq_timedreceive": 243,
            "mq_notify": 244,
            "mq_getsetattr": 245,
            # Channels between jobs running at the same time, here or in another sandbox (a code
            # answer's job sees hidden test inputs): locks on the read-only files every job sees, and
            # watches that see another job open or read them.
            "flock": 73,
            "inotify_init": 253,
            "inotify_init1": 294,
        },
        "fcntl": 72,
    },
    "aarch64": {
        "audit": 0xC00000B7,
        "x32_bit": None,
        "socket": 198,
        "clone": 220,
        "clone3": 435,
        "deny": {
            "ptrace": 117,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "io_uring_setup": 425,
            "bpf": 280,
            "perf_event_open": 241,
            "keyctl": 219,
            "add_key": 217,
            "request_key": 218,
            "userfaultfd": 282,
            "unshare": 97,
            "setns": 268,
            "mount": 40,
            "umount2": 39,
            "pivot_root": 41,
            "chroot": 51,
            "init_module": 105,
            "finit_module": 273,
            "delete_module": 106,
            "kexec_load": 104,
            "open_by_handle_at": 265,
            "name_to_handle_at": 264,
            "fanotify_init": 262,
            "personality": 92,
            "acct": 89,
            "swapon": 224,
            "swapoff": 225,
            "reboot": 142,
            "sethostname": 161,
            "setdomainname": 162,
            "quotactl": 60,
            "move_mount": 429,
            "open_tree": 428,
            "fsopen": 430,
            "fsconfig": 431,
            "fsmount": 432,
            "fspick": 433,
            "pidfd_getfd": 438,
            "mq_open": 180,
            "mq_unlink": 181,
            "mq_timedsend": 182,
            "mq_timedreceive": 183,
            "mq_notify": 184,
            "mq_getsetattr": 185,
            "msgget": 186,
            "msgctl": 187,
            "msgrcv": 188,
            "msgsnd": 189,
            "semget": 190,
            "semctl": 191,
            "semtimedop": 192,
            "semop": 193,
            "shmget": 194,
            "shmctl": 195,
            "shmat": 196,
            "shmdt": 197,
            "flock": 32,
            "inotify_init1": 26,
        },
        "fcntl": 25,
    },
}


def supported() -> bool:
    return os.uname().machine in _ARCHES and hasattr(ctypes, "CDLL")


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def build_program(machine: str | None = None, allow_mounts: bool = False) -> bytes:
    """Return the filter as raw ``sock_filter`` instructions.

    ``allow_mounts`` (the zygote's filter, when jobs get a private scratch): ``unshare`` of a mount
    namespace alone and ``mount`` are allowed, so a job can make its own tmpfs before it runs
    anything; the job then stacks the full filter, and has no capability left to mount with.
    """
    spec = _ARCHES[machine or os.uname().machine]
    errno_eperm = _SECCOMP_RET_ERRNO | errno.EPERM
    errno_eacces = _SECCOMP_RET_ERRNO | errno.EACCES
    errno_enosys = _SECCOMP_RET_ERRNO | errno.ENOSYS
    prog: list[bytes] = []
    # Wrong architecture (e.g. the i386 ABI on x86_64): kill.
    prog.append(_insn(_LD_W_ABS, 0, 0, _OFF_ARCH))
    prog.append(_insn(_JEQ_K, 1, 0, spec["audit"]))
    prog.append(_insn(_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS))
    prog.append(_insn(_LD_W_ABS, 0, 0, _OFF_NR))
    if spec["x32_bit"]:
        prog.append(_insn(_JSET_K, 0, 1, spec["x32_bit"]))
        prog.append(_insn(_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS))
    # No new sockets of any family: the worker's channels are inherited.
    prog.append(_insn(_JEQ_K, 0, 1, spec["socket"]))
    prog.append(_insn(_RET_K, 0, 0, errno_eacces))
    # clone3 cannot be inspected (its flags live in memory): make libc fall back to clone.
    prog.append(_insn(_JEQ_K, 0, 1, spec["clone3"]))
    prog.append(_insn(_RET_K, 0, 0, errno_enosys))
    # clone with namespace flags is refused; plain fork/thread creation is allowed.
    # (On x86_64 and aarch64 the flags are the first argument.)
    prog.append(_insn(_JEQ_K, 0, 4, spec["clone"]))
    prog.append(_insn(_LD_W_ABS, 0, 0, _OFF_ARG0_LO))
    prog.append(_insn(_JSET_K, 0, 1, _NS_FLAGS))
    prog.append(_insn(_RET_K, 0, 0, errno_eperm))
    prog.append(_insn(_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    # fcntl's locks, leases and directory notifications are refused; its other commands are allowed.
    prog.append(_insn(_JEQ_K, 0, 2 + 2 * len(_FCNTL_SIGNALS), spec["fcntl"]))
    prog.append(_insn(_LD_W_ABS, 0, 0, _OFF_ARG1_LO))
    for command in _FCNTL_SIGNALS:
        prog.append(_insn(_JEQ_K, 0, 1, command))
        prog.append(_insn(_RET_K, 0, 0, errno_eperm))
    prog.append(_insn(_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    if allow_mounts:
        prog.append(_insn(_JEQ_K, 0, 4, spec["deny"]["unshare"]))
        prog.append(_insn(_LD_W_ABS, 0, 0, _OFF_ARG0_LO))
        prog.append(_insn(_JEQ_K, 0, 1, _CLONE_NEWNS))
        prog.append(_insn(_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
        prog.append(_insn(_RET_K, 0, 0, errno_eperm))
        prog.append(_insn(_JEQ_K, 0, 1, spec["deny"]["mount"]))
        prog.append(_insn(_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    for number in sorted(set(spec["deny"].values())):
        prog.append(_insn(_JEQ_K, 0, 1, number))
        prog.append(_insn(_RET_K, 0, 0, errno_eperm))
    prog.append(_insn(_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(allow_mounts: bool = False) -> None:
    """Install the filter on the calling thread's process (inherited by its children; a second
    install stacks, and the stricter verdict wins).

    Raises OSError when the kernel refuses.
    """
    program = build_program(allow_mounts=allow_mounts)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_NO_NEW_PRIVS: {os.strerror(err)}")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter: {os.strerror(err)}")
