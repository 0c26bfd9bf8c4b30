#!/usr/bin/env bash
# Reproduces every figure in docs/PERFORMANCE.md.
#   bash scripts/bench.sh                 # all sections, 2 runs each (about 10-15 min)
#   bash scripts/bench.sh fanout latency  # only some sections
# Sections: fanout latency idle mysql cluster sweep flood soak scale
#   (scale is not in the default list: it needs ulimit -n >= 16,512 and takes up to ~35 min;
#    run it alone: bash scripts/bench.sh scale)
# Env: BIN (default target/release; built if missing), RUNS (default 2),
#      MYSQL (default mysql://root@127.0.0.1:3306), REDIS_URL (default redis://127.0.0.1:6379),
#      PORT_BASE (default 38100), OUT (default docs/bench/results). Writes docs/bench/results/*.json and docs/bench/*.svg.
#      scale: SCALE_RATE (default 10000 msgs/s in all), SCALE_ROOMS (default 100,500,1000,2000,4000),
#      SCALE_SIZES (default 2,4,16), SCALE_SOCKETS (default 4000), SCALE_IDLE (default 15000),
#      SCALE_DURATION (default 10 s per step), SCALE_TIMEOUT (default 900 s per chat-bench run),
#      CHARTS (default docs/bench: where scale.svg and scale-room-size.svg go),
#      SCALE_BASELINE (a directory holding another chat-server build, e.g. of an earlier commit:
#      its default setting is measured in the same run, as "baseline", sweep and idle comparison),
#      SCALE_IDLE=0 skips the idle comparison.
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

# start PORT [ENV=VAL...] -> sets SPID (the server binary is $SERVER, default $BIN/chat-server)
start() {
  local port=$1; shift
  env PORT=$port "$@" "${SERVER:-$BIN/chat-server}" >/tmp/chat-server-$port.log 2>&1 &
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
scale)    # issue 12: how p50, p99 and server CPU per delivery grow with the number of sockets, at a fixed
          # total rate (SCALE_RATE msgs/s, one sender per room). One run of the sweep per server setting,
          # each on a fresh server: rooms of 4 from 100 to 4,000 (400 to 16,000 sockets), then rooms of
          # 2, 4 and 16 at 4,000 sockets; every step opens its sockets, warms up 2 s, measures
          # SCALE_DURATION s, and closes them. Settings: default, then HEARTBEAT_INTERVAL_SECS=600 (with
          # CLIENT_TIMEOUT_SECS=1800, which must exceed it): no heartbeat tick in any measured window.
          # Then `idle`: a room of 10 (2 senders x 50/s) alone, then beside SCALE_IDLE idle joined sockets.
          # Each chat-bench run is cut at SCALE_TIMEOUT s, so the section ends within about
          # 3 x SCALE_TIMEOUT. Both processes need a descriptor per socket: ulimit -n is checked first.
  rooms=${SCALE_ROOMS:-100,500,1000,2000,4000}; sizes=${SCALE_SIZES:-2,4,16}
  sockets=${SCALE_SOCKETS:-4000}; idle=${SCALE_IDLE:-15000}; tmo=${SCALE_TIMEOUT:-900}
  most=$(( $(tr , '\n' <<<"$rooms" | sort -n | tail -1) * 4 ))
  [ "$most" -lt "$sockets" ] && most=$sockets
  [ "$most" -lt $((idle + 10)) ] && most=$((idle + 10))
  need=$((most + 512))   # + the server's 256 reserved descriptors and the bench's spares
  hard=$(ulimit -Hn)
  if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
    echo "scale: $most sockets need ulimit -n >= $need in both processes, but the hard limit is $hard;" \
      "raise it (limits.conf, systemd LimitNOFILE, docker --ulimit nofile) or lower SCALE_ROOMS/SCALE_IDLE" >&2
    exit 2
  fi
  ( ulimit -n "$need"
    trap 'kill ${SPID:-} 2>/dev/null || true' EXIT
    settings="default heartbeat-600"
    if [ -n "${SCALE_BASELINE:-}" ]; then
      [ -x "$SCALE_BASELINE/chat-server" ] || { echo "scale: no $SCALE_BASELINE/chat-server" >&2; exit 2; }
      settings="$settings baseline"
    fi
    # start_setting SETTING: a fresh server of that setting on PORT_BASE
    start_setting() {
      case $1 in
        default) start $PORT_BASE ;;
        baseline) SERVER=$SCALE_BASELINE/chat-server start $PORT_BASE ;;
        *) start $PORT_BASE HEARTBEAT_INTERVAL_SECS=600 CLIENT_TIMEOUT_SECS=1800 ;;
      esac
    }
    for setting in $settings; do
      start_setting "$setting"
      bench scale --url http://127.0.0.1:$PORT_BASE --pid $SPID --rate "${SCALE_RATE:-10000}" \
        --rooms "$rooms" --sizes "$sizes" --sockets "$sockets" --warmup 2 --duration "${SCALE_DURATION:-10}" \
        --drain 10 --timeout "$tmo" --label "$setting" > $OUT/scale-$setting.json
      stop $SPID
    done
    sweeps=$(for setting in $settings; do echo "$OUT/scale-$setting.json"; done)
    # shellcheck disable=SC2086
    "$BIN/chat-bench" chart $sweeps --out "${CHARTS:-docs/bench}/scale.svg" \
      --title "rooms of 4, ${SCALE_RATE:-10000} msgs/s in all, memory store (2 cores shared with the bench)"
    # shellcheck disable=SC2086
    "$BIN/chat-bench" chart $sweeps --x room_size \
      --out "${CHARTS:-docs/bench}/scale-room-size.svg" \
      --title "$sockets sockets, ${SCALE_RATE:-10000} msgs/s in all, memory store"
    if [ "$idle" != 0 ]; then
      # The idle comparison for each build at its default settings.
      for setting in ${settings/heartbeat-600/}; do
        start_setting "$setting"
        suffix=${setting/#default/}; suffix=${suffix:+-$suffix}
        bench idle --url http://127.0.0.1:$PORT_BASE --pid $SPID --conns "$idle" --room-size 10 \
          --chat-members 10 --chat-senders 2 --chat-rate 50 --warmup 2 --duration 10 --timeout "$tmo" \
          --label "idle-$idle beside a chatting room ($setting)" > $OUT/scale-idle-$idle$suffix.json
        stop $SPID
      done
    fi )
  for f in $OUT/scale-default.json $OUT/scale-heartbeat-600.json ${SCALE_BASELINE:+$OUT/scale-baseline.json}; do
    jq -r '.label as $l | .steps[] | [$l, .sockets, .rooms, .room_size, .deliveries_per_sec,
      .latency_ms.p50, .latency_ms.p90, .latency_ms.p99, .latency_ms.max, .server_cpu_us_per_delivery,
      .lost, .duplicates, .errors] | @tsv' "$f" 2>/dev/null || true
  done
  for f in $OUT/scale-idle-$idle.json ${SCALE_BASELINE:+$OUT/scale-idle-$idle-baseline.json}; do
    jq -r '"\(.label): chatting room p99 alone \(.chat.alone_latency_ms.p99) ms, beside idle sockets \(.chat.beside_idle_latency_ms.p99) ms, ratio \(.chat.p99_ratio)"' \
      "$f" 2>/dev/null || true
  done ;;
*) echo "unknown section $s" >&2; exit 2 ;;
esac; done
