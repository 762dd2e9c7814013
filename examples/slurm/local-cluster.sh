#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (munged, slurmctld, slurmd; no GPU), for trying the
# sbatch scripts of this folder and for tests/cluster/. Needs root and the Debian/Ubuntu packages
# slurm-wlm and munge (`apt-get install -y slurm-wlm munge`). Idempotent: when the cluster already
# answers, it only waits for the node to be idle. It never overwrites a slurm.conf it did not write.
#
#   bash examples/slurm/local-cluster.sh          # start (or check) the cluster
#   bash examples/slurm/local-cluster.sh stop     # stop the daemons this script started
#
# Exit status: 0 = the node is idle and takes jobs; 1 = it could not be started (one line says why).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by idml examples/slurm/local-cluster.sh"
STATE=/var/lib/idml-slurm
LOGS=/var/log/idml-slurm
NODE=$(hostname -s)

fail() { echo "local-cluster.sh: $*" >&2; exit 1; }

stop() {
  local daemon
  for daemon in slurmd slurmctld; do
    if [[ -f "$STATE/$daemon.pid" ]]; then
      kill "$(cat "$STATE/$daemon.pid")" 2>/dev/null || true
      rm -f "$STATE/$daemon.pid"
    fi
  done
}

write_conf() {
  if [[ -f "$CONF" ]] && ! grep -qxF "$MARK" "$CONF"; then
    fail "$CONF exists and was not written by this script: refusing to replace a real cluster's configuration"
  fi
  local cpus memory_mb
  cpus=$(nproc --all)
  memory_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) * 9 / 10 / 1024 ))
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" "$LOGS"
  cat > "$CONF.tmp" <<EOF
$MARK
ClusterName=idml-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
JobRequeue=1
ReturnToService=2
KillWait=30
# daemons on a machine whose cores other jobs keep busy answer slowly: SLURM's 10 s default made a
# signal to the job time out (the job then ends as if never warned)
MessageTimeout=60
MinJobAge=300
SlurmdParameters=config_overrides
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  if [[ -f "$CONF" ]] && cmp -s "$CONF" "$CONF.tmp"; then
    rm -f "$CONF.tmp"
  else
    mv "$CONF.tmp" "$CONF"
  fi
}

start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    return
  fi
  mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
  if [[ ! -s /etc/munge/munge.key ]]; then  # the package makes one; a stripped image may not have it
    mungekey --create --keyfile=/etc/munge/munge.key || fail "cannot create /etc/munge/munge.key"
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  munge -n </dev/null | unmunge >/dev/null 2>&1 || fail "munged does not answer (see /var/log/munge/munged.log)"
}

resolve_node_name() {
  # jobs reach the first node by its name (torchrun's rendezvous): a container whose name is not in
  # /etc/hosts gets it here, on the loopback address
  if ! getent hosts "$NODE" >/dev/null; then
    echo "127.0.0.1 $NODE  $MARK" >> /etc/hosts
  fi
}

wait_for_idle() {
  local _ state=""
  for _ in $(seq 1 60); do
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
    case "$state" in
      idle|mixed|allocated) return ;;
      down*|drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  fail "node $NODE is '${state:-unknown}' after 60 s, not idle (see $LOGS/slurmctld.log and $LOGS/slurmd.log)"
}

main() {
  if [[ "${1:-}" == "stop" ]]; then
    stop
    return
  fi
  (( EUID == 0 )) || fail "needs root (it starts munged, slurmctld and slurmd)"
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    fail "slurm-wlm and munge are not installed: apt-get install -y slurm-wlm munge"
  fi
  write_conf
  resolve_node_name
  start_munge
  if ! scontrol ping 2>/dev/null | grep -q "is UP"; then
    slurmctld
  fi
  if ! pgrep -x slurmd >/dev/null; then
    slurmd
  fi
  wait_for_idle
  echo "local-cluster.sh: node $NODE is up ($(nproc --all) CPUs, partition 'local')"
}

main "$@"
