#!/usr/bin/env bash
# Installs the Debian packages that building, testing and benchmarking umbra
# need, and only those that are missing, so a second run costs nothing.
set -euo pipefail

packages=(
  build-essential pkg-config clang libclang-rt-14-dev clang-tidy clang-format cppcheck
  libev-dev libyaml-dev libpcre2-dev libjansson-dev libssl-dev libnghttp2-dev
  libcmocka-dev zlib1g-dev
  python3 python3-pytest curl nghttp2-client wrk slowhttptest strace
  nginx haproxy openssl procps util-linux
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing packages and not root; install them: ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the web servers it installs; benchmarks start their own.
for svc in nginx haproxy; do
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
  pkill -x "$svc" 2>/dev/null || true
done
