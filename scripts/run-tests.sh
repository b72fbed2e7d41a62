#!/usr/bin/env bash
# The test command (npm test): build, run the whole vitest suite against real
# qemu-img, QEMU and redis-server, and end with one plain summary line
# ("vitest: N passed, N failed, N skipped") that CI systems can read.
set -uo pipefail
cd "$(dirname "$0")/.."
npm run build --silent || exit 1
mkdir -p .cache
report=.cache/vitest-report.json
rm -f "$report"
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@"
rc=$?
if [ -f "$report" ]; then
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const skipped = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
    console.log(`vitest: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
  ' "$report"
fi
exit $rc
