// agentgate.js: a small, framework-agnostic client of agentgate's /ws chat
// protocol and REST API, served by every gateway at /agentgate.js. One
// socket with reconnect and backoff; every watched session is resumed with
// check-session-status {sessionId, lastSeq}, so its events are kept in seq
// order with no duplicate whatever drops. "Is this session working" lives in
// one Map (processing), as in Claude Code UI's frontend, and everything a UI
// shows about a run (indicator, Stop, composer) should be derived from the
// viewed session's entry of that Map and nothing else. The README's section
// "The web client" documents the API.

// PENDING_SESSION_ID keys the processing entry of a new conversation sent
// before its session id is known; it moves to the real id when the gateway
// names it (session-accepted or session_created).
export const PENDING_SESSION_ID = "__pending_session__";

const TERMINAL_STATES = new Set(["completed", "failed", "aborted"]);

// DEFAULT_MAX_MESSAGE_SIZE is the gateway's default largest client frame
// (--max-message-size): a larger one closes the socket with 1009 and is lost.
export const DEFAULT_MAX_MESSAGE_SIZE = 1 << 20;

// TOKEN_REFUSED is the close code of a /ws or /shell socket whose token
// expired; a refused upgrade (401) shows in a browser as a close with 1006.
const TOKEN_REFUSED = 4401;

const encoder = new TextEncoder();
function byteLength(s) {
  return encoder.encode(s).length;
}

// runKey orders runs: a run's id is its start time in milliseconds (Redis
// TIME), so a larger key is a later run.
function runKey(runId, startedAt) {
  const n = Number(runId ?? startedAt);
  return Number.isFinite(n) && n > 0 ? n : null;
}

// SessionRecord is what the client holds for one session: its events from
// firstSeq to lastSeq without a hole, events that arrived ahead of a hole,
// and its pending tool permission requests.
class SessionRecord {
  constructor(id) {
    this.id = id;
    this.watched = false;
    this.events = [];
    this.firstSeq = 1; // seq of events[0] (or of the next event when empty)
    this.lastSeq = 0; // the last seq delivered in order
    this.ahead = new Map(); // seq -> event that arrived before a hole was filled
    this.perms = new Map(); // requestId -> {requestId, toolName, input, sessionId, receivedAt, seenAt}
    this.statusSentAt = null; // local time of the latest check-session-status
    this.statusLastSeq = 0; // lastSeq of the latest session-status reply
    this.permsAskedAt = null; // local time of the get-pending-permissions in flight
    this.lastEndedRun = 0; // runKey of the latest complete seen
    this.tokenBudget = null;
    this.resyncing = false;
    this.resyncAt = 0; // local time resyncing was last asked
    this.reloading = null; // the history reload under way (recovered:false)
    this.reloadAgain = false;
  }
}

export class AgentGate {
  // options: token (JWT, sent as ?token= and as a bearer token), baseUrl
  // (http(s)://host[:port], default the page's origin), wsUrl (default
  // baseUrl's /ws), backoff {min, max} in ms, maxMessageSize (the
  // gateway's --max-message-size, 1 MiB by default: a command larger is
  // refused here), ackTimeout (ms a command may wait for its answer, 30 s),
  // maxAhead (events held ahead of a hole before they are dropped and the
  // session resumed again, 2000), and for tests WebSocket, fetch, now,
  // setTimeout, clearTimeout, random.
  constructor(options = {}) {
    const loc = globalThis.location;
    this.token = options.token ?? "";
    this.baseUrl = (options.baseUrl ?? (loc ? loc.origin : "")).replace(/\/$/, "");
    this.wsUrl = options.wsUrl ?? this.baseUrl.replace(/^http/, "ws") + "/ws";
    this.backoff = { min: 250, max: 8000, ...options.backoff };
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._fetch = options.fetch ?? ((...a) => globalThis.fetch(...a));
    this._now = options.now ?? (() => Date.now());
    this._setTimeout = options.setTimeout ?? ((f, ms) => setTimeout(f, ms));
    this._clearTimeout = options.clearTimeout ?? ((h) => clearTimeout(h));
    this._random = options.random ?? Math.random;
    this.maxMessageSize = options.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE;
    this.ackTimeout = options.ackTimeout ?? 30_000;
    this.maxAhead = options.maxAhead ?? 2000;
    this.historyRetry = { min: 1000, max: 30_000, ...options.historyRetry };

    // processing is the single source of truth for "this session is
    // working": sessionId -> {statusText, canInterrupt, startedAt, runId}.
    // Entries are replaced, never mutated, so a UI can compare by identity.
    this.processing = new Map();
    this.connected = false;
    // tokenRefused is set when the gateway refused the token (close 4401, or
    // an upgrade refused while GET /api/auth/user answers 401): the client
    // stops reconnecting until setToken gives it another.
    this.tokenRefused = false;

    this._records = new Map();
    this._listeners = new Set();
    this._ws = null;
    this._attempt = 0;
    this._timer = null;
    this._stopped = true;
    this._outbox = [];
    this._requests = new Map(); // requestId -> {sessionId (or PENDING), accepted, command, frame, ws, timer}
    this._answered = new Map(); // requestId of a permission answered here -> local time
    this._pending = null; // {requestId, abort} of the pending new conversation
    this._list = new Map(); // sessionId -> session as GET /api/sessions shows it
    this._seq = 0;
  }

