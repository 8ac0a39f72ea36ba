#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain: iproute2
# (network namespaces for the partition tests), util-linux (nsenter),
# iptables, busybox-static (the docker driver tests build their images
# FROM scratch with it: no registry is reachable) and chromium (the
# dashboard's test drives it headless). Then makes sure a Docker
# Engine answers, starting dockerd in the background if it is installed but
# not running. Needs root to install or start anything; says what is
# missing otherwise. A missing engine is only a warning: the docker driver
# tests then fail with their own message, and the rest still runs.
set -euo pipefail

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || missing+=(busybox-static)
command -v chromium >/dev/null 2>&1 || [ -n "${FLOTILLA_CHROMIUM:-}" ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "test-deps: missing ${missing[*]}; run as root or install them" >&2
        exit 1
    fi
    echo "test-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

docker_answers() {
    timeout 10 docker info >/dev/null 2>&1
}

if command -v docker >/dev/null 2>&1 && docker_answers; then
    exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "test-deps: warning: no Docker Engine answers and dockerd is not installed; the docker driver tests will fail" >&2
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "test-deps: warning: no Docker Engine answers; run as root to start dockerd" >&2
    exit 0
fi
echo "test-deps: starting dockerd (log: /tmp/dockerd.log)"
nohup dockerd >/tmp/dockerd.log 2>&1 &
for _ in $(seq 1 30); do
    if docker_answers; then
        exit 0
    fi
    sleep 1
done
echo "test-deps: warning: dockerd did not answer within 30 s; see /tmp/dockerd.log" >&2
