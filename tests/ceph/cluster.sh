#!/bin/bash
# A throwaway one-node Ceph cluster on loopback, from Debian 12's packages
# (ceph-mon, ceph-osd, ceph-common): one monitor, one OSD, `auth none`,
# size-1 pools, and a pool `rbd`. Up in under ten seconds.
#
#   tests/ceph/cluster.sh start DIR [memstore|bluestore] [none|cephx]   # prints DIR/ceph.conf
#   tests/ceph/cluster.sh stop DIR
#   tests/ceph/cluster.sh osd-restart DIR     # SIGKILL the OSD and start it again
#
# memstore keeps everything in memory (fast; lost when the OSD dies);
# bluestore keeps it in a file under DIR, so the OSD can be killed and
# restarted with nothing acknowledged lost. cephx turns authentication on
# (keys in DIR/keyring, which ceph.conf names), as production clusters run.
set -euo pipefail

cmd=${1:?usage: cluster.sh start|stop|osd-restart DIR [store]}
dir=${2:?usage: cluster.sh start|stop|osd-restart DIR [store]}
store=${3:-memstore}
auth=${4:-none}

need() { command -v "$1" >/dev/null || { echo "cluster.sh: $1 missing (apt-get install ceph-mon ceph-osd ceph-common)" >&2; exit 2; }; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_osd() {
    # Ceph 16's OSD now and then asks the monitor to place it before it
    # knows the cluster's fsid, is refused ("wrong fsid") and exits at
    # once: start it again.
    local tries=0
    until ceph-osd -i 0 -c "$dir/ceph.conf" 2>>"$dir/osd.0.stderr"; do
        tries=$((tries + 1))
        if [ $tries -ge 5 ]; then
            echo "cluster.sh: ceph-osd would not start (see $dir/osd.0.stderr)" >&2
            return 1
        fi
    done
    # Up when the monitor says so.
    for _ in $(seq 1 300); do
        if ceph -c "$dir/ceph.conf" osd dump 2>/dev/null | grep -q '^osd.0 up'; then
            return 0
        fi
        sleep 0.1
    done
    echo "cluster.sh: osd.0 did not come up" >&2
    return 1
}

case "$cmd" in
start)
    need ceph-mon; need ceph-osd; need ceph; need monmaptool; need rbd
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    port=$(free_port)
    fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
    {
        echo "[global]"
        echo "fsid = $fsid"
        echo "mon host = v1:127.0.0.1:$port"
        echo "mon initial members = a"
        echo "public addr = 127.0.0.1"
        echo "ms bind msgr2 = false"
        echo "auth cluster required = $auth"
        echo "auth service required = $auth"
        echo "auth client required = $auth"
        echo "keyring = $dir/keyring"
        echo "osd pool default size = 1"
        echo "osd pool default min size = 1"
        echo "mon allow pool size one = true"
        echo "mon allow pool delete = true"
        echo "osd crush chooseleaf type = 0"
        echo "osd objectstore = $store"
        echo "memstore device bytes = 1073741824"
        echo "bluestore block path = $dir/\$name.block"
        echo "bluestore block create = true"
        echo "bluestore block size = 2147483648"
        echo "bluestore fsck on mount = false"
        echo "bluestore cache size = 134217728"
        echo "osd memory target = 536870912"
        echo "mon data = $dir/\$name"
        echo "osd data = $dir/\$name"
        echo "run dir = $dir/run"
        echo "log file = $dir/\$name.log"
        echo "admin socket = $dir/run/\$name.\$pid.asok"
        echo "pid file = $dir/run/\$name.pid"
        echo "mon cluster log file = $dir/cluster.log"
        echo "osd op num shards = 1"
        echo "osd op num threads per shard = 2"
        echo "mon warn on pool no redundancy = false"
    } >"$dir/ceph.conf"
    mkdir -p "$dir/run" "$dir/mon.a" "$dir/osd.0"
    monmaptool --create --add a "v1:127.0.0.1:$port" --fsid "$fsid" "$dir/monmap" >/dev/null
    # The monitor's, the admin's and the OSD's keys, all in one keyring
    # that the monitor imports at mkfs (unused with auth none).
    ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$dir/keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool "$dir/keyring" --gen-key -n osd.0 \
        --cap mon 'allow profile osd' --cap osd 'allow *' --cap mgr 'allow profile osd' >/dev/null
    ceph-mon --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring" -c "$dir/ceph.conf"
    ceph-mon -i a -c "$dir/ceph.conf"
    # Name the OSD's uuid ourselves: left to mkfs it was sometimes all
    # zeros, and the monitor then refused the OSD ("wrong fsid").
    osd_uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
    ceph -c "$dir/ceph.conf" osd create "$osd_uuid" 0 >/dev/null
    ceph-osd -i 0 --mkfs --osd-uuid "$osd_uuid" -c "$dir/ceph.conf" 2>>"$dir/osd.0.stderr"
    start_osd
    ceph -c "$dir/ceph.conf" osd pool create rbd 8 >/dev/null 2>&1
    rbd -c "$dir/ceph.conf" pool init rbd
    echo "$dir/ceph.conf"
    ;;
stop)
    for p in "$dir"/run/*.pid; do
        [ -e "$p" ] || continue
        kill -9 "$(cat "$p")" 2>/dev/null || true
    done
    ;;
osd-restart)
    kill -9 "$(cat "$dir/run/osd.0.pid")" 2>/dev/null || true
    # The monitor marks it down on its own in time; say so now, then start again.
    ceph -c "$dir/ceph.conf" osd down 0 >/dev/null 2>&1 || true
    start_osd
    ;;
*)
    echo "usage: cluster.sh start|stop|osd-restart DIR [store]" >&2
    exit 2
    ;;
esac