  // subscribe calls listener(change) for every change until the returned
  // function is called. change.type is one of: connection, processing,
  // event, status, permissions, session-created, run-ended, busy,
  // history-trimmed, error, sessions, frame (any other reply or broadcast,
  // in change.frame), send-failed (a command that got no answer: requestId,
  // sessionId, command, error, reported), token-refused, history-gap.
  subscribe(listener) {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  _emit(change) {
    for (const l of [...this._listeners]) {
      try {
        l(change);
      } catch (err) {
        // A listener's bug must not stop the others or the client.
        globalThis.console?.error?.("agentgate listener", err);
      }
    }
  }

  // connect opens the socket and keeps it open (reconnecting with backoff)
  // until close.
  connect() {
    if (this.tokenRefused) return this;
    this._stopped = false;
    if (!this._ws) this._open();
    return this;
  }

  // setToken replaces the token (a new one from another tab or a login) and
  // connects again if the old one was refused.
  setToken(token) {
    this.token = token ?? "";
    if (!this.tokenRefused) return;
    this.tokenRefused = false;
    this._attempt = 0;
    this._stopped = false;
    if (!this._ws) this._open();
  }

  close() {
    this._stopped = true;
    this._drop();
    this._setConnected(false);
  }

  // _drop cancels a pending reconnect and closes the socket, if any.
  _drop() {
    if (this._timer) this._clearTimeout(this._timer);
    this._timer = null;
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(1000);
  }

  _open() {
    const sep = this.wsUrl.includes("?") ? "&" : "?";
    // delivery=immediate: this client orders by seq itself, so the gateway
    // need not pace frames for clients that act only on the latest frame.
    const url = this.wsUrl + sep + "token=" + encodeURIComponent(this.token) + "&delivery=immediate";
    let ws;
    try {
      ws = new this._WebSocket(url);
    } catch (err) {
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (this._ws !== ws) return;
      opened = true;
      this._attempt = 0;
      this._setConnected(true);
      this._resumeAll();
    };
    ws.onmessage = (m) => {
      if (this._ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(m.data);
      } catch {
        return;
      }
      this._receive(frame);
    };
    ws.onclose = (e) => {
      if (this._ws !== ws) return;
      this._ws = null;
      // A command written to this socket and not answered may or may not
      // have reached the gateway: it comes back to the user rather than
      // being sent twice (a copy would start a second run).
      for (const [id, req] of this._requests) {
        if (!req.accepted && req.ws === ws) this._fail(id, "Connection lost before the gateway answered: your message is back in the composer (if the session shows it running, it was received)");
      }
      if (e?.code === TOKEN_REFUSED) {
        this._refuse();
        return;
      }
      this._setConnected(false);
      this._scheduleReconnect();
      // A browser does not show why an upgrade failed: a socket that never
      // opened may have been refused its token, which REST can tell.
      if (!opened) this._checkToken();
    };
    ws.onerror = () => {}; // onclose follows
  }

  // _checkToken asks GET /api/auth/user whether the token is still taken
  // (one question at a time); a 401 stops the reconnects.
  _checkToken() {
    if (this._tokenCheck) return;
    this._tokenCheck = this.user().then(
      () => {},
      (err) => {
        if (err?.status === 401 && !this.connected) this._refuse();
      },
    ).finally(() => {
      this._tokenCheck = null;
    });
  }

  // _refuse stops reconnecting with a token the gateway refused, and gives
  // back every command not answered: none of them will be.
  _refuse() {
    if (this.tokenRefused) return;
    this.tokenRefused = true;
    this._stopped = true;
    this._drop();
    for (const [id, req] of this._requests) {
      if (!req.accepted) this._fail(id, "The gateway refused the token (expired?): your message is back in the composer");
    }
    this._outbox = [];
    this.connected = false;
    this._emit({ type: "connection", connected: false, attempt: this._attempt, tokenRefused: true });
    this._emit({ type: "token-refused" });
  }

  _setConnected(v) {
    if (this.connected === v) return;
    this.connected = v;
    this._emit({ type: "connection", connected: v, attempt: this._attempt, tokenRefused: this.tokenRefused });
  }

  _scheduleReconnect() {
    if (this._stopped || this._timer) return;
    const exp = Math.min(this.backoff.max, this.backoff.min * 2 ** this._attempt);
    const delay = Math.round(exp * (0.5 + this._random() / 2)); // jitter: tabs do not reconnect in step
    this._attempt++;
    this._timer = this._setTimeout(() => {
      this._timer = null;
      if (!this._stopped && !this._ws) this._open();
    }, delay);
  }

  // _resumeAll runs on every (re)connect: each watched session is resumed
  // from the last seq held, then what was sent while offline goes out.
  // Answers and aborts queued offline go first: a status reply must not
  // bring back a permission request answered meanwhile.
  _resumeAll() {
    const out = this._outbox;
    this._outbox = [];
    const commands = out.filter((f) => f.requestId && this._requests.has(f.requestId));
    for (const f of out) if (!commands.includes(f)) this._write(f);
    for (const rec of this._records.values()) {
      if (rec.watched) {
        rec.resyncing = false;
        this._checkStatus(rec);
      }
    }
    for (const f of commands) this._write(f);
  }

  // _write sends a frame on an open socket (not one closing), and notes on
  // the command's request which socket carries it.
  _write(frame) {
    const ws = this._ws;
    if (!ws || !this.connected || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(frame));
    } catch {
      return false;
    }
    const req = frame.requestId ? this._requests.get(frame.requestId) : null;
    if (req && req.frame === frame) req.ws = ws;
    return true;
  }

