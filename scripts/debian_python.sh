#!/usr/bin/env bash
# The whole suite (`make test`) on the Python of another Debian release, in a chroot on this
# machine (Debian 12, Python 3.11):
#
#   sudo bash scripts/debian_python.sh trixie   # Debian 13, Python 3.13
#   sudo bash scripts/debian_python.sh sid      # Debian unstable, Python 3.14 (December 2026)
#
# Makes a minimal Debian SUITE in ${ROOT:-/tmp/debian-SUITE} with debootstrap (once), with its own
# Python, Java (pycocoevalcap) and Chromium (the browser test), clones this repository's HEAD into
# it and runs `make test` there, which installs the project from PyPI. Needs root, debootstrap,
# the Debian mirror, PyPI and about 14 GB of disk. This machine's /etc/hosts (torchrun looks up
# the host's name), DNS and CA certificates (a proxy's, if any) are copied in.
set -euo pipefail
suite=${1:?usage: debian_python.sh SUITE (trixie: Python 3.13, sid: Python 3.14)}
root=${ROOT:-/tmp/debian-$suite}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
# a mirror that serves a snapshot can outlive sid's Release file
apt="apt-get -o Acquire::Check-Valid-Until=false -q"

if [ ! -x "$root/usr/bin/python3" ]; then
    debootstrap --variant=minbase \
        --include=python3,python3-venv,git,make,ca-certificates,procps,default-jre-headless \
        "$suite" "$root" http://deb.debian.org/debian
fi
cp /etc/resolv.conf /etc/hosts "$root/etc/"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
echo "deb http://deb.debian.org/debian $suite main" >"$root/etc/apt/sources.list"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"  # packages start no daemon there
chmod +x "$root/usr/sbin/policy-rc.d"

mounted=()
unmount() {  # lazily where a process that the suite started is still ending
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount "${mounted[i]}" || umount --lazy "${mounted[i]}" || true
    done
}
trap unmount EXIT
mount -t proc proc "$root/proc" && mounted+=("$root/proc")
for dir in dev dev/pts dev/shm; do  # os.openpty (a test's terminal), DataLoader workers' memory
    mount --bind "/$dir" "$root/$dir" && mounted+=("$root/$dir")
done

chroot "$root" sh -c "command -v chromium >/dev/null || { $apt update && \
    DEBIAN_FRONTEND=noninteractive $apt -y install chromium fonts-dejavu-core; }"
rm -rf "$root/work"
mkdir -p "$root/work"
git clone -q "$repo" "$root/work/repo"
chroot "$root" env -u PIP_FIND_LINKS HOME=/root LANG=C.UTF-8 \
    sh -c "cd /work/repo && python3 --version && make test"
