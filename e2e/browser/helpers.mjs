// Helpers of the browser tests (started by e2e/browser_test.go, which sets
// the AG_* variables): Chromium through playwright-core, the page's
// accessible controls, the mock's turns, and gates that hold a run until a
// test opens them, so that every wait is on an event, never on a sleep.
import { chromium } from "playwright-core";
import { writeFileSync, mkdirSync } from "node:fs";
import { basename, join } from "node:path";

export const env = {
  url: process.env.AG_URL,
  urlB: process.env.AG_URL_B,
  token: process.env.AG_TOKEN,
  tokenB: process.env.AG_TOKEN_B, // another user's

  project: process.env.AG_PROJECT,
  control: process.env.AG_CONTROL,
  out: process.env.AG_OUT,
  chromium: process.env.AG_CHROMIUM,
};
for (const [k, v] of Object.entries(env)) {
  if (!v) throw new Error(`AG_${k.toUpperCase()} is not set: run these tests through go test ./e2e -run TestBrowser`);
}

// Waits are generous: two cores, other tests running, a real CLI per run.
export const WAIT = 60_000;

export async function launch() {
  return chromium.launch({
    executablePath: env.chromium,
    headless: true,
    // As root Chromium needs --no-sandbox; the pages are our own.
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
}

let shot = 0;
// Each test file runs in a process of its own: its name prefixes its shots.
const file = basename(process.argv[1] ?? "browser", ".test.mjs");
// screenshot saves the page as FILE-NN-name.png in the test's output folder.
export async function screenshot(page, name) {
  mkdirSync(env.out, { recursive: true });
  shot++;
  await page.screenshot({ path: join(env.out, `${file}-${String(shot).padStart(2, "0")}-${name}.png`) });
}

// openPage opens the page with the token, on the project of the cluster,
// with Bash allowed (gated runs use it) unless allowBash is false.
export async function openPage(context, { hash = "", allowBash = true, url = env.url, beforeGoto } = {}) {
  const page = await context.newPage();
  page.on("pageerror", (err) => console.error("page error:", err.message));
  if (beforeGoto) await beforeGoto(page);
  await page.goto(`${url}/?token=${encodeURIComponent(env.token)}${hash}`);
  await settings(page, { allowBash });
  await page.locator("#connection[data-connected=true]").waitFor({ timeout: WAIT });
  return page;
}

export async function settings(page, { allowBash }) {
  await page.getByLabel("Project").fill(env.project);
  await page.getByLabel("Project").dispatchEvent("change");
  await page.locator("details.settings summary").click();
  await page.getByLabel("Allowed tools").fill(allowBash ? "Bash" : "");
  await page.getByLabel("Allowed tools").dispatchEvent("change");
  await page.locator("details.settings summary").click();
}

// Controls, by the accessible names an outside checker uses too.
export const ui = {
  message: (page) => page.getByRole("textbox", { name: "Message", exact: true }),
  send: (page) => page.getByRole("button", { name: "Send", exact: true }),
  stop: (page) => page.getByRole("button", { name: "Stop", exact: true }),
  indicator: (page) => page.getByRole("status"),
  sessions: (page) => page.getByRole("navigation", { name: "Sessions" }).getByRole("list"),
  terminalTab: (page) => page.getByRole("tab", { name: "Terminal" }),
  lines: (page) => page.locator("#conversation .line"),
};

export async function sendMessage(page, text) {
  await ui.message(page).fill(text);
  await ui.send(page).click();
}

// viewedSession is the session id the page shows (from its address).
export async function viewedSession(page) {
  await page.waitForFunction(() => /^#\/s\/./.test(location.hash), null, { timeout: WAIT });
  return decodeURIComponent((await page.evaluate(() => location.hash)).slice(4));
}

export async function waitLine(page, text) {
  await page.locator("#conversation .line", { hasText: text }).first().waitFor({ timeout: WAIT });
}

export async function countLines(page, text) {
  return page.locator("#conversation .line", { hasText: text }).count();
}

export async function addTurns(turns) {
  const body = turns.map((t) => ({
    When: t.when, Text: t.text ?? "", Chunks: t.chunks ?? 1, Hang: !!t.hang,
    Delay: (t.delayMs ?? 0) * 1e6,
    ToolUses: (t.tools ?? []).map((u, i) => ({ ID: `toolu_${t.when}_${i}_${Date.now()}`, Name: u.name, Input: u.input })),
  }));
  const resp = await fetch(env.control + "/turns", { method: "POST", body: JSON.stringify(body) });
  if (!resp.ok) throw new Error("add turns: " + resp.status + " " + (await resp.text()));
}

export async function control(path) {
  const resp = await fetch(env.control + path, { method: "POST" });
  if (!resp.ok) throw new Error(path + ": " + resp.status + " " + (await resp.text()));
}

// gatedRun scripts a run for prompts containing marker: it says "Starting
// <marker>.", runs a Bash command that waits for the gate file, then says
// "Finished <marker>.". open(marker) lets it finish.
export async function gatedRun(marker) {
  await addTurns([
    {
      when: marker, text: `Starting ${marker}.`,
      tools: [{ name: "Bash", input: { command: `while [ ! -e gate-${marker} ]; do sleep 0.05; done; echo opened ${marker}`, description: "Wait for the gate" } }],
    },
    { when: marker, text: `Finished ${marker}.` },
  ]);
}

export function open(marker) {
  writeFileSync(join(env.project, `gate-${marker}`), "");
}

let n = 0;
export function marker(name) {
  return `${name}${Date.now().toString(36)}${++n}`;
}

// restEvents reads a session's stored events as the gateway has them.
export async function restEvents(sessionId) {
  const resp = await fetch(`${env.urlB}/api/sessions/${sessionId}/events?limit=1000`, {
    headers: { Authorization: "Bearer " + env.token },
  });
  if (!resp.ok) throw new Error("events: " + resp.status);
  return (await resp.json()).events;
}

// watchCelebrations records the text of every success notice the page
// shows from now on; celebrations(page, m) returns those naming marker m
// (other tests' sessions of the same user may end meanwhile).
export async function watchCelebrations(page) {
  await page.evaluate(() => {
    window.__celebrations = [];
    new MutationObserver((records) => {
      for (const r of records) {
        for (const n of r.addedNodes) if (n.classList?.contains("celebrate")) window.__celebrations.push(n.textContent);
      }
    }).observe(document.body, { childList: true });
  });
}

export async function celebrations(page, m) {
  return (await page.evaluate(() => window.__celebrations)).filter((t) => t.includes(m)).length;
}

// deferred is a promise with its resolve function, for waits on events.
export function deferred() {
  let resolve;
  const promise = new Promise((r) => (resolve = r));
  return { promise, resolve };
}

// holdFrames routes the page's /ws through the test: frames from the
// gateway for which hold(frame) is true are kept until release() sends them
// on, in order. It returns the route's controls.
export async function holdFrames(page, hold) {
  const held = [];
  const firstHeld = deferred();
  let client = null;
  let releasing = false;
  await page.routeWebSocket(/\/ws\?/, (ws) => {
    const server = ws.connectToServer();
    client = ws;
    ws.onMessage((m) => server.send(m));
    server.onMessage((m) => {
      let f = null;
      try {
        f = JSON.parse(m);
      } catch {}
      if (!releasing && f && hold(f)) {
        held.push(m);
        firstHeld.resolve();
        return;
      }
      ws.send(m);
    });
  });
  return {
    held,
    firstHeld: firstHeld.promise,
    release() {
      releasing = true;
      for (const m of held.splice(0)) client.send(m);
      releasing = false;
    },
  };
}
