#!/bin/sh
# Compose `init` job: on the first start, create the federation in the shared volume (TLS listener,
# accounts, ACL, enrolment authority) with the digits model, and enrol $FEDMQ_DEVICES devices. Later
# starts find it there and do nothing. Keep /fed/authority.key off the running services in production:
# enrol with `fedmq enroll --dir` on the admin machine and copy bundles instead.
set -eu
dir=/fed
if [ ! -f "$dir/federation.json" ]; then
  fedmq init --dir "$dir" --federation "${FEDMQ_FEDERATION:-demo}" --host mosquitto --san localhost \
    --port 8883 --model simulator.models:digits_mlp
  sed -i 's/^min_clients = .*/min_clients = 2/; s/^target_clients = .*/target_clients = 4/' \
    "$dir/aggregator/aggregator.toml"
  i=1
  while [ "$i" -le "${FEDMQ_DEVICES:-8}" ]; do
    fedmq enroll --dir "$dir" "edge-$i"
    i=$((i + 1))
  done
  mkdir -p "$dir/claims"
fi
echo "federation ready in $dir"
