// The connection to a node, for one session: transports in degradation order (Socket.IO over
// WebSocket, then SSE + POST, then long-polling), reconnection with the resume token, and the
// offline queue of commands.
//
// Why the order changes only on evidence: a transport that fails to open is "blocked" only if
// the node answers a plain GET (/readyz) meanwhile, twice in a row. A node that is down or
// restarting fails everything, and the client then waits and retries the same transport
// instead of degrading for good.
//
// Why commands carry ids: every action gets a client-chosen command id when the user acts, and
// keeps it through retries; the server applies an id at most once and answers a retry with
// `duplicate_command`, which the queue counts as success. So an action whose ack was lost in a
// crash is sent again and still applied exactly once.
//
// Why the node changes only when it is down: the page learns the cluster's other nodes from
// `GET /api/nodes` (its own node's list, nearest first). When its node stops answering a plain
// GET twice in a row (a dead node, not a blocked transport), it moves to the first other node
// that answers, with its resume token and its queue, so it misses no event and sends each
// action once; while away it probes its home node and goes back once it answers again.
import { io } from '/static/vendor/socket.io.esm.min.js';

/** Transports, best first. */
export const TRANSPORTS = ['websocket', 'sse', 'longpoll'];

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 4000;
const CONNECT_TIMEOUT_MS = 5000;
const JOIN_TIMEOUT_MS = 8000;
const ACK_TIMEOUT_MS = 10000;
const SSE_FIRST_EVENT_MS = 8000;
const PROBE_TIMEOUT_MS = 3000;
const LONG_POLL_WAIT_S = 25;
const RETRY_SEND_MS = 1000;
/** Failed opens, with the node answering, before a transport counts as blocked. */
const BLOCKED_STRIKES = 2;
/** Between two probes of the home node while the page is on another node. */
const HOME_PROBE_MS = 3000;
/** A node is down when a probe fails, and again this long after. */
const DOWN_CONFIRM_MS = 300;
/** Commands kept in the offline queue at most (the oldest beyond are dropped, and said so). */
const OUTBOX_MAX = 200;

/** Error codes after which retrying cannot help: the token or the membership is wrong. */
const FATAL_CODES = new Set([
  'missing_token', 'bad_token', 'bad_signature', 'token_expired', 'bad_claims',
  'not_member', 'forbidden', 'doc_not_found',
]);

/** Codes of a resume token the node cannot resume from (`bad_token` here is the resume
 * token's, not the JWT's: a 400 on a join, never a 401): start again from a fresh state. */
const RESUME_CODES = new Set(['bad_token', 'unknown_heads', 'too_far_behind']);

/** Events of a session document (see the client contract). */
export const SESSION_EVENTS = new Set([
  'session:updated', 'qa:new', 'qa:updated', 'qa:upvoted', 'poll:new', 'poll:results',
  'poll:closed', 'chat:message', 'chat:deleted', 'broadcast',
]);

/** The transport could not deliver, or could not tell whether it delivered: retry later. */
export class TransportDown extends Error {
  constructor(message, { blocked = true } = {}) {
    super(message);
    // False when the failure says nothing about the transport being blocked (a 503, a 429).
    this.blocked = blocked;
  }
}

/** Retrying cannot help (a refused token, not a member of the session). */
export class Fatal extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

/** A fresh command id: a letter and 24 hex digits (ids are `[A-Za-z0-9_-]`). */
export function newCommandId() {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b);
  return 'w' + [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function backoff(attempt) {
  const ms = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.max(0, attempt - 1));
  return ms / 2 + Math.random() * (ms / 2);
}

