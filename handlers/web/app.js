// The bundled page: sessions, the viewed conversation, its activity
// indicator and permission requests, the composer, and a terminal tab. All
// protocol state lives in the AgentGate client; this file only renders it.
// What the page shows about a run (indicator, Stop, Send) is derived from
// the viewed session's processing entry alone.
import { AgentGate, PENDING_SESSION_ID } from "/agentgate.js";
import { openTerminal } from "./terminal.js";

const $ = (id) => document.getElementById(id);

// The token comes in ?token= once and is kept for later visits, out of the
// address bar (and so out of history and screenshots). A link with another
// user's token does not switch this browser silently: a page anyone sent
// could otherwise sign it in as them, and what is typed here (prompts,
// keystrokes in a terminal whose home they control) would go to them.
const params = new URLSearchParams(location.search);
const offered = params.get("token");
if (offered) {
  const current = localStorage.getItem("agentgate.token");
  const from = tokenUser(current), to = tokenUser(offered);
  if (!current || current === offered || (from !== "" && from === to) ||
      confirm(`This link signs this browser in as "${to || "another user"}" instead of "${from || "the current user"}". Switch?`)) {
    // The user a token names is read unverified (the page cannot check a
    // signature): the token it replaces is kept until the gateway takes
    // the new one, so that a forged link of the same user's name cannot
    // lock this browser out (see restorePrevious).
    if (current && current !== offered) localStorage.setItem("agentgate.token.previous", current);
    localStorage.setItem("agentgate.token", offered);
  }
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
}
let token = localStorage.getItem("agentgate.token") || "";

// The gateway's largest client frame (--max-message-size), which it writes
// into the page: a larger prompt or terminal frame would close the socket.
const maxMessageSize = Number(document.querySelector('meta[name="agentgate-max-message-size"]')?.content) || undefined;

const client = new AgentGate({ token, maxMessageSize });
window.agentgate = client; // for the console and for tests

// Who this page acts as, from the gateway (in platform mode there is no
// token to read it from).
// A token the gateway refuses would leave the page "connecting…" for good
// (a browser does not show a socket's 401): it says so instead, at load and
// when the token expires while the page is open (close 4401, then refused
// upgrades): the client stops reconnecting with it.
let tokenRefused = false;
client.user().then((u) => {
  localStorage.removeItem("agentgate.token.previous");
  $("user").textContent = u.username ? "Signed in as " + u.username : "";
}).catch((e) => {
  if (e.status === 401 && !restorePrevious()) showTokenRefused();
});
// restorePrevious puts back the token a link replaced, once, when the
// gateway refuses the link's: it reports whether the page reloads with it.
function restorePrevious() {
  const previous = localStorage.getItem("agentgate.token.previous");
  localStorage.removeItem("agentgate.token.previous");
  if (!previous || previous === token) return false;
  localStorage.setItem("agentgate.token", previous);
  location.reload();
  return true;
}
function showTokenRefused() {
  tokenRefused = true;
  $("connection").dataset.connected = "false";
  $("connection").textContent = refusedText(token);
}
function refusedText(t) {
  return t
    ? "token refused (expired, or from another agentgate): open the address agentgate printed"
    : "no token: open the address agentgate printed (…/?token=…)";
}
// A token stored by another tab (opened with a new ?token=) is taken here too.
addEventListener("storage", (e) => {
  if (e.key !== "agentgate.token" || !e.newValue || e.newValue === token) return;
  token = e.newValue;
  tokenRefused = false;
  client.setToken(token);
  terminal?.setToken(token);
});

// tokenUser reads the user a token names (its "sub", else the "username" of
// a token of Claude Code UI's login), for the question above only: the
// gateway checks the signature.
function tokenUser(t) {
  try {
    const part = (t || "").split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part));
    return String(claims.sub || claims.username || "");
  } catch {
    return "";
  }
}

// Settings the user picks once are kept per browser.
const kept = ["provider", "project", "permission-mode", "allowed-tools", "model"];
for (const id of kept) {
  const v = localStorage.getItem("agentgate." + id);
  if (v !== null) $(id).value = v;
  $(id).addEventListener("change", () => localStorage.setItem("agentgate." + id, $(id).value));
}

