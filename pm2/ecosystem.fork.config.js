// pm2, fork mode: one chat-server process.
//
//   cargo build --release
//   pm2 start pm2/ecosystem.fork.config.js
//
// Configuration comes from the environment of `pm2 start` (MYSQL_URL,
// REDIS_URL, PORT, ... as in the README); CHAT_BIN overrides the binary.
const path = require('path');

const root = path.resolve(__dirname, '..');
const env = process.env;

module.exports = {
  apps: [
    {
      name: env.CHAT_APP_NAME || 'chat',
      script: env.CHAT_BIN || path.join(root, 'target/release/chat-server'),
      // A native binary: pm2 must exec it directly, not through node.
      interpreter: 'none',
      exec_mode: 'fork',
      instances: 1,
      cwd: root,
      autorestart: true,
      // SIGTERM starts a clean shutdown (members removed, sockets closed
      // with 1001) that takes at most ~5 s; give it that before SIGKILL.
      kill_timeout: 8000,
      // Exit code 3: the start was refused because another live process is
      // in the way (README, Operate); restarting cannot help.
      stop_exit_codes: [3],
      env: {
        PORT: env.PORT || '3000',
        HOST: env.HOST || '127.0.0.1',
        INSTANCE_ID: env.INSTANCE_ID || 'chat-0',
        MYSQL_URL: env.MYSQL_URL || '',
        REDIS_URL: env.REDIS_URL || '',
        RUST_LOG: env.RUST_LOG || 'info',
        LOG_FORMAT: env.LOG_FORMAT || 'text',
      },
    },
  ],
};
