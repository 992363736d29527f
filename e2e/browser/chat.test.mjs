// The page's conversation flows and the races of the activity indicator
// that need no help from the network: background runs, returning to a
// finished session, Stop, and a reload mid-run.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  launch, openPage, ui, sendMessage, viewedSession, waitLine, countLines, gatedRun, open, marker,
  screenshot, restEvents, watchCelebrations, celebrations, WAIT,
} from "./helpers.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

// startGated sends a gated run's prompt from the page (a new chat unless a
// session is viewed) and waits until the run is visibly working.
async function startGated(page, m) {
  await gatedRun(m);
  await sendMessage(page, `please ${m}`);
  await ui.indicator(page).waitFor({ timeout: WAIT });
  await waitLine(page, `Starting ${m}.`);
  return viewedSession(page);
}

function sessionItem(page, sid) {
  return ui.sessions(page).locator(`button[data-session="${sid}"]`);
}

test("a run: the indicator while it works, Stop, the answer, the session listed", async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await watchCelebrations(page);
  await screenshot(page, "empty-page");
  const m = marker("hello");
  const sid = await startGated(page, m);
  await ui.stop(page).waitFor({ timeout: WAIT });
  assert.match(await ui.indicator(page).innerText(), /\d+s/, "the indicator shows the elapsed time");
  await sessionItem(page, sid).locator(".running").waitFor({ timeout: WAIT });
  await screenshot(page, "run-working");
  open(m);
  await waitLine(page, `Finished ${m}.`);
  await ui.indicator(page).waitFor({ state: "detached", timeout: WAIT });
  await page.locator('.line.complete[data-outcome="succeeded"]').waitFor({ timeout: WAIT });
  await sessionItem(page, sid).locator(".running").waitFor({ state: "detached", timeout: WAIT });
  assert.equal(await celebrations(page, m), 1, "a run that succeeded is celebrated once");
  await screenshot(page, "run-done");
  await context.close();
});

test("a background session finishing does not hide the viewed session's indicator", async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  const bg = marker("bg");
  const fg = marker("fg");
  const bgSid = await startGated(page, bg);
  await page.getByRole("button", { name: "New chat" }).click();
  await ui.indicator(page).waitFor({ state: "detached", timeout: WAIT });
  const fgSid = await startGated(page, fg);
  assert.notEqual(fgSid, bgSid);
  await screenshot(page, "two-running");
  open(bg);
  await sessionItem(page, bgSid).locator(".running").waitFor({ state: "detached", timeout: WAIT });
  assert.equal(await ui.indicator(page).count(), 1, "the viewed session still runs");
  assert.equal(await ui.stop(page).count(), 1);
  await screenshot(page, "background-finished");
  open(fg);
  await waitLine(page, `Finished ${fg}.`);
  await ui.indicator(page).waitFor({ state: "detached", timeout: WAIT });
  await context.close();
});

test("returning to a session that finished meanwhile shows no stale indicator", async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  const m = marker("away");
  const sid = await startGated(page, m);
  await page.getByRole("button", { name: "New chat" }).click();
  await ui.indicator(page).waitFor({ state: "detached", timeout: WAIT });
  open(m);
  await sessionItem(page, sid).locator(".running").waitFor({ state: "detached", timeout: WAIT });
  await sessionItem(page, sid).click();
  await waitLine(page, `Finished ${m}.`);
  assert.equal(await ui.indicator(page).count(), 0, "no indicator for a finished session");
  assert.equal(await ui.stop(page).count(), 0);
  assert.equal(await ui.send(page).isEnabled(), true);
  await screenshot(page, "returned-to-finished");
  await context.close();
});

test("Stop gives exactly one complete and no success state", async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await watchCelebrations(page);
  const m = marker("halt");
  const sid = await startGated(page, m); // the gate is never opened
  await ui.stop(page).click();
  await ui.indicator(page).waitFor({ state: "detached", timeout: WAIT });
  await page.locator('.line.complete[data-outcome="aborted"]').waitFor({ timeout: WAIT });
  await screenshot(page, "stopped");
  assert.equal(await page.locator(".line.complete").count(), 1);
  assert.equal(await page.locator('.line.complete[data-outcome="succeeded"]').count(), 0);
  assert.equal(await celebrations(page, m), 0, "an aborted run is not celebrated");
  const completes = (await restEvents(sid)).filter((e) => e.kind === "complete");
  assert.equal(completes.length, 1, "the gateway stored one complete");
  assert.equal(completes[0].aborted, true);
  assert.equal(completes[0].success, false);
  open(m); // let the gate's shell loop end if it still runs
  await context.close();
});

test("another device shows a conversation's prompts, each once, before their answers", async () => {
  const first = await browser.newContext();
  const page = await openPage(first);
  const m = marker("device");
  const sid = await startGated(page, m);
  open(m);
  await waitLine(page, `Finished ${m}.`);
  await ui.indicator(page).waitFor({ state: "detached", timeout: WAIT });
  assert.equal(await countLines(page, `please ${m}`), 1, "the sending tab shows its prompt once");
  // A context of its own has none of the first one's storage: another device.
  const other = await browser.newContext();
  const page2 = await openPage(other, { hash: `#/s/${encodeURIComponent(sid)}` });
  await waitLine(page2, `Finished ${m}.`);
  const lines = await page2.locator("#conversation .line").allInnerTexts();
  const asked = lines.findIndex((l) => l.includes(`please ${m}`));
  assert.notEqual(asked, -1, `the prompt comes from the gateway: ${lines.join(" | ")}`);
  assert.equal(await countLines(page2, `please ${m}`), 1);
  assert.ok(asked < lines.findIndex((l) => l.includes(`Starting ${m}.`)), "the prompt before its answer");
  await screenshot(page2, "prompt-on-another-device");
  await first.close();
  await other.close();
});

test("a reload mid-run brings back the indicator and the rest of the answer, no line twice", async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  const m = marker("reload");
  await gatedRun(m);
  await sendMessage(page, `please ${m}`);
  await waitLine(page, `Starting ${m}.`);
  const sid = await viewedSession(page);
  await page.reload();
  await page.locator("#connection[data-connected=true]").waitFor({ timeout: WAIT });
  await ui.indicator(page).waitFor({ timeout: WAIT });
  await waitLine(page, `Starting ${m}.`);
  await screenshot(page, "reloaded-mid-run");
  open(m);
  await waitLine(page, `Finished ${m}.`);
  await ui.indicator(page).waitFor({ state: "detached", timeout: WAIT });
  for (const text of [`Starting ${m}.`, `Finished ${m}.`, `please ${m}`]) {
    assert.equal(await countLines(page, text), 1, `"${text}" is shown once`);
  }
  const seqs = await page.evaluate((id) => window.agentgate.events(id).map((e) => e.seq), sid);
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), "every event once, in order");
  await screenshot(page, "reloaded-finished");
  await context.close();
});
