// What the page does when things go wrong for a user: the token expires
// while the page is open, a prompt gets no answer, a prompt or a paste is
// larger than the gateway's frames, localStorage is full, an IME's Enter, a
// terminal generation restarted elsewhere. The test sits between the page
// and the gateway (playwright's routeWebSocket) where the gateway must be
// made to misbehave.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  launch, openPage, ui, sendMessage, viewedSession, waitLine, addTurns, marker, screenshot, WAIT,
} from "./helpers.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

const SHORT = 20_000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// routeSockets passes the page's sockets of path through the test: mode()
// decides, for each new socket, "pass" (to the gateway), or a close code
// (the socket is closed at once). dropSent(frame) drops frames of the page.
async function routeSockets(page, path, { mode = () => "pass", dropSent = () => false } = {}) {
  const r = { count: 0, last: null };
  await page.routeWebSocket(new RegExp(`/${path}\\?`), (ws) => {
    r.count++;
    const m = mode();
    if (m !== "pass") {
      ws.close({ code: m, reason: "test" });
      return;
    }
    r.last = ws;
    const server = ws.connectToServer();
    ws.onMessage((msg) => {
      let f = null;
      try {
        f = JSON.parse(msg);
      } catch {}
      if (f && dropSent(f)) return;
      server.send(msg);
    });
    server.onMessage((msg) => ws.send(msg));
    server.onClose((code, reason) => ws.close({ code, reason }));
    ws.onClose((code, reason) => server.close({ code, reason }));
  });
  return r;
}

// finishedSession makes a session whose one run has ended, on page.
async function finishedSession(page) {
  const m = marker("base");
  await addTurns([{ when: m, text: `Base answer ${m}.` }]);
  await sendMessage(page, `please ${m}`);
  await page.locator(".line.complete").waitFor({ timeout: WAIT });
  return viewedSession(page);
}

test("an expired token (4401) stops the reconnects, says so, and a prompt sent then comes back", async () => {
  const context = await browser.newContext();
  let refuse = false;
  let route;
  const page = await openPage(context, {
    beforeGoto: async (p) => {
      route = await routeSockets(p, "ws", { mode: () => (refuse ? 4401 : "pass") });
    },
  });
  refuse = true;
  route.last.close({ code: 4401, reason: "token expired" });
  await page.locator("#connection", { hasText: "token refused" }).waitFor({ timeout: SHORT });
  const attempts = route.count;
  await sleep(3000);
  assert.equal(route.count, attempts, "no upgrade is tried again with that token");
  await sendMessage(page, "a prompt typed after the expiry");
  await page.locator(".notice", { hasText: "token" }).first().waitFor({ timeout: SHORT });
  assert.equal(await ui.indicator(page).count(), 0, "the prompt does not look running");
  assert.equal(await ui.message(page).inputValue(), "a prompt typed after the expiry", "the text stays in the composer");
  assert.match(await page.locator("#connection").textContent(), /token refused/);
  await screenshot(page, "token-expired");
  await context.close();
});

test("a token the gateway no longer takes (refused upgrades) stops the reconnects", async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  // The token expires: from now on the gateway refuses it (401 on the
  // upgrade and on REST); the socket then drops (a gateway restart).
  await page.evaluate(() => {
    window.__upgrades = 0;
    const c = window.agentgate;
    c.token = "expired." + c.token;
    const open = c._open.bind(c);
    c._open = () => {
      window.__upgrades++;
      open();
    };
    c._ws.close(4000);
  });
  await page.locator("#connection", { hasText: "token refused" }).waitFor({ timeout: SHORT });
  const n = await page.evaluate(() => window.__upgrades);
  await sleep(3000);
  assert.equal(await page.evaluate(() => window.__upgrades), n, "no upgrade is tried again with that token");
  await context.close();
});

test("a follow-up prompt with no answer, or whose socket closes first, comes back to the composer", async () => {
  const context = await browser.newContext();
  let drop = false;
  const page = await openPage(context, {
    beforeGoto: async (p) => {
      await routeSockets(p, "ws", { dropSent: (f) => drop && f.type === "claude-command" });
    },
  });
  const sid = await finishedSession(page);
  await page.evaluate(() => (window.agentgate.ackTimeout = 3000));
  drop = true; // the command is lost on the way (a socket dead after sleep)
  await sendMessage(page, "lost follow-up");
  await page.locator(".notice", { hasText: "No answer" }).first().waitFor({ timeout: SHORT });
  await ui.indicator(page).waitFor({ state: "detached", timeout: SHORT });
  assert.equal(await ui.message(page).inputValue(), "lost follow-up");
  assert.equal(await page.locator("#conversation .line.user", { hasText: "lost follow-up" }).count(), 0, "not shown as sent");
  await screenshot(page, "no-answer");

  // Sent, then the socket closes before any answer.
  await ui.message(page).fill("closed follow-up");
  await ui.send(page).click();
  await page.evaluate(() => window.agentgate._ws.close(4000));
  await page.locator(".notice", { hasText: "Connection lost" }).first().waitFor({ timeout: SHORT });
  assert.equal(await ui.message(page).inputValue(), "closed follow-up");
  await page.locator("#connection[data-connected=true]").waitFor({ timeout: WAIT });
  drop = false;
  const m = marker("after");
  await addTurns([{ when: m, text: `Answer ${m}.` }]);
  await sendMessage(page, `please ${m}`);
  await waitLine(page, `Answer ${m}.`);
  assert.equal(await viewedSession(page), sid);
  await context.close();
});

