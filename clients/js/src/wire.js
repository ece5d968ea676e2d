// fedmq's message schemas (docs/protocol.md §2): strict decoding and canonical encoding.
//
// A decoded message is a plain object `{ t, ...fields }`: bin fields are Uint8Array, int and float fields
// numbers, optional fields (`['opt', type]`) null when absent on the wire as nil. Decoding refuses what the
// Python decoder refuses (unknown type or key, missing key without default, wrong type) with WireError.

import { WireError } from './errors.js';
import { f64, Float64, pack, unpack } from './msgpack.js';

export const SCHEMA_VERSION = 1;

const paramSpec = { record: [['name', 'str'], ['shape', ['list', 'int']]] };
const rosterMember = {
  record: [['device', 'str'], ['enc_pk', 'bin'], ['mask_pk', 'bin'], ['self_mask_commitment', 'bin'], ['signature', 'bin']],
};
const enrolledDevice = { record: [['device', 'str'], ['key', 'bin']] };
// t digest-checked self-mask shares of a dealer that do not rebuild its commitment (shared/wire/seeds.py).
const inconsistencyProof = { record: [['dealer', 'str'], ['digests', ['map', 'bin']], ['digest_signature', 'bin'],
  ['shares', ['map', 'bin']], ['commitment', 'bin'], ['advert_signature', 'bin']] };
// The announcement's typed round plan (docs/protocol.md §2.1; shared/plan.py): nested records in the
// Python dataclasses' field order, so that encoding is canonical.
export const PLAN_VERSION = 1;
const phaseWindows = { record: [['keys', 'float', () => 5.0], ['shares', 'float', () => 5.0],
  ['masked', 'float', () => 30.0], ['unmask', 'float', () => 5.0]] };
const stalenessPolicy = { record: [['function', 'str', () => 'fedbuff'], ['max_staleness', 'int', () => 4],
  ['reference_norm', 'float', () => 1.0]] };
const codecConfig = { record: [['bits', 'int'], ['clip_norm', 'float'], ['expected_clients', 'int'], ['seed', 'bin'],
  ['rotation', 'bool', () => true], ['subsample_rate', 'float', () => 1.0], ['weight_bits', 'int', () => 16],
  ['wrap_probability', 'float', () => 1e-9], ['scheme', 'str', () => 'int'], ['topk_fraction', 'float', () => 0.01],
  ['noise_multiplier', 'float', () => 0.0]] };
const optFloat = ['opt', 'float'];
const dpConfig = { record: [['mode', 'str', () => 'off'], ['mechanism', 'str', () => 'skellam'],
  ['noise_multiplier', optFloat, () => null], ['target_epsilon', optFloat, () => null],
  ['target_rounds', ['opt', 'int'], () => null], ['delta', optFloat, () => null], ['clip_norm', optFloat, () => null],
  ['sampling_q', optFloat, () => null], ['dropout_margin', 'float', () => 0.1], ['budget_epsilon', optFloat, () => null],
  ['rounding_beta', 'float', () => Math.exp(-0.5)]] };
const PLAN_FIELDS = [['version', 'int', () => PLAN_VERSION], ['mode', 'str', () => 'plain'], ['encoding', 'str', () => 'f32'],
  ['weight_cap', 'int', () => 1000], ['windows', ['opt', phaseWindows], () => null],
  ['staleness', stalenessPolicy, () => ({ function: 'fedbuff', max_staleness: 4, reference_norm: 1.0 })],
  ['codec', ['opt', codecConfig], () => null], ['dp', ['opt', dpConfig], () => null], ['blocks', ['opt', ['list', 'str']], () => null]];
const roundPlan = { record: PLAN_FIELDS };
const defaultPlan = () => Object.fromEntries(PLAN_FIELDS.map(([name, , dflt]) => [name, dflt()]));
const EMPTY = () => new Uint8Array(0);
const SIG0 = () => new Uint8Array(64);

