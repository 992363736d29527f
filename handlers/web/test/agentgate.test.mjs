// Unit tests of the client library's state transitions, with a fake socket
// and clock: node --test handlers/web/test/ (also run by go test ./handlers).
import { test } from "node:test";
import assert from "node:assert/strict";
import { AgentGate, PENDING_SESSION_ID } from "../agentgate.js";

// FakeSocket stands in for the browser's WebSocket: tests open it, feed it
// frames and read what the client sent.
class FakeSocket {
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = false;
    this.readyState = 0; // CONNECTING
    FakeSocket.last = this;
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close() {
    this.closed = true;
    this.readyState = 2; // CLOSING: onclose follows
  }
  open() {
    this.readyState = 1;
    this.onopen();
  }
  recv(frame) {
    this.onmessage({ data: JSON.stringify(frame) });
  }
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose({ code });
  }
  sentOf(type) {
    return this.sent.filter((f) => f.type === type);
  }
}

// harness returns a connected client on a fake clock, the socket, and the
// changes it emitted.
function harness(options = {}) {
  const clock = { t: 1_000_000 };
  const timers = [];
  const client = new AgentGate({
    ...options,
    token: "tok", baseUrl: "http://gw", WebSocket: FakeSocket, now: () => clock.t, random: () => 1,
    setTimeout: (f, ms) => { timers.push({ f, ms }); return timers.length; },
    clearTimeout: () => {},
    fetch: async () => { throw new Error("no REST in this test"); },
  });
  const changes = [];
  client.subscribe((c) => changes.push(c));
  client.connect();
  const ws = FakeSocket.last;
  ws.open();
  return { client, ws, clock, timers, changes };
}

let seqs = {};
function ev(sessionId, kind, fields = {}) {
  seqs[sessionId] = (seqs[sessionId] ?? 0) + 1;
  return { seq: seqs[sessionId], sessionId, kind, runId: "5000", id: kind + seqs[sessionId], timestamp: new Date(0).toISOString(), provider: "claude", ...fields };
}

function startRun(ws, sid, runId, { isNew = false, requestId } = {}) {
  ws.recv({ type: "session-accepted", sessionId: sid, requestId, startedAt: Number(runId), isNewSession: isNew });
  ws.recv(ev(sid, "session-state-changed", { state: "running", runId, startedAt: Number(runId) }));
  if (isNew) ws.recv(ev(sid, "session_created", { newSessionId: sid, runId }));
}

function endRun(ws, sid, runId, { success = true, aborted = false } = {}) {
  ws.recv(ev(sid, "session-state-changed", { state: aborted ? "aborted" : success ? "completed" : "failed", runId }));
  ws.recv(ev(sid, "complete", { runId, success, aborted, exitCode: success || aborted ? 0 : 1, actualSessionId: sid }));
}

test("a new conversation is PENDING until the gateway names it, then moves to its id", () => {
  seqs = {};
  const { client, ws, changes } = harness();
  const requestId = client.send("hello", { options: { projectPath: "/p" } });
  assert.ok(client.processing.has(PENDING_SESSION_ID));
  const entry = client.processing.get(PENDING_SESSION_ID);
  assert.equal(ws.sentOf("claude-command")[0].command, "hello");
  assert.equal(ws.sentOf("claude-command")[0].sessionId, undefined);

  startRun(ws, "s1", "5000", { isNew: true, requestId });
  assert.ok(!client.processing.has(PENDING_SESSION_ID));
  assert.equal(client.processing.get("s1").startedAt, entry.startedAt, "the entry keeps its startedAt");
  assert.equal(changes.filter((c) => c.type === "session-created").length, 1, "named once");
  assert.deepEqual(client.events("s1").map((e) => e.seq), [1, 2]);

  endRun(ws, "s1", "5000");
  assert.equal(client.processing.size, 0);
  const ended = changes.filter((c) => c.type === "run-ended");
  assert.equal(ended.length, 1);
  assert.equal(ended[0].succeeded, true);
});

