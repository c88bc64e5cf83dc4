#!/usr/bin/env bash
# The test command: bring up the real stack (installing what is missing), install the package,
# lint the Jenkinsfile, check the types, run every test. Extra arguments go to pytest, e.g. `-k deploy`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

began=$SECONDS
stamp() { echo "test.sh: $* ($((SECONDS - began)) s)"; }

bash scripts/stack.sh start
stamp "stack up"
# The test swarm takes about a minute to start, mostly waiting on its daemons: start it now,
# beside the steps below and the first tests. The swarm tests' fixture runs `swarm.sh start`
# again, which waits on swarm.sh's own lock for this one and then finds everything up.
swarm_log="${TMPDIR:-/tmp}/pipeline-swarm-start.log"
# In a subshell: the stack's settings must not reach pytest's environment (the tests set their own).
(
    eval "$(bash scripts/stack.sh env)"
    bash scripts/swarm.sh start 3 && bash scripts/swarm.sh push "$JRE_IMAGE"
) >"$swarm_log" 2>&1 &
# Where python3 is pyenv's shim, pip's install ends with `pyenv rehash`, which takes a lock file
# and waits up to 60 s for it, then fails. A rehash killed half-way (a login shell of an SSH
# session a test cut) leaves that lock behind for good; a rehash takes well under a second, so a
# lock older than two minutes is such a leftover.
rehash_lock="${PYENV_ROOT:-$HOME/.pyenv}/shims/.pyenv-shim"
if [ -n "$(find "$rehash_lock" -mmin +2 2>/dev/null)" ]; then
    echo "test.sh: removing a stale pyenv rehash lock ($rehash_lock)"
    rm -f "$rehash_lock"
fi
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
stamp "package installed"
bash scripts/lint-jenkinsfile.sh
stamp "Jenkinsfile linted"
python3 -m mypy   # --strict over pipeline/ (pyproject.toml [tool.mypy])
stamp "types checked"
# The same leftover can appear during the run (tests kill SSH sessions on purpose): then every
# later login shell on the stack's sshd waits for that lock before giving up on its rehash, about
# a second each. Looked for every 20 s while the tests run; stopped with them.
# Its sleep holds no output of ours (a pipe reading this script would wait for it), and the loop
# ends by itself once this script is gone (killed without its EXIT trap).
( while sleep 20 </dev/null >/dev/null 2>&1 && kill -0 $$ 2>/dev/null; do
      [ -n "$(find "$rehash_lock" -mmin +1 2>/dev/null)" ] && rm -f "$rehash_lock" \
          && echo "test.sh: removed a stale pyenv rehash lock during the tests" >&2
  done ) &
janitor=$!
trap 'kill "$janitor" 2>/dev/null || true' EXIT
python3 -m pytest -q -p no:cacheprovider --durations=25 "$@" tests
stamp "tests done"
