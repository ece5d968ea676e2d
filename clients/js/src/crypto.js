// The libsodium primitives fedmq uses (docs/protocol.md §4), through libsodium.js (WebAssembly), so the
// bytes are those of PyNaCl: same library, same algorithms. Call `await ready()` once before anything else.

import { blake2b as nobleBlake2b } from '@noble/hashes/blake2b';
import sodiumModule from 'libsodium-wrappers-sumo';

import { SecAggError } from './errors.js';

let sodium = null;

/** Load libsodium (WebAssembly); every other function here needs it. */
export async function ready() {
  if (!sodium) {
    await sodiumModule.ready;
    sodium = sodiumModule;
  }
  return sodium;
}

function lib() {
  if (!sodium) throw new Error('call await crypto.ready() first');
  return sodium;
}

const enc = new TextEncoder();
export const utf8 = (s) => enc.encode(s);

export function hex(bytes) { return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(''); }
export function fromHex(text) { return Uint8Array.from(text.match(/../g)?.map((h) => parseInt(h, 16)) ?? []); }

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

export function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/**
 * BLAKE2b with optional key and personalisation (zero-padded to 16 bytes), as libsodium's
 * crypto_generichash_blake2b_salt_personal with a zero salt (what Python's hashlib.blake2b computes).
 * libsodium.js does not expose that function for messages, so this uses @noble/hashes.
 */
export function blake2b(message, { key = null, person = null, size = 32 } = {}) {
  const opts = { dkLen: size };
  if (key && key.length) opts.key = key;
  if (person) {
    const p = new Uint8Array(16);
    p.set(typeof person === 'string' ? utf8(person) : person);
    opts.personalization = p;
  }
  return nobleBlake2b(message, opts);
}

export const sha256 = (data) => lib().crypto_hash_sha256(data);

/** `randombytes_buf_deterministic`: IETF ChaCha20 keystream under `seed`, nonce "LibsodiumDRG". */
export const deterministicBytes = (size, seed) => lib().randombytes_buf_deterministic(size, seed);

export const randomBytes = (size) => lib().randombytes_buf(size);

export function ed25519FromSeed(seed) {
  const pair = lib().crypto_sign_seed_keypair(seed);
  return { publicKey: pair.publicKey, secretKey: pair.privateKey };
}

export const sign = (secretKey, message) => lib().crypto_sign_detached(message, secretKey);

export function verify(publicKey, message, signature) {
  try {
    return signature.length === 64 && publicKey.length === 32 && lib().crypto_sign_verify_detached(signature, message, publicKey);
  } catch {
    return false;
  }
}

export const x25519Base = (secretKey) => lib().crypto_scalarmult_base(secretKey);

/** X25519; throws SecAggError for a low-order peer key (all-zero output), as PyNaCl does. */
export function x25519(secretKey, publicKey) {
  try {
    return lib().crypto_scalarmult(secretKey, publicKey);
  } catch (e) {
    throw new SecAggError(`key agreement failed: ${e.message ?? e}`);
  }
}

/** NaCl Box, "easy" layout (tag || ciphertext) = PyNaCl's Box.encrypt(...).ciphertext. */
export const boxSeal = (plaintext, nonce, recipientPk, senderSk) => lib().crypto_box_easy(plaintext, nonce, recipientPk, senderSk);

export function boxOpen(ciphertext, nonce, senderPk, recipientSk) {
  try {
    return lib().crypto_box_open_easy(ciphertext, nonce, senderPk, recipientSk);
  } catch {
    return null;
  }
}
