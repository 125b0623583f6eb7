#!/usr/bin/env bash
# Runs every Go fuzz target in the module for a while each (default 20s): `make fuzz`.
# The seed corpora under testdata/fuzz run as plain tests in `make test` too.
set -euo pipefail
cd "$(dirname "$0")/.."
time="${1:-20s}"
fail=0
while IFS= read -r line; do
  file="${line%%:*}"
  name="$(sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/' <<<"${line#*:}")"
  pkg="./$(dirname "$file")"
  echo "== $pkg $name ($time)"
  go test -run "^$" -fuzz "^${name}\$" -fuzztime "$time" -fuzzminimizetime 1s "$pkg" || fail=1
done < <(grep -rE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(' . | grep -v '^./vendor/')
exit $fail
