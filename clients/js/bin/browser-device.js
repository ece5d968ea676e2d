#!/usr/bin/env node
// Run one fedmq device inside headless Chromium (driven by playwright-core with the system's Chromium):
//   node bin/browser-device.js config.json
// Serves browser/ (the page and the bundle from `npm run build`) on a free loopback port, opens it, and
// calls fedmq.runFromConfig(config) in the page: MQTT over WebSockets, libsodium in WebAssembly, training
// in the page's JavaScript. Prints "ready" once the page's device is connected, copies the page's log to
// stderr, writes the page's report to config.report, exits 0 when the device finished its rounds.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', 'browser');
const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const log = (line) => process.stderr.write(`${line}\n`);

function chromiumPath() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  for (const name of ['chromium', 'chromium-browser', 'google-chrome']) {
    try { return execFileSync('which', [name], { encoding: 'utf8' }).trim(); } catch { /* next */ }
  }
  throw new Error('no Chromium found: scripts/install_system_deps.sh installs it (apt-get install chromium)');
}

if (!existsSync(join(root, 'fedmq-device.js'))) throw new Error('browser bundle missing: run npm run build');
const types = { '.html': 'text/html', '.js': 'text/javascript' };
const server = createServer((req, res) => {
  const path = normalize(join(root, new URL(req.url, 'http://x').pathname));
  if (!path.startsWith(root) || !existsSync(path)) { res.writeHead(404).end(); return; }
  res.writeHead(200, { 'content-type': types[path.slice(path.lastIndexOf('.'))] ?? 'application/octet-stream' });
  res.end(readFileSync(path));
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const pageUrl = `http://127.0.0.1:${server.address().port}/index.html`;

const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, args: ['--no-sandbox'] });
let code = 1;
let shown = 0;
const flushLog = async (page) => {
  const lines = await page.evaluate(() => window.fedmqRun?.log ?? []).catch(() => []);
  for (const line of lines.slice(shown)) log(`[page] ${line}`);
  shown = Math.max(shown, lines.length);
};
let page = null;
// SIGTERM (the fleet stops its devices when the aggregator is done): report what the page did and leave.
process.on('SIGTERM', async () => {
  const snap = await page?.evaluate(() => window.fedmqRun?.snapshot?.() ?? null).catch(() => null);
  const agent = await page?.evaluate(() => navigator.userAgent).catch(() => null);
  if (snap) writeFileSync(config.report, JSON.stringify({ ...snap, user_agent: agent }));
  await browser.close().catch(() => {});
  server.close();
  process.exit(0);
});
try {
  page = await browser.newPage();
  page.on('pageerror', (e) => log(`[page error] ${e.message}`));
  await page.goto(pageUrl);
  await page.evaluate((cfg) => { window.fedmq.runFromConfig(cfg); }, config);
  const deadline = Date.now() + ((config.timeout_s ?? 120) + 40) * 1000;
  let announced = false;
  for (;;) {
    const status = await page.evaluate(() => window.fedmqRun?.status);
    await flushLog(page);
    if (status === 'ready' && !announced) { process.stdout.write('ready\n'); announced = true; }
    if (status === 'done' || status === 'failed') {
      const state = await page.evaluate(() => ({ ...window.fedmqRun, snapshot: undefined }));
      if (state.error) log(`[page] ${state.error}`);
      if (!announced) process.stdout.write('ready\n');
      writeFileSync(config.report, JSON.stringify({ ...state.report, user_agent: await page.evaluate(() => navigator.userAgent) }));
      code = status === 'done' ? 0 : 1;
      break;
    }
    if (Date.now() > deadline) { log('browser device timed out'); break; }
    await new Promise((r) => setTimeout(r, 100));
  }
} finally {
  await browser.close();
  server.close();
}
process.exit(code);
