#!/usr/bin/env bash
# Single-node Slurm cluster on localhost for tests (Debian 12: slurm-wlm 22.05, munge,
# optional slurmdbd+MariaDB for full sacct). No systemd needed; run as root.
#   slurm-local.sh up|down|status      (all idempotent)
# Env knobs:
#   SLURM_LOCAL_DIR         state/log dir            (default /tmp/slurm-local)
#   SLURM_FAKE_CPUS         CPUs the node claims     (default 16)
#   SLURM_FAKE_GPUS         fake gres gpus (0 = none)(default 4)
#   SLURM_FAKE_MEM_MB       RealMemory               (default 16000)
#   SLURM_LOCAL_ACCOUNTING  1 = slurmdbd+MariaDB (full sacct incl. steps), 0 = jobcomp/filetxt only (`sacct -c`)
#                                                   (default 1)
set -euo pipefail
D=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
CPUS=${SLURM_FAKE_CPUS:-16}
GPUS=${SLURM_FAKE_GPUS:-4}
MEM=${SLURM_FAKE_MEM_MB:-16000}
ACCT=${SLURM_LOCAL_ACCOUNTING:-1}
CONF=/etc/slurm/slurm.conf
DBPORT=3307
log() { echo "[slurm-local $(date +%T)] $*" >&2; }

