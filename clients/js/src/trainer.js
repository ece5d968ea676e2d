// Local training of a small multilayer perceptron on plain typed arrays (no ML framework needed).
//
// The model is whatever the snapshot's layout describes when it is a torch `nn.Sequential` of Linear
// layers with ReLU between them (names `<i>.weight` [out, in] and `<i>.bias` [out], in order): the
// federation's demo model (64 -> 64 -> 10 on 8x8 digits) is one. Training is minibatch SGD with momentum
// on softmax cross-entropy, like the Python device's default; the result is the delta new - old.

import { CodecError } from './errors.js';

/** Linear layers of a Sequential-MLP layout: [{ out, in, wOffset, bOffset }]. */
export function mlpLayers(layout) {
  const layers = [];
  let offset = 0;
  for (let i = 0; i < layout.length; i += 2) {
    const w = layout[i];
    const b = layout[i + 1];
    const prefix = w.name.slice(0, w.name.lastIndexOf('.'));
    if (!b || w.name !== `${prefix}.weight` || b.name !== `${prefix}.bias` || w.shape.length !== 2 || b.shape[0] !== w.shape[0]) {
      throw new CodecError(`layout is not a Sequential MLP at ${w.name}`);
    }
    const [out, inp] = w.shape;
    if (layers.length && layers[layers.length - 1].out !== inp) throw new CodecError(`layer ${prefix} does not chain`);
    layers.push({ out, in: inp, wOffset: offset, bOffset: offset + out * inp });
    offset += out * inp + out;
  }
  return { layers, dim: offset };
}

/** Deterministic 32-bit PRNG (mulberry32) for shuffling. */
export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class MlpTrainer {
  /** `x` is an array of Float32Array feature rows, `y` integer labels. */
  constructor({ x, y, epochs = 1, lr = 0.1, momentum = 0.9, batchSize = 32, seed = 0 }) {
    Object.assign(this, { x, y, epochs, lr, momentum, batchSize, seed });
    this.round = 0;
  }

  forward(params, layers, input) {
    const acts = [input];
    let h = input;
    layers.forEach((L, li) => {
      const z = new Float64Array(L.out);
      for (let o = 0; o < L.out; o++) {
        let s = params[L.bOffset + o];
        const row = L.wOffset + o * L.in;
        for (let i = 0; i < L.in; i++) s += params[row + i] * h[i];
        z[o] = li < layers.length - 1 ? Math.max(0, s) : s;
      }
      acts.push(z);
      h = z;
    });
    return acts;
  }

  /** Train from `weights` (Float32Array of the layout); returns { delta, numExamples, loss, seconds }. */
  train(layout, weights) {
    const started = Date.now();
    const { layers, dim } = mlpLayers(layout);
    if (weights.length !== dim) throw new CodecError(`weights have ${weights.length} values, layout ${dim}`);
    const params = Float32Array.from(weights);
    const velocity = new Float32Array(dim);
    const grad = new Float64Array(dim);
    const rand = mulberry32(this.seed * 7919 + this.round++);
    const order = [...this.y.keys()];
    let lossSum = 0;
    let seen = 0;
    for (let epoch = 0; epoch < this.epochs; epoch++) {
      for (let i = order.length - 1; i > 0; i--) { const j = Math.floor(rand() * (i + 1)); [order[i], order[j]] = [order[j], order[i]]; }
      for (let start = 0; start < order.length; start += this.batchSize) {
        const batch = order.slice(start, start + this.batchSize);
        grad.fill(0);
        for (const n of batch) {
          const acts = this.forward(params, layers, this.x[n]);
          const logits = acts[acts.length - 1];
          const max = Math.max(...logits);
          const exps = logits.map((v) => Math.exp(v - max));
          const total = exps.reduce((a, b) => a + b, 0);
          lossSum += -Math.log(exps[this.y[n]] / total);
          seen++;
          let upstream = exps.map((e, k) => (e / total - (k === this.y[n] ? 1 : 0)) / batch.length);
          for (let li = layers.length - 1; li >= 0; li--) {
            const L = layers[li];
            const input = acts[li];
            const down = new Float64Array(L.in);
            for (let o = 0; o < L.out; o++) {
              const g = upstream[o];
              if (g === 0) continue;
              grad[L.bOffset + o] += g;
              const row = L.wOffset + o * L.in;
              for (let i = 0; i < L.in; i++) { grad[row + i] += g * input[i]; down[i] += g * params[row + i]; }
            }
            if (li > 0) for (let i = 0; i < L.in; i++) if (input[i] <= 0) down[i] = 0; // ReLU
            upstream = down;
          }
        }
        for (let k = 0; k < dim; k++) {
          velocity[k] = this.momentum * velocity[k] + grad[k];
          params[k] -= this.lr * velocity[k];
        }
      }
    }
    const delta = new Float32Array(dim);
    for (let k = 0; k < dim; k++) delta[k] = params[k] - weights[k];
    return { delta, numExamples: this.y.length, loss: lossSum / Math.max(seen, 1), seconds: (Date.now() - started) / 1000 };
  }
}
