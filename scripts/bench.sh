#!/usr/bin/env bash
# Reproduces every figure in docs/PERFORMANCE.md.
#   bash scripts/bench.sh                 # all sections, 2 runs each (about 10-15 min)
#   bash scripts/bench.sh fanout latency  # only some sections
# Sections: fanout latency idle mysql cluster sweep flood soak
# Env: BIN (default target/release; built if missing), RUNS (default 2),
#      MYSQL (default mysql://root@127.0.0.1:3306), REDIS_URL (default redis://127.0.0.1:6379),
#      PORT_BASE (default 38100), OUT (default docs/bench/results). Writes docs/bench/results/*.json and docs/bench/*.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
RUNS=${RUNS:-2}
MYSQL=${MYSQL:-mysql://root@127.0.0.1:3306}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
PORT_BASE=${PORT_BASE:-38100}
OUT=${OUT:-docs/bench/results}
mkdir -p "$OUT"
[ -x "$BIN/chat-server" ] && [ -x "$BIN/chat-bench" ] || cargo build --release
SECTIONS=${*:-fanout latency idle mysql cluster sweep flood soak}
DB=chat_bench_$$
export WS_RATE_PER_SEC=1000000 WS_RATE_BURST=1000000 WS_JOIN_RATE_PER_SEC=1000000 WS_JOIN_BURST=1000000 \
  ROOM_CREATE_BURST=1000000 MAX_CONNECTIONS_PER_ADDRESS=1000000 RUST_LOG=warn

PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  if [[ " $SECTIONS " == *" mysql "* || " $SECTIONS " == *" cluster "* ]]; then
    mysql -h127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS $DB" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# start PORT [ENV=VAL...] -> sets SPID
start() {
  local port=$1; shift
  env PORT=$port "$@" "$BIN/chat-server" >/tmp/chat-server-$port.log 2>&1 &
  SPID=$!; PIDS+=("$SPID")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0; sleep 0.1; done
  echo "server on $port did not start" >&2; cat /tmp/chat-server-$port.log >&2; exit 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
bench() { echo "+ chat-bench $*" >&2; "$BIN/chat-bench" "$@" --json --quiet; }

for s in $SECTIONS; do case $s in
fanout)   # 1 room of 1000, 4 senders, closed loop (window probed), memory store
  for r in $(seq "$RUNS"); do
    start $PORT_BASE
    bench fanout --url http://127.0.0.1:$PORT_BASE --pid $SPID --members 1000 --senders 4 \
      --duration 5 --label "fanout-1000 run $r" > $OUT/target-fanout-1000-run$r.json
    stop $SPID
  done ;;
latency)  # fixed rate: 1000 members x 4 x 12/s = 48k deliveries/s; 100 members x 4 x 167.5/s = 67k
  for r in $(seq "$RUNS"); do
    start $PORT_BASE
    bench fanout --url http://127.0.0.1:$PORT_BASE --pid $SPID --members 1000 --senders 4 --rate 12 \
      --duration 10 --label "latency-1000 run $r" > $OUT/target-latency-1000-run$r.json
    bench fanout --url http://127.0.0.1:$PORT_BASE --pid $SPID --members 100 --senders 4 --rate 167.5 \
      --duration 10 --label "latency-100 run $r" > $OUT/target-latency-100-run$r.json
    stop $SPID
  done ;;
idle)     # 15,000 idle connections in rooms of 10
  for r in $(seq "$RUNS"); do
    ( ulimit -n 20000; trap 'kill ${SPID:-} 2>/dev/null || true' EXIT; start $PORT_BASE
      bench idle --url http://127.0.0.1:$PORT_BASE --pid $SPID --conns 15000 --room-size 10 \
        --duration 5 --label "idle-15000 run $r" > $OUT/target-idle-15000-run$r.json
      stop $SPID )
  done ;;
