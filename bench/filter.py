"""The whole-message layer against the raw API, run by bench/run.sh after the suite.

The contestants are bench/milter/src/bin/bench_example.rs: the same filter (tag the subject of
mail from outside example.com, append a footer), `--raw` on the `Milter` trait as a user writes
it, `--raw-no-reply` the same asking for the no-reply stages the layer asks for (the layer's own
cost), `--filter` on `milterkit::filter` with its defaults. Load: `milterkit bench --profile
postfix`, 10 connections, small messages (1 KiB body) and 1 MiB bodies over a Unix socket; every
round runs both, in alternating order. Reported: medians of messages per second and of CPU per
message, the filter/raw ratios paired within each round, and each process's peak resident memory.

Usage: filter.py [--smoke] [--out DIR]. Without --smoke it writes bench/filter-results.json and
the section between the filter markers in BENCHMARKS.md; with --smoke, tiny settings, prints the
table, writes nothing (unless --out) and exits 1 if a figure is missing.
"""

import argparse
import datetime
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as suite  # noqa: E402  (the suite's helpers: load runs, processes, machine)

BEGIN, END = "<!-- filter:begin -->", "<!-- filter:end -->"
BINARY = os.path.join(suite.RELEASE, "bench_example")
MODES = ["raw", "raw-no-reply", "filter"]
WORKLOADS = [
    ("small", "small messages (1 KiB body)", ["--size", "1024"]),
    ("large", "1 MiB bodies", ["--size", str(1 << 20)]),
]


