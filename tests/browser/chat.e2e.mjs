#!/usr/bin/env node
// End-to-end test of the browser chat page (/chat) in real headless Chromium.
//
// It starts the server binary itself on a free port, drives several browser
// contexts (separate users) through the page, and checks what a person
// would see: rooms, members, messages, errors, a phone-sized layout, and a
// reconnect that catches up on missed messages exactly once. The page runs
// under the server's Content-Security-Policy and any violation fails the
// test; a page of another origin (a small server of the test's own, on
// 127.0.0.2) must not be able to open the chat's socket. Three independent
// steps at the end check a flood (600 messages at 190/s: rendered in time,
// a bounded list, no long main-thread tasks), a server restart in memory
// mode where an attacker's new room gets the old room's id (the page must
// go back to the lobby), and the paged room list. It also saves two
// screenshots to docs/.
//
//   cargo build && (cd tests/browser && npm install && node chat.e2e.mjs)
//
// Environment:
//   CHAT_SERVER_BIN         server binary (default target/debug/chat-server,
//                           relative to the repository root)
//   CHROMIUM_PATH           browser executable (default /usr/bin/chromium)
//   BROWSER_TEST_MYSQL_URL  when set, passed to the server as MYSQL_URL
//                           (the caller creates and drops that database)
//   BROWSER_TEST_TIMEOUT_MS global time limit (default 180000)
//   BROWSER_TEST_SCREENSHOTS=0  skip writing docs/screenshot-*.png
//   BROWSER_TEST_STATIC_DIR the server's STATIC_DIR (default static/), e.g.
//                           a copy holding an older chat.js to check that
//                           a step fails without a fix
//   BROWSER_TEST_ONLY       a regular expression: of the independent steps
//                           at the end (flood, restart, room pages), run
//                           only those whose name matches
//   BROWSER_TEST_MAX_BLOCK_MS  longest main-thread task allowed during the
//                           flood step (default 200)

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..');
const serverBin = path.resolve(repoRoot, process.env.CHAT_SERVER_BIN || 'target/debug/chat-server');
const chromiumPath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const globalTimeoutMs = Number(process.env.BROWSER_TEST_TIMEOUT_MS) || 180_000;
const writeScreenshots = process.env.BROWSER_TEST_SCREENSHOTS !== '0';
const docsDir = path.join(repoRoot, 'docs');

const HOSTILE_NICK = '<img src=x onerror=window.__xss=1>';
const HOSTILE_MSG = '<img src=x onerror=window.__xss=1><script>window.__xss=2</script>';
const ROOM = 'Weekend hike ⛰️';

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

// ------------------------------------------------------------- plumbing --

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class AssertionError extends Error {}

function assert(cond, message) {
  if (!cond) throw new AssertionError(message);
}

