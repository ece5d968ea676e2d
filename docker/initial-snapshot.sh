#!/bin/sh
# Writes the digits demo's initial snapshot to $1 if it does not exist yet, then execs the rest.
set -eu
target="$1"; shift
if [ ! -f "$target" ]; then
  python -c "
import sys
from edge_client.model import FederatedModel
from shared.snapshots import make_snapshot, write_initial
from simulator.models import digits_mlp
m = FederatedModel(digits_mlp())
write_initial(sys.argv[1], make_snapshot('demo', 0, -1, m.layout, m.get_flat()))
" "$target"
fi
exec "$@"
