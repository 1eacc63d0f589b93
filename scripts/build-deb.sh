#!/usr/bin/env bash
# Build the Debian package rtgt_<version>_<arch>.deb into target/: the
# release binaries in /usr/sbin, the systemd units, /etc/rtgt/targets.conf
# (a conffile), examples, man pages made from each program's --help by
# help2man, and /var/lib/rtgt. Needs dpkg-deb and help2man (Debian 12).
# usage: scripts/build-deb.sh   (prints the package's path)
set -euo pipefail
umask 022  # dpkg-deb wants DEBIAN/ and the tree readable
cd "$(dirname "$0")/.."
command -v help2man >/dev/null || { echo "build-deb: help2man not installed (apt-get install help2man)" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
cargo build --release --quiet -p rtgt --bins >&2
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/rtgt
for b in rtgtd rtgtadm rtgt-admin; do
  install -D -m 755 "target/release/$b" "$root/usr/sbin/$b"
done
install -D -m 644 systemd/rtgtd.service "$root/lib/systemd/system/rtgtd.service"
install -D -m 644 systemd/rtgtd@.service "$root/lib/systemd/system/rtgtd@.service"
install -D -m 644 dist/targets.conf "$root/etc/rtgt/targets.conf"
install -d -m 755 "$root/etc/rtgt/conf.d" "$root/var/lib/rtgt"
install -D -m 644 systemd/example.conf "$root/usr/share/doc/rtgt/examples/instance.conf"
install -D -m 644 dist/targets.conf "$root/usr/share/doc/rtgt/examples/targets.conf"
install -D -m 644 README.md "$root/usr/share/doc/rtgt/README.md"
# Man pages from each program's own --help (the command-line definitions).
man() { # NAME SECTION DESCRIPTION VERSION-STRING
  install -d "$root/usr/share/man/man$2"
  help2man -N --no-discard-stderr -s "$2" -n "$3" --version-string="$4" \
    "target/release/$1" | gzip -9n > "$root/usr/share/man/man$2/$1.$2.gz"
}
man rtgtd 8 "rtgt iSCSI target daemon" "$version"
man rtgtadm 8 "administer rtgtd (tgtadm's command line)" "$version"
man rtgt-admin 8 "configure rtgtd from targets.conf (tgt-admin's command line)" "$version"
size=$(du -sk "$root" | cut -f1)
mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: rtgt
Version: $version
Architecture: $arch
Maintainer: rtgt developers <rtgt@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.34)
Recommends: librbd1
Suggests: libiscsi-bin, ceph-common
Section: net
Priority: optional
Homepage: https://localhost/rtgt
Description: iSCSI target for Linux, with tgt's management interface
 rtgtd serves files, block devices and Ceph RBD images as iSCSI disks,
 managed with the stock tgtadm and tgt-admin (or rtgtadm and rtgt-admin)
 and targets.conf. RBD images need librbd1.
CONTROL
echo /etc/rtgt/targets.conf > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
POSTINST
cat > "$root/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop rtgtd.service 'rtgtd@*.service' || true
fi
PRERM
cat > "$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
  rm -rf /var/lib/rtgt/pr
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
POSTRM
chmod 755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
out=target/rtgt_${version}_${arch}.deb
dpkg-deb --root-owner-group --build "$root" "$out" >&2
echo "$out"
