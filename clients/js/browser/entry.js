// Browser entry of the JS device (bundled by `npm run build` into browser/fedmq-device.js): exposes the
// client as `window.fedmq` and `window.fedmq.runFromConfig(config)`, which runs one device and keeps its
// status, log and report on `window.fedmqRun` for the page's driver (bin/browser-device.js).
import * as fedmq from '../src/index.js';
import { createDevice, report, runRounds } from '../src/run.js';

async function runFromConfig(config) {
  const state = { status: 'starting', log: [], report: null, error: null };
  window.fedmqRun = state;
  const log = (line) => { state.log.push(`${new Date().toISOString()} ${line}`); };
  let device = null;
  try {
    device = await createDevice(config, log);
    state.snapshot = () => report(device);
    await device.start();
    state.status = 'ready';
    log(`device=${config.device} ready on ${config.url} (${navigator.userAgent})`);
    await runRounds(device, config);
    state.status = 'done';
  } catch (e) {
    state.status = 'failed';
    state.error = String(e.stack ?? e);
  }
  if (device) {
    state.report = report(device);
    await device.stop().catch(() => {});
  }
  return state.status;
}

window.fedmq = { ...fedmq, runFromConfig };
