#!/bin/bash
# A/B of two rtgtd builds: 4K randread and randwrite, QD32, 2 sessions, 5 s,
# on a 1 GiB LUN in /dev/shm (the inline path: per-command cost shows most),
# alternating, three rounds; prints IOPS and rtgtd CPU per I/O (µs).
# usage: bench/ab.sh OLD_RTGTD NEW_RTGTD   (each with its rtgtadm beside it;
#        rtgt-load from target/release: cargo build --release -p initiator)
load=$(cd "$(dirname "$0")/.." && pwd)/target/release/rtgt-load
old=$1 new=$2
run() { # bin label rw
  local bin=$1 label=$2 rw=$3
  local w=$(mktemp -d /dev/shm/ab.XXXX); local ctl=$((20000 + RANDOM % 10000)); local port=$((40000 + RANDOM % 10000))
  truncate -s 1G $w/disk.img
  TGT_IPC_SOCKET=$w/sock $bin -f -C $ctl --data-dir $w/data --iscsi portal=127.0.0.1:$port > $w/log 2>&1 &
  local pid=$!
  for i in $(seq 50); do [ -S $w/sock.$ctl ] && break; sleep 0.1; done
  local adm=$(dirname $bin)/rtgtadm
  TGT_IPC_SOCKET=$w/sock $adm -C $ctl --lld iscsi --op new --mode target --tid 1 -T iqn.ab:t
  TGT_IPC_SOCKET=$w/sock $adm -C $ctl --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b $w/disk.img
  TGT_IPC_SOCKET=$w/sock $adm -C $ctl --lld iscsi --op bind --mode target --tid 1 -I ALL
  local t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  local out=$($load --portal 127.0.0.1:$port --target iqn.ab:t --rw $rw --bs 4096 --qd 32 --sessions 2 --seconds 5 --size-mib 512 2>&1 | tail -1)
  local t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  kill $pid; wait $pid 2>/dev/null; rm -rf $w
  local iops=$(echo "$out" | grep -o 'iops=[0-9.]*' | cut -d= -f2)
  local ios=$(echo "$out" | grep -o ' ios=[0-9]*' | cut -d= -f2)
  echo "$label $rw iops=$iops cpu_ticks=$((t1-t0)) us_cpu_per_io=$(python3 -c "print(round(($t1-$t0)*10000/$ios,2))")"
}
for round in 1 2 3; do
  for rw in randread randwrite; do
    run "$old" old $rw
    run "$new" new $rw
  done
done
