#!/usr/bin/env bash
# Run the test suite N times and list every test that failed in any run.
#
#   scripts/flake_check.sh N [--load] [PYTEST ARGS...]
#
# --load keeps every CPU busy with one spinning process each for the whole check
# (a CI machine shared with other jobs). Exit status: 0 when no test ever failed,
# 1 otherwise. Uses .venv/bin/python when present, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:?usage: scripts/flake_check.sh N [--load] [PYTEST ARGS...]}
shift
load=0
if [ "${1:-}" = "--load" ]; then load=1; shift; fi
py=.venv/bin/python
[ -x "$py" ] || py=python3
dir=$(mktemp -d)
burners=()
cleanup() { for p in "${burners[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
if [ "$load" = 1 ]; then
    for _ in $(seq "$(nproc)"); do "$py" -c "while True: pass" & burners+=($!); done
fi

for i in $(seq "$n"); do
    start=$(date +%s)
    if "$py" -m pytest -q -p no:cacheprovider --junitxml="$dir/run$i.xml" "$@" > "$dir/run$i.log" 2>&1; then
        rc=0
    else
        rc=$?
    fi
    echo "run $i/$n: exit $rc, $(( $(date +%s) - start )) s: $(tail -n 1 "$dir/run$i.log")"
done

"$py" - "$dir" "$n" <<'PY'
import sys, xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

where, n = Path(sys.argv[1]), int(sys.argv[2])
failed = Counter()
for xml in sorted(where.glob("run*.xml")):
    for case in ET.parse(xml).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed[f"{case.get('classname')}::{case.get('name')}"] += 1
missing = n - len(list(where.glob("run*.xml")))
if missing:
    print(f"{missing} run(s) wrote no report (crashed or interrupted pytest): see {where}/run*.log")
if failed:
    print(f"tests that failed in some of {n} runs (logs in {where}):")
    for name, count in failed.most_common():
        print(f"  {count}/{n}  {name}")
    sys.exit(1)
print(f"no test failed in {n} runs" + ("" if not missing else " that wrote a report"))
sys.exit(1 if missing else 0)
PY