  // _send writes a frame now, or keeps it for the next connect.
  _send(frame) {
    if (!this._write(frame)) this._outbox.push(frame);
  }

  _record(id) {
    let rec = this._records.get(id);
    if (!rec) {
      rec = new SessionRecord(id);
      this._records.set(id, rec);
    }
    return rec;
  }

  _checkStatus(rec) {
    rec.statusSentAt = this._now();
    this._write({ type: "check-session-status", sessionId: rec.id, lastSeq: rec.lastSeq });
  }

  // watch follows a session: its missed events, then live ones, now and
  // after every reconnect. from (optional) is the seq to follow from when
  // nothing of the session is held yet (older events come with loadHistory).
  watch(sessionId, { from } = {}) {
    const rec = this._record(sessionId);
    if (rec.events.length === 0 && rec.lastSeq === 0 && from > 0) {
      rec.lastSeq = from;
      rec.firstSeq = from + 1;
    }
    if (rec.watched) return;
    rec.watched = true;
    if (this.connected) this._checkStatus(rec);
  }

  unwatch(sessionId) {
    const rec = this._records.get(sessionId);
    if (!rec || !rec.watched) return;
    rec.watched = false;
    this._write({ type: "unsubscribe", sessionId });
  }

  // send starts a run: a new session without sessionId (its processing
  // entry is PENDING_SESSION_ID until the gateway names it). options are the
  // command's options (projectPath, model, permissionMode, toolsSettings…).
  // It returns the requestId.
  //
  // A command larger than maxMessageSize throws (err.code "too-large")
  // before anything is sent: the gateway would close the socket (1009) and
  // lose it. One the gateway does not answer (session-accepted,
  // session-busy or error) within ackTimeout, or sent on a socket that
  // closes before its answer, or pending when the token is refused, ends in
  // a send-failed change with its command, and its processing entry goes.
  send(command, { provider = "claude", sessionId, options = {} } = {}) {
    const requestId = "r" + this._now().toString(36) + "-" + (++this._seq).toString(36);
    const key = sessionId || PENDING_SESSION_ID;
    const frame = { type: provider + "-command", command, requestId, options: { ...options } };
    if (sessionId) {
      frame.sessionId = sessionId;
      frame.options.sessionId = sessionId;
    }
    const size = byteLength(JSON.stringify(frame));
    if (size > this.maxMessageSize) {
      const err = new Error(`The message is too large to send: ${formatBytes(size)}, and the gateway takes at most ${formatBytes(this.maxMessageSize)} in one message`);
      err.code = "too-large";
      err.size = size;
      throw err;
    }
    if (this.tokenRefused) {
      const err = new Error("The gateway refused the token (expired?): open the address agentgate printed");
      err.code = "token-refused";
      throw err;
    }
    if (!sessionId) this._pending = { requestId, abort: false, sessionId: null };
    const req = { sessionId: key, accepted: false, command, frame, ws: null, timer: null };
    this._requests.set(requestId, req);
    req.timer = this._setTimeout(() => {
      req.timer = null;
      const r = this._requests.get(requestId);
      if (r && !r.accepted) this._fail(requestId, `No answer from the gateway within ${Math.round(this.ackTimeout / 1000)} s: your message is back in the composer`);
    }, this.ackTimeout);
    this._markProcessing(key, { statusText: null });
    if (sessionId) this._record(sessionId).watched = true; // the gateway subscribes the sender
    this._send(frame);
    return requestId;
  }