test("a prompt over the gateway's frame limit is refused in the page, the socket kept", async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await page.evaluate(() => {
    window.__drops = 0;
    window.agentgate.subscribe((c) => {
      if (c.type === "connection" && !c.connected) window.__drops++;
    });
  });
  const big = "y".repeat((1 << 20) + 1000);
  await ui.message(page).fill(big);
  await ui.send(page).click();
  await page.locator(".notice", { hasText: "too large" }).first().waitFor({ timeout: SHORT });
  assert.equal((await ui.message(page).inputValue()).length, big.length, "the text stays in the composer");
  await sleep(1000);
  assert.equal(await page.evaluate(() => window.__drops), 0, "the socket was not closed (1009)");
  assert.equal(await ui.indicator(page).count(), 0);
  await context.close();
});

test("a full localStorage does not stop Send; the prompts stored are bounded", async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await page.evaluate(() => {
    for (let i = 0; i < 60; i++) localStorage.setItem("agentgate.prompts.old" + i, JSON.stringify([{ afterSeq: 0, text: "old " + i }]));
    let n = 0;
    for (let size = 1 << 20; size >= 16; size >>= 1) {
      try {
        for (;;) localStorage.setItem("junk" + n++, "x".repeat(size));
      } catch {}
    }
  });
  const m = marker("full");
  await addTurns([{ when: m, text: `Stored or not ${m}.` }]);
  await sendMessage(page, `please ${m}`);
  await waitLine(page, `Stored or not ${m}.`);
  assert.equal(await page.locator("#conversation .line.user", { hasText: `please ${m}` }).count(), 1, "the prompt is shown");
  const kept = await page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith("agentgate.prompts.")).length);
  assert.ok(kept <= 50, `prompts of at most 50 sessions are stored (${kept})`);
  await context.close();
});

test("Enter that ends an IME composition (keyCode 229) does not send", async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await ui.message(page).fill("日本語");
  await page.evaluate(() => {
    const e = new KeyboardEvent("keydown", { key: "Enter", keyCode: 229, bubbles: true, cancelable: true });
    document.getElementById("message").dispatchEvent(e);
  });
  await sleep(500);
  assert.equal(await ui.message(page).inputValue(), "日本語");
  assert.equal(await ui.indicator(page).count(), 0);
  await context.close();
});

const screenText = (page) => page.locator("#terminal .xterm-rows").innerText();
async function waitScreen(page, text, timeout = WAIT) {
  await page.waitForFunction((t) => document.querySelector("#terminal .xterm-rows")?.innerText.includes(t), text, { timeout });
}
async function typeLine(page, text) {
  await page.locator("#terminal .xterm-helper-textarea").focus();
  await page.keyboard.type(text);
  await page.keyboard.press("Enter");
}

test("a paste over the frame limit reaches the terminal whole", async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await ui.terminalTab(page).click();
  await typeLine(page, "echo ready-$((1+1))");
  await waitScreen(page, "ready-2");
  // The paste goes to wc once it reads (bash's readline would take it before).
  await typeLine(page, "stty -echo; echo reading-$((1+2)); wc -c; stty echo; echo pasted-$((40+2))");
  await waitScreen(page, "reading-3");
  await page.evaluate(() => {
    // As the browser delivers a paste to xterm.js: 1.2 MB of short lines.
    const data = new DataTransfer();
    data.setData("text/plain", ("x".repeat(99) + "\n").repeat(12000));
    const area = document.querySelector("#terminal .xterm-helper-textarea");
    area.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true }));
  });
  await page.keyboard.press("Control+D");
  await waitScreen(page, "pasted-42");
  assert.match(await screenText(page), /1200000/, "every byte arrived");
  await screenshot(page, "large-paste");
  await context.close();
});

test("the terminal: a new generation's first chunks are shown; disconnected and refused are shown", async () => {
  const context = await browser.newContext();
  let mode = "pass";
  let route;
  const page = await openPage(context, {
    beforeGoto: async (p) => {
      route = await routeSockets(p, "shell", { mode: () => mode });
    },
  });
  await ui.terminalTab(page).click();
  for (const w of ["one", "two", "three"]) {
    await typeLine(page, `echo gen-${w}-$((1+1))`);
    await waitScreen(page, `gen-${w}-2`);
  }
  // The terminal is restarted elsewhere: this socket is told its new
  // generation, whose chunks start again at seq 1 (here its first chunk is
  // no longer stored: the replay starts at seq 2, below this screen's last).
  route.last.send(JSON.stringify({ type: "output", data: "\r\n[Terminal restarted]\r\n", gen: 987654 }));
  route.last.send(JSON.stringify({ type: "output", data: "[Output trimmed: 1 earlier chunks are no longer stored]\r\n" }));
  route.last.send(JSON.stringify({ type: "output", seq: 2, data: "new-gen-first\r\n" }));
  route.last.send(JSON.stringify({ type: "output", seq: 3, data: "new-gen-second\r\n" }));
  await waitScreen(page, "new-gen-first", SHORT);
  await waitScreen(page, "new-gen-second", SHORT);
  await page.locator("#terminal-connection[data-connected=true]").waitFor({ timeout: SHORT });

  // Disconnected: shown until the socket is back.
  mode = 1013;
  route.last.close({ code: 1001, reason: "going away" });
  await page.locator("#terminal-connection[data-connected=false]").waitFor({ timeout: SHORT });
  assert.match(await page.locator("#terminal-connection").textContent(), /reconnecting/);

  // Refused: shown, and not tried again.
  mode = 4401;
  await page.locator("#terminal-connection", { hasText: "token refused" }).waitFor({ timeout: SHORT });
  const n = route.count;
  await sleep(3000);
  assert.equal(route.count, n, "no upgrade is tried again with that token");
  await screenshot(page, "terminal-refused");
  await context.close();
});
