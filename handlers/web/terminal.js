// The Terminal tab: xterm.js (vendored, see scripts/vendor-xterm.sh) on
// /shell. The terminal's shellId is kept in sessionStorage, so a reload of
// this tab reattaches to the same bash and replays its output; a dropped
// socket reconnects and asks only for the chunks after the last seq shown.
import { Terminal } from "./vendor/xterm/xterm.mjs";
import { FitAddon } from "./vendor/xterm/addon-fit.mjs";

function shellId() {
  let id = sessionStorage.getItem("agentgate.shellId");
  if (!id) {
    id = "tab-" + Math.random().toString(36).slice(2, 12);
    sessionStorage.setItem("agentgate.shellId", id);
  }
  return id;
}

// inputPieces cuts an input (a paste) into pieces that each fit in one frame
// under the gateway's limit (--max-message-size; a larger frame closes the
// socket with 1009 and is lost). The gateway takes the pieces in order, as
// keystrokes. A piece is at most a sixteenth of the limit in UTF-16 units,
// so that its JSON (up to 6 bytes a unit for control characters) fits
// whatever it holds; a surrogate pair is never cut.
export function inputPieces(data, maxMessageSize = 1 << 20) {
  const size = Math.max(256, Math.min(65536, Math.floor(maxMessageSize / 16)));
  if (data.length <= size) return [data];
  const out = [];
  for (let i = 0; i < data.length; ) {
    let end = Math.min(data.length, i + size);
    const c = data.charCodeAt(end - 1);
    if (end < data.length && c >= 0xd800 && c <= 0xdbff) end--;
    out.push(data.slice(i, end));
    i = end;
  }
  return out;
}

// openTerminal opens the terminal in host. status (optional) is an element
// that shows whether the terminal's socket is connected; refusedText(token)
// the words for a token the gateway refused.
export function openTerminal(host, { token, projectPath, maxMessageSize, status, refusedText }) {
  const term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 13, scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(host);
  fit.fit();

  let ws = null;
  let lastSeq = null; // null: nothing shown yet, replay everything stored
  let lastGen = null; // the terminal generation lastSeq is of (a notice's gen)
  let exited = false;
  let attempt = 0;
  let shownError = null; // the text of an error frame just shown
  let refused = false; // the gateway refused the token: no reconnect with it
  let timer = null;

  function setStatus(connected, text) {
    if (!status) return;
    status.dataset.connected = String(connected);
    status.textContent = text;
  }

  // Keystrokes typed while the socket is not open yet (the page just
  // loaded) or is reconnecting wait here, bounded, and go out after the
  // init: they were lost before.
  let typedAhead = [];
  let typedBytes = 0;

  function send(frame) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(frame));
    } else if (frame.type === "input" && typedBytes + frame.data.length <= 65536) {
      typedAhead.push(frame);
      typedBytes += frame.data.length;
    }
  }

  function init() {
    const frame = {
      type: "init", provider: "plain-shell", isPlainShell: true, shellId: shellId(),
      cols: term.cols, rows: term.rows,
    };
    const p = projectPath();
    if (p) frame.projectPath = p;
    if (lastSeq !== null) frame.lastSeq = lastSeq;
    if (lastSeq !== null && lastGen !== null) frame.lastGen = lastGen;
    exited = false;
    send(frame);
  }

  function refuse() {
    refused = true;
    typedAhead = [];
    typedBytes = 0;
    const text = refusedText ? refusedText(token) : "token refused";
    setStatus(false, text);
    term.write("\r\n\x1b[31m" + text + "\x1b[0m\r\n");
  }

  function connect() {
    timer = null;
    if (refused) return;
    const url = location.origin.replace(/^http/, "ws") + "/shell?token=" + encodeURIComponent(token);
    const sock = new WebSocket(url);
    ws = sock;
    let opened = false;
    sock.onopen = () => {
      opened = true;
      attempt = 0;
      setStatus(true, "terminal connected");
      init();
      const ahead = typedAhead;
      typedAhead = [];
      typedBytes = 0;
      for (const frame of ahead) send(frame);
    };
    sock.onmessage = (m) => {
      let f;
      try {
        f = JSON.parse(m.data);
      } catch {
        return;
      }
      // A refused init comes as an error and then the same words as a
      // notice (for clients that show only output): shown once.
      const shown = shownError;
      shownError = null;
      switch (f.type) {
        case "output":
          // A notice with a gen begins that generation's seqs: a reconnect
          // names it, so that a terminal restarted meanwhile (from another
          // tab) is shown from its start, not from this one's lastSeq.
          // Another generation's seqs start again at 1: the last seq shown
          // (of the old one) must not hide its first chunks.
          if (typeof f.gen === "number") {
            if (lastGen !== null && f.gen !== lastGen) lastSeq = null;
            lastGen = f.gen;
          }
          if (typeof f.seq !== "number" && shown !== null && f.data.includes(shown)) return;
          if (typeof f.seq === "number") {
            // A chunk already shown (a replay overlapping the screen) is skipped.
            // seq 1 again is a new generation of the terminal (restarted).
            if (lastSeq !== null && f.seq <= lastSeq && f.seq !== 1) return;
            lastSeq = f.seq;
            // Acknowledged once xterm has rendered it: the worker reads the
            // PTY only while little is unrendered, so Ctrl-C during a flood
            // takes effect on screen at once (the /shell ack message).
            const seq = f.seq;
            term.write(f.data, () => {
              if (ws === sock) send({ type: "ack", seq });
            });
            break;
          } else if (lastSeq !== null && f.data.includes("[Reconnected to existing session]")) {
            return; // the screen already shows this terminal
          }
          term.write(f.data);
          break;
        case "error":
          term.write("\r\n\x1b[31m" + f.message + "\x1b[0m\r\n");
          shownError = f.message;
          break;
        case "exit":
          exited = true;
          term.write("\r\n[press any key to start a new terminal]\r\n");
          break;
      }
    };
    sock.onclose = async (e) => {
      if (ws !== sock) return;
      ws = null;
      if (e.code === 4401) return refuse(); // the token expired
      setStatus(false, "terminal reconnecting…");
      if (!opened) {
        // A refused upgrade shows as a plain failure: REST tells a token
        // refused from a gateway away.
        try {
          const resp = await fetch("/api/auth/user", { headers: { Authorization: "Bearer " + token } });
          if (resp.status === 401) return refuse();
        } catch {}
        if (ws || refused || timer) return;
      }
      const delay = Math.min(8000, 250 * 2 ** attempt++) * (0.5 + Math.random() / 2);
      timer = setTimeout(connect, delay);
    };
  }

  // setToken takes a new token (stored by another tab) and connects again
  // if the old one was refused.
  function setToken(t) {
    token = t;
    if (!refused) return;
    refused = false;
    attempt = 0;
    if (!ws && !timer) connect();
  }

  term.onData((data) => {
    if (exited) {
      lastSeq = null; // a new terminal starts at seq 1
      lastGen = null;
      term.reset();
      init();
      return;
    }
    for (const piece of inputPieces(data, maxMessageSize)) send({ type: "input", data: piece });
  });
  term.onResize(({ cols, rows }) => send({ type: "resize", cols, rows }));
  new ResizeObserver(() => {
    if (host.offsetParent !== null) fit.fit();
  }).observe(host);

  connect();
  return { focus: () => term.focus(), terminal: term, setToken };
}
