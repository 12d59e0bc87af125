#!/usr/bin/env bash
# A one-node Slurm on localhost for the engine tests (Debian slurm-wlm + munge; root; no systemd).
#   tools/cluster/slurm.sh [start|stop|status]
# start installs the packages if missing, writes slurm.conf and starts munged, slurmctld, slurmd;
# run again while they are up, it does nothing. The tests skip when `sinfo` does not answer.
set -euo pipefail
. "$(dirname "$0")/common.sh"
CTLD_PID=/run/slurm/slurmctld.pid
SLURMD_PID=/run/slurm/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
node_up() { timeout 3 sinfo -h -n localhost -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

case "${1:-start}" in
status)
  node_up && { echo "slurm: up"; exit 0; } || { echo "slurm: down"; exit 1; } ;;
stop)
  pids=""
  for f in "$CTLD_PID" "$SLURMD_PID"; do running "$f" && pids="$pids $(cat "$f")"; done
  timeout 10 scontrol shutdown >/dev/null 2>&1 || true
  stop_pids TERM $pids
  running "$MUNGE_PID" && stop_pids TERM "$(cat "$MUNGE_PID")"
  rm -f "$CTLD_PID" "$SLURMD_PID" "$MUNGE_PID"
  exit 0 ;;
start) ;;
*) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt_install slurm-wlm munge
fi
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --force --keyfile /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /run/slurm /var/spool/slurm/d /var/spool/slurm/ctld /var/log/slurm
chown munge:munge /run/munge && chmod 755 /run/munge

NCPU=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.85)}' /proc/meminfo)
# DefMemPerCPU: without it every job asks for the whole node's memory and jobs run one at a time.
# NodeName=localhost while the host name differs: slurmd is started with -N localhost.
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=glmxtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmdSpoolDir=/var/spool/slurm/d
StateSaveLocation=/var/spool/slurm/ctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

running "$MUNGE_PID" || runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null
running "$CTLD_PID" || /usr/sbin/slurmctld
running "$SLURMD_PID" || /usr/sbin/slurmd -N localhost
wait_for 30 node_up || { echo "slurm: node did not come up; see /var/log/slurm/" >&2; exit 1; }
echo "slurm: up ($NCPU CPUs, $MEM_MB MB)"