  // _settle marks a command accepted: its timer stops.
  _settle(requestId) {
    const req = this._requests.get(requestId);
    if (!req) return null;
    if (req.timer) this._clearTimeout(req.timer);
    req.timer = null;
    req.accepted = true;
    req.frame = null;
    return req;
  }

  // _fail gives a command back: no answer came, or none will.
  _fail(requestId, error, { reported = false } = {}) {
    const req = this._requests.get(requestId);
    if (!req) return;
    this._requests.delete(requestId);
    if (req.timer) this._clearTimeout(req.timer);
    this._outbox = this._outbox.filter((f) => f !== req.frame);
    this._markIdle(req.sessionId);
    if (this._pending?.requestId === requestId) this._pending = null;
    this._emit({ type: "send-failed", requestId, sessionId: req.sessionId, command: req.command, error, reported });
  }

  // abort stops the run of a session. For PENDING_SESSION_ID it stops the
  // new conversation as soon as the gateway names it.
  abort(sessionId) {
    if (sessionId === PENDING_SESSION_ID) {
      if (this._pending) this._pending.abort = true;
      return;
    }
    this._send({ type: "abort-session", sessionId });
  }

  // respond answers a tool permission request: {allow, message?,
  // rememberEntry?, updatedInput?}. The request leaves this client at once;
  // other tabs drop it when their session moves on.
  respond(requestId, { allow, message, rememberEntry, updatedInput } = {}) {
    this._answered.set(requestId, this._now());
    const frame = { type: "claude-permission-response", requestId, allow: !!allow };
    if (message !== undefined) frame.message = message;
    if (rememberEntry !== undefined) frame.rememberEntry = rememberEntry;
    if (updatedInput !== undefined) frame.updatedInput = updatedInput;
    this._send(frame);
    for (const rec of this._records.values()) {
      if (rec.perms.delete(requestId)) this._emit({ type: "permissions", sessionId: rec.id });
    }
  }

  // permissions lists the pending tool requests of a session, oldest first.
  permissions(sessionId) {
    const rec = this._records.get(sessionId);
    if (!rec) return [];
    return [...rec.perms.values()].sort((a, b) => (a.receivedAt ?? 0) - (b.receivedAt ?? 0));
  }

  // events returns the session's events held, in seq order.
  events(sessionId) {
    return this._records.get(sessionId)?.events.slice() ?? [];
  }

  lastSeq(sessionId) {
    return this._records.get(sessionId)?.lastSeq ?? 0;
  }

  tokenBudget(sessionId) {
    return this._records.get(sessionId)?.tokenBudget ?? null;
  }

  isRunning(sessionId) {
    return this.processing.has(sessionId);
  }

  // sessions returns the sessions known from GET /api/sessions and from
  // runs started here, newest first.
  sessions() {
    return [...this._list.values()].sort((a, b) => (b.updatedAt ?? 0) - (a.updatedAt ?? 0));
  }

  // A 429 (the user's rate, or their reads under way) is tried again
  // after its Retry-After, a few times.
  async _get(path) {
    for (let attempt = 1; ; attempt++) {
      const resp = await this._fetch(this.baseUrl + path, { headers: { Authorization: "Bearer " + this.token } });
      const body = await resp.json().catch(() => ({}));
      if (resp.status === 429 && attempt < 5) {
        const wait = Number(resp.headers?.get?.("Retry-After")) || 1;
        await new Promise((resolve) => setTimeout(resolve, wait * 1000));
        continue;
      }
      if (!resp.ok) {
        const err = new Error(body.error || "HTTP " + resp.status);
        err.status = resp.status; // 401: the token is missing, expired or not this gateway's
        throw err;
      }
      return body;
    }
  }

