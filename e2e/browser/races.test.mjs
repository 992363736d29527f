// Races that need the network's help: the test sits between the page and
// the gateway (playwright's routeWebSocket) and holds chosen frames back, so
// that a late reply or a late final frame happens every time, not by luck.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  launch, openPage, ui, sendMessage, viewedSession, waitLine, gatedRun, open, marker, screenshot,
  restEvents, addTurns, holdFrames, watchCelebrations, celebrations, WAIT,
} from "./helpers.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

// finishedSession makes a session whose one run has ended.
async function finishedSession(context) {
  const page = await openPage(context);
  const m = marker("first");
  await addTurns([{ when: m, text: `First answer ${m}.` }]);
  await sendMessage(page, `please ${m}`);
  await page.locator(".line.complete").waitFor({ timeout: WAIT });
  const sid = await viewedSession(page);
  await page.close();
  return sid;
}

test("a late status reply for an earlier run is discarded", async () => {
  const context = await browser.newContext();
  const sid = await finishedSession(context);
  let holding = true;
  let route;
  const page = await openPage(context, {
    hash: "#/s/" + sid,
    beforeGoto: async (p) => {
      route = await holdFrames(p, (f) => holding && f.type === "session-status" && f.sessionId === sid);
    },
  });
  // The page asked for the session's status on opening it; the reply (idle:
  // the first run ended) is held while a second run starts.
  await route.firstHeld;
  const m = marker("second");
  await gatedRun(m);
  await sendMessage(page, `please ${m}`);
  await ui.indicator(page).waitFor({ timeout: WAIT });
  await waitLine(page, `Starting ${m}.`);
  await page.evaluate((id) => {
    window.__statusSeen = false;
    window.agentgate.subscribe((c) => {
      if (c.type === "status" && c.sessionId === id) window.__statusSeen = true;
    });
  }, sid);
  holding = false;
  route.release();
  await page.waitForFunction(() => window.__statusSeen, null, { timeout: WAIT });
  assert.equal(await ui.indicator(page).count(), 1, "the idle reply asked before this run does not end it");
  assert.equal(await ui.stop(page).count(), 1);
  await screenshot(page, "late-status-discarded");
  open(m);
  await waitLine(page, `Finished ${m}.`);
  await ui.indicator(page).waitFor({ state: "detached", timeout: WAIT });
  await context.close();
});

test("the indicator disappears when the final frame arrives, not before", async () => {
  const context = await browser.newContext();
  let holding = true;
  let route;
  const page = await openPage(context, {
    beforeGoto: async (p) => {
      route = await holdFrames(p, (f) => holding && f.kind === "complete");
    },
  });
  const m = marker("final");
  await gatedRun(m);
  await sendMessage(page, `please ${m}`);
  await waitLine(page, `Starting ${m}.`);
  const sid = await viewedSession(page);
  open(m);
  await route.firstHeld;
  await page.waitForFunction(
    (id) => window.agentgate.events(id).some((e) => e.kind === "session-state-changed" && e.state === "completed"),
    sid, { timeout: WAIT },
  );
  await waitLine(page, `Finished ${m}.`);
  assert.equal(await ui.indicator(page).count(), 1, "the run is not over before its complete");
  assert.equal(await ui.stop(page).count(), 0, "nothing left to stop after the terminal state");
  await screenshot(page, "before-final-frame");
  holding = false;
  route.release();
  await ui.indicator(page).waitFor({ state: "detached", timeout: WAIT });
  await page.locator('.line.complete[data-outcome="succeeded"]').waitFor({ timeout: WAIT });
  await screenshot(page, "after-final-frame");
  await context.close();
});

test("a new chat can be stopped before its session id is known", async () => {
  const context = await browser.newContext();
  let holding = false;
  let route;
  const page = await openPage(context, {
    beforeGoto: async (p) => {
      route = await holdFrames(p, () => holding);
    },
  });
  await watchCelebrations(page);
  const m = marker("pending");
  await addTurns([{ when: m, text: `Thinking about ${m}`, hang: true }]);
  holding = true; // nothing from the gateway reaches the page: the id stays unknown
  await sendMessage(page, `please ${m}`);
  await ui.indicator(page).waitFor({ timeout: WAIT });
  await route.firstHeld;
  assert.equal(await page.evaluate(() => location.hash), "", "the session is not named yet");
  assert.equal(await page.evaluate(() => window.agentgate.isRunning("__pending_session__")), true);
  await screenshot(page, "pending-with-stop");
  await ui.stop(page).click();
  holding = false;
  route.release();
  const sid = await viewedSession(page);
  await ui.indicator(page).waitFor({ state: "detached", timeout: WAIT });
  await page.locator('.line.complete[data-outcome="aborted"]').waitFor({ timeout: WAIT });
  await screenshot(page, "pending-stopped");
  const completes = (await restEvents(sid)).filter((e) => e.kind === "complete");
  assert.equal(completes.length, 1);
  assert.equal(completes[0].aborted, true);
  assert.equal(await celebrations(page, m), 0, "an aborted run is not celebrated");
  assert.deepEqual(
    await page.evaluate((id) => [window.agentgate.isRunning(id), window.agentgate.isRunning("__pending_session__")], sid),
    [false, false], "no entry left, pending or named",
  );
  await context.close();
});
