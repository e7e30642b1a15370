#!/usr/bin/env bash
# Sets up everything pop53 needs on a fresh Debian machine (run as root):
#   - the reference DNS servers, BIRD, etcd and dnsperf from Debian's packages (never started here:
#     the tests and benchmarks start what they need on loopback or in namespaces they create);
#   - pop53 itself, built in place (pip install -e), with pinned test dependencies.
# Idempotent: a second run only checks.  POP53_SETUP_NO_APT=1 skips the Debian part.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

APT_PACKAGES=(
  knot knot-dnsutils         # differential tests, XFR interop, bench
  knot-dnssecutils           # kzonecheck beside `pop53 check` on signed zones (bench/results/check-signed.md)
  nsd                        # differential tests, XFR interop, bench
  bind9 bind9-dnsutils       # bench, XFR interop; delv validates signed answers (tests/dnssec)
  bind9-utils                # dnssec-keygen, dnssec-signzone sign the test zones (tests/dnssec)
  dnsviz python3-pygraphviz  # DNSViz checks the signed test zones (tests/dnssec/test_dnsviz.py)
  pdns-server pdns-backend-bind  # bench
  gdnsd knot-module-geoip pdns-backend-geoip  # mapping peers (tests/support/mapping_peers.py)
  dnsperf                    # bench load generator
  clang libbpf-dev           # the XDP program (ext/bpf/, clang -target bpf) and libbpf1 to load it
  ethtool                    # bench/xdp.py: GRO (threaded NAPI) on the veth pair; kxdpgun is in knot-dnsutils
  fstrm-bin knot-module-dnstap  # dnstap: fstrm_capture reads the socket output (tests/serve), Knot mod-dnstap (bench)
  dnsdist                    # (1.7.3 on bookworm) bench/attack: dynamic blocks in front of NSD (issue 13)
  bird2                      # BGP speaker (anycast)
  etcd-server etcd-client    # cluster-wide suspension slots
  nats-server                # the metadata feed (JetStream)
  iproute2 iputils-ping procps psmisc  # namespaces, process control
  systemd                    # systemd-analyze verify of dist/systemd/pop53.service
)

if [ "${POP53_SETUP_NO_APT:-0}" != 1 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    # Keep package scripts from starting daemons (they would grab port 53 and get in the way).
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
  fi
  # (policy-rc.d kept the packages from starting daemons; we never kill daemons by name here:
  # tests and benchmarks stop what they start by PID)
fi

python3 -m pip install -q --disable-pip-version-check -r requirements/build.txt
python3 -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[test,bench]"
echo "setup: ok"
