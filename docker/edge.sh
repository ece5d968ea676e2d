#!/bin/sh
# One edge device per container. Each replica claims one of the bundles the `init` job enrolled (an atomic
# mkdir in the shared volume, remembered by hostname across restarts) and trains the digits shard of that
# device, with TLS and its own broker account.
set -eu
dir=/fed
me=$(hostname)
device=""
for claim in "$dir"/claims/*; do
  [ -f "$claim/host" ] && [ "$(cat "$claim/host")" = "$me" ] && device=$(basename "$claim")
done
if [ -z "$device" ]; then
  for bundle in "$dir"/devices/*/; do
    name=$(basename "$bundle")
    if mkdir "$dir/claims/$name" 2>/dev/null; then
      echo "$me" > "$dir/claims/$name/host"
      device="$name"
      break
    fi
  done
fi
[ -n "$device" ] || { echo "no unclaimed device bundle in $dir/devices (enrol more)" >&2; exit 3; }
shards=$(ls -d "$dir"/devices/*/ | wc -l)
shard=$(( ${device#edge-} - 1 ))
exec fedmq-edge --config "$dir/devices/$device/device.toml" --task digits --shard "$shard" --shards "$shards"
