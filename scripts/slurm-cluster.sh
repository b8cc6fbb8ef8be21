#!/usr/bin/env bash
# A private single-node Slurm cluster on this machine, for the Slurm tests
# and bench/slurm.sh: munged, slurmctld and slurmd from Debian's packages,
# started as root with a slurm.conf of their own (nothing system-wide is
# enabled or changed besides munge's key).
#
#   scripts/slurm-cluster.sh start [DIR]   start it (idempotent), print SLURM_CONF
#   scripts/slurm-cluster.sh stop  [DIR]   stop it (slurmd first, then slurmctld)
#
# DIR defaults to /tmp/bsce-slurm. Use it with `export SLURM_CONF=DIR/slurm.conf`.
# The pitfalls it avoids: SlurmctldHost must be this host's short name;
# root runs the daemons (SlurmUser=root), so proctrack/linuxproc and
# task/none (no cgroups); sacct needs accounting, so job completions go to
# a file (`sacct -c` reads it); every wait is bounded; every start begins
# with an empty queue (no job of an earlier run holds the node).
set -euo pipefail

cmd="${1:-start}"
DIR="${2:-/tmp/bsce-slurm}"
CONF="$DIR/slurm.conf"
HOST="$(hostname -s)"

say() { printf 'slurm-cluster: %s\n' "$*" >&2; }

need() {
  for b in munged slurmctld slurmd sbatch squeue scancel scontrol sinfo; do
    command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || {
      say "$b not found (apt-get install slurmctld slurmd slurm-client munge)"
      exit 1
    }
  done
}

up() {
  SLURM_CONF="$CONF" timeout 5 sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

stop() {
  for d in slurmd slurmctld; do
    if [ -f "$DIR/$d.pid" ]; then
      pid="$(cat "$DIR/$d.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$DIR/$d.pid"
    fi
  done
}

# Cancels every job of the private cluster and waits (bounded) for the
# queue to empty.
clear_queue() {
  SLURM_CONF="$CONF" timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
  SLURM_CONF="$CONF" timeout 10 scancel --quiet --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 100); do
    [ -z "$(SLURM_CONF="$CONF" timeout 5 squeue -h -o %i 2>/dev/null)" ] && return
    sleep 0.1
  done
  say "jobs still queued after scancel: $(SLURM_CONF="$CONF" timeout 5 squeue -h -o '%i %T' | tr '\n' ' ')"
}

start() {
  need
  mkdir -p "$DIR"
  exec 8>"$DIR/.lock"
  flock -w 120 8 || { say "another start holds $DIR/.lock for over 120 s"; exit 1; }
  if [ -f "$CONF" ] && up; then
    # A cluster left running by an earlier test run may still hold its jobs
    # (one stuck RUNNING holds a CPU for good, and the next tests' sbatch
    # answers "Requested node configuration is not available"): whoever
    # starts the tests starts from an empty queue.
    clear_queue
    echo "$CONF"
    return
  fi
  stop
  # munge: one daemon for the machine; its key comes with the package.
  if ! pgrep -x munged >/dev/null; then
    [ -f /etc/munge/munge.key ] || /usr/sbin/mungekey -c
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    if [ "$(id -u)" = 0 ] && id munge >/dev/null 2>&1; then
      su -s /bin/sh munge -c /usr/sbin/munged 8>&- || /usr/sbin/munged --force 8>&-
    else
      /usr/sbin/munged --force 8>&-
    fi
  fi
  mkdir -p "$DIR/state" "$DIR/spool"
  local cpus mem
  cpus="$(nproc)"
  mem="$(awk '/MemTotal/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)"
  cat > "$CONF" <<EOF
ClusterName=bsce
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
KillWait=5
JobRequeue=1
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  # The daemons must not inherit the lock's descriptor (they would hold it).
  # -c: no jobs recovered from an earlier cluster's saved state.
  /usr/sbin/slurmctld -f "$CONF" -i -c 8>&-
  /usr/sbin/slurmd -f "$CONF" 8>&-
  for _ in $(seq 300); do
    if up; then
      say "up: SLURM_CONF=$CONF (node $HOST, $cpus CPUs)"
      echo "$CONF"
      return
    fi
    sleep 0.1
  done
  say "the cluster did not come up in 30 s; logs: $DIR/slurmctld.log, $DIR/slurmd.log"
  tail -5 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
  exit 1
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) say "usage: $0 start|stop [DIR]"; exit 2 ;;
esac
