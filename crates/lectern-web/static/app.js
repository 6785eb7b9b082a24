// Lectern's page: reads `?session=…&token=…[&view=projector][&transport=sse|longpoll]`, picks
// the view from the token's role (student, or instructor/TA/admin) or the `view` parameter,
// and keeps it current through a Connection (conn.js). Without a session or token it shows a
// form to join by code.
//
// Rendering replaces a container's HTML and then gives focus back to the control that had it
// (matched by `data-key`), so keyboard users keep their place while events arrive. What a
// user is typing or choosing lives outside re-rendered markup or in `drafts`.
import {
  Connection, decodeClaims, followStream, keepTokenFresh, newCommandId, TRANSPORTS,
} from '/static/conn.js';
import {
  applyEvent, applyState, currentPoll, emptySession, pinnedQuestion, pollLabels, resultsText,
  visibleQuestions,
} from '/static/model.js';

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

const params = new URLSearchParams(location.search);
const session = params.get('session') || '';
// The tab's token: from the link it was opened with, then kept in this tab's sessionStorage and
// taken out of the address bar, so it stays out of the history and of logged URLs while a reload
// keeps the user in. Renewed by a classroom node before it ends (`keepTokenFresh`).
const TOKEN_KEY = 'lectern_token';
let token = params.get('token') || readStoredToken();
if (params.has('token')) {
  storeToken(token);
  const q = new URLSearchParams(location.search);
  q.delete('token');
  history.replaceState(history.state, '', `${location.pathname}${q.size ? `?${q}` : ''}${location.hash}`);
}
const claims = decodeClaims(token);
const staff = !!claims && ['ta', 'instructor', 'admin'].includes(claims.role);
const view = params.get('view') === 'projector' ? 'projector' : staff ? 'instructor' : 'student';
const first = TRANSPORTS.includes(params.get('transport')) ? params.get('transport') : 'websocket';

const m = emptySession();
const ui = { order: 'top', drafts: new Map(), answering: null, dirty: false, progress: null, notes: new Map(), unread: null, notesOn: false, focusNote: null, dash: null, board: null, lbMe: null, lbHidden: null, privacyChosen: false, privacyBusy: false, missing: new Set(), course: null, lessonOpen: null, lessonHtml: '', lessonBusy: false };


// ---------------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------------

let conn = null;
let baseWho = '';

/** Runs once the module is evaluated (called at the bottom, after every constant exists). */
function main() {
  if (!session || !token || !claims) {
    showJoinForm();
  } else {
    document.body.classList.add(view);
    document.body.dataset.view = view;
    baseWho = view === 'projector'
      ? 'Projector'
      : `${claims.name || claims.sub} · ${staff ? 'Instructor view' : 'Student view'}`;
    $('who').textContent = baseWho;
    $('main').innerHTML = view === 'projector' ? projectorSkeleton() : view === 'instructor' ? instructorSkeleton() : studentSkeleton();
    wire();
    conn = new Connection({
      session, token, user: claims.sub, first,
      onState: (s) => { applyState(m, s); startStreamsOnce(); schedule(); },
      onEvent: (name, p) => { const said = applyEvent(m, name, p, claims.sub); if (said) announce(said); schedule(); },
      onAttendance: (p) => { m.present = p.present; refreshAttendance(); schedule(); },
      onStatus: (s) => { showStatus(s); if (s.state === 'live' && s.transport !== 'websocket') refreshAttendance(); },
      onNotice: notice,
    });
    conn.start();
    keepTokenFresh(token, renewToken);
    if (view === 'instructor') followClassroom();
  }
}

/** A renewed token: every later request, stream and reconnect uses it, and the tab keeps it,
 * so a reload keeps the user in. */
function renewToken(t) {
  token = t;
  if (conn) conn.setToken(t);
  storeToken(t);
}

function readStoredToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { return ''; }
}

function storeToken(t) {
  try { sessionStorage.setItem(TOKEN_KEY, t); } catch (_) { /* storage off: this page only */ }
}

function showJoinForm() {
  document.body.dataset.view = 'join';
  $('main').innerHTML = `<section class="card" aria-labelledby="join-h"><h2 id="join-h">Join a session</h2>
    <form id="join" class="stack">
      <label for="join-code">Session code</label><input id="join-code" type="text" required autocomplete="off" value="${esc(session)}">
      <label for="join-token">Access token (from your course or the link you were sent)</label><input id="join-token" type="text" required autocomplete="off" value="${esc(token)}">
      <button class="primary" type="submit">Join</button>
    </form></section>
  <section class="card" aria-labelledby="jc-h"><h2 id="jc-h">I have a join code</h2>
    <p class="meta">When the school's link is down, your teacher can let you in with a code.</p>
    <form id="join-with-code" class="stack">
      <label for="jc-session">Session</label><input id="jc-session" type="text" required autocomplete="off" value="${esc(session)}">
      <label for="jc-code">Join code</label><input id="jc-code" type="text" required autocomplete="off" placeholder="ABCDE-FGHJK">
      <label for="jc-name">Your name</label><input id="jc-name" type="text" required maxlength="80" autocomplete="name">
      <div><button class="primary" type="submit">Join with the code</button></div>
      <p id="jc-status" class="meta" role="status"></p>
    </form></section>`;
  showStatus({ state: 'error', transport: '', queued: 0, detail: 'not joined' });
  $('join').addEventListener('submit', (e) => {
    e.preventDefault();
    const q = new URLSearchParams({ session: $('join-code').value.trim(), token: $('join-token').value.trim() });
    location.search = q.toString();
  });
  $('join-with-code').addEventListener('submit', (e) => {
    e.preventDefault();
    joinWithCode();
  });
}

/** What the page says for a refused join code. */
const JOIN_REFUSED = {
  join_code_unknown: 'That code is not one of this session\'s: check it with your teacher.',
  join_code_expired: 'That code has expired: ask your teacher for a new one.',
  join_code_used_up: 'That code has let in as many people as it was made for: ask your teacher for a new one.',
  rate_limited: 'Too many tries for this session: wait a minute and try again.',
  doc_not_found: 'There is no such session on this node: check the session code.',
  join_codes_off: 'This node does not take join codes (only a classroom node does).',
};

/** `POST /api/join`: the session, the code and a name give a token; the page opens with it. */
async function joinWithCode() {
  const status = $('jc-status');
  const sessionId = $('jc-session').value.trim();
  status.textContent = 'Joining…';
  try {
    const r = await fetch('/api/join', {
      method: 'POST', cache: 'no-store',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ session: sessionId, code: $('jc-code').value, name: $('jc-name').value }),
    });
    const body = await r.json().catch(() => ({}));
    if (r.ok && body.token) {
      location.search = new URLSearchParams({ session: sessionId, token: body.token }).toString();
      return;
    }
    const code = body.error && body.error.code;
    status.textContent = JOIN_REFUSED[code] || `Not joined: ${(body.error && body.error.message) || r.status}`;
  } catch (_) {
    status.textContent = 'The node did not answer: try again.';
  }
}

// ---------------------------------------------------------------------------------------------
// Classroom node: the uplink and join codes (staff)
// ---------------------------------------------------------------------------------------------

/** How often the instructor page rereads the classroom's uplink, in ms. */
const CLASSROOM_POLL_MS = 5000;

