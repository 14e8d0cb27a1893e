#!/usr/bin/env bash
# The browser tests drive Debian's Chromium through Playwright (no browser download).
set -eu
if [ -x /usr/bin/chromium ]; then echo "Chromium: $(/usr/bin/chromium --version 2>/dev/null)"; exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "Install Debian's chromium package (apt-get install chromium)" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
