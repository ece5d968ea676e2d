// fedmq device client for JavaScript: everything a phone or browser app needs to be a fedmq device.
export * as bitpack from './bitpack.js';
export * as chunking from './chunking.js';
export * as codec from './codec.js';
export * as crypto from './crypto.js';
export * from './errors.js';
export * as msgpack from './msgpack.js';
export * as pcg64 from './pcg64.js';
export * as secagg from './secagg.js';
export * as snapshot from './snapshot.js';
export * as timing from './timing.js';
export { Topics, checkId } from './topics.js';
export * as wire from './wire.js';
