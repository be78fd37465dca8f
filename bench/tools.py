#!/usr/bin/env python3
"""Measuring helpers for bench/run.sh (Python 3 standard library only).

    tools.py measure RESULTS TOOL SCENARIO BYTES LOG -- CMD...
        Run CMD (stdout+stderr to LOG), append one JSON line to RESULTS: wall s, user+sys CPU s
        and peak RSS (wait4 rusage of CMD and the children it reaped: what /usr/bin/time -v
        reports), and CMD's /proc/PID/io (read_bytes = from storage, rchar = via read
        syscalls incl. page cache, write_bytes), read just before the exited process is reaped
        (waitid WNOWAIT). BYTES = payload bytes, for per-byte ratios. Exit status = CMD's.
    tools.py proxy LISTEN_PORT UPSTREAM_URL LOG
        A logging HTTP/1.1 reverse proxy: forwards every request unchanged (Host header
        included, so SigV4 signatures still verify) and appends one line per request to LOG:
        "t_start_ns t_end_ns METHOD STATUS PATH" (CLOCK_MONOTONIC, t_end = response sent).
    tools.py stream DIR COUNT RATE OUT
        Rename COUNT small files into DIR at RATE files/s (written as *-tmp-* names first,
        which tablesnap ignores), appending "t_rename_ns ABS_PATH" lines to OUT.
    tools.py latency RENAMES PROXYLOG TIMEOUT_S
        Join renames with the PUT that stored them (the proxy's t_end: when the server
        acknowledged the object, i.e. durable); wait up to TIMEOUT_S for missing ones; print
        JSON {n, seen, p50_ms, p90_ms, p99_ms, max_ms}.
    tools.py count PROXYLOG [FROM_LINE]
        Count requests by method from line FROM_LINE on: JSON {"total": n, "GET": n, ...}.
    tools.py report RESULTS
        The markdown table of a results file, with tablesnap ÷ peer ratios per scenario.
"""
import http.client
import http.server
import json
import re
import statistics
import os
import resource
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse


def measure(results, tool, scenario, nbytes, log, cmd):
    with open(log, "ab") as out:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
        wall = time.monotonic() - t0
        io = {}
        try:
            with open(f"/proc/{p.pid}/io") as f:
                for line in f:
                    k, v = line.split(":")
                    io[k.strip()] = int(v)
        except OSError:
            pass
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    rec = {
        "tool": tool,
        "scenario": scenario,
        "bytes": int(nbytes),
        "rc": p.returncode,
        "wall": round(wall, 3),
        "cpu": round(ru.ru_utime + ru.ru_stime, 3),
        "user": round(ru.ru_utime, 3),
        "sys": round(ru.ru_stime, 3),
        "rss_mib": round(ru.ru_maxrss / 1024, 1),
        "read_bytes": io.get("read_bytes"),
        "rchar": io.get("rchar"),
        "write_bytes": io.get("write_bytes"),
    }
    with open(results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), file=sys.stderr)
    return p.returncode


HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade",
       "trailer", "proxy-authorization", "proxy-authenticate"}


def proxy(port, upstream, logpath):
    up = urllib.parse.urlsplit(upstream)
    logf = open(logpath, "a", buffering=1)
    lock = threading.Lock()
    local = threading.local()

    def conn(fresh=False):
        c = getattr(local, "c", None)
        if c is None or fresh:
            if c is not None:
                c.close()
            c = http.client.HTTPConnection(up.hostname, up.port, timeout=300)
            local.c = c
        return c

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def handle_any(self):
            t0 = time.monotonic_ns()
            n = int(self.headers.get("Content-Length") or 0)
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b""):
                            pass
                        break
                    body += self.rfile.read(size)
                    self.rfile.readline()
            else:
                body = self.rfile.read(n) if n else b""
            for attempt in (0, 1):
                c = conn(fresh=attempt > 0)
                try:
                    c.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for k, v in self.headers.items():
                        if k.lower() not in HOP and k.lower() != "content-length":
                            c.putheader(k, v)
                    if body or self.command in ("PUT", "POST"):
                        c.putheader("Content-Length", str(len(body)))
                    c.endheaders(body if body else None)
                    r = c.getresponse()
                    data = r.read()
                    break
                except (http.client.HTTPException, OSError):
                    if attempt:
                        raise
            self.send_response_only(r.status, r.reason)
            for k, v in r.getheaders():
                if k.lower() not in HOP:
                    self.send_header(k, v)
            if r.getheader("Content-Length") is None and self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD" and data:
                self.wfile.write(data)
            self.wfile.flush()
            t1 = time.monotonic_ns()
            path = urllib.parse.unquote(self.path.split("?")[0])
            q = self.path.split("?", 1)[1] if "?" in self.path else ""
            tag = self.command
            if self.command == "GET" and ("list-type" in q or q.startswith("prefix") or "delimiter" in q):
                tag = "LIST"
            elif "uploads" in q or "uploadId" in q:
                tag = self.command + "-multipart"
            with lock:
                logf.write(f"{t0} {t1} {tag} {r.status} {path}\n")

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_any

    class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 256

    S(("127.0.0.1", int(port)), H).serve_forever()