mysql)    # MySQL store, a fresh database per run. Fixed 20,000 msgs/s first: 10 rooms of 10, every
          # member sends (100 senders x 200/s); then one room of 10 with 10 senders x 2000/s. Then the
          # closed loop (max throughput) + 50% rate on the 10x10 rooms. chatMsg rows are counted while
          # the server runs, to check that the messages were stored; mariadbd CPU is printed too.
  rows() { mysql -h127.0.0.1 -uroot -N -e "SELECT COUNT(*) FROM $DB.chatMsg" 2>/dev/null || echo 0; }
  dbcpu() { local m; m=$(pgrep -x mariadbd || pgrep -x mysqld || true); [ -n "$m" ] && awk '{print $14+$15}' /proc/${m%% *}/stat || echo 0; }
  for r in $(seq "$RUNS"); do
    mysql -h127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB"
    start $PORT_BASE MYSQL_URL=$MYSQL/$DB
    b=$(rows); c=$(dbcpu)
    bench rooms --url http://127.0.0.1:$PORT_BASE --pid $SPID --rooms 10 --room-size 10 --senders 10 --rate 200 \
      --duration 10 --label "mysql rooms 10x10 20k/s run $r" > $OUT/target-mysql-rooms-20k-run$r.json
    a=$(rows); d=$(dbcpu)
    echo "10x10 at 20k/s: chatMsg rows stored $((a-b)) (incl. warm-up), mariadbd CPU $(( (d-c) )) ticks of 1/100 s" | tee $OUT/target-mysql-run$r.txt
    bench fanout --url http://127.0.0.1:$PORT_BASE --pid $SPID --members 10 --senders 10 --rate 2000 \
      --duration 10 --label "mysql 1 room of 10 20k/s run $r" > $OUT/target-mysql-room10-20k-run$r.json
    b=$(rows)
    bench rooms --url http://127.0.0.1:$PORT_BASE --pid $SPID --rooms 10 --room-size 10 --senders 10 \
      --duration 5 --label "mysql rooms 10x10 run $r" > $OUT/target-mysql-rooms-run$r.json
    a=$(rows); echo "10x10 closed loop: chatMsg rows stored $((a-b)) (probes + warm-ups + both phases)" | tee -a $OUT/target-mysql-run$r.txt
    stop $SPID
  done ;;
cluster)  # two processes, MySQL + Redis, 10k msgs/s
  mysql -h127.0.0.1 -uroot -e "CREATE DATABASE IF NOT EXISTS $DB"
  for r in $(seq "$RUNS"); do
    start $((PORT_BASE+1)) MYSQL_URL=$MYSQL/$DB REDIS_URL=$REDIS_URL REDIS_PREFIX=chatbench-$$ INSTANCE_ID=a; A=$SPID
    start $((PORT_BASE+2)) MYSQL_URL=$MYSQL/$DB REDIS_URL=$REDIS_URL REDIS_PREFIX=chatbench-$$ INSTANCE_ID=b; B=$SPID
    bench cluster --url http://127.0.0.1:$((PORT_BASE+1)) --url2 http://127.0.0.1:$((PORT_BASE+2)) \
      --pid $A --pid2 $B --rate 10000 --duration 10 --label "cluster run $r" > $OUT/target-cluster-run$r.json
    stop $A; stop $B
  done ;;
sweep)    # fanout vs room size, 4 senders, one fresh server per point
  for n in 10 100 300 1000; do
    start $PORT_BASE
    bench fanout --url http://127.0.0.1:$PORT_BASE --pid $SPID --members $n --senders 4 \
      --duration 3 --label "fanout, memory store" > $OUT/sweep-fanout-$n.json
    stop $SPID
  done
  "$BIN/chat-bench" chart $OUT/sweep-fanout-*.json --out docs/bench/fanout-room-size.svg \
    --x members --title "fanout, 4 senders, memory store (2 cores shared with the bench)" ;;
flood)    # a room of 10 (2 senders x 50/s) alone, then beside one client flooding as fast as it can;
          # the server runs with its default limits (they are what is measured)
  for r in $(seq "$RUNS"); do
    start $PORT_BASE WS_RATE_PER_SEC=200 WS_RATE_BURST=400 WS_JOIN_RATE_PER_SEC=2 WS_JOIN_BURST=10 \
      ROOM_CREATE_BURST=1000 MAX_CONNECTIONS_PER_ADDRESS=64
    bench flood --url http://127.0.0.1:$PORT_BASE --pid $SPID --duration 10 \
      --label "flood run $r" > $OUT/target-flood-run$r.json
    stop $SPID
  done ;;
soak)     # clients join, chat, leave or drop for 3 minutes; RSS and descriptors after vs. before
          # (history capped at 100 per room so stored messages do not count as growth)
  for r in $(seq "$RUNS"); do
    start $PORT_BASE WS_RATE_PER_SEC=200 WS_RATE_BURST=400 WS_JOIN_RATE_PER_SEC=2 WS_JOIN_BURST=10 \
      MAX_CONNECTIONS_PER_ADDRESS=64 MEMORY_HISTORY_LIMIT=100
    bench soak --url http://127.0.0.1:$PORT_BASE --pid $SPID --duration ${SOAK_SECS:-180} --warmup 20 \
      --label "soak run $r" > $OUT/target-soak-run$r.json
    stop $SPID
  done ;;
*) echo "unknown section $s" >&2; exit 2 ;;
esac; done
