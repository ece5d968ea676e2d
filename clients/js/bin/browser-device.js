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

const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, handleSIGTERM: false, handleSIGINT: false,
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
});
let code = 1;
let shown = 0;
const flushLog = async (page) => {
  const lines = await page.evaluate(() => window.fedmqRun?.log ?? []).catch(() => []);
  for (const line of lines.slice(shown)) log(`[page] ${line}`);
  shown = Math.max(shown, lines.length);
};
let page = null;
// SIGTERM (the fleet stops its devices when the aggregator is done): the loop below reports what the
// page did and leaves; the page is only ever touched from that loop.
let stopping = false;
process.on('SIGTERM', () => { stopping = true; });
try {
  page = await browser.newPage();
  page.on('pageerror', (e) => log(`[page error] ${e.message}`));
  page.on('crash', () => log('[page crashed]'));
  browser.on('disconnected', () => log('[browser disconnected]'));
  await page.goto(pageUrl);
  await page.evaluate((cfg) => { window.fedmqRun = { status: 'starting', log: [] }; window.fedmq.runFromConfig(cfg); }, config);
  const deadline = Date.now() + ((config.timeout_s ?? 120) + 40) * 1000;
  let announced = false;
  for (;;) {
    const status = await page.evaluate(() => window.fedmqRun?.status);
    await flushLog(page);
    if (status === 'ready' && !announced) { process.stdout.write('ready\n'); announced = true; }
    const finished = status === 'done' || status === 'failed';
    if (finished || stopping) {
      const state = await page.evaluate(() => ({
        status: window.fedmqRun.status, error: window.fedmqRun.error,
        report: window.fedmqRun.report ?? window.fedmqRun.snapshot?.() ?? null,
      }));
      if (state.error) log(`[page] ${state.error}`);
      if (!announced) process.stdout.write('ready\n');
      if (state.report) {
        const agent = await page.evaluate(() => navigator.userAgent);
        writeFileSync(config.report, JSON.stringify({ ...state.report, user_agent: agent }));
      }
      code = status === 'failed' ? 1 : 0;
      break;
    }
    if (Date.now() > deadline) { log('browser device timed out'); break; }
    await new Promise((r) => setTimeout(r, 100));
  }
} catch (e) {
  log(`browser device driver failed: ${e.stack ?? e}`);
} finally {
  await browser.close().catch(() => {});
  server.close();
}
process.exit(code);
