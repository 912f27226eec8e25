#!/usr/bin/env bash
# Installs what rask's local cluster and test suite need, if missing:
# RabbitMQ, Redis, docker-compose and Chromium (Debian packages; headless
# Chromium drives the dashboard test), iproute2 and iptables (the partition
# tests cut network namespaces off with them), python3-venv (scripts/validate-k8s.sh),
# podman with runc, netavark and aardvark-dns (its bridge networks and their DNS) and
# debootstrap (scripts/containers-test.sh runs docker-compose.yml in containers with them),
# cargo-nextest, and moto's S3 server (PyPI, into the venv target/moto-venv: the blob tests run
# against it; tests/src/s3.rs says why moto rather than Garage).
# Safe to run again: it only installs what is missing, and says what it did.
#
# The Debian packages would start system-wide RabbitMQ and Redis services on
# the default ports, where `rask local up` wants to run its own private
# servers. So while installing, services are kept from starting, and on a
# systemd machine the services this run installed are disabled.
set -euo pipefail

say() { echo "install-deps: $*"; }

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        say "not root and no sudo: run me as root" >&2
        exit 1
    fi
    sudo=(sudo)
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for package in rabbitmq-server redis-server docker-compose chromium iproute2 iptables python3-venv \
    podman runc netavark aardvark-dns debootstrap; do
    if installed "$package"; then
        say "$package is already installed"
    else
        missing+=("$package")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "missing ${missing[*]}, and this is not a Debian-like system: install them by hand" >&2
        exit 1
    fi

    # Keep the packages' services from starting during the install
    # (invoke-rc.d and deb-systemd-invoke obey policy-rc.d), unless the
    # machine already has a policy of its own.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# Temporary, from rask scripts/install-deps.sh.\nexit 101\n' |
            "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod +x "$policy"
        trap '"${sudo[@]}" rm -f "$policy"' EXIT
    fi

    say "installing ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    say "installed ${missing[*]}"

    # On systemd, the services were enabled and would start at boot.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        for package in "${missing[@]}"; do
            case "$package" in
            rabbitmq-server | redis-server)
                "${sudo[@]}" systemctl disable --now "$package" >/dev/null 2>&1 || true
                say "stopped and disabled the system-wide $package service (rask runs its own)"
                ;;
            esac
        done
    fi
fi

if cargo nextest --version >/dev/null 2>&1; then
    say "cargo-nextest is already installed"
else
    say "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

# moto in server mode: a real S3-compatible server for the blob-store tests (tests/src/s3.rs
# starts it). Only its S3 part and the server's web framework: `moto[server]` would pull every
# AWS service's dependencies (minutes more to install).
moto_venv="$(cd "$(dirname "$0")/.." && pwd)/target/moto-venv"
if [ -x "$moto_venv/bin/moto_server" ]; then
    say "moto is already installed in $moto_venv"
else
    say "installing moto (S3 server for the blob tests) into $moto_venv"
    mkdir -p "$(dirname "$moto_venv")"
    python3 -m venv "$moto_venv"
    "$moto_venv/bin/pip" install -q --disable-pip-version-check 'moto[s3]>=5,<6' flask flask-cors
fi