// [name, type, default factory (absent: required)]
export const SCHEMAS = {
  model: [['federation', 'str'], ['version', 'int'], ['round_id', 'int'], ['layout', ['list', paramSpec]],
    ['encoding', 'str'], ['weights', 'bin'], ['sha256', 'bin'], ['created_at', 'float'],
    ['base_version', 'int', () => -1], ['signature', 'bin', EMPTY]],
  round: [['federation', 'str'], ['round_id', 'int'], ['base_version', 'int'], ['phase', 'str'],
    ['opened_at', 'float'], ['deadline', 'float'], ['min_clients', 'int'], ['target_clients', 'int'],
    ['plan', roundPlan, defaultPlan], ['signature', 'bin', EMPTY]],
  update: [['round_id', 'int'], ['sender', 'str'], ['base_version', 'int'], ['num_examples', 'int'],
    ['encoding', 'str'], ['dim', 'int'], ['data', 'bin'], ['metrics', ['map', 'float'], () => ({})]],
  result: [['round_id', 'int'], ['status', 'str'], ['version', 'int'], ['contributors', 'int'],
    ['reason', 'str', () => ''], ['metrics', ['map', 'float'], () => ({})]],
  presence: [['client_id', 'str'], ['online', 'bool'], ['at', 'float'], ['memory_budget', 'int', () => 0],
    ['activation_profile', ['list', 'int'], () => []]],
  manifest: [['transfer_id', 'bin'], ['total_size', 'int'], ['chunk_size', 'int'], ['chunk_count', 'int'], ['sha256', 'bin']],
  chunk: [['transfer_id', 'bin'], ['index', 'int'], ['data', 'bin']],
  'secagg.advertise_keys': [['federation', 'str'], ['round', 'int'], ['device', 'str'], ['enc_pk', 'bin'],
    ['mask_pk', 'bin'], ['self_mask_commitment', 'bin'], ['signature', 'bin', SIG0]],
  'secagg.roster': [['federation', 'str'], ['round', 'int'], ['members', ['list', rosterMember]],
    ['graph_seed', 'bin'], ['degree', 'int'], ['threshold', 'int'], ['bits', 'int'], ['length', 'int'],
    ['signature', 'bin', SIG0]],
  'secagg.compact_roster': [['federation', 'str'], ['round', 'int'], ['devices', ['list', 'str']], ['digests', 'bin'],
    ['graph_seed', 'bin'], ['degree', 'int'], ['threshold', 'int'], ['bits', 'int'], ['length', 'int'],
    ['signature', 'bin', SIG0]],
  'secagg.neighbour_keys': [['federation', 'str'], ['round', 'int'], ['device', 'str'], ['members', ['list', 'str'], () => []],
    ['keys', 'bin', EMPTY]],
  'secagg.encrypted_shares': [['federation', 'str'], ['round', 'int'], ['sender', 'str'], ['recipient', 'str'], ['ciphertext', 'bin'],
    ['digest', 'bin', EMPTY]],
  'secagg.share_batch': [['federation', 'str'], ['round', 'int'], ['device', 'str'], ['ciphertexts', ['map', 'bin'], () => ({})],
    ['digests', ['map', 'bin'], () => ({})], ['signature', 'bin', EMPTY]],
  'secagg.survivor_list': [['federation', 'str'], ['round', 'int'], ['phase', 'str'], ['devices', ['list', 'str']],
    ['signature', 'bin', SIG0]],
  'secagg.masked_input': [['federation', 'str'], ['round', 'int'], ['device', 'str'], ['payload', 'bin'],
    ['bits', 'int'], ['length', 'int'], ['signature', 'bin', SIG0], ['refused', ['list', 'str'], () => []]],
  'secagg.unmask_reveal': [['federation', 'str'], ['round', 'int'], ['device', 'str'],
    ['self_mask_shares', ['map', 'bin'], () => ({})], ['mask_key_shares', ['map', 'bin'], () => ({})],
    ['signature', 'bin', SIG0]],
  'secagg.seed_request': [['federation', 'str'], ['round', 'int'], ['dealers', ['list', 'str']],
    ['proofs', ['list', inconsistencyProof], () => []], ['signature', 'bin', SIG0]],
  'secagg.seed_reveal': [['federation', 'str'], ['round', 'int'], ['device', 'str'], ['seeds', ['map', 'bin'], () => ({})],
    ['signature', 'bin', SIG0]],
  // The enrolled set, signed by the enrolment authority (retained on fl/<fed>/enrolment; docs/protocol.md
  // 2.5). This client takes its directory from its configuration; it decodes the list but does not follow it.
  enrolment: [['federation', 'str'], ['epoch', 'bin'], ['serial', 'int'], ['issued_at', 'float'],
    ['devices', ['list', enrolledDevice], () => []], ['revoked', ['list', 'str'], () => []],
    ['signature', 'bin', EMPTY]],
};

