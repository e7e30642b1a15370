#!/usr/bin/env bash
# The second README command: set everything up, then run the whole test suite.
# Needs root (apt-get, network namespaces, privilege-drop tests).  Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec python3 -m pytest -q -p no:cacheprovider tests "$@"
