#!/usr/bin/env python3
"""Builds the restart benchmark's data: a Cassandra-shaped tree and a file:// bucket that
already holds every file of it and every index, as a previous `tablesnap -r` run would have
left them.

Why a generator and not a first tablesnap run: a million PUTs with fsync take hours, and
the restart only needs the bucket's names and sizes. Bucket objects are hard links of the
local files (same size, no extra disk); indexes are empty objects (a restart does not read
them), or with --listings real listings as tablesnap writes them (what a restore reads):
the newest 4 indexes of a table name every SSTable up to theirs (the newest names all 111,
so a restore of the node restores every file), older ones their own SSTable only (as after
a compaction), which keeps the bucket small. SSTables have the 8 components of a `nb-N-big` SSTable; TOC.txt lists them, the
others are empty (0 blocks), so a million files cost ~0.5 GB (the TOCs) and 2 M inodes.

usage: restart_gen.py DATA BUCKET_ROOT HOST OBJECTS [--listings]  (prints files, objects)
"""
import json
import os
import sys

COMPONENTS = ["Data.db", "Index.db", "Filter.db", "Summary.db", "Statistics.db",
              "CompressionInfo.db", "Digest.crc32", "TOC.txt"]
PER_DIR = 111  # SSTables per table: 111 * (8 files + 1 index) = 999 objects per table


def main():
    data, bucket, host, objects = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    listings = "--listings" in sys.argv[5:]
    data = os.path.abspath(data)
    toc = ("\n".join(COMPONENTS) + "\n").encode()
    tables = -(-objects // (PER_DIR * (len(COMPONENTS) + 1)))
    files = objs = 0
    old = 1_600_000_000  # long settled
    for t in range(tables):
        d = os.path.join(data, f"ks{t // 100}", f"t{t % 100}-{t:032x}")
        b = os.path.join(bucket, f"{host}:" + d)
        os.makedirs(d, exist_ok=True)
        os.makedirs(b, exist_ok=True)
        for g in range(1, PER_DIR + 1):
            for c in COMPONENTS:
                n = f"nb-{g}-big-{c}"
                p = os.path.join(d, n)
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                if c == "TOC.txt":
                    os.write(fd, toc)
                os.close(fd)
                os.utime(p, (old, old))
                os.link(p, os.path.join(b, n))
                files += 1
                objs += 1
            fd = os.open(os.path.join(b, f"nb-{g}-big-Data.db-listdir.json"),
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            if listings:
                first = 1 if g > PER_DIR - 4 else g
                names = [f"nb-{s}-big-{c}" for s in range(first, g + 1) for c in COMPONENTS]
                # The original's json.dumps({dirname: listdir}).
                os.write(fd, json.dumps({d: names}).encode())
            os.close(fd)
            objs += 1
    print(files, objs)


if __name__ == "__main__":
    main()