/** Reads a refused HTTP answer as Fatal (nothing to retry) or TransportDown. */
async function httpError(res) {
  let code = `http_${res.status}`;
  let message = `HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch (_) { /* not JSON: keep the status */ }
  if (res.status === 400 && RESUME_CODES.has(code)) {
    const e = new TransportDown(`${code}: ${message}`, { blocked: false });
    e.resume = true;
    return e;
  }
  if (res.status === 401 || res.status === 403 || (res.status === 404 && code === 'doc_not_found')) {
    return new Fatal(code, message);
  }
  // 404 on the route itself would mean a proxy in the way; 429/503 are passing states.
  return new TransportDown(`${code}: ${message}`, { blocked: res.status === 404 });
}

/** The Socket.IO events and arguments of a command (the REST form is the command itself). */
export function socketArgs(session, cmd) {
  const id = { id: cmd.id };
  switch (cmd.cmd) {
    case 'qa.ask': return ['qa:ask', session, cmd.text, { ...id, anonymous: !!cmd.anonymous }];
    case 'qa.upvote': case 'qa.unvote': case 'qa.dismiss': case 'qa.approve': case 'qa.reject':
      return [cmd.cmd.replace('.', ':'), session, cmd.question, id];
    case 'qa.answer': return ['qa:answer', session, cmd.question, cmd.text, id];
    case 'qa.pin': return ['qa:pin', session, cmd.question, { ...id, unpin: cmd.pinned === false }];
    case 'poll.create': return ['poll:create', session, {
      question: cmd.question, kind: cmd.kind, options: cmd.options,
      scaleMax: cmd.scale_max ?? null, hideResults: !!cmd.hide_results,
    }, id];
    case 'poll.vote': return ['poll:vote', session, cmd.poll, cmd.choice, id];
    case 'poll.close': case 'poll.reveal': return [cmd.cmd.replace('.', ':'), session, cmd.poll, id];
    case 'chat.send': case 'broadcast.send': return [cmd.cmd.replace('.', ':'), session, cmd.text, id];
    case 'chat.delete': return ['chat:delete', session, cmd.message, id];
    default: throw new Error(`no Socket.IO event for ${cmd.cmd}`);
  }
}

/** Commands waiting to be sent, kept in localStorage so that a reload does not lose them. */
class Outbox {
  constructor(key) {
    this.key = key;
    this.items = [];
    try { this.items = JSON.parse(localStorage.getItem(key) || '[]'); } catch (_) { this.items = []; }
    if (!Array.isArray(this.items)) this.items = [];
  }
  save() {
    try { localStorage.setItem(this.key, JSON.stringify(this.items)); } catch (_) { /* private mode: memory only */ }
  }
  push(cmd) {
    this.items.push(cmd);
    const dropped = this.items.length > OUTBOX_MAX ? this.items.splice(0, this.items.length - OUTBOX_MAX) : [];
    this.save();
    return dropped;
  }
  peek() { return this.items[0]; }
  shift() { const c = this.items.shift(); this.save(); return c; }
  get length() { return this.items.length; }
}

/** A parser of `text/event-stream` bytes read with fetch (so headers can carry the token and
 * Last-Event-ID, and the reconnection is ours). Calls `onEvent(name, data, id)`. */
async function readEventStream(res, onEvent, signal) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let cut;
      while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut).replace(/^\r?\n\r?\n/, '');
        let name = 'message';
        let id = null;
        const data = [];
        for (const line of block.split(/\r?\n/)) {
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') name = val;
          else if (field === 'id') id = val;
          else if (field === 'data') data.push(val);
        }
        if (data.length) onEvent(name, data.join('\n'), id);
      }
    }
  } finally {
    if (!signal.aborted) reader.cancel().catch(() => {});
  }
}

/**
 * Follows any SSE stream with reconnection (for the progress, notification and dashboard
 * streams). A 404 means the node does not serve that stream: `onMissing` is called once and
 * the stream is not tried again. Returns a function that stops it.
 */
export function followStream(url, token, { onEvent, onOpen, onMissing }) {
  // `token` may be a function, so a reconnect uses the page's current (renewed) token.
  const current = typeof token === 'function' ? token : () => token;
  const ctrl = new AbortController();
  let last = null;
  (async () => {
    let attempt = 0;
    while (!ctrl.signal.aborted) {
      try {
        const headers = { Authorization: `Bearer ${current()}`, Accept: 'text/event-stream' };
        if (last) headers['Last-Event-ID'] = last;
        const res = await fetch(url, { headers, signal: ctrl.signal, cache: 'no-store' });
        if (res.status === 404 || res.status === 405) { onMissing && onMissing(); return; }
        if (res.status === 401 || res.status === 403) { onMissing && onMissing(res.status); return; }
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        attempt = 0;
        onOpen && onOpen();
        await readEventStream(res, (name, data, id) => {
          if (id) last = id;
          let parsed = null;
          try { parsed = JSON.parse(data); } catch (_) { parsed = data; }
          onEvent(name, parsed);
        }, ctrl.signal);
      } catch (_) {
        if (ctrl.signal.aborted) return;
      }
      attempt += 1;
      await sleep(backoff(attempt));
    }
  })();
  return () => ctrl.abort();
}

/** Seconds before a token ends at which the page asks its node for an extension (at most a
 * third of the token's life, for short tokens). */
const TOKEN_REFRESH_BEFORE_S = 600;

/** Wait before asking again after a refresh that may work later (no network, 429, 5xx), ms. */
const TOKEN_REFRESH_RETRY_MS = 30000;

/** A token's claims, unverified (the page only reads its own token's times and role). */
export function decodeClaims(t) {
  try {
    const b = t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(decodeURIComponent(escape(atob(b))));
  } catch (_) {
    return null;
  }
}

/**
 * Keeps the page's token alive on a classroom node (`POST /api/token/refresh`): shortly before
 * the token ends, asks for an extension and hands the new token to `onToken(token, answer)`.
 * A node that extends nothing, or refuses this token (`token_refresh_off`,
 * `not_classroom_member`, `token_extend_cap`, an expired token: any 401 or 403), is not asked
 * again; a failure that may pass (the node down, 429, 5xx) is retried. Returns a function that
 * stops it.
 */
export function keepTokenFresh(initial, onToken) {
  let token = initial;
  let timer = null;
  let stopped = false;
  const plan = (delayMs) => {
    clearTimeout(timer);
    if (!stopped) timer = setTimeout(attempt, Math.min(Math.max(delayMs, 1000), 2 ** 31 - 1));
  };
  const planFromClaims = () => {
    const c = decodeClaims(token);
    if (!c || typeof c.exp !== 'number') return;
    const life = typeof c.iat === 'number' && c.iat > 0 && c.exp > c.iat ? c.exp - c.iat : TOKEN_REFRESH_BEFORE_S * 3;
    const before = Math.min(TOKEN_REFRESH_BEFORE_S, life / 3);
    plan((c.exp - before) * 1000 - Date.now());
  };
  const attempt = async () => {
    try {
      const r = await fetch('/api/token/refresh', {
        method: 'POST', cache: 'no-store', body: '{}',
        headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      });
      if (r.ok) {
        const body = await r.json();
        if (typeof body.token === 'string' && body.token) {
          const before = decodeClaims(token);
          token = body.token;
          // At the cap the node answers the same end again: nothing gained, so the page keeps
          // its connection and stops asking instead of reconnecting ever more often.
          if (before && before.exp === body.expiresAt) return;
          onToken(token, body);
          if (typeof body.capAt === 'number' && body.expiresAt >= body.capAt) return;
          planFromClaims();
          return;
        }
      } else if (r.status === 401 || r.status === 403) {
        return;
      }
    } catch (_) { /* the node is unreachable: ask again later */ }
    plan(TOKEN_REFRESH_RETRY_MS);
  };
  planFromClaims();
  return () => { stopped = true; clearTimeout(timer); };
}

// ------------------------------------------------------------------------------------------
// Transports. Each has open() (resolves once the session state is applied), `closed` (a
// promise that resolves with the reason it ended), send(cmd) (resolves with the server's
// answer `{ok, …}` or throws TransportDown) and close().
// ------------------------------------------------------------------------------------------

class SocketTransport {
  constructor(conn) {
    this.conn = conn;
    this.name = 'websocket';
    this.live = false;
    this.pending = new Set();
    this.closed = new Promise((r) => { this.end = r; });
  }

  open() {
    const conn = this.conn;
    return new Promise((resolve, reject) => {
      let settled = false;
      const buffered = [];
      const s = io(conn.base, {
        transports: ['websocket'], auth: { token: conn.token }, reconnection: false,
        forceNew: true, timeout: CONNECT_TIMEOUT_MS,
      });
      this.s = s;
      const fail = (e) => {
        if (!settled) { settled = true; reject(e); } else this.drop(e);
      };
      s.on('connect_error', (err) => {
        const code = String((err && err.message) || '').split(':')[0];
        fail(FATAL_CODES.has(code) ? new Fatal(code, err.message) : new TransportDown(String(err && err.message)));
      });
      s.on('disconnect', (reason) => fail(new TransportDown(`disconnected (${reason})`, { blocked: false })));
      // A WebSocket closed before the Engine.IO handshake (a proxy that accepts the upgrade and
      // hangs up) is no error to the Manager, which would wait for its timeout: fail at once.
      let connected = false;
      if (s.io.engine) {
        s.io.engine.on('close', (reason) => fail(new TransportDown(`connection closed (${reason})`, { blocked: !connected })));
      }
      s.on('server:error', (e) => conn.notice('server', e));
      s.on('server:shutdown', (e) => conn.notice('server', e));
      s.on('attendance:update', (p) => conn.attendance(p));
      s.onAny((event, payload, meta) => {
        if (!SESSION_EVENTS.has(event)) return;
        // Events may overtake the join's ack: hold them until the state is in place.
        if (!this.live) buffered.push([event, payload, meta]);
        else conn.event(event, payload, meta && meta.token);
      });
      s.on('connect', async () => {
        connected = true;
        let ack;
        try {
          ack = await s.timeout(JOIN_TIMEOUT_MS).emitWithAck('session:join', conn.session, conn.lastToken || null);
        } catch (_) {
          fail(new TransportDown('session:join was not answered', { blocked: false }));
          return;
        }
        if (!ack || !ack.ok) {
          const e = (ack && ack.error) || { code: 'join_failed' };
          // Authentication happened at the handshake: a join fails on the resume token or
          // on membership.
          if (RESUME_CODES.has(e.code)) conn.lastToken = null;
          const fatal = FATAL_CODES.has(e.code) && !RESUME_CODES.has(e.code);
          fail(fatal ? new Fatal(e.code, e.message) : new TransportDown(`${e.code}: ${e.message}`, { blocked: false }));
          return;
        }
        conn.joined(ack);
        this.live = true;
        for (const [event, payload, meta] of buffered) conn.event(event, payload, meta && meta.token);
        settled = true;
        resolve();
      });
    });
  }

  send(cmd) {
    const s = this.s;
    if (!s || !s.connected || !this.live) return Promise.reject(new TransportDown('not connected'));
    const args = socketArgs(this.conn.session, cmd);
    return new Promise((resolve, reject) => {
      const entry = { reject };
      this.pending.add(entry);
      s.timeout(ACK_TIMEOUT_MS).emit(...args, (err, ack) => {
        this.pending.delete(entry);
        if (err) reject(new TransportDown('no ack'));
        else resolve(ack);
      });
    });
  }

  drop(reason) {
    this.live = false;
    for (const p of this.pending) p.reject(new TransportDown('connection lost'));
    this.pending.clear();
    this.end(reason);
  }

  close() {
    if (this.s) { this.s.off(); this.s.io.off(); this.s.disconnect(); }
    this.drop(new TransportDown('closed'));
  }
}

/** POSTs a command: the fallback path of every transport but the WebSocket. */
async function post(conn, cmd) {
  let res;
  try {
    res = await fetch(`${conn.base}/api/sessions/${encodeURIComponent(conn.session)}/commands`, {
      method: 'POST', cache: 'no-store',
      headers: { Authorization: `Bearer ${conn.token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(cmd),
    });
  } catch (e) {
    throw new TransportDown(String(e && e.message));
  }
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  if (res.ok && body) return body;
  if (res.status >= 500 || !body || !body.error) throw new TransportDown(`HTTP ${res.status}`);
  return { ok: false, error: body.error };
}

