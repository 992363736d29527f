// The gateway serving the page dies mid-run (SIGKILL): the page reconnects
// through the balancer to the other gateway, resumes from its last seq and
// shows the rest of the answer, nothing twice. It runs last: gwA stays dead.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  launch, openPage, ui, sendMessage, viewedSession, waitLine, countLines, gatedRun, open, marker, screenshot, control, WAIT,
} from "./helpers.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

test("the gateway is killed mid-run and the page resumes through another gateway", async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  const m = marker("failover");
  await gatedRun(m);
  await sendMessage(page, `please ${m}`);
  await waitLine(page, `Starting ${m}.`);
  const sid = await viewedSession(page);
  await page.evaluate(() => {
    window.__disconnected = false;
    window.agentgate.subscribe((c) => {
      if (c.type === "connection" && !c.connected) window.__disconnected = true;
    });
  });
  await control("/kill?name=gwA");
  await page.waitForFunction(() => window.__disconnected, null, { timeout: WAIT });
  await page.locator("#connection[data-connected=true]").waitFor({ timeout: WAIT });
  assert.equal(await ui.indicator(page).count(), 1, "the run goes on");
  await screenshot(page, "reconnected");
  open(m);
  await waitLine(page, `Finished ${m}.`);
  await ui.indicator(page).waitFor({ state: "detached", timeout: WAIT });
  for (const text of [`Starting ${m}.`, `Finished ${m}.`]) {
    assert.equal(await countLines(page, text), 1, `"${text}" is shown once`);
  }
  const seqs = await page.evaluate((id) => window.agentgate.events(id).map((e) => e.seq), sid);
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), "every event once, in order");
  await screenshot(page, "finished-after-failover");
  await context.close();
});
