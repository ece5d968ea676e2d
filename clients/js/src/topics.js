// The MQTT topic tree of one federation (docs/protocol.md §1); mirrors shared/topics.py.

import { WireError } from './errors.js';

const ID = /^[A-Za-z0-9_-]{1,64}$/;
// Numbers in topics: canonical ASCII digits (no sign, no leading zero), bounded (docs/protocol.md §1).
const NUMBER = /^(0|[1-9][0-9]{0,8})$/;
export const MAX_ROUND_ID = 999_999_999;
export const MAX_CHUNK_INDEX = 999_999;

export function parseNumber(text, limit, what) {
  if (!NUMBER.test(text) || Number(text) > limit) throw new WireError(`${what} ${JSON.stringify(text)} is not a number in [0, ${limit}]`);
  return Number(text);
}
export const ROUND_KINDS = new Set(['update', 'keys', 'shares', 'masked', 'unmask']);

export function checkId(value, field = 'id') {
  if (typeof value !== 'string' || !ID.test(value)) throw new WireError(`${field} ${JSON.stringify(value)} must be 1-64 characters of [A-Za-z0-9_-]`);
  return value;
}

export class Topics {
  constructor(fed) { this.fed = checkId(fed, 'federation'); this.prefix = `fl/${fed}`; }
  get model() { return `${this.prefix}/model`; }
  modelChunk(i) { return `${this.model}/c/${i}`; }
  get modelAll() { return `${this.model}/#`; }
  get delta() { return `${this.prefix}/delta`; }
  deltaChunk(i) { return `${this.delta}/c/${i}`; }
  get deltaAll() { return `${this.delta}/#`; }
  get round() { return `${this.prefix}/round`; }
  get roster() { return `${this.round}/roster`; }
  get notice() { return `${this.round}/notice`; }
  get roundAll() { return `${this.round}/#`; }
  get result() { return `${this.prefix}/result`; }
  status(cid) { return `${this.prefix}/status/${checkId(cid, 'client_id')}`; }
  inbox(cid) { return `${this.prefix}/inbox/${checkId(cid, 'client_id')}`; }
  inboxChunk(cid, i) { return `${this.inbox(cid)}/c/${i}`; }
  inboxAll(cid) { return `${this.inbox(cid)}/#`; }
  roundMsg(round, kind, cid) {
    if (!ROUND_KINDS.has(kind)) throw new WireError(`unknown round message kind ${kind}`);
    return `${this.prefix}/r/${round}/${kind}/${checkId(cid, 'client_id')}`;
  }
  roundChunk(round, kind, cid, i) { return `${this.roundMsg(round, kind, cid)}/c/${i}`; }

  /** Chunk index of `topic` under `base` (null for `base` itself); WireError for anything else. */
  static chunkOf(base, topic) {
    if (topic === base) return null;
    if (!topic.startsWith(`${base}/c/`)) throw new WireError(`not a topic under ${base}: ${topic}`);
    return parseNumber(topic.slice(base.length + 3), MAX_CHUNK_INDEX, `chunk index under ${base}`);
  }

  parseRound(topic) {
    const parts = topic.split('/');
    if (parts[0] !== 'fl' || parts[1] !== this.fed || parts[2] !== 'r' || (parts.length !== 6 && parts.length !== 8)) {
      throw new WireError(`not a round topic: ${topic}`);
    }
    const [, , , round, kind, sender, c, i] = parts;
    if (!ROUND_KINDS.has(kind) || !ID.test(sender)) throw new WireError(`malformed round topic ${topic}`);
    const roundId = parseNumber(round, MAX_ROUND_ID, 'round id');
    let chunk = null;
    if (parts.length === 8) {
      if (c !== 'c') throw new WireError(`malformed chunk topic ${topic}`);
      chunk = parseNumber(i, MAX_CHUNK_INDEX, 'chunk index');
    }
    return { round: roundId, kind, sender, chunk };
  }
}
