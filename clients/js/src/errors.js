// Typed errors, mirroring shared/errors.py: callers catch narrowly, and a component never crashes on input.

export class FedmqError extends Error {
  constructor(message) { super(message); this.name = this.constructor.name; }
}
export class WireError extends FedmqError {}
export class ChunkError extends WireError {}
export class ProtocolError extends FedmqError {}
export class SecAggError extends ProtocolError {}
export class CodecError extends FedmqError {}