test("Stop on a pending conversation aborts it as soon as its id is known", () => {
  seqs = {};
  const { client, ws, changes } = harness();
  const requestId = client.send("long task");
  client.abort(PENDING_SESSION_ID);
  assert.equal(ws.sentOf("abort-session").length, 0, "no id to abort yet");
  startRun(ws, "s2", "5000", { isNew: true, requestId });
  assert.deepEqual(ws.sentOf("abort-session"), [{ type: "abort-session", sessionId: "s2" }]);
  endRun(ws, "s2", "5000", { success: false, aborted: true });
  assert.equal(client.processing.size, 0);
  const ended = changes.filter((c) => c.type === "run-ended");
  assert.equal(ended.length, 1);
  assert.equal(ended[0].succeeded, false, "an aborted run is not a success");
  assert.equal(ended[0].aborted, true);
});

test("a status reply asked before the run started does not end it (ifStartedBefore)", () => {
  seqs = {};
  const { client, ws, clock } = harness();
  seqs.s3 = 9;
  client.watch("s3");
  assert.equal(ws.sentOf("check-session-status").at(-1).lastSeq, 0);
  clock.t += 10;
  client.send("again", { sessionId: "s3" });
  // The idle reply to the question asked before the send arrives late.
  ws.recv({ type: "session-status", sessionId: "s3", isProcessing: false, state: "completed", lastSeq: 9 });
  assert.ok(client.processing.has("s3"), "the late idle reply is discarded");
  // A reply to a question asked now is believed.
  clock.t += 10;
  client.unwatch("s3");
  client.watch("s3");
  ws.recv({ type: "session-status", sessionId: "s3", isProcessing: false, state: "completed", lastSeq: 9 });
  assert.ok(!client.processing.has("s3"));
});

test("a background session ending leaves the viewed session's entry alone", () => {
  seqs = {};
  const { client, ws } = harness();
  startRun(ws, "view", "5000");
  startRun(ws, "bg", "5001");
  assert.equal(client.processing.size, 2);
  endRun(ws, "bg", "5001");
  assert.ok(client.processing.has("view"));
  assert.ok(!client.processing.has("bg"));
});

test("the terminal state disables Stop; the entry ends only with complete", () => {
  seqs = {};
  const { client, ws } = harness();
  startRun(ws, "s4", "5000");
  ws.recv(ev("s4", "status", { text: "Running Bash", canInterrupt: true }));
  assert.equal(client.processing.get("s4").statusText, "Running Bash");
  ws.recv(ev("s4", "session-state-changed", { state: "completed", runId: "5000" }));
  assert.equal(client.processing.get("s4").canInterrupt, false);
  ws.recv(ev("s4", "complete", { runId: "5000", success: true, aborted: false, exitCode: 0 }));
  assert.ok(!client.processing.has("s4"));
});

test("reconnect resumes every watched session from its lastSeq; duplicates and disorder are absorbed", () => {
  seqs = {};
  const { client, ws, timers } = harness();
  startRun(ws, "s5", "5000");
  ws.recv(ev("s5", "text", { role: "assistant", content: "one" }));
  ws.drop();
  assert.equal(client.connected, false);
  assert.equal(timers.length, 1, "a reconnect is scheduled");
  timers[0].f();
  const ws2 = FakeSocket.last;
  assert.notEqual(ws2, ws);
  assert.match(ws2.url, /token=tok/);
  ws2.open();
  assert.deepEqual(ws2.sentOf("check-session-status"), [{ type: "check-session-status", sessionId: "s5", lastSeq: 2 }]);
  ws2.recv({ type: "session-status", sessionId: "s5", isProcessing: true, startedAt: 5000, lastSeq: 4 });
  const e3 = ev("s5", "text", { role: "assistant", content: "two" });
  const e4 = ev("s5", "text", { role: "assistant", content: "three" });
  ws2.recv(e4); // ahead of a hole: held
  ws2.recv(e3);
  ws2.recv(e3); // a duplicate
  assert.deepEqual(client.events("s5").map((e) => e.seq), [1, 2, 3, 4]);
  assert.deepEqual(client.events("s5").map((e) => e.content).filter(Boolean), ["one", "two", "three"]);
});

test("backoff grows while the gateway is unreachable and resets once connected", () => {
  const { ws, timers } = harness();
  ws.drop();
  timers.at(-1).f();
  FakeSocket.last.drop();
  timers.at(-1).f();
  FakeSocket.last.drop();
  const delays = timers.map((t) => t.ms);
  assert.deepEqual(delays, [250, 500, 1000]);
  timers.at(-1).f();
  FakeSocket.last.open();
  FakeSocket.last.drop();
  assert.equal(timers.at(-1).ms, 250);
});

