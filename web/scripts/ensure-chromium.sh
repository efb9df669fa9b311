#!/bin/sh
# Playwright here drives Debian's Chromium (no tool can download its own browser):
# install the package when it is missing. Needs root, as CI and the dev machines have.
set -eu
chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
  exit 0
fi
echo "ensure-chromium: $chromium is missing; installing Debian's chromium" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
test -x "$chromium"
