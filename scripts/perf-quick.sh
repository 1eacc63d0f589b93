#!/usr/bin/env bash
# Quick side-by-side: iscsi-perf 4K random reads against tgtd and rtgtd
# serving the same tmpfs file, alternating, N rounds. Prints IOPS lines.
# usage: scripts/perf-quick.sh [ROUNDS] [SECONDS]
set -u
rounds=${1:-2}; secs=${2:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release
work=$(mktemp -d /dev/shm/rtgt-perf.XXXX)
trap 'kill -9 $tp $rp 2>/dev/null; rm -rf "$work"' EXIT
truncate -s 1G "$work/disk.img"
dd if=/dev/urandom of="$work/disk.img" bs=1M count=256 conv=notrunc status=none
pt=$((13000 + RANDOM % 2000)); pr=$((pt + 1)); ct=$((21000 + RANDOM % 5000)); cr=$((ct + 1))
TGT_IPC_SOCKET=$work/tsock tgtd -f -C $ct --iscsi portal=127.0.0.1:$pt > "$work/tgtd.log" 2>&1 & tp=$!
TGT_IPC_SOCKET=$work/rsock "$bin/rtgtd" -f -C $cr --iscsi portal=127.0.0.1:$pr > "$work/rtgtd.log" 2>&1 & rp=$!
sleep 1
for who in t r; do
  if [ $who = t ]; then s=$work/tsock; c=$ct; else s=$work/rsock; c=$cr; fi
  TGT_IPC_SOCKET=$s tgtadm -C $c --lld iscsi --op new --mode target --tid 1 -T iqn.2026-11.bench:d
  TGT_IPC_SOCKET=$s tgtadm -C $c --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$work/disk.img"
  TGT_IPC_SOCKET=$s tgtadm -C $c --lld iscsi --op bind --mode target --tid 1 -I ALL
done
for i in $(seq "$rounds"); do
  for who in tgt rtgt; do
    p=$pt; [ $who = rtgt ] && p=$pr
    out=$(timeout $((secs + 10)) iscsi-perf -t $secs -m 64 -b 8 -r iscsi://127.0.0.1:$p/iqn.2026-11.bench:d/1 2>&1 | tr '\r' '\n' | grep -o 'iops average [0-9]*' | tail -1)
    echo "round $i $who: $out"
  done
done