test("an older run's events replayed after the status reply do not touch the current run", () => {
  seqs = {};
  const { client, ws } = harness();
  client.watch("s6");
  ws.recv({ type: "session-status", sessionId: "s6", isProcessing: true, startedAt: 7000, lastSeq: 6 });
  ws.recv(ev("s6", "session-state-changed", { state: "running", runId: "5000", startedAt: 5000 }));
  endRun(ws, "s6", "5000");
  assert.ok(client.processing.has("s6"), "run 5000's complete does not end run 7000");
  ws.recv(ev("s6", "session-state-changed", { state: "running", runId: "7000", startedAt: 7000 }));
  endRun(ws, "s6", "7000");
  assert.ok(!client.processing.has("s6"));
});

test("pending permissions: from the status reply, live requests, cancellations, the run's end", () => {
  seqs = {};
  const { client, ws, clock } = harness();
  client.watch("s7");
  ws.recv({
    type: "session-status", sessionId: "s7", isProcessing: true, startedAt: 5000, lastSeq: 3,
    pendingPermissions: [{ requestId: "p2", toolName: "Bash", input: { command: "ls" }, sessionId: "s7", receivedAt: 2 }],
  });
  // Replayed history: p1 was answered long ago, p2 is the one pending.
  ws.recv(ev("s7", "session-state-changed", { state: "running", runId: "5000", startedAt: 5000 }));
  ws.recv(ev("s7", "permission_request", { requestId: "p1", toolName: "Bash", input: {} }));
  ws.recv(ev("s7", "permission_request", { requestId: "p2", toolName: "Bash", input: {} }));
  assert.deepEqual(client.permissions("s7").map((p) => p.requestId), ["p2"]);
  // Live: p3 asked, p2 cancelled.
  ws.recv(ev("s7", "permission_request", { requestId: "p3", toolName: "Write", input: {} }));
  ws.recv(ev("s7", "permission_cancelled", { requestId: "p2", reason: "timeout" }));
  assert.deepEqual(client.permissions("s7").map((p) => p.requestId), ["p3"]);
  // Another tab answers p3: the next event makes this client ask again.
  clock.t += 5;
  ws.recv(ev("s7", "tool_result", { toolId: "t", content: "ok" }));
  assert.deepEqual(ws.sentOf("get-pending-permissions"), [{ type: "get-pending-permissions", sessionId: "s7" }]);
  ws.recv({ type: "pending-permissions-response", sessionId: "s7", data: [] });
  assert.deepEqual(client.permissions("s7"), []);
  // Answered here: gone at once and sent.
  ws.recv(ev("s7", "permission_request", { requestId: "p4", toolName: "Bash", input: {} }));
  client.respond("p4", { allow: true, rememberEntry: "Bash" });
  assert.deepEqual(ws.sentOf("claude-permission-response"), [{ type: "claude-permission-response", requestId: "p4", allow: true, rememberEntry: "Bash" }]);
  assert.deepEqual(client.permissions("s7"), []);
  ws.recv(ev("s7", "permission_request", { requestId: "p5", toolName: "Bash", input: {} }));
  endRun(ws, "s7", "5000", { success: false });
  assert.deepEqual(client.permissions("s7"), [], "the run's end settles every request");
});

test("a refused command leaves no processing entry", () => {
  seqs = {};
  const { client, ws, changes } = harness();
  const requestId = client.send("x", { options: { projectPath: "/nope" } });
  ws.recv({ type: "error", error: "Invalid project path", requestId });
  assert.equal(client.processing.size, 0);
  assert.equal(changes.filter((c) => c.type === "error").length, 1);
});

test("a busy reply marks the session running and follows it", () => {
  seqs = {};
  const { client, ws, changes } = harness();
  const requestId = client.send("more", { sessionId: "s8" });
  ws.recv({ type: "session-busy", sessionId: "s8", requestId, startedAt: 4000, isProcessing: true, message: "busy" });
  assert.ok(client.processing.has("s8"));
  assert.equal(changes.filter((c) => c.type === "busy").length, 1);
});