/** Plain JS value of a decoded `any`: Maps become objects, Float64 numbers. */
export function plain(value) {
  if (value instanceof Float64) return value.value;
  if (value instanceof Map) return Object.fromEntries([...value].map(([k, v]) => [k, plain(v)]));
  if (Array.isArray(value)) return value.map(plain);
  return value;
}

function check(value, type, where) {
  if (type === 'any') return plain(value);
  if (Array.isArray(type) && type[0] === 'opt') return value === null ? null : check(value, type[1], where);
  if (type === 'int') {
    if (typeof value !== 'number' && typeof value !== 'bigint') throw new WireError(`${where}: expected int`);
    return value;
  }
  if (type === 'float') {
    if (value instanceof Float64) return value.value;
    if (typeof value === 'number') return value;
    throw new WireError(`${where}: expected float`);
  }
  if (type === 'str') { if (typeof value !== 'string') throw new WireError(`${where}: expected str`); return value; }
  if (type === 'bool') { if (typeof value !== 'boolean') throw new WireError(`${where}: expected bool`); return value; }
  if (type === 'bin') { if (!(value instanceof Uint8Array)) throw new WireError(`${where}: expected bin`); return value; }
  if (Array.isArray(type) && type[0] === 'list') {
    if (!Array.isArray(value)) throw new WireError(`${where}: expected array`);
    return value.map((v, i) => check(v, type[1], `${where}[${i}]`));
  }
  if (Array.isArray(type) && type[0] === 'map') {
    if (!(value instanceof Map)) throw new WireError(`${where}: expected map`);
    const out = {};
    for (const [k, v] of value) out[k] = check(v, type[1], `${where}[${k}]`);
    return out;
  }
  if (type.record) {
    if (!(value instanceof Map)) throw new WireError(`${where}: expected map`);
    return build(type.record, value, where);
  }
  throw new WireError(`${where}: unsupported type`);
}

function build(schema, body, where) {
  const names = new Set(schema.map((f) => f[0]));
  for (const key of body.keys()) if (!names.has(key)) throw new WireError(`${where}: unknown field ${key}`);
  const out = {};
  for (const [name, type, dflt] of schema) {
    if (!body.has(name)) {
      if (!dflt) throw new WireError(`${where}: missing field ${name}`);
      out[name] = dflt();
    } else out[name] = check(body.get(name), type, `${where}.${name}`);
  }
  return out;
}

/** The bounds shared/plan.py enforces that a device relies on (the rest it never reads). */
function validatePlan(plan, bad) {
  if (plan.version !== PLAN_VERSION) bad(`plan.version ${plan.version} is not ${PLAN_VERSION}`);
  if (plan.mode !== 'secure' && plan.mode !== 'plain') bad(`plan.mode ${plan.mode}`);
  if (plan.encoding !== 'f32') bad('plan.encoding must be f32');
  if (!(plan.weight_cap >= 1 && plan.weight_cap <= 2 ** 30)) bad('plan.weight_cap out of range');
  if (plan.windows) {
    for (const [k, w] of Object.entries(plan.windows)) if (!(w > 0 && w <= 86400)) bad(`plan.windows.${k} out of range`);
  }
  if (plan.staleness.max_staleness < 0) bad('plan.staleness.max_staleness must be >= 0');
  if (plan.blocks) {
    if (plan.blocks.length < 1 || plan.blocks.length > 4096) bad('plan.blocks must name 1..4096 blocks');
    if (new Set(plan.blocks).size !== plan.blocks.length) bad('plan.blocks names a block twice');
    if (plan.blocks.some((b) => b.length < 1 || b.length > 256)) bad('plan.blocks names must be 1..256 characters');
  }
  if (plan.mode === 'plain' && (plan.codec || plan.dp || plan.blocks)) bad('a plain round carries no codec, DP or blocks');
  if (plan.mode === 'secure') {
    if (!plan.codec || !plan.windows) bad('a secure round needs a codec and phase windows');
    if (plan.codec.scheme !== 'int' || plan.codec.bits < 1 || plan.codec.bits > 32 || plan.codec.seed.length !== 32) bad('plan.codec');
  }
  if (plan.dp && (plan.dp.mode === 'off' || plan.dp.noise_multiplier === null)) bad('plan.dp must be on and resolved');
}