class SseTransport {
  constructor(conn) {
    this.conn = conn;
    this.name = 'sse';
    this.live = false;
    this.ctrl = new AbortController();
    this.closed = new Promise((r) => { this.end = r; });
  }

  async open() {
    const conn = this.conn;
    const headers = { Authorization: `Bearer ${conn.token}`, Accept: 'text/event-stream' };
    const resumed = !!conn.lastToken;
    if (resumed) headers['Last-Event-ID'] = conn.lastToken;
    let res;
    try {
      res = await fetch(`${conn.base}/api/stream/sessions/${encodeURIComponent(conn.session)}`, {
        headers, signal: this.ctrl.signal, cache: 'no-store',
      });
    } catch (e) {
      throw new TransportDown(String(e && e.message));
    }
    if (!res.ok) {
      const e = await httpError(res);
      if (e.resume) conn.lastToken = null;
      throw e;
    }
    let gotFirst;
    const first = new Promise((r) => { gotFirst = r; });
    readEventStream(res, (name, data, id) => {
      let payload;
      try { payload = JSON.parse(data); } catch (_) { return; }
      if (name === 'state') {
        conn.joined({ state: payload.state, token: id });
        gotFirst();
      } else if (name === 'error') {
        conn.notice('server', payload);
      } else if (SESSION_EVENTS.has(name)) {
        conn.event(name, payload, id);
        gotFirst();
      }
    }, this.ctrl.signal).then(
      () => this.drop(new TransportDown('stream ended', { blocked: false })),
      (e) => this.drop(new TransportDown(String(e && e.message), { blocked: false })),
    );
    if (!resumed) {
      // A fresh stream starts with the state at once; a proxy that buffers event streams
      // delivers nothing, and then SSE is no use here.
      const timer = sleep(SSE_FIRST_EVENT_MS).then(() => 'timeout');
      if ((await Promise.race([first.then(() => 'ok'), timer])) === 'timeout') {
        throw new TransportDown('the event stream delivered nothing');
      }
    }
    this.live = true;
  }

