// Drives Lectern's browser client in Debian's Chromium (playwright-core, no browser download)
// for tests/web/. One scenario per run; prints progress lines and ends with one JSON summary
// line (`{"summary": …}`) that the Rust test checks.
//
// Usage: node web.mjs SCENARIO BASE_URL SESSION SHOTS_DIR STUDENT_TOKEN INSTRUCTOR_TOKEN
//   class     a student and an instructor (two browser contexts) and a projector run a class
//   boards    notifications (grade, announcement, mark read), the leaderboard and the
//             instructor dashboard, with the node's board intervals shortened by the test
//   fallback  WebSocket refused → SSE + POST; WebSocket and SSE refused → long-polling
//   restart   the node is killed and restarted (by the Rust test, told over stdin/stdout)
//             while the student acts; plus an ack lost on the wire, retried under its id
//   restart-sse  the same with the page on SSE + POST
//   lesson    the student opens the cohort's course: a lesson, its image, "Mark complete"
//   flags     chat switched off (step `chat-off`, by the Rust test with `lectern flags set`):
//             the open page hides its panel, polls stay; on again (step `chat-on`): shown
//   classroom on a classroom node: the uplink in sync, offline (step `cut`), a join code used
//             by a page with no token, the instructor's short token renewed, in sync again
//             (step `heal`)
//   failover  the page's node (of three) is killed and restarted by the Rust test (steps
//             `kill`, whose reply is a question asked on the third node meanwhile, and
//             `restart`); the page moves to the next node and back home
//   offline-class  for tests/netns/: the student's page on a classroom node whose uplink
//             the Rust test cuts (step `offline`, whose reply is the question of a poll
//             opened meanwhile): it asks, votes and chats with the uplink down, then (step
//             `acted`, answered `online` once the link is back and the nodes agree) shows
//             the region's announcement, never having left the session
//
// Every wait is for a condition on the page (no fixed sleeps); each has a deadline.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const AXE = fs.readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

const [scenario, base, session, shots, tStudent, tInstructor] = process.argv.slice(2);
const WAIT_MS = 20000;
const CHROMIUM = process.env.LECTERN_CHROMIUM || '/usr/bin/chromium';
// This machine's network is closed: without these Chromium stalls on lookups it cannot make.
// playwright's launch() gives every run a fresh temporary profile (--user-data-dir).
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const out = {};
const log = (...a) => console.error(`[web.mjs ${scenario}]`, ...a);
const say = (obj) => console.log(JSON.stringify(obj));

const stdinLines = createInterface({ input: process.stdin });
const waiting = [];
stdinLines.on('line', (l) => { const w = waiting.shift(); if (w) w(l.trim()); });
/** Asks the Rust test to do `step` and waits for its reply line. */
function ask(step) {
  const p = new Promise((r) => waiting.push(r));
  say({ step });
  return p;
}

const link = (tok, extra = '') => `${base}/?session=${encodeURIComponent(session)}&token=${encodeURIComponent(tok)}${extra}`;

// Files under /static/ a page fetched by their plain (revalidated) names instead of their
// fingerprinted ones: the page's import map should leave none.
const plainStatic = new Set();

async function open(browser, tok, name, { extra = '', setup } = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, reducedMotion: 'reduce' });
  const page = await ctx.newPage();
  page.on('pageerror', (e) => log(name, 'page error:', e.message));
  page.on('request', (r) => {
    const path = new URL(r.url()).pathname;
    if (path.startsWith('/static/') && !/\.[0-9a-f]{16}\.[a-z]+$/.test(path)) plainStatic.add(path);
  });
  if (setup) await setup(page, ctx);
  await page.goto(link(tok, extra));
  page.name = name;
  return page;
}

/** Waits until the page's connection indicator says `state` (and `transport`, if given). */
async function waitConn(page, state, transport) {
  const sel = transport ? `#conn[data-state="${state}"][data-transport="${transport}"]` : `#conn[data-state="${state}"]`;
  await page.waitForSelector(sel, { timeout: WAIT_MS });
}

async function waitQueued(page, n) {
  await page.waitForSelector(`#conn[data-queued="${n}"]`, { timeout: WAIT_MS });
}

/** The list item of the question whose text is `text` (waits for it). */
function question(page, text) {
  return page.locator('#questions > li', { has: page.locator('.q-text', { hasText: text }) });
}

async function countQuestions(page, text) {
  return page.locator('#questions .q-text', { hasText: text }).count();
}

/** A screenshot of a page (whole) or of one element (a locator). */
async function shot(target, file) {
  const p = path.join(shots, file);
  await target.screenshot(typeof target.goto === 'function' ? { path: p, fullPage: true } : { path: p });
  out.screenshots = [...(out.screenshots || []), p];
}

/** Asks a question with the keyboard only: type, Tab to the Ask button, Enter. */
async function askByKeyboard(page, text, anonymous = false) {
  await page.focus('#ask-text');
  await page.keyboard.type(text);
  await page.keyboard.press('Tab');
  if (anonymous) await page.keyboard.press('Space');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Enter');
}

/** POSTs JSON to the node as the holder of `tok` (what another client would do). */
async function post(route, tok, body) {
  const res = await fetch(`${base}${route}`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${tok}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`POST ${route}: ${res.status} ${await res.text()}`);
  return res.json();
}

