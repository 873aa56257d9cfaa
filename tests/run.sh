#!/usr/bin/env bash
# Set up a fresh Debian machine for the test suite and run it:
# Debian's chromium (for the browser tests), the Python requirements, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  sudo_cmd=""
  if [ "$(id -u)" != "0" ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
python3 -m pytest -q -p no:cacheprovider "$@"
