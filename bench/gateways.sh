#!/usr/bin/env bash
# Two rtgtd gateways (port groups 1 and 2, on 127.0.0.1 and 127.0.0.2) on
# one RBD image in a throwaway one-node cluster: how writes sent down the
# non-optimized path move the image's exclusive lock (README, "Several
# gateways on one image"). Prints one rtgt-load line per case.
# usage: bench/gateways.sh [SECONDS]   (release build; needs Ceph installed)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
cargo build --release --workspace --bins 2>/dev/null
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  tests/ceph/cluster.sh stop "$work/ceph" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
conf=$(tests/ceph/cluster.sh start "$work/ceph" memstore none | tail -1)
rbd -c "$conf" create --size 1G rbd/gw
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
iqn=iqn.2026-12.io.rtgt:gateways
for g in 1 2; do
  ctl=$((21000 + RANDOM % 9000))
  TGT_IPC_SOCKET=$work/s$g target/release/rtgtd -f -C $ctl --port-group $g \
    --iscsi portal=127.0.0.$g:$port > "$work/rtgtd$g.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do [ -S "$work/s$g.$ctl" ] && break; sleep 0.1; done
  adm() { TGT_IPC_SOCKET=$work/s$g target/release/rtgtadm -C $ctl --lld iscsi "$@"; }
  adm --op new --mode target --tid 1 -T $iqn
  adm --op new --mode logicalunit --tid 1 --lun 1 --bstype rbd -b rbd/gw --bsopts "conf=$conf"
  adm --op bind --mode target --tid 1 -I ALL
done
load() { target/release/rtgt-load --target $iqn --bs 4096 --seconds "$secs" --size-mib 256 "$@" | tail -1; }
both() { # $1: rw, $2: qd
  load --portal 127.0.0.1:$port --rw "$1" --qd "$2" > "$work/a" &
  local first=$!
  load --portal 127.0.0.2:$port --rw "$1" --qd "$2" --initiator-name iqn.2026-12.io.rtgt:load2 > "$work/b"
  wait "$first"
  echo "  gateway 1 (optimized):     $(cat "$work/a")"
  echo "  gateway 2 (non-optimized): $(cat "$work/b")"
}
echo "writes, QD1, two sessions on the optimized gateway:"
echo "  $(load --portal 127.0.0.1:$port --rw randwrite --qd 1 --sessions 2)"
echo "writes, QD1, one session on each gateway:"; both randwrite 1
echo "writes, QD4, one session on each gateway:"; both randwrite 4
echo "reads, QD4, one session on each gateway:"; both randread 4