  // user reads GET /api/auth/user: whom the gateway takes this client for,
  // {username, admin}.
  async user() {
    const body = await this._get("/api/auth/user");
    return body.user ?? {};
  }

  // listSessions reads GET /api/sessions, feeds the processing map (a reply
  // older than an entry does not clear it) and watches the running ones.
  async listSessions() {
    const sentAt = this._now();
    const body = await this._get("/api/sessions");
    for (const s of body.sessions ?? []) {
      this._list.set(s.id, { ...this._list.get(s.id), ...s });
      const rec = this._record(s.id);
      if (s.isProcessing) {
        // A list read before this run's complete arrived says nothing new.
        if ((runKey(s.runId, s.startedAt) ?? 0) > rec.lastEndedRun) {
          this._markProcessing(s.id, {
            statusText: s.statusText || undefined, canInterrupt: s.canInterrupt,
            startedAt: s.startedAt, runId: s.runId,
          });
          this.watch(s.id, { from: s.lastSeq });
        }
      } else {
        this._markIdle(s.id, { ifStartedBefore: sentAt });
      }
    }
    this._emit({ type: "sessions" });
    return this.sessions();
  }

  // loadHistory reads the session's stored events over REST
  // (GET /api/sessions/:id/events) and merges them by seq: older ones
  // before those held, newer ones as if they had arrived live. It reads on
  // from the last seq it got until the session's lastSeq. Where a page says
  // recovered:false, the seqs it skips are not stored (trimmed, or lost by a
  // Redis that lost writes: the session's lostUpTo): nothing can fill them,
  // so the session goes on after them (history-trimmed for its start,
  // history-gap for a hole in its middle or end).
  async loadHistory(sessionId) {
    const rec = this._record(sessionId);
    const older = [];
    let after = 0;
    for (;;) {
      const body = await this._get(`/api/sessions/${encodeURIComponent(sessionId)}/events?after=${after}&limit=1000`);
      const evs = body.events ?? [];
      const gaps = body.recovered === false;
      let prev = after;
      for (const ev of evs) {
        if (typeof ev.seq !== "number") continue;
        if (gaps && ev.seq > prev + 1) this._skipHole(rec, prev, ev.seq);
        if (ev.seq < rec.firstSeq) older.push(ev);
        else this._ingest(ev, { history: true });
        prev = Math.max(prev, ev.seq);
      }
      const end = Number(body.lastSeq) || 0;
      if (gaps && evs.length === 0 && end > prev) {
        // The session's last events are gone: it goes on after them.
        this._skipHole(rec, prev, end + 1);
      }
      if (evs.length === 0) break;
      after = prev;
      if (after >= end) break;
    }
    if (older.length) {
      const fresh = older.filter((e) => e.seq < rec.firstSeq);
      if (fresh.length) {
        rec.events = fresh.concat(rec.events);
        rec.firstSeq = rec.events[0].seq;
        this._emit({ type: "event", sessionId, event: null, history: true });
      }
    }
    return this.events(sessionId);
  }

  // _skipHole takes the seqs between from and to (both excluded) as missing
  // for good: if the session waits inside that hole, it goes on at to.
  _skipHole(rec, from, to) {
    if (rec.lastSeq >= to - 1 || rec.lastSeq < from) return;
    const start = rec.events.length === 0 && rec.lastSeq === 0;
    for (const seq of rec.ahead.keys()) if (seq < to) rec.ahead.delete(seq);
    if (rec.events.length === 0) rec.firstSeq = to;
    const missing = { from: rec.lastSeq + 1, to: to - 1 };
    rec.lastSeq = to - 1;
    if (start) this._emit({ type: "history-trimmed", sessionId: rec.id, firstSeq: to });
    else this._emit({ type: "history-gap", sessionId: rec.id, ...missing });
    this._drain(rec, true);
  }

