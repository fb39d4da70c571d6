"""The benchmark milter on pymilter (Debian's python3-milter, which runs on libmilter): continues
at every stage, asks for ADD_HEADER and adds "X-Bench: 1" at end of message, like the other
contestants of bench/run.sh. Every callback is overridden so that every stage is sent and answered.

Usage: /usr/bin/python3 bench/pymilter_bench.py SOCKET
"""

import sys

import Milter


class Bench(Milter.Base):
    """One instance per MTA connection; answers CONTINUE everywhere."""

    def negotiate(self, opts):
        # pymilter's default keeps every action the MTA offers; ask for ADD_HEADER only, as the
        # other contestants do.
        result = super().negotiate(opts)
        opts[0] = Milter.ADDHDRS
        return result

    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    def hello(self, hostname):
        return Milter.CONTINUE

    def envfrom(self, f, *args):
        return Milter.CONTINUE

    def envrcpt(self, to, *args):
        return Milter.CONTINUE

    def data(self):
        return Milter.CONTINUE

    def header(self, field, value):
        return Milter.CONTINUE

    def eoh(self):
        return Milter.CONTINUE

    def body(self, chunk):
        return Milter.CONTINUE

    def unknown(self, cmd):
        return Milter.CONTINUE

    def eom(self):
        self.addheader("X-Bench", "1")
        return Milter.CONTINUE

    def abort(self):
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: pymilter_bench.py SOCKET")
    Milter.factory = Bench
    Milter.set_flags(Milter.ADDHDRS)
    Milter.runmilter("milterkit-bench-py", sys.argv[1], timeout=600)


if __name__ == "__main__":
    main()
