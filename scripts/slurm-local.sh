#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for the Slurm tests (xtask/tests/slurm.rs) and by
# hand: Debian's slurm-wlm and munge, started without systemd. Needs root.
#
#   scripts/slurm-local.sh start    # install if missing, start munged, slurmctld, slurmd; wait until idle
#   scripts/slurm-local.sh stop     # scontrol shutdown, stop munged
#   scripts/slurm-local.sh status   # sinfo
#
# Facts (Slurm 22.05 as Debian 12 ships it): `sacct` needs slurmdbd, so use squeue/scontrol; a
# requeued job waits about two minutes (BeginTime) unless `scontrol update JobId=J StartTime=now`
# (not within the second of the requeue: slurmd would refuse the revoked credential).
set -euo pipefail

conf=/etc/slurm/slurm.conf

install() {
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        echo "installing slurm-wlm and munge (Debian packages)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    fi
}

start_munge() {
    if [ ! -f /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if ! pgrep -x munged >/dev/null; then
        su -s /bin/sh munge -c /usr/sbin/munged
    fi
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo) - 512 ))
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
    chown slurm:slurm /var/spool/slurmctld /var/log/slurm /run/slurm
    cat >"$conf" <<EOF
# Written by gradlens' scripts/slurm-local.sh: a one-node cluster.
ClusterName=gradlens-local
SlurmctldHost=$host
AuthType=auth/munge
CryptoType=crypto/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
SlurmUser=slurm
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=10
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

start() {
    install
    start_munge
    write_conf
    if ! pgrep -x slurmctld >/dev/null; then slurmctld; fi
    if ! pgrep -x slurmd >/dev/null; then slurmd; fi
    for _ in $(seq 1 60); do
        if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "slurm: node $(hostname -s) up ($(sinfo -h -o '%T %c CPUs'))" >&2
            return 0
        fi
        sleep 0.5
    done
    echo "slurm did not come up; logs in /var/log/slurm" >&2
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    return 1
}

stop() {
    scontrol shutdown >/dev/null 2>&1 || true
    if [ -f /run/munge/munged.pid ]; then kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true; fi
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