  // _reload reads the history after a recovered:false, trying again with
  // backoff while it fails (a 503 while Redis restarts, 429s), as long as
  // the session is watched; one reload at a time per session.
  _reload(rec) {
    if (rec.reloading) {
      rec.reloadAgain = true;
      return;
    }
    let attempt = 0;
    const run = async () => {
      for (;;) {
        rec.reloadAgain = false;
        try {
          await this.loadHistory(rec.id);
          if (!rec.reloadAgain) return true;
        } catch (err) {
          if (err?.status === 401 || err?.status === 404 || !rec.watched || this._stopped) {
            this._emit({ type: "error", error: "Could not load the history: " + (err?.message ?? err), sessionId: rec.id });
            return false;
          }
          if (attempt === 0) this._emit({ type: "error", error: "Could not load the history (" + (err?.message ?? err) + "); trying again", sessionId: rec.id });
          const exp = Math.min(this.historyRetry.max, this.historyRetry.min * 2 ** attempt++);
          await new Promise((resolve) => this._setTimeout(resolve, Math.round(exp * (0.5 + this._random() / 2))));
          if (!rec.watched || this._stopped) return false;
        }
      }
    };
    rec.reloading = run().then((ok) => {
      rec.reloading = null;
      if (rec.ahead.size === 0) {
        rec.resyncing = false;
      } else if (ok && rec.watched) {
        // Events held ahead were dropped (the bound) or a hole is left:
        // the session is resumed from what it holds.
        rec.resyncing = true;
        rec.resyncAt = this._now();
        if (this.connected) this._checkStatus(rec);
      }
    });
  }

  // _receive handles one frame of the socket.
  _receive(f) {
    if (f.kind) {
      this._ingest(f, { history: false });
      return;
    }
    switch (f.type) {
      case "session-accepted":
        return this._accepted(f);
      case "session-busy":
        return this._busy(f);
      case "session-status":
        return this._status(f);
      case "pending-permissions-response":
        return this._pendingReply(f);
      case "error":
        return this._error(f);
      default:
        this._emit({ type: "frame", frame: f });
    }
  }

  _accepted(f) {
    const req = this._settle(f.requestId);
    const rec = this._record(f.sessionId);
    rec.watched = true; // the gateway subscribed this socket
    // Only the accept of the pending command names the new chat (by its
    // requestId): a session_created, which may come from another session's
    // history, never does.
    if (req && req.sessionId === PENDING_SESSION_ID) this._named(f.requestId, f.sessionId);
    this._requests.delete(f.requestId);
    this._markProcessing(f.sessionId, { startedAt: f.startedAt, runId: f.startedAt });
    this._remember(f.sessionId, { provider: f.provider, state: "running", startedAt: f.startedAt });
  }

  // _named moves the pending entry to the session id the gateway minted.
  _named(requestId, sessionId) {
    const p = this._pending;
    if (!p || p.requestId !== requestId || (p.sessionId && p.sessionId !== sessionId)) return;
    const first = !p.sessionId;
    p.sessionId = sessionId;
    if (this._requests.has(p.requestId)) this._requests.get(p.requestId).sessionId = sessionId;
    const entry = this.processing.get(PENDING_SESSION_ID);
    if (entry) {
      this.processing.delete(PENDING_SESSION_ID);
      if (!this.processing.has(sessionId)) this.processing.set(sessionId, entry);
      this._emit({ type: "processing", sessionId: PENDING_SESSION_ID });
      this._emit({ type: "processing", sessionId });
    }
    if (first) {
      this._emit({ type: "session-created", sessionId, requestId: p.requestId });
      if (p.abort) this._send({ type: "abort-session", sessionId });
    }
  }

  _busy(f) {
    const req = this._requests.get(f.requestId);
    if (req && !req.accepted) this._fail(f.requestId, f.message || "The session is busy", { reported: true });
    this._record(f.sessionId).watched = true;
    this._markProcessing(f.sessionId, { startedAt: f.startedAt, runId: f.startedAt });
    this._emit({ type: "busy", sessionId: f.sessionId, requestId: f.requestId, message: f.message });
  }

  _status(f) {
    const rec = this._record(f.sessionId);
    const sentAt = rec.statusSentAt;
    rec.statusLastSeq = f.lastSeq ?? 0;
    if (f.isProcessing) {
      if ((runKey(null, f.startedAt) ?? 0) > rec.lastEndedRun) {
        this._markProcessing(f.sessionId, {
          statusText: f.statusText || undefined, canInterrupt: f.canInterrupt,
          startedAt: f.startedAt, runId: f.startedAt,
        });
      }
      this._replacePerms(rec, f.pendingPermissions ?? [], sentAt);
    } else if (this._markIdle(f.sessionId, { ifStartedBefore: sentAt ?? this._now() })) {
      this._replacePerms(rec, [], null);
    }
    if (f.recovered === false) {
      // The events after lastSeq were trimmed or lost: what is stored comes
      // over REST, and the session goes on past what is not.
      this._reload(rec);
    }
    this._emit({ type: "status", sessionId: f.sessionId, status: f });
  }

  _pendingReply(f) {
    const rec = this._record(f.sessionId);
    const askedAt = rec.permsAskedAt;
    rec.permsAskedAt = null;
    this._replacePerms(rec, f.data ?? [], askedAt);
  }