install_pkgs() {
  local pkgs="slurm-wlm slurm-client munge" need=0
  [ "$ACCT" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || need=1; done
  if [ $need = 1 ]; then
    log "apt-get install $pkgs"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  fi
}

write_conf() {
  mkdir -p "$D"/{state,spool,log,run,dev} /etc/slurm
  local gres_line="" last=$((GPUS-1)) acct_lines
  if [ "$GPUS" -gt 0 ]; then
    # gres File= must be a char/block device: fake GPUs are clones of /dev/null
    for i in $(seq 0 $last); do
      [ -c "$D/dev/fakegpu$i" ] || { rm -f "$D/dev/fakegpu$i"; mknod "$D/dev/fakegpu$i" c 1 3; }
    done
    gres_line="Gres=gpu:$GPUS"
    printf 'AutoDetect=off\nNodeName=localhost Name=gpu File=%s/dev/fakegpu[0-%d]\n' "$D" "$last" > /etc/slurm/gres.conf
  else
    : > /etc/slurm/gres.conf
  fi
  if [ "$ACCT" = 1 ]; then
    acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
    cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DBPORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
    chmod 600 /etc/slurm/slurmdbd.conf
  else
    acct_lines="AccountingStorageType=accounting_storage/none"
  fi
  cat > "$CONF" <<CONF
ClusterName=localcluster
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: plain process tracking works in containers/VMs without systemd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
$acct_lines
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.txt
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=0,sched_interval=1,batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# trust the CPU/memory/gres numbers below instead of the real hardware
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
GresTypes=gpu
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM $gres_line State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
}

# alive PIDFILE COMM : pid file exists, process exists (not a zombie) and has the expected name
alive() {
  [ -f "$1" ] && local p && p=$(cat "$1") && [ -n "$p" ] && [ "$(cat /proc/$p/comm 2>/dev/null)" = "$2" ] \
    && ! grep -q '^State:[[:space:]]*Z' "/proc/$p/status" 2>/dev/null
}
wait_for() { # tries cmd...
  local n=$1; shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
node_ready() { case "$(sinfo -h -N -o '%T' 2>/dev/null | head -1)" in idle|mixed|allocated|completing) return 0;; esac; return 1; }
munge_ok() { munge -n </dev/null | unmunge; }
db_ok() { mariadb --no-defaults -S "$D/run/mysqld.sock" -uroot -e 'select 1'; }
dbd_ok() { sacctmgr -n show cluster; }

up() {
  install_pkgs
  write_conf
  [ -s /etc/munge/munge.key ] || { mungekey -c -f -k /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  if ! alive /run/munge/munged.pid munged; then
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  fi
  wait_for 50 munge_ok || { log "munged not answering"; exit 1; }
  if [ "$ACCT" = 1 ]; then
    if [ ! -d "$D/mysql/mysql" ]; then
      mariadb-install-db --datadir="$D/mysql" --user=root --auth-root-authentication-method=normal \
        --skip-test-db >"$D/log/mariadb-install.log" 2>&1
    fi
    if ! alive "$D/run/mariadb.pid" mariadbd; then
      setsid mariadbd --no-defaults --datadir="$D/mysql" --user=root --bind-address=127.0.0.1 --port=$DBPORT \
        --socket="$D/run/mysqld.sock" --pid-file="$D/run/mariadb.pid" --log-error="$D/log/mariadb.err" \
        --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    fi
    wait_for 300 db_ok || { log "mariadb not answering"; exit 1; }
    mariadb --no-defaults -S "$D/run/mysqld.sock" -uroot -e "
      CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
      CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    alive "$D/run/slurmdbd.pid" slurmdbd || /usr/sbin/slurmdbd
    wait_for 300 dbd_ok || { log "slurmdbd not answering"; exit 1; }
    [ -n "$(sacctmgr -n -P show cluster format=cluster | grep -x localcluster || true)" ] \
      || sacctmgr -i add cluster localcluster >/dev/null
  fi
  if ! alive "$D/run/slurmctld.pid" slurmctld && ! alive "$D/run/slurmd.pid" slurmd; then
    # A fresh start forgets the jobs of an earlier life (a machine copied while tests ran, a
    # crash): their processes are gone, but recovered jobs would hold the node for ever.
    rm -rf "$D/state" "$D/spool"
    mkdir -p "$D/state" "$D/spool"
  fi
  alive "$D/run/slurmctld.pid" slurmctld || /usr/sbin/slurmctld -f "$CONF"
  alive "$D/run/slurmd.pid" slurmd || /usr/sbin/slurmd -f "$CONF" -N localhost
  if ! wait_for 300 node_ready; then
    case "$(sinfo -h -N -o '%T' 2>/dev/null | head -1)" in
      down*|drain*|fail*) scontrol update NodeName=localhost State=RESUME ;;
    esac
    wait_for 100 node_ready || { log "node not ready"; sinfo -N -l >&2; exit 1; }
  fi
  local held
  held=$(squeue -h -o '%i %j %T %M' 2>/dev/null || true)
  [ -z "$held" ] || log "jobs already in the queue (cancel them if they are stale: scancel --full -u root):
$held"
  sinfo -N -o '%N %T %c %m %G'
}

stop_pids() { # pidfile:comm ...  (TERM all at once, wait up to 15 s, then KILL)
  local pids="" x p
  for x in "$@"; do
    if alive "${x%:*}" "${x##*:}"; then p=$(cat "${x%:*}"); kill "$p" 2>/dev/null || true; pids="$pids $p"; fi
  done
  for p in $pids; do
    for _ in $(seq 150); do [ -d /proc/$p ] || break; sleep 0.1; done
    [ -d /proc/$p ] && kill -9 "$p" 2>/dev/null || true
  done
  for x in "$@"; do rm -f "${x%:*}"; done
}

down() {
  if alive "$D/run/slurmctld.pid" slurmctld; then scancel --full -u root >/dev/null 2>&1 || true; fi
  stop_pids "$D/run/slurmd.pid:slurmd" "$D/run/slurmctld.pid:slurmctld" "$D/run/slurmdbd.pid:slurmdbd"
  stop_pids "$D/run/mariadb.pid:mariadbd" /run/munge/munged.pid:munged
  # forget jobs/accounting of this run unless asked to keep them
  [ "${SLURM_LOCAL_KEEP:-0}" = 1 ] || rm -rf "$D/state" "$D/spool" "$D/mysql"
}

status() {
  local rc=0
  local db=""; [ "$ACCT" = 1 ] && db="$D/run/mariadb.pid:mariadbd $D/run/slurmdbd.pid:slurmdbd"
  for x in /run/munge/munged.pid:munged $db \
           "$D/run/slurmctld.pid:slurmctld" "$D/run/slurmd.pid:slurmd"; do
    if alive "${x%:*}" "${x##*:}"; then echo "${x##*:}: running pid $(cat "${x%:*}")"; else echo "${x##*:}: stopped"; rc=3; fi
  done
  return $rc
}

case "${1:-}" in
  up) up ;; down) down ;; status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
