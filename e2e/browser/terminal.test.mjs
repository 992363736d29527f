// The Terminal tab: xterm.js on /shell types into a real bash on the worker,
// and after a reload the same terminal is reattached and its output replayed.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch, openPage, ui, screenshot, WAIT } from "./helpers.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

const screen = (page) => page.locator("#terminal .xterm-rows");

async function waitScreen(page, text) {
  await page.waitForFunction(
    (t) => document.querySelector("#terminal .xterm-rows")?.innerText.includes(t),
    text, { timeout: WAIT },
  );
}

function count(haystack, needle) {
  return haystack.split(needle).length - 1;
}

test("the terminal types, reloads and replays", async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await ui.terminalTab(page).click();
  assert.equal(await ui.terminalTab(page).getAttribute("aria-selected"), "true");
  await screen(page).waitFor({ timeout: WAIT });
  await page.locator("#terminal .xterm-helper-textarea").focus();
  await page.keyboard.type("echo hello-$((6*7))");
  await page.keyboard.press("Enter");
  await waitScreen(page, "hello-42");
  await screenshot(page, "terminal-typed");

  await page.reload();
  await screen(page).waitFor({ timeout: WAIT }); // the tab is kept across the reload
  await waitScreen(page, "hello-42");
  assert.equal(count(await screen(page).innerText(), "hello-42"), 1, "the replay shows the output once");
  await page.locator("#terminal .xterm-helper-textarea").focus();
  await page.keyboard.type("echo again-$((2+3))");
  await page.keyboard.press("Enter");
  await waitScreen(page, "again-5");
  await screenshot(page, "terminal-reloaded");
  await context.close();
});

// A flood, then Ctrl-C from the keyboard: the page's terminal (which acks
// what xterm rendered) gets its prompt back and runs the next command; the
// gateway may skip output stored before the key, and the page takes the
// gap in seq.
test("Ctrl-C stops a flood in the terminal", async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await ui.terminalTab(page).click();
  await screen(page).waitFor({ timeout: WAIT });
  await page.locator("#terminal .xterm-helper-textarea").focus();
  await page.keyboard.type("yes flood-line");
  await page.keyboard.press("Enter");
  await page.waitForFunction(
    () => (document.querySelector("#terminal .xterm-rows")?.innerText.match(/flood-line/g) || []).length > 10,
    null, { timeout: WAIT },
  );
  await page.keyboard.press("Control+C");
  await page.keyboard.type("echo back-$((3+4))");
  await page.keyboard.press("Enter");
  await waitScreen(page, "back-7");
  await screenshot(page, "terminal-ctrl-c");
  await context.close();
});