  // _replacePerms makes the pending list the server's, except for requests
  // that arrived after the question was asked (the answer may predate them).
  _replacePerms(rec, list, askedAt) {
    const next = new Map();
    const now = this._now();
    for (const [id, t] of this._answered) if (now - t > 10 * 60_000) this._answered.delete(id);
    for (const p of list) {
      if (this._answered.has(p.requestId)) continue; // answered here; the answer may not have landed yet
      next.set(p.requestId, { ...p, seenAt: rec.perms.get(p.requestId)?.seenAt ?? now });
    }
    for (const [id, p] of rec.perms) {
      if (!next.has(id) && askedAt != null && p.seenAt > askedAt) next.set(id, p);
    }
    const changed = next.size !== rec.perms.size || [...next.keys()].some((k) => !rec.perms.has(k));
    rec.perms = next;
    if (changed) this._emit({ type: "permissions", sessionId: rec.id });
  }

  _error(f) {
    const req = f.requestId ? this._requests.get(f.requestId) : null;
    this._emit({ type: "error", error: f.error, requestId: f.requestId, sessionId: f.sessionId ?? req?.sessionId, retryable: !!f.retryable });
    if (req && !req.accepted) {
      // The command was refused: no run exists, and the user gets it back.
      this._fail(f.requestId, f.error, { reported: true });
    }
  }

  // _ingest takes one event in: delivered when it is the next seq of its
  // session, held when it is ahead of a hole, dropped when already held.
  _ingest(ev, { history }) {
    const sid = ev.sessionId;
    if (!sid || typeof ev.seq !== "number") return;
    const rec = this._record(sid);
    if (ev.seq <= rec.lastSeq || rec.ahead.has(ev.seq)) return;
    if (ev.seq > rec.lastSeq + 1) {
      if (rec.ahead.size >= this.maxAhead) {
        // The hole is not filling (a reload that keeps failing): what is
        // held goes, and the session is resumed from its lastSeq again.
        rec.ahead.clear();
        rec.resyncing = false;
      }
      rec.ahead.set(ev.seq, ev);
      const stale = rec.resyncing && this._now() - rec.resyncAt > 15_000;
      if (!history && (!rec.resyncing || stale) && this.connected && !rec.reloading) {
        // A hole on one socket should not happen; ask for it again (and
        // again later, if the answer did not fill it).
        rec.resyncing = true;
        rec.resyncAt = this._now();
        this._checkStatus(rec);
      }
      return;
    }
    this._deliver(rec, ev, history);
    this._drain(rec, history);
  }

  // _drain delivers the events held ahead that are now next in seq.
  _drain(rec, history) {
    while (rec.ahead.has(rec.lastSeq + 1)) {
      const next = rec.ahead.get(rec.lastSeq + 1);
      rec.ahead.delete(next.seq);
      this._deliver(rec, next, history);
    }
    if (rec.ahead.size === 0) rec.resyncing = false;
  }

  _deliver(rec, ev, history) {
    if (rec.events.length === 0) rec.firstSeq = ev.seq;
    rec.events.push(ev);
    rec.lastSeq = ev.seq;
    this._reduce(rec, ev, history);
    this._emit({ type: "event", sessionId: rec.id, event: ev, history });
    if (!history && rec.perms.size && ev.kind !== "permission_request" && ev.kind !== "permission_cancelled" && ev.kind !== "complete") {
      // An answer from another tab is told by permission_cancelled; a
      // worker of an earlier build told nothing: once the run moves on,
      // ask which requests still wait.
      this._askPermissions(rec);
    }
  }

  _askPermissions(rec) {
    if (rec.permsAskedAt != null || !this.connected) return;
    rec.permsAskedAt = this._now();
    this._write({ type: "get-pending-permissions", sessionId: rec.id });
  }