test("a session list read before a run's complete does not bring the run back", async () => {
  seqs = {};
  const { client, ws } = harness();
  startRun(ws, "s9", "5000");
  endRun(ws, "s9", "5000");
  client._fetch = async () => ({
    ok: true,
    json: async () => ({ sessions: [{ id: "s9", isProcessing: true, runId: "5000", startedAt: 5000, lastSeq: 2 }] }),
  });
  await client.listSessions();
  assert.ok(!client.processing.has("s9"));
});

test("history over REST merges with live events by seq", async () => {
  seqs = {};
  const { client, ws } = harness();
  const stored = [];
  for (let i = 0; i < 4; i++) stored.push(ev("s10", "text", { role: "assistant", content: "h" + i }));
  client.watch("s10", { from: 2 });
  ws.recv({ type: "session-status", sessionId: "s10", isProcessing: false, lastSeq: 2 });
  ws.recv(stored[2]);
  client._fetch = async (url) => {
    const after = Number(new URL(url).searchParams.get("after"));
    return { ok: true, json: async () => ({ lastSeq: 4, events: stored.filter((e) => e.seq > after) }) };
  };
  await client.loadHistory("s10");
  assert.deepEqual(client.events("s10").map((e) => e.seq), [1, 2, 3, 4]);
  ws.recv(stored[3]); // the live copy of an event REST already gave
  assert.deepEqual(client.events("s10").map((e) => e.seq), [1, 2, 3, 4]);
});

test("history whose start was trimmed from the store goes on after the hole", async () => {
  seqs = {};
  const { client, changes } = harness();
  const stored = [];
  for (let i = 0; i < 6; i++) stored.push(ev("s11", "text", { role: "assistant", content: "t" + i }));
  client._fetch = async (url) => {
    const after = Number(new URL(url).searchParams.get("after"));
    const evs = stored.filter((e) => e.seq > Math.max(after, 3));
    return { ok: true, json: async () => ({ lastSeq: 6, events: evs, recovered: after >= 3 }) };
  };
  await client.loadHistory("s11");
  assert.deepEqual(client.events("s11").map((e) => e.seq), [4, 5, 6]);
  assert.equal(client.lastSeq("s11"), 6);
  assert.equal(changes.filter((c) => c.type === "history-trimmed").length, 1);
});

test("a REST read refused with 429 is tried again after its Retry-After", async () => {
  seqs = {};
  const { client } = harness();
  const stored = [ev("s12", "text", { role: "assistant", content: "x" })];
  let calls = 0;
  client._fetch = async (url) => {
    calls++;
    if (calls < 3) {
      return { ok: false, status: 429, headers: { get: () => "0.01" }, json: async () => ({ error: "too many event reads" }) };
    }
    const after = Number(new URL(url).searchParams.get("after"));
    return { ok: true, status: 200, json: async () => ({ lastSeq: 1, events: stored.filter((e) => e.seq > after) }) };
  };
  await client.loadHistory("s12");
  assert.equal(calls, 3);
  assert.deepEqual(client.events("s12").map((e) => e.seq), [1]);
});

// settle lets the client's promises (REST reads, reloads) run.
async function settle() {
  for (let i = 0; i < 30; i++) await new Promise((r) => setImmediate(r));
}

// restOf serves GET /api/sessions/:id/events from stored (a Redis that lost
// some seqs: they are simply absent) with the session's lastSeq, as the
// gateway computes recovered.
function restOf(stored, lastSeq) {
  return async (url) => {
    const u = new URL(url);
    const after = Number(u.searchParams.get("after"));
    const limit = Number(u.searchParams.get("limit") ?? 100);
    const evs = stored.filter((e) => e.seq > after).slice(0, limit);
    const recovered = after === lastSeq || (evs.length > 0 && evs[0].seq === after + 1 && evs.at(-1).seq === after + evs.length);
    return { ok: true, status: 200, json: async () => ({ lastSeq, events: evs, recovered }) };
  };
}

