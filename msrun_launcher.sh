#!/usr/bin/env bash
# Start a data-parallel job with MindSpore's `msrun` (dynamic cluster: no rank table needed).
# Positional forms follow mindformers' scripts/msrun_launcher.sh so its docs and habits carry over;
# unlike mindformers, JOIN defaults to True so the launcher blocks and returns the job's status.
set -euo pipefail

usage() {
  cat <<EOF
Usage (activate the venv first: msrun starts every worker with the plain \`python\` found on PATH):
  bash msrun_launcher.sh "train_multi.py --config CFG [args]"
      8 workers on this node
  bash msrun_launcher.sh "train_multi.py --config CFG [args]" WORKER_NUM
      WORKER_NUM workers on this node
  bash msrun_launcher.sh "train_multi.py --config CFG [args]" WORKER_NUM MASTER_PORT LOG_DIR JOIN CLUSTER_TIME_OUT
      single node
  bash msrun_launcher.sh "train_multi.py --config CFG [args]" WORKER_NUM LOCAL_WORKER_NUM MASTER_ADDR MASTER_PORT \\
      NODE_RANK LOG_DIR JOIN CLUSTER_TIME_OUT
      multi-node when WORKER_NUM != LOCAL_WORKER_NUM: run the same line on every node, changing only NODE_RANK
      (MASTER_ADDR = IP of the node that hosts the scheduler)

The quoted command may start with \`python\`/\`python3\`; its script path is relative to the current directory.
Defaults: WORKER_NUM=8, LOCAL_WORKER_NUM=WORKER_NUM, MASTER_ADDR=127.0.0.1, MASTER_PORT=8118, NODE_RANK=0,
  LOG_DIR=output/msrun_log, JOIN=True, CLUSTER_TIME_OUT=600 (seconds; negative = wait forever).
JOIN=True (default here; mindformers uses False): wait for all workers and exit with the job's status.
JOIN=False: return right after spawning; the workers keep running in the background.
Multi-node: MASTER_ADDR is checked first (resolvable, node 0's own address on NODE_RANK 0 only, routable);
  MSRUN_LAUNCHER_NO_ADDR_CHECK=1 skips the check.
Logs: LOG_DIR/scheduler.log and LOG_DIR/worker_<rank>.log.
EOF
}

die() {  # one clear line, then where to get help
  echo "msrun_launcher.sh: error: $*" >&2
  echo "run 'bash msrun_launcher.sh --help' for usage" >&2
  exit 2
}

case "${1:-}" in -h|--help) usage; exit 0 ;; esac

EXECUTE_ORDER="${1:-}"
WORKER_NUM=8 LOCAL_WORKER_NUM="" MASTER_ADDR=127.0.0.1 MASTER_PORT=8118 NODE_RANK=0
LOG_DIR=output/msrun_log JOIN=True CLUSTER_TIME_OUT=600
case $# in
  1) ;;
  2) WORKER_NUM=$2 ;;
  6) WORKER_NUM=$2 MASTER_PORT=$3 LOG_DIR=$4 JOIN=$5 CLUSTER_TIME_OUT=$6 ;;
  9) WORKER_NUM=$2 LOCAL_WORKER_NUM=$3 MASTER_ADDR=$4 MASTER_PORT=$5 NODE_RANK=$6 LOG_DIR=$7 JOIN=$8
     CLUSTER_TIME_OUT=$9 ;;
  *) { echo "msrun_launcher.sh: error: expected 1, 2, 6 or 9 arguments, got $#"; usage; } >&2; exit 2 ;;
esac
LOCAL_WORKER_NUM=${LOCAL_WORKER_NUM:-$WORKER_NUM}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_uint "$WORKER_NUM" && ((10#$WORKER_NUM >= 1)) || die "WORKER_NUM must be an integer >= 1, got '$WORKER_NUM'"
is_uint "$LOCAL_WORKER_NUM" && ((10#$LOCAL_WORKER_NUM >= 1)) ||
  die "LOCAL_WORKER_NUM must be an integer >= 1, got '$LOCAL_WORKER_NUM'"
((10#$LOCAL_WORKER_NUM <= 10#$WORKER_NUM)) ||
  die "LOCAL_WORKER_NUM ($LOCAL_WORKER_NUM) must not exceed WORKER_NUM ($WORKER_NUM)"
is_uint "$MASTER_PORT" && ((10#$MASTER_PORT >= 1 && 10#$MASTER_PORT <= 65535)) ||
  die "MASTER_PORT must be an integer in 1..65535, got '$MASTER_PORT'"
is_uint "$NODE_RANK" || die "NODE_RANK must be an integer >= 0, got '$NODE_RANK'"
# The ranks of this node are NODE_RANK*LOCAL .. +LOCAL-1; msrun would only fail later, at registration.
((10#$NODE_RANK * 10#$LOCAL_WORKER_NUM < 10#$WORKER_NUM)) ||
  die "NODE_RANK $NODE_RANK is too large for WORKER_NUM=$WORKER_NUM with $LOCAL_WORKER_NUM workers per node"
[[ $CLUSTER_TIME_OUT =~ ^-?[0-9]+$ ]] || die "CLUSTER_TIME_OUT must be an integer (seconds), got '$CLUSTER_TIME_OUT'"
[[ $JOIN == True || $JOIN == False ]] || die "JOIN must be True or False, got '$JOIN'"
[[ -n $LOG_DIR ]] || die "LOG_DIR must not be empty"

# Split the quoted command into words without evaluating it (no globbing, no $(...)): an argv array.
read -r -a TASK <<< "$EXECUTE_ORDER"
((${#TASK[@]} > 0)) || die "the first argument must be the quoted training command, e.g. \"train_multi.py --config CFG\""
# msrun runs `python SCRIPT ...` unless the first word is literally python/python3/pytest.
INTERP=python SCRIPT=${TASK[0]}
if [[ ${TASK[0]} == python || ${TASK[0]} == python3 ]]; then
  INTERP=${TASK[0]} SCRIPT=${TASK[1]:-}
fi
[[ -n $SCRIPT ]] || die "no script in the command '$EXECUTE_ORDER'"
[[ -f $SCRIPT ]] || die "script not found: '$SCRIPT' (relative to $(pwd))"

command -v msrun >/dev/null || die "msrun is not on PATH: activate the venv that has MindSpore (. .venv/bin/activate)"
PY=$(command -v "$INTERP") || die "'$INTERP' is not on PATH: activate the venv that has MindSpore (. .venv/bin/activate)"
# find_spec does not import mindspore (seconds); it only tells whether this interpreter can.
"$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("mindspore") is None)' ||
  die "'$PY' (first '$INTERP' on PATH, which msrun uses for every worker) has no mindspore: activate the project venv"
"$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("solov2") is None)' ||
  die "'$PY' cannot import the solov2 package: install it into this venv (pip install -e .)"

# Node 0's scheduler listens on MASTER_PORT. If another process holds it, msrun fails only after CLUSTER_TIME_OUT,
# with four tracebacks and the cause in scheduler.log, so try the port first. SO_REUSEADDR, as a server binds: a
# connection of the previous job still in TIME-WAIT (a minute after it ends) does not hold the port, a listener does.
if [ "$NODE_RANK" = 0 ]; then
  "$PY" -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$MASTER_PORT" ||
    die "MASTER_PORT $MASTER_PORT is already in use on this node: stop the job that holds it or choose another port"
fi

# Multi-node: msrun starts the scheduler on the node that owns MASTER_ADDR, whatever NODE_RANK says, and a node that
# cannot reach it waits CLUSTER_TIME_OUT before failing with tracebacks. Check the address the way msrun reads it
# (MSRUN_LAUNCHER_NO_ADDR_CHECK=1 skips this, for networks where the check is wrong).
if ((10#$WORKER_NUM != 10#$LOCAL_WORKER_NUM)) && [[ ${MSRUN_LAUNCHER_NO_ADDR_CHECK:-0} != 1 ]]; then
  if ! why=$("$PY" -c 'import errno, socket, sys
addr, port, node_rank = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    family, _, _, _, where = socket.getaddrinfo(addr.strip("[]"), port, type=socket.SOCK_STREAM)[0]
except OSError as e:
    sys.exit(f"MASTER_ADDR {addr!r} is neither an IP address nor a host name this node can resolve ({e.strerror})")
try:   # as msrun decides (its fallback): the source address the kernel picks to reach it is the address itself
    probe = socket.socket(family, socket.SOCK_DGRAM)
    probe.connect(where)
    local = probe.getsockname()[0] == where[0]
except OSError:
    local = False
if node_rank == 0 and not local:
    sys.exit(f"MASTER_ADDR {addr} is not an address of this node, but NODE_RANK 0 hosts the scheduler: give "
             "this node'"'"'s own IP here and on every other node")
if node_rank > 0 and local:
    sys.exit(f"MASTER_ADDR {addr} is an address of this node, so msrun would start a second scheduler here: give "
             "the IP of the NODE_RANK 0 node")
if node_rank > 0:
    s = socket.socket(family)
    s.settimeout(3)
    try:
        s.connect(where)
    except socket.timeout:
        print(f"msrun_launcher.sh: warning: {addr}:{port} does not answer within 3 s (a firewall, or node 0 not "
              "up yet); msrun waits CLUSTER_TIME_OUT for it", file=sys.stderr)
    except OSError as e:   # refused: reachable, the scheduler is not listening yet (node 0 may start later)
        if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
            sys.exit(f"MASTER_ADDR {addr} cannot be reached from this node ({e.strerror})")' \
    "$MASTER_ADDR" "$MASTER_PORT" "$NODE_RANK" 2>&1 >/dev/null); then
    die "$why"
  fi
  if [[ -n $why ]]; then echo "$why" >&2; fi   # a warning
fi

ARGS=(msrun "--worker_num=$WORKER_NUM" "--local_worker_num=$LOCAL_WORKER_NUM")
if ((10#$WORKER_NUM != 10#$LOCAL_WORKER_NUM)); then
  ARGS+=("--master_addr=$MASTER_ADDR" "--node_rank=$NODE_RANK")
fi
ARGS+=("--master_port=$MASTER_PORT" "--log_dir=$LOG_DIR" "--join=$JOIN" "--cluster_time_out=$CLUSTER_TIME_OUT")
ARGS+=("${TASK[@]}")

# %q shows the exact words msrun receives (quoted where needed), so the line can be pasted back.
echo "Running command: $(printf '%q ' "${ARGS[@]}")"
# With JOIN=True a crashed worker ends the job only once the scheduler's node timeout expires (about 30 s on
# MindSpore 2.10; env MS_NODE_TIMEOUT shortens it), independent of CLUSTER_TIME_OUT. Without MS_CPU_COMM_OP_TIMEOUT
# MS_NODE_TIMEOUT is also the CPU collectives' timeout (30 s by default): set both when shortening it.
mkdir -p "$LOG_DIR"
STARTED=$(mktemp "$LOG_DIR/.launch.XXXXXX")   # the logs of this job are newer than this file
trap 'rm -f "$STARTED"' EXIT                  # Ctrl-C too: no marker left among the logs
trap 'exit 143' TERM                          # bash skips the EXIT trap when a TERM kills it
rc=0
"${ARGS[@]}" || rc=$?

# The cause of a failed job in one line: the first worker's `error:` line (the port's one-line errors), else the
# last exception line of a worker's traceback, with the log it is in. Only this job's logs; progress bars end their
# lines with \r, so a line is what lies between \r and \n too.
cause() {
  local f line logs=()
  mapfile -t logs < <(find "$LOG_DIR" -maxdepth 1 -name 'worker_*.log' -newer "$STARTED" | sort)
  for f in "${logs[@]}"; do
    line=$(tr '\r' '\n' < "$f" | grep -m1 -a '^error: ') && { echo "${f##*/}: ${line#error: } (log: $f)"; return; }
  done
  for f in "${logs[@]}"; do
    line=$(tr '\r' '\n' < "$f" | grep -a -E '^[A-Za-z_][A-Za-z0-9_.]*(Error|Exception|Interrupt): ' | tail -n 1) &&
      [[ -n $line ]] && { echo "${f##*/}: $line (log: $f)"; return; }
  done
}
if [[ $JOIN == True ]]; then
  echo "msrun finished with exit code $rc. Logs: $LOG_DIR/scheduler.log, $LOG_DIR/worker_*.log"
  if ((rc != 0)); then
    why=$(cause) || true
    [[ -n $why ]] && echo "msrun_launcher.sh: error: $why" >&2
  fi
else
  echo "Workers run in the background (JOIN=False). Logs: $LOG_DIR/scheduler.log, $LOG_DIR/worker_*.log"
fi
exit "$rc"
