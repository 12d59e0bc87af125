# Helpers shared by the localhost test-cluster scripts (sourced, not run).

# A live process that is not a zombie (kill -0 succeeds on zombies, and PID 1 here reaps late).
alive() { ps -o stat= -p "$1" 2>/dev/null | grep -qv '^Z'; }
# The process named in a pid file is alive.
running() { [ -f "$1" ] && alive "$(cat "$1")"; }
# stop_pids SIG PID...: signal, then wait up to ~30 s for each to be gone, SIGKILL the stragglers.
# Waits on the pids: daemons remove their pid files seconds before they exit, and a start issued in
# between would see no daemon, start nothing, and then talk to one that is shutting down.
stop_pids() {
  local sig=$1 p i; shift
  for p in "$@"; do kill -"$sig" "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for i in $(seq 1 60); do alive "$p" || break; sleep 0.5; done
    alive "$p" && kill -KILL "$p" 2>/dev/null || true
  done
}
# wait_for SECONDS CMD...: run CMD every 0.5 s until it succeeds; non-zero when time runs out.
wait_for() {
  local n=$(( $1 * 2 )) i; shift
  for i in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}
# apt_install PKG...: Debian packages, non-interactively, after refreshing the package lists
# (unless the caller already has: GLMX_APT_UPDATED=1, as tools/ci/setup.d/10-schedulers.sh sets).
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ "${GLMX_APT_UPDATED:-0}" != 1 ]; then apt-get update -qq; GLMX_APT_UPDATED=1; fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
