// Checks what the nginx edge (deploy/nginx/) must do for a node behind it, over TLS:
// an SSE stream whose events arrive while the stream stays open (no proxy buffering), a REST
// command, and the browser client's files with the edge's cache status. Prints one JSON line.
// Usage: node edge.mjs EDGE_URL SESSION STUDENT_TOKEN
// The local kit's edge certificate is self-signed: run with NODE_EXTRA_CA_CERTS naming it.

const [url, session, token] = process.argv.slice(2);
const timeout = setTimeout(() => { console.log(JSON.stringify({ error: 'timeout', out })); process.exit(2); }, 40000);
const out = {};

try {
  // The SSE stream, read as it comes: the first event is the state.
  const ctl = new AbortController();
  const stream = await fetch(`${url}/api/stream/sessions/${session}?access_token=${token}`, { signal: ctl.signal });
  out.sseStatus = stream.status;
  out.sseType = stream.headers.get('content-type');
  const reader = stream.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  const nextEvent = async () => {
    for (;;) {
      const end = buf.indexOf('\n\n');
      if (end >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const name = (block.match(/^event: (.*)$/m) || [])[1];
        if (name) return { name, data: (block.match(/^data: (.*)$/m) || [])[1] };
        continue; // a comment (keep-alive)
      }
      const { value, done } = await reader.read();
      if (done) throw new Error('the stream ended');
      buf += decoder.decode(value, { stream: true });
    }
  };
  out.firstEvent = (await nextEvent()).name;

  // A question asked over REST reaches the open stream through the edge.
  const text = 'Through the edge?';
  const ask = await fetch(`${url}/api/sessions/${session}/commands/qa.ask`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ text }),
  });
  out.askStatus = ask.status;
  for (;;) {
    const ev = await nextEvent();
    if (ev.name === 'qa:new') { out.streamedText = JSON.parse(ev.data).question; break; }
  }
  ctl.abort();

  // The page is revalidated on every load; the module it names is fingerprinted, immutable,
  // and served by the edge's cache from the second request on.
  const page = await fetch(`${url}/`);
  out.pageStatus = page.status;
  out.pageCacheControl = page.headers.get('cache-control');
  const html = await page.text();
  const entry = (html.match(/<script type="module" src="([^"]+)"/) || [])[1];
  out.entry = entry;
  const statuses = [];
  for (let i = 0; i < 2; i++) {
    const r = await fetch(`${url}${entry}`);
    await r.arrayBuffer();
    statuses.push([r.status, r.headers.get('x-cache-status'), r.headers.get('cache-control')]);
  }
  out.entryFetches = statuses;

  // Operators' endpoints are not reachable through the edge.
  out.metricsStatus = (await fetch(`${url}/metrics`)).status;
  out.adminStatus = (await fetch(`${url}/admin/status`)).status;
} catch (e) {
  out.error = String(e && e.stack || e);
}
clearTimeout(timeout);
console.log(JSON.stringify(out));
process.exit(out.error ? 1 : 0);
