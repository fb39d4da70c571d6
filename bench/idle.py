"""Opens N connections to a milter, negotiates on each (OPTNEG only, as Postfix and Sendmail
offer: version 6, actions 0x1FF, protocol 0x1FFFFF) and holds them open, idle, for bench/bench.py's
idle-connection workload.

Usage: idle.py SOCKET N      (SOCKET: unix:/path or inet:PORT@HOST)

Prints "ready N" on standard output once all N are negotiated (or "failed K: reason" after K), then
holds the connections until standard input closes, and exits.
"""

import resource
import socket
import struct
import sys

OFFER = struct.pack(">IcIII", 13, b"O", 6, 0x1FF, 0x1FFFFF)
BATCH = 200


def connect(spec):
    if spec.startswith(("unix:", "local:")):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect(spec.split(":", 1)[1])
        return s
    port, _, host = spec[len("inet:"):].partition("@")
    s = socket.create_connection((host or "127.0.0.1", int(port)), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the milter closed the connection")
        data += chunk
    return data


def main():
    spec, n = sys.argv[1], int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    held = []
    try:
        while len(held) < n:
            batch = [connect(spec) for _ in range(min(BATCH, n - len(held)))]
            for s in batch:
                s.sendall(OFFER)
            for s in batch:
                (length,) = struct.unpack(">I", read_exactly(s, 4))
                reply = read_exactly(s, length)
                if reply[:1] != b"O":
                    raise ConnectionError(f"OPTNEG answered with {reply[:1]!r}")
            held.extend(batch)
    except (OSError, ValueError) as e:
        print(f"failed {len(held)}: {e}", flush=True)
    else:
        print(f"ready {len(held)}", flush=True)
    sys.stdin.read()
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
