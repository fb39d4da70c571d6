"""The benchmark suite's driver, run by bench/run.sh (which installs and builds first).

Contestants, all with the same behaviour (continue at every stage, ADD_HEADER, "X-Bench: 1" at
end of message): milterkit (bench/milter/src/main.rs), libmilter (bench/c/
libmilter_bench.c), ceiling (bench/c/ceiling.c: no library, one write per turn), tokio-floor
(bench/milter/src/bin/tokio_floor.rs: the ceiling on tokio, what the runtime alone costs) and,
when Debian's python3-milter is installed, pymilter (bench/pymilter_bench.py, on libmilter).

Workloads, each for every contestant in the same run, rounds interleaved: small messages over
Unix and TCP, 1 MiB bodies, connection churn (all driven by `milterkit bench`, Postfix profile);
idle connections (RSS per connection); CPU per message (utime+stime of the milter process); and
instructions under callgrind, per message for each whole milter process and per in-memory
transaction for milterkit-proto.

Usage: bench.py [--smoke] [--out DIR]. Without --smoke it writes bench/results.json and the
generated part of BENCHMARKS.md (or results.json and table.md in --out); with --smoke it uses tiny
settings, prints the table, writes nothing (unless --out) and exits 1 if any row is missing.
MILTERKIT_BENCH_KEEP=1 keeps the working folder (sockets, milter logs, callgrind files).
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Cargo's target directory: CARGO_TARGET_DIR if set (a relative one from the current directory,
# as cargo takes it; bench/run.sh passes it absolute), else target/ in the checkout.
TARGET = os.path.abspath(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"))
RELEASE = os.path.join(TARGET, "release")
BUILD = os.path.join(TARGET, "bench")
MILTERKIT_CLI = os.path.join(RELEASE, "milterkit")
PROTO_IR = os.path.join(TARGET, "bench-proto-ir", "release", "milterkit-proto-ir")
DEBIAN_PYTHON = "/usr/bin/python3"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# Each setting of a full run and of a smoke run (`--smoke`): (full, smoke).
SETTINGS = {
    "runs": (5, 1),
    "duration_s": (2.0, 0.5),
    "connections": (10, 4),
    "idle_connections": (10_000, 200),
    "idle_settle_s": (1.0, 0.2),
    "callgrind_messages": ((100, 600), (5, 25)),
    "callgrind_messages_pymilter": ((20, 120), (2, 6)),
    "proto_ir_transactions": ((200, 2200), (5, 25)),
}
FULL = {name: full for name, (full, _) in SETTINGS.items()}
SMOKE = {name: smoke for name, (_, smoke) in SETTINGS.items()}

WORKLOADS = [
    {
        "key": "small_unix",
        "title": "small messages (1 KiB body), Unix socket",
        "transport": "unix",
        "args": ["--size", "1024"],
    },
    {
        "key": "small_tcp",
        "title": "small messages (1 KiB body), TCP",
        "transport": "tcp",
        "args": ["--size", "1024"],
    },
    {
        "key": "large_unix",
        "title": "1 MiB bodies, Unix socket",
        "transport": "unix",
        "args": ["--size", str(1 << 20)],
    },
    {
        "key": "churn_unix",
        "title": "connection churn (1 message per connection), Unix socket",
        "transport": "unix",
        "args": ["--size", "1024", "--per-connection", "1"],
    },
]

# (key, what, target, compare): the targets, checked against the figures.
TARGETS = [
    ("small_unix", "small Unix, vs ceiling", 0.95, ">="),
    ("small_unix_vs_libmilter", "small Unix, vs libmilter (paired the same way)", 1.8, ">="),
    ("small_tcp", "small TCP, vs ceiling", 0.90, ">="),
    ("large_unix", "1 MiB, vs ceiling", 0.95, ">="),
    ("churn_unix", "churn, vs ceiling", 0.90, ">="),
    ("idle", "idle memory per connection at 10,000 (bytes)", 1024, "<="),
    ("idle_over_floor", "idle memory per connection at 10,000, above tokio-floor's (bytes; #18)", 512, "<="),
    ("cpu", "CPU per message (small Unix), vs ceiling", 1.15, "<="),
]


STARTED = time.monotonic()


def log(*args):
    print(f"[{time.monotonic() - STARTED:5.0f} s]", *args, file=sys.stderr, flush=True)


def contestants(build):
    """name -> (argv before the socket spec, description)."""
    found = {
        "milterkit": (
            [os.path.join(RELEASE, "bench_milter")],
            "milterkit (bench/milter/src/main.rs, tokio multi-thread runtime)",
        ),
        "milterkit-1t": (
            [os.path.join(RELEASE, "bench_milter"), "--current-thread"],
            "milterkit-1t (the same binary with --current-thread: one thread, as the ceiling)",
        ),
        "milterkit-pc": (
            [os.path.join(RELEASE, "bench_milter"), "--per-core"],
            "milterkit-pc (the same binary with --per-core: one current_thread runtime per core, "
            "Serve::with_threads; one task accepts and hands each connection to the thread with "
            "the fewest)",
        ),
        "libmilter": (
            [os.path.join(build, "libmilter_bench")],
            "libmilter (Debian's libmilter 8.17, bench/c/libmilter_bench.c, gcc -O2; Debian builds "
            "it with its worker pool: a poll() controller thread hands ready connections to a "
            "small crew of threads)",
        ),
        "ceiling": (
            [os.path.join(build, "ceiling")],
            "ceiling (bench/c/ceiling.c: no library, one thread, epoll, one write per turn)",
        ),
        "tokio-floor": (
            [os.path.join(RELEASE, "tokio_floor")],
            "tokio-floor (bench/milter/src/bin/tokio_floor.rs: the ceiling's answers with no "
            "library on tokio, one thread, a task and a read timeout per connection: what the "
            "runtime alone costs; not a milter library)",
        ),
    }
    if (
        os.path.exists(DEBIAN_PYTHON)
        and subprocess.run(
            [DEBIAN_PYTHON, "-c", "import Milter"], capture_output=True
        ).returncode
        == 0
    ):
        found["pymilter"] = (
            [DEBIAN_PYTHON, os.path.join(ROOT, "bench", "pymilter_bench.py")],
            "pymilter (Debian python3-milter on libmilter, bench/pymilter_bench.py): optional",
        )
    return found


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Milter:
    """One milter process on one socket."""

    def __init__(self, name, argv, spec, logdir, prefix=()):
        self.name, self.spec = name, spec
        self.argv = [*prefix, *argv, spec]
        tag = re.sub(r"\W+", "_", spec)
        self.log = open(os.path.join(logdir, f"{name}.{tag}.log"), "ab")
        self.proc = None

    def start(self, ready_timeout=30.0):
        if self.spec.startswith("unix:") and os.path.exists(self.spec[5:]):
            os.unlink(self.spec[5:])
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start ({self.proc.returncode})")
            try:
                if self.spec.startswith("unix:"):
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(self.spec[5:])
                else:
                    port = int(self.spec[5:].split("@")[0])
                    s = socket.create_connection(("127.0.0.1", port))
                s.close()
                time.sleep(0.1)  # let the probe connection end
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {self.spec}")

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def threads(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
        return 0

    def stop(self, timeout=30.0):
        stop_all([self], timeout)


def stop_all(milters, timeout=30.0):
    """SIGTERM to every one at once, then waits; SIGKILL after `timeout` (libmilter takes up to
    5 s to notice SIGTERM; only the callgrind runs need a clean exit)."""
    for m in milters:
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for m in milters:
        if m.proc is not None:
            try:
                m.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait()
        m.log.close()


def bench(spec, extra, connections, duration=None, messages=None):
    """Runs `milterkit bench`; returns its report plus the client's CPU seconds."""
    cmd = [MILTERKIT_CLI, "bench", spec, "--json", "--connections", str(connections)]
    cmd += ["--duration", str(duration)] if duration else ["--messages", str(messages)]
    cmd += extra
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=(duration or 0) + 600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        report = json.loads(p.stdout)
    except json.JSONDecodeError:
        report = {"messages": 0, "errors": -1, "first_errors": [p.stderr.strip()[-300:]]}
    report["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report["exit_status"] = p.returncode
    return report


def behaviour(spec, msgfile):
    """What `milterkit run` sees from one contestant: agreement, steps, modifications."""
    p = subprocess.run(
        [MILTERKIT_CLI, "run", "--json", spec, msgfile], capture_output=True, text=True, timeout=60
    )
    out = json.loads(p.stdout)
    return {
        "agreement": out["agreement"],
        "steps": [(s["stage"], s["sent"], s["decision"]) for s in out["steps"]],
        "modifications": out["modifications"],
        "delivered": out["delivery"]["message"] if out.get("delivery") else None,
    }


def callgrind_total(path):
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def machine_busy_seconds():
    """CPU time spent busy by the whole machine so far (all processes, all cores)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def median(xs):
    return statistics.median(xs) if xs else None


def machine():
    model = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
        model = m.group(1).strip() if m else ""
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def run_suite(cfg, workdir):
    found = contestants(BUILD)
    names = [
        n
        for n in (
            "milterkit",
            "milterkit-1t",
            "milterkit-pc",
            "libmilter",
            "ceiling",
            "tokio-floor",
            "pymilter",
        )
        if n in found
    ]
    log(f"== contestants: {', '.join(names)}")
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "bash bench/run.sh" + (" --smoke" if cfg is SMOKE else ""),
        "machine": machine(),
        "loadavg_start": os.getloadavg(),
        "settings": dict(cfg),
        "contestants": {n: {"description": found[n][1]} for n in names},
        "workloads": {},
        "idle": {},
        "instructions": {},
    }
    # One Unix and one TCP instance of each contestant, alive for all the throughput rounds.
    servers = {}
    try:
        for n in names:
            unix = Milter(n, found[n][0], f"unix:{workdir}/{n}.sock", workdir).start()
            tcp = Milter(n, found[n][0], f"inet:{free_port()}@127.0.0.1", workdir).start()
            servers[n] = {"unix": unix, "tcp": tcp}
        check_behaviour(servers, names, results, workdir)
        measure_throughput(cfg, servers, names, results)
    finally:
        stop_all([m for pair in servers.values() for m in pair.values()], timeout=2.0)
    measure_idle(cfg, found, names, results, workdir)
    measure_instructions(cfg, found, names, results, workdir)
    measure_core_instructions(cfg, results, workdir)
    results["loadavg_end"] = os.getloadavg()
    summarise(results, names)
    return results


def check_behaviour(servers, names, results, workdir):
    """Stops the suite unless every contestant does exactly what the first one does."""
    msgfile = os.path.join(workdir, "check.eml")
    with open(msgfile, "w") as f:
        f.write("From: a@example.org\r\nTo: b@example.net\r\nSubject: check\r\n\r\nhello\r\n")
    reference = None
    for n in names:
        seen = behaviour(servers[n]["unix"].spec, msgfile)
        a = seen["agreement"]
        results["contestants"][n]["agreement"] = (
            f"version {a['version']}, actions {a['actions'] or 'none'}, "
            f"protocol {a['protocol'] or 'none'}"
        )
        same = {k: seen[k] for k in ("steps", "modifications", "delivered")}
        if reference is None:
            reference = same
        elif same != reference:
            raise RuntimeError(f"{n} does not behave like {names[0]}: {same} vs {reference}")
    log("== every contestant answers every stage and adds X-Bench: 1")


def measure_throughput(cfg, servers, names, results):
    """Every round runs every workload for every contestant; the order rotates each round."""
    for w in WORKLOADS:
        results["workloads"][w["key"]] = {
            "title": w["title"],
            "args": w["args"],
            "runs": {n: [] for n in names},
        }
    for r in range(cfg["runs"]):
        for w in WORKLOADS:
            for n in names[r % len(names):] + names[: r % len(names)]:
                m = servers[n][w["transport"]]
                cpu0, busy0 = m.cpu_seconds(), machine_busy_seconds()
                rep = bench(m.spec, w["args"], cfg["connections"], duration=cfg["duration_s"])
                cpu1, busy1 = m.cpu_seconds(), machine_busy_seconds()
                run = {
                    "messages": rep.get("messages", 0),
                    "messages_per_second": rep.get("messages_per_second", 0.0),
                    "seconds": rep.get("seconds", 0.0),
                    "errors": rep.get("errors", -1),
                    "latency_ms": rep.get("latency_ms"),
                    "milter_cpu_s": cpu1 - cpu0,
                    "client_cpu_s": rep["client_cpu_s"],
                    "machine_busy_s": busy1 - busy0,
                    "round": r,
                    "first_errors": rep.get("first_errors", []),
                }
                results["workloads"][w["key"]]["runs"][n].append(run)
                log(
                    f"   round {r + 1} {w['key']:<11} {n:<10} "
                    f"{run['messages_per_second']:9.0f} msg/s  errors {run['errors']}  "
                    f"milter cpu {run['milter_cpu_s']:.2f} s"
                )


def measure_idle(cfg, found, names, results, workdir):
    """A fresh process each: RSS before and after N negotiated, idle connections."""
    n_idle = cfg["idle_connections"]
    done = []
    try:
        for n in names:
            m = Milter(n, found[n][0], f"unix:{workdir}/{n}-idle.sock", workdir).start()
            done.append(m)
            row = {"connections_wanted": n_idle}
            time.sleep(0.3)
            row["rss_before"] = m.rss_bytes()
            opener = subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "bench", "idle.py"), m.spec, str(n_idle)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            line = opener.stdout.readline().strip()
            time.sleep(cfg["idle_settle_s"])
            row["rss_after"] = m.rss_bytes()
            row["threads_after"] = m.threads()
            row["opener"] = line
            held = int(line.split()[1].rstrip(":")) if line.split()[1:] else 0
            row["connections_held"] = held
            if held:
                row["bytes_per_connection"] = (row["rss_after"] - row["rss_before"]) / held
            opener.stdin.close()
            opener.wait(120)
            results["idle"][n] = row
            log(
                f"   idle {n:<10} {line}: "
                f"{row.get('bytes_per_connection', float('nan')):.0f} bytes/connection"
            )
    finally:
        stop_all(done, timeout=2.0)


def measure_instructions(cfg, found, names, results, workdir):
    """Instructions (user space, callgrind) per message of each whole milter process: the
    difference between two runs of M1 and M2 messages on one connection, so that start-up
    cancels. Instruction counts do not depend on load, so all of these run at once."""
    jobs = []
    for n in names:
        for msgs in cfg["callgrind_messages_pymilter" if n == "pymilter" else "callgrind_messages"]:
            jobs.append((n, msgs, os.path.join(workdir, f"callgrind.{n}.{msgs}")))
    grinders = []
    try:
        for n, msgs, out in jobs:
            grinders.append(
                Milter(
                    n,
                    found[n][0],
                    f"unix:{workdir}/{n}-cg{msgs}.sock",
                    workdir,
                    prefix=("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
                ).start(ready_timeout=120)
            )
        clients = [
            subprocess.Popen(
                [MILTERKIT_CLI, "bench", m.spec, "--json", "--connections", "1"]
                + ["--size", "1024", "--messages", str(msgs)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for m, (_, msgs, _) in zip(grinders, jobs)
        ]
        for c, (n, msgs, _) in zip(clients, jobs):
            stdout, stderr = c.communicate(timeout=600)
            rep = json.loads(stdout) if stdout.strip() else {}
            if rep.get("messages") != msgs or rep.get("errors"):
                raise RuntimeError(f"callgrind run of {n}: {rep or stderr}")
    finally:
        stop_all(grinders, timeout=120)
    for n in names:
        (m1, o1), (m2, o2) = [(msgs, out) for j, msgs, out in jobs if j == n]
        totals = [callgrind_total(o1), callgrind_total(o2)]
        results["instructions"][n] = {
            "messages": [m1, m2],
            "ir_totals": totals,
            "ir_per_message": (totals[1] - totals[0]) / (m2 - m1),
        }
        log(f"   callgrind {n:<10} {results['instructions'][n]['ir_per_message']:,.0f} Ir/message")


def measure_core_instructions(cfg, results, workdir):
    """The core alone: whole in-memory transactions through MtaSession and MilterSession."""
    t1, t2 = cfg["proto_ir_transactions"]
    totals = []
    for t in (t1, t2):
        out = os.path.join(workdir, f"callgrind.proto.{t}")
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", PROTO_IR, str(t)],
            check=True,
            capture_output=True,
        )
        totals.append(callgrind_total(out))
    row = {
        "transactions": [t1, t2],
        "ir_totals": totals,
        "ir_per_message": (totals[1] - totals[0]) / (t2 - t1),
    }
    results["instructions"]["milterkit-proto (in memory)"] = row
    log(f"   callgrind milterkit-proto in memory {row['ir_per_message']:,.0f} Ir/transaction")


def paired(workload, a, b, cpu=False):
    """Ratios a/b of the runs of the same round (seconds apart), so that slow swings of the
    machine's other load cancel out; of messages per second, or with `cpu` of CPU per message."""
    other = {r["round"]: r for r in workload["runs"].get(b, [])}
    ratios = []
    for r in workload["runs"].get(a, []):
        c = other.get(r["round"])
        if not c or not c["messages"] or not r["messages"] or r["errors"] or c["errors"]:
            continue
        if cpu:
            ratios.append((r["milter_cpu_s"] / r["messages"]) / (c["milter_cpu_s"] / c["messages"]))
        else:
            ratios.append(r["messages_per_second"] / c["messages_per_second"])
    return ratios


def summarise(results, names):
    for w in results["workloads"].values():
        w["median"] = {}
        for n in names:
            runs = w["runs"][n]
            ok = [r for r in runs if r["messages"] > 0 and r["errors"] == 0]
            rates = [r["messages_per_second"] for r in ok]
            cpu = [r["milter_cpu_s"] / r["messages"] * 1e6 for r in ok]
            client = [r["client_cpu_s"] / r["messages"] * 1e6 for r in ok]
            # Cores kept busy by everything else on the machine during the run: the noise.
            others = [
                max(0.0, r["machine_busy_s"] - r["milter_cpu_s"] - r["client_cpu_s"]) / r["seconds"]
                for r in ok
            ]
            w["median"][n] = {
                "runs_ok": len(ok),
                "messages_per_second": median(rates),
                "min": min(rates) if rates else None,
                "max": max(rates) if rates else None,
                "milter_cpu_us_per_message": median(cpu),
                "client_cpu_us_per_message": median(client),
                "other_load_cores": median(others),
                "latency_p50_ms": median([r["latency_ms"]["p50"] for r in ok]),
                "latency_p99_ms": median([r["latency_ms"]["p99"] for r in ok]),
            }
        for n in names:
            med = w["median"][n]
            med["ratios_to_ceiling"] = paired(w, n, "ceiling")
            med["ratio_to_ceiling"] = median(med["ratios_to_ceiling"])
            med["cpu_ratio_to_ceiling"] = median(paired(w, n, "ceiling", cpu=True))

    results["targets"] = targets_of(results, names, "milterkit")
    if "milterkit-1t" in names:
        results["targets_1t"] = targets_of(results, names, "milterkit-1t")


def targets_of(results, names, who):
    """The issue's targets, measured for contestant `who`."""
    wl = results["workloads"]
    mk = lambda key: wl[key]["median"].get(who, {})  # noqa: E731
    values = {
        "small_unix": mk("small_unix").get("ratio_to_ceiling"),
        "small_tcp": mk("small_tcp").get("ratio_to_ceiling"),
        "large_unix": mk("large_unix").get("ratio_to_ceiling"),
        "churn_unix": mk("churn_unix").get("ratio_to_ceiling"),
        "idle": results["idle"].get(who, {}).get("bytes_per_connection"),
        "cpu": mk("small_unix").get("cpu_ratio_to_ceiling"),
    }
    floor = results["idle"].get("tokio-floor", {}).get("bytes_per_connection")
    if values["idle"] is not None and floor is not None:
        values["idle_over_floor"] = values["idle"] - floor
    if "libmilter" in names:
        values["small_unix_vs_libmilter"] = median(paired(wl["small_unix"], who, "libmilter"))
    targets = []
    for key, what, target, cmp in TARGETS:
        v = values.get(key)
        met = None if v is None else (v >= target if cmp == ">=" else v <= target)
        if key.startswith("idle") and met and results["idle"][who].get("connections_held") != 10_000:
            met = False  # the target is at 10,000 connections
        targets.append(
            {
                "key": key,
                "what": what,
                "target": f"{cmp} {target}",
                "goal": target,
                "value": v,
                "met": met,
            }
        )
    return targets


def fmt(v, spec=",.0f"):
    return "–" if v is None else format(v, spec)


def markdown(results):
    names = list(results["contestants"])
    m = results["machine"]
    out = [
        f"Run on {results['date']} with `{results['command']}`: {m['nproc']} CPUs "
        f"({m['cpu_model']}), {m['memory_gib']} GiB, Linux {m['kernel']}; load average "
        f"{results['loadavg_start'][0]:.2f} at the start and {results['loadavg_end'][0]:.2f} at the "
        f"end (the machine is shared). Each throughput figure is the median of "
        f"{results['settings']['runs']} runs of {results['settings']['duration_s']:g} s "
        f"({results['settings']['connections']} connections, `milterkit bench --profile postfix`), "
        "rounds interleaved across contestants. In brackets: the ratio to the ceiling (each run "
        "divided by the ceiling's run of the same round, median over the rounds) and the spread "
        "(min–max) of the runs.",
        "",
        "Contestants: " + "; ".join(results["contestants"][n]["description"] for n in names) + ".",
        "",
        "### Throughput (messages per second, median)",
        "",
        "| workload | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for w in results["workloads"].values():
        cells = []
        for n in names:
            med = w["median"][n]
            r = med.get("ratio_to_ceiling")
            cells.append(
                f"{fmt(med['messages_per_second'])} ({fmt(r, '.2f')}×; "
                f"{fmt(med['min'])}–{fmt(med['max'])})"
            )
        out.append(f"| {w['title']} | " + " | ".join(cells) + " |")
    out += [
        "",
        "### CPU per message (µs, utime+stime of the milter process, median)",
        "",
        "In brackets the ratio to the ceiling's (paired by round, median). `client` is the load "
        "generator's CPU per message in the milterkit runs; `other load` is the median number of "
        "cores kept busy by everything else on the machine during the runs (from /proc/stat, "
        "less the milter's and the client's CPU): the noise, out of 2.",
        "",
        "| workload | " + " | ".join(names) + " | client (milterkit runs) | other load (cores) |",
        "|---|" + "---:|" * (len(names) + 2),
    ]
    for w in results["workloads"].values():
        cells = []
        for n in names:
            med = w["median"][n]
            cells.append(
                f"{fmt(med['milter_cpu_us_per_message'], ',.1f')} "
                f"({fmt(med.get('cpu_ratio_to_ceiling'), '.2f')}×)"
            )
        mk = w["median"].get("milterkit", {})
        cells.append(fmt(mk.get("client_cpu_us_per_message"), ",.1f"))
        everyone = [x for n in names for x in [w["median"][n].get("other_load_cores")] if x is not None]
        cells.append(fmt(median(everyone), ".2f"))
        out.append(f"| {w['title']} | " + " | ".join(cells) + " |")
    out += [
        "",
        f"### Idle connections ({results['settings']['idle_connections']:,} negotiated, then idle; "
        "fresh process each)",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        "| connections held | "
        + " | ".join(fmt(results["idle"][n].get("connections_held")) for n in names)
        + " |",
        "| RSS before (KiB) | "
        + " | ".join(fmt(results["idle"][n].get("rss_before", 0) / 1024) for n in names)
        + " |",
        "| RSS after (KiB) | "
        + " | ".join(fmt(results["idle"][n].get("rss_after", 0) / 1024) for n in names)
        + " |",
        "| bytes per connection | "
        + " | ".join(fmt(results["idle"][n].get("bytes_per_connection")) for n in names)
        + " |",
        "| threads after | "
        + " | ".join(fmt(results["idle"][n].get("threads_after")) for n in names)
        + " |",
        "",
        "### Instructions (callgrind, user space)",
        "",
        "Per message for each whole milter process (small message, one connection, the difference "
        "between two runs so that start-up cancels), and per whole in-memory transaction "
        "(OPTNEG to QUIT, one 1 KiB message) of milterkit-proto's `MtaSession` ⇄ `MilterSession` "
        "(bench/proto-ir: both sides, no I/O).",
        "",
        "| | Ir per message | vs ceiling |",
        "|---|---:|---:|",
    ]
    ins = results["instructions"]
    ceiling_ir = ins.get("ceiling", {}).get("ir_per_message")
    for n, row in ins.items():
        ratio = row["ir_per_message"] / ceiling_ir if ceiling_ir and n in names else None
        shown = "–" if ratio is None else f"{ratio:.1f}×"
        out.append(f"| {n} | {fmt(row['ir_per_message'])} | {shown} |")
    out += [
        "",
        "### Targets",
        "",
        "`milterkit` (multi-thread runtime, as `#[tokio::main]` and `milterkit::run` give) is the",
        "contestant the targets are set for; `milterkit-1t` is the same milter on one thread, as the",
        "ceiling runs.",
        "",
    ]
    flavours = [("milterkit", results["targets"])]
    if results.get("targets_1t"):
        flavours.append(("milterkit-1t", results["targets_1t"]))
    out.append(
        "| target | wanted | "
        + " | ".join(f"{who} | | off by" for who, _ in flavours)
        + " |"
    )
    out.append("|---|---|" + "---:|---|---:|" * len(flavours))
    for i, t in enumerate(results["targets"]):
        cells = []
        for _, ts in flavours:
            t2 = ts[i]
            v = t2["value"]
            shown = fmt(v) if t2["key"].startswith("idle") else fmt(v, ".2f") + ("" if v is None else "×")
            verdict = {True: "met", False: "**missed**", None: "no figure"}[t2["met"]]
            gap = "–" if v is None else f"{(v / t2['goal'] - 1) * 100:+.0f} %"
            cells.append(f"{shown} | {verdict} | {gap}")
        out.append(f"| {t['what']} | {t['target']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def write_benchmarks_md(text, path):
    if os.path.exists(path):
        with open(path) as f:
            doc = f.read()
    else:
        doc = f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in doc or END not in doc:
        doc += f"\n{BEGIN}\n{END}\n"
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as f:
        f.write(f"{head}{BEGIN}\n{text}{END}{tail}")


def check_rows(results):
    """Every row the suite reports must be there: returns the missing ones."""
    missing = []
    for key, w in results["workloads"].items():
        for n in results["contestants"]:
            med = w["median"].get(n, {})
            if not med.get("messages_per_second") or med.get("runs_ok", 0) < results["settings"]["runs"]:
                missing.append(f"throughput {key} {n}")
            if med.get("milter_cpu_us_per_message") is None:
                missing.append(f"cpu {key} {n}")
    for n in results["contestants"]:
        row = results["idle"].get(n, {})
        if row.get("connections_held") != results["settings"]["idle_connections"]:
            missing.append(f"idle {n} ({row.get('opener')})")
        if n not in results["instructions"]:
            missing.append(f"instructions {n}")
    if "milterkit-proto (in memory)" not in results["instructions"]:
        missing.append("instructions milterkit-proto")
    return missing


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny settings; check every row")
    ap.add_argument("--out", help="write results.json and table.md here instead")
    args = ap.parse_args()
    cfg = SMOKE if args.smoke else FULL
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < cfg["idle_connections"] + 100:
        sys.exit(f"error: the open-file limit ({hard}) is below {cfg['idle_connections'] + 100}")
    workdir = tempfile.mkdtemp(prefix="milterkit-bench.")
    started = time.monotonic()
    try:
        results = run_suite(cfg, workdir)
    finally:
        keep = os.environ.get("MILTERKIT_BENCH_KEEP")
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    table = markdown(results)
    missing = check_rows(results)
    results["missing_rows"] = missing
    print(table)
    if args.out or not args.smoke:
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            json_path = os.path.join(args.out, "results.json")
            md_path = os.path.join(args.out, "table.md")
            with open(md_path, "w") as f:
                f.write(table)
        else:
            json_path = os.path.join(ROOT, "bench", "results.json")
            md_path = os.path.join(ROOT, "BENCHMARKS.md")
            write_benchmarks_md(table, md_path)
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        log(f"== wrote {json_path} and {md_path}")
    log(f"== {results['wall_seconds']} s")
    if missing:
        log("error: rows missing or failed: " + "; ".join(missing))
    if args.smoke:
        rows = len(results["contestants"]) * (2 * len(results["workloads"]) + 2) + 1
        print(f"smoke: {rows - len(missing)} passed, {len(missing)} failed")
    if missing:
        sys.exit(1)


if __name__ == "__main__":
    main()