function assertEqual(actual, expected, what) {
  if (actual !== expected) {
    throw new AssertionError(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}

/** Polls `probe` until it returns a truthy value; fails with `what` and the
 * last value or error seen. */
async function eventually(what, probe, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e instanceof Error ? e.message : e;
    }
    if (Date.now() > deadline) {
      throw new AssertionError(`timed out after ${timeoutMs} ms waiting until ${what} (last: ${JSON.stringify(last)})`);
    }
    await sleep(100);
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

let server = null;
let serverExit = null;
const serverLog = [];
/** Servers started by single steps (see spawnServer). */
const extraServers = new Set();
const staticDir = path.resolve(repoRoot, process.env.BROWSER_TEST_STATIC_DIR || 'static');
const onlyRe = process.env.BROWSER_TEST_ONLY ? new RegExp(process.env.BROWSER_TEST_ONLY) : null;
const maxBlockMs = Number(process.env.BROWSER_TEST_MAX_BLOCK_MS) || 200;
let browser = null;
const users = [];
const pageErrors = [];
const cspViolations = [];
const injectedRequests = [];
let passed = 0;
let currentStep = '(start-up)';

function keepLog(chunk) {
  for (const line of chunk.toString().split('\n')) {
    if (!line) continue;
    serverLog.push(line);
    if (serverLog.length > 200) serverLog.shift();
  }
}

async function startServer() {
  const s = await spawnServer({ memory: !process.env.BROWSER_TEST_MYSQL_URL });
  server = s.proc;
  serverExit = s.exit;
  extraServers.delete(s);
  return s.base;
}

/** Starts a server process and waits for /health. `memory`: without MySQL
 * (ids start at 1 again after a restart); `port`: a given port (to restart
 * a server where its clients expect it). Resolves to { proc, exit, base, stop }. */
async function spawnServer({ memory = false, port = 0, label = 'server' } = {}) {
  if (!fs.existsSync(serverBin)) {
    throw new AssertionError(`server binary not found at ${serverBin} (run \`cargo build\`, or set CHAT_SERVER_BIN)`);
  }
  if (!port) port = await freePort();
  const env = { ...process.env };
  delete env.MYSQL_URL;
  delete env.REDIS_URL;
  Object.assign(env, {
    PORT: String(port),
    HOST: '127.0.0.1',
    STATIC_DIR: staticDir,
    TEMPLATES_DIR: path.join(repoRoot, 'templates'),
    RUST_LOG: process.env.RUST_LOG || 'info',
  });
  if (!memory) env.MYSQL_URL = process.env.BROWSER_TEST_MYSQL_URL;
  const proc = spawn(serverBin, [], { cwd: repoRoot, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const log = label === 'server' ? keepLog : (chunk) => keepLog(chunk.toString().split('\n').filter(Boolean).map((l) => `[${label}] ${l}`).join('\n'));
  proc.stdout.on('data', log);
  proc.stderr.on('data', log);
  const exit = once(proc, 'exit');
  proc.on('exit', (code, signal) => log(`[server exited: code ${code}, signal ${signal}]`));
  const handle = {
    proc,
    exit,
    base: `http://127.0.0.1:${port}`,
    port,
    async stop() {
      extraServers.delete(handle);
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const exited = await Promise.race([exit.then(() => true), sleep(5000).then(() => false)]);
      if (!exited) {
        proc.kill('SIGKILL');
        await Promise.race([exit, sleep(2000)]);
      }
    },
  };
  extraServers.add(handle);

  const base = handle.base;
  const server = proc;
  const deadline = Date.now() + 30_000;
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (server.exitCode !== null || server.signalCode !== null) {
      throw new AssertionError(`server exited during start-up (${server.exitCode ?? server.signalCode})`);
    }
    try {
      const res = await fetch(`${base}/health`, { signal: AbortSignal.timeout(2000) });
      if (res.status === 200) return handle;
      last = `HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`;
    } catch (e) {
      last = e.message;
    }
    await sleep(200);
  }
  throw new AssertionError(`GET /health did not answer 200 within 30 s (last: ${last})`);
}

async function stopServer() {
  if (!server || server.exitCode !== null || server.signalCode !== null) return;
  server.kill('SIGTERM');
  const exited = await Promise.race([serverExit.then(() => true), sleep(5000).then(() => false)]);
  if (!exited) {
    server.kill('SIGKILL');
    await Promise.race([serverExit, sleep(2000)]);
  }
}

let cleaning = null;
function cleanup() {
  if (!cleaning) {
    cleaning = (async () => {
      if (browser) await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
      for (const s of [...extraServers]) await s.stop();
      await stopServer();
    })();
  }
  return cleaning;
}

process.on('exit', () => {
  // Last resort: never leave the server behind.
  for (const p of [server, ...[...extraServers].map((s) => s.proc)]) {
    if (p && p.exitCode === null && p.signalCode === null) {
      try { p.kill('SIGKILL'); } catch (_) { /* gone */ }
    }
  }
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, async () => {
    console.error(`\ninterrupted by ${sig}`);
    await cleanup();
    process.exit(130);
  });
}

let failing = false;
async function fail(err) {
  if (failing) return; // a step interrupted by the first failure
  failing = true;
  // Whatever happens below, do not hang: the exit handler kills the server.
  setTimeout(() => process.exit(1), 20_000).unref();
  const msg = err instanceof AssertionError ? err.message : (err && err.stack) || String(err);
  console.error(`\n✗ FAILED in step "${currentStep}":\n  ${msg}`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-e2e-'));
  for (const u of users) {
    try {
      const file = path.join(dir, `${u.name}.png`);
      await Promise.race([u.page.screenshot({ path: file }), sleep(3000)]);
      console.error(`  screenshot of ${u.name}'s page: ${file}`);
    } catch (_) { /* page gone */ }
  }
  if (pageErrors.length) console.error(`  page errors:\n    ${pageErrors.join('\n    ')}`);
  if (serverLog.length) console.error(`  last server log lines:\n    ${serverLog.slice(-30).join('\n    ')}`);
  await cleanup();
  console.error(`\nbrowser e2e: ${passed} passed, 1 failed`);
  process.exit(1);
}

const globalTimer = setTimeout(() => {
  fail(new AssertionError(`global timeout: the test took longer than ${globalTimeoutMs / 1000} s`));
}, globalTimeoutMs);

async function step(name, fn) {
  currentStep = name;
  const t0 = Date.now();
  await fn();
  passed += 1;
  console.log(`  ✓ ${name} (${Date.now() - t0} ms)`);
}

// ------------------------------------------------------- browser helpers --

// Runs in every page before its scripts: wraps WebSocket so the test can
// cut a page's connection and keep it from reconnecting for a while, and
// hold back the server's frames for a moment and put one before them,
// without touching the application code; and reports every Content
// Security Policy violation (as a console error the test collects).
function installSocketHook() {
  window.addEventListener('securitypolicyviolation', (e) => {
    console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || '(inline)'}`);
  }, true);
  const Native = window.WebSocket;
  const sockets = [];
  let blocked = false;
  let holding = false;
  const held = [];
  let lastChatRef = null;
  class HookedWebSocket extends Native {
    constructor(url, protocols) {
      // A blocked socket asks the page's own server for a path that is not
      // /ws (refused with 404): it fails without leaving the page's origin,
      // which the page's connect-src 'self' would not allow.
      const refused = `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/blocked-by-test`;
      super(blocked ? refused : url, protocols);
      sockets.push(this);
      // Registered before the page's own listener, so it can hold a frame
      // back from it.
      this.addEventListener('message', (e) => {
        if (holding) {
          e.stopImmediatePropagation();
          held.push([this, e.data]);
        }
      });
    }

    send(data) {
      try {
        const f = JSON.parse(data);
        if (f && f.type === 'chat') lastChatRef = f.ref;
      } catch (_) { /* not JSON: not ours to read */ }
      return super.send(data);
    }
  }
  window.WebSocket = HookedWebSocket;
  Object.defineProperty(window, '__chatTest', {
    value: Object.freeze({
      cut() {
        blocked = true;
        for (const s of sockets) if (s.readyState <= 1) s.close();
      },
      restore() { blocked = false; },
      openSockets() { return sockets.filter((s) => s.readyState === 1).length; },
      /** Holds back every frame the server sends until `release`. */
      hold() { holding = true; },
      release() {
        holding = false;
        for (const [s, data] of held.splice(0)) s.dispatchEvent(new MessageEvent('message', { data }));
      },
      /** Hands the page, on its open socket, a frame for its last chat:
       * `fields` plus that chat's `ref`. */
      answerLastChat(fields) {
        const s = sockets.find((x) => x.readyState === 1);
        const data = JSON.stringify(Object.assign({}, fields, { ref: lastChatRef }));
        // Past the hold: dispatching is synchronous.
        const was = holding;
        holding = false;
        s.dispatchEvent(new MessageEvent('message', { data }));
        holding = was;
        return lastChatRef;
      },
    }),
  });
}

async function newUser(name, base, options = {}) {
  const context = await browser.newContext({
    viewport: options.viewport || DESKTOP,
    deviceScaleFactor: options.deviceScaleFactor || 1,
    isMobile: Boolean(options.isMobile),
    hasTouch: Boolean(options.isMobile),
    locale: 'en-US',
    timezoneId: 'Europe/Berlin',
    colorScheme: 'light',
  });
  await context.addInitScript(installSocketHook);
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  page.on('console', (m) => {
    // Our own report (above) and Chromium's "Refused to ... Content Security Policy".
    if (m.type() === 'error' && /CSP violation|Content Security Policy/i.test(m.text())) {
      cspViolations.push(`${name}: ${m.text()}`);
    }
  });
  page.on('dialog', (d) => {
    pageErrors.push(`${name}: unexpected dialog "${d.message()}"`);
    d.dismiss().catch(() => {});
  });
  page.on('request', (r) => {
    // The hostile strings reference an image "x": fetching it would mean
    // the page turned user text into HTML.
    const p = new URL(r.url()).pathname;
    if (p === '/x' || p.endsWith('/x')) injectedRequests.push(`${name}: ${r.url()}`);
  });
  const user = { name, context, page };
  users.push(user);
  if (options.beforeGoto) await options.beforeGoto(page);
  const res = await page.goto(`${base}/chat`);
  assertEqual(res.status(), 200, `${name}: GET /chat status`);
  await eventually(`${name}'s page is connected`,
    async () => (await page.getByTestId('conn-status').getAttribute('data-state')) === 'online');
  return user;
}

const tid = (page, id) => page.getByTestId(id);

async function memberNames(page) {
  return page.getByTestId('member-list').getByTestId('member-name').allTextContents();
}

async function messageContents(page) {
  return page.getByTestId('message-list').getByTestId('message-content').allTextContents();
}

async function messageIds(page) {
  return page.$$eval('[data-testid="message-list"] > [data-testid="message"]',
    (els) => els.map((e) => Number(e.dataset.id)));
}

async function sendMessage(page, text) {
  const input = tid(page, 'message-input');
  await input.fill(text);
  await input.press('Enter');
  await eventually(`the composer clears after sending ${JSON.stringify(text.slice(0, 30))}`,
    async () => (await input.inputValue()) === '');
}

async function waitForMessage(user, text) {
  await eventually(`${user.name} sees the message ${JSON.stringify(text.slice(0, 40))}`,
    async () => (await messageContents(user.page)).includes(text));
}

async function joinFromList(user, roomTitle, nickname) {
  const item = tid(user.page, 'room-item').filter({ hasText: roomTitle });
  await item.waitFor({ state: 'visible' });
  await tid(user.page, 'nickname-input').fill(nickname);
  await item.click();
}

async function waitInRoom(user, roomTitle) {
  await tid(user.page, 'room-view').waitFor({ state: 'visible' });
  await eventually(`${user.name} shows the room title`,
    async () => (await tid(user.page, 'current-room-title').textContent()) === roomTitle);
}

/** Closes a user's browser context (a step's own user, when done). */
async function dropUser(user) {
  await user.context.close();
  users.splice(users.indexOf(user), 1);
}

/** A bare page of `base` (not the chat page) whose script is a plain
 * WebSocket client: the test's scripted sender or attacker. */
async function socketClient(base) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`socket client: ${e.message}`));
  await page.goto(`${base}/health`);
  return { context, page };
}

async function roomIdOf(page) {
  const m = /#room=(\d+)$/.exec(page.url());
  assert(m, `the page URL carries the room id (url: ${page.url()})`);
  return Number(m[1]);
}

async function xssFlag(page) {
  return page.evaluate(() => typeof window.__xss === 'undefined' ? 'undefined' : String(window.__xss));
}

/** Another web site: a page on another loopback address (another origin)
 * whose script tries to open the chat's socket, as a hostile page visited
 * by a chat user would. Resolves to { url, close }. */
async function startForeignSite(chatBase) {
  const wsUrl = `${chatBase.replace('http:', 'ws:')}/ws`;
  const html = `<!doctype html><title>elsewhere</title><script>
    window.__socketOutcome = '';
    const ws = new WebSocket(${JSON.stringify(wsUrl)});
    ws.onopen = () => { window.__socketOutcome = 'open'; };
    ws.onclose = (e) => { window.__socketOutcome ||= 'closed ' + e.code; };
  </script>`;
  const srv = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(html);
  });
  // 127.0.0.2 is another host; where it cannot be bound, another port of
  // 127.0.0.1 is still another origin.
  let host = '127.0.0.2';
  try {
    srv.listen(0, host);
    await once(srv, 'listening');
  } catch (_) {
    host = '127.0.0.1';
    srv.listen(0, host);
    await once(srv, 'listening');
  }
  return {
    url: `http://${host}:${srv.address().port}/`,
    close: () => new Promise((resolve) => srv.close(resolve)),
  };
}

