#!/usr/bin/env bash
# Quick start: install what is missing, build, create a small qcow2 demo
# domain and run vmsnap on it with the embedded Redis. A snapshot is taken
# right away and then every minute, and only the last 3 are kept; each job
# prints a line. Ctrl-C stops it (and its Redis).
#   bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VMSNAP_SKIP_GUEST=1 bash scripts/setup.sh
demo=/var/tmp/vmsnap-demo
mkdir -p "$demo/snapshots" "$demo/state"
if [ ! -f "$demo/demo.qcow2" ]; then
  qemu-img create -q -f qcow2 "$demo/demo.qcow2" 64M
  echo "demo: created $demo/demo.qcow2"
fi
echo "demo: vmsnap run -c config/demo.yaml   (in another terminal: node dist/src/cli/main.js -c config/demo.yaml list demo)"
exec node dist/src/cli/main.js -c config/demo.yaml run