function validate(msg) {
  const bad = (why) => { throw new WireError(`${msg.t}: ${why}`); };
  const len = (name, n) => { if (msg[name].length !== n) bad(`${name} must be ${n} bytes`); };
  switch (msg.t) {
    case 'model': if (msg.version < 0) bad('version must be >= 0'); len('sha256', 32); break;
    case 'round':
      if (msg.round_id < 0 || msg.base_version < 0) bad('round_id and base_version must be >= 0');
      if (msg.min_clients < 1 || msg.target_clients < msg.min_clients) bad('need 1 <= min_clients <= target_clients');
      if (!(msg.opened_at <= msg.deadline)) bad('deadline must not precede opened_at');
      validatePlan(msg.plan, bad);
      break;
    case 'update': if (msg.num_examples < 1 || msg.dim < 1) bad('num_examples and dim must be >= 1'); break;
    case 'presence': if (msg.memory_budget < 0 || msg.activation_profile.some((a) => a < 0)) bad('negative budget'); break;
    case 'manifest':
      len('transfer_id', 16); len('sha256', 32);
      if (msg.total_size < 0 || msg.chunk_size < 1) bad('sizes must be positive');
      if (msg.chunk_count !== Math.max(1, Math.ceil(msg.total_size / msg.chunk_size))) bad('chunk_count mismatch');
      break;
    case 'chunk': len('transfer_id', 16); if (msg.index < 0) bad('bad index'); break;
    default:
      if (msg.t.startsWith('secagg.')) {
        if (msg.round < 0) bad('round must be >= 0');
        const optionalSig = msg.t === 'secagg.share_batch' && !msg.signature.length;
        if ('signature' in msg && msg.t !== 'secagg.encrypted_shares' && !optionalSig) len('signature', 64);
      }
      if (msg.t === 'secagg.advertise_keys') { len('enc_pk', 32); len('mask_pk', 32); len('self_mask_commitment', 32); }
      if (msg.t === 'secagg.compact_roster') {
        if (msg.digests.length !== 16 * msg.devices.length) bad('compact roster digests do not match its members');
        if (msg.devices.some((d, i) => i > 0 && !(msg.devices[i - 1] < d))) bad('compact roster members must be sorted and unique');
      }
      if (msg.t === 'secagg.neighbour_keys' && msg.keys.length !== 160 * msg.members.length) bad('neighbour keys do not match their members');
      if (msg.t === 'secagg.roster' || msg.t === 'secagg.compact_roster') {
        len('graph_seed', 32);
        if (msg.bits < 1 || msg.bits > 32) bad('bits must be in 1..32');
        if (msg.length < 0 || msg.degree < 1 || msg.threshold < 1 || msg.threshold > msg.degree) bad('bad roster parameters');
      }
      if (msg.t === 'secagg.share_batch') {
        if (msg.device in msg.ciphertexts) bad('bundle to or from itself');
        for (const [peer, d] of Object.entries(msg.digests)) {
          if (!(peer in msg.ciphertexts)) bad('digests for peers without a bundle');
          if (d.length !== 32) bad('digests must be 32 bytes');
        }
      }
      if (msg.t === 'secagg.encrypted_shares' && msg.digest.length && msg.digest.length !== 32) bad('bundle digest must be 32 bytes');
      if (msg.t === 'secagg.survivor_list') {
        if (msg.phase !== 'shared' && msg.phase !== 'masked') bad('bad phase');
        if (new Set(msg.devices).size !== msg.devices.length) bad('survivor list repeats a device');
      }
      if (msg.t === 'secagg.masked_input' && (msg.bits < 1 || msg.bits > 32 || msg.length < 0)) bad('bad bits or length');
      if (msg.t === 'secagg.masked_input' && (new Set(msg.refused).size !== msg.refused.length || msg.refused.includes(msg.device))) bad('bad refusal report');
      if (msg.t === 'secagg.seed_request') {
        if (!msg.dealers.length || new Set(msg.dealers).size !== msg.dealers.length) bad('seed request must name distinct dealers');
        const proven = msg.proofs.map((p) => p.dealer);
        if (new Set(proven).size !== proven.length || proven.some((d) => !msg.dealers.includes(d))) bad('proofs for distinct requested dealers');
        for (const p of msg.proofs) {
          if (p.digest_signature.length !== 64 || p.advert_signature.length !== 64) bad('proof signatures must be 64 bytes');
          if (p.commitment.length !== 32) bad('proof commitment must be 32 bytes');
          if (Object.values(p.digests).some((d) => d.length !== 32)) bad('proof digests must be 32 bytes');
          if (Object.values(p.shares).some((x) => x.length !== 33)) bad('proof shares must be 33 bytes');
          if (!Object.keys(p.shares).length || Object.keys(p.shares).some((h) => !(h in p.digests))) bad('proof shares of unsigned holders');
        }
      }
      if (msg.t === 'secagg.seed_reveal') {
        if (Object.values(msg.seeds).some((x) => x.length !== 32)) bad('pair seeds must be 32 bytes');
        if (msg.device in msg.seeds) bad('no pair seed with itself');
      }
      if (msg.t === 'secagg.unmask_reveal') {
        for (const k of Object.keys(msg.self_mask_shares)) if (k in msg.mask_key_shares) bad('both kinds of share');
      }
  }
  return msg;
}

