#!/usr/bin/env python3
"""Deterministic benchmark data for bench/run.sh (no dependencies beyond Python 3.8+).

    gen.py tree ROOT GIB [SEED]     a Cassandra-like data root: ROOT/ks<N>/<table>-<32 hex>/
                                    with SSTable generations of 8 components each
                                    (Data.db + Index, Filter, Summary, Statistics,
                                    CompressionInfo, and a real Digest.crc32 and TOC.txt); a few Data.db of
                                    256 MiB+ when GIB allows (>= 1). Prints "files bytes".
    gen.py tiny ROOT COUNT [SEED]   COUNT tiny files (100-2000 bytes) in 100-file table dirs
    gen.py big PATH GIB [random]    one big file: sparse (zeros, instant) unless "random"

Content is pseudo-random and incompressible, and every 64 KiB chunk starts with a unique
16-byte tag (file id, chunk number) so no two 1 MiB blocks are equal: object stores that
deduplicate blocks (Garage does) cannot shortcut any upload. Same SEED, same bytes.
"""
import hashlib
import os
import random
import struct
import sys
import zlib

MiB = 1 << 20
CHUNK = 64 * 1024
POOL = None


def pool():
    global POOL
    if POOL is None:
        # 16 MiB of incompressible bytes, derived from a fixed seed.
        h = hashlib.shake_256(b"tablesnap-bench-pool")
        POOL = h.digest(16 * MiB)
    return POOL


def write_file(path, size, file_id):
    """Write `size` bytes: per 64 KiB chunk a unique tag + a pool slice at a pseudo-random offset."""
    p = pool()
    rnd = random.Random(file_id)
    with open(path, "wb", buffering=0) as f:
        buf = bytearray()
        left, chunk_no = size, 0
        while left > 0:
            n = min(CHUNK, left)
            off = rnd.randrange(0, len(p) - CHUNK)
            tag = struct.pack("<QQ", file_id, chunk_no)
            piece = (tag + p[off : off + CHUNK - 16])[:n]
            buf += piece
            left -= n
            chunk_no += 1
            if len(buf) >= 4 * MiB:
                f.write(buf)
                buf = bytearray()
        if buf:
            f.write(buf)


def tree(root, gib, seed=1):
    rnd = random.Random(seed)
    total = int(gib * (1 << 30))
    # A few big Data.db (256 MiB .. 384 MiB) use about half of the budget when it allows.
    n_big = min(4, int(total * 0.5) // (256 * MiB)) if gib >= 1 else 0
    big_sizes = [256 * MiB + rnd.randrange(0, 128) * MiB for _ in range(n_big)]
    while sum(big_sizes) > total * 0.6 and big_sizes:
        big_sizes.pop()
    rest = total - sum(big_sizes)
    n_tables = 40
    keyspaces = 4
    tables = []
    for t in range(n_tables):
        ks = f"ks{t % keyspaces + 1}"
        tid = hashlib.md5(f"{seed}-{t}".encode()).hexdigest()
        tables.append((ks, f"table{t:02d}-{tid}", rnd.randint(1, 5)))
    n_gens = sum(g for _, _, g in tables)
    # Small Data.db sizes: log-uniform weights, scaled to the remaining budget (minus ~3% for
    # the small components).
    weights = [2 ** rnd.uniform(0, 8) for _ in range(n_gens)]
    scale = rest * 0.97 / sum(weights)
    data_sizes = [max(4096, int(w * scale)) for w in weights]
    big_slots = set(rnd.sample(range(n_gens), len(big_sizes)))
    files = nbytes = 0
    file_id = seed << 40
    i = 0
    big_iter = iter(big_sizes)
    for ks, table, gens in tables:
        d = os.path.join(root, ks, table)
        os.makedirs(d, exist_ok=True)
        for g in range(1, gens + 1):
            size = next(big_iter) if i in big_slots else data_sizes[i]
            i += 1
            comps = {
                "Data.db": size,
                "Index.db": max(64, size // 100),
                "Filter.db": max(16, size // 1000),
                "Summary.db": max(64, size // 5000),
                "Statistics.db": 4096 + rnd.randrange(0, 8192),
                "CompressionInfo.db": max(32, size // CHUNK * 8),
                "Digest.crc32": 10,
                "TOC.txt": 92,
            }
            # Small components first, Data.db, then Digest.crc32 and TOC.txt with their real
            # content: CRC-32 (decimal) of Data.db, as Cassandra 3.0+ writes it, and the
            # component list, so a restore can verify Data.db by its Digest.
            for comp in sorted(comps, key=lambda c: c == "Data.db"):
                if comp in ("Digest.crc32", "TOC.txt"):
                    continue
                file_id += 1
                write_file(os.path.join(d, f"nb-{g}-big-{comp}"), comps[comp], file_id)
                files += 1
                nbytes += comps[comp]
            crc = 0
            with open(os.path.join(d, f"nb-{g}-big-Data.db"), "rb") as f:
                for block in iter(lambda: f.read(4 * MiB), b""):
                    crc = zlib.crc32(block, crc)
            for comp, body in (
                ("Digest.crc32", str(crc).encode()),
                ("TOC.txt", "".join(c + "\n" for c in sorted(comps)).encode()),
            ):
                with open(os.path.join(d, f"nb-{g}-big-{comp}"), "wb") as f:
                    f.write(body)
                files += 1
                nbytes += len(body)
    print(files, nbytes)


def tiny(root, count, seed=2):
    rnd = random.Random(seed)
    files = nbytes = 0
    file_id = seed << 40
    for i in range(count):
        d = os.path.join(root, f"ks{i // 10000}", f"t{i // 100:05d}-{i // 100:032x}")
        if i % 100 == 0:
            os.makedirs(d, exist_ok=True)
        size = rnd.randint(100, 2000)
        file_id += 1
        write_file(os.path.join(d, f"nb-{i % 100 + 1}-big-Statistics.db"), size, file_id)
        files += 1
        nbytes += size
    print(files, nbytes)


def big(path, gib, mode="sparse"):
    size = int(float(gib) * (1 << 30))
    if mode == "random":
        write_file(path, size, 7 << 40)
    else:
        with open(path, "wb") as f:
            f.truncate(size)
    print(1, size)


if __name__ == "__main__":
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "tree":
        tree(a[0], float(a[1]), int(a[2]) if len(a) > 2 else 1)
    elif cmd == "tiny":
        tiny(a[0], int(a[1]), int(a[2]) if len(a) > 2 else 2)
    elif cmd == "big":
        big(a[0], a[1], a[2] if len(a) > 2 else "sparse")
    else:
        sys.exit(__doc__)