  send(cmd) {
    if (!this.live) return Promise.reject(new TransportDown('not connected'));
    return post(this.conn, cmd);
  }

  drop(reason) { this.live = false; this.end(reason); }

  close() { this.ctrl.abort(); this.drop(new TransportDown('closed')); }
}

class LongPollTransport {
  constructor(conn) {
    this.conn = conn;
    this.name = 'longpoll';
    this.live = false;
    this.ctrl = new AbortController();
    this.closed = new Promise((r) => { this.end = r; });
  }

  async poll(wait) {
    const conn = this.conn;
    const q = new URLSearchParams({ wait: String(wait) });
    if (conn.lastToken) q.set('since', conn.lastToken);
    let res;
    try {
      res = await fetch(`${conn.base}/api/sessions/${encodeURIComponent(conn.session)}/events?${q}`, {
        headers: { Authorization: `Bearer ${conn.token}` }, signal: this.ctrl.signal, cache: 'no-store',
      });
    } catch (e) {
      throw new TransportDown(String(e && e.message), { blocked: false });
    }
    if (!res.ok) {
      const e = await httpError(res);
      if (e.resume) conn.lastToken = null;
      throw e;
    }
    const body = await res.json();
    if (body.state) conn.joined({ state: body.state, token: body.token });
    else {
      for (const e of body.events || []) if (SESSION_EVENTS.has(e.event)) conn.event(e.event, e.data, e.token);
      if (body.token) conn.lastToken = body.token;
    }
  }

