#!/usr/bin/env python3
"""Issue #18: does a 50,000-entry table directory (leveled compaction) keep the daemon live
while a compaction with hundreds of outputs lands?

What it does, on a file:// bucket (no server needed):
  1. builds ENTRIES/8 SSTables of 8 tiny components in one table directory, plus a second
     small table directory for probes, and stores them (`tablesnap --once -B -r`);
  2. starts the daemon (`tablesnap -r -a`, debug log) on the tree;
  3. writes probe files in the other table every 50 ms, before, during and after:
     a probe's latency (its close to the daemon's "uploading" line) is the loop's
     responsiveness, idle and under load;
  4. runs a compaction as Cassandra does: a transaction log with a REMOVE record per input
     and an ADD record per output as it starts, OUTPUTS output SSTables written (each
     component closed: IN_CLOSE_WRITE), the COMMIT record, the inputs deleted, the log
     deleted;
  5. reads the daemon's log: per output file the time from max(its close, the COMMIT) to
     its upload starting, and per probe the time from its close to its upload starting,
     and the inotify overflows the daemon counted (its stop line).

It prints one table: probe latency idle vs. during the compaction (the loop's stall is the
difference), the outputs' latency, overflows.

usage: bench/lcs_stall.py [--entries 50000] [--outputs 300] [--bin target/release/tablesnap]
                          [--dir /tmp/tslcs] [--keep]
"""
import argparse
import datetime
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
import zlib

COMPONENTS = ["Data.db", "Index.db", "Filter.db", "Summary.db", "Statistics.db",
              "CompressionInfo.db", "Digest.crc32", "TOC.txt"]
TOC = ("\n".join(COMPONENTS) + "\n").encode()


def record(kind, path, update_time=0, num_files=0):
    """One transaction-log line as Cassandra's LogRecord.format writes it."""
    c = zlib.crc32(path.encode())
    c = zlib.crc32(kind.encode(), c)
    c = zlib.crc32((update_time & 0xFFFFFFFF).to_bytes(4, "big"), c)
    c = zlib.crc32(((update_time >> 32) & 0xFFFFFFFF).to_bytes(4, "big"), c)
    c = zlib.crc32(num_files.to_bytes(4, "big", signed=True), c)
    return f"{kind}:[{path},{update_time},{num_files}][{c}]\n"


def write_sstable(d, gen, closes=None, mtime=None):
    for c in COMPONENTS:
        p = os.path.join(d, f"nb-{gen}-big-{c}")
        with open(p, "wb") as f:
            f.write(TOC if c == "TOC.txt" else f"{gen}-{c}".encode())
        if closes is not None:
            closes[p] = time.time()
        if mtime is not None:
            os.utime(p, (mtime, mtime))


