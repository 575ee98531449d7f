import struct

import pytest

from w4s.sandbox.runtime import seccomp


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_program_is_well_formed(machine):
    program = seccomp.build_program(machine)
    assert len(program) % 8 == 0
    instructions = [struct.unpack("HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    assert len(instructions) < 256  # jump offsets are 8-bit and the kernel caps programs at 4096
    # The program ends by allowing what it did not name, and every jump lands inside it.
    assert instructions[-1] == (0x06, 0, 0, 0x7FFF0000)
    for index, (code, jt, jf, _k) in enumerate(instructions):
        if code & 0x07 == 0x05:  # BPF_JMP
            assert index + 1 + max(jt, jf) < len(instructions)