/** axe-core's WCAG 2.1 A/AA violations on the page as it is now (contrast, names, ARIA). */
async function audit(page) {
  await page.addScriptTag({ content: AXE });
  const r = await page.evaluate(() => window.axe.run(document, {
    runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
  }));
  return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
}

async function vote(page, pollQuestion, label) {
  const form = page.locator('form.vote', { has: page.locator('legend', { hasText: pollQuestion }) });
  await form.getByLabel(label, { exact: true }).check({ timeout: WAIT_MS });
  await form.getByRole('button', { name: 'Vote' }).click();
}

// ---------------------------------------------------------------------------------------------

async function runClass(browser) {
  const student = await open(browser, tStudent, 'student');
  const teacher = await open(browser, tInstructor, 'instructor');
  const projector = await open(browser, tInstructor, 'projector', { extra: '&view=projector' });
  await Promise.all([student, teacher, projector].map((p) => waitConn(p, 'live', 'websocket')));
  out.transports = ['websocket', 'websocket', 'websocket'];
  out.liveMs = { websocket: Number(await student.getAttribute('#conn', 'data-first-live-ms')) };

  // Ask (keyboard only), seen live by the instructor.
  const q = 'What makes a clock logical?';
  await askByKeyboard(student, q);
  await question(teacher, q).waitFor({ timeout: WAIT_MS });
  await question(student, q).waitFor({ timeout: WAIT_MS });
  out.askedSeenByInstructor = await countQuestions(teacher, q);
  out.announced = (await teacher.textContent('#announcer')).includes(`New question: ${q}`);

  // Upvote: the student upvotes the demo question; the instructor sees 2.
  const demoQ = "Why can't we just trust wall-clock time";
  await question(student, demoQ).getByRole('button', { name: /^Upvote/ }).click();
  await question(teacher, demoQ).getByRole('button', { name: 'Upvote (2)', exact: true }).waitFor({ timeout: WAIT_MS });
  out.upvotePressed = await question(student, demoQ).getByRole('button', { name: /^Upvote/ }).getAttribute('aria-pressed');
  out.upvotesSeen = 2;

  // Answer through the dialog, by keyboard; the student sees it, and the instructor's focus
  // is back on the question's button once the dialog closes.
  await question(teacher, q).getByRole('button', { name: 'Answer' }).focus();
  await teacher.keyboard.press('Enter');
  await teacher.locator('#answer-text').waitFor({ timeout: WAIT_MS });
  await teacher.keyboard.type('One that counts events, not seconds.');
  await teacher.keyboard.press('Tab');
  await teacher.keyboard.press('Enter');
  await question(student, q).locator('.answer', { hasText: 'counts events' }).waitFor({ timeout: WAIT_MS });
  await question(teacher, q).locator('.answer', { hasText: 'counts events' }).waitFor({ timeout: WAIT_MS });
  out.answerSeen = true;
  out.focusAfterAnswer = await teacher.evaluate(() => (document.activeElement && document.activeElement.dataset.key) || '');

  // Pin: the projector shows it.
  await question(teacher, q).getByRole('button', { name: 'Pin' }).click();
  await projector.locator('#proj-q .proj-question', { hasText: q }).waitFor({ timeout: WAIT_MS });
  out.projectorPinned = (await projector.textContent('#proj-q .proj-question')).trim();

  // Poll: create with hidden results, the student votes by keyboard, close, reveal.
  const pq = 'Which clock orders events causally?';
  await teacher.fill('#poll-q', pq);
  await teacher.selectOption('#poll-kind', 'single');
  await teacher.fill('#poll-options', 'Lamport clock\nVector clock\nWall clock');
  await teacher.getByRole('button', { name: 'Start poll' }).click();
  const form = student.locator('form.vote', { has: student.locator('legend', { hasText: pq }) });
  await form.waitFor({ timeout: WAIT_MS });
  await form.getByLabel('Vector clock', { exact: true }).focus();
  await student.keyboard.press('Space');
  await form.getByRole('button', { name: 'Vote' }).focus();
  await student.keyboard.press('Enter');
  const tPoll = teacher.locator('#polls > li', { has: teacher.locator('h3', { hasText: pq }) });
  await tPoll.locator('.results', { hasText: '1 voter' }).waitFor({ timeout: WAIT_MS });
  const sPoll = student.locator('#polls > li', { has: student.locator('legend, h3', { hasText: pq }) });
  out.hiddenBeforeReveal = (await sPoll.textContent()).includes('hidden until the instructor reveals');
  await projector.locator('#proj-poll', { hasText: 'Results will appear when revealed' }).waitFor({ timeout: WAIT_MS });
  await tPoll.getByRole('button', { name: 'Close' }).click();
  await tPoll.getByRole('button', { name: 'Reveal results' }).click();
  await sPoll.locator('.result', { hasText: 'Vector clock' }).locator('text=1 (100%)').waitFor({ timeout: WAIT_MS });
  await projector.locator('#proj-poll .result', { hasText: 'Vector clock' }).locator('text=1 (100%)').waitFor({ timeout: WAIT_MS });
  out.revealedToStudent = true;
  out.revealedOnProjector = true;

  // Broadcast.
  await teacher.fill('#bc-text', 'Break in five minutes');
  await teacher.getByRole('button', { name: 'Broadcast' }).click();
  await student.locator('#broadcast', { hasText: 'Break in five minutes' }).waitFor({ timeout: WAIT_MS });
  out.broadcastSeen = true;
  out.broadcastAnnounced = (await student.textContent('#alerter')).includes('Break in five minutes');

  // Sort: "Recent" (by keyboard) puts the newest question first.
  await student.getByLabel('Recent', { exact: true }).focus();
  await student.keyboard.press('Space');
  out.recentFirst = (await student.locator('#questions > li .q-text').first().textContent()).trim();

  // Moderation: turned on, a student's questions wait (the author sees them marked); the
  // instructor approves one and dismisses another from the list.
  await post('/api/sessions/' + session + '/commands/session.update', tInstructor, { moderation: true });
  const held = 'Is this one moderated?';
  const waiting = 'Will this one wait?';
  await askByKeyboard(student, held);
  await askByKeyboard(student, waiting);
  await question(student, held).locator('.badge.pending').waitFor({ timeout: WAIT_MS });
  const queue = teacher.locator('#moderation > li', { hasText: held });
  await queue.waitFor({ timeout: WAIT_MS });
  await teacher.locator('#moderation > li', { hasText: waiting }).waitFor({ timeout: WAIT_MS });
  out.pendingBadge = true;
  out.inQueue = await teacher.locator('#moderation > li').count();
  await queue.getByRole('button', { name: 'Approve' }).click();
  await question(teacher, held).waitFor({ timeout: WAIT_MS });
  await student.waitForFunction((t) => [...document.querySelectorAll('#questions > li')]
    .some((li) => li.textContent.includes(t) && !li.querySelector('.badge.pending')), held, { timeout: WAIT_MS });
  out.approvedVisible = true;
  const dismissMe = "Why can't we just trust wall-clock time";
  await question(teacher, dismissMe).getByRole('button', { name: 'Dismiss' }).click();
  await question(teacher, dismissMe).waitFor({ state: 'detached', timeout: WAIT_MS });
  out.dismissedGone = true;

  // Reduced motion (the context asks for it): no transition on the result bars.
  out.barTransition = await student.evaluate(() => getComputedStyle(document.querySelector('.fill')).transitionDuration);

  // Own progress over SSE: the instructor records a score, the student's page shows it.
  await post('/api/progress', tInstructor, { student: 'student1', lesson: 'lesson-1', status: 'completed', score: 8, maxScore: 10 });
  await student.locator('#progress li', { hasText: 'lesson-1' }).locator('text=8/10').waitFor({ timeout: WAIT_MS });
  out.progressSeen = true;

  await shot(student, 'class-student.png');
  await shot(teacher, 'class-instructor.png');
  await shot(projector, 'class-projector.png');
  out.a11y = { student: await audit(student), instructor: await audit(teacher), projector: await audit(projector) };
  out.question = q;
  out.poll = pq;
  out.held = held;
  out.waiting = waiting;
}

