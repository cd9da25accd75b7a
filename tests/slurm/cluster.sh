#!/usr/bin/env bash
# A one-node Slurm cluster on 127.0.0.1 for the scheduler test, everything under one folder.
#
#   tests/slurm/cluster.sh DIR start    # munged, slurmctld and slurmd; waits for an idle node
#   export SLURM_CONF=DIR/slurm.conf     # then sbatch, squeue, sinfo talk to it
#   tests/slurm/cluster.sh DIR stop     # stops the three by their pid files
#
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge). Nothing outside DIR
# is written: its own munge key and socket, state, spool, logs and pid files, free ports.
# ProctrackType=proctrack/linuxproc and TaskPlugin=task/none need no cgroups, so it runs in
# containers too; a job's processes then see every core of the machine, and convnet takes
# its share from SLURM_CPUS_PER_TASK.
set -euo pipefail
T=$1
case "${2:-}" in
start) ;;
stop)
  for d in slurmd slurmctld munged; do
    if [ -f "$T/$d.pid" ]; then kill "$(cat "$T/$d.pid")" 2>/dev/null || true; fi
  done
  for _ in $(seq 50); do
    alive=0
    for d in slurmd slurmctld munged; do
      if [ -f "$T/$d.pid" ] && kill -0 "$(cat "$T/$d.pid")" 2>/dev/null; then alive=1; fi
    done
    [ "$alive" = 0 ] && exit 0
    sleep 0.1
  done
  exit 0
  ;;
*) echo "usage: $0 DIR start|stop" >&2; exit 2 ;;
esac

T=$(mkdir -p "$T" && cd "$T" && pwd)
mkdir -p "$T/state" "$T/spool" "$T/munge"
chmod 700 "$T/munge"
head -c 1024 /dev/urandom > "$T/munge/munge.key"
chmod 400 "$T/munge/munge.key"
munged --key-file="$T/munge/munge.key" --socket="$T/munge/munge.sock" \
  --pid-file="$T/munged.pid" --log-file="$T/munged.log" --seed-file="$T/munge/munge.seed" --force

# A port nothing listens on (bash alone: a connection to it is refused).
free_port() {
  while :; do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
}
me=$(id -un)
cat > "$T/slurm.conf" <<CONF
ClusterName=convnet-test
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=$me
SlurmdUser=$me
AuthType=auth/munge
AuthInfo=socket=$T/munge/munge.sock
CredType=cred/munge
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
$(slurmd -C | head -1) State=UNKNOWN NodeAddr=127.0.0.1
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$T/slurm.conf"
slurmctld -f "$T/slurm.conf"
slurmd -f "$T/slurm.conf"
for _ in $(seq 200); do
  if sinfo -h -o %t 2>/dev/null | grep -qx idle; then exit 0; fi
  sleep 0.05
done
echo "the node did not become idle within 10 s:" >&2
sinfo >&2 || true
tail -n 5 "$T/slurmctld.log" "$T/slurmd.log" >&2 || true
exit 1