// viewed is the session on screen: an id, PENDING_SESSION_ID for a new
// conversation not yet named, or null for an empty new chat.
let viewed = decodeURIComponent((location.hash.match(/^#\/s\/(.+)$/) || [])[1] || "") || null;
const loaded = new Set(); // sessions whose history was read

// A run's start carries its prompt (session-state-changed{running, prompt}),
// which every tab and device of the user sees. Prompts this tab sent are
// also kept here (and in localStorage) with the seq they followed: shown
// until the run's start comes, and for the runs of before the gateway kept
// prompts; the first also names the session in the list.
// What is stored is bounded: the prompts of the last PROMPT_SESSIONS
// sessions written, PROMPT_ENTRIES each; a full storage drops the oldest
// sessions' prompts, and when it still refuses, the prompts stay in this
// tab's memory: storage never stops a send.
const PROMPTS = "agentgate.prompts.";
const PROMPT_ORDER = "agentgate.promptOrder"; // session ids, the last written last
const PROMPT_SESSIONS = 50;
const PROMPT_ENTRIES = 200;
const memPrompts = new Map(); // sid -> prompts this tab could not store
function prompts(sid) {
  if (memPrompts.has(sid)) return memPrompts.get(sid);
  try {
    const list = JSON.parse(localStorage.getItem(PROMPTS + sid) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}
function promptOrder() {
  let order = [];
  try {
    order = JSON.parse(localStorage.getItem(PROMPT_ORDER) || "[]");
  } catch {}
  if (!Array.isArray(order)) order = [];
  // Sessions stored before the order was kept (or by another tab's race)
  // come first: the oldest.
  const known = new Set(order);
  const stored = [];
  for (let i = 0; i < localStorage.length; i++) {
    const k = localStorage.key(i);
    if (k?.startsWith(PROMPTS) && !known.has(k.slice(PROMPTS.length))) stored.push(k.slice(PROMPTS.length));
  }
  return [...stored, ...order.filter((sid) => localStorage.getItem(PROMPTS + sid) !== null)];
}
function setPrompts(sid, list) {
  if (list.length > PROMPT_ENTRIES) list = [list[0], ...list.slice(-(PROMPT_ENTRIES - 1))]; // the first names the session
  const value = JSON.stringify(list);
  try {
    let order = promptOrder().filter((x) => x !== sid);
    for (;;) {
      try {
        localStorage.setItem(PROMPTS + sid, value);
        break;
      } catch (err) {
        // Full: the oldest session's prompts make room.
        const oldest = order.shift();
        if (oldest === undefined) throw err;
        localStorage.removeItem(PROMPTS + oldest);
      }
    }
    order.push(sid);
    while (order.length > PROMPT_SESSIONS) localStorage.removeItem(PROMPTS + order.shift());
    try {
      localStorage.setItem(PROMPT_ORDER, JSON.stringify(order));
    } catch {}
    memPrompts.delete(sid);
  } catch {
    memPrompts.set(sid, list);
    try {
      localStorage.removeItem(PROMPTS + sid); // an older copy would hide this one
    } catch {}
  }
}
function addPrompt(sid, p) {
  setPrompts(sid, [...prompts(sid), p]);
}
function removePrompts(sid) {
  memPrompts.delete(sid);
  try {
    localStorage.removeItem(PROMPTS + sid);
  } catch {}
}
function titleOf(s) {
  const first = prompts(s.id)[0];
  return first ? first.text.slice(0, 60) : (s.provider || "claude") + " " + s.id.slice(0, 8);
}

function view(sid) {
  // A session left while idle is no longer followed (a reconnect resumes
  // only what is watched); a running one stays followed for its marker.
  if (viewed && viewed !== sid && viewed !== PENDING_SESSION_ID && !client.isRunning(viewed)) client.unwatch(viewed);
  viewed = sid;
  if (sid && sid !== PENDING_SESSION_ID) {
    history.replaceState(null, "", location.pathname + location.search + "#/s/" + encodeURIComponent(sid));
    open(sid);
  } else {
    history.replaceState(null, "", location.pathname + location.search);
  }
  renderAll();
}

// open reads a session's history once, then follows it live.
async function open(sid) {
  if (!loaded.has(sid)) {
    loaded.add(sid);
    try {
      await client.loadHistory(sid);
    } catch (err) {
      notice("Could not load the history: " + err.message);
    }
  }
  client.watch(sid);
  if (viewed === sid) renderConversation(true);
}

// ---- rendering ----

function renderAll() {
  renderSessions();
  renderConversation(true);
  renderPermissions();
  renderActivity();
}

function renderSessions() {
  const ul = $("session-list");
  ul.textContent = "";
  const items = client.sessions();
  if (viewed === PENDING_SESSION_ID) items.unshift({ id: PENDING_SESSION_ID, provider: $("provider").value, pending: true });
  for (const s of items) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.session = s.id;
    if (s.id === viewed) b.setAttribute("aria-current", "page");
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = s.pending ? "New chat…" : titleOf(s);
    b.append(title);
    if (client.isRunning(s.id)) {
      const mark = document.createElement("span");
      mark.className = "running";
      mark.textContent = "● running";
      b.append(mark);
    }
    b.onclick = () => view(s.id);
    li.append(b);
    ul.append(li);
  }
}

let renderedSeq = 0;
let renderedFor = null;

// renderConversation draws the viewed session's events; it appends when only
// new events came, and redraws otherwise.
function renderConversation(full) {
  const log = $("conversation");
  const sid = viewed;
  const events = sid && sid !== PENDING_SESSION_ID ? client.events(sid) : [];
  // A prompt of this tab's whose run's start came shows as the start: each
  // start stands for one, the last sent before it with its text.
  const local = sid ? prompts(sid) : [];
  const taken = new Set();
  for (const ev of events.filter(servedPrompt)) {
    let match = -1;
    local.forEach((p, i) => {
      if (!taken.has(i) && p.afterSeq < ev.seq && p.text === ev.prompt) match = i;
    });
    if (match >= 0) taken.add(match);
  }
  const ps = local.filter((_, i) => !taken.has(i));
  if (full || renderedFor !== sid || (events.length && events[0].seq > renderedSeq + 1 && renderedSeq > 0)) {
    log.textContent = "";
    renderedSeq = 0;
    renderedFor = sid;
    for (const p of ps.filter((p) => p.afterSeq <= 0)) log.append(localPrompt(p));
  }
  for (const ev of events) {
    if (ev.seq <= renderedSeq) continue;
    if (servedPrompt(ev)) {
      // Drawn before its run's start came: the start takes its place.
      const drawn = [...log.querySelectorAll(".line.user[data-after]")].filter(
        (el) => Number(el.dataset.after) < ev.seq && el.textContent === ev.prompt,
      );
      drawn.at(-1)?.remove();
    }
    const el = renderEvent(ev);
    if (el) log.append(el);
    renderedSeq = ev.seq;
    for (const p of ps.filter((p) => p.afterSeq === ev.seq)) log.append(localPrompt(p));
  }
  if (!log.firstChild) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = sid ? "" : "Start a conversation: type a message below.";
    log.append(empty);
  }
  log.scrollTop = log.scrollHeight;
}

function line(cls, text, seq) {
  const d = document.createElement("div");
  d.className = "line " + cls;
  d.textContent = text;
  if (seq) d.dataset.seq = seq;
  return d;
}

// servedPrompt reports whether ev is a run's start with its prompt.
function servedPrompt(ev) {
  return ev.kind === "session-state-changed" && ev.state === "running" && typeof ev.prompt === "string" && ev.prompt !== "";
}

// localPrompt is the line of a prompt this tab sent.
function localPrompt(p) {
  const el = line("user", p.text);
  el.dataset.after = p.afterSeq;
  return el;
}

function renderEvent(ev) {
  if (servedPrompt(ev)) return line("user", ev.prompt, ev.seq);
  switch (ev.kind) {
    case "text":
      return line(ev.role === "user" ? "user" : "assistant", ev.content, ev.seq);
    case "thinking":
      return line("thinking", ev.content, ev.seq);
    case "tool_use":
      return line("tool_use", ev.toolName + " " + JSON.stringify(ev.toolInput ?? {}), ev.seq);
    case "tool_result":
      return line("tool_result", typeof ev.content === "string" ? ev.content : JSON.stringify(ev.content), ev.seq);
    case "error":
      return line("error", ev.content, ev.seq);
    case "complete": {
      const outcome = ev.aborted ? "aborted" : ev.success ? "succeeded" : "failed";
      const text = ev.aborted ? "Stopped" : ev.success ? "Done" : "Failed (exit " + ev.exitCode + ")";
      const d = line("complete", text, ev.seq);
      d.dataset.outcome = outcome;
      return d;
    }
    default:
      return null; // lifecycle, status and permission events show elsewhere
  }
}

function renderPermissions() {
  const box = $("permissions");
  box.textContent = "";
  if (!viewed || viewed === PENDING_SESSION_ID) return;
  for (const p of client.permissions(viewed)) {
    const card = document.createElement("div");
    card.className = "permission";
    card.setAttribute("role", "group");
    card.setAttribute("aria-label", "Permission request: " + p.toolName);
    card.dataset.request = p.requestId;
    const what = document.createElement("div");
    what.textContent = "Claude wants to use " + p.toolName;
    const input = document.createElement("pre");
    input.textContent = JSON.stringify(p.input ?? {}, null, 2);
    const remember = document.createElement("label");
    const check = document.createElement("input");
    check.type = "checkbox";
    remember.append(check, " Remember " + p.toolName + " for this run");
    const allow = document.createElement("button");
    allow.type = "button";
    allow.textContent = "Allow";
    allow.onclick = () => client.respond(p.requestId, { allow: true, rememberEntry: check.checked ? p.toolName : undefined });
    const deny = document.createElement("button");
    deny.type = "button";
    deny.textContent = "Deny";
    deny.onclick = () => client.respond(p.requestId, { allow: false });
    card.append(what, input, allow, deny, remember);
    box.append(card);
  }
}

// The activity indicator exists only while the viewed session's entry does.
function renderActivity() {
  const slot = $("activity-slot");
  const entry = viewed ? client.processing.get(viewed) : null;
  $("send").disabled = !!entry;
  if (!entry) {
    slot.textContent = "";
    return;
  }
  let box = slot.querySelector(".activity");
  if (!box) {
    box = document.createElement("div");
    box.className = "activity";
    const status = document.createElement("div");
    status.setAttribute("role", "status");
    status.className = "activity-status";
    const spinner = document.createElement("span");
    spinner.className = "spinner";
    spinner.setAttribute("aria-hidden", "true");
    const label = document.createElement("span");
    label.className = "label";
    const elapsed = document.createElement("span");
    elapsed.className = "elapsed";
    status.append(spinner, label, " ", elapsed);
    const stop = document.createElement("button");
    stop.type = "button";
    stop.textContent = "Stop";
    stop.onclick = () => client.abort(viewed);
    box.append(status, stop);
    slot.append(box);
  }
  box.querySelector(".label").textContent = entry.statusText || "Working…";
  box.querySelector(".elapsed").textContent = elapsedText(entry.startedAt);
  box.querySelector("button").hidden = !entry.canInterrupt;
}

function elapsedText(startedAt) {
  const s = Math.max(0, Math.floor((Date.now() - startedAt) / 1000));
  return s < 60 ? s + "s" : Math.floor(s / 60) + "m " + (s % 60) + "s";
}
setInterval(() => {
  const el = document.querySelector(".activity .elapsed");
  const entry = viewed && client.processing.get(viewed);
  if (el && entry) el.textContent = elapsedText(entry.startedAt);
}, 1000);

function notice(text) {
  const d = document.createElement("div");
  d.className = "notice";
  d.setAttribute("role", "alert");
  d.textContent = text;
  $("chat-panel").prepend(d);
  setTimeout(() => d.remove(), 8000);
}

function celebrate(sid) {
  const d = document.createElement("div");
  d.className = "celebrate";
  const s = client.sessions().find((x) => x.id === sid) ?? { id: sid };
  d.textContent = "Run succeeded: " + titleOf(s);
  document.body.append(d);
  const title = document.title;
  document.title = "✓ " + title;
  setTimeout(() => {
    d.remove();
    document.title = title;
  }, 4000);
}

// ---- client changes ----

client.subscribe((c) => {
  switch (c.type) {
    case "connection":
      if (c.tokenRefused) showTokenRefused();
      if (tokenRefused && !c.connected) break; // the reason stays on screen
      if (c.connected) tokenRefused = false;
      $("connection").dataset.connected = String(c.connected);
      $("connection").textContent = c.connected ? "connected" : "reconnecting…";
      // Sessions may have started or ended elsewhere while this tab was away.
      if (c.connected) client.listSessions().catch(() => {});
      break;
    case "processing":
      renderSessions();
      if (c.sessionId === viewed) renderActivity();
      break;
    case "event":
      if (c.sessionId === viewed) renderConversation(c.event === null);
      break;
    case "permissions":
      if (c.sessionId === viewed) renderPermissions();
      break;
    case "session-created": {
      // A new conversation is named: its prompt moves to its id, and the
      // page shows it there if it still shows the pending chat.
      const ps = prompts(PENDING_SESSION_ID);
      removePrompts(PENDING_SESSION_ID);
      if (ps.length) setPrompts(c.sessionId, [...prompts(c.sessionId), ...ps]);
      loaded.add(c.sessionId); // every event comes live from seq 1
      if (viewed === PENDING_SESSION_ID) view(c.sessionId);
      renderSessions();
      break;
    }
    case "run-ended":
      if (c.live && c.succeeded) celebrate(c.sessionId);
      break;
    case "sessions":
      renderSessions();
      break;
    case "history-trimmed":
      if (c.sessionId === viewed) notice("The oldest events of this session are no longer stored.");
      break;
    case "history-gap":
      if (c.sessionId === viewed) notice(`Some events of this session were lost by the store (${c.from === c.to ? "event " + c.from : "events " + c.from + "–" + c.to}); it goes on after them.`);
      break;
    case "send-failed": {
      // The message comes back: out of the conversation, into the composer.
      const sid = c.sessionId;
      const left = prompts(sid).filter((p) => p.requestId !== c.requestId);
      if (left.length) setPrompts(sid, left);
      else removePrompts(sid);
      if (!$("message").value.trim()) $("message").value = c.command;
      if (sid === PENDING_SESSION_ID && viewed === PENDING_SESSION_ID) view(null);
      else renderAll();
      if (!c.reported) notice(c.error);
      break;
    }
    case "busy":
      notice(c.message || "The session is busy");
      break;
    case "error":
      if (!c.sessionId || c.sessionId === viewed || c.sessionId === PENDING_SESSION_ID) notice(c.error);
      break;
  }
});

// ---- user actions ----

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("message").value.trim();
  if (!text || (viewed && client.isRunning(viewed))) return;
  const options = {};
  if ($("project").value.trim()) options.projectPath = $("project").value.trim();
  if ($("model").value.trim()) options.model = $("model").value.trim();
  if ($("permission-mode").value) options.permissionMode = $("permission-mode").value;
  const allowed = $("allowed-tools").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (allowed.length) options.toolsSettings = { allowedTools: allowed, disallowedTools: [], skipPermissions: false };
  const existing = viewed && viewed !== PENDING_SESSION_ID ? viewed : null;
  const info = existing && client.sessions().find((s) => s.id === existing);
  const provider = info?.provider || $("provider").value;
  const afterSeq = existing ? client.lastSeq(existing) : 0;
  let requestId;
  try {
    // Sent first: nothing stored (or not) here may keep it from going.
    requestId = client.send(text, { provider, sessionId: existing ?? undefined, options });
  } catch (err) {
    // Too large for the gateway's frames, or the token refused: the text
    // stays in the composer.
    notice(err.message);
    return;
  }
  if (existing) {
    addPrompt(existing, { afterSeq, text, requestId });
  } else {
    removePrompts(PENDING_SESSION_ID);
    addPrompt(PENDING_SESSION_ID, { afterSeq: 0, text, requestId });
    viewed = PENDING_SESSION_ID;
  }
  $("message").value = "";
  renderAll();
});

$("message").addEventListener("keydown", (e) => {
  // Enter that ends an IME composition is not a send: Safari fires it after
  // compositionend with isComposing false, and keyCode 229.
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});

$("new-chat").onclick = () => view(null);

// Tabs: Chat and Terminal; the terminal opens on first view.
let terminal = null;
function selectTab(which) {
  for (const [tab, panel] of [["tab-chat", "chat-panel"], ["tab-terminal", "terminal-panel"]]) {
    const on = tab === which;
    $(tab).setAttribute("aria-selected", String(on));
    $(tab).tabIndex = on ? 0 : -1;
    $(panel).hidden = !on;
  }
  sessionStorage.setItem("agentgate.tab", which);
  if (which === "tab-terminal") {
    if (!terminal) {
      terminal = openTerminal($("terminal"), {
        token, maxMessageSize, status: $("terminal-connection"), refusedText,
        projectPath: () => $("project").value.trim(),
      });
      window.agentgateTerminal = terminal; // for tests
    }
    terminal.focus();
  }
}
$("tab-chat").onclick = () => selectTab("tab-chat");
$("tab-terminal").onclick = () => selectTab("tab-terminal");
document.querySelector("[role=tablist]").addEventListener("keydown", (e) => {
  if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
    const next = document.activeElement === $("tab-chat") ? "tab-terminal" : "tab-chat";
    selectTab(next);
    $(next).focus();
  }
});

// ---- start ----

client.connect(); // lists the sessions once connected
if (viewed) open(viewed);
renderAll();
if (sessionStorage.getItem("agentgate.tab") === "tab-terminal") selectTab("tab-terminal");
