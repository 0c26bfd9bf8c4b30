// pm2, "cluster" of N chat-server processes behind nginx.
//
//   cargo build --release
//   MYSQL_URL=mysql://chat@127.0.0.1:3306/chat REDIS_URL=redis://127.0.0.1:6379 \
//     pm2 start pm2/ecosystem.cluster.config.js
//
// pm2's own cluster mode (exec_mode: 'cluster') shares one port through
// Node's cluster module, which does not exist for a native binary. So each
// instance is its own pm2 app in fork mode with its own port
// (CHAT_BASE_PORT + i) and a stable INSTANCE_ID; nginx balances over the
// ports (nginx/chat.conf), and the processes share MySQL and Redis. Stable
// ids matter: a restarted instance clears the memberships of its previous
// life at start-up, and `pm2 restart chat-1` restarts exactly one.
//
// Environment: CHAT_INSTANCES (default 3), CHAT_BASE_PORT (3001),
// CHAT_BIN (target/release/chat-server), MYSQL_URL and REDIS_URL
// (required), and any variable of the README, passed through.
const path = require('path');

const root = path.resolve(__dirname, '..');
const env = process.env;
const count = Number(env.CHAT_INSTANCES || 3);
const basePort = Number(env.CHAT_BASE_PORT || 3001);
const prefix = env.CHAT_APP_NAME || 'chat';

if (!env.MYSQL_URL || !env.REDIS_URL) {
  throw new Error('cluster mode needs MYSQL_URL and REDIS_URL in the environment');
}

const passThrough = Object.fromEntries(
  Object.entries(env).filter(([k]) =>
    /^(MYSQL_URL|REDIS_URL|REDIS_PREFIX|RUST_LOG|LOG_FORMAT|EMPTY_ROOM_GRACE_SECS|MAX_|HISTORY_ON_JOIN|MESSAGES_PAGE_MAX|HEARTBEAT_INTERVAL_SECS|CLIENT_TIMEOUT_SECS|WS_RATE_|ROOM_CREATE_|TRUST_FORWARDED_FOR|SESSION_QUEUE_CAPACITY|STORE_TIMEOUT_MS|WORKERS|ROOM_THREADS|LIVENESS_|REAP_INTERVAL_MS|GAP_TIMEOUT_MS|STATIC_DIR|TEMPLATES_DIR)/.test(k),
  ),
);

module.exports = {
  apps: Array.from({ length: count }, (_, i) => ({
    name: `${prefix}-${i}`,
    script: env.CHAT_BIN || path.join(root, 'target/release/chat-server'),
    interpreter: 'none',
    exec_mode: 'fork',
    instances: 1,
    cwd: root,
    autorestart: true,
    kill_timeout: 8000,
    // Exit code 3: the start was refused because another live process is
    // in the way (README, Operate); restarting cannot help.
    stop_exit_codes: [3],
    env: {
      RUST_LOG: 'info',
      // Behind nginx every client arrives from 127.0.0.1: rate limits key
      // on the X-Forwarded-For address nginx sets instead.
      TRUST_FORWARDED_FOR: 'true',
      ...passThrough,
      HOST: '127.0.0.1',
      PORT: String(basePort + i),
      INSTANCE_ID: `${prefix}-${i}`,
    },
  })),
};