/** Visible text of every row of `selector` (a table), cell by cell. */
function tableRows(page, selector) {
  return page.$$eval(`${selector} tbody tr`, (trs) => trs.map((tr) => [...tr.children].map((c) => c.textContent.replace(/\s+/g, ' ').trim())));
}

async function runBoards(browser) {
  const student = await open(browser, tStudent, 'student');
  const teacher = await open(browser, tInstructor, 'instructor');
  await Promise.all([student, teacher].map((p) => waitConn(p, 'live', 'websocket')));
  // The node's answers about the student's own leaderboard place come late, so that board
  // updates and the student's privacy choice overtake them (as on a slow link).
  await student.route(/\/leaderboard\/me$/, async (route) => {
    await new Promise((r) => setTimeout(r, 500));
    await route.continue();
  });

  // The panels come up with what the node says: nothing unread yet, no lesson progress.
  await student.locator('#notes-count[data-unread]').waitFor({ timeout: WAIT_MS });
  out.unreadBefore = (await student.textContent('#notes-count')).trim();
  await teacher.locator('#dash-card #dash-completion').waitFor({ timeout: WAIT_MS });
  out.completionBefore = (await teacher.textContent('#dash-completion')).trim();
  await student.locator('#lb-card table.board').waitFor({ timeout: WAIT_MS });

  // The student votes in the demo poll (poll participation); the instructor grades the quiz
  // (REST, as an LMS would) and posts an announcement from the page, by keyboard.
  await vote(student, 'How confident are you with Lamport clocks?', '4');
  await post('/api/progress', tInstructor, { student: 'student1', lesson: 'quiz-1', status: 'completed', score: 8, maxScore: 10 });
  const title = 'Quiz 2 opens on Monday';
  await teacher.focus('#ann-title');
  await teacher.keyboard.type(title);
  await teacher.keyboard.press('Tab');
  await teacher.keyboard.type('Bring your notes on vector clocks.');
  await teacher.keyboard.press('Tab');
  await teacher.keyboard.press('Enter');
  await teacher.locator('#ann-status', { hasText: 'Posted' }).waitFor({ timeout: WAIT_MS });

  // The student's page: both notifications, 2 unread, each announced politely.
  const grade = 'Your grade for quiz-1 is ready';
  await student.locator('#notes > li.unread', { hasText: grade }).waitFor({ timeout: WAIT_MS });
  await student.locator('#notes > li.unread', { hasText: title }).waitFor({ timeout: WAIT_MS });
  await student.locator('#notes-count[data-unread="2"]').waitFor({ timeout: WAIT_MS });
  out.unreadText = (await student.textContent('#notes-count')).trim();
  out.notes = await student.$$eval('#notes > li', (lis) => lis.map((li) => ({
    title: li.querySelector('.note-title strong').textContent.trim(),
    body: (li.querySelector('.note-body') || { textContent: '' }).textContent.trim(),
    meta: li.querySelector('.meta').textContent.replace(/\s+/g, ' ').trim(),
    badge: !!li.querySelector('.badge.new'),
  })));
  const said = await student.textContent('#announcer');
  out.notesAnnounced = [grade, title].filter((t) => said.includes(`New notification: ${t}.`));
  out.announcerPolite = await student.getAttribute('#announcer', 'aria-live');
  await shot(student.locator('#notes-card'), 'boards-notifications.png');

  // Mark one read by keyboard (focus stays on it), then all.
  await student.locator('#notes > li', { hasText: grade }).getByRole('button', { name: 'Mark read' }).focus();
  await student.keyboard.press('Enter');
  await student.locator('#notes-count[data-unread="1"]').waitFor({ timeout: WAIT_MS });
  out.unreadAfterOne = (await student.textContent('#notes-count')).trim();
  out.focusAfterMark = await student.evaluate(() => (document.activeElement && document.activeElement.dataset.key) || '');
  out.gradeItemRead = await student.locator('#notes > li:not(.unread)', { hasText: grade }).count();
  await student.getByRole('button', { name: 'Mark all read' }).click();
  await student.locator('#notes-count[data-unread="0"]').waitFor({ timeout: WAIT_MS });
  out.unreadAfterAll = (await student.textContent('#notes-count')).trim();
  out.unreadItemsAfterAll = await student.locator('#notes > li.unread').count();

  // The leaderboard: the student's own rank highlighted; a classmate who opted out anonymized
  // (for the student), named for staff.
  await student.locator('#lb tr.me', { hasText: '8 / 10' }).waitFor({ timeout: WAIT_MS });
  out.lbStudent = await tableRows(student, '#lb table.board');
  out.lbMine = (await student.textContent('#lb-mine')).trim();
  out.lbMeRow = await student.$eval('#lb tr.me', (tr) => [...tr.children].map((c) => c.textContent.trim()).join(' | '));
  out.lbMeWeight = await student.$eval('#lb tr.me', (tr) => getComputedStyle(tr).fontWeight);
  await teacher.locator('#lb tr', { hasText: '8 / 10' }).waitFor({ timeout: WAIT_MS });
  out.lbInstructor = await tableRows(teacher, '#lb table.board');

  // The instructor's dashboard: the graded lesson, the vote, the student online.
  await teacher.waitForFunction(() => {
    const poll = document.querySelector('#dash-polls tbody tr');
    return document.querySelector('#dash-lessons tr[data-lesson="quiz-1"]')
      && Number(document.querySelector('#dash-online').textContent) >= 1
      && document.querySelector('#dash-online-staff')
      && poll && poll.textContent.includes('50%');
  }, null, { timeout: WAIT_MS });
  out.dash = {
    online: (await teacher.textContent('#dash-online')).trim(),
    onlineNames: (await teacher.textContent('#dash-online-names')).trim(),
    onlineStaff: (await teacher.textContent('#dash-online-staff')).trim(),
    completion: (await teacher.textContent('#dash-completion')).trim(),
    openQuestions: (await teacher.textContent('#dash-questions')).trim(),
    students: (await teacher.textContent('#dash-students')).trim(),
    lessons: await tableRows(teacher, '#dash-lessons'),
    polls: await tableRows(teacher, '#dash-polls'),
    inactiveHeading: (await teacher.textContent('#dash-inactive-h')).trim(),
    inactive: await teacher.$$eval('#dash-inactive > li', (lis) => lis.map((li) => li.textContent.replace(/\s+/g, ' ').trim())),
  };
  await shot(teacher.locator('#dash-card'), 'boards-dashboard.png');
  await shot(student.locator('#lb-card'), 'boards-leaderboard.png');
  // Nothing of a form is cut off (a style meant for something else once collapsed them).
  const clipped = (page) => page.$$eval('form', (fs) => fs.filter((f) => f.scrollHeight > f.clientHeight + 1).map((f) => f.id || f.className));
  out.clippedForms = { student: await clipped(student), instructor: await clipped(teacher) };
  await shot(student, 'boards-student.png');
  await shot(teacher, 'boards-instructor.png');
  out.a11y = { student: await audit(student), instructor: await audit(teacher) };
  out.announcement = title;

  // The student hides their name, by keyboard: classmates see "Anonymous", and the student's
  // page still knows which row is theirs; staff see the choice.
  await student.locator('#lb-show-name:not([disabled])').waitFor({ timeout: WAIT_MS });
  out.showNameBefore = await student.isChecked('#lb-show-name');
  await student.locator('#lb-show-name').focus();
  await student.keyboard.press('Space');
  await student.locator('#lb tr.me', { hasText: 'Anonymous' }).waitFor({ timeout: WAIT_MS });
  out.lbMeAnonRow = await student.$eval('#lb tr.me', (tr) => [...tr.children].map((c) => c.textContent.trim()).join(' | '));
  out.lbMineAnon = (await student.textContent('#lb-mine')).trim();
  out.privacyStatus = (await student.textContent('#lb-privacy-status')).trim();
  out.showNameAfter = await student.isChecked('#lb-show-name');
  await teacher.locator('#lb tr', { hasText: 'Grace (anonymous to classmates)' }).waitFor({ timeout: WAIT_MS });
  out.lbInstructorAnon = await tableRows(teacher, '#lb table.board');

  // A node without these streams (404): their sections stay hidden, the rest works.
  const without = (page) => page.route(/\/api\/stream\/(notifications|leaderboard|instructor)(\/|$|\?)/,
    (route) => route.fulfill({ status: 404, body: 'not found' }));
  const oldStudent = await open(browser, tStudent, 'student-old-node', { setup: without });
  const oldTeacher = await open(browser, tInstructor, 'instructor-old-node', { setup: without });
  await Promise.all([oldStudent, oldTeacher].map((p) => waitConn(p, 'live', 'websocket')));
  const hidden = async (page, sel) => {
    await page.locator(`${sel}[data-stream="missing"]`).waitFor({ state: 'attached', timeout: WAIT_MS });
    return page.$eval(sel, (el) => el.hidden && getComputedStyle(el).display === 'none');
  };
  out.missingHidden = {
    notes: await hidden(oldStudent, '#notes-card'),
    leaderboard: await hidden(oldStudent, '#lb-card'),
    dashboard: await hidden(oldTeacher, '#dash-card'),
  };
  await oldStudent.locator('#progress-card:not([hidden])').waitFor({ timeout: WAIT_MS });
  out.progressWithoutBoards = true;
}

