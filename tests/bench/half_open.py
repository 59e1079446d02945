"""Holds N connections to a server, each with a request whose headers never finish, and opens a
new one whenever the server closes one (as a slowloris client does). Runs in its own process,
so its descriptors are not the server's: `python tests/bench/half_open.py PORT N`. Prints
`held N` once all are open, then keeps them until killed."""

from __future__ import annotations

import resource
import selectors
import socket
import sys

PARTIAL = b"GET /metrics HTTP/1.1\r\nHost: bench\r\nX-Slow: "


def open_one(port: int, selector: selectors.BaseSelector) -> None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(PARTIAL)
    except OSError:
        return
    sock.setblocking(False)
    selector.register(sock, selectors.EVENT_READ)


def main() -> None:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    selector = selectors.DefaultSelector()
    for _ in range(count):
        open_one(port, selector)
    print(f"held {count}", flush=True)
    while True:
        for key, _ in selector.select(timeout=1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:  # closed by the server: come back
                selector.unregister(sock)
                sock.close()
                open_one(port, selector)
        missing = count - len(selector.get_map())
        for _ in range(missing):
            open_one(port, selector)


if __name__ == "__main__":
    main()
