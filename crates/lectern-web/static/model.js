// The client's copy of a session: the state a join returns, kept current by the session's
// events. Items are keyed by id, so an event seen twice (a replay after a reconnect overlapping
// what the page already had) changes nothing the second time.

/** An empty session. */
export function emptySession() {
  return {
    title: '', cohort: null, moderation: false, state: 'live',
    questions: new Map(), polls: new Map(), chat: new Map(), broadcasts: new Map(),
    present: 0, users: [], pinnedId: null,
  };
}

/** Replaces everything with a full state (`session:join`, SSE `state`, long-poll). */
export function applyState(m, s) {
  m.title = s.title || '';
  m.cohort = s.cohort || null;
  m.moderation = !!s.moderation;
  m.state = s.state || 'live';
  m.questions = new Map((s.questions || []).map((q) => [q.id, q]));
  m.polls = new Map((s.polls || []).map((p) => [p.id, p]));
  m.chat = new Map((s.chat || []).map((c) => [c.id, c]));
  m.broadcasts = new Map((s.broadcasts || []).map((b) => [b.id, b]));
  m.present = (s.attendance && s.attendance.present) || 0;
  m.users = (s.attendance && s.attendance.users) || [];
  const pinned = [...m.questions.values()].filter((q) => q.pinned);
  pinned.sort((a, b) => b.createdAt - a.createdAt);
  m.pinnedId = pinned.length ? pinned[0].id : null;
}

/**
 * Applies one event. Returns what a screen reader should hear about it (or null), so that new
 * questions, answers, results and broadcasts are announced once, as they arrive.
 */
export function applyEvent(m, name, p, me) {
  switch (name) {
    case 'session:updated':
      m.title = p.title || m.title;
      m.moderation = !!p.moderation;
      m.state = p.state || m.state;
      return null;
    case 'qa:new':
    case 'qa:updated': {
      const old = m.questions.get(p.id);
      const q = { ...p, voted: old ? old.voted : false };
      m.questions.set(p.id, q);
      if (q.pinned) m.pinnedId = q.id;
      else if (m.pinnedId === q.id) m.pinnedId = null;
      if (name === 'qa:new' && !old) return { text: `New question: ${q.question}` };
      if (old && !old.answer && q.answer) return { text: `Answered: ${q.question} — ${q.answer.text}` };
      return null;
    }
    case 'qa:upvoted': {
      const q = m.questions.get(p.qaId);
      if (q) q.upvotes = p.count;
      return null;
    }
    case 'poll:new': {
      const seen = m.polls.has(p.id);
      m.polls.set(p.id, { ...p, myVote: seen ? m.polls.get(p.id).myVote : null });
      return seen ? null : { text: `New poll: ${p.question}` };
    }
    case 'poll:results': {
      const poll = m.polls.get(p.pollId);
      if (!poll) return null;
      const wasPublic = poll.results != null && (poll.revealed || !poll.hideResults);
      poll.results = p.results;
      if (p.revealed && poll.hideResults) poll.revealed = true;
      const isPublic = !poll.hideResults || poll.revealed;
      return isPublic && !wasPublic ? { text: `Results of "${poll.question}": ${resultsText(poll)}` } : null;
    }
    case 'poll:closed': {
      const poll = m.polls.get(p.pollId);
      if (!poll) return null;
      poll.state = 'closed';
      if (p.results) poll.results = p.results;
      return { text: `Poll closed: ${poll.question}` };
    }
    case 'chat:message':
      m.chat.set(p.id, p);
      return null;
    case 'chat:deleted':
      m.chat.delete(p.id);
      return null;
    case 'broadcast': {
      const seen = m.broadcasts.has(p.id);
      m.broadcasts.set(p.id, p);
      return seen ? null : { text: `Announcement from ${(p.by && p.by.name) || 'the instructor'}: ${p.text}`, urgent: true };
    }
    default:
      return null;
  }
}

/** The option labels of a poll (a rating's are 1..scaleMax). */
export function pollLabels(poll) {
  if (poll.kind === 'rating') return Array.from({ length: poll.scaleMax || 0 }, (_, i) => String(i + 1));
  return poll.options || [];
}

/** A poll's results as one sentence, for screen readers and text alternatives. */
export function resultsText(poll) {
  const r = poll.results;
  if (!r) return 'results hidden until revealed';
  if (r.words) return `${r.voters} answers; ` + r.words.slice(0, 5).map((w) => `${w.word} (${w.count})`).join(', ');
  const labels = pollLabels(poll);
  const parts = (r.counts || []).map((c, i) => `${labels[i] ?? i + 1}: ${c}`);
  const avg = r.average != null ? `; average ${r.average}` : '';
  return `${r.voters} voter${r.voters === 1 ? '' : 's'}; ${parts.join(', ')}${avg}`;
}

/** Questions a viewer should see in the main list, sorted by `order` (`top` or `recent`). */
export function visibleQuestions(m, order, staff) {
  // Students get their own pending questions (marked); staff see those in the moderation queue.
  const qs = [...m.questions.values()].filter((q) => q.status === 'visible' || q.status === 'pending');
  if (order === 'recent') qs.sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? -1 : 1));
  else qs.sort((a, b) => b.upvotes - a.upvotes || a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1));
  return staff ? qs.filter((q) => q.status !== 'pending') : qs;
}

/** The question on the projector: the last pinned, if it is still visible. */
export function pinnedQuestion(m) {
  const q = m.pinnedId ? m.questions.get(m.pinnedId) : null;
  return q && q.pinned && q.status === 'visible' ? q : null;
}

/** The current poll: the newest (closing it keeps it on screen, for its results). */
export function currentPoll(m) {
  const ps = [...m.polls.values()].sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : -1));
  return ps[0] || null;
}
