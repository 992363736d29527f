// The account a page acts as: it is shown, and a link carrying another
// user's token does not switch the browser to that account unless the user
// agrees (a link anyone sent would otherwise sign this browser in as them,
// and what is typed here would go to their account).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch, openPage, env, WAIT } from "./helpers.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

const signedInAs = (page, name) =>
  page.locator("#user", { hasText: "Signed in as " + name }).waitFor({ timeout: WAIT });

test("a link with another user's token asks before switching", async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await signedInAs(page, "alice");

  const asked = [];
  page.on("dialog", (d) => {
    asked.push(d.message());
    if (asked.length === 1) d.dismiss(); else d.accept();
  });
  await page.goto(`${env.url}/?token=${encodeURIComponent(env.tokenB)}`);
  await signedInAs(page, "alice");
  assert.equal(asked.length, 1, "asked once");
  assert.match(asked[0], /"bob" instead of "alice"/);
  assert.ok(!page.url().includes("token="), "the token leaves the address bar");

  await page.goto(`${env.url}/?token=${encodeURIComponent(env.tokenB)}`);
  await signedInAs(page, "bob");
  assert.equal(asked.length, 2);

  // The same account's token again: nothing to ask.
  await page.goto(`${env.url}/?token=${encodeURIComponent(env.tokenB)}`);
  await signedInAs(page, "bob");
  assert.equal(asked.length, 2);
  await context.close();
});

test("a token the gateway refuses is said so, not left connecting", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  // Well formed, but not signed with this gateway's secret (a bookmark
  // from an agentgate serve that has since restarted).
  const stale = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.c2lnbmF0dXJl";
  await page.goto(`${env.url}/?token=${stale}`);
  await page.locator("#connection", { hasText: "token refused" }).waitFor({ timeout: WAIT });
  // It stays said while the socket keeps trying.
  await page.waitForTimeout(1500);
  assert.match(await page.locator("#connection").innerText(), /token refused/);

  const none = await context.newPage();
  await none.evaluate(() => localStorage.clear()).catch(() => {});
  await none.goto(`${env.url}/`);
  await none.evaluate(() => localStorage.clear());
  await none.goto(`${env.url}/`);
  await none.locator("#connection", { hasText: "no token" }).waitFor({ timeout: WAIT });
  await context.close();
});

test("a refused link does not replace a token that works", async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await signedInAs(page, "alice");
  const working = await page.evaluate(() => localStorage.getItem("agentgate.token"));
  // Names alice, so nothing is asked, but no gateway signed it: the
  // token it replaced comes back.
  const forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.c2lnbmF0dXJl";
  const asked = [];
  page.on("dialog", (d) => { asked.push(d.message()); d.dismiss(); });
  await page.goto(`${env.url}/?token=${forged}`);
  await signedInAs(page, "alice");
  assert.equal(await page.evaluate(() => localStorage.getItem("agentgate.token")), working);
  assert.equal(asked.length, 0);
  await context.close();
});
