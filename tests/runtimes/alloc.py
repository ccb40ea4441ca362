# ~100 MiB of small objects: tuples and ints live in pymalloc arenas.
import os
import sys


def build_index(n):
    return [(i, i + 1) for i in range(n)]


index = build_index(1_000_000)
print("entries", len(index), flush=True)
# CPython's own figures (arenas allocated, arena size), on stderr.
sys._debugmallocstats()
sys.stderr.flush()
# Exit without tearing the heap down: the report shows it as it was.
os._exit(0)
