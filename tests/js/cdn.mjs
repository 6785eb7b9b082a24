// Drives course content through the nginx edge (deploy/nginx/) as a class would, and reports
// the edge's cache status of every request. Prints one JSON line.
// Usage: node cdn.mjs EDGE_URL COURSE ADMIN_TOKEN STUDENTS
// The local kit's edge certificate is self-signed: run with NODE_EXTRA_CA_CERTS naming it.
//
// 1. The course outline, then one asset twice (a MISS, then a HIT).
// 2. A class workload: STUDENTS students, eight at a time, each reading the catalog and the
//    outline and opening every lesson (its rendered body and its assets); every request's
//    X-Cache-Status is tallied.
// 3. A new version of the first lesson is published through the edge, then the outline is read
//    through the edge until its ETag changes (no purge: the edge revalidates on the node's
//    s-maxage), and the new lesson body is read twice (a MISS, then a HIT).

import { createHash } from 'node:crypto';

const [url, course, adminToken, studentsArg] = process.argv.slice(2);
const students = Number(studentsArg);
const timeout = setTimeout(() => { console.log(JSON.stringify({ error: 'timeout', out })); process.exit(2); }, 60000);
const out = {};

const get = async (path, headers = {}) => {
  const r = await fetch(`${url}${path}`, { headers });
  const body = Buffer.from(await r.arrayBuffer());
  return { status: r.status, cache: r.headers.get('x-cache-status'), etag: r.headers.get('etag'), body };
};
const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

try {
  const first = await get(`/api/courses/${course}`);
  out.outlineStatus = first.status;
  const outline = JSON.parse(first.body.toString());
  const lessons = outline.modules.flatMap((m) => m.lessons);
  const asset = lessons.flatMap((l) => l.assets)[0];
  const twice = [];
  for (let i = 0; i < 2; i++) {
    const r = await get(`/content/${asset}`);
    twice.push([r.status, r.cache, sha256(r.body) === asset]);
  }
  out.assetTwice = twice;

  // The class.
  const tally = {};
  const count = (r) => { tally[r.cache || 'none'] = (tally[r.cache || 'none'] || 0) + 1; };
  const student = async () => {
    count(await get('/api/courses'));
    count(await get(`/api/courses/${course}`));
    for (const lesson of lessons) {
      const html = await get(`/content/${lesson.html}.html`);
      if (html.status !== 200) throw new Error(`lesson body: ${html.status}`);
      count(html);
      for (const a of lesson.assets) {
        const r = await get(`/content/${a}`);
        if (r.status !== 200 || sha256(r.body) !== a) throw new Error(`asset ${a}: ${r.status}`);
        count(r);
      }
    }
  };
  let next = 0;
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (next < students) { next++; await student(); }
  }));
  out.classTally = tally;

  // A new version of the first lesson, published through the edge.
  const auth = { authorization: `Bearer ${adminToken}` };
  const put = async (bytes, type) => {
    const hash = sha256(bytes);
    const r = await fetch(`${url}/api/content/${hash}`, { method: 'PUT', headers: { ...auth, 'content-type': type }, body: bytes });
    if (r.status !== 201 && r.status !== 200) throw new Error(`upload: ${r.status} ${await r.text()}`);
    return hash;
  };
  const stamp = Date.now();
  const body = await put(Buffer.from(`# Version two\n\nRevised at ${stamp}.\n`), 'text/markdown; charset=utf-8');
  const html = await put(Buffer.from(`<h1>Version two</h1>\n<p>Revised at ${stamp}.</p>\n`), 'text/html; charset=utf-8');
  const modules = structuredClone(outline.modules);
  modules[0].lessons[0].body = body;
  modules[0].lessons[0].html = html;
  const publish = await fetch(`${url}/api/courses/${course}/commands`, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json' },
    body: JSON.stringify({ id: `cdn-${stamp}`, cmd: 'course.publish', modules }),
  });
  out.publishStatus = publish.status;
  if (publish.status !== 200) throw new Error(`publish: ${await publish.text()}`);

  const published = Date.now();
  const seen = [];
  for (;;) {
    const r = await get(`/api/courses/${course}`);
    seen.push(r.cache);
    if (r.etag !== first.etag) {
      const now = JSON.parse(r.body.toString());
      out.newVersionSeenAfterMs = Date.now() - published;
      out.newVersionCacheStatus = r.cache;
      out.newLessonHtml = now.modules[0].lessons[0].html === html;
      break;
    }
    if (Date.now() - published > 40000) throw new Error(`the outline never changed: ${seen}`);
    await new Promise((res) => setTimeout(res, 250));
  }
  out.oldVersionServedWhileFresh = seen.slice(0, -1).every((s) => s === 'HIT' || s === 'UPDATING' || s === 'STALE');
  const newTwice = [];
  for (let i = 0; i < 2; i++) {
    const r = await get(`/content/${html}.html`);
    newTwice.push([r.status, r.cache, sha256(r.body) === html]);
  }
  out.newLessonTwice = newTwice;
} catch (e) {
  out.error = String(e && e.stack || e);
}
clearTimeout(timeout);
console.log(JSON.stringify(out));
process.exit(out.error ? 1 : 0);