/**
 * Decode a payload into `{ t, ...fields }`; `expected` (a type or list of types) narrows what is accepted.
 * Returns the message; with `withSpans`, also `{ msg, spans }` (top-level value byte ranges).
 */
export function decode(payload, expected = null, { maxBytes, withSpans = false } = {}) {
  const spans = withSpans ? new Map() : null;
  const limits = maxBytes ? { maxBytes, maxStr: 64 * 1024, maxArray: 1_000_000, maxMap: 100_000 } : undefined;
  const body = unpack(payload, { spans, ...(limits ? { limits } : {}) });
  if (!(body instanceof Map)) throw new WireError('top level must be a map');
  if (body.get('v') !== SCHEMA_VERSION) throw new WireError(`unsupported schema version ${body.get('v')}`);
  const t = body.get('t');
  const schema = typeof t === 'string' ? SCHEMAS[t] : undefined;
  if (!schema) throw new WireError(`unknown message type ${String(t)}`);
  if (expected && ![].concat(expected).includes(t)) throw new WireError(`expected ${expected}, got ${t}`);
  body.delete('v'); body.delete('t');
  const msg = validate({ t, ...build(schema, body, t) });
  return withSpans ? { msg, spans } : msg;
}

function wireValue(value, type) {
  if (Array.isArray(type) && type[0] === 'opt') return value === null || value === undefined ? null : wireValue(value, type[1]);
  if (type === 'float') return f64(value);
  if (type === 'int' || type === 'str' || type === 'bool' || type === 'bin' || type === 'any') return value;
  if (Array.isArray(type) && type[0] === 'list') return value.map((v) => wireValue(v, type[1]));
  if (Array.isArray(type) && type[0] === 'map') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, wireValue(v, type[1])]));
  }
  if (type.record) return Object.fromEntries(type.record.map(([n, tt]) => [n, wireValue(value[n], tt)]));
  throw new WireError('unsupported type');
}

/** Canonical encoding of `{ t, ...fields }` (fields in schema order, then `v`, `t`). */
export function encode(msg) {
  const schema = SCHEMAS[msg.t];
  if (!schema) throw new WireError(`unknown message type ${msg.t}`);
  const body = {};
  for (const [name, type, dflt] of schema) {
    const value = msg[name] === undefined ? (dflt ? dflt() : undefined) : msg[name];
    if (value === undefined) throw new WireError(`${msg.t}: missing field ${name}`);
    body[name] = wireValue(value, type);
  }
  body.v = SCHEMA_VERSION;
  body.t = msg.t;
  return pack(body);
}