def peak_bytes(m):
    with open(f"/proc/{m.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def run(cfg, workdir):
    servers = {
        mode: suite.Milter(
            mode, [BINARY, f"--{mode}"], f"unix:{workdir}/{mode}.sock", workdir
        ).start()
        for mode in MODES
    }
    results = {"runs": {w: {m: [] for m in MODES} for w, _, _ in WORKLOADS}}
    try:
        for rnd in range(cfg["runs"]):
            order = MODES[rnd % len(MODES):] + MODES[: rnd % len(MODES)]
            for key, _, args in WORKLOADS:
                for mode in order:
                    m = servers[mode]
                    cpu0 = m.cpu_seconds()
                    r = suite.bench(m.spec, ["--profile", "postfix", *args], cfg["connections"], cfg["duration_s"])
                    r["milter_cpu_s"] = m.cpu_seconds() - cpu0
                    r["round"] = rnd
                    results["runs"][key][mode].append(r)
                    suite.log(f"round {rnd + 1} {key} {mode}: {r.get('messages_per_second', 0):,.0f}/s, errors {r.get('errors')}")
        results["peak_bytes"] = {mode: peak_bytes(servers[mode]) for mode in MODES}
    finally:
        suite.stop_all(list(servers.values()))
    # Instructions per small message (callgrind, user space), the suite's way: two runs of M1
    # and M2 messages on one connection, the difference divided by M2 - M1.
    results["instructions"] = {}
    found = {mode: ([BINARY, f"--{mode}"], mode) for mode in MODES}
    suite.measure_instructions(cfg, found, MODES, results, workdir)
    return results


def summary(results):
    rows = {}
    for key, title, _ in WORKLOADS:
        w = {"runs": results["runs"][key]}
        row = {"title": title}
        for mode in MODES:
            ok = [r for r in w["runs"][mode] if r.get("messages") and not r.get("errors")]
            row[mode] = {
                "mps": suite.median([r["messages_per_second"] for r in ok]),
                "cpu_us": suite.median([1e6 * r["milter_cpu_s"] / r["messages"] for r in ok]),
                "spread": (min((r["messages_per_second"] for r in ok), default=None),
                           max((r["messages_per_second"] for r in ok), default=None)),
            }
        row["ratio"] = suite.median(suite.paired(w, "filter", "raw"))
        row["cpu_ratio"] = suite.median(suite.paired(w, "filter", "raw", cpu=True))
        row["ratio_nr"] = suite.median(suite.paired(w, "filter", "raw-no-reply"))
        row["cpu_ratio_nr"] = suite.median(suite.paired(w, "filter", "raw-no-reply", cpu=True))
        rows[key] = row
    return rows


def markdown(results, cfg):
    rows = summary(results)
    out = [
        f"Run on {results['when']} with `bash bench/run.sh`: {results['machine']['nproc']} CPUs, "
        f"{cfg['runs']} rounds of {cfg['duration_s']:g} s per workload and contestant, "
        f"{cfg['connections']} connections, `milterkit bench --profile postfix`, Unix socket. "
        "In brackets: the spread of the runs. Ratios: filter / raw within each round, median over the rounds.",
        "",
        "| workload | raw API | raw API, no-reply stages | whole-message layer | filter / raw | filter / raw no-reply | CPU µs/msg: raw, raw no-reply, filter | CPU filter / raw no-reply |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    f = suite.fmt
    for key, _, _ in WORKLOADS:
        r = rows[key]
        cells = [r["title"]]
        for mode in MODES:
            lo, hi = r[mode]["spread"]
            cells.append(f"{f(r[mode]['mps'])} ({f(lo)}–{f(hi)})")
        cells.append(f(r["ratio"], ".2f") + "×")
        cells.append(f(r["ratio_nr"], ".2f") + "×")
        cells.append(", ".join(f(r[m]["cpu_us"], ",.1f") for m in MODES))
        cells.append(f(r["cpu_ratio_nr"], ".2f") + "×")
        out.append("| " + " | ".join(cells) + " |")
    ir = {m: results["instructions"][m]["ir_per_message"] for m in MODES}
    out += [
        "",
        "Instructions per small message (callgrind, user space, whole process): "
        + ", ".join(f"{m} {f(ir[m])}" for m in MODES)
        + f"; filter / raw {f(ir['filter'] / ir['raw'], '.2f')}×, "
        + f"filter / raw no-reply {f(ir['filter'] / ir['raw-no-reply'], '.2f')}×.",
    ]
    peak = results["peak_bytes"]
    out += [
        "",
        f"Peak resident memory after both workloads: raw {f((peak['raw'] or 0) / 2**20, '.1f')} MiB, "
        f"raw no-reply {f((peak['raw-no-reply'] or 0) / 2**20, '.1f')} MiB, "
        f"filter {f((peak['filter'] or 0) / 2**20, '.1f')} MiB ({cfg['connections']} connections of 1 MiB bodies; the "
        "filter's default memory limit keeps up to 1 MiB of body per message in memory, the rest "
        "goes to a temporary file).",
        "",
    ]
    return "\n".join(out)


def missing(results):
    rows = summary(results)
    return [
        f"{k} {m}" for k in rows for m in ("raw", "filter", "ratio")
        if (rows[k][m] if m.startswith("ratio") else rows[k][m]["mps"]) is None
    ]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out")
    args = p.parse_args()
    cfg = suite.SMOKE if args.smoke else suite.FULL
    with tempfile.TemporaryDirectory(prefix="milterkit-filter-bench-") as workdir:
        results = run(cfg, workdir)
    results["when"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results["machine"] = suite.machine()
    text = markdown(results, cfg)
    print(text)
    gone = missing(results)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "filter-results.json"), "w") as f:
            json.dump(results, f, indent=1)
    elif not args.smoke:
        with open(os.path.join(suite.ROOT, "bench", "filter-results.json"), "w") as f:
            json.dump(results, f, indent=1)
        path = os.path.join(suite.ROOT, "BENCHMARKS.md")
        with open(path) as f:
            doc = f.read()
        if BEGIN not in doc:
            doc += f"\n## The whole-message layer against the raw API\n\n{BEGIN}\n{END}\n"
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        with open(path, "w") as f:
            f.write(f"{head}{BEGIN}\n{text}{END}{tail}")
    if gone:
        print("missing: " + ", ".join(gone), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
