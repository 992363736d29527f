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
  }
}

export class AgentGate {
  // options: token (JWT, sent as ?token= and as a bearer token), baseUrl
  // (http(s)://host[:port], default the page's origin), wsUrl (default
  // baseUrl's /ws), backoff {min, max} in ms, and for tests WebSocket,
  // fetch, now, setTimeout, clearTimeout, random.
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

    // processing is the single source of truth for "this session is
    // working": sessionId -> {statusText, canInterrupt, startedAt, runId}.
    // Entries are replaced, never mutated, so a UI can compare by identity.
    this.processing = new Map();
    this.connected = false;

    this._records = new Map();
    this._listeners = new Set();
    this._ws = null;
    this._attempt = 0;
    this._timer = null;
    this._stopped = true;
    this._outbox = [];
    this._requests = new Map(); // requestId -> {sessionId (or PENDING), accepted}
    this._pending = null; // {requestId, abort} of the pending new conversation
    this._list = new Map(); // sessionId -> session as GET /api/sessions shows it
    this._seq = 0;
  }

  // subscribe calls listener(change) for every change until the returned
  // function is called. change.type is one of: connection, processing,
  // event, status, permissions, session-created, run-ended, busy,
  // history-trimmed, error, sessions, frame (any other reply or broadcast,
  // in change.frame).
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
    this._stopped = false;
    if (!this._ws) this._open();
    return this;
  }

  close() {
    this._stopped = true;
    if (this._timer) this._clearTimeout(this._timer);
    this._timer = null;
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(1000);
    this._setConnected(false);
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
    ws.onopen = () => {
      if (this._ws !== ws) return;
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
    ws.onclose = () => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._setConnected(false);
      this._scheduleReconnect();
    };
    ws.onerror = () => {}; // onclose follows
  }

  _setConnected(v) {
    if (this.connected === v) return;
    this.connected = v;
    this._emit({ type: "connection", connected: v, attempt: this._attempt });
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
  _resumeAll() {
    if (this._pending && this._pending.sent && !this._pending.sessionId) {
      // The command went out but its acceptance was lost with the socket:
      // the session list will show the run if it started.
      this._markIdle(PENDING_SESSION_ID);
      this._pending = null;
      this._emit({ type: "error", error: "Connection lost before the new session was named; see the session list" });
      this.listSessions().catch(() => {});
    }
    for (const rec of this._records.values()) {
      if (rec.watched) this._checkStatus(rec);
    }
    const out = this._outbox;
    this._outbox = [];
    for (const f of out) this._write(f);
    if (this._pending) this._pending.sent = true;
  }

  _write(frame) {
    const ws = this._ws;
    if (!ws || !this.connected) return false;
    ws.send(JSON.stringify(frame));
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
  send(command, { provider = "claude", sessionId, options = {} } = {}) {
    const requestId = "r" + this._now().toString(36) + "-" + (++this._seq).toString(36);
    const key = sessionId || PENDING_SESSION_ID;
    if (!sessionId) this._pending = { requestId, abort: false, sent: this.connected, sessionId: null };
    this._requests.set(requestId, { sessionId: key, accepted: false });
    this._markProcessing(key, { statusText: null });
    const frame = { type: provider + "-command", command, requestId, options: { ...options } };
    if (sessionId) {
      frame.sessionId = sessionId;
      frame.options.sessionId = sessionId;
      this._record(sessionId).watched = true; // the gateway subscribes the sender
    }
    this._send(frame);
    return requestId;
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
  // before those held, newer ones as if they had arrived live.
  async loadHistory(sessionId) {
    const rec = this._record(sessionId);
    const older = [];
    let after = 0;
    for (;;) {
      const body = await this._get(`/api/sessions/${encodeURIComponent(sessionId)}/events?after=${after}&limit=1000`);
      const evs = body.events ?? [];
      if (body.recovered === false && evs.length && evs[0].seq > rec.lastSeq + 1 && rec.lastSeq >= rec.firstSeq - 1) {
        // The events in between were trimmed from the store: nothing can
        // fill that hole, so the session goes on after it.
        for (const seq of rec.ahead.keys()) if (seq < evs[0].seq) rec.ahead.delete(seq);
        if (rec.events.length === 0) rec.firstSeq = evs[0].seq;
        rec.lastSeq = evs[0].seq - 1;
        this._emit({ type: "history-trimmed", sessionId, firstSeq: evs[0].seq });
      }
      for (const ev of evs) {
        if (ev.seq < rec.firstSeq) older.push(ev);
        else this._ingest(ev, { history: true });
      }
      if (evs.length === 0) break;
      after = evs[evs.length - 1].seq;
      if (after >= body.lastSeq) break;
    }
    if (older.length) {
      const fresh = older.filter((e) => e.seq < rec.firstSeq);
      rec.events = fresh.concat(rec.events);
      rec.firstSeq = rec.events[0].seq;
      this._emit({ type: "event", sessionId, event: null, history: true });
    }
    return this.events(sessionId);
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
    const req = this._requests.get(f.requestId);
    if (req) req.accepted = true;
    const rec = this._record(f.sessionId);
    rec.watched = true; // the gateway subscribed this socket
    if (req && req.sessionId === PENDING_SESSION_ID) this._named(f.requestId, f.sessionId);
    this._markProcessing(f.sessionId, { startedAt: f.startedAt, runId: f.startedAt });
    this._remember(f.sessionId, { provider: f.provider, state: "running", startedAt: f.startedAt });
  }

  // _named moves the pending entry to the session id the gateway minted.
  _named(requestId, sessionId) {
    const p = this._pending;
    if (!p || (requestId && p.requestId !== requestId) || (p.sessionId && p.sessionId !== sessionId)) return;
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
      // The events after lastSeq were trimmed: what is stored comes over REST.
      this.loadHistory(f.sessionId).catch((err) => this._emit({ type: "error", error: String(err), sessionId: f.sessionId }));
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
    for (const p of list) next.set(p.requestId, { ...p, seenAt: rec.perms.get(p.requestId)?.seenAt ?? now });
    for (const [id, p] of rec.perms) {
      if (!next.has(id) && askedAt != null && p.seenAt > askedAt) next.set(id, p);
    }
    const changed = next.size !== rec.perms.size || [...next.keys()].some((k) => !rec.perms.has(k));
    rec.perms = next;
    if (changed) this._emit({ type: "permissions", sessionId: rec.id });
  }

  _error(f) {
    const req = f.requestId ? this._requests.get(f.requestId) : null;
    if (req && !req.accepted) {
      // The command was refused: no run exists.
      this._requests.delete(f.requestId);
      this._markIdle(req.sessionId);
      if (req.sessionId === PENDING_SESSION_ID || this._pending?.requestId === f.requestId) this._pending = null;
    }
    this._emit({ type: "error", error: f.error, requestId: f.requestId, sessionId: f.sessionId ?? req?.sessionId, retryable: !!f.retryable });
  }

  // _ingest takes one event in: delivered when it is the next seq of its
  // session, held when it is ahead of a hole, dropped when already held.
  _ingest(ev, { history }) {
    const sid = ev.sessionId;
    if (!sid || typeof ev.seq !== "number") return;
    const rec = this._record(sid);
    if (ev.seq <= rec.lastSeq || rec.ahead.has(ev.seq)) return;
    if (ev.seq > rec.lastSeq + 1) {
      rec.ahead.set(ev.seq, ev);
      if (!history && !rec.resyncing && this.connected) {
        // A hole on one socket should not happen; ask for it again.
        rec.resyncing = true;
        this._checkStatus(rec);
      }
      return;
    }
    this._deliver(rec, ev, history);
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
      // An answer from another tab leaves no event: once the run moves on,
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
      case "session_created":
        this._named(null, ev.newSessionId || sid);
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
