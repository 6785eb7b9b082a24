// Runs a whole class with the official socket.io-client: two students and an instructor join,
// ask, upvote (twice by the same user), answer, create a poll, vote, close and reveal; plus bad
// input. Prints one JSON summary line for the Rust test to check.
// Usage: node class.mjs URL SESSION TRANSPORT STUDENT1_TOKEN STUDENT2_TOKEN INSTRUCTOR_TOKEN
// TRANSPORT is `websocket` or `polling` (that transport only), or `default` (the client's
// default: polling first, then an upgrade to websocket, which the script waits for).
import { io } from 'socket.io-client';

const [url, session, transport, t1, t2, tInst] = process.argv.slice(2);
const timeout = setTimeout(() => { console.log(JSON.stringify({ error: 'timeout', log })); process.exit(2); }, 50000);
const log = [];

function connect(token, name) {
  const opts = { auth: { token }, reconnection: false, forceNew: true };
  if (transport !== 'default') opts.transports = [transport];
  const s = io(url, opts);
  s.name = name;
  s.seen = [];
  s.onAny((event, ...args) => { s.seen.push({ event, data: args[0], meta: args[1] }); });
  return new Promise((resolve, reject) => {
    s.on('connect', () => resolve(s));
    s.on('connect_error', (e) => reject(new Error(name + ': ' + e.message)));
  });
}
const call = (s, ...args) => s.timeout(15000).emitWithAck(...args);
const waitFor = async (s, pred, what) => {
  for (let i = 0; i < 600; i++) {
    const hit = s.seen.find(pred);
    if (hit) return hit;
    await new Promise(r => setTimeout(r, 25));
  }
  throw new Error(`${s.name} never saw ${what}; saw ${JSON.stringify(s.seen.map(e => e.event))}`);
};

try {
  const [a, b, inst] = await Promise.all([connect(t1, 'a'), connect(t2, 'b'), connect(tInst, 'inst')]);
  const upgraded = (s) => new Promise(resolve => {
    if (s.io.engine.transport.name === 'websocket') resolve();
    else s.io.engine.once('upgrade', () => resolve());
  });
  if (transport === 'default') await Promise.all([a, b, inst].map(upgraded));
  const out = { transport: a.io.engine.transport.name };
  // Which of the node's Socket.IO transports serves these three connections.
  const metrics = await (await fetch(url + '/metrics')).text();
  const count = (t) => Number((metrics.match(new RegExp(`lectern_connections\\{transport="${t}"\\} (\\d+)`)) || [0, 0])[1]);
  out.connections = { websocket: count('websocket'), socketio: count('socketio') };
  const joins = await Promise.all([a, b, inst].map(s => call(s, 'session:join', session)));
  out.joined = joins.map(j => j.ok);
  out.joinToken = typeof joins[0].token === 'string';

  const ask = await call(a, 'qa:ask', session, 'How do I...?');
  out.ask = ask.ok;
  const qaId = ask.id;
  const newEvents = await Promise.all([a, b, inst].map(s => waitFor(s, e => e.event === 'qa:new' && e.data.id === qaId, 'qa:new')));
  out.qaNewText = newEvents.map(e => e.data.question);
  out.qaNewHasToken = newEvents.every(e => typeof e.meta.token === 'string');

  const up1 = await call(b, 'qa:upvote', session, qaId);
  const up2 = await call(b, 'qa:upvote', session, qaId);
  await waitFor(a, e => e.event === 'qa:upvoted' && e.data.qaId === qaId, 'qa:upvoted');
  const up3 = await call(a, 'qa:upvote', session, qaId);
  await waitFor(inst, e => e.event === 'qa:upvoted' && e.data.count === 2, 'count 2');
  out.upvoteAcks = [up1.ok, up2.ok, up3.ok];
  out.upvoteCounts = inst.seen.filter(e => e.event === 'qa:upvoted').map(e => e.data.count);

  const ans = await call(inst, 'qa:answer', session, qaId, 'Like this.');
  out.answer = ans.ok;
  const upd = await waitFor(a, e => e.event === 'qa:updated' && e.data.answer, 'qa:updated');
  out.answerText = upd.data.answer.text;

  const poll = await call(inst, 'poll:create', session, { question: 'Ready?', kind: 'single', options: ['yes', 'no'], hideResults: true });
  out.pollCreate = poll.ok;
  const pollId = poll.id;
  await waitFor(b, e => e.event === 'poll:new' && e.data.id === pollId, 'poll:new');
  const v1 = await call(a, 'poll:vote', session, pollId, 0);
  const v2 = await call(b, 'poll:vote', session, pollId, 1);
  out.votes = [v1.ok, v2.ok];
  await waitFor(inst, e => e.event === 'poll:results' && e.data.pollId === pollId && e.data.results.voters === 2, 'staff results');
  out.studentSawHiddenResults = a.seen.some(e => e.event === 'poll:results' && e.data.pollId === pollId);
  const close = await call(inst, 'poll:close', session, pollId);
  const late = await call(a, 'poll:vote', session, pollId, 1);
  out.close = close.ok;
  out.lateVote = late.ok ? 'accepted' : late.error.code;
  const reveal = await call(inst, 'poll:reveal', session, pollId);
  out.reveal = reveal.ok;
  const revealed = await waitFor(b, e => e.event === 'poll:results' && e.data.pollId === pollId, 'revealed results');
  out.revealedCounts = revealed.data.results.counts;

  // Bad input: wrong types, unknown event, a student doing an instructor's job, oversized text.
  out.badTypes = (await call(a, 'qa:ask', 12345, { nope: true })).error?.code;
  out.unknownEvent = (await call(a, 'qa:nope', session)).error?.code;
  out.forbidden = (await call(a, 'poll:create', session, { question: 'x', options: ['a', 'b'] })).error?.code;
  out.tooLong = (await call(a, 'qa:ask', session, 'x'.repeat(501))).error?.code;
  out.stillServing = (await call(b, 'chat:send', session, 'still here')).ok;
  const state = (await call(inst, 'session:join', session).catch(() => null));
  out.rejoin = state?.error?.code;
  for (const s of [a, b, inst]) s.disconnect();
  clearTimeout(timeout);
  console.log(JSON.stringify(out));
  process.exit(0);
} catch (e) {
  clearTimeout(timeout);
  console.log(JSON.stringify({ error: String(e && e.message || e) }));
  process.exit(1);
}
