#!/usr/bin/env bash
# The first README command: set everything up, then serve the embedded example zone on
# 127.0.0.1:5353 (UDP and TCP).  Try: dig @127.0.0.1 -p 5353 www.example.com
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec python3 -m pop53 serve --example --listen 127.0.0.1:5353 "$@"
