#!/usr/bin/env bash
# Installs what slicenet's demo and tests need on a Debian 12 machine.
# Idempotent: packages already present are not touched. Run as root.
set -euo pipefail

packages=(
  # testbed: namespaces, links, probes
  iproute2 iputils-ping iperf3 procps jq
  # interop tests and peer benchmarks: stock WireGuard and other overlays
  wireguard-go wireguard-tools tinc
  # membership benchmark peer: HashiCorp Serf (SWIM gossip failure detection)
  serf
  # sliver runtime without hardware KVM, nested-virtualization host, guests
  qemu-system-x86 seabios busybox-static cpio
  # ACPI table validation (iasl)
  acpica-tools
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: these Debian packages are missing: ${missing[*]}" >&2
    echo "setup: run this script as root (e.g. sudo $0) to install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  # Never let a package's post-install script start a daemon on this host.
  created_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  ((created_policy)) && rm -f /usr/sbin/policy-rc.d
fi
echo "setup: Debian packages ready" >&2
