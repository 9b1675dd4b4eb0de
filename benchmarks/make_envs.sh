#!/usr/bin/env bash
# Create the pinned peer environments that cannot share our locked JAX (DESIGN.md, "Benchmarks
# contract"). Idempotent: an environment whose setup finished is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .bench-envs
for setup in benchmarks/envs/*/setup.sh; do
  [ -f "$setup" ] || continue
  name=$(basename "$(dirname "$setup")")
  if [ -f ".bench-envs/$name/.done" ]; then
    echo "bench-env $name: ready"
    continue
  fi
  echo "bench-env $name: creating"
  bash "$setup" ".bench-envs/$name"
  touch ".bench-envs/$name/.done"
done
