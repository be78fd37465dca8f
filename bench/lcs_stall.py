#!/usr/bin/env python3
"""Issue #18: does a 50,000-entry table directory (leveled compaction) keep the daemon live
while a compaction with hundreds of outputs lands?

What it does, on a file:// bucket (no server needed):
  1. builds ENTRIES/8 SSTables of 8 tiny components in one table directory, plus a second
     small table directory for probes, and a file:// bucket that already holds them as a
     previous run left it (hard links of the files, and the newest index naming them all:
     a backfill would write an index per Data.db, 6,250 listings of 50,000 names);
  2. starts the daemon (`tablesnap -B -r -a`, debug log) on the tree: its restart LIST
     finds everything stored;
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
import json
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


def write_sstable(d, gen, closes=None, mtime=None, stored=None):
    for c in COMPONENTS:
        p = os.path.join(d, f"nb-{gen}-big-{c}")
        with open(p, "wb") as f:
            f.write(TOC if c == "TOC.txt" else f"{gen}-{c}".encode())
        if closes is not None:
            closes[p] = time.time()
        if mtime is not None:
            os.utime(p, (mtime, mtime))
        if stored is not None:
            os.link(p, os.path.join(stored, os.path.basename(p)))


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
    ap.add_argument("--write-secs", type=float, default=10.0,
                    help="spread the outputs over this long (the daemon re-checks what "
                         "waits for the COMMIT meanwhile)")
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
    stored = os.path.join(bucket, "bench:" + table)
    os.makedirs(stored)
    os.makedirs(os.path.join(bucket, "bench:" + probes))
    for g in range(1, sstables + 1):
        write_sstable(table, g, mtime=old, stored=stored)
    names = sorted(os.listdir(table))
    with open(os.path.join(stored, f"nb-{sstables}-big-Data.db-listdir.json"), "w") as f:
        json.dump({table: names}, f)
    print(f"{len(names)} entries in {table}, stored", file=sys.stderr)
    dest = f"file://{bucket}"

    log_path = os.path.join(a.dir, "daemon.log")
    env = dict(os.environ, RUST_LOG="info,tablesnap::upload::transfer=debug", NO_COLOR="1")
    with open(log_path, "w") as log:
        daemon = subprocess.Popen([a.bin, "-B", "-r", "-a", "-n", "bench", dest, data],
                                  stdout=log, stderr=log, env=env)
    try:
        # The restart's LIST and scan done, watches set.
        deadline = time.time() + 120
        while time.time() < deadline and "backfill" not in open(log_path).read():
            time.sleep(0.5)
        time.sleep(3)
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
        start = time.time()
        for i in range(a.outputs):
            g = sstables + 1 + i
            append(log, record("ADD", os.path.join(table, f"nb-{g}-big"), 0, 8))
            write_sstable(table, g, closes)
            # Probes every 50 ms while the outputs are written at their pace.
            due = start + (i + 1) * a.write_secs / a.outputs
            while True:
                if time.time() - last_probe >= 0.05:
                    probe("compaction")
                    last_probe = time.time()
                left = due - time.time()
                if left <= 0:
                    break
                time.sleep(min(left, 0.05))
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
    print(f"| {a.entries:,} entries, {a.outputs} outputs ({a.outputs * 8} files) in "
          f"{a.write_secs:g} s | n | "
          "median | p99 | max | not uploaded |")
    print("|---|---|---|---|---|---|")
    for name, v, missing in rows:
        print(f"| {name} | {len(v)} | {pct(v, 0.5) * 1000:.0f} ms | {pct(v, 0.99) * 1000:.0f} ms"
              f" | {max(v, default=float('nan')) * 1000:.0f} ms | {missing} |")
    # The loop dispatches every upload: from the COMMIT to the last output's upload start,
    # the longest time no upload started is the longest the loop kept work waiting.
    starts = sorted(t for t in up.values() if t >= commit)
    out_last = max((up[p] for p in closes if p in up), default=commit)
    starts = [t for t in starts if t <= out_last]
    gap = max((b - a for a, b in zip([commit] + starts, starts)), default=float("nan"))
    print(f"\nlongest time with no upload starting, from the COMMIT until the last output's "
          f"upload started ({len(starts)} starts): {gap * 1000:.0f} ms")
    idle = [v for name, v, _ in rows if name.endswith("idle")][0]
    busy = [v for name, v, _ in rows if name.endswith("compaction")][0]
    if idle and busy:
        print(f"loop stall while the compaction is written (probe max minus idle median): "
              f"{(max(busy) - statistics.median(idle)) * 1000:.0f} ms; "
              f"log lines mentioning overflow: {overflow}")
    if not a.keep:
        shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