// ------------------------------------------------------------------ test --

async function main() {
  console.log(`browser e2e: server ${path.relative(repoRoot, serverBin) || serverBin}, chromium ${chromiumPath}`);
  const base = await startServer();
  console.log(`  server is up at ${base}`);

  await step('GET /health reports the expected store', async () => {
    const health = await (await fetch(`${base}/health`)).json();
    const want = process.env.BROWSER_TEST_MYSQL_URL ? 'mysql' : 'memory';
    assertEqual(health.store, want, 'GET /health store');
    assertEqual(health.status, 'ok', 'GET /health status');
  });

  await step('GET /chat renders the page with the limits and assets', async () => {
    const res = await fetch(`${base}/chat`);
    assertEqual(res.status, 200, 'GET /chat status');
    assert((res.headers.get('content-type') || '').includes('text/html'), 'GET /chat is HTML');
    const html = await res.text();
    for (const needle of ['name="viewport"', '/static/chat.css', '/static/chat.js',
      'data-max-title="50"', 'data-max-nickname="50"', 'data-max-content="1000"']) {
      assert(html.includes(needle), `the page contains ${needle}`);
    }
    for (const asset of ['/static/chat.js', '/static/chat.css', '/static/favicon.svg']) {
      const r = await fetch(`${base}${asset}`);
      assertEqual(r.status, 200, `GET ${asset} status`);
    }
  });

  await step('the page and its files come with a strict security policy', async () => {
    for (const p of ['/chat', '/static/chat.js']) {
      const h = (await fetch(`${base}${p}`)).headers;
      const csp = h.get('content-security-policy') || '';
      for (const d of ["script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]) {
        assert(csp.includes(d), `${p}: the CSP has ${d} (got ${JSON.stringify(csp)})`);
      }
      assert(!csp.includes('unsafe'), `${p}: the CSP allows nothing unsafe (got ${JSON.stringify(csp)})`);
      assertEqual(h.get('x-frame-options'), 'DENY', `${p}: X-Frame-Options`);
      assertEqual(h.get('x-content-type-options'), 'nosniff', `${p}: X-Content-Type-Options`);
      assertEqual(h.get('referrer-policy'), 'no-referrer', `${p}: Referrer-Policy`);
    }
  });

  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });

  const alice = await newUser('alice', base);

  await step('the page checks input before sending (empty nickname)', async () => {
    await tid(alice.page, 'room-title-input').fill(ROOM);
    await tid(alice.page, 'create-button').click();
    const err = tid(alice.page, 'nickname-error');
    await err.waitFor({ state: 'visible' });
    assertEqual(await err.getAttribute('data-code'), 'invalid_nickname', 'nickname error code');
    assert((await err.textContent()).trim().length > 0, 'the nickname error has a message');
    assert(await tid(alice.page, 'room-view').isHidden(), 'no room was entered');
  });

  await step('alice creates a room', async () => {
    await tid(alice.page, 'nickname-input').fill('alice');
    await tid(alice.page, 'create-button').click();
    await waitInRoom(alice, ROOM);
    await eventually('alice sees herself as a member',
      async () => JSON.stringify(await memberNames(alice.page)) === JSON.stringify(['alice']));
    assert(await tid(alice.page, 'nickname-error').isHidden(), 'the nickname error went away');
  });
  const roomId = await roomIdOf(alice.page);

  const bob = await newUser('bob', base);

  await step('a second user sees the room in the list and joins with a hostile nickname', async () => {
    const item = tid(bob.page, 'room-item').filter({ hasText: ROOM });
    await item.waitFor({ state: 'visible' });
    await eventually('the room list shows 1 member',
      async () => (await item.getByTestId('room-members').textContent()) === '1', 8000);
    await joinFromList(bob, ROOM, HOSTILE_NICK);
    await waitInRoom(bob, ROOM);
  });

  await step('both users see each other in the members panel', async () => {
    await eventually('alice sees the second user (as literal text)', async () => {
      const names = await memberNames(alice.page);
      return names.length === 2 && names[0] === 'alice' && names[1] === HOSTILE_NICK;
    });
    await eventually('the second user sees alice and themself', async () => {
      const names = await memberNames(bob.page);
      return names.length === 2 && names[0] === 'alice' && names[1] === HOSTILE_NICK;
    });
    assert(await tid(alice.page, 'members-panel').isVisible(), 'members panel visible on desktop');
    assertEqual(await alice.page.locator('[data-testid="member-list"] img').count(), 0, 'img elements in the member list');
  });

  await step('alice sends a message and the other user receives it', async () => {
    await sendMessage(alice.page, 'Hi there! 👋 Who is in for Saturday?');
    await waitForMessage(bob, 'Hi there! 👋 Who is in for Saturday?');
    await waitForMessage(alice, 'Hi there! 👋 Who is in for Saturday?');
    const own = alice.page.getByTestId('message').filter({ hasText: 'Who is in for Saturday' });
    assertEqual(await own.getAttribute('data-own'), 'true', 'alice\'s own message is marked as own');
    const theirs = bob.page.getByTestId('message').filter({ hasText: 'Who is in for Saturday' });
    assertEqual(await theirs.getAttribute('data-own'), 'false', 'the other user sees it as someone else\'s');
    assertEqual(await theirs.getByTestId('message-author').textContent(), 'alice', 'author shown');
    const time = await theirs.getByTestId('message-time').textContent();
    assert(/\d{1,2}:\d{2}/.test(time), `a local time is shown (got ${JSON.stringify(time)})`);
  });

  // The server sends `pending` only when MySQL left a COMMIT unanswered
  // (tests/startup/mysql_outage.rs causes that for real); here the page
  // gets that frame, exactly as the server words it, ahead of the real
  // echo, which is held back meanwhile.
  await step('a chat the database has not confirmed yet waits quietly, never as an error', async () => {
    const text = 'Is the database awake?';
    await alice.page.evaluate(() => window.__chatTest.hold());
    try {
      await sendMessage(alice.page, text);
      const ref = await alice.page.evaluate(() => window.__chatTest.answerLastChat({
        type: 'pending',
        message: 'the database has not confirmed this message yet; you will get its echo if it was stored, or an error if it was not',
      }));
      assert(typeof ref === 'string' && ref.startsWith('chat-'), `the chat's ref (got ${ref})`);
      const notice = tid(alice.page, 'room-notice');
      await eventually('the page says the message waits for the database', async () =>
        (await notice.isVisible()) && /waiting for the database/i.test(await notice.textContent()));
      assertEqual(await tid(alice.page, 'message-error').isVisible(), false, 'an error shown for pending');
      assertEqual((await messageContents(alice.page)).includes(text), false, 'shown before its echo');
    } finally {
      await alice.page.evaluate(() => window.__chatTest.release());
    }
    await waitForMessage(alice, text);
    await waitForMessage(bob, text);
    await eventually('the waiting notice goes once the echo came', async () =>
      !(await tid(alice.page, 'room-notice').isVisible()));
    assertEqual(await tid(alice.page, 'message-error').isVisible(), false, 'an error shown after the echo');
  });

  await step('Shift+Enter keeps a line break and the message is shown on two lines', async () => {
    const input = tid(alice.page, 'message-input');
    await input.click();
    await alice.page.keyboard.type('Meet at 8:00');
    await alice.page.keyboard.press('Shift+Enter');
    await alice.page.keyboard.type('bring water');
    assertEqual(await input.inputValue(), 'Meet at 8:00\nbring water', 'composer value after Shift+Enter');
    await alice.page.keyboard.press('Enter');
    await waitForMessage(bob, 'Meet at 8:00\nbring water');
    const ws = await bob.page.getByTestId('message-content').last()
      .evaluate((el) => getComputedStyle(el).whiteSpace);
    assertEqual(ws, 'pre-wrap', 'message white-space');
  });

  await step('hostile message content is shown as literal text, never as HTML', async () => {
    await sendMessage(bob.page, HOSTILE_MSG);
    await waitForMessage(alice, HOSTILE_MSG);
    await waitForMessage(bob, HOSTILE_MSG);
    await sleep(500); // give an injected <img onerror> time to fire, if there were one
    for (const u of [alice, bob]) {
      const last = u.page.getByTestId('message-content').last();
      assertEqual(await last.textContent(), HOSTILE_MSG, `${u.name}: text of the last message`);
      assertEqual(await u.page.locator('[data-testid="message-list"] img').count(), 0, `${u.name}: img elements in the message list`);
      assertEqual(await u.page.locator('[data-testid="message-list"] script').count(), 0, `${u.name}: script elements in the message list`);
      assertEqual(await xssFlag(u.page), 'undefined', `${u.name}: window.__xss`);
    }
    assertEqual(injectedRequests.length, 0, `requests for the injected image (${injectedRequests.join(', ')})`);
  });

  await step('nickname_taken is shown next to the nickname when a third user picks "alice"', async () => {
    const mallory = await newUser('mallory', base);
    await joinFromList(mallory, ROOM, 'alice');
    const err = tid(mallory.page, 'nickname-error');
    await err.waitFor({ state: 'visible' });
    assertEqual(await err.getAttribute('data-code'), 'nickname_taken', 'nickname error code');
    assert(/taken|already/i.test(await err.textContent()), 'the message says the nickname is taken');
    assert(await tid(mallory.page, 'room-view').isHidden(), 'the third user stays in the lobby');

    // From inside another room, a failed switch keeps the user where they were.
    await tid(mallory.page, 'nickname-input').fill('mallory');
    await tid(mallory.page, 'room-title-input').fill('side room');
    await tid(mallory.page, 'create-button').click();
    await waitInRoom(mallory, 'side room');
    await tid(mallory.page, 'nickname-input').fill('alice');
    await tid(mallory.page, 'room-item').filter({ hasText: ROOM }).click();
    await err.waitFor({ state: 'visible' });
    assertEqual(await err.getAttribute('data-code'), 'nickname_taken', 'nickname error code when switching');
    await sleep(300);
    assertEqual(await tid(mallory.page, 'current-room-title').textContent(), 'side room', 'still in the first room');
    await sendMessage(mallory.page, 'still here');
    await waitForMessage(mallory, 'still here');
    await mallory.context.close();
    users.splice(users.indexOf(mallory), 1);
  });

  const carol = await newUser('carol', base, { viewport: PHONE, isMobile: true, deviceScaleFactor: 2 });

  await step('phone-sized viewport (390x844): lobby, join, composer visible', async () => {
    const { page } = carol;
    assert(await tid(page, 'sidebar').isVisible(), 'the room list is shown in the lobby');
    assert(await tid(page, 'welcome').isHidden(), 'the desktop welcome panel is hidden on a phone');
    await joinFromList(carol, ROOM, 'carol');
    await waitInRoom(carol, ROOM);
    assert(await tid(page, 'sidebar').isHidden(), 'the sidebar makes room for the conversation');
    const input = tid(page, 'message-input');
    assert(await input.isVisible(), 'the message input is visible');
    const box = await input.boundingBox();
    assert(box && box.x >= 0 && box.y >= 0 && box.x + box.width <= PHONE.width + 0.5
      && box.y + box.height <= PHONE.height + 0.5, `the message input is inside the viewport (${JSON.stringify(box)})`);
    assert(box.width >= 200, `the message input is wide enough (${box.width}px)`);
    const send = await tid(page, 'send-button').boundingBox();
    assert(send && send.x + send.width <= PHONE.width + 0.5, 'the send button is inside the viewport');
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert(overflow <= 0, `no horizontal scrolling (${overflow}px too wide)`);
    await eventually('carol sees the history (4 messages)', async () => (await messageContents(page)).length === 4);

    // The members panel is a drawer here.
    await tid(page, 'members-toggle').click();
    await eventually('the members drawer slides in', async () => {
      const b = await tid(page, 'members-panel').boundingBox();
      return b && b.x >= 0 && b.x + b.width <= PHONE.width + 0.5;
    });
    await eventually('the drawer lists three members', async () => (await memberNames(page)).length === 3);
    await tid(page, 'members-close').click();
    await eventually('the drawer closes', async () => {
      const b = await tid(page, 'members-panel').boundingBox();
      return !b || b.x >= PHONE.width - 0.5;
    });

    await input.tap();
    await sendMessage(page, 'Count me in! Leaving the city at 7 🚲');
    await waitForMessage(alice, 'Count me in! Leaving the city at 7 🚲');
  });

  await step('B leaves and A sees B disappear from the members panel', async () => {
    await tid(bob.page, 'leave-button').click();
    await tid(bob.page, 'room-view').waitFor({ state: 'hidden' });
    await tid(bob.page, 'welcome').waitFor({ state: 'visible' });
    await eventually('alice no longer lists the user who left', async () => {
      const names = await memberNames(alice.page);
      return !names.includes(HOSTILE_NICK) && names.includes('alice') && names.includes('carol');
    });
  });

  if (writeScreenshots) {
    await step('phone screenshot saved', async () => {
      fs.mkdirSync(docsDir, { recursive: true });
      await carol.page.mouse.move(0, 0);
      await carol.page.screenshot({ path: path.join(docsDir, 'screenshot-phone.png') });
    });
  }

  const missed = 'Did you catch this while you were offline?';

  await step('reconnect: A loses its socket, C talks, A comes back and shows the missed message once', async () => {
    await alice.page.evaluate(() => window.__chatTest.cut());
    await eventually('alice\'s page shows it is not connected', async () =>
      (await tid(alice.page, 'conn-status').getAttribute('data-state')) !== 'online');
    await tid(alice.page, 'room-notice').waitFor({ state: 'visible' });
    await eventually('the server dropped alice from the room (as carol sees it)', async () =>
      !(await memberNames(carol.page)).includes('alice'));

    await sendMessage(carol.page, missed);
    await waitForMessage(carol, missed);
    assert(!(await messageContents(alice.page)).includes(missed), 'alice cannot have the message yet');

    await alice.page.evaluate(() => window.__chatTest.restore());
    await eventually('alice\'s page is connected again', async () =>
      (await tid(alice.page, 'conn-status').getAttribute('data-state')) === 'online', 20_000);
    await waitForMessage(alice, missed);
    await eventually('carol sees alice back in the room', async () =>
      (await memberNames(carol.page)).includes('alice'));
    await sleep(800); // let the REST catch-up settle: it must not add duplicates

    const contents = await messageContents(alice.page);
    assertEqual(contents.filter((c) => c === missed).length, 1, 'copies of the missed message on alice\'s page');
    const ids = await messageIds(alice.page);
    assertEqual(new Set(ids).size, ids.length, `duplicate message ids on alice's page (${ids})`);
    assert(ids.every((id, i) => i === 0 || ids[i - 1] < id), `messages in ascending id order (${ids})`);
    const rest = await (await fetch(`${base}/api/rooms/${roomId}/messages?after=0&limit=500`)).json();
    assertEqual(JSON.stringify(ids), JSON.stringify(rest.map((m) => m.id)),
      'alice\'s messages, compared with GET /api/rooms/{id}/messages');

    await sendMessage(alice.page, 'Sorry, my train went through a tunnel 🚆');
    await waitForMessage(carol, 'Sorry, my train went through a tunnel 🚆');
    await eventually('the reconnect notice goes away', async () => tid(alice.page, 'room-notice').isHidden(), 6000);
  });

  if (writeScreenshots) {
    await step('desktop screenshot of two users chatting saved', async () => {
      // A fresh, friendly room for the picture.
      await tid(alice.page, 'leave-button').click();
      await tid(alice.page, 'welcome').waitFor({ state: 'visible' });
      await tid(alice.page, 'room-title-input').fill('design-review');
      await tid(alice.page, 'create-button').click();
      await waitInRoom(alice, 'design-review');
      await bob.page.reload();
      await eventually('bob is connected', async () =>
        (await tid(bob.page, 'conn-status').getAttribute('data-state')) === 'online');
      await joinFromList(bob, 'design-review', 'bob');
      await waitInRoom(bob, 'design-review');
      const lines = [
        [alice, 'Morning! I pushed the new onboarding mockups 🎨'],
        [bob, 'Nice, looking now.'],
        [bob, 'The empty state is so much calmer than before.'],
        [alice, 'Thanks! Two open questions:\n1. keep the progress dots?\n2. a skip button on step 1?'],
        [bob, 'Dots yes, skip no. People who skip never come back 😅'],
        [alice, 'Fair. I\'ll update the file and we ship it on Thursday 🚀'],
      ];
      for (const [u, text] of lines) {
        await sendMessage(u.page, text);
        await waitForMessage(alice, text);
      }
      await eventually('the room list shows 2 members in design-review', async () => {
        const item = tid(alice.page, 'room-item').filter({ hasText: 'design-review' });
        return (await item.getByTestId('room-members').textContent()) === '2';
      }, 8000);
      await tid(alice.page, 'message-input').fill('Sounds good');
      await alice.page.mouse.move(640, 790);
      await alice.page.screenshot({ path: path.join(docsDir, 'screenshot-chat.png') });
      await tid(alice.page, 'message-input').fill('');
    });
  }

  await step('a page of another origin cannot open the chat socket; the chat page can', async () => {
    const foreign = await startForeignSite(base);
    try {
      const context = await browser.newContext();
      const page = await context.newPage();
      const res = await page.goto(foreign.url);
      assertEqual(res.status(), 200, 'the other site\'s page loads');
      const outcome = await eventually('the other site\'s socket attempt ends',
        () => page.evaluate(() => window.__socketOutcome), 10_000);
      assert(outcome.startsWith('closed'), `the other origin's socket must not open (got ${outcome})`);
      await context.close();
      // The same attempt from the chat page itself succeeds.
      const own = await alice.page.evaluate((url) => new Promise((resolve) => {
        const ws = new WebSocket(url);
        ws.onopen = () => { ws.close(); resolve('open'); };
        ws.onclose = (e) => resolve(`closed ${e.code}`);
      }), `${base.replace('http:', 'ws:')}/ws`);
      assertEqual(own, 'open', 'a socket opened by the chat page');
    } finally {
      await foreign.close();
    }
  });

  const only = (name) => !onlyRe || onlyRe.test(name);

  const FLOOD = 'a flood of 600 messages at ~190/s is rendered within 2 s, the list stays bounded, the page stays responsive';
  if (only(FLOOD)) await step(FLOOD, async () => {
    const N = 600;
    const RATE = 190; // under the server's WS_RATE_PER_SEC=200, burst 400
    const BOUND = 500;
    const dave = await newUser('dave', base);
    await tid(dave.page, 'nickname-input').fill('dave');
    await tid(dave.page, 'room-title-input').fill('flood');
    await tid(dave.page, 'create-button').click();
    await waitInRoom(dave, 'flood');
    const floodRoom = await roomIdOf(dave.page);
    await dave.page.evaluate(() => {
      window.__longTasks = [];
      new PerformanceObserver((list) => {
        for (const e of list.getEntries()) window.__longTasks.push(Math.round(e.duration));
      }).observe({ type: 'longtask' });
      const ol = document.querySelector('[data-testid="message-list"]');
      new MutationObserver(() => {
        const last = ol.lastElementChild;
        const text = last && last.querySelector('[data-testid="message-content"]').textContent;
        if (text === 'flood 1' && !window.__firstAt) window.__firstAt = Date.now();
        if (text === 'flood 600' && !window.__lastAt) window.__lastAt = Date.now();
      }).observe(ol, { childList: true });
    });

    const sender = await socketClient(base);
    // While the flood runs, time round trips into dave's page: each one
    // waits for its main thread.
    let sampling = true;
    let maxRoundTrip = 0;
    const sampler = (async () => {
      while (sampling) {
        const t = Date.now();
        await dave.page.evaluate(() => 0);
        maxRoundTrip = Math.max(maxRoundTrip, Date.now() - t);
        await sleep(50);
      }
    })();
    const sent = await sender.page.evaluate(({ url, roomId, n, rate }) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      window.__ws = ws;
      window.__senderErrors = [];
      let count = 0;
      ws.onopen = () => ws.send(JSON.stringify({ type: 'join', roomId, nickname: 'flooder', ref: 'j' }));
      ws.onerror = () => reject(new Error('the sender\'s socket failed'));
      ws.onmessage = (ev) => {
        const f = JSON.parse(ev.data);
        if (f.type === 'error') window.__senderErrors.push(f.code);
        if (f.type !== 'joined') return;
        const t0 = performance.now();
        const firstSentAt = Date.now();
        const timer = setInterval(() => {
          const due = Math.min(n, Math.floor((performance.now() - t0) * rate / 1000) + 1);
          while (count < due) {
            count += 1;
            ws.send(JSON.stringify({ type: 'chat', content: `flood ${count}` }));
          }
          if (count >= n) {
            clearInterval(timer);
            resolve({ firstSentAt, lastSentAt: Date.now(), seconds: (performance.now() - t0) / 1000 });
          }
        }, 10);
      };
    }), { url: `${base.replace('http:', 'ws:')}/ws`, roomId: floodRoom, n: N, rate: RATE });

    let lastAt = 0;
    const waitLimit = Date.now() + 45_000;
    while (!lastAt && Date.now() < waitLimit) {
      lastAt = await dave.page.evaluate(() => window.__lastAt || 0);
      if (!lastAt) await sleep(50);
    }
    sampling = false;
    await sampler;
    const stats = await dave.page.evaluate(() => {
      const ol = document.querySelector('[data-testid="message-list"]');
      const items = [...ol.children];
      return {
        firstAt: window.__firstAt || 0,
        longTasks: window.__longTasks,
        count: items.length,
        ids: items.map((e) => Number(e.dataset.id)),
        contents: items.map((e) => e.querySelector('[data-testid="message-content"]').textContent),
      };
    });
    const longest = Math.max(0, ...stats.longTasks);
    const lag = lastAt ? lastAt - sent.lastSentAt : Infinity;
    console.log(`    sent ${N} in ${sent.seconds.toFixed(2)} s; last rendered ${lastAt ? `${lag} ms after it was sent` : 'never (45 s)'}`
      + ` (${lastAt ? lastAt - sent.firstSentAt : '-'} ms after the first was sent); longest main-thread task ${longest} ms`
      + ` (${stats.longTasks.length} over 50 ms), slowest round trip into the page ${maxRoundTrip} ms; ${stats.count} elements kept`);
    const senderErrors = await sender.page.evaluate(() => window.__senderErrors);
    assertEqual(senderErrors.length, 0, `errors the sender got (${senderErrors.join(', ')})`);
    assert(lastAt, 'the page shows the last flood message within 45 s');
    assert(lag <= 2000, `the last message is rendered within 2 s of being sent (took ${lag} ms)`);
    assert(longest <= maxBlockMs, `no main-thread task over ${maxBlockMs} ms during the flood (longest ${longest} ms: ${stats.longTasks.join(', ')})`);
    // Coarse (it includes the test's own latency on a busy machine); the
    // long-task check above is the precise one.
    assert(maxRoundTrip <= 2000, `the page answers within 2 s during the flood (slowest ${maxRoundTrip} ms)`);
    assert(stats.count <= BOUND, `at most ${BOUND} messages kept in the page (${stats.count})`);
    assertEqual(stats.contents[stats.contents.length - 1], `flood ${N}`, 'the last message shown');
    assertEqual(stats.contents[0], `flood ${N - BOUND + 1}`, 'the oldest message kept (the newest 500 stay)');
    await eventually('the last message is scrolled into view', () => dave.page.evaluate(() => {
      const ol = document.querySelector('[data-testid="message-list"]');
      const box = ol.getBoundingClientRect();
      const last = ol.lastElementChild.getBoundingClientRect();
      return last.bottom <= box.bottom + 1 && last.top >= box.top - 1;
    }), 1000);
    assertEqual(new Set(stats.ids).size, stats.ids.length, 'distinct message ids');
    assert(stats.ids.every((id, i) => i === 0 || stats.ids[i - 1] < id), 'messages in ascending id order');

    // A tall message after the flood: the page still ends at the very bottom
    // (off-screen messages are laid out with an estimated height first).
    const tall = Array.from({ length: 25 }, (_, i) => `line ${i + 1}`).join('\n');
    await sender.page.evaluate((text) => window.__ws.send(JSON.stringify({ type: 'chat', content: text })), tall);
    await waitForMessage(dave, tall);
    await eventually('dave\'s list is scrolled to the very bottom', () => dave.page.evaluate(() => {
      const ol = document.querySelector('[data-testid="message-list"]');
      return ol.scrollHeight - ol.scrollTop - ol.clientHeight < 2;
    }), 3000);
    assert(await tid(dave.page, 'jump-button').isHidden(), 'no "New messages" button while following');

    // A reconnect brings the last messages again (history, catch-up): they
    // are not shown twice, and the dropped ones do not come back.
    await dave.page.evaluate(() => window.__chatTest.cut());
    await eventually('dave\'s page shows it is not connected', async () =>
      (await tid(dave.page, 'conn-status').getAttribute('data-state')) !== 'online');
    await dave.page.evaluate(() => { window.__chatTest.restore(); window.dispatchEvent(new Event('online')); });
    await eventually('dave is back in the room', async () =>
      (await tid(dave.page, 'conn-status').getAttribute('data-state')) === 'online'
      && (await tid(dave.page, 'room-notice').isHidden()), 20_000);
    await sendMessage(dave.page, 'still standing');
    await waitForMessage(dave, 'still standing');
    const after = await messageIds(dave.page);
    assertEqual(new Set(after).size, after.length, 'distinct message ids after the reconnect');
    assert(after.length <= BOUND, `at most ${BOUND} messages after the reconnect (${after.length})`);
    assert(after.every((id, i) => i === 0 || after[i - 1] < id), 'ascending ids after the reconnect');
    await sender.context.close();
    await dropUser(dave);
  });

  const RESTART = 'after a server restart the page does not rejoin a new room that got the old id: lobby with a notice';
  if (only(RESTART)) await step(RESTART, async () => {
    // A server of this step's own in memory mode, where room ids start at
    // 1 again after a restart (the page must not rely on the server's fix).
    let mem = await spawnServer({ memory: true, label: 'memory server' });
    const { port } = mem;
    const TITLE = 'secret plans';
    const erin = await newUser('erin', mem.base);
    await tid(erin.page, 'nickname-input').fill('erin');
    await tid(erin.page, 'room-title-input').fill(TITLE);
    await tid(erin.page, 'create-button').click();
    await waitInRoom(erin, TITLE);
    const oldId = await roomIdOf(erin.page);
    await sendMessage(erin.page, 'the old history');
    await waitForMessage(erin, 'the old history');
    await sleep(1100); // created times have whole seconds

    // Keep the page from reconnecting until the attacker is in place.
    await erin.page.evaluate(() => window.__chatTest.cut());
    await mem.stop();
    await eventually('erin\'s page shows it is not connected', async () =>
      (await tid(erin.page, 'conn-status').getAttribute('data-state')) !== 'online');
    mem = await spawnServer({ memory: true, port, label: 'memory server' });

    const attacker = await socketClient(mem.base);
    const attack = await attacker.page.evaluate(({ url, title }) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      window.__ws = ws;
      ws.onopen = () => ws.send(JSON.stringify({ type: 'create', title, nickname: 'mallory', ref: 'c' }));
      ws.onerror = () => reject(new Error('the attacker\'s socket failed'));
      ws.onmessage = (ev) => {
        const f = JSON.parse(ev.data);
        if (f.type === 'joined') {
          ws.send(JSON.stringify({ type: 'chat', content: 'attacker was here', ref: 'm' }));
        } else if (f.type === 'message') {
          resolve({ roomId: f.message.roomId, messageId: f.message.id });
        } else if (f.type === 'error') {
          reject(new Error(`attacker got ${f.code}`));
        }
      };
    }), { url: `${mem.base.replace('http:', 'ws:')}/ws`, title: TITLE });
    const idReused = attack.roomId === oldId;
    console.log(`    old room id ${oldId}, the attacker's room id ${attack.roomId}${idReused ? ' (reused)' : ''}`);

    await erin.page.evaluate(() => { window.__chatTest.restore(); window.dispatchEvent(new Event('online')); });
    await eventually('erin\'s page is connected again', async () =>
      (await tid(erin.page, 'conn-status').getAttribute('data-state')) === 'online', 20_000);
    await tid(erin.page, 'welcome').waitFor({ state: 'visible' });
    assert(await tid(erin.page, 'room-view').isHidden(), 'erin is back in the lobby, not in a room');
    const notice = tid(erin.page, 'rooms-error');
    await notice.waitFor({ state: 'visible' });
    const code = await notice.getAttribute('data-code');
    if (idReused) {
      assertEqual(code, 'room_gone', 'the notice for a room replaced by another one');
      assert(/room you were in is gone/i.test(await notice.textContent()), `the notice says the room is gone (${await notice.textContent()})`);
    } else {
      assertEqual(code, 'room_not_found', 'the notice for a room that is gone');
    }
    assert(!(await messageContents(erin.page)).includes('attacker was here'), 'erin never shows the attacker\'s message');
    await eventually('erin is not a member of the attacker\'s room', async () => {
      const members = await (await fetch(`${mem.base}/api/rooms/${attack.roomId}/members`)).json();
      return Array.isArray(members) && !members.some((m) => m.nickname === 'erin');
    });
    assert(!/#room=/.test(erin.page.url()), `the URL no longer names a room (${erin.page.url()})`);

    // Joining the new room on purpose shows its messages, although their
    // ids are those the old room's messages had.
    await joinFromList(erin, TITLE, 'erin');
    await waitInRoom(erin, TITLE);
    await waitForMessage(erin, 'attacker was here');
    assert(!(await messageContents(erin.page)).includes('the old history'), 'the old history is gone');
    await attacker.context.close();
    await dropUser(erin);
    await mem.stop();
  });

  const PAGES = 'the room list asks for the newest 50 rooms; "Show older rooms" appears only when there are more';
  if (only(PAGES)) await step(PAGES, async () => {
    // 1. The real server: every room is shown (there are fewer than 50) and
    //    the page asks for one page only.
    const listUrls = [];
    const frank = await newUser('frank', base, {
      beforeGoto: (page) => page.on('request', (r) => {
        const u = new URL(r.url());
        if (u.pathname === '/api/rooms' && r.method() === 'GET') listUrls.push(u.search);
      }),
    });
    const real = await (await fetch(`${base}/api/rooms`)).json();
    await eventually('frank\'s lobby lists the server\'s rooms', async () => {
      const names = await tid(frank.page, 'room-name').allTextContents();
      return real.length > 0 && real.every((r) => names.includes(r.title));
    });
    assert(await tid(frank.page, 'rooms-more').isHidden(), 'no "Show older rooms" with fewer than 50 rooms');
    assert(listUrls.length > 0 && listUrls.every((q) => /(^\?|&)limit=50(&|$)/.test(q)), `the page asks for 50 rooms (${listUrls.join(' ')})`);
    await dropUser(frank);

    // 2. A server with 130 rooms, faked with page.route, in both forms: one
    //    that pages (limit, before, X-Next-Before) and one that ignores the
    //    parameters and returns every room.
    for (const paging of [true, false]) {
      const fake = [];
      for (let id = 130; id >= 1; id--) fake.push({ id, title: `room ${id}`, memberCount: id % 3, created: new Date(Date.UTC(2026, 0, 1, 0, 0, id)).toISOString() });
      const asked = [];
      const user = await newUser(paging ? 'gina' : 'hank', base, {
        beforeGoto: (page) => page.route((u) => u.pathname === '/api/rooms', (route) => {
          const u = new URL(route.request().url());
          asked.push(u.search);
          let list = fake;
          const headers = { 'content-type': 'application/json' };
          if (paging) {
            const limit = Math.min(Number(u.searchParams.get('limit') || 100), 500);
            const before = u.searchParams.get('before');
            list = fake.filter((r) => before === null || r.id < Number(before));
            if (list.length > limit) headers['x-next-before'] = String(list[limit - 1].id);
            list = list.slice(0, limit);
          }
          return route.fulfill({ status: 200, headers, body: JSON.stringify(list) });
        }),
      });
      const { page } = user;
      const ids = async () => (await page.$$eval('[data-testid="room-item"]', (els) => els.map((e) => Number(e.dataset.roomId))));
      const range = (hi, lo) => Array.from({ length: hi - lo + 1 }, (_, i) => hi - i);
      await eventually(`${user.name}: the newest 50 rooms`, async () => JSON.stringify(await ids()) === JSON.stringify(range(130, 81)));
      const more = tid(page, 'rooms-more');
      await more.waitFor({ state: 'visible' });
      assertEqual(await tid(page, 'room-count').textContent(), '50+', `${user.name}: the room count`);
      // Live: a new room appears at the top on the next poll; the other
      // items are kept (not rebuilt), so nothing flickers.
      await page.$eval('[data-room-id="100"]', (el) => { el.dataset.marker = 'kept'; });
      fake.unshift({ id: 131, title: 'room 131', memberCount: 1, created: new Date().toISOString() });
      await eventually(`${user.name}: the new room shows up`, async () => (await ids())[0] === 131, 8000);
      assertEqual(await page.$eval('[data-room-id="100"]', (el) => el.dataset.marker), 'kept', `${user.name}: an existing item is kept`);
      assertEqual((await ids()).length, 50, `${user.name}: still one page of rooms`);
      await more.click();
      await eventually(`${user.name}: 100 rooms after one "more"`, async () => JSON.stringify(await ids()) === JSON.stringify(range(131, 32)));
      assert(await more.isVisible(), `${user.name}: more rooms are still there`);
      await more.click();
      await eventually(`${user.name}: all 131 rooms`, async () => JSON.stringify(await ids()) === JSON.stringify(range(131, 1)));
      await more.waitFor({ state: 'hidden' });
      assertEqual(await tid(page, 'room-count').textContent(), '131', `${user.name}: the room count`);
      // Another new room while older pages are shown: nothing is lost.
      fake.unshift({ id: 132, title: 'room 132', memberCount: 0, created: new Date().toISOString() });
      await eventually(`${user.name}: 132 rooms, the newest first`, async () => JSON.stringify(await ids()) === JSON.stringify(range(132, 1)), 8000);
      const polls = asked.filter((q) => !/before=/.test(q));
      assert(polls.every((q) => /(^\?|&)limit=50(&|$)/.test(q)), `${user.name}: the polls ask for the first page only (${polls.join(' ')})`);
      assert(asked.filter((q) => /before=/.test(q)).length === 2, `${user.name}: two requests for older pages (${asked.join(' ')})`);
      await dropUser(user);
    }
  });

  await step('no script errors in any page, no injected HTML ran', async () => {
    assertEqual(cspViolations.length, 0, `Content Security Policy violations (${cspViolations.join(' | ')})`);
    assertEqual(pageErrors.length, 0, `page errors (${pageErrors.join(' | ')})`);
    for (const u of users) assertEqual(await xssFlag(u.page), 'undefined', `${u.name}: window.__xss`);
    assertEqual(injectedRequests.length, 0, 'requests for the injected image');
  });

  await cleanup();
  clearTimeout(globalTimer);
  console.log(`\nbrowser e2e: ${passed} passed, 0 failed`);
  process.exit(0);
}

main().catch(fail);
