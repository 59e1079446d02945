"""Run a command under the seccomp filter systemd 252 installs for MemoryDenyWriteExecute=yes.

    /usr/bin/python3 tests/mdwe_exec.py COMMAND [ARG...]

The same rules as systemd's seccomp_memory_deny_write_execute(): mmap() with PROT_WRITE and
PROT_EXEC together, mprotect()/pkey_mprotect() adding PROT_EXEC, and shmat() with SHM_EXEC fail
with EPERM. The filter is inherited across exec, so COMMAND runs as the unit would run it.
Needs Debian's python3-seccomp (the system Python, not the project's venv) and root or
no_new_privs.
"""

from __future__ import annotations

import errno
import mmap
import os
import sys

import seccomp  # type: ignore[import-not-found]

SHM_EXEC = 0o100000


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    deny = seccomp.ERRNO(errno.EPERM)
    write_exec = mmap.PROT_WRITE | mmap.PROT_EXEC
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    rules.add_rule(deny, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, write_exec, write_exec))
    for call in ("mprotect", "pkey_mprotect"):
        rules.add_rule(
            deny, call, seccomp.Arg(2, seccomp.MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC)
        )
    rules.add_rule(deny, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC))
    rules.load()
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
