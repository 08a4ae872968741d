#!/bin/sh
# Init of the slicenet default appliance. Kernel command line (contract 3):
#   slicenet.net=<mac>[,<ipv4>/<prefix>][,mtu=<bytes>]  one per NIC, matched by MAC
#   slicenet.hostname=<name>
#   slicenet.run=<base64 of a shell command>  run once networking is up, then power off
# Prints "SLICENET-READY <hostname>" on the console when the NICs are configured.
export PATH=/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
exec </dev/console >/dev/console 2>&1

# virtio_mmio for slicenet-vmm, virtio_pci for QEMU q35: the absent transport loads idle.
while read -r module; do
  insmod "/lib/modules/slicenet/$module" 2>/dev/null
done </etc/slicenet/modules

hostname=slicenet
nets=
run=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    slicenet.net=*) nets="$nets ${arg#slicenet.net=}" ;;
    slicenet.hostname=*) hostname="${arg#slicenet.hostname=}" ;;
    slicenet.run=*) run="${arg#slicenet.run=}" ;;
  esac
done
hostname "$hostname"
ip link set lo up

for net in $nets; do
  mac="${net%%,*}"
  addr=
  mtu=
  rest="${net#"$mac"}"
  for field in $(echo "$rest" | tr ',' ' '); do
    case "$field" in
      mtu=*) mtu="${field#mtu=}" ;;
      *) addr="$field" ;;
    esac
  done
  dev=
  tries=0
  while [ -z "$dev" ] && [ "$tries" -lt 100 ]; do
    for path in /sys/class/net/*; do
      [ "$(cat "$path/address" 2>/dev/null)" = "$mac" ] && dev="${path##*/}"
    done
    [ -z "$dev" ] && { sleep 0.05; tries=$((tries + 1)); }
  done
  if [ -z "$dev" ]; then
    echo "slicenet-init: no network interface with MAC $mac"
    continue
  fi
  [ -n "$mtu" ] && ip link set "$dev" mtu "$mtu"
  ip link set "$dev" up
  [ -n "$addr" ] && ip addr add "$addr" dev "$dev"
done

echo "SLICENET-READY $hostname"

if [ -n "$run" ]; then
  echo "$run" | base64 -d >/run/slicenet-run.sh
  sh /run/slicenet-run.sh
  echo "SLICENET-RUN-EXIT $?"
  sync
  poweroff -f
fi

while true; do
  setsid cttyhack sh -l
done
