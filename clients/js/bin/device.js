#!/usr/bin/env node
// Run one fedmq JavaScript device in Node from a JSON config file (see src/run.js for the fields):
//   node bin/device.js config.json
// Prints "ready" once connected, writes a JSON report to config.report, exits 0 once it revealed in
// `rounds` rounds and 1 on timeout.
import { readFileSync, writeFileSync } from 'node:fs';

import { createDevice, report, runRounds } from '../src/run.js';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const log = (line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`);
const device = await createDevice(config, log);
// SIGTERM (the fleet stops its devices when the aggregator is done): report what happened and leave.
process.on('SIGTERM', () => {
  writeFileSync(config.report, JSON.stringify(report(device)));
  device.stop().catch(() => {}).finally(() => process.exit(0));
});
let code = 0;
try {
  await device.start();
  log(`device=${config.device} ready on ${config.url}`);
  process.stdout.write('ready\n');
  await runRounds(device, config);
} catch (e) {
  log(`device=${config.device} failed: ${e.message}`);
  code = 1;
}
writeFileSync(config.report, JSON.stringify(report(device)));
await device.stop().catch(() => {});
process.exit(code);
