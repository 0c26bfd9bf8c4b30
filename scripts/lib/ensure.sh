# Helpers for scripts/test.sh: make sure each service or tool the suite
# needs is present and running, installing it with the system's package
# manager when we are root and it is missing. Each function is idempotent.

log() { printf '\033[1m[test]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[test] %s\033[0m\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root to run: $*"
  fi
}

APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
  if [ -z "$APT_UPDATED" ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Waits up to $2 seconds for command $1 (a string) to succeed.
wait_for() {
  local cmd=$1 secs=${2:-30} i=0
  while ! eval "$cmd" >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -ge $((secs * 4)) ] && return 1
    sleep 0.25
  done
}

# MariaDB on 127.0.0.1:3306. Exports TEST_MYSQL_URL (no database name) for
# a user that may create and drop databases.
ensure_mariadb() {
  if [ -n "${TEST_MYSQL_URL:-}" ]; then log "using TEST_MYSQL_URL=$TEST_MYSQL_URL"; return; fi
  if ! command -v mariadb >/dev/null 2>&1 && ! command -v mysql >/dev/null 2>&1; then
    apt_install mariadb-server mariadb-client
  fi
  local client; client=$(command -v mariadb || command -v mysql)
  if ! "$client" -h127.0.0.1 -P3306 -uroot -e 'select 1' >/dev/null 2>&1 \
     && ! "$client" -h127.0.0.1 -P3306 -uchat_test -pchat_test -e 'select 1' >/dev/null 2>&1; then
    if ! as_root "$client" -e 'select 1' >/dev/null 2>&1; then
      log "starting MariaDB"
      as_root mkdir -p /run/mysqld
      as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
      as_root service mariadb start >/dev/null 2>&1 \
        || as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd \
        || die "could not start MariaDB"
      wait_for "as_root $client -e 'select 1'" 60 || die "MariaDB did not come up"
    fi
  fi
  if "$client" -h127.0.0.1 -P3306 -uroot -e 'select 1' >/dev/null 2>&1; then
    export TEST_MYSQL_URL="mysql://root@127.0.0.1:3306"
  else
    # Debian's root logs in over the socket only; make a TCP test user.
    # GRANT OPTION: tests/startup creates a least-privilege user.
    as_root "$client" -e "CREATE USER IF NOT EXISTS 'chat_test'@'127.0.0.1' IDENTIFIED BY 'chat_test';
      CREATE USER IF NOT EXISTS 'chat_test'@'localhost' IDENTIFIED BY 'chat_test';
      GRANT ALL PRIVILEGES ON *.* TO 'chat_test'@'127.0.0.1' WITH GRANT OPTION;
      GRANT ALL PRIVILEGES ON *.* TO 'chat_test'@'localhost' WITH GRANT OPTION;" \
      || die "could not create the chat_test MariaDB user"
    export TEST_MYSQL_URL="mysql://chat_test:chat_test@127.0.0.1:3306"
  fi
  log "MariaDB ready: $TEST_MYSQL_URL"
}

# Runs SQL against TEST_MYSQL_URL's server.
mysql_exec() {
  local client; client=$(command -v mariadb || command -v mysql)
  local rest=${TEST_MYSQL_URL#mysql://} creds host user pass=""
  creds=${rest%@*}; host=${rest#*@}; user=${creds%%:*}
  [ "$creds" != "$user" ] && pass=${creds#*:}
  "$client" -h"${host%%:*}" -P"${host##*:}" -u"$user" ${pass:+-p"$pass"} -e "$1"
}

# Debian's Chromium for the browser test (never a downloaded browser).
ensure_chromium() {
  [ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || apt_install chromium chromium-driver fonts-noto-color-emoji
  export CHROMIUM_PATH="${CHROMIUM_PATH:-/usr/bin/chromium}"
}

# Node.js and npm, and the browser test's packages.
ensure_node_deps() {
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  if [ ! -d tests/browser/node_modules/playwright-core ]; then
    log "npm ci in tests/browser"
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# Redis on 127.0.0.1:6379 (the cluster tests also start private
# redis-server processes, replicas and Sentinels as `redis-server <conf>
# --sentinel`, so the binary must exist; no separate redis-sentinel is
# needed). Exports TEST_REDIS_URL.
ensure_redis() {
  if [ -n "${TEST_REDIS_URL:-}" ]; then log "using TEST_REDIS_URL=$TEST_REDIS_URL"; return; fi
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      || die "could not start Redis"
    wait_for "redis-cli -h 127.0.0.1 -p 6379 ping" 20 || die "Redis did not come up"
  fi
  export TEST_REDIS_URL="redis://127.0.0.1:6379"
  log "Redis ready: $TEST_REDIS_URL"
}

# RabbitMQ on 127.0.0.1:5672 (guest/guest), which the domain-event tests
# publish to and consume from; each test makes its own vhost with
# rabbitmqctl, so that must work too.
ensure_rabbitmq() {
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  if ! rabbitmqctl -q status >/dev/null 2>&1; then
    log "starting RabbitMQ"
    as_root rabbitmq-server -detached || die "could not start RabbitMQ"
    wait_for "rabbitmqctl -q await_startup" 120 || die "RabbitMQ did not come up"
  fi
  wait_for "(exec 3<>/dev/tcp/127.0.0.1/5672)" 60 || die "RabbitMQ does not listen on 5672"
  log "RabbitMQ ready: amqp://127.0.0.1:5672"
}

# nginx and pm2, which the operations test runs for real.
ensure_nginx_pm2() {
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || apt_install nginx
  export PATH="$PATH:/usr/sbin"
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  if ! command -v pm2 >/dev/null 2>&1; then
    log "npm install -g pm2"
    as_root npm install -g pm2 --no-audit --no-fund --loglevel=error >/dev/null \
      || die "could not install pm2"
  fi
}

# Prometheus, which tests/startup/prometheus.rs runs for real (it starts its
# own instance on a free port; the package's system service is not used).
ensure_prometheus() {
  command -v prometheus >/dev/null 2>&1 || apt_install prometheus
  command -v prometheus >/dev/null 2>&1 || die "prometheus not found after installing it"
}
