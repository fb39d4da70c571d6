"""Drives one connection of a milter through N messages with a pause before every command, the way
an MTA talks to a milter while its SMTP client is slow: for measuring what a connection costs when
it goes quiet between commands (see BENCHMARKS.md, "the idle release").

Usage: paused.py SOCKET_PATH N PAUSE_SECONDS   (a Unix socket; the milter must answer every stage,
as bench_milter does). Measure the milter with callgrind for two values of N and take the
difference, as for the table's instruction rows:

    valgrind --tool=callgrind "${CARGO_TARGET_DIR:-target}"/release/bench_milter --current-thread unix:/tmp/m.sock &
    python3 bench/paused.py /tmp/m.sock 15 0.15; kill %1
"""

import socket
import struct
import sys
import time

from idle import read_exactly  # bench/idle.py, beside this file


def main():
    path, n, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)

    def send(code, payload=b""):
        s.sendall(struct.pack(">I", len(payload) + 1) + code + payload)

    def read():
        (length,) = struct.unpack(">I", read_exactly(s, 4))
        return read_exactly(s, length)

    def command(code, payload=b"", until=None):
        time.sleep(pause)
        send(code, payload)
        while True:
            reply = read()
            if until is None or reply[:1] in until:
                return reply

    # Version 6, every action, no protocol flags: every stage is sent and answered.
    send(b"O", struct.pack(">III", 6, 0x1FF, 0))
    if read()[:1] != b"O":
        raise ConnectionError("OPTNEG not answered")
    command(b"C", b"client\0" + b"4" + struct.pack(">H", 25) + b"127.0.0.1\0")
    command(b"H", b"client.example\0")
    for _ in range(n):
        command(b"M", b"<a@example.org>\0")
        command(b"R", b"<b@example.org>\0")
        command(b"T")
        command(b"L", b"Subject\0hello\0")
        command(b"N")
        command(b"B", b"hello\r\n")
        command(b"E", until=(b"c", b"a", b"r", b"t", b"d", b"y"))
        time.sleep(pause)
        send(b"A")
    send(b"Q")
    s.close()


if __name__ == "__main__":
    main()
