#!/usr/bin/env bash
# Rewrites constraints.txt: every package the project, its tests and its linters install, at the newest
# versions PyPI offers today, resolved in a new virtual environment. Run it, run the tests, commit both.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -e '.[test,dev]'
{
    echo "# Exact versions of every package the tests and the demo install, made by tests/refresh_constraints.sh."
    echo "# Used as pip constraints (-c): they pin what is installed, they add nothing."
    "$venv/bin/pip" freeze --exclude-editable | grep -v -i '^wasm-controlplane'
} > constraints.txt
rm -rf "$(dirname "$venv")"
echo "constraints.txt: $(grep -c '==' constraints.txt) packages"