test("a hole in the middle of the stored events (lostUpTo) is skipped: the session goes on after it", async () => {
  seqs = {};
  const { client, ws, changes } = harness();
  const all = [];
  for (let i = 0; i < 8; i++) all.push(ev("g1", "text", { role: "assistant", content: "g" + (i + 1) }));
  client.watch("g1");
  ws.recv(all[0]);
  ws.recv(all[1]);
  // Redis lost seqs 4 and 5; the page then reconnects and is told so.
  client._fetch = restOf(all.filter((e) => e.seq !== 4 && e.seq !== 5), 8);
  ws.recv({ type: "session-status", sessionId: "g1", isProcessing: true, startedAt: 5000, lastSeq: 8, recovered: false });
  const live9 = ev("g1", "text", { role: "assistant", content: "g9" });
  ws.recv(live9);
  await settle();
  assert.deepEqual(client.events("g1").map((e) => e.seq), [1, 2, 3, 6, 7, 8, 9]);
  assert.equal(client.lastSeq("g1"), 9);
  const gap = changes.filter((c) => c.type === "history-gap");
  assert.equal(gap.length, 1);
  assert.deepEqual([gap[0].from, gap[0].to], [4, 5]);
  ws.recv(ev("g1", "text", { role: "assistant", content: "g10" }));
  assert.equal(client.lastSeq("g1"), 10, "live events go on being delivered");
});

test("events lost at the end of the stored ones are skipped too", async () => {
  seqs = {};
  const { client, ws } = harness();
  const all = [];
  for (let i = 0; i < 5; i++) all.push(ev("g2", "text", { role: "assistant", content: "x" + (i + 1) }));
  client.watch("g2");
  client._fetch = restOf(all.slice(0, 3), 5); // 4 and 5 lost
  ws.recv({ type: "session-status", sessionId: "g2", isProcessing: true, startedAt: 5000, lastSeq: 5, recovered: false });
  ws.recv(ev("g2", "text", { role: "assistant", content: "x6" }));
  await settle();
  assert.deepEqual(client.events("g2").map((e) => e.seq), [1, 2, 3, 6]);
  ws.recv(ev("g2", "text", { role: "assistant", content: "x7" }));
  assert.equal(client.lastSeq("g2"), 7);
});

test("a history reload that fails is tried again with backoff; events held ahead are bounded", async () => {
  seqs = {};
  const { client, ws, timers } = harness({ maxAhead: 50 });
  const all = [];
  for (let i = 0; i < 3; i++) all.push(ev("g3", "text", { role: "assistant", content: "y" + (i + 1) }));
  client.watch("g3");
  let down = true;
  const rest = restOf(all, 3);
  client._fetch = async (url) => {
    if (down) return { ok: false, status: 503, headers: { get: () => null }, json: async () => ({ error: "store unavailable" }) };
    return rest(url);
  };
  ws.recv({ type: "session-status", sessionId: "g3", isProcessing: true, startedAt: 5000, lastSeq: 3, recovered: false });
  await settle();
  const retry = timers.find((t) => t.ms >= 500 && t.ms <= 30_000 && t.ms !== 30_000);
  assert.ok(retry, "a retry of the reload is scheduled");
  for (let i = 0; i < 120; i++) ws.recv(ev("g3", "text", { role: "assistant", content: "live" }));
  assert.ok(client._records.get("g3").ahead.size <= 50, "events held ahead of the hole are bounded");
  down = false;
  retry.f();
  await settle();
  assert.deepEqual(client.events("g3").map((e) => e.seq).slice(0, 3), [1, 2, 3]);
  // What was dropped comes again from the gateway (the resume asked anew).
  assert.ok(ws.sentOf("check-session-status").length >= 2, "the session was resumed again");
});

test("a token refused (4401) stops the reconnects and gives back the command not answered", async () => {
  seqs = {};
  const { client, ws, timers, changes } = harness();
  client.send("follow-up", { sessionId: "t1" });
  ws.drop(4401);
  assert.equal(client.tokenRefused, true);
  const opened = FakeSocket.last;
  for (const t of timers.filter((t) => t.ms < 30_000)) t.f();
  assert.equal(FakeSocket.last, opened, "no socket is opened with a refused token");
  assert.equal(client.processing.size, 0, "the prompt does not look running");
  const failed = changes.filter((c) => c.type === "send-failed");
  assert.equal(failed.length, 1);
  assert.equal(failed[0].command, "follow-up");
  assert.ok(changes.some((c) => c.type === "connection" && c.tokenRefused));
  client.setToken("fresh");
  assert.notEqual(FakeSocket.last, opened, "a new token connects again");
  assert.match(FakeSocket.last.url, /token=fresh/);
});

