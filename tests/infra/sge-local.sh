#!/usr/bin/env bash
# Single-node Son of Grid Engine (Debian 12: gridengine 8.1.9) on this host for tests: one
# queue all.q of 16 slots, a scheduler that looks every second, root allowed to submit.
# No systemd needed; run as root.
#   sge-local.sh up|down|status      (all idempotent)
# Afterwards: export SGE_ROOT=/var/lib/gridengine SGE_CELL=default (qsub finds them anyway
# through /etc/default/gridengine).
set -euo pipefail
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
log() { echo "[sge-local $(date +%T)] $*" >&2; }

install_pkgs() {
  local need=0
  for p in gridengine-master gridengine-exec gridengine-client; do
    dpkg -s "$p" >/dev/null 2>&1 || need=1
  done
  [ $need = 0 ] && return
  log "apt-get install gridengine"
  # debconf answers, so that the install asks nothing
  for p in gridengine-common gridengine-master gridengine-client gridengine-exec; do
    printf '%s shared/gridenginemaster string %s\n%s shared/gridenginecell string default\n%s shared/gridengineconfig boolean true\n' \
      "$p" "$(hostname)" "$p" "$p"
  done | debconf-set-selections
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    gridengine-master gridengine-exec gridengine-client >/dev/null
}

editor() {  # a non-interactive EDITOR for qconf: a sed script over the file qconf opens
  local f
  f=$(mktemp)
  printf '#!/bin/sh\nsed -i %s "$1"\n' "$1" >"$f"
  chmod +x "$f"
  echo "$f"
}

configure() {
  # Before the master's first start: else "access denied (client IP resolved to localhost)"
  echo "localhost $(hostname)" >"$SGE_ROOT/$SGE_CELL/common/host_aliases"
  for _ in $(seq 50); do  # a master still exiting (qconf -km takes seconds) is waited for
    qstat >/dev/null 2>&1 && break
    pgrep -x sge_qmaster >/dev/null || /etc/init.d/gridengine-master start >/dev/null
    sleep 0.2
  done
  if ! qconf -sel 2>/dev/null | grep -qx localhost; then
    printf 'hostname localhost\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' >/tmp/sge-eh
    qconf -Ae /tmp/sge-eh >/dev/null
  fi
  qconf -ss 2>/dev/null | grep -qx localhost || qconf -as localhost >/dev/null
  # Two parallel environments: smp (all slots on one host) and mpi (spread round robin),
  # as sites name them; qrsh -inherit may start processes inside either (control_slaves)
  for pe in smp mpi; do
    if ! qconf -spl 2>/dev/null | grep -qx "$pe"; then
      rule='$pe_slots'; [ "$pe" = mpi ] && rule='$round_robin'
      printf 'pe_name %s\nslots 999\nuser_lists NONE\nxuser_lists NONE\nstart_proc_args NONE\nstop_proc_args NONE\nallocation_rule %s\ncontrol_slaves TRUE\njob_is_first_task FALSE\nurgency_slots min\naccounting_summary FALSE\nqsort_args NONE\n' \
        "$pe" "$rule" >/tmp/sge-pe
      qconf -Ap /tmp/sge-pe >/dev/null
    fi
  done
  # No load thresholds: a test machine under load (the suite beside CPU burners) must still
  # start jobs; by default a normalized load over 1.75 puts the queue in alarm (no jobs).
  local queue='-e "s/^pe_list .*/pe_list smp mpi/" -e "s/^load_thresholds .*/load_thresholds NONE/"'
  if ! qconf -sql 2>/dev/null | grep -qx all.q; then
    EDITOR=$(editor "$queue"' -e "s/^hostlist .*/hostlist localhost/" -e "s/^slots .*/slots 16/" -e "s/^shell .*/shell \/bin\/bash/"') \
      qconf -aq all.q >/dev/null
  elif ! qconf -sq all.q | grep -q "load_thresholds *NONE" || ! qconf -sq all.q | grep -q "pe_list.*mpi"; then
    EDITOR=$(editor "$queue") qconf -mq all.q >/dev/null
  fi
  EDITOR=$(editor '-e "s/^min_uid .*/min_uid 0/" -e "s/^min_gid .*/min_gid 0/"') qconf -mconf global >/dev/null 2>&1 || true
  EDITOR=$(editor '-e "s/^schedule_interval .*/schedule_interval 0:0:1/" -e "s/^flush_submit_sec .*/flush_submit_sec 1/" -e "s/^flush_finish_sec .*/flush_finish_sec 1/"') \
    qconf -msconf >/dev/null 2>&1 || true
  pgrep -x sge_execd >/dev/null || /etc/init.d/gridengine-exec start >/dev/null
}

ready() {  # the queue is there, and its execd answers (no "u" state: unknown)
  qstat -f 2>/dev/null | grep "all.q@localhost" | grep -vq " [a-zA-Z]*u[a-zA-Z]*$"
}

up() {
  install_pkgs
  local fresh=0
  qstat >/dev/null 2>&1 || fresh=1
  configure
  for _ in $(seq 150); do
    if ready; then
      # A fresh start forgets the jobs of an earlier life (a machine copied while tests ran,
      # a crash): the master recovers them from its spool, and they would hold slots.
      if [ $fresh = 1 ] && [ -n "$(qstat -u '*' 2>/dev/null)" ]; then
        log "deleting jobs left from before: $(qstat -u '*' | awk 'NR>2 {print $1}' | xargs)"
        qdel -f -u '*' >/dev/null 2>&1 || true
      fi
      log "up"
      return
    fi
    sleep 0.2
  done
  log "all.q@localhost is not ready: $(qstat -f 2>&1 | tail -2)"; exit 1
}

down() {
  /etc/init.d/gridengine-exec stop >/dev/null 2>&1 || true
  qconf -km >/dev/null 2>&1 || true
  log "down"
}

case "${1:-status}" in
  up) up ;;
  down) down ;;
  status) qstat -f ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
