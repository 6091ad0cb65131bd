#!/usr/bin/env bash
# An OpenSSH server on 127.0.0.1 standing for a cluster's login node, for the remote tests: a
# separate local user (default "cluster") whose home is the "cluster", key authentication
# only. Run as root.
#   sshd-local.sh up|down|status      (all idempotent)
# Env knobs:
#   SSHD_LOCAL_DIR    host key, client key, config, log   (default /tmp/sshd-local)
#   SSHD_LOCAL_PORT   port on 127.0.0.1                   (default 2222)
#   SSHD_LOCAL_USER   the cluster's user                  (default cluster)
# After "up": $SSHD_LOCAL_DIR/userkey is the private key that logs in as that user, and
# $SSHD_LOCAL_DIR/hostkey.pub the server's key (for known_hosts).
set -euo pipefail
D=${SSHD_LOCAL_DIR:-/tmp/sshd-local}
PORT=${SSHD_LOCAL_PORT:-2222}
USERNAME=${SSHD_LOCAL_USER:-cluster}
log() { echo "[sshd-local $(date +%T)] $*" >&2; }

install_pkgs() {
  local need=0
  for p in openssh-server openssh-client rsync; do dpkg -s "$p" >/dev/null 2>&1 || need=1; done
  [ $need = 0 ] && return
  log "apt-get install openssh-server openssh-client rsync"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    openssh-server openssh-client rsync >/dev/null
}

running() { [ -f "$D/sshd.pid" ] && kill -0 "$(cat "$D/sshd.pid")" 2>/dev/null; }

up() {
  if running; then log "already up on 127.0.0.1:$PORT"; return; fi
  install_pkgs
  mkdir -p "$D" /run/sshd
  chmod 755 "$D"
  [ -f "$D/hostkey" ] || ssh-keygen -q -t ed25519 -N '' -f "$D/hostkey"
  [ -f "$D/userkey" ] || ssh-keygen -q -t ed25519 -N '' -f "$D/userkey"
  chmod 600 "$D/userkey"  # ssh ignores a private key others can read
  if ! id "$USERNAME" >/dev/null 2>&1; then
    useradd -m -s /bin/bash "$USERNAME"
    usermod -p '*' "$USERNAME"  # a locked account ("!") refuses even keys: unlock it
  fi
  install -d -m 700 -o "$USERNAME" "/home/$USERNAME/.ssh"
  install -m 600 -o "$USERNAME" "$D/userkey.pub" "/home/$USERNAME/.ssh/authorized_keys"
  cat >"$D/sshd_config" <<CONF
Port $PORT
ListenAddress 127.0.0.1
HostKey $D/hostkey
PidFile $D/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowUsers $USERNAME
MaxSessions 64
MaxStartups 64
CONF
  /usr/sbin/sshd -f "$D/sshd_config" -E "$D/sshd.log"
  for _ in $(seq 50); do running && break; sleep 0.1; done
  running || { log "sshd did not start: $(tail -5 "$D/sshd.log")"; exit 1; }
  log "up on 127.0.0.1:$PORT as $USERNAME"
}

down() {
  if running; then kill "$(cat "$D/sshd.pid")"; fi
  log "down"
}

case "${1:-status}" in
  up) up ;;
  down) down ;;
  status) running && echo "up on 127.0.0.1:$PORT" || { echo down; exit 1; } ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
