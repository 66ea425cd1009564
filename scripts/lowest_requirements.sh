#!/usr/bin/env bash
# The whole suite with the lowest version of every requirement that pyproject.toml allows:
#
#   bash scripts/lowest_requirements.sh            # this machine's python3
#   bash scripts/lowest_requirements.sh python3.13
#
# Makes a throw-away virtualenv, asks uv (installed from PyPI into another one) for the lowest
# version of each of the project's own requirements and its extras' that has a wheel for that
# Python (`--resolution lowest-direct --only-binary :all:`), adds the `dev` extra's tools at their
# newest without moving those, and runs `ruff check .` and the suite with them (installing Debian's
# chromium for the browser tests first, as `make test` does). docs/robustness.md, section 18, says
# what it found. Needs PyPI and about 7 GB of disk; the exit status is pytest's. The virtualenvs go
# when it ends; uv keeps what it downloaded in its cache (~/.cache/uv) for the next run, and `uv
# cache clean` (or removing that folder) frees it.
set -euo pipefail
python=${1:-python3}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$work/uv"
"$work/uv/bin/pip" install --quiet --disable-pip-version-check uv
uv=$work/uv/bin/uv
"$uv" venv --quiet --python "$python" "$work/venv"
export VIRTUAL_ENV=$work/venv
cd "$repo"
extras=$("$python" -c 'import tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
print(",".join(sorted(set(extras) - {"dev"})))')  # every extra but the tools
"$uv" pip install --quiet --resolution lowest-direct --only-binary :all: -e ".[$extras]"
"$uv" pip install --quiet -e '.[dev]'
"$uv" pip list 2>/dev/null |
    grep -i -E '^(torch|torchvision|pillow|numpy|nltk|streamlit|pyyaml|tqdm) ' | tr -s ' ' |
    paste -sd ';'
"$uv" pip list 2>/dev/null | grep -i -E '^(pycocoevalcap|tensorboard|vl-convert-python) ' |
    tr -s ' ' | paste -sd ';'
bash scripts/ensure_chromium.sh
"$work/venv/bin/python" -m ruff check .
"$work/venv/bin/python" -m pytest -p no:cacheprovider -n 2 --dist worksteal  # as make test
