#!/usr/bin/env bash
# Installs what `flotilla-bench` needs beyond the Rust toolchain: etcd-server
# (the peer of `writes`), haproxy and wrk (the peer and the load generator
# of `mesh`) and
# Debian's static busybox (/bin/busybox), which the bench copies into a
# FROM-scratch image for the Docker Swarm comparison (no image can be pulled).
# Docker itself is optional: without a reachable engine the bench skips Swarm.
set -euo pipefail

if [ -x /bin/busybox ]; then
    echo "bench-deps: /bin/busybox present"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        SUDO="sudo"
    fi
    echo "bench-deps: installing busybox-static"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends busybox-static
fi

if [ ! -x /bin/busybox ]; then
    echo "bench-deps: /bin/busybox is still missing" >&2
    exit 1
fi
# A dynamically linked busybox would not run in a FROM-scratch image.
if command -v ldd >/dev/null && ldd /bin/busybox 2>&1 | grep -q '=>'; then
    echo "bench-deps: /bin/busybox is dynamically linked; install busybox-static" >&2
    exit 1
fi

# etcd, the peer of `flotilla-bench writes`.
if command -v etcd >/dev/null; then
    echo "bench-deps: etcd present ($(etcd --version | head -1))"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        SUDO="sudo"
    fi
    echo "bench-deps: installing etcd-server"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends etcd-server
fi

# haproxy and wrk, the peer and the load generator of `flotilla-bench mesh`.
# Debian installs haproxy in /usr/sbin, which a user's PATH may lack.
if command -v wrk >/dev/null && { command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ]; }; then
    echo "bench-deps: haproxy and wrk present"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        SUDO="sudo"
    fi
    echo "bench-deps: installing haproxy and wrk"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends haproxy wrk
fi

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    echo "bench-deps: docker engine reachable ($(docker version --format '{{.Server.Version}}'))"
else
    echo "bench-deps: docker engine not reachable: the Swarm comparison will be skipped"
fi
