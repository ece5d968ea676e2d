#!/bin/sh
# One edge device per container: a stable client id from the hostname, a shard from its hash.
set -eu
id="edge-$(hostname | tr -c 'A-Za-z0-9_\n-' '-')"
shard=$(python -c "import sys, zlib; print(zlib.crc32(sys.argv[1].encode()) % int(sys.argv[2]))" "$id" "${FEDMQ_SHARDS:-8}")
exec fedmq-edge --broker "${FEDMQ_BROKER}" --federation demo --client-id "$id" \
  --task digits --shard "$shard" --shards "${FEDMQ_SHARDS:-8}"