def append(log, line):
    with open(log, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


LINE = re.compile(r"^(\S+?)Z?\s+DEBUG\b.*\buploading\b.*\bpath=(\S+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def uploads(log_path):
    """path -> first time its upload started (epoch seconds), from the daemon's log."""
    out = {}
    with open(log_path, errors="replace") as f:
        for line in f:
            m = LINE.match(ANSI.sub("", line))
            if not m:
                continue
            t = datetime.datetime.fromisoformat(m.group(1)).replace(
                tzinfo=datetime.timezone.utc).timestamp()
            out.setdefault(m.group(2), t)
    return out


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=50_000)
    ap.add_argument("--outputs", type=int, default=300)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..",
                                                   "target", "release", "tablesnap"))
    ap.add_argument("--dir", default="/tmp/tslcs")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    shutil.rmtree(a.dir, ignore_errors=True)
    data = os.path.join(a.dir, "data")
    bucket = os.path.join(a.dir, "bucket")
    os.makedirs(bucket)
    table = os.path.join(data, "ks", "big-" + "0" * 31 + "1")
    probes = os.path.join(data, "ks", "small-" + "0" * 31 + "2")
    os.makedirs(table)
    os.makedirs(probes)
    sstables = a.entries // len(COMPONENTS)
    old = time.time() - 86400
    for g in range(1, sstables + 1):
        write_sstable(table, g, mtime=old)
    print(f"{len(os.listdir(table))} entries in {table}", file=sys.stderr)
    dest = f"file://{bucket}"
    t0 = time.time()
    subprocess.run([a.bin, "--once", "-B", "-r", "-n", "bench", dest, data], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"stored in {time.time() - t0:.1f} s", file=sys.stderr)

    log_path = os.path.join(a.dir, "daemon.log")
    env = dict(os.environ, RUST_LOG="info,tablesnap::upload::transfer=debug", NO_COLOR="1")
    with open(log_path, "w") as log:
        daemon = subprocess.Popen([a.bin, "-r", "-a", "-n", "bench", dest, data],
                                  stdout=log, stderr=log, env=env)
    try:
        time.sleep(3)  # watches set, LIST done
        probe_closes = {}
        n = [0]

        def probe(phase):
            n[0] += 1
            p = os.path.join(probes, f"probe-{n[0]}.txt")
            with open(p, "wb") as f:
                f.write(b"probe")
            probe_closes[p] = (phase, time.time())

        for _ in range(40):  # 2 s idle
            probe("idle")
            time.sleep(0.05)
        # The compaction: inputs are the lowest generations (L0 into L1), one output per
        # input, written one after another while probes go on.
        log = os.path.join(table, f"nb_txn_compaction_{uuid.uuid1()}.log")
        inputs = list(range(1, a.outputs + 1))
        ms = int(old * 1000)
        for g in inputs:
            append(log, record("REMOVE", os.path.join(table, f"nb-{g}-big"), ms, 8))
        closes = {}
        last_probe = time.time()
        for i in range(a.outputs):
            g = sstables + 1 + i
            append(log, record("ADD", os.path.join(table, f"nb-{g}-big"), 0, 8))
            write_sstable(table, g, closes)
            if time.time() - last_probe >= 0.05:
                probe("compaction")
                last_probe = time.time()
        append(log, record("COMMIT", ""))
        commit = time.time()
        for g in inputs:
            for c in COMPONENTS:
                os.unlink(os.path.join(table, f"nb-{g}-big-{c}"))
        os.unlink(log)
        for _ in range(40):  # 2 s after
            probe("after")
            time.sleep(0.05)
        # Until every output's upload has started (or 120 s).
        deadline = time.time() + 120
        while time.time() < deadline:
            up = uploads(log_path)
            if all(p in up for p in closes) and all(p in up for p in probe_closes):
                break
            time.sleep(1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
    up = uploads(log_path)
    text = ANSI.sub("", open(log_path, errors="replace").read())
    overflow = len(re.findall(r"overflow", text, re.I))
    rows = []
    for phase in ("idle", "compaction", "after"):
        lat = [up[p] - t for p, (ph, t) in probe_closes.items() if ph == phase and p in up]
        missing = sum(1 for p, (ph, _) in probe_closes.items() if ph == phase and p not in up)
        rows.append((f"probe files, {phase}", lat, missing))
    lat = [up[p] - max(t, commit) for p, t in closes.items() if p in up]
    rows.append(("compaction outputs (from max(close, COMMIT))",
                 lat, sum(1 for p in closes if p not in up)))
    print(f"| {a.entries:,} entries, {a.outputs} outputs ({a.outputs * 8} files) | n | "
          "median | p99 | max | not uploaded |")
    print("|---|---|---|---|---|---|")
    for name, v, missing in rows:
        print(f"| {name} | {len(v)} | {pct(v, 0.5) * 1000:.0f} ms | {pct(v, 0.99) * 1000:.0f} ms"
              f" | {max(v, default=float('nan')) * 1000:.0f} ms | {missing} |")
    idle = [v for name, v, _ in rows if name.endswith("idle")][0]
    busy = [v for name, v, _ in rows if name.endswith("compaction")][0]
    if idle and busy:
        print(f"\nloop stall under the compaction (probe max minus idle median): "
              f"{(max(busy) - statistics.median(idle)) * 1000:.0f} ms; "
              f"log lines mentioning overflow: {overflow}")
    if not a.keep:
        shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
