//! Every limit of the domain, with its unit in its name.
//!
//! Text limits count Unicode scalar values (`chars`), because that is what a user sees as the
//! length of what they typed; byte limits say `BYTES`.

/// Longest id (user, cohort, session, command, lesson …), in bytes.
pub const ID_LEN_MAX_BYTES: usize = 64;
/// Longest display name stored with a question, chat message or roster entry.
pub const DISPLAY_NAME_LEN_MAX_CHARS: usize = 80;
/// Longest session, cohort, course or announcement title.
pub const TITLE_LEN_MAX_CHARS: usize = 200;
/// Longest question text.
pub const QUESTION_LEN_MAX_CHARS: usize = 500;
/// Longest answer to a question.
pub const ANSWER_LEN_MAX_CHARS: usize = 2_000;
/// Longest chat message.
pub const CHAT_LEN_MAX_CHARS: usize = 1_000;
/// Longest instructor broadcast.
pub const BROADCAST_LEN_MAX_CHARS: usize = 1_000;
/// Longest announcement body.
pub const ANNOUNCEMENT_LEN_MAX_CHARS: usize = 5_000;
/// Longest poll question.
pub const POLL_QUESTION_LEN_MAX_CHARS: usize = 300;
/// Longest poll option label.
pub const POLL_OPTION_LEN_MAX_CHARS: usize = 100;
/// Fewest options of a single or multiple choice poll.
pub const POLL_OPTIONS_MIN: usize = 2;
/// Most options of a single or multiple choice poll.
pub const POLL_OPTIONS_MAX: usize = 10;
/// Smallest top value of a rating scale (the scale runs 1..=max).
pub const RATING_SCALE_MIN: u32 = 2;
/// Largest top value of a rating scale.
pub const RATING_SCALE_MAX: u32 = 10;
/// Longest open-text (word cloud) poll answer.
pub const OPEN_TEXT_ANSWER_LEN_MAX_CHARS: usize = 80;
/// Words shown in an open-text poll's word cloud.
pub const WORD_CLOUD_WORDS_MAX: usize = 50;
/// Questions one session holds; past it `ask` is refused with `limit_reached`.
pub const QUESTIONS_PER_SESSION_MAX: usize = 5_000;
/// Polls one session holds.
pub const POLLS_PER_SESSION_MAX: usize = 200;
/// Chat messages one session holds.
pub const CHAT_MESSAGES_PER_SESSION_MAX: usize = 20_000;
/// Broadcasts one session holds.
pub const BROADCASTS_PER_SESSION_MAX: usize = 1_000;
/// Attendance visits (joins) one session records.
pub const VISITS_PER_SESSION_MAX: usize = 50_000;
/// Questions one person (not staff) may ask in a session: 50 people are needed to fill
/// [`QUESTIONS_PER_SESSION_MAX`].
pub const QUESTIONS_PER_USER_PER_SESSION_MAX: usize = 100;
/// Chat messages one person (not staff) may send in a session.
pub const CHAT_MESSAGES_PER_USER_PER_SESSION_MAX: usize = 1_000;
/// Attendance visits recorded for one person (not staff) in a session (each connection that
/// joins is one; past it they are still served, the visit is not recorded).
pub const VISITS_PER_USER_PER_SESSION_MAX: usize = 1_000;
/// Lessons one student may have progress in, per cohort (a course's most lessons).
pub const LESSONS_PER_STUDENT_MAX: usize = COURSE_LESSONS_MAX;
/// Chat messages included in a joining client's state (the newest ones).
pub const CHAT_IN_VIEW_MAX: usize = 200;
/// Questions included in a joining client's state (the newest ones; older ones are paged).
pub const QUESTIONS_IN_VIEW_MAX: usize = 500;
/// Broadcasts included in a joining client's state (the newest ones; older ones are paged).
pub const BROADCASTS_IN_VIEW_MAX: usize = 100;
/// Most items one page of a session's questions, chat or broadcasts holds.
pub const PAGE_ITEMS_MAX: usize = 200;
/// Announcements one cohort holds.
pub const ANNOUNCEMENTS_PER_COHORT_MAX: usize = 2_000;
/// Highest score or maximum score recorded for a lesson.
pub const SCORE_MAX_POINTS: u32 = 100_000;
/// Heads in one resume token (a document with more concurrent heads gets a fresh snapshot).
pub const TOKEN_HEADS_MAX: usize = 64;
/// Events replayed for one resume; a client further behind gets a fresh snapshot instead.
pub const REPLAY_EVENTS_MAX: usize = 10_000;

/// Notifications one inbox holds (then pushes are refused with `limit_reached`).
pub const INBOX_ITEMS_MAX: usize = 10_000;

/// Notifications the inbox view lists (newest first); the rest are counted.
pub const INBOX_VIEW_ITEMS_MAX: usize = 100;

/// Longest email address (RFC 5321's path limit).
pub const EMAIL_ADDRESS_LEN_MAX_CHARS: usize = 254;

/// Longest course description, in characters.
pub const COURSE_DESCRIPTION_LEN_MAX_CHARS: usize = 4000;
/// Most modules in one course outline.
pub const COURSE_MODULES_MAX: usize = 100;
/// Most lessons in one course outline, over all its modules.
pub const COURSE_LESSONS_MAX: usize = 500;
/// Most assets one lesson references.
pub const LESSON_ASSETS_MAX: usize = 200;

/// Longest a join code stays redeemable after it is made, in ms (a school day).
pub const JOIN_CODE_TTL_MAX_MS: u64 = 12 * 3_600_000;
/// Most newcomers one join code lets in.
pub const JOIN_CODE_USES_MAX: u32 = 500;
/// Join codes one cohort holds over its life (then `join_code.create` is refused with
/// `limit_reached`).
pub const JOIN_CODES_PER_COHORT_MAX: usize = 1_000;
/// Newcomers join codes let into one cohort over its life.
pub const JOINS_PER_COHORT_MAX: usize = 5_000;
/// Length of a join code's key: lowercase hex digits of the code's keyed hash, which the
/// gateway computes (the code itself is never stored).
pub const JOIN_CODE_KEY_LEN_CHARS: usize = 32;
