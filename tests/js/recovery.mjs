// Connection State Recovery with the official socket.io-client (>= 4.6): a student's socket
// goes through a TCP proxy (a load balancer's stand-in) that drops every connection twice;
// while it is down another student asks questions. The first time the proxy comes back to the
// same node, the second time to another node of the mesh. The client reconnects by itself
// with the pid and offset it kept, and must come back with `socket.recovered === true`, its
// session joined again and every question it missed exactly once. Then a CONNECT that forges
// a pid and an offset must not be recovered. Prints one JSON summary line.
// Usage: node recovery.mjs URL_A URL_B SESSION TRANSPORT STUDENT_TOKEN OTHER_TOKEN
// TRANSPORT is `websocket` (the node's lean transport) or `polling` (socketioxide).
import net from 'node:net';
import { io } from 'socket.io-client';

const [urlA, urlB, session, transport, tStudent, tOther] = process.argv.slice(2);
const log = [];
const timeout = setTimeout(() => {
  console.log(JSON.stringify({ error: 'timeout', log }));
  process.exit(2);
}, 80000);

// The proxy: forwards to `target` while up; dropping it closes every connection and refuses
// new ones until it is up again.
let target = new URL(urlA);
let down = false;
const open = new Set();
const proxy = net.createServer((client) => {
  if (down) { client.destroy(); return; }
  const upstream = net.connect(Number(target.port), target.hostname);
  open.add(client); open.add(upstream);
  const end = () => {
    client.destroy(); upstream.destroy();
    open.delete(client); open.delete(upstream);
  };
  for (const s of [client, upstream]) { s.on('error', end); s.on('close', end); }
  client.pipe(upstream); upstream.pipe(client);
});
await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
const viaProxy = `http://127.0.0.1:${proxy.address().port}`;
const drop = () => { down = true; for (const s of open) s.destroy(); open.clear(); };
const upTo = (url) => { target = new URL(url); down = false; };

const until = async (pred, what, ms = 30000) => {
  for (let waited = 0; waited < ms; waited += 25) {
    if (pred()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`never ${what}`);
};
const call = (s, ...args) => s.timeout(15000).emitWithAck(...args);

function connectOnce(url, auth) {
  const s = io(url, { transports: [transport], auth, reconnection: false, forceNew: true });
  return new Promise((resolve, reject) => {
    s.on('connect', () => resolve(s));
    s.on('connect_error', (e) => reject(new Error('connect: ' + e.message)));
  });
}

try {
  const student = io(viaProxy, {
    transports: [transport], auth: { token: tStudent }, forceNew: true,
    reconnectionDelay: 100, reconnectionDelayMax: 300, randomizationFactor: 0,
  });
  const seen = [];
  student.onAny((event, ...args) => seen.push({ event, args }));
  const connects = [];
  student.on('connect', () => connects.push({ recovered: student.recovered, pid: student._pid }));
  student.on('disconnect', (reason) => log.push('disconnect: ' + reason));
  await until(() => connects.length === 1, 'connected');
  const join = await call(student, 'session:join', session);
  if (!join.ok) throw new Error('join: ' + JSON.stringify(join));

  const other = await connectOnce(urlA, { token: tOther });
  const asked = [];
  const ask = async (text) => {
    const a = await call(other, 'qa:ask', session, text);
    if (!a.ok) throw new Error('ask: ' + JSON.stringify(a));
    asked.push(a.id);
    return a.id;
  };
  const received = (id) => seen.filter((e) => e.event === 'qa:new' && e.args[0].id === id).length;

  const q1 = await ask('before any drop');
  await until(() => received(q1) === 1, 'saw q1');
  const first = seen.find((e) => e.event === 'qa:new');
  const offsetIsLastString = typeof first.args[first.args.length - 1] === 'string';

  // Round 1: back to the same node. Round 2: to the other node.
  for (const [round, url] of [[1, urlA], [2, urlB]]) {
    drop();
    await until(() => !student.connected, `disconnected in round ${round}`);
    await ask(`missed ${round}a`);
    const last = await ask(`missed ${round}b`);
    upTo(url);
    await until(() => connects.length === round + 1, `reconnected in round ${round}`);
    await until(() => received(last) >= 1, `saw what it missed in round ${round}`);
  }
  // Live events after the recovery, on the other node.
  const live = await ask('after the recoveries');
  await until(() => received(live) >= 1, 'saw the live question');
  const rejoin = await call(student, 'session:join', session);

  // A forged pid and offset (a session that does not exist) connects afresh.
  const forged = await connectOnce(urlA, {
    token: tStudent, pid: 'forgedpid', offset: `no-such-session~${'A'.repeat(43)}`,
  });
  const forgedJoin = await call(forged, 'session:join', session);

  // A moment for a duplicate to show up, if one were coming.
  await new Promise((r) => setTimeout(r, 300));
  console.log(JSON.stringify({
    transport: student.io.engine.transport.name,
    recovered: connects.map((c) => c.recovered),
    samePid: connects.every((c) => c.pid === connects[0].pid),
    offsetIsLastString,
    asked: asked.length,
    receivedEach: asked.map(received),
    rejoin: rejoin.ok ? 'ok' : rejoin.error.code,
    forgedRecovered: forged.recovered,
    forgedPidEchoed: forged._pid === 'forgedpid',
    forgedJoin: forgedJoin.ok,
  }));
  for (const s of [student, other, forged]) s.close();
  proxy.close();
  clearTimeout(timeout);
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ error: String(e && e.stack || e), log }));
  process.exit(1);
}