test("an upgrade refused while REST answers 401 stops the reconnects too", async () => {
  seqs = {};
  const { client, ws, timers } = harness();
  ws.drop(1001); // the gateway restarted
  client._fetch = async () => ({ ok: false, status: 401, json: async () => ({ error: "invalid token" }) });
  timers.at(-1).f();
  const refused = FakeSocket.last;
  refused.drop(1006); // never opened: the upgrade got 401
  await settle();
  assert.equal(client.tokenRefused, true);
  for (const t of timers) t.f();
  assert.equal(FakeSocket.last, refused, "no more upgrades with that token");
});

test("a command with no answer within ackTimeout, or on a socket that closes first, comes back", async () => {
  seqs = {};
  const { client, ws, timers, changes } = harness();
  const r1 = client.send("lost in a dead socket", { sessionId: "a1" });
  const ack = timers.find((t) => t.ms === 30_000);
  assert.ok(ack, "the answer is awaited for 30 s");
  ack.f();
  let failed = changes.filter((c) => c.type === "send-failed");
  assert.deepEqual(failed.map((c) => [c.requestId, c.command]), [[r1, "lost in a dead socket"]]);
  assert.ok(!client.processing.has("a1"));

  const r2 = client.send("and this one", { sessionId: "a1" });
  ws.drop();
  failed = changes.filter((c) => c.type === "send-failed");
  assert.deepEqual(failed.map((c) => c.requestId), [r1, r2]);
  timers.filter((t) => t.ms < 30_000).at(-1).f();
  const ws2 = FakeSocket.last;
  ws2.open();
  assert.equal(ws2.sentOf("claude-command").length, 0, "not sent twice: it may have started");
  assert.ok(!client.processing.has("a1"));
});

test("a command written while the socket is closing waits for the next socket", () => {
  seqs = {};
  const { client, ws, timers } = harness();
  ws.readyState = 2; // CLOSING: its close event has not come yet
  client.send("during close", { sessionId: "a2" });
  assert.equal(ws.sentOf("claude-command").length, 0);
  ws.drop();
  timers.filter((t) => t.ms < 30_000).at(-1).f();
  FakeSocket.last.open();
  assert.deepEqual(FakeSocket.last.sentOf("claude-command").map((f) => f.command), ["during close"]);
});

test("a command over the frame limit is refused before it is sent", () => {
  seqs = {};
  const { client, ws } = harness();
  assert.throws(() => client.send("x".repeat(1 << 20), { sessionId: "a3" }), (err) => err.code === "too-large");
  assert.equal(ws.sentOf("claude-command").length, 0);
  assert.equal(client.processing.size, 0);
});

test("a session_created of another session does not name the pending new chat", async () => {
  seqs = {};
  const { client, ws, changes } = harness();
  const requestId = client.send("new chat");
  // Another session's history, read meanwhile, holds its own session_created.
  const other = [ev("old", "session-state-changed", { state: "running", runId: "4000", startedAt: 4000 }), ev("old", "session_created", { newSessionId: "old", runId: "4000" })];
  client._fetch = restOf(other, 2);
  await client.loadHistory("old");
  ws.recv(ev("bg", "session_created", { newSessionId: "bg", runId: "4500" })); // a live one of a watched session
  assert.equal(changes.filter((c) => c.type === "session-created").length, 0);
  assert.ok(client.processing.has(PENDING_SESSION_ID));
  startRun(ws, "mine", "5000", { isNew: true, requestId });
  assert.deepEqual(changes.filter((c) => c.type === "session-created").map((c) => c.sessionId), ["mine"]);
});

test("a permission answered offline is sent before the status checks and not shown again", () => {
  seqs = {};
  const { client, ws, timers } = harness();
  startRun(ws, "p1", "5000");
  ws.recv(ev("p1", "permission_request", { requestId: "q1", toolName: "Bash", input: {} }));
  ws.drop();
  client.respond("q1", { allow: true });
  timers.at(-1).f();
  const ws2 = FakeSocket.last;
  ws2.open();
  const types = ws2.sent.map((f) => f.type);
  assert.ok(types.indexOf("claude-permission-response") < types.indexOf("check-session-status"), types.join(","));
  ws2.recv({ type: "session-status", sessionId: "p1", isProcessing: true, startedAt: 5000, lastSeq: 4,
    pendingPermissions: [{ requestId: "q1", toolName: "Bash", input: {}, sessionId: "p1", receivedAt: 1 }] });
  assert.deepEqual(client.permissions("p1"), [], "the answered request is not shown again");
});
