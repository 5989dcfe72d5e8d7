// The dashboard in headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core): the page loads with no outside requests, shows the nodes
// and the layer bar, and a chat message streams an answer. Saves a
// screenshot (SCREENSHOT env, default dashboard.png in the working folder).
//   node dashboard_test.mjs PATH/TO/fake_http_server
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { startServer, serverBinary } from "./server.mjs";

const server = await startServer(serverBinary(), ["--token-delay-ms", "40"]);
let browser;
let failed = false;
try {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const outside = [];
  page.on("request", (r) => { if (!r.url().startsWith(server.url)) outside.push(r.url()); });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));

  const response = await page.goto(server.url + "/");
  assert.equal(response.status(), 200);
  await page.waitForSelector(".node-card[data-node='beta']", { timeout: 15000 });
  const nodes = await page.$$eval(".node-card", (cards) => cards.map((c) => c.dataset.node));
  assert.deepEqual(nodes, ["alpha", "beta"]);
  assert.equal(await page.textContent("#state"), "ready");
  assert.equal(await page.textContent("#model-name"), "tandem-test");
  const segments = await page.$$eval("#layer-bar .seg", (s) => s.map((e) => e.textContent));
  assert.deepEqual(segments, ["alpha 0–7", "beta 8–15"]);
  const cardText = await page.textContent(".node-card[data-node='alpha']");
  assert.match(cardText, /Test CPU 8 cores/);
  assert.match(cardText, /shuffle-lz4/);

  // A chat message streams: the answer grows over several reads.
  await page.fill("#system-prompt", "Be brief.");
  await page.fill("#temperature", "0");
  await page.fill("#chat-input", "Hello there");
  await page.click("#chat-send");
  await page.waitForFunction(() => {
    const m = document.querySelector("#chat-log .msg.assistant");
    return m && m.textContent.length > 0;
  }, null, { timeout: 15000 });
  const partial = await page.textContent("#chat-log .msg.assistant");
  await page.waitForFunction(() => document.querySelector("#chat-status").textContent.includes("stop"),
                             null, { timeout: 20000 });
  const answer = await page.textContent("#chat-log .msg.assistant");
  assert.match(answer, /^Hello! You sent \d+ tokens\./);
  assert.ok(answer.endsWith("The end."), answer);
  assert.ok(partial.length < answer.length, "the answer did not stream (arrived whole)");
  assert.equal(await page.textContent("#chat-log .msg.user"), "Hello there");

  await page.waitForTimeout(1200);  // one more poll, so rates show
  const file = process.env.SCREENSHOT || "dashboard.png";
  await page.screenshot({ path: file, fullPage: true });
  assert.deepEqual(outside, [], "the page fetched from elsewhere");
  assert.deepEqual(errors, [], "the page threw");
  console.log("dashboard: all checks passed; screenshot in " + file);
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  if (browser) await browser.close();
  await server.stop();
}
process.exit(failed ? 1 : 0);
