#!/usr/bin/env bash
# The test command: bring up the real stack (installing what is missing), install the package,
# lint the Jenkinsfile, run every test. Extra arguments go to pytest, e.g. `-k deploy`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

bash scripts/stack.sh start
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
bash scripts/lint-jenkinsfile.sh
python3 -m pytest -q -p no:cacheprovider --durations=12 "$@" tests
