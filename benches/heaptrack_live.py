#!/usr/bin/env python3
"""What holds a server's memory at exit, per connection, from a heaptrack recording.

`lectern-bench load --node-wrapper "heaptrack -o FILE"` runs the node under heaptrack; the node
exits (without freeing anything) when the load generator is done, so heaptrack's "leaked" bytes
are what was live with every client still connected. This script turns heaptrack_print's
collapsed stacks of leaked bytes into a table: each row groups the stacks whose first few
informative frames (allocator, alloc/core/std plumbing skipped) are the same, in KiB per
connection.

    heaptrack_print -f FILE.zst -t 0 -F FILE.flame --flamegraph-cost-type leaked
    python3 benches/heaptrack_live.py FILE.flame CONNECTIONS [FRAMES] [ROWS]

Rows under about 0.1 KiB per connection and one-off allocations (sled's caches, the hub's
change feed) are part of the total but are not per connection; read the rows, not the total.
"""

import collections
import re
import subprocess
import sys

# Frames that say nothing about who allocated: the allocator and std/alloc/core plumbing.
PLUMBING = re.compile(
    r"^(.*@(raw_vec|vec|boxed|alloc|sync|mod|function|panicking|panic|unwind_safe|"
    r"spec_from_iter|spec_extend|spec_from_iter_nested|string|fmt|slice|borrow|map|into_iter|"
    r"rc|option|result|bytes_mut|bytes|macros)\.rs$|"
    r"std::|core::|alloc::|<alloc::|<core::|<std::|__rust|alloc_zeroed|alloc$|realloc|malloc|"
    r"calloc|lectern_bench::alloc|<lectern_bench::alloc|hashbrown::raw|<hashbrown|bytes::|<bytes::)"
)


def main() -> None:
    path = sys.argv[1]
    conns = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    depth = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    rows = int(sys.argv[4]) if len(sys.argv) > 4 else 30

    stacks = []
    names = set()
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            try:
                n = int(n)
            except ValueError:
                continue
            if n <= 0:
                continue
            frames = []
            for frame in stack.split(";"):
                if frame:
                    name, _, file = frame.partition(" (")
                    frames.append((name, file.rstrip(")")))
            stacks.append((frames, n))
            names.update(name for name, _ in frames)

    ordered = sorted(names)
    out = subprocess.run(
        ["c++filt"], input="\n".join(ordered), capture_output=True, text=True, check=True
    ).stdout.splitlines()
    demangled = {a: re.sub(r"\[[0-9a-f]{16}\]", "", b) for a, b in zip(ordered, out)}

    groups = collections.Counter()
    for frames, n in stacks:
        inner = [demangled[name] + (" @" + file if file else "") for name, file in reversed(frames)]
        keep = [f for f in inner if not PLUMBING.match(f)][:depth]
        groups[" <- ".join(k[:120] for k in keep)] += n

    total = sum(groups.values())
    print(f"live at exit: {total / 2**20:.2f} MiB = {total / conns / 1024:.2f} KiB per connection")
    for key, n in groups.most_common(rows):
        print(f"{n / conns / 1024:8.2f} KiB/conn {n / 2**20:8.2f} MiB  {key}")


if __name__ == "__main__":
    main()