def stream(d, count, rate, out):
    comps = ["CompressionInfo.db", "Digest.crc32", "Filter.db", "Index.db", "Statistics.db",
             "Summary.db", "TOC.txt", "Data.db"]
    os.makedirs(d, exist_ok=True)
    interval = 1.0 / rate
    payload = os.urandom(64 * 1024)
    start = time.monotonic()
    with open(out, "a", buffering=1) as o:
        for i in range(count):
            gen, comp = i // len(comps) + 1, comps[i % len(comps)]
            size = 65536 if comp == "Data.db" else 100 + (i * 7919) % 16000
            tmp = os.path.join(d, f"nb-tmp-{gen}-big-{comp}")
            final = os.path.join(d, f"nb-{gen}-big-{comp}")
            with open(tmp, "wb") as f:
                f.write(payload[:size])
            os.rename(tmp, final)
            o.write(f"{time.monotonic_ns()} {final}\n")
            nxt = start + (i + 1) * interval
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def latency(renames, proxylog, timeout):
    ren = {}
    with open(renames) as f:
        for line in f:
            t, p = line.rstrip("\n").split(" ", 1)
            ren[p] = int(t)
    deadline = time.monotonic() + float(timeout)
    while True:
        put = {}
        with open(proxylog) as f:
            for line in f:
                parts = line.rstrip("\n").split(" ", 4)
                if len(parts) < 5 or parts[2] != "PUT" or parts[3] != "200":
                    continue
                path = parts[4]
                # Keys end with the absolute path of the file: match on ":" + path.
                i = path.find(":/")
                if i >= 0 and path[i + 1:] in ren:
                    put.setdefault(path[i + 1:], int(parts[1]))
        if len(put) >= len(ren) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    lat = sorted((put[p] - ren[p]) / 1e6 for p in put)
    res = {"n": len(ren), "seen": len(put),
           "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99),
           "max_ms": lat[-1] if lat else None}
    print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in res.items()}))


def count(proxylog, from_line=0):
    c = {"total": 0}
    with open(proxylog) as f:
        for i, line in enumerate(f):
            if i < from_line:
                continue
            parts = line.split(" ", 4)
            if len(parts) < 5:
                continue
            c["total"] += 1
            c[parts[2]] = c.get(parts[2], 0) + 1
    print(json.dumps(c))


def fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def report(results):
    runs, extras, order = {}, {}, []
    with open(results) as f:
        for line in f:
            r = json.loads(line)
            k = (r["scenario"], r["tool"])
            if "extra" in r:
                extras.setdefault(k, {}).update(r["extra"])
            else:
                runs[k] = r
                if r["scenario"] not in order:
                    order.append(r["scenario"])
    print("Ratios are tablesnap ÷ that tool (below 1.0: tablesnap is faster / leaner). "
          "CPU = user+sys of the client process; disk read = read_bytes from /proc/PID/io "
          "after dropping the page cache; rchar = bytes through read syscalls (cache hits too); "
          "server CPU = what Garage used meanwhile (same cores: when client + server CPU is near "
          "cores x wall, the machine, not the client, is the limit). For tiny-file scenarios "
          "(4a/4b) per-byte columns are dominated by metadata and are not meaningful.")
    print()
    print("| scenario | tool | wall s | CPU s | CPU s/GiB | peak RSS MiB | disk read/B | rchar/B "
          "| disk write/B | server CPU s | wall ratio | CPU ratio | RSS ratio | notes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for scen in order:
        tools = [t for (s, t) in runs if s == scen]
        tools.sort(key=lambda t: (t != "tablesnap", t))
        ts = runs.get((scen, "tablesnap"))
        for t in tools:
            r = runs[(scen, t)]
            b = r["bytes"] or 0
            gib = b / (1 << 30) if b else None
            per = lambda k: (r[k] / b) if (b and r.get(k) is not None) else None
            ratio = lambda k: (ts[k] / r[k]) if (ts and t != "tablesnap" and r[k]) else None
            ex = extras.get((scen, t), {})
            notes = []
            if r["rc"]:
                notes.append(f"**exit {r['rc']}**")
            if "complete" in ex:
                notes.append(f"{ex['files']} files" + ("" if ex["complete"] else " **INCOMPLETE**"))
            if "total" in ex:
                tsx = extras.get((scen, "tablesnap"), {})
                req = ", ".join(f"{k} {v}" for k, v in ex.items() if k[0].isupper())  # methods
                rr = ""
                if t != "tablesnap" and tsx.get("total") and ex["total"]:
                    rr = f"; requests ratio {tsx['total'] / ex['total']:.3f}"
                notes.append(f"**{ex['total']} requests** ({req}){rr}")
            if "p50_ms" in ex:
                notes.append(f"rename→durable p50 {fmt(ex['p50_ms'],1)} ms, p90 {fmt(ex['p90_ms'],1)}, "
                             f"**p99 {fmt(ex['p99_ms'],1)} ms**, max {fmt(ex['max_ms'],1)} "
                             f"({ex['seen']}/{ex['n']} seen)")
            print(f"| {scen} | {t} | {fmt(r['wall'])} | {fmt(r['cpu'])} | "
                  f"{fmt(r['cpu'] / gib if gib else None)} | {fmt(r['rss_mib'], 1)} | "
                  f"{fmt(per('read_bytes'))} | {fmt(per('rchar'))} | {fmt(per('write_bytes'))} | "
                  f"{fmt(ex.get('server_cpu'))} | "
                  f"{fmt(ratio('wall'))} | {fmt(ratio('cpu'))} | {fmt(ratio('rss_mib'))} | "
                  f"{'; '.join(notes)} |")
    medians(runs, extras)


def medians(runs, extras):
    """Repeated scenarios (`NAME #i`): the median wall per tool and tablesnap's ratio."""
    groups = {}
    for (scen, tool), r in runs.items():
        m = re.match(r"^(.*) #\d+$", scen)
        if m:
            ok = r["rc"] == 0 and extras.get((scen, tool), {}).get("complete", True)
            groups.setdefault(m.group(1), {}).setdefault(tool, []).append((r["wall"], ok))
    if not groups:
        return
    print()
    print("Repeated scenarios: median wall time of the runs (each run's page cache dropped "
          "first; the tools alternate).")
    print()
    print("| scenario | tool | runs | median wall s | min | max | failed or incomplete "
          "| median ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, tools in groups.items():
        ts = tools.get("tablesnap")
        ts_med = statistics.median(w for w, _ in ts) if ts else None
        for tool in sorted(tools, key=lambda t: (t != "tablesnap", t)):
            walls = [w for w, _ in tools[tool]]
            med = statistics.median(walls)
            bad = sum(1 for _, ok in tools[tool] if not ok)
            ratio = fmt(ts_med / med) if ts_med and tool != "tablesnap" and med else "-"
            print(f"| {name} | {tool} | {len(walls)} | {fmt(med)} | {fmt(min(walls))} | "
                  f"{fmt(max(walls))} | {bad} | {ratio} |")
    # Sealed (age) against the same tool in clear (issue #16: <= 1.3).
    lines = []
    for name, tools in groups.items():
        plain = tools.get("tablesnap")
        for variant in ("tablesnap-sealed", "tablesnap-sealed-zstd"):
            sealed = tools.get(variant)
            if plain and sealed:
                p = statistics.median(w for w, _ in plain)
                s = statistics.median(w for w, _ in sealed)
                lines.append(f"| {name} | {variant} | {fmt(p)} | {fmt(s)} | "
                             f"**{fmt(s / p if p else None)}** |")
    if lines:
        print()
        print("Sealed against clear: median wall of tablesnap --recipient (backfill) or "
              "tableslurp --identity (restore) ÷ the same in clear.")
        print()
        print("| scenario | variant | clear s | sealed s | sealed ÷ clear |")
        print("|---|---|---:|---:|---:|")
        for line in lines:
            print(line)


if __name__ == "__main__":
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "measure":
        sep = a.index("--")
        results, tool, scenario, nbytes, log = a[:sep]
        sys.exit(measure(results, tool, scenario, nbytes, log, a[sep + 1:]))
    elif cmd == "proxy":
        proxy(*a)
    elif cmd == "stream":
        stream(a[0], int(a[1]), float(a[2]), a[3])
    elif cmd == "latency":
        latency(*a)
    elif cmd == "count":
        count(a[0], int(a[1]) if len(a) > 1 else 0)
    elif cmd == "report":
        report(a[0])
    else:
        sys.exit(__doc__)
