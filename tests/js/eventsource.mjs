// A plain browser EventSource on the progress stream, as the first browser client wrote it:
// `new EventSource('/api/stream/progress/' + id)` with `onmessage`, the token in
// `?access_token=`. Runs in Debian's Chromium (playwright-core) on a page of the node; the
// progress is posted from here, and the page must receive each update through `onmessage`.
// Prints one JSON summary line (`{"summary": …}`) that tests/gateway/sse.rs checks.
//
// Usage: node eventsource.mjs BASE_URL STUDENT_ID STUDENT_TOKEN INSTRUCTOR_TOKEN COHORT
import { chromium } from 'playwright-core';

const [base, student, tStudent, tInstructor, cohort] = process.argv.slice(2);
const WAIT_MS = 20000;
const CHROMIUM = process.env.LECTERN_CHROMIUM || '/usr/bin/chromium';
// This machine's network is closed: without these Chromium stalls on lookups it cannot make.
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const LESSONS = ['es-1', 'es-2', 'es-3'];

const say = (obj) => console.log(JSON.stringify(obj));
const out = { posted: [], received: [] };
const timer = setTimeout(() => { say({ summary: { ...out, error: 'timed out' } }); process.exit(1); }, 60000);

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
try {
  const page = await browser.newPage();
  await page.goto(`${base}/`);
  await page.evaluate(([id, tok]) => {
    window.got = [];
    const es = new EventSource('/api/stream/progress/' + id + '?access_token=' + encodeURIComponent(tok));
    es.onmessage = (e) => window.got.push({ id: e.lastEventId, data: JSON.parse(e.data) });
    window.es = es;
  }, [student, tStudent]);
  await page.waitForFunction(() => window.es.readyState === 1, null, { timeout: WAIT_MS });
  for (const lesson of LESSONS) {
    const r = await fetch(`${base}/api/progress`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${tInstructor}` },
      body: JSON.stringify({ student, lesson, status: 'completed', score: 7, maxScore: 10, cohort }),
    });
    const ack = await r.json();
    if (!ack.ok) throw new Error(`POST /api/progress: ${JSON.stringify(ack)}`);
    out.posted.push({ lesson, token: ack.token });
  }
  await page.waitForFunction((n) => window.got.length >= n, LESSONS.length, { timeout: WAIT_MS });
  out.received = await page.evaluate(() => window.got.map((m) => ({ id: m.id, lesson: m.data.lesson, student: m.data.student })));
  say({ summary: out });
} catch (e) {
  say({ summary: { ...out, error: String(e && e.stack || e) } });
  process.exitCode = 1;
} finally {
  clearTimeout(timer);
  await browser.close();
}