const clock = (s) => new Date(s * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

function minutesText(s) {
  const min = Math.floor((s || 0) / 60);
  if (min < 1) return 'under a minute';
  return min < 120 ? `${min} min` : `${Math.floor(min / 60)} h ${min % 60} min`;
}

/** What the page says about the uplink (`GET /api/classroom`). */
function uplinkText(u) {
  if (u.state === 'offline') {
    return `Offline since ${clock(u.offlineSince)} (${minutesText(u.offlineS)}): the class runs on this classroom node, and everything merges with ${u.upstream} when the link is back.`;
  }
  if (u.state === 'syncing') {
    const n = u.waitingDocs;
    return `Syncing with ${u.upstream}: ${n} document${n === 1 ? '' : 's'} to go up.`;
  }
  return `In sync with ${u.upstream}.`;
}

/** Shows the classroom card while this is a classroom node (a 404 or 403 hides it for good). */
async function followClassroom() {
  for (;;) {
    try {
      const r = await fetch('/api/classroom', { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' });
      if (r.status === 404 || r.status === 403) return;
      if (r.ok) {
        const u = await r.json();
        const el = $('uplink');
        if (el.dataset.state !== u.state || el.textContent !== uplinkText(u)) {
          el.dataset.state = u.state;
          el.textContent = uplinkText(u);
        }
        $('classroom-card').hidden = false;
      }
    } catch (_) { /* the node is away: the connection pill says so */ }
    await new Promise((r) => setTimeout(r, CLASSROOM_POLL_MS));
  }
}

/** `POST /api/sessions/{id}/join-codes`: shows the new code once, in large type. */
async function makeJoinCode() {
  const out = $('jc-made');
  out.textContent = 'Making a code…';
  try {
    const r = await fetch(`/api/sessions/${encodeURIComponent(session)}/join-codes`, {
      method: 'POST', cache: 'no-store',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ role: $('jc-role').value, minutes: Number($('jc-minutes').value), uses: Number($('jc-uses').value) }),
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      out.textContent = `No code: ${(body.error && body.error.message) || r.status}`;
      return;
    }
    const who = body.role === 'ta' ? 'teaching assistant' : 'student';
    out.innerHTML = `Join code: <strong class="code" id="jc-value">${esc(body.code)}</strong> <span class="meta">lets in up to ${esc(body.uses)} ${who}${body.uses === 1 ? '' : 's'} until ${esc(clock(Math.floor(body.expiresAt / 1000)))}; session code ${esc(session)}</span>`;
  } catch (_) {
    out.textContent = 'The node did not answer: try again.';
  }
}

// ---------------------------------------------------------------------------------------------
// Status, announcements, errors
// ---------------------------------------------------------------------------------------------

const TRANSPORT_TEXT = {
  websocket: 'WebSocket',
  sse: 'server-sent events + POST',
  longpoll: 'long-polling',
};

function showStatus(s) {
  const el = $('conn');
  // When the page first went live, in ms since navigation (read by the browser tests).
  if (s.state === 'live' && !el.dataset.firstLiveMs) el.dataset.firstLiveMs = String(Math.round(performance.now()));
  el.dataset.state = s.state;
  el.dataset.transport = s.transport || '';
  el.dataset.queued = String(s.queued);
  el.dataset.snapshots = String(s.snapshots || 0);
  // The node in use (another one after a failover).
  el.dataset.node = s.node || '';
  let text;
  switch (s.state) {
    case 'live':
      text = `Live · ${TRANSPORT_TEXT[s.transport] || s.transport}`;
      // After a failover: say which node serves the page until it is back home.
      if (s.node && s.node !== location.origin) text += ` · via ${new URL(s.node).host}`;
      break;
    case 'connecting': text = 'Connecting…'; break;
    case 'reconnecting': text = 'Connection lost · reconnecting…'; break;
    case 'offline': text = 'Offline · waiting for the network'; break;
    default: text = `Not connected${s.detail ? ` · ${s.detail}` : ''}`;
  }
  if (s.queued) text += ` · ${s.queued} action${s.queued === 1 ? '' : 's'} waiting to be sent`;
  $('conn-text').textContent = text;
  el.title = s.detail || '';
  renderOutbox();
}

/** What is waiting in the offline queue, said plainly (the status says how many). */
function renderOutbox() {
  const el = $('outbox');
  const items = conn ? conn.outbox.items : [];
  if (!items.length) { el.hidden = true; el.replaceChildren(); return; }
  el.hidden = false;
  const describe = (c) => {
    const q = c.question && m.questions.get(c.question);
    const p = c.poll && m.polls.get(c.poll);
    switch (c.cmd) {
      case 'qa.ask': return `Question: ${c.text}`;
      case 'chat.send': return `Message: ${c.text}`;
      case 'broadcast.send': return `Broadcast: ${c.text}`;
      case 'poll.vote': return `Vote on: ${p ? p.question : c.poll}`;
      default: return `${COMMAND_TEXT[c.cmd] || c.cmd}${q ? `: ${q.question}` : p ? `: ${p.question}` : ''}`;
    }
  };
  el.innerHTML = `<p><strong>Waiting to be sent</strong> (sent in this order as soon as the connection is back; nothing is applied twice):</p>
    <ul>${items.map((c) => `<li>${esc(describe(c))}</li>`).join('')}</ul>`;
}

function announce({ text, urgent }) {
  const el = urgent ? $('alerter') : $('announcer');
  const p = document.createElement('p');
  p.textContent = text;
  el.append(p);
  while (el.childElementCount > 5) el.firstElementChild.remove();
}

const COMMAND_TEXT = {
  'qa.ask': 'Your question', 'qa.upvote': 'Your upvote', 'qa.unvote': 'Taking back your upvote',
  'qa.answer': 'The answer', 'qa.pin': 'Pinning', 'qa.dismiss': 'Dismissing', 'qa.approve': 'Approving',
  'qa.reject': 'Rejecting', 'poll.create': 'The poll', 'poll.vote': 'Your vote', 'poll.close': 'Closing the poll',
  'poll.reveal': 'Revealing results', 'chat.send': 'Your message', 'broadcast.send': 'The broadcast',
};

function notice(kind, d) {
  if (kind === 'rejected') {
    const what = COMMAND_TEXT[d.cmd] || d.cmd;
    showError(`${what} was not accepted: ${d.message || d.code} (${d.code})`);
    const q = d.command && d.command.question && m.questions.get(d.command.question);
    if (q && (d.cmd === 'qa.upvote' || d.cmd === 'qa.unvote')) { q.voted = d.cmd === 'qa.unvote'; schedule(); }
  } else if (kind === 'dropped') {
    showError(d.message);
  } else if (kind === 'server' && d && d.code) {
    announce({ text: d.code === 'shutting_down' ? 'The server is restarting; reconnecting.' : `Server: ${d.message || d.code}` });
  }
}

function showError(text) {
  const p = document.createElement('p');
  p.textContent = text;
  $('errors').replaceChildren(p);
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/** Renders on the next turn, once for any number of events. */
function schedule() {
  if (ui.dirty) return;
  ui.dirty = true;
  setTimeout(() => { ui.dirty = false; render(); }, 0);
}

/** Replaces `el`'s content, keeping focus on the control with the same data-key. */
function renderInto(el, html) {
  if (!el) return;
  const a = document.activeElement;
  const key = a && el.contains(a) ? a.dataset.key : null;
  el.innerHTML = html;
  if (key) {
    const n = el.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (n) n.focus();
  }
}

function render() {
  document.title = m.title ? `${m.title} · Lectern` : 'Lectern';
  $('title').textContent = m.title || 'Lectern';
  $('who').textContent = `${baseWho}${m.state === 'ended' ? ' · this session has ended' : ''}`;
  if (view === 'projector') return renderProjector();
  renderBroadcast();
  renderQuestions();
  renderPolls();
  renderChat();
  if (view === 'instructor') {
    renderModeration();
    renderAttendance();
  }
  if (view === 'student') {
    renderProgress();
    renderCourse();
  }
  renderNotes();
  renderLeaderboard();
  renderDashboard();
}

/** After a full state: the progress and side streams need the cohort, known from now on. */
let streamsStarted = false;
function startStreamsOnce() {
  if (!m.cohort) return;
  startFlagsOnce();
  if (view === 'student') loadCourseOnce();
  if (streamsStarted || view === 'projector') return;
  streamsStarted = true;
  startSideStreams();
}

// Feature flags: an operator may switch chat, polls or the leaderboard off at run time
// (`lectern flags set chat off`). The node refuses their commands (`feature_disabled`) on
// every transport; the page hides their panels, asking `GET /api/flags` once the cohort is
// known and then every FLAGS_REFRESH_MS.
const FLAGS_REFRESH_MS = 15000;
let flagsStarted = false;
function startFlagsOnce() {
  if (flagsStarted) return;
  flagsStarted = true;
  refreshFlags();
  setInterval(refreshFlags, FLAGS_REFRESH_MS);
}

async function refreshFlags() {
  let flags;
  try {
    const r = await fetch(`/api/flags?cohort=${encodeURIComponent(m.cohort)}`, { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' });
    if (!r.ok) return;
    flags = await r.json();
  } catch { return; }
  for (const el of document.querySelectorAll('[data-feature]')) {
    el.classList.toggle('feature-off', flags[el.dataset.feature] === false);
  }
}

function renderBroadcast() {
  const el = $('broadcast');
  const bs = [...m.broadcasts.values()].sort((a, b) => b.at - a.at);
  if (!bs.length) { el.hidden = true; return; }
  el.hidden = false;
  const b = bs[0];
  renderInto(el, `<p><strong>Announcement from ${esc(b.by && b.by.name)}:</strong> ${esc(b.text)}</p>`);
}

function questionItem(q) {
  const badges = [
    q.pinned ? '<span class="badge pinned">Pinned</span>' : '',
    q.pending ? '<span class="badge pending">Waiting for moderation</span>' : '',
    q.answer ? '<span class="badge answered">Answered</span>' : '',
  ].join('');
  const who = q.author ? esc(q.author.name || q.author.id) : 'Anonymous';
  const anon = q.anonymous && q.author ? ' (anonymous to classmates)' : '';
  const mine = q.author && q.author.id === claims.sub;
  // The visible text is the start of the accessible name (WCAG 2.5.3); the question is the
  // button's description.
  const up = q.pending ? '' : `<button data-key="up:${esc(q.id)}" data-act="vote" data-q="${esc(q.id)}" aria-pressed="${q.voted ? 'true' : 'false'}"
      aria-describedby="qt-${esc(q.id)}"><span aria-hidden="true">▲</span> Upvote (${q.upvotes})</button>`;
  const staffButtons = view === 'instructor' ? `
      <button data-key="answer:${esc(q.id)}" data-act="answer" data-q="${esc(q.id)}">${q.answer ? 'Edit answer' : 'Answer'}</button>
      <button data-key="pin:${esc(q.id)}" data-act="pin" data-q="${esc(q.id)}" aria-pressed="${q.pinned ? 'true' : 'false'}">${q.pinned ? 'Unpin' : 'Pin'}</button>
      <button data-key="dismiss:${esc(q.id)}" data-act="dismiss" data-q="${esc(q.id)}">Dismiss</button>` : '';
  return `<li data-qid="${esc(q.id)}">
    <p class="q-text">${badges}<span id="qt-${esc(q.id)}">${esc(q.question)}</span></p>
    <p class="meta">${who}${anon}${mine ? ' · you' : ''}</p>
    <div class="row">${up}${staffButtons}</div>
    ${q.answer ? `<p class="answer"><strong>${esc(q.answer.by && q.answer.by.name || 'Answer')}:</strong> ${esc(q.answer.text)}</p>` : ''}
  </li>`;
}

function renderQuestions() {
  const qs = visibleQuestions(m, ui.order, view === 'instructor');
  renderInto($('questions'), qs.length ? qs.map(questionItem).join('') : '<li class="empty">No questions yet.</li>');
  $('q-count').textContent = `(${qs.length})`;
}

function renderModeration() {
  const pending = [...m.questions.values()].filter((q) => q.status === 'pending').sort((a, b) => a.createdAt - b.createdAt);
  $('mod-count').textContent = `(${pending.length})`;
  renderInto($('moderation'), pending.length ? pending.map((q) => `<li data-qid="${esc(q.id)}">
      <p class="q-text">${esc(q.question)}</p><p class="meta">${esc(q.author ? q.author.name : 'Anonymous')}</p>
      <div class="row"><button class="primary" data-key="approve:${esc(q.id)}" data-act="approve" data-q="${esc(q.id)}">Approve</button>
      <button data-key="reject:${esc(q.id)}" data-act="reject" data-q="${esc(q.id)}">Reject</button></div></li>`).join('')
    : `<li class="empty">${m.moderation ? 'Nothing waiting.' : 'Moderation is off: questions appear at once.'}</li>`);
}

function resultsHtml(poll) {
  const r = poll.results;
  if (!r) return '<p class="meta">Results are hidden until the instructor reveals them.</p>';
  if (r.words) {
    return `<div class="results"><p class="meta">${r.voters} answer${r.voters === 1 ? '' : 's'}</p>
      <p class="words">${r.words.map((w) => `<span>${esc(w.word)} <span class="meta">×${w.count}</span></span>`).join('')}</p></div>`;
  }
  const labels = pollLabels(poll);
  const total = (r.counts || []).reduce((a, b) => a + b, 0);
  const rows = (r.counts || []).map((c, i) => {
    const pct = total ? Math.round((c * 100) / total) : 0;
    return `<div class="result"><span>${esc(labels[i] ?? i + 1)}</span>
      <span class="track" aria-hidden="true"><span class="fill" style="--w:${pct}%"></span></span>
      <span>${c} (${pct}%)</span></div>`;
  }).join('');
  const avg = r.average != null ? `<p class="meta">Average: ${r.average}</p>` : '';
  return `<div class="results" data-results="${esc(poll.id)}"><p class="meta">${r.voters} voter${r.voters === 1 ? '' : 's'}</p>${rows}${avg}</div>`;
}

function myVoteText(poll) {
  const v = ui.drafts.get(`sent:${poll.id}`) ?? poll.myVote;
  if (v == null) return '';
  if (poll.kind === 'open_text') return `Your answer: ${v}`;
  const labels = pollLabels(poll);
  const picks = String(v).split(',').map((x) => (poll.kind === 'rating' ? x : labels[Number(x)] ?? x));
  return `Your vote: ${picks.join(', ')}`;
}

function voteForm(poll) {
  const id = poll.id;
  const labels = pollLabels(poll);
  const draft = ui.drafts.get(id);
  let inputs;
  if (poll.kind === 'open_text') {
    inputs = `<label for="vote-${esc(id)}">Your answer</label><input type="text" id="vote-${esc(id)}" data-key="text:${esc(id)}" data-draft="${esc(id)}" maxlength="200" value="${esc(draft ?? '')}">`;
  } else {
    const type = poll.kind === 'multiple' ? 'checkbox' : 'radio';
    const chosen = new Set(String(draft ?? ui.drafts.get(`sent:${id}`) ?? poll.myVote ?? '').split(',').filter((x) => x !== ''));
    inputs = labels.map((l, i) => {
      const value = poll.kind === 'rating' ? String(i + 1) : String(i);
      return `<label class="check"><input type="${type}" name="choice-${esc(id)}" value="${value}" data-key="opt:${esc(id)}:${value}" data-draft="${esc(id)}" ${chosen.has(value) ? 'checked' : ''}> ${esc(l)}</label>`;
    }).join('');
  }
  return `<form class="vote" data-poll="${esc(id)}"><fieldset><legend>${esc(poll.question)}</legend>${inputs}</fieldset>
    <button class="primary" type="submit" data-key="vote:${esc(id)}">Vote</button> <span class="meta">${esc(myVoteText(poll))}</span></form>`;
}

function renderPolls() {
  const polls = [...m.polls.values()].sort((a, b) => b.createdAt - a.createdAt);
  const html = polls.map((p) => {
    const state = p.state === 'open' ? 'open' : 'closed';
    const hidden = p.hideResults && !p.revealed;
    const head = `<h3>${esc(p.question)} <span class="meta">(${state}${hidden ? ', results hidden from students' : ''})</span></h3>`;
    if (view === 'instructor') {
      return `<li data-pid="${esc(p.id)}">${head}
        <div class="row">${p.state === 'open' ? `<button data-key="close:${esc(p.id)}" data-act="close" data-p="${esc(p.id)}">Close</button>` : ''}
        ${hidden ? `<button data-key="reveal:${esc(p.id)}" data-act="reveal" data-p="${esc(p.id)}">Reveal results</button>` : ''}</div>
        ${resultsHtml(p)}</li>`;
    }
    const body = p.state === 'open' ? voteForm(p) : `<p class="meta">${esc(myVoteText(p)) || 'Voting is closed.'}</p>`;
    return `<li data-pid="${esc(p.id)}">${p.state === 'open' ? '' : head}${body}${resultsHtml(p)}</li>`;
  }).join('');
  renderInto($('polls'), html || '<li class="empty">No polls yet.</li>');
}

function renderChat() {
  const msgs = [...m.chat.values()].sort((a, b) => a.at - b.at).slice(-50);
  renderInto($('chat'), msgs.length ? msgs.map((c) => `<li><span class="meta">${esc(c.author && c.author.name)}:</span> ${esc(c.text)}</li>`).join('') : '<li class="empty">No messages yet.</li>');
}

function renderAttendance() {
  $('present').textContent = String(m.present);
  renderInto($('attendance'), m.users.map((u) => `<li>${esc(u.name || u.user)} <span class="meta">${u.present ? 'present' : 'left'} · ${u.minutesPresent} min</span></li>`).join(''));
}

function renderProgress() {
  const sec = $('progress-card');
  if (!ui.progress) { sec.hidden = true; return; }
  sec.hidden = false;
  const lessons = [...ui.progress.values()];
  renderInto($('progress'), lessons.length ? lessons.map((l) => `<li>${esc(l.lesson)} <span class="meta">${esc(l.status.replace('_', ' '))}${l.score != null ? ` · ${l.score}/${l.maxScore}` : ''}</span></li>`).join('') : '<li class="empty">No lessons started yet.</li>');
}

// The course the session's cohort follows (`cohort.course`): its lessons in order with the
// student's own status, a lesson's body (rendered and sanitized by the node at publication,
// an immutable /content/ blob) opened in place, and "Mark complete", a `progress.update` that
// the progress stream then shows. The outline is revalidated on every load (`no-cache`: a
// 304 when nothing was published), so a new version shows without waiting out its max-age.
let courseLoaded = false;
function loadCourseOnce() {
  if (courseLoaded) return;
  courseLoaded = true;
  loadCourse();
}

async function loadCourse() {
  try {
    const c = await fetch(`/api/cohorts/${encodeURIComponent(m.cohort)}`, { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' });
    if (!c.ok) return;
    const cohort = await c.json();
    if (!cohort.courseId) return;
    const r = await fetch(`/api/courses/${encodeURIComponent(cohort.courseId)}`, { cache: 'no-cache' });
    if (!r.ok) return;
    ui.course = await r.json();
  } catch { return; }
  schedule();
}

function lessonStatus(id) {
  const p = ui.progress && ui.progress.get(id);
  return p ? p.status.replace('_', ' ') : 'not started';
}

function renderCourse() {
  const sec = $('course-card');
  const c = ui.course;
  if (!c) { sec.hidden = true; return; }
  sec.hidden = false;
  $('course-h').textContent = c.title ? `Course: ${c.title}` : 'Course';
  const lessons = (c.modules || []).flatMap((mod) => (mod.lessons || []).map((l) => ({ ...l, module: mod.title })));
  renderInto($('lessons'), lessons.length ? lessons.map((l) => `<li><button type="button" class="link" data-key="lesson-${esc(l.id)}" data-act="lesson" data-lesson="${esc(l.id)}" aria-expanded="${ui.lessonOpen === l.id}">${esc(l.title)}</button> <span class="meta">${esc(l.module)} · <span class="lesson-status">${esc(lessonStatus(l.id))}</span></span></li>`).join('') : '<li class="empty">No lessons published yet.</li>');
  const art = $('lesson');
  const open = lessons.find((l) => l.id === ui.lessonOpen);
  if (!open) { art.hidden = true; return; }
  art.hidden = false;
  const done = lessonStatus(open.id) === 'completed';
  const body = `<div class="lesson-body">${ui.lessonHtml}</div>
    <p><button type="button" class="primary" id="lesson-done" data-key="lesson-done" data-act="lesson-done" data-lesson="${esc(open.id)}" ${done || ui.lessonBusy ? 'disabled' : ''}>${done ? 'Completed' : 'Mark complete'}</button></p>`;
  if (art.dataset.shown !== `${open.id}|${done}|${ui.lessonBusy}`) {
    art.dataset.shown = `${open.id}|${done}|${ui.lessonBusy}`;
    renderInto(art, body);
  }
}

async function openLesson(id) {
  const lesson = (ui.course.modules || []).flatMap((mod) => mod.lessons || []).find((l) => l.id === id);
  if (!lesson) return;
  if (ui.lessonOpen === id) { ui.lessonOpen = null; schedule(); return; }
  try {
    const r = await fetch(`/content/${lesson.html}.html`);
    if (!r.ok) { showError(`The lesson did not load: ${await errorText(r)}`); return; }
    // Sanitized by the node when the lesson was published (and refused if it was not).
    ui.lessonHtml = await r.text();
  } catch (_) { showError('The lesson did not load; try again.'); return; }
  ui.lessonOpen = id;
  $('lesson').dataset.shown = '';
  schedule();
}

async function completeLesson(id) {
  ui.lessonBusy = true;
  schedule();
  let res = null;
  try {
    res = await fetch('/api/progress', {
      method: 'POST', cache: 'no-store',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ cohort: m.cohort, student: claims.sub, lesson: id, status: 'completed', id: newCommandId() }),
    });
  } catch (_) { /* said below */ }
  ui.lessonBusy = false;
  if (!res || !res.ok) showError(res ? `Not saved: ${await errorText(res)}` : 'That did not reach the server; try again.');
  schedule();
}

// ---------------------------------------------------------------------------------------------
// Notifications, leaderboard, dashboard
// ---------------------------------------------------------------------------------------------

const DATE_TIME = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const when = (ms) => (ms ? DATE_TIME.format(new Date(ms)) : '');
const KIND_TEXT = { grade: 'Grade', announcement: 'Announcement', answer: 'Answer', poll_closed: 'Poll closed' };
const pct = (x) => `${Number(x ?? 0)}%`;
const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

function noteItem(n) {
  const id = esc(n.id);
  const mark = n.read ? '' : `<button type="button" data-key="read:${id}" data-act="read" data-n="${id}" aria-describedby="nt-${id}">Mark read</button>`;
  return `<li class="note${n.read ? '' : ' unread'}" data-nid="${id}" data-key="note:${id}" tabindex="-1">
    <p class="note-title">${n.read ? '' : '<span class="badge new">New</span>'}<strong id="nt-${id}">${esc(n.title)}</strong></p>
    ${n.body ? `<p class="note-body">${esc(n.body)}</p>` : ''}
    <p class="meta"><time datetime="${esc(new Date(n.at || 0).toISOString())}">${esc(when(n.at))}</time> · ${esc(KIND_TEXT[n.kind] || n.kind)} · ${n.read ? 'read' : 'unread'}</p>
    ${mark}</li>`;
}

/** A side stream's section is shown once its stream is open; `data-stream` says which of
 * waiting, open or missing (the node has no such stream, or refuses it: the section stays
 * hidden). */
function showSection(sec, name, open) {
  sec.hidden = !open;
  sec.dataset.stream = ui.missing.has(name) ? 'missing' : open ? 'open' : 'waiting';
}

function renderNotes() {
  const sec = $('notes-card');
  if (!sec) return;
  showSection(sec, 'notes', ui.notesOn);
  if (!ui.notesOn) return;
  // The count is shown once the node said it (the stream's first event).
  const count = $('notes-count');
  if (ui.unread == null) {
    count.textContent = '';
    delete count.dataset.unread;
  } else {
    count.textContent = `(${ui.unread} unread)`;
    count.dataset.unread = String(ui.unread);
  }
  const items = [...ui.notes.values()].sort((a, b) => b.at - a.at || (a.id < b.id ? 1 : -1)).slice(0, NOTES_SHOWN);
  renderInto($('notes'), items.length ? items.map(noteItem).join('') : '<li class="empty">No notifications.</li>');
  if (ui.focusNote) {
    const li = document.querySelector(`[data-key="note:${CSS.escape(ui.focusNote)}"]`);
    ui.focusNote = null;
    if (li) li.focus();
  }
}

/** Display names by user id, from what the page knows (attendance, the staff leaderboard). */
function nameOf(user) {
  const u = m.users.find((x) => x.user === user);
  if (u && u.name) return u.name;
  const e = ui.board && (ui.board.entries || []).find((x) => x.user === user);
  return (e && e.name) || user;
}

const LEADERBOARD_TOP = 10;

function leaderboardRow(e, me) {
  const name = `${esc(e.name ?? 'Anonymous')}${me ? ' <strong>(you)</strong>' : ''}${staff && e.anonymous ? ' <span class="meta">(anonymous to classmates)</span>' : ''}`;
  const score = e.maxScore ? `${e.score} / ${e.maxScore}` : String(e.score ?? 0);
  return `<tr${me ? ' class="me" aria-current="true"' : ''}><th scope="row">${esc(e.rank)}</th><td>${name}</td><td class="score">${esc(score)}</td><td class="score">${esc(e.completedLessons ?? 0)}</td></tr>`;
}

function renderLeaderboard() {
  const sec = $('lb-card');
  if (!sec) return;
  showSection(sec, 'board', !!ui.board);
  if (!ui.board) return;
  const entries = ui.board.entries || [];
  if (!entries.length) { renderInto($('lb'), '<p class="empty">No scores yet.</p>'); return; }
  const top = entries.slice(0, LEADERBOARD_TOP);
  // Our own row: by user id, or, when we are anonymous to classmates (and so to ourselves on
  // the shared board), by the place the node told us (`leaderboard/me`).
  const own = ui.lbMe;
  let mine = entries.findIndex((e) => e.user != null && e.user === claims.sub);
  if (mine < 0 && ui.lbHidden && own && own.rank != null) {
    mine = entries.findIndex((e) => e.user == null && e.rank === own.rank && e.score === own.score);
  }
  const rows = top.map((e, i) => leaderboardRow(e, i === mine));
  if (mine >= LEADERBOARD_TOP) rows.push(`<tr class="gap"><td colspan="4">…</td></tr>`, leaderboardRow(entries[mine], true));
  const hidden = ui.lbHidden ? ' (classmates see you as Anonymous)' : '';
  const me = mine >= 0 ? `<p class="meta" id="lb-mine">Your rank: ${esc(entries[mine].rank)} of ${entries.length}${hidden}</p>` : '';
  const box = $('lb-show-name');
  if (box && ui.lbHidden !== null && !ui.privacyBusy) {
    box.disabled = false;
    box.checked = !ui.lbHidden;
  }
  renderInto($('lb'), `${me}<table class="board"><caption>Top ${Math.min(LEADERBOARD_TOP, entries.length)} of ${plural(entries.length, 'student')} by total score</caption>
    <thead><tr><th scope="col">Rank</th><th scope="col">Student</th><th scope="col" class="score">Score</th><th scope="col" class="score">Lessons completed</th></tr></thead>
    <tbody>${rows.join('')}</tbody></table>`);
}

/** One lesson's distribution: a stacked bar for the eye (hidden from assistive technology, its
 * segments told apart by pattern as well as colour) and the numbers as text in the row. */
function lessonRow(l, students) {
  const n = students || (l.completed + l.inProgress + l.notStarted) || 1;
  const w = (x) => `${((x * 100) / n).toFixed(1)}%`;
  const avg = l.averageScorePct != null ? pct(l.averageScorePct) : '—';
  return `<tr data-lesson="${esc(l.lesson)}"><th scope="row">${esc(l.lesson)}</th>
    <td class="num">${esc(l.completed)}</td><td class="num">${esc(l.inProgress)}</td><td class="num">${esc(l.notStarted)}</td>
    <td class="num">${pct(l.completionRate)}</td><td class="num">${avg}</td>
    <td><span class="dist-bar" aria-hidden="true"><span class="seg done" style="--w:${w(l.completed)}"></span><span class="seg doing" style="--w:${w(l.inProgress)}"></span><span class="seg todo" style="--w:${w(l.notStarted)}"></span></span></td></tr>`;
}

function renderDashboard() {
  const sec = $('dash-card');
  if (!sec) return;
  showSection(sec, 'dash', !!ui.dash);
  if (!ui.dash) return;
  const d = ui.dash;
  const online = d.online || { count: 0, users: [], staff: 0 };
  const lessons = d.lessons || [];
  const polls = d.polls || [];
  const inactive = d.inactive || [];
  const onlineNames = (online.users || []).map(nameOf);
  const stats = `<dl class="stats">
    <div><dt>Students online</dt><dd id="dash-online">${esc(online.count)}</dd>${onlineNames.length ? `<dd class="meta" id="dash-online-names">${esc(onlineNames.join(', '))}</dd>` : ''}${online.staff ? `<dd class="meta" id="dash-online-staff">and ${esc(online.staff)} staff</dd>` : ''}</div>
    <div><dt>Completion rate</dt><dd id="dash-completion">${esc(pct(d.completionRate))}</dd></div>
    <div><dt>Open questions</dt><dd id="dash-questions">${esc(d.openQuestions ?? 0)}</dd></div>
    <div><dt>Students</dt><dd id="dash-students">${esc(d.students ?? 0)}</dd></div></dl>`;
  const dist = lessons.length ? `<table class="dist" id="dash-lessons"><caption>Progress per lesson (students)</caption>
      <thead><tr><th scope="col">Lesson</th><th scope="col" class="num">Completed</th><th scope="col" class="num">In progress</th><th scope="col" class="num">Not started</th><th scope="col" class="num">Completion</th><th scope="col" class="num">Average score</th><th scope="col">Distribution</th></tr></thead>
      <tbody>${lessons.map((l) => lessonRow(l, d.students)).join('')}</tbody></table>
      <p class="meta legend" aria-hidden="true"><span class="key done"></span> completed <span class="key doing"></span> in progress <span class="key todo"></span> not started</p>`
    : '<p class="empty" id="dash-lessons">No lesson progress yet.</p>';
  const pollHtml = polls.length ? `<table class="dist" id="dash-polls"><caption>Poll participation</caption>
      <thead><tr><th scope="col">Poll</th><th scope="col">State</th><th scope="col" class="num">Voters</th><th scope="col" class="num">Participation</th></tr></thead>
      <tbody>${polls.map((p) => `<tr><th scope="row">${esc(p.question)}</th><td>${p.open ? 'open' : 'closed'}</td><td class="num">${esc(p.voters)}</td><td class="num">${esc(pct(p.participationPct))}</td></tr>`).join('')}</tbody></table>`
    : '<p class="empty" id="dash-polls">No polls yet.</p>';
  const days = d.inactiveDays ?? '';
  const inactiveHtml = `<h3 id="dash-inactive-h">Inactive for ${esc(days)} days or more (${inactive.length})</h3>
    <ul id="dash-inactive" class="items" aria-labelledby="dash-inactive-h">${inactive.length
      ? inactive.map((s) => `<li>${esc(s.name || s.user)} <span class="meta">${s.lastActiveAt ? `last active ${esc(when(s.lastActiveAt))}` : 'no activity yet'}</span></li>`).join('')
      : '<li class="empty">Everyone has been active.</li>'}</ul>`;
  renderInto($('dash'), `${stats}${dist}${pollHtml}${inactiveHtml}`);
}

function renderProjector() {
  const q = pinnedQuestion(m);
  renderInto($('proj-q'), q
    ? `<p class="proj-question">${esc(q.question)}</p><p class="proj-sub">${q.author ? esc(q.author.name) : 'Anonymous'} · ▲ ${q.upvotes}</p>
       ${q.answer ? `<p class="proj-sub">Answer: ${esc(q.answer.text)}</p>` : ''}`
    : '<p class="proj-sub">No question pinned.</p>');
  const p = currentPoll(m);
  if (!p) { renderInto($('proj-poll'), '<p class="proj-sub">No poll yet.</p>'); return; }
  const shown = !p.hideResults || p.revealed;
  renderInto($('proj-poll'), `<p class="proj-question">${esc(p.question)}</p>
    <p class="proj-sub">${p.state === 'open' ? 'Voting is open' : 'Voting is closed'}</p>
    ${shown && p.results ? resultsHtml(p) : '<p class="proj-sub">Results will appear when revealed.</p>'}`);
  $('proj-sr').textContent = shown && p.results ? `Results of ${p.question}: ${resultsText(p)}` : '';
}

// ---------------------------------------------------------------------------------------------
// Skeletons
// ---------------------------------------------------------------------------------------------

function sortControl() {
  return `<fieldset class="row"><legend>Sort questions</legend>
    <label class="check"><input type="radio" name="order" value="top" checked> Top</label>
    <label class="check"><input type="radio" name="order" value="recent"> Recent</label></fieldset>`;
}

function studentSkeleton() {
  return `<div id="broadcast" class="broadcast wide" hidden></div>
  <section class="card" aria-labelledby="qa-h"><h2 id="qa-h">Questions <span id="q-count" class="meta"></span></h2>
    <form id="ask-form" class="stack"><label for="ask-text">Ask a question</label>
      <textarea id="ask-text" rows="2" maxlength="500" required></textarea>
      <label class="check"><input type="checkbox" id="ask-anon"> Ask anonymously</label>
      <div><button class="primary" type="submit">Ask</button></div></form>
    ${sortControl()}
    <ol id="questions" class="items"></ol></section>
  <section class="card" data-feature="polls" aria-labelledby="polls-h"><h2 id="polls-h">Polls</h2><ul id="polls" class="items"></ul></section>
  <section class="card" data-feature="chat" aria-labelledby="chat-h"><h2 id="chat-h">Chat</h2><ul id="chat" class="items"></ul>
    <form id="chat-form" class="stack"><label for="chat-text">Message</label><input id="chat-text" type="text" maxlength="500" required>
    <div><button type="submit">Send</button></div></form></section>
  <section id="progress-card" class="card" aria-labelledby="prog-h" hidden><h2 id="prog-h">My progress</h2><ul id="progress" class="items"></ul></section>
  <section id="course-card" class="card wide" aria-labelledby="course-h" hidden><h2 id="course-h">Course</h2><ol id="lessons" class="items"></ol>
    <article id="lesson" class="lesson" aria-live="polite" hidden></article></section>
  ${notesSkeleton()}
  ${leaderboardSkeleton()}`;
}

/** The notifications panel: its heading carries the unread count; new ones are announced
 * through the polite live region (#announcer), not by making the list itself live. */
function notesSkeleton() {
  return `<section id="notes-card" class="card" aria-labelledby="notes-h" hidden>
    <h2 id="notes-h">Notifications <span id="notes-count" class="meta"></span></h2>
    <div class="row"><button type="button" id="notes-all" data-key="notes-all" data-act="read-all">Mark all read</button></div>
    <ul id="notes" class="items"></ul></section>`;
}

function leaderboardSkeleton() {
  // Students choose whether classmates see their name (`leaderboard.privacy`).
  const privacy = staff ? '' : `<p class="lb-privacy"><label><input type="checkbox" id="lb-show-name" disabled> Show my name to classmates</label>
    <span id="lb-privacy-status" class="meta" role="status"></span></p>`;
  return `<section id="lb-card" class="card" data-feature="leaderboard" aria-labelledby="lb-h" hidden><h2 id="lb-h">Leaderboard</h2>${privacy}<div id="lb"></div></section>`;
}

function instructorSkeleton() {
  const projector = new URLSearchParams({ session, token, view: 'projector' });
  return `<div id="broadcast" class="broadcast wide" hidden></div>
  <section class="card" aria-labelledby="mod-h"><h2 id="mod-h">Moderation queue <span id="mod-count" class="meta"></span></h2><ul id="moderation" class="items"></ul></section>
  <section class="card" aria-labelledby="qa-h"><h2 id="qa-h">Questions <span id="q-count" class="meta"></span></h2>${sortControl()}<ol id="questions" class="items"></ol></section>
  <section class="card" data-feature="polls" aria-labelledby="polls-h"><h2 id="polls-h">Polls</h2>
    <form id="poll-form" class="stack"><label for="poll-q">New poll question</label><input id="poll-q" type="text" maxlength="300" required>
      <label for="poll-kind">Kind</label><select id="poll-kind"><option value="single">Single choice</option><option value="multiple">Multiple choice</option><option value="rating">Rating</option><option value="open_text">Open text</option></select>
      <label for="poll-options">Options, one per line</label><textarea id="poll-options" rows="3"></textarea>
      <label for="poll-scale">Top of the rating scale</label><input id="poll-scale" type="number" min="2" max="10" value="5">
      <label class="check"><input type="checkbox" id="poll-hide" checked> Hide results from students until revealed</label>
      <div><button class="primary" type="submit">Start poll</button></div></form>
    <ul id="polls" class="items"></ul></section>
  <section class="card" aria-labelledby="bc-h"><h2 id="bc-h">${claims.role === 'ta' ? 'Projector' : 'Broadcast'}</h2>
    ${claims.role === 'ta' ? '' : `<form id="broadcast-form" class="stack"><label for="bc-text">Message to everyone</label><input id="bc-text" type="text" maxlength="500" required>
    <div><button class="primary" type="submit">Broadcast</button></div></form>`}
    <p><a href="/?${esc(projector)}" target="_blank" rel="noopener">Open the projector view</a></p></section>
  <section class="card" aria-labelledby="att-h"><h2 id="att-h">Attendance: <span id="present">0</span> present</h2><ul id="attendance" class="items"></ul></section>
  <section class="card" data-feature="chat" aria-labelledby="chat-h"><h2 id="chat-h">Chat</h2><ul id="chat" class="items"></ul>
    <form id="chat-form" class="stack"><label for="chat-text">Message</label><input id="chat-text" type="text" maxlength="500" required>
    <div><button type="submit">Send</button></div></form></section>
  ${claims.role === 'ta' ? '' : `<section class="card" aria-labelledby="ann-h"><h2 id="ann-h">Announce to the cohort</h2>
    <form id="announce-form" class="stack"><label for="ann-title">Title</label><input id="ann-title" type="text" maxlength="200" required>
      <label for="ann-body">Message</label><textarea id="ann-body" rows="3" maxlength="5000" required></textarea>
      <div><button class="primary" type="submit">Post announcement</button></div>
      <p id="ann-status" class="meta" role="status"></p></form></section>`}
  <section id="classroom-card" class="card" aria-labelledby="cr-h" hidden><h2 id="cr-h">Classroom</h2>
    <p id="uplink" class="uplink" data-state="" role="status"></p>
    ${claims.role === 'ta' ? '' : `<form id="jc-form" class="stack"><h3>Let someone in</h3>
      <label for="jc-role">Lets in</label><select id="jc-role"><option value="student">Students</option><option value="ta">Teaching assistants</option></select>
      <label for="jc-minutes">Valid for (minutes, at most 720)</label><input id="jc-minutes" type="number" min="1" max="720" value="60">
      <label for="jc-uses">How many may use it (at most 500)</label><input id="jc-uses" type="number" min="1" max="500" value="30">
      <div><button class="primary" type="submit">Make a join code</button></div>
      <p id="jc-made" class="join-code" aria-live="polite"></p></form>`}</section>
  <section id="dash-card" class="card wide" aria-labelledby="dash-h" hidden><h2 id="dash-h">Cohort dashboard</h2><div id="dash"></div></section>
  ${leaderboardSkeleton()}
  ${notesSkeleton()}
  <dialog id="answer-dialog" aria-labelledby="answer-h"><form id="answer-form" class="stack" method="dialog">
    <h2 id="answer-h">Answer</h2><p id="answer-q" class="q-text"></p>
    <label for="answer-text">Your answer</label><textarea id="answer-text" rows="4" maxlength="2000" required></textarea>
    <div class="row"><button class="primary" type="submit" value="send">Send answer</button><button type="button" id="answer-cancel">Cancel</button></div>
  </form></dialog>`;
}

function projectorSkeleton() {
  return `<section class="proj-block" aria-labelledby="pq-h"><h2 id="pq-h" class="proj-label">Pinned question</h2><div id="proj-q" aria-live="polite"></div></section>
  <section class="proj-block" data-feature="polls" aria-labelledby="pp-h"><h2 id="pp-h" class="proj-label">Poll</h2><div id="proj-poll"></div><p id="proj-sr" class="sr-only" aria-live="polite"></p></section>`;
}

// ---------------------------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------------------------

function submit(body) {
  $('errors').replaceChildren();
  return conn.submit(body);
}

function onSubmit(id, f) {
  const el = $(id);
  if (el) el.addEventListener('submit', (e) => { e.preventDefault(); f(el); });
}

function wire() {
  const main = $('main');
  onSubmit('jc-form', () => makeJoinCode());
  onSubmit('ask-form', () => {
    const text = $('ask-text').value.trim();
    if (!text) return;
    submit({ cmd: 'qa.ask', text, anonymous: $('ask-anon').checked });
    $('ask-text').value = '';
  });
  onSubmit('chat-form', () => {
    const text = $('chat-text').value.trim();
    if (text) submit({ cmd: 'chat.send', text });
    $('chat-text').value = '';
  });
  onSubmit('broadcast-form', () => {
    const text = $('bc-text').value.trim();
    if (text) submit({ cmd: 'broadcast.send', text });
    $('bc-text').value = '';
  });
  onSubmit('poll-form', () => {
    const kind = $('poll-kind').value;
    const options = $('poll-options').value.split('\n').map((s) => s.trim()).filter(Boolean);
    const body = { cmd: 'poll.create', question: $('poll-q').value.trim(), kind, hide_results: $('poll-hide').checked };
    if (kind === 'single' || kind === 'multiple') body.options = options;
    if (kind === 'rating') body.scale_max = Number($('poll-scale').value) || 5;
    submit(body);
    $('poll-q').value = '';
    $('poll-options').value = '';
  });
  onSubmit('announce-form', async () => {
    const title = $('ann-title').value.trim();
    const text = $('ann-body').value.trim();
    if (!title || !text || !m.cohort) return;
    if (await postAnnouncement(title, text)) {
      $('ann-title').value = '';
      $('ann-body').value = '';
    }
  });
  const dialog = $('answer-dialog');
  if (dialog) {
    $('answer-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const text = $('answer-text').value.trim();
      if (text && ui.answering) submit({ cmd: 'qa.answer', question: ui.answering, text });
      closeAnswer();
    });
    $('answer-cancel').addEventListener('click', closeAnswer);
    // However it closes (Send, Cancel, Escape), focus goes back to the question's button.
    dialog.addEventListener('close', () => { ui.answering = null; returnFocus(); });
  }
  main.addEventListener('change', (e) => {
    const t = e.target;
    if (t.name === 'order') { ui.order = t.value; renderQuestions(); return; }
    if (t.id === 'lb-show-name') { setPrivacy(!t.checked); return; }
    if (t.dataset.draft) {
      const form = t.closest('form');
      const picked = [...form.querySelectorAll('input:checked')].map((x) => x.value);
      ui.drafts.set(t.dataset.draft, t.type === 'text' ? t.value : picked.join(','));
    }
  });
  main.addEventListener('input', (e) => {
    const t = e.target;
    if (t.dataset.draft && t.type === 'text') ui.drafts.set(t.dataset.draft, t.value);
  });
  main.addEventListener('submit', (e) => {
    const form = e.target.closest('form.vote');
    if (!form) return;
    e.preventDefault();
    const poll = m.polls.get(form.dataset.poll);
    if (!poll) return;
    const picked = [...form.querySelectorAll('input:checked')].map((x) => Number(x.value));
    let choice;
    if (poll.kind === 'open_text') {
      const text = form.querySelector('input[type=text]').value.trim();
      if (!text) return;
      choice = { text };
    } else if (!picked.length) {
      showError('Choose an option first.');
      return;
    } else if (poll.kind === 'multiple') choice = { multiple: picked };
    else if (poll.kind === 'rating') choice = { rating: picked[0] };
    else choice = { single: picked[0] };
    submit({ cmd: 'poll.vote', poll: poll.id, choice });
    const shown = poll.kind === 'open_text' ? choice.text : picked.join(',');
    ui.drafts.set(`sent:${poll.id}`, shown);
    ui.drafts.delete(poll.id);
    schedule();
  });
  main.addEventListener('click', (e) => {
    const b = e.target.closest('button[data-act]');
    if (!b) return;
    const q = b.dataset.q && m.questions.get(b.dataset.q);
    switch (b.dataset.act) {
      case 'vote':
        if (!q) return;
        submit({ cmd: q.voted ? 'qa.unvote' : 'qa.upvote', question: q.id });
        q.voted = !q.voted;
        schedule();
        break;
      case 'answer': openAnswer(q); break;
      case 'lesson': openLesson(b.dataset.lesson); break;
      case 'lesson-done': completeLesson(b.dataset.lesson); break;
      case 'pin': submit({ cmd: 'qa.pin', question: q.id, pinned: !q.pinned }); break;
      case 'dismiss': submit({ cmd: 'qa.dismiss', question: q.id }); break;
      case 'approve': submit({ cmd: 'qa.approve', question: q.id }); break;
      case 'reject': submit({ cmd: 'qa.reject', question: q.id }); break;
      case 'close': submit({ cmd: 'poll.close', poll: b.dataset.p }); break;
      case 'reveal': submit({ cmd: 'poll.reveal', poll: b.dataset.p }); break;
      case 'read':
        // The button goes away with the mark; focus stays on its notification.
        markRead([b.dataset.n]).then((ok) => { if (ok) ui.focusNote = b.dataset.n; schedule(); });
        break;
      case 'read-all': markRead(null); break;
      default: break;
    }
  });
}

let answerReturn = null;
function openAnswer(q) {
  if (!q) return;
  ui.answering = q.id;
  answerReturn = document.activeElement && document.activeElement.dataset.key;
  $('answer-q').textContent = q.question;
  $('answer-text').value = q.answer ? q.answer.text : '';
  $('answer-dialog').showModal();
  $('answer-text').focus();
}

function closeAnswer() {
  const d = $('answer-dialog');
  if (d.open) d.close();
}

/** Focus back on the control that opened the dialog (found again by key: the list it was in
 * may have been re-rendered meanwhile). */
function returnFocus() {
  if (answerReturn) {
    const n = document.querySelector(`[data-key="${CSS.escape(answerReturn)}"]`);
    if (n) n.focus();
  }
}

// ---------------------------------------------------------------------------------------------
// Side streams: own progress (students), notifications, the instructor dashboard. Each may be
// missing on an older node (404): its section then stays hidden.
// ---------------------------------------------------------------------------------------------

function startSideStreams() {
  if (view === 'student') {
    const url = `/api/stream/progress/${encodeURIComponent(claims.sub)}?cohort=${encodeURIComponent(m.cohort)}`;
    followStream(url, () => token, {
      onEvent: (name, d) => {
        if (name === 'state' && d && d.state) {
          ui.progress = new Map((d.state.lessons || []).map((l) => [l.lesson, l]));
        } else if (name === 'progress' && d && d.lesson) {
          if (!ui.progress) ui.progress = new Map();
          ui.progress.set(d.lesson, d);
        }
        schedule();
      },
      onMissing: () => { ui.progress = null; schedule(); },
    });
  }
  // The inbox: `state` is the list (`items`, `unread`); then `notification` (one item with the
  // new `unread`), `notifications:read` (`unread`). A resumed stream replays what was missed,
  // so items are kept by id.
  followStream('/api/stream/notifications', () => token, {
    onOpen: () => { ui.notesOn = true; schedule(); },
    onEvent: (name, d) => {
      if (!d || typeof d !== 'object') return;
      if (name === 'state' && d.state) {
        setInbox(d.state);
      } else if (name === 'notification' && d.id) {
        const fresh = !ui.notes.has(d.id);
        ui.notes.set(d.id, d);
        if (typeof d.unread === 'number') ui.unread = d.unread;
        if (fresh && !d.read) announce({ text: `New notification: ${d.title}. ${ui.unread ?? 0} unread.` });
      } else if (name === 'notifications:read' && typeof d.unread === 'number') {
        ui.unread = d.unread;
        syncReadMarks();
      }
      schedule();
    },
    onMissing: () => { ui.notesOn = false; ui.missing.add('notes'); schedule(); },
  });
  const board = (kind, key) => followStream(`/api/stream/${kind}/${encodeURIComponent(m.cohort)}`, () => token, {
    onEvent: (name, d) => {
      if (!d || typeof d !== 'object') return;
      if (name === 'state' && d.state) ui[key] = d.state;
      else if (name === 'leaderboard' || name === 'dashboard') ui[key] = d;
      // Our privacy choice once; then, while we are anonymous, where our row went.
      if (key === 'board' && ui.lbHidden !== false) refreshLeaderboardMe();
      schedule();
    },
    onMissing: () => { ui[key] = null; ui.missing.add(key); schedule(); },
  });
  board('leaderboard', 'board');
  if (view === 'instructor') board('instructor', 'dash');
}

/** Notifications listed at most (the node sends its newest ones). */
const NOTES_SHOWN = 50;

function setInbox(v) {
  ui.notes = new Map((v.items || []).map((n) => [n.id, n]));
  if (typeof v.unread === 'number') ui.unread = v.unread;
}

/** After a read mark: all read if the count says so; if the count and the items disagree (an
 * item marked read elsewhere), the list is read again. */
function syncReadMarks() {
  if (ui.unread === 0) {
    for (const n of ui.notes.values()) n.read = true;
    return;
  }
  const local = [...ui.notes.values()].filter((n) => !n.read).length;
  if (local !== ui.unread) refreshInbox();
}

async function refreshInbox() {
  try {
    const r = await fetch('/api/notifications', { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' });
    if (!r.ok) return;
    setInbox(await r.json());
    schedule();
  } catch (_) { /* the next event tries again */ }
}

/** Marks notifications read (all without `ids`) through `POST /api/notifications/read`. */
async function markRead(ids) {
  $('errors').replaceChildren();
  const body = { id: newCommandId() };
  if (ids) body.ids = ids;
  let res;
  try {
    res = await fetch('/api/notifications/read', {
      method: 'POST', cache: 'no-store',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
  } catch (_) {
    showError('Marking notifications read did not reach the server; try again when connected.');
    return false;
  }
  if (!res.ok) {
    showError(`Marking notifications read was not accepted: ${await errorText(res)}`);
    return false;
  }
  const marked = ids ? ids.map((id) => ui.notes.get(id)).filter((n) => n && !n.read) : [...ui.notes.values()];
  for (const n of marked) n.read = true;
  ui.unread = ids ? Math.max(0, (ui.unread ?? 0) - marked.length) : 0;
  schedule();
  return true;
}

/** Our own place on the leaderboard (`GET …/leaderboard/me`): what our privacy choice is, and,
 * asked again after each board update while we are anonymous, where our row is.
 * Students only; one request at a time (an update meanwhile asks once more after it). */
let meAsking = false;
let meAgain = false;
async function refreshLeaderboardMe() {
  if (staff) return;
  if (meAsking) { meAgain = true; return; }
  meAsking = true;
  try {
    const r = await fetch(`/api/cohorts/${encodeURIComponent(m.cohort)}/leaderboard/me`, { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' });
    if (r.ok) {
      ui.lbMe = await r.json();
      // The node's word on our choice, until we make one here (the board it reads may not
      // show our latest choice yet).
      if (!ui.privacyChosen) ui.lbHidden = !!ui.lbMe.anonymous;
      schedule();
    }
  } catch (_) { /* the next board update asks again */ }
  meAsking = false;
  if (meAgain) { meAgain = false; refreshLeaderboardMe(); }
}

/** Shows or hides our name to classmates (`leaderboard.privacy`); the board follows at its
 * next update. */
async function setPrivacy(anonymous) {
  const box = $('lb-show-name');
  const status = $('lb-privacy-status');
  ui.privacyBusy = true;
  box.disabled = true;
  status.textContent = 'Saving…';
  let res = null;
  try {
    res = await fetch(`/api/cohorts/${encodeURIComponent(m.cohort)}/commands`, {
      method: 'POST', cache: 'no-store',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ cmd: 'leaderboard.privacy', id: newCommandId(), anonymous }),
    });
  } catch (_) { /* said below */ }
  ui.privacyBusy = false;
  box.disabled = false;
  if (!res || !res.ok) {
    status.textContent = '';
    box.checked = !ui.lbHidden;
    showError(res ? `Your choice was not saved: ${await errorText(res)}` : 'Your choice did not reach the server; nothing changed.');
    return;
  }
  ui.privacyChosen = true;
  ui.lbHidden = anonymous;
  status.textContent = anonymous ? 'Classmates now see you as Anonymous.' : 'Classmates now see your name.';
  schedule();
}

/** Posts an announcement to the session's cohort (`announcement.post`). */
async function postAnnouncement(title, text) {
  const status = $('ann-status');
  status.textContent = 'Posting…';
  let res;
  try {
    res = await fetch(`/api/cohorts/${encodeURIComponent(m.cohort)}/commands`, {
      method: 'POST', cache: 'no-store',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ cmd: 'announcement.post', id: newCommandId(), title, body: text }),
    });
  } catch (_) {
    status.textContent = '';
    showError('The announcement did not reach the server; it was not posted.');
    return false;
  }
  if (!res.ok) {
    status.textContent = '';
    showError(`The announcement was not accepted: ${await errorText(res)}`);
    return false;
  }
  status.textContent = `Posted “${title}” to the cohort.`;
  return true;
}

async function errorText(res) {
  try {
    const e = (await res.json()).error;
    if (e) return `${e.message} (${e.code})`;
  } catch (_) { /* not JSON */ }
  return `HTTP ${res.status}`;
}

/** Staff see who is present: the list comes with the session view, re-read (at most every
 * ATTENDANCE_REFRESH_MS) when the present count changes. */
const ATTENDANCE_REFRESH_MS = 5000;
let attendanceTimer = null;
function refreshAttendance() {
  if (view !== 'instructor' || attendanceTimer) return;
  attendanceTimer = setTimeout(async () => {
    attendanceTimer = null;
    // Off WebSocket no attendance:update arrives: keep reading while the page is live.
    if (conn && conn.status.state === 'live' && conn.status.transport !== 'websocket') refreshAttendance();
    try {
      const r = await fetch(`/api/sessions/${encodeURIComponent(session)}`, { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' });
      if (!r.ok) return;
      const v = await r.json();
      if (v.attendance && Array.isArray(v.attendance.users)) {
        m.users = v.attendance.users;
        m.present = v.attendance.present;
        schedule();
      }
    } catch (_) { /* the next change tries again */ }
  }, ATTENDANCE_REFRESH_MS);
}

main();
