#!/usr/bin/env bash
# System libraries the test suite and demo need (headless MuJoCo rendering, video codecs).
# Installs only what is missing, and only when running as root with apt-get available.
set -euo pipefail
needed=()
for pkg in libegl1 libgl1 libglib2.0-0; do
  dpkg -s "$pkg" >/dev/null 2>&1 || needed+=("$pkg")
done
if [ ${#needed[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: missing system packages ${needed[*]} (install them for headless MuJoCo rendering)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
