#!/usr/bin/env python3
"""Idle SSE memory per connection of a running node: opens N session streams (one user each,
tokens minted with the node's secret), waits until each has its `event: state`, and prints the
node's RSS growth per connection as one JSON line.

    cargo build --release -p lectern-node
    LECTERN_RATE_COMMANDS_PER_S=1000 LECTERN_RATE_COMMAND_BURST=1000 \
      ./target/release/lectern-node --demo --data-dir /tmp/memnode --http 127.0.0.1:18090 &
    ulimit -n 20000
    python3 benches/sse_idle_memory.py /tmp/memnode/auth-secret 18090 4000 $!

Uses only the standard library, so it runs on a fresh machine; it is a probe for one number,
the load generator (`lectern-bench load`) measures fan-out latency.
"""
import asyncio, base64, hashlib, hmac, json, sys, time, os
secret = open(sys.argv[1]).read().strip().encode()
port = int(sys.argv[2]); n = int(sys.argv[3]); pid = int(sys.argv[4])
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b'=')
def token(u):
    h = b64(json.dumps({"alg":"HS256","typ":"JWT"}).encode())
    p = b64(json.dumps({"sub":u,"name":u,"role":"student","cohorts":["demo-cohort"],"exp":int(time.time())+3600}).encode())
    s = b64(hmac.new(secret, h+b'.'+p, hashlib.sha256).digest())
    return (h+b'.'+p+b'.'+s).decode()
def rss():
    for l in open(f'/proc/{pid}/status'):
        if l.startswith('VmRSS'): return int(l.split()[1])
async def one(i, conns):
    r, w = await asyncio.open_connection('127.0.0.1', port)
    t = token(f"u{i}")
    w.write(f"GET /api/stream/sessions/demo-session?access_token={t} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    await w.drain()
    data = b''
    while b'event: state' not in data:
        chunk = await r.read(65536)
        if not chunk: raise Exception('closed')
        data += chunk
    conns.append((r, w))
async def main():
    conns = []  # kept open until the measurement is taken
    before = rss()
    for start in range(0, n, 200):
        await asyncio.gather(*(one(i, conns) for i in range(start, min(n, start+200))))
    await asyncio.sleep(2)
    after = rss()
    print(json.dumps({"n": len(conns), "rss_before_kb": before, "rss_after_kb": after, "kb_per_conn": round((after-before)/len(conns), 2)}))
asyncio.run(main())
