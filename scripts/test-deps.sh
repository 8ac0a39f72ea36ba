#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain: iproute2
# (network namespaces for the partition tests), util-linux (nsenter) and
# iptables. Needs root to install; says what is missing otherwise.
set -euo pipefail

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "test-deps: missing ${missing[*]}; run as root or install them" >&2
    exit 1
fi
echo "test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
