#!/usr/bin/env bash
# Local agentmesh testnet.
#
#   scripts/testnet.sh demo [N]        start N nodes (default 5), form the mesh, exchange
#                                      messages, settle a contested task claim, replicate
#                                      a pattern and its usage count, ask for a recommendation, stop
#   scripts/testnet.sh demo --hosts N [--nat]
#                                      the same on N namespaced hosts (root), hosts 1.. behind NAT
#   scripts/testnet.sh up [N]          start N nodes in the background and wait for the mesh
#   scripts/testnet.sh status          show the nodes started by `up`
#   scripts/testnet.sh down            stop them
#   scripts/testnet.sh bench gossip|transport|nat|consensus|sync|membership|flood|model|federated
#                                      benchmarks (JSON on stdout)
#
# Builds in release mode first. Extra options: scripts/testnet.sh <command> --help
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
echo "[testnet] building agentmesh (release)..." >&2
# Benchmarks also run NATS beside agentmesh (bench gossip): the client is
# built only for them.
features=()
if [ "$1" = bench ]; then
  features=(--features agentmesh-testnet/nats)
fi
cargo build --release --quiet -p agentmesh-node -p agentmesh-testnet "${features[@]}"
exec target/release/agentmesh-testnet --bin target/release/agentmesh "$@"
