// pm2, the event archive `chat-events` next to a cluster: one process that
// stores the servers' domain events (RabbitMQ exchange chat.events) in the
// MySQL table chatEvent.
//
//   cargo build --release
//   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//   MYSQL_URL=mysql://chat@127.0.0.1:3306/chat \
//     pm2 start pm2/ecosystem.events.config.js
//
// One process is enough and keeps the archive's arrival order (chatEvent.id)
// in delivery order; a second one on the same queue would share the load
// (each event still stored once, by its id) but interleave that order. A
// consumer of another kind (a search index...) gets a queue of its own, see
// README, "Event archive".
//
// Environment: CHAT_EVENTS_BIN (target/release/chat-events),
// CHAT_EVENTS_APP_NAME (chat-events), AMQP_URL and MYSQL_URL (required),
// and the EVENTS_* variables, STORE_TIMEOUT_MS, RUST_LOG and LOG_FORMAT of
// the README, passed through.
const path = require('path');

const root = path.resolve(__dirname, '..');
const env = process.env;

if (!env.AMQP_URL || !env.MYSQL_URL) {
  throw new Error('chat-events needs AMQP_URL and MYSQL_URL in the environment');
}

const passThrough = Object.fromEntries(
  Object.entries(env).filter(([k]) =>
    /^(AMQP_URL|MYSQL_URL|EVENTS_|STORE_TIMEOUT_MS$|RUST_LOG$|LOG_FORMAT$)/.test(k),
  ),
);

module.exports = {
  apps: [
    {
      name: env.CHAT_EVENTS_APP_NAME || 'chat-events',
      script: env.CHAT_EVENTS_BIN || path.join(root, 'target/release/chat-events'),
      interpreter: 'none',
      exec_mode: 'fork',
      instances: 1,
      cwd: root,
      autorestart: true,
      // SIGTERM stores the batch in flight (one MySQL attempt, at most
      // STORE_TIMEOUT_MS, 5 s by default) and closes the connection.
      kill_timeout: 10000,
      // 2: a setting it cannot use; 1: a refusal at start-up that waiting
      // cannot fix (credentials, a queue declared with other arguments).
      // Restarting cannot help either; outages are waited for inside.
      stop_exit_codes: [1, 2],
      env: {
        RUST_LOG: 'info',
        ...passThrough,
      },
    },
  ],
};
