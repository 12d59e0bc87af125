#!/usr/bin/env bash
# A one-node (Son of) Grid Engine on localhost for the engine tests (Debian gridengine; root).
#   tools/cluster/sge.sh [start|stop|status]
# Clients need SGE_ROOT=/var/lib/gridengine SGE_CELL=default (Debian's defaults; exported here).
set -euo pipefail
. "$(dirname "$0")/common.sh"
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
QMASTER_PID=/var/spool/gridengine/qmaster/qmaster.pid
EXECD_PID=/var/spool/gridengine/execd/localhost/execd.pid
# Run a command, showing its output only when it fails (qconf reports successes on stderr).
quiet() { local out; out=$("$@" 2>&1) || { echo "$out" >&2; return 1; }; }
queue_up() {
  qstat -f 2>/dev/null | grep -E '^all.q@localhost' | grep -qvE '\s(a|u|au|d|E)\s*$' &&
    qhost 2>/dev/null | grep -E '^localhost' | grep -qv -- ' - '
}

case "${1:-start}" in
status)
  queue_up && { echo "sge: up"; exit 0; } || { echo "sge: down"; exit 1; } ;;
stop)
  # qmaster's controlled shutdown takes seconds: wait, or a quick restart finds it half-alive
  running "$EXECD_PID" && stop_pids TERM "$(cat "$EXECD_PID")"
  running "$QMASTER_PID" && stop_pids TERM "$(cat "$QMASTER_PID")"
  rm -f "$EXECD_PID" "$QMASTER_PID"
  exit 0 ;;
start) ;;
*) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

if ! command -v sge_qmaster >/dev/null; then
  # debconf answers so that the master's postinst creates cell "default" with master "localhost"
  for p in gridengine-common gridengine-client gridengine-master; do
    printf '%s shared/gridengineconfig boolean true\n%s shared/gridenginecell string default\n%s shared/gridenginemaster string localhost\n' "$p" "$p" "$p"
  done | debconf-set-selections
  apt_install gridengine-master gridengine-exec gridengine-client
fi

# The host name resolves to 127.0.0.1, whose reverse name is "localhost": qmaster refuses clients
# whose names differ unless every local name is an alias of localhost.
echo "localhost $(hostname) $(hostname -f 2>/dev/null || true) $(hostname -s 2>/dev/null || true)" \
  | tr ' ' '\n' | awk 'NF && !seen[$0]++' | paste -sd' ' > "$SGE_ROOT/$SGE_CELL/common/host_aliases"
echo localhost > "$SGE_ROOT/$SGE_CELL/common/act_qmaster"
mkdir -p /var/run/gridengine /var/spool/gridengine/execd
chown sgeadmin:sgeadmin /var/run/gridengine /var/spool/gridengine/execd

running "$QMASTER_PID" || /usr/sbin/sge_qmaster
wait_for 20 qconf -sh || { echo "sge: qmaster does not answer" >&2; exit 1; }

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
# root may submit (min_uid/min_gid default to 1000); schedule every second (default 15 s)
# (changed only when they differ: a second start leaves the configuration alone)
qconf -sconf | grep -v '^#' > "$T/global.now"
sed -E 's/^(min_uid\s+).*/\10/; s/^(min_gid\s+).*/\10/' "$T/global.now" > "$T/global"
cmp -s "$T/global.now" "$T/global" || quiet qconf -Mconf "$T/global"
qconf -ssconf > "$T/sconf.now"
sed -E 's/^(schedule_interval\s+).*/\10:0:1/; s/^(flush_submit_sec\s+).*/\11/; s/^(flush_finish_sec\s+).*/\11/' \
  "$T/sconf.now" > "$T/sconf"
cmp -s "$T/sconf.now" "$T/sconf" || quiet qconf -Msconf "$T/sconf"
qconf -ss | grep -qx localhost || qconf -as localhost >/dev/null
if ! qconf -sel 2>/dev/null | grep -qx localhost; then
  printf 'hostname localhost\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' > "$T/exechost"
  qconf -Ae "$T/exechost" >/dev/null
fi
if ! qconf -shgrpl 2>/dev/null | grep -qx @allhosts; then
  printf 'group_name @allhosts\nhostlist localhost\n' > "$T/allhosts"
  qconf -Ahgrp "$T/allhosts" >/dev/null
fi
if ! qconf -sql 2>/dev/null | grep -qx all.q; then
  # qconf -aq opens $EDITOR on a queue template: an "editor" that edits it with sed
  printf '#!/bin/sh\nsed -i -E "s/^(hostlist +).*/\\1@allhosts/; s/^(slots +).*/\\1%s/; s/^(pe_list +).*/\\1NONE/; s/^(load_thresholds +).*/\\1NONE/; s@^(shell +).*@\\1/bin/bash@" "$1"\n' "$(nproc)" > "$T/ed.sh"
  chmod +x "$T/ed.sh"
  EDITOR="$T/ed.sh" qconf -aq all.q >/dev/null
fi
running "$EXECD_PID" || /usr/sbin/sge_execd
wait_for 30 queue_up || { echo "sge: queue all.q@localhost did not come up" >&2; exit 1; }
echo "sge: up"
