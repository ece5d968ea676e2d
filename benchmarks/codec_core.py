"""Uplink codec and bit-packing cost at d = 10^6: bytes per coordinate, encode/decode time, peak memory.

Usage: ``python benchmarks/codec_core.py [--dim 1000000] [--json PATH]``. Peak extra memory is measured
with tracemalloc around one ``UpdateEncoder.encode`` call (the input delta is not counted); the target is
``1.5 * 4 * d`` bytes.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import tracemalloc

import numpy as np
from rich.console import Console
from rich.table import Table

from shared.codec import CodecConfig, UpdateDecoder, UpdateEncoder, pack, unpack

CASES = [(16, 1.0), (12, 1.0), (8, 1.0), (8, 0.5), (8, 0.25)]


def best_time(action, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(dim: int, bits: int, rate: float, clients: int, repeats: int) -> dict[str, float]:
    config = CodecConfig(bits=bits, clip_norm=1.0, expected_clients=clients, seed=bytes(range(32)),
                         subsample_rate=rate).validate(secure=True)
    encoder, decoder = UpdateEncoder(config, dim), UpdateDecoder(config, dim)
    rng = np.random.default_rng(0)
    delta = (rng.standard_normal(dim) * 1e-3).astype(np.float32)
    encoded = encoder.encode(delta, 1.0, rng)
    tracemalloc.start()
    encoder.encode(delta, 1.0, rng)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    encode_s = best_time(lambda: encoder.encode(delta, 1.0, rng), repeats)
    payload = pack(encoded, bits)
    pack_s = best_time(lambda: pack(encoded, bits), repeats)
    unpack_s = best_time(lambda: unpack(payload, bits, encoded.size), repeats)
    summed = encoded.copy()
    decode_s = best_time(lambda: decoder.decode(summed, 1), repeats)
    mean, _ = decoder.decode(summed, 1)
    return {
        "dim": dim, "bits": bits, "subsample_rate": rate, "expected_clients": clients,
        "encoded_coordinates": encoder.encoded_length, "payload_bytes": len(payload),
        "bytes_per_coordinate": len(payload) / dim, "compression_vs_float32": 4 * dim / len(payload),
        "encode_s": encode_s, "pack_s": pack_s, "unpack_s": unpack_s, "decode_s": decode_s,
        "peak_extra_bytes": peak, "peak_extra_over_4d": peak / (4 * dim),
        "relative_error_one_client": float(np.linalg.norm(mean - delta) / np.linalg.norm(delta)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    rows = [measure(args.dim, bits, rate, args.clients, args.repeats) for bits, rate in CASES]
    table = Table(title=f"uplink codec, d={args.dim}, n={args.clients} ({platform.processor() or 'cpu'})")
    for column in ("bits", "p", "B/coord", "x vs f32", "encode ms", "pack ms", "unpack ms", "decode ms",
                   "peak/4d", "rel. err"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["bits"]), f"{row['subsample_rate']:g}", f"{row['bytes_per_coordinate']:.3f}",
                      f"{row['compression_vs_float32']:.2f}", f"{row['encode_s'] * 1e3:.1f}",
                      f"{row['pack_s'] * 1e3:.1f}", f"{row['unpack_s'] * 1e3:.1f}",
                      f"{row['decode_s'] * 1e3:.1f}", f"{row['peak_extra_over_4d']:.2f}",
                      f"{row['relative_error_one_client']:.3g}")
    Console(width=140).print(table)
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump({"benchmark": "codec_core", "machine": platform.platform(), "results": rows}, handle,
                      indent=2)


if __name__ == "__main__":
    main()
