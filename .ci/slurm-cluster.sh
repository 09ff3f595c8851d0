#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (controller and compute node on
# localhost), for the tests of the SLURM launcher. Needs root and Debian's
# packages: apt-get install slurmctld slurmd slurm-client munge.
#
#   bash .ci/slurm-cluster.sh          # install if missing, configure, start, wait until idle
#   bash .ci/slurm-cluster.sh stop     # stop the daemons
#
# No cgroups are needed: ProctrackType=proctrack/linuxproc and TaskPlugin=task/none.
set -euo pipefail

if [[ "${1:-start}" == stop ]]; then
    pkill -x slurmd || true
    pkill -x slurmctld || true
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
memory_mb=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024))

# munge: a key readable by the munge user only, then the daemon
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
fi

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat >/etc/slurm/slurm.conf <<CONF
# written by vaelab's .ci/slurm-cluster.sh: one node, controller on localhost
ClusterName=vaelab
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd

for _ in $(seq 60); do
    state=$(sinfo --noheader --nodes="${host}" --format=%t 2>/dev/null || true)
    case "$state" in
        idle | mix | alloc) echo "SLURM: node ${host} ${state}, ${cpus} CPUs"; exit 0 ;;
        down* | drain*) scontrol update nodename="${host}" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
done
echo "SLURM did not come up; last node state: '${state}'" >&2
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
