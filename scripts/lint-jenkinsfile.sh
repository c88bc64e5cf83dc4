#!/usr/bin/env bash
# Lint the Jenkinsfile with npm-groovy-lint (CodeNarc; needs node and Java 17).
# Fails on errors only; warnings and infos are printed but do not fail.
#
# It catches Groovy syntax errors and CodeNarc rule errors, not declarative
# structure (an unknown directive or a misplaced `when`): only Jenkins itself
# checks that (`jenkins-cli declarative-linter`).
#
# Usage: scripts/lint-jenkinsfile.sh [path/to/Jenkinsfile]
set -euo pipefail

# Pinned: a new release can add rules, and a lint gate should not turn red by itself.
version="${GROOVY_LINT_VERSION:-15.2.2}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jenkinsfile="${1:-$repo_root/Jenkinsfile}"

# npm-groovy-lint exits 0 when it finds no file to lint.
if [[ ! -f "$jenkinsfile" ]]; then
    echo "lint-jenkinsfile: no such file: $jenkinsfile" >&2
    exit 2
fi

# --noserver: otherwise it leaves a CodeNarc JVM (~400 MB) listening on
# localhost:7484 after exiting, which CI would inherit and concurrent runs share.
# --prefer-offline: the version is pinned, so a cached copy is the one wanted; npx then skips
# asking the registry again on every run (~4-7 s). A machine without it still fetches it.
# --javaoptions: the tool's defaults (-Xms256m,-Xmx2048m) plus C1-only JIT and the serial GC:
# the CodeNarc JVM lives for one short run, where C2 compiling and a parallel GC only take CPU
# from everything else (half the CPU time here; the findings are the same).
exec npx --yes --prefer-offline "npm-groovy-lint@$version" --noserver --failon error \
    "--javaoptions=-Xms256m,-Xmx2048m,-XX:TieredStopAtLevel=1,-XX:+UseSerialGC" "$jenkinsfile"
