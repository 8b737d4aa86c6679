#!/usr/bin/env bash
# A one-node, CPU-only SLURM cluster on this machine, for tests/test_slurm.py and `make slurm-local`:
# munged + slurmctld + slurmd (Debian 12's slurm-wlm 22.05), no cgroups, no slurmdbd (so plain `sacct`
# says accounting is disabled: job states come from `scontrol show job` while the controller keeps them,
# MinJobAge below, and from the job-completion log /var/log/slurm/jobcomp.log, which `sacct -c` reads). Installs slurm-wlm and munge when missing (root).
# Idempotent: when the cluster answers already, it returns at once. Exit status 0 = the cluster runs
# (`sinfo` shows the node idle), else 1 with the reason on stderr (the tests then skip, naming it).
set -euo pipefail
CONF=/etc/slurm/slurm.conf
MARK="# tcm one-node test cluster (tests/slurm/start.sh)"
LOGS=/var/log/slurm

ready() { timeout 10 sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }
die() { echo "tests/slurm/start.sh: $*" >&2; exit 1; }

if command -v sinfo >/dev/null && [ -f "$CONF" ] && head -1 "$CONF" | grep -qF "$MARK" && ready; then
  echo "SLURM: one-node cluster already running ($(sinfo -h -o '%N %c CPUs %t'))"; exit 0
fi
[ "$(id -u)" = 0 ] || die "needs root (installs packages, starts daemons)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and there is no apt-get"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
    || die "apt-get install slurm-wlm munge failed"
fi
if [ -f "$CONF" ] && ! head -1 "$CONF" | grep -qF "$MARK"; then
  die "$CONF exists and is not this script's: not touching a real cluster's configuration"
fi

# munge: a key, then the daemon (as the munge user, as Debian's service does)
mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
  || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge
chmod 0400 /etc/munge/munge.key; chmod 0700 /etc/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged --force || die "munged did not start (/var/log/munge/munged.log)"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null 2>&1 || die "munge does not answer (/var/log/munge/munged.log)"
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
mkdir -p /etc/slurm "$LOGS" /var/spool/slurmctld /var/spool/slurmd
cat > "$CONF" <<EOF
$MARK
ClusterName=tcm-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# no cgroups: processes are tracked by their parent ids, nothing is confined
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# no slurmdbd (it needs MariaDB): `sacct -c` only; finished jobs stay in scontrol for MinJobAge seconds
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
MinJobAge=3600
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdTimeout=30
MpiDefault=none
KillWait=10
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
rm -f /etc/slurm/cgroup.conf  # none: ProctrackType and TaskPlugin above use no cgroups

pgrep -x slurmctld >/dev/null || slurmctld || die "slurmctld did not start ($LOGS/slurmctld.log)"
pgrep -x slurmd >/dev/null || slurmd || die "slurmd did not start ($LOGS/slurmd.log)"
for _ in $(seq 60); do ready && break; sleep 0.5; done
scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
for _ in $(seq 20); do ready && break; sleep 0.5; done
ready || die "the node is not idle: $(sinfo -h -o '%N %t %E' 2>&1) (see $LOGS/slurmctld.log, $LOGS/slurmd.log)"
echo "SLURM: one-node cluster started ($(sinfo -h -o '%N %c CPUs %t'))"