  // _reduce applies an event to the processing map and the permissions.
  _reduce(rec, ev, history) {
    const sid = rec.id;
    switch (ev.kind) {
      case "session-state-changed":
        if (ev.state === "running") {
          if ((runKey(ev.runId, ev.startedAt) ?? 0) > rec.lastEndedRun) {
            this._markProcessing(sid, { startedAt: ev.startedAt, runId: ev.runId ?? ev.startedAt });
          }
        } else if (TERMINAL_STATES.has(ev.state) && this._sameRun(sid, ev)) {
          // complete follows at once; until then nothing can be stopped.
          this._markProcessing(sid, { canInterrupt: false });
        }
        this._remember(sid, { state: ev.state, startedAt: ev.startedAt, provider: ev.provider });
        break;
      case "status":
        if (ev.text === "token_budget") {
          rec.tokenBudget = ev.tokenBudget ?? null;
        } else if (this.processing.has(sid) && this._sameRun(sid, ev)) {
          this._markProcessing(sid, { statusText: ev.text ?? null, canInterrupt: ev.canInterrupt ?? true });
        }
        break;
      case "permission_request":
        if (!history && ev.seq > rec.statusLastSeq) {
          rec.perms.set(ev.requestId, {
            requestId: ev.requestId, toolName: ev.toolName, input: ev.input, sessionId: sid,
            receivedAt: Date.parse(ev.timestamp) || this._now(), seenAt: this._now(),
          });
          this._emit({ type: "permissions", sessionId: sid });
        }
        break;
      case "permission_cancelled":
        if (rec.perms.delete(ev.requestId)) this._emit({ type: "permissions", sessionId: sid });
        break;
      case "complete": {
        const key = runKey(ev.runId) ?? 0;
        const ended = this._sameRun(sid, ev) && this.processing.has(sid);
        rec.lastEndedRun = Math.max(rec.lastEndedRun, key);
        if (ended) this._markIdle(sid);
        if (this._pending?.sessionId === sid) {
          this._markIdle(PENDING_SESSION_ID);
          this._pending = null;
        }
        if (rec.perms.size) {
          rec.perms.clear();
          this._emit({ type: "permissions", sessionId: sid });
        }
        this._remember(sid, { state: ev.aborted ? "aborted" : ev.success ? "completed" : "failed", exitCode: ev.exitCode });
        if (ended) {
          this._emit({
            type: "run-ended", sessionId: sid, runId: ev.runId, live: !history,
            // Only this is a success worth celebrating; aborted and failed
            // runs merely ended.
            succeeded: ev.success === true && !ev.aborted,
            aborted: !!ev.aborted, exitCode: ev.exitCode,
          });
        }
        break;
      }
    }
  }

  // _sameRun reports whether ev belongs to the run of the session's entry
  // (or a later one): an older run's event must not change the entry.
  _sameRun(sid, ev) {
    const entry = this.processing.get(sid);
    const k = runKey(ev.runId, ev.startedAt);
    return !entry || entry.runId == null || k == null || k >= Number(entry.runId);
  }

  // _markProcessing creates or updates a session's entry. startedAt is kept
  // from the entry's creation; undefined fields keep their value.
  _markProcessing(sid, { statusText, canInterrupt, startedAt, runId } = {}) {
    const prev = this.processing.get(sid);
    const k = runKey(runId);
    if (prev && k != null && prev.runId != null && k < Number(prev.runId)) return; // an older run
    let next;
    if (!prev || (k != null && prev.runId != null && k > Number(prev.runId))) {
      next = {
        statusText: statusText ?? null, canInterrupt: canInterrupt ?? true,
        startedAt: startedAt || this._now(), runId: k != null ? String(runId) : null,
      };
    } else {
      next = {
        statusText: statusText === undefined ? prev.statusText : statusText,
        canInterrupt: canInterrupt === undefined ? prev.canInterrupt : !!canInterrupt,
        startedAt: prev.startedAt,
        runId: prev.runId ?? (k != null ? String(runId) : null),
      };
      if (next.statusText === prev.statusText && next.canInterrupt === prev.canInterrupt && next.runId === prev.runId) return;
    }
    this.processing.set(sid, next);
    this._emit({ type: "processing", sessionId: sid });
  }

  // _markIdle deletes a session's entry, unless ifStartedBefore is given and
  // the entry started at or after it (a reply to a question asked before
  // this run began says nothing about it). It reports whether it deleted.
  _markIdle(sid, { ifStartedBefore } = {}) {
    const prev = this.processing.get(sid);
    if (!prev) return true;
    if (ifStartedBefore != null && prev.startedAt >= ifStartedBefore) return false;
    this.processing.delete(sid);
    this._emit({ type: "processing", sessionId: sid });
    return true;
  }

  // _remember keeps the session list current with what the socket shows.
  _remember(sid, fields) {
    const prev = this._list.get(sid);
    const next = { id: sid, ...prev };
    for (const [k, v] of Object.entries(fields)) if (v !== undefined) next[k] = v;
    next.updatedAt = Math.max(prev?.updatedAt ?? 0, this._now());
    this._list.set(sid, next);
    if (!prev) this._emit({ type: "sessions" });
  }
}

function formatBytes(n) {
  return n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB" : Math.ceil(n / 1024) + " KiB";
}