  async open() {
    // The first request asks for no wait, so the page is live at once.
    await this.poll(0);
    this.live = true;
    (async () => {
      while (this.live) {
        try {
          await this.poll(LONG_POLL_WAIT_S);
        } catch (e) {
          this.drop(e);
        }
      }
    })();
  }

  send(cmd) {
    if (!this.live) return Promise.reject(new TransportDown('not connected'));
    return post(this.conn, cmd);
  }

  drop(reason) { this.live = false; this.end(reason); }

  close() { this.ctrl.abort(); this.drop(new TransportDown('closed')); }
}

const MAKERS = { websocket: SocketTransport, sse: SseTransport, longpoll: LongPollTransport };

// ------------------------------------------------------------------------------------------

/**
 * One user's connection to one session.
 *
 * Callbacks: `onState(state)` with a full state, `onEvent(name, payload)` for each event,
 * `onAttendance({present})`, `onStatus(status)` whenever the connection state, transport or
 * queue changes, `onNotice(kind, detail)` for server notices and rejected commands,
 * `onAck(cmd, ack)` when a queued command was accepted.
 */
export class Connection {
  constructor({ session, token, user, first = 'websocket', ...callbacks }) {
    this.session = session;
    this.token = token;
    this.cb = callbacks;
    this.lastToken = null;
    this.level = Math.max(0, TRANSPORTS.indexOf(first));
    this.floor = this.level;
    this.current = null;
    this.stopped = false;
    this.flushing = false;
    this.wake = null;
    this.status = { state: 'connecting', transport: TRANSPORTS[this.level], queued: 0, detail: '' };
    this.snapshots = 0;
    this.outbox = new Outbox(`lectern:outbox:${session}:${user}`);
    this.status.queued = this.outbox.length;
    // The node this page came from, the cluster's nodes (home first) and the one in use.
    this.home = location.origin;
    this.nodes = [this.home];
    this.base = this.home;
    this.goHome = false;
    this.homeProbe = null;
    this.status.node = this.base;
    addEventListener('online', () => this.wake && this.wake());
  }

