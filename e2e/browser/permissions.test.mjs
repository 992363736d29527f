// Tool permission requests in two tabs: both show the request (the second
// from the status reply it gets on opening the session), one answers, and
// the request disappears from the other.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { launch, openPage, sendMessage, viewedSession, waitLine, marker, screenshot, addTurns, env, WAIT } from "./helpers.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

test("a permission request answered in one tab disappears in the other", async () => {
  const context = await browser.newContext();
  const m = marker("perm");
  await addTurns([
    { when: m, tools: [{ name: "Bash", input: { command: `touch allowed-${m}`, description: "Create a file" } }] },
    { when: m, text: `Created ${m}.` },
  ]);
  const one = await openPage(context, { allowBash: false });
  await sendMessage(one, `please ${m}`);
  const request = (page) => page.getByRole("group", { name: "Permission request: Bash" });
  await request(one).waitFor({ timeout: WAIT });
  const sid = await viewedSession(one);
  const two = await openPage(context, { hash: "#/s/" + sid, allowBash: false });
  await request(two).waitFor({ timeout: WAIT });
  await screenshot(two, "second-tab-asked");
  await request(one).getByRole("button", { name: "Allow", exact: true }).click();
  await request(one).waitFor({ state: "detached", timeout: WAIT });
  await request(two).waitFor({ state: "detached", timeout: WAIT });
  await waitLine(two, `Created ${m}.`);
  await waitLine(one, `Created ${m}.`);
  await screenshot(two, "second-tab-after-answer");
  assert.ok(existsSync(join(env.project, `allowed-${m}`)), "the allowed tool ran");
  await context.close();
});
