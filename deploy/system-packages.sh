#!/bin/sh
# Debian packages that the test suite runs for real (PostgreSQL, ActiveMQ, Chromium for the dashboard test, iproute2 for
# network namespaces). Installs only what is missing; needs root for that.
set -eu
missing=""
for pkg in postgresql activemq iproute2 openssl chromium keepalived iputils-arping; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages:$missing -- install them with: sudo apt-get install -y$missing" >&2
    exit 1
fi
echo "installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The server is started by the tests on a private directory and port: keep Debian's own cluster from being created.
mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/no-main-cluster.conf
apt-get install -y -qq --no-install-recommends $missing
