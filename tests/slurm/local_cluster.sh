#!/usr/bin/env bash
# A real SLURM on this one machine, for tests: munged, slurmctld and two slurmd "nodes".
#   local_cluster.sh start DIR   -> last line: `export SLURM_CONF=DIR/slurm.conf`
#   local_cluster.sh stop DIR
# Nodes node1 and node2 both run here (NodeAddr=127.0.0.1, slurmd ports 17001-17002); their names
# do not resolve, so launchers take MASTER_ADDR from the first node's NodeAddr. Needs root and
# Debian's slurm-wlm + munge (apt-get install -y slurm-wlm munge). No accounting: poll
# `scontrol show job`, not sacct. cred_expire=10 lets a requeued job start again after ~10 s
# (default 120 s). Ports: SLURMCTLD_PORT (6817), SLURMD_PORT_BASE (17001).
set -eu
cmd=${1:?start|stop}; dir=$(realpath -m "${2:?directory}")
case $cmd in
start)
  for b in munged slurmctld slurmd sinfo; do
    command -v "$b" >/dev/null || { echo "missing $b: apt-get install -y slurm-wlm munge" >&2; exit 2; }
  done
  [ "$(id -u)" = 0 ] || { echo "local_cluster.sh needs root (slurmd runs jobs as any user)" >&2; exit 2; }
  host=$(hostname)
  ctld_port=${SLURMCTLD_PORT:-6817}; base=${SLURMD_PORT_BASE:-17001}
  cpus=$(( $(nproc) > 1 ? $(nproc) / 2 : 1 ))
  mkdir -p "$dir"/{state,log,spool-node1,spool-node2}
  cat > "$dir/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool-%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=10
AuthInfo=cred_expire=10
NodeName=node[1-2] NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=4000 Port=[$base-$((base + 1))] State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$dir/slurm.conf
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    if [ ! -f /etc/munge/munge.key ]; then
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
      chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    fi
    su -s /bin/sh munge -c /usr/sbin/munged
  fi
  slurmctld -i -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF" -N node1
  slurmd -f "$SLURM_CONF" -N node2
  for _ in $(seq 100); do
    [ "$(sinfo -h -o %t 2>/dev/null | sort -u)" = "idle" ] && { echo "export SLURM_CONF=$SLURM_CONF"; exit 0; }
    sleep 0.2
  done
  echo "nodes did not come up: see $dir/log" >&2; sinfo >&2 || true; exit 1 ;;
stop)  # TERM, then KILL whatever is left after 15 s (slurmctld can hang saving state)
  pids=$(cat "$dir"/slurmd-*.pid "$dir"/slurmctld.pid 2>/dev/null || true)
  [ -n "$pids" ] && kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 75); do
    alive=$(for p in $pids; do kill -0 "$p" 2>/dev/null && echo "$p"; done)
    [ -z "$alive" ] && break
    sleep 0.2
  done
  [ -n "${alive:-}" ] && kill -KILL $alive 2>/dev/null || true
  echo "stopped (munged left running)" ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
