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

export function openTerminal(host, { token, projectPath }) {
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

  function connect() {
    const url = location.origin.replace(/^http/, "ws") + "/shell?token=" + encodeURIComponent(token);
    const sock = new WebSocket(url);
    ws = sock;
    sock.onopen = () => {
      attempt = 0;
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
          if (typeof f.gen === "number") lastGen = f.gen;
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
    sock.onclose = () => {
      if (ws !== sock) return;
      ws = null;
      const delay = Math.min(8000, 250 * 2 ** attempt++) * (0.5 + Math.random() / 2);
      setTimeout(connect, delay);
    };
  }

  term.onData((data) => {
    if (exited) {
      lastSeq = null; // a new terminal starts at seq 1
      lastGen = null;
      term.reset();
      init();
      return;
    }
    send({ type: "input", data });
  });
  term.onResize(({ cols, rows }) => send({ type: "resize", cols, rows }));
  new ResizeObserver(() => {
    if (host.offsetParent !== null) fit.fit();
  }).observe(host);

  connect();
  return { focus: () => term.focus(), terminal: term };
}