  /** Queues a command (`{cmd: 'qa.ask', text}` …) under a fresh id and sends it when it can.
   * Returns the id. */
  submit(body) {
    const cmd = { id: newCommandId(), ...body };
    const dropped = this.outbox.push(cmd);
    for (const d of dropped) this.notice('dropped', { code: 'queue_full', message: `${d.cmd} was dropped: too many actions waiting` });
    this.setStatus({});
    this.flush();
    return cmd.id;
  }

  start() {
    this.learnNodes();
    this.run();
  }

  /** Takes a renewed token (see `keepTokenFresh`): the live transport is closed and opened
   * again at once with it, resuming from the last event, since the node ends a connection when
   * the token it opened with ends. */
  setToken(token) {
    if (token === this.token) return;
    this.token = token;
    if (this.current) {
      this.renewed = true;
      this.current.close();
    } else if (this.halted && !this.stopped) {
      // A reconnect with the old token lost the race against its renewal (refused as
      // expired): start again with the new one.
      this.halted = false;
      this.run();
    }
  }

  stop() {
    this.stopped = true;
    clearInterval(this.homeProbe);
    if (this.current) this.current.close();
  }

  /** The cluster's client URLs from the home node; its own URL there may be a proxy's name for
   * it, so the page's origin stands for it. */
  async learnNodes() {
    try {
      const r = await fetch('/api/nodes', { cache: 'no-store' });
      const body = r.ok ? await r.json() : null;
      const others = ((body && body.nodes) || []).slice(1).filter((u) => typeof u === 'string' && u !== this.home);
      this.nodes = [this.home, ...others];
    } catch (_) { /* no list: the page stays on its node */ }
  }

  // ---- called by transports ----

  joined(ack) {
    // Full states taken; a reconnect that resumes from the last token takes none.
    if (ack.state) this.snapshots += 1;
    if (ack.state) this.cb.onState(ack.state);
    for (const e of ack.events || []) if (SESSION_EVENTS.has(e.event)) this.cb.onEvent(e.event, e.data);
    if (ack.token) this.lastToken = ack.token;
  }

  event(name, payload, token) {
    this.cb.onEvent(name, payload);
    if (token) this.lastToken = token;
  }

  attendance(p) { this.cb.onAttendance && this.cb.onAttendance(p); }

  notice(kind, detail) { this.cb.onNotice && this.cb.onNotice(kind, detail); }

  // ---- the loop ----

  setStatus(patch) {
    this.status = { ...this.status, ...patch, queued: this.outbox.length, snapshots: this.snapshots };
    this.cb.onStatus && this.cb.onStatus(this.status);
  }

  async nodeAnswers(base = this.base) {
    const ctrl = new AbortController();
    const t = setTimeout(() => ctrl.abort(), PROBE_TIMEOUT_MS);
    try {
      const r = await fetch(`${base}/readyz`, { cache: 'no-store', signal: ctrl.signal });
      return r.ok;
    } catch (_) {
      return false;
    } finally {
      clearTimeout(t);
    }
  }

  /** Down, not blocked: the node answers no plain GET, twice. */
  async nodeDown() {
    if (await this.nodeAnswers()) return false;
    await sleep(DOWN_CONFIRM_MS);
    return !(await this.nodeAnswers());
  }