async function runFallback(browser) {
  // WebSocket refused: every Socket.IO WebSocket is closed before it says anything.
  const student = await open(browser, tStudent, 'student-sse', {
    setup: (page) => page.routeWebSocket(/\/socket\.io\//, (ws) => ws.close()),
  });
  const teacher = await open(browser, tInstructor, 'instructor');
  await waitConn(teacher, 'live', 'websocket');
  await waitConn(student, 'live', 'sse');
  out.sseTransport = await student.getAttribute('#conn', 'data-transport');
  out.liveMs = { sse: Number(await student.getAttribute('#conn', 'data-first-live-ms')) };
  out.sseStatusText = (await student.textContent('#conn-text')).trim();

  const q = 'Asked over SSE and POST';
  await askByKeyboard(student, q);
  await question(teacher, q).waitFor({ timeout: WAIT_MS });
  await question(student, q).waitFor({ timeout: WAIT_MS });
  await question(teacher, q).getByRole('button', { name: 'Answer' }).click();
  await teacher.fill('#answer-text', 'Received over SSE.');
  await teacher.getByRole('button', { name: 'Send answer' }).click();
  await question(student, q).locator('.answer', { hasText: 'Received over SSE.' }).waitFor({ timeout: WAIT_MS });
  await vote(student, 'How confident are you with Lamport clocks?', '4');
  await student.locator('form.vote .meta', { hasText: 'Your vote: 4' }).waitFor({ timeout: WAIT_MS });
  await waitQueued(student, 0);
  out.sseQuestion = q;
  out.sseAnswerSeen = true;
  await shot(student, 'fallback-sse-student.png');

  // WebSocket and the SSE stream refused: long-polling.
  const lp = await open(browser, tStudent, 'student-longpoll', {
    setup: async (page) => {
      await page.routeWebSocket(/\/socket\.io\//, (ws) => ws.close());
      await page.route(/\/api\/stream\/sessions\//, (route) => route.abort('connectionrefused'));
    },
  });
  await waitConn(lp, 'live', 'longpoll');
  out.lpTransport = await lp.getAttribute('#conn', 'data-transport');
  out.liveMs.longpoll = Number(await lp.getAttribute('#conn', 'data-first-live-ms'));
  const q2 = 'Asked over long-polling';
  await askByKeyboard(lp, q2);
  await question(teacher, q2).waitFor({ timeout: WAIT_MS });
  await question(lp, q2).waitFor({ timeout: WAIT_MS });
  // An event from someone else reaches the long-polling page.
  await teacher.fill('#bc-text', 'Heard over long-polling');
  await teacher.getByRole('button', { name: 'Broadcast' }).click();
  await lp.locator('#broadcast', { hasText: 'Heard over long-polling' }).waitFor({ timeout: WAIT_MS });
  out.lpQuestion = q2;
  out.lpBroadcastSeen = true;
  await shot(lp, 'fallback-longpoll-student.png');

  // Join by code: the bare page asks for the session code and a token.
  const ctx = await browser.newContext({ reducedMotion: 'reduce' });
  const bare = await ctx.newPage();
  await bare.goto(`${base}/`);
  await bare.getByLabel('Session code').fill(session);
  await bare.getByLabel(/^Access token/).fill(tStudent);
  await bare.keyboard.press('Enter');
  await waitConn(bare, 'live', 'websocket');
  await question(bare, q2).waitFor({ timeout: WAIT_MS });
  out.joinedByCode = await bare.getAttribute('body', 'data-view');

  // A token whose signature is wrong: the page says it cannot connect, and why, instead of
  // retrying forever.
  const forged = tStudent.slice(0, -4) + (tStudent.endsWith('AAAA') ? 'BBBB' : 'AAAA');
  const refused = await open(browser, forged, 'forged');
  await waitConn(refused, 'error');
  out.forgedStatus = (await refused.textContent('#conn-text')).trim();
}

async function runRestart(browser) {
  // Over WebSocket (`restart`) or SSE + POST (`restart-sse`). Every command goes through a
  // relay in this script, so that one ack can be lost on the wire: the server applies the
  // command, the page never hears so.
  const transport = scenario === 'restart-sse' ? 'sse' : 'websocket';
  let dropNextCommandAck = false;
  let droppedAcks = 0;
  const relayWebSocket = (page) => page.routeWebSocket(/\/socket\.io\//, (ws) => {
    const server = ws.connectToServer();
    server.onMessage((msg) => {
      // A Socket.IO ack on namespace "/" is `43<n>[…]`; a command's ack is `{id, ok, token}`
      // (a join's carries a state or events instead).
      const commandAck = typeof msg === 'string' && /^43\d+\[/.test(msg) && msg.includes('"ok":true')
        && /"id":"w[0-9a-f]{24}"/.test(msg) && !msg.includes('"state"') && !msg.includes('"events"');
      if (dropNextCommandAck && commandAck) {
        dropNextCommandAck = false;
        droppedAcks += 1;
        ws.close();
        return;
      }
      ws.send(msg);
    });
  });
  const relayPost = (page) => page.route(/\/api\/sessions\/[^/]+\/commands$/, async (route) => {
    if (!dropNextCommandAck) return route.continue();
    dropNextCommandAck = false;
    const res = await route.fetch();
    if (res.ok()) droppedAcks += 1;
    return route.abort('connectionreset');
  });
  const student = await open(browser, tStudent, 'student', {
    extra: transport === 'sse' ? '&transport=sse' : '',
    setup: transport === 'sse' ? relayPost : relayWebSocket,
  });
  await waitConn(student, 'live', transport);

  // 1. An ack lost on the wire: the server applied the question, the page never heard so,
  // and sends it again (same id) after reconnecting.
  dropNextCommandAck = true;
  const lost = 'Asked when the ack was lost';
  await askByKeyboard(student, lost);
  await question(student, lost).waitFor({ timeout: WAIT_MS });
  await waitConn(student, 'live', transport);
  await waitQueued(student, 0);
  out.droppedAcks = droppedAcks;
  out.lostAckShownOnce = await countQuestions(student, lost);

  // 2. The node is killed; the student acts while it is down.
  if ((await ask('kill')) !== 'killed') throw new Error('the test did not kill the node');
  await student.waitForSelector('#conn:not([data-state="live"])', { timeout: WAIT_MS });
  out.stateWhileDown = await student.getAttribute('#conn', 'data-state');
  const offline = 'Asked while the node was down';
  await askByKeyboard(student, offline);
  await question(student, 'Is a vector clock the same as a version vector?').getByRole('button', { name: /^Upvote/ }).click();
  await vote(student, 'How confident are you with Lamport clocks?', '2');
  await student.fill('#chat-text', 'Sent while the node was down');
  await student.press('#chat-text', 'Enter');
  await waitQueued(student, 4);
  out.queuedWhileDown = Number(await student.getAttribute('#conn', 'data-queued'));
  out.statusWhileDown = (await student.textContent('#conn-text')).trim();
  out.outboxListed = await student.locator('#outbox li').count();
  await shot(student, 'restart-student-offline.png');

  // 3. The node comes back on the same port and data: the page recovers and sends the queue.
  if ((await ask('restart')) !== 'restarted') throw new Error('the test did not restart the node');
  await waitConn(student, 'live', transport);
  await waitQueued(student, 0);
  await question(student, offline).waitFor({ timeout: WAIT_MS });
  await student.locator('#chat li', { hasText: 'Sent while the node was down' }).waitFor({ timeout: WAIT_MS });
  out.transportAfter = await student.getAttribute('#conn', 'data-transport');
  // Every reconnect (after the lost ack, after the restart) resumed from the last event's
  // token: the page took one full state, when it first joined.
  out.snapshots = Number(await student.getAttribute('#conn', 'data-snapshots'));
  out.offlineShownOnce = await countQuestions(student, offline);
  await shot(student, 'restart-student-recovered.png');

  // 4. A reload reads the server's state afresh: still once each.
  await student.reload();
  await waitConn(student, 'live', transport);
  await question(student, offline).waitFor({ timeout: WAIT_MS });
  out.afterReload = [await countQuestions(student, lost), await countQuestions(student, offline)];
  out.lost = lost;
  out.offline = offline;
}

async function runFailover(browser) {
  // The page's node (the first of three) is killed mid-class; the page must be live on the
  // next node of the cluster's list within seconds, send what was queued once, show an event
  // made on the third node meanwhile, and go home once its node is back.
  const student = await open(browser, tStudent, 'student');
  await waitConn(student, 'live', 'websocket');
  out.homeNode = await student.getAttribute('#conn', 'data-node');
  const before = 'Asked on the home node';
  await askByKeyboard(student, before);
  await question(student, before).waitFor({ timeout: WAIT_MS });
  await waitQueued(student, 0);

  const elsewhere = await ask('kill');
  const killedAt = Date.now();
  const during = 'Asked while the home node was dead';
  await askByKeyboard(student, during);
  await student.waitForFunction((home) => {
    const c = document.getElementById('conn');
    return c.dataset.state === 'live' && c.dataset.node && c.dataset.node !== home;
  }, out.homeNode, { timeout: WAIT_MS });
  out.failoverMs = Date.now() - killedAt;
  out.awayNode = await student.getAttribute('#conn', 'data-node');
  await waitQueued(student, 0);
  await question(student, during).waitFor({ timeout: WAIT_MS });
  await question(student, elsewhere).waitFor({ timeout: WAIT_MS });
  await shot(student, 'failover-away.png');

  if ((await ask('restart')) !== 'restarted') throw new Error('the test did not restart the node');
  await student.waitForFunction((home) => {
    const c = document.getElementById('conn');
    return c.dataset.state === 'live' && c.dataset.node === home;
  }, out.homeNode, { timeout: WAIT_MS });
  out.backNode = await student.getAttribute('#conn', 'data-node');
  const back = 'Asked back on the home node';
  await askByKeyboard(student, back);
  await question(student, back).waitFor({ timeout: WAIT_MS });
  await waitQueued(student, 0);
  out.texts = [before, during, elsewhere, back];
  out.shown = [];
  for (const t of out.texts) out.shown.push(await countQuestions(student, t));
  out.snapshots = Number(await student.getAttribute('#conn', 'data-snapshots'));
}

/** The student reads the cohort's course: the lesson list, a lesson opened in place with its
 * image loaded from /content/, "Mark complete", and the status the progress stream brings. */
async function runLesson(browser) {
  const student = await open(browser, tStudent, 'student');
  await waitConn(student, 'live');
  const card = student.locator('#course-card:not([hidden])');
  await card.waitFor({ timeout: WAIT_MS });
  out.courseHeading = (await student.textContent('#course-h')).trim();
  const button = student.locator('#lessons button[data-act="lesson"]').first();
  out.lessonTitle = (await button.textContent()).trim();
  out.statusBefore = (await student.locator('#lessons .lesson-status').first().textContent()).trim();
  await button.click();
  await student.locator('#lesson:not([hidden]) .lesson-body h1').waitFor({ timeout: WAIT_MS });
  out.lessonHeading = (await student.textContent('#lesson .lesson-body h1')).trim();
  // The image came from /content/ and decoded.
  await student.waitForFunction(() => {
    const img = document.querySelector('#lesson .lesson-body img');
    return img && img.complete && img.naturalWidth > 0;
  }, null, { timeout: WAIT_MS });
  out.imageSrc = await student.getAttribute('#lesson .lesson-body img', 'src');
  out.scriptsInLesson = await student.locator('#lesson script').count();
  await shot(student, 'lesson-open.png');
  out.a11y = await audit(student);
  await student.click('#lesson-done');
  await student.locator('#lessons .lesson-status', { hasText: 'completed' }).waitFor({ timeout: WAIT_MS });
  await student.locator('#lesson-done[disabled]').waitFor({ timeout: WAIT_MS });
  out.statusAfter = (await student.locator('#lessons .lesson-status').first().textContent()).trim();
  await shot(student, 'lesson-done.png');
}

/** Whether the panel of `feature` on `page` is shown (`null` if the view has none). */
async function panelShown(page, feature) {
  const panel = page.locator(`section[data-feature="${feature}"]`);
  if ((await panel.count()) === 0) return null;
  return panel.first().isVisible();
}

// The page hides a switched-off feature: the Rust test switches chat off with `lectern flags
// set` (step `chat-off`); the open page hides the chat panel at its next reading of
// /api/flags (every 15 s, no reload) while polls stay shown; the test switches it on again
// (step `chat-on`), and a reload shows it.
async function runFlags(browser) {
  const student = await open(browser, tStudent, 'student');
  await waitConn(student, 'live', 'websocket');
  await student.locator('section[data-feature="chat"]').waitFor({ state: 'visible', timeout: WAIT_MS });
  out.before = { chat: await panelShown(student, 'chat'), polls: await panelShown(student, 'polls') };

  if ((await ask('chat-off')) !== 'off') throw new Error('the test did not switch chat off');
  const offAt = Date.now();
  // The page rereads the flags every 15 s: allow that and a loaded machine's slack.
  await student.locator('section[data-feature="chat"]').waitFor({ state: 'hidden', timeout: 40000 });
  out.hiddenAfterMs = Date.now() - offAt;
  out.off = { chat: await panelShown(student, 'chat'), polls: await panelShown(student, 'polls') };
  await shot(student, 'flags-chat-off.png');

  if ((await ask('chat-on')) !== 'on') throw new Error('the test did not switch chat on');
  const flagsRead = student.waitForResponse((r) => new URL(r.url()).pathname === '/api/flags', { timeout: WAIT_MS });
  await student.reload();
  const flags = await (await flagsRead).json();
  out.flagsAfterReload = flags;
  await waitConn(student, 'live', 'websocket');
  await student.locator('section[data-feature="chat"]').waitFor({ state: 'visible', timeout: WAIT_MS });
  out.on = { chat: await panelShown(student, 'chat'), polls: await panelShown(student, 'polls') };
  await shot(student, 'flags-chat-on.png');
}

// A student's page on a classroom node through a cut uplink (tests/netns/offline_class.rs):
// the node stays reachable on the school network, so the page stays live and everything it
// does is acknowledged by the classroom; the region's announcement reaches it after the merge.
async function runOfflineClass(browser) {
  const student = await open(browser, tStudent, 'student');
  await waitConn(student, 'live', 'websocket');
  await student.locator('#notes-count[data-unread]').waitFor({ timeout: WAIT_MS });
  const pollQuestion = await ask('offline');
  const asked = 'Asked in Chromium while the uplink was down';
  await askByKeyboard(student, asked);
  await question(student, asked).waitFor({ timeout: WAIT_MS });
  await vote(student, pollQuestion, 'Lamport');
  const said = 'Chromium is here, offline';
  await student.fill('#chat-text', said);
  await student.press('#chat-text', 'Enter');
  await student.locator('#chat li', { hasText: said }).waitFor({ timeout: WAIT_MS });
  await waitQueued(student, 0);
  out.stateOffline = await student.getAttribute('#conn', 'data-state');
  await shot(student, 'offline-class-uplink-down.png');

  if ((await ask('acted')) !== 'online') throw new Error('the test did not bring the uplink back');
  await student.locator('#notes > li', { hasText: 'Field trip moved' }).waitFor({ timeout: WAIT_MS });
  await student.locator('#notes > li', { hasText: `Poll closed: ${pollQuestion}` }).waitFor({ timeout: WAIT_MS });
  out.notes = await student.$$eval('#notes > li .note-title strong', (els) => els.map((e) => e.textContent.trim()));
  out.stateAfter = await student.getAttribute('#conn', 'data-state');
  out.snapshots = Number(await student.getAttribute('#conn', 'data-snapshots'));
  out.asked = asked;
  out.said = said;
  await shot(student, 'offline-class-merged.png');
}

// A classroom node (the Rust test runs a region and a classroom node over a link it can cut):
// the instructor page says "In sync", then (step `cut`) "Offline since …"; it makes a join
// code, which a page with no token uses to join and ask; the instructor's short token is
// renewed by the page; after step `heal` it says "In sync" again.
async function runClassroom(browser) {
  const teacher = await open(browser, tInstructor, 'instructor');
  await waitConn(teacher, 'live');
  await teacher.locator('#uplink[data-state="in_sync"]').waitFor({ timeout: WAIT_MS });
  out.inSync = (await teacher.textContent('#uplink')).trim();
  if ((await ask('cut')) !== 'cut') throw new Error('the test did not cut the link');
  await teacher.locator('#uplink[data-state="offline"]').waitFor({ timeout: 40000 });
  out.offline = (await teacher.textContent('#uplink')).trim();
  await teacher.selectOption('#jc-role', 'student');
  await teacher.fill('#jc-uses', '2');
  await teacher.click('#jc-form button[type="submit"]');
  await teacher.locator('#jc-value').waitFor({ timeout: WAIT_MS });
  const code = (await teacher.textContent('#jc-value')).trim();
  out.code = code;
  await shot(teacher, 'classroom-offline.png');
  out.a11yTeacher = await audit(teacher);

  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, reducedMotion: 'reduce' });
  const newcomer = await ctx.newPage();
  newcomer.on('pageerror', (e) => log('newcomer page error:', e.message));
  await newcomer.goto(`${base}/?session=${encodeURIComponent(session)}`);
  await newcomer.fill('#jc-code', code.toLowerCase());
  await newcomer.fill('#jc-name', 'Hedy');
  out.a11yJoin = await audit(newcomer);
  await shot(newcomer, 'classroom-join.png');
  await newcomer.click('#join-with-code button[type="submit"]');
  await waitConn(newcomer, 'live');
  out.newcomerWho = (await newcomer.textContent('#who')).trim();
  await askByKeyboard(newcomer, 'I just arrived: what did I miss?');
  await question(teacher, 'I just arrived: what did I miss?').waitFor({ timeout: WAIT_MS });

  // The instructor's token lives 30 s: the page renews it from the classroom node, keeps it in
  // the tab (not in the address bar), and its connection outlives the first token.
  out.tokenInAddressBar = new URL(teacher.url()).searchParams.has('token');
  await teacher.waitForFunction((old) => {
    const now = sessionStorage.getItem('lectern_token');
    return !!now && now !== old;
  }, tInstructor, { timeout: 60000 });
  out.tokenRenewed = true;
  // Past the first token's end, what a student asks still reaches the teacher's page.
  const firstExp = JSON.parse(Buffer.from(tInstructor.split('.')[1], 'base64url').toString()).exp;
  await teacher.waitForFunction((exp) => Date.now() / 1000 > exp + 2, firstExp, { timeout: 60000 });
  await askByKeyboard(newcomer, 'Is the teacher still connected?');
  await question(teacher, 'Is the teacher still connected?').waitFor({ timeout: WAIT_MS });
  out.stateAfterFirstExpiry = await teacher.getAttribute('#conn', 'data-state');
  await waitConn(teacher, 'live');

  if ((await ask('heal')) !== 'healed') throw new Error('the test did not heal the link');
  await teacher.locator('#uplink[data-state="in_sync"]').waitFor({ timeout: 40000 });
  out.inSyncAgain = (await teacher.textContent('#uplink')).trim();
  await shot(teacher, 'classroom-in-sync.png');
  await ctx.close();
}

const SCENARIOS = { 'offline-class': runOfflineClass, classroom: runClassroom, lesson: runLesson, flags: runFlags, failover: runFailover, class: runClass, boards: runBoards, fallback: runFallback, restart: runRestart, 'restart-sse': runRestart };

let browser;
const deadline = setTimeout(() => {
  say({ summary: { ...out, plainStatic: [...plainStatic], error: 'scenario timed out' } });
  process.exit(3);
}, 150000);
try {
  if (!SCENARIOS[scenario]) throw new Error(`unknown scenario ${scenario}`);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, timeout: 60000 });
  await SCENARIOS[scenario](browser);
  await browser.close();
  clearTimeout(deadline);
  say({ summary: { ...out, plainStatic: [...plainStatic] } });
  process.exit(0);
} catch (e) {
  clearTimeout(deadline);
  say({ summary: { ...out, plainStatic: [...plainStatic], error: String((e && e.stack) || e) } });
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
