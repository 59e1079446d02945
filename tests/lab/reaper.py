#!/usr/bin/env python3
"""Run a daemon (`libvirtd -d`, `virtlogd -d`) under a prompt child reaper.

PID 1 on these sandboxed machines reaps orphans late (seconds), and libvirtd waits for a
destroyed QEMU to disappear while holding the domain's lock: every `virsh destroy` took ~1.8 s
and blocked `virConnectListAllDomains` meanwhile, which a real host under systemd never sees.
As a child subreaper (PR_SET_CHILD_SUBREAPER), this process adopts the daemon and the QEMU
processes it spawns, and reaps each the moment it exits. It exits when it has no child left.
"""

import ctypes
import os
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: reaper.py COMMAND [ARG...]", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"reaper: prctl failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    subprocess.Popen(sys.argv[1:])
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return 0


if __name__ == "__main__":
    sys.exit(main())