  /** The first node, in the cluster's order, that answers (not the one that is down). */
  async nextNode() {
    for (const n of this.nodes) {
      if (n !== this.base && await this.nodeAnswers(n)) return n;
    }
    return null;
  }

  moveTo(base, detail) {
    this.base = base;
    this.level = this.floor;
    clearInterval(this.homeProbe);
    this.homeProbe = null;
    if (base !== this.home) {
      // Away from home: go back once it answers again (its clients' usual place).
      this.homeProbe = setInterval(async () => {
        if (this.goHome || this.base === this.home || !(await this.nodeAnswers(this.home))) return;
        this.goHome = true;
        if (this.current) this.current.close();
      }, HOME_PROBE_MS);
    }
    this.setStatus({ node: base, detail });
  }

  async run() {
    let attempt = 0;
    let strikes = 0;
    while (!this.stopped) {
      if (this.goHome) {
        this.goHome = false;
        this.moveTo(this.home, 'back on the home node');
        attempt = 0;
      }
      const name = TRANSPORTS[this.level];
      const t = new MAKERS[name](this);
      this.current = t;
      this.setStatus({ state: attempt === 0 && !this.wasLive ? 'connecting' : 'reconnecting', transport: name });
      let reason;
      let opened = false;
      try {
        await t.open();
        opened = true;
        attempt = 0;
        strikes = 0;
        this.wasLive = true;
        this.setStatus({ state: 'live', transport: name, detail: this.level > 0 ? `${TRANSPORTS[0]} unavailable` : '' });
        this.flush();
        reason = await t.closed;
      } catch (e) {
        reason = e;
      }
      t.close();
      this.current = null;
      if (this.stopped) return;
      if (this.goHome) continue;
      if (this.renewed) {
        this.renewed = false;
        continue;
      }
      if (reason instanceof Fatal) {
        this.setStatus({ state: 'error', detail: `${reason.code}: ${reason.message}` });
        this.halted = true;
        return;
      }
      if (!opened && reason && reason.blocked !== false && this.level < TRANSPORTS.length - 1 && await this.nodeAnswers()) {
        // The node answers plain HTTP but this transport failed to open.
        strikes += 1;
        if (strikes >= BLOCKED_STRIKES) {
          strikes = 0;
          this.level += 1;
          this.setStatus({ detail: `${name} blocked; trying ${TRANSPORTS[this.level]}` });
        }
        continue;
      }
      if (this.nodes.length > 1 && await this.nodeDown()) {
        const next = await this.nextNode();
        if (next) {
          this.moveTo(next, `${this.base} is down; moved to ${next}`);
          attempt = 0;
          strikes = 0;
          continue;
        }
      }
      if (opened) {
        // A transport that worked and dropped: start again from the best one allowed.
        this.level = this.floor;
        strikes = 0;
      }
      attempt += 1;
      const offline = typeof navigator !== 'undefined' && navigator.onLine === false;
      this.setStatus({ state: offline ? 'offline' : 'reconnecting', detail: String((reason && reason.message) || '') });
      await new Promise((r) => { this.wake = r; setTimeout(r, backoff(attempt)); });
      this.wake = null;
    }
  }

  /** Sends queued commands in order while a transport is live. */
  async flush() {
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (this.outbox.length && this.current && this.current.live) {
        const cmd = this.outbox.peek();
        let ack;
        try {
          ack = await this.current.send(cmd);
        } catch (e) {
          if (!(e instanceof TransportDown)) throw e;
          // Kept in the queue: sent again (same id) when the connection allows.
          setTimeout(() => this.flush(), RETRY_SEND_MS);
          break;
        }
        const code = ack && !ack.ok && ack.error ? ack.error.code : null;
        if (code === 'rate_limited' || code === 'overloaded') {
          setTimeout(() => this.flush(), RETRY_SEND_MS);
          break;
        }
        this.outbox.shift();
        this.setStatus({});
        if (ack && (ack.ok || code === 'duplicate_command')) {
          this.cb.onAck && this.cb.onAck(cmd, ack);
        } else {
          this.notice('rejected', { cmd: cmd.cmd, command: cmd, ...(ack && ack.error) });
        }
      }
    } finally {
      this.flushing = false;
    }
  }
}
