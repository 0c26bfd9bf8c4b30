#!/usr/bin/env node
// The chat page in real headless Chromium through a rolling restart of the
// cluster. Driven by tests/cluster/page_rolling.rs, which starts the three
// pm2 instances behind nginx, makes the room, keeps it populated, restarts
// the instances and checks what this script reports; it is not meant to be
// run on its own.
//
//   node tests/browser/rolling.e2e.mjs <front-url> <room-id> <room-title>
//
// Two pages (two browser contexts, two people) open <front-url>/chat, land
// on different instances (a page whose socket shares its instance with the
// first one is opened again, before anything is joined), join the room from
// the room list and then type a message every CHAT_EVERY_MS into the
// composer, pressing Enter, and nothing else: no reload, no click. A
// message the page could not send (it is offline) stays in the composer
// and Enter is pressed again on the next turn.
//
// Lines on stdout are JSON, one per event, for the driving test:
//   {"event":"ready","pages":[{"name","instance"}...]}   both pages joined
//   {"event":"chatting"}          each page had a chat acknowledged
//   {"event":"result",...}        after "stop" on stdin: the report below;
//                                 the pages stay open until "quit" on stdin
//   {"event":"error","message"}   then exit 1
// Everything else (progress) goes to stderr.
//
// What is recorded per page, without touching the page's code: every
// WebSocket (from the DevTools protocol: the instance from the upgrade
// answer's X-Chat-Instance header, every frame sent and received; from a
// thin WebSocket subclass installed before the page's scripts: the close
// code), the page's errors, Content-Security-Policy violations (as the
// browser test collects them), every error or notice the page showed, and
// at the end its DOM: the message list, the member list, the connection
// state and every error slot.
//
// Environment: CHROMIUM_PATH (default /usr/bin/chromium),
// ROLLING_CHAT_EVERY_MS (default 300), ROLLING_TIMEOUT_MS (global limit,
// default 150000), ROLLING_SETTLE_MS (how long to wait after "stop" for the
// pages to agree with each other and with REST, default 30000).

import readline from 'node:readline';
import { chromium } from 'playwright-core';

const [front, roomArg, roomTitle] = process.argv.slice(2);
const roomId = Number(roomArg);
const chromiumPath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const CHAT_EVERY_MS = Number(process.env.ROLLING_CHAT_EVERY_MS) || 300;
const TIMEOUT_MS = Number(process.env.ROLLING_TIMEOUT_MS) || 150_000;
const SETTLE_MS = Number(process.env.ROLLING_SETTLE_MS) || 30_000;
const PAGES = ['ann', 'ben'];
/** Tries to put the second page on another instance than the first. */
const LANDING_TRIES = 6;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const emit = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);
const say = (text) => process.stderr.write(`[rolling.e2e] ${text}\n`);

let browser = null;
let ending = false;

async function end(code, error) {
  if (ending) return;
  ending = true;
  setTimeout(() => process.exit(code || 1), 10_000).unref();
  if (error) emit({ event: 'error', message: error instanceof Error ? error.stack || error.message : String(error) });
  if (browser) await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
  process.exit(code);
}

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => end(1, `interrupted by ${sig}`));
setTimeout(() => end(1, `global timeout: over ${TIMEOUT_MS} ms`), TIMEOUT_MS).unref();

/** Polls `probe` until it returns a truthy value, for at most `ms`. */
async function until(what, probe, ms) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what} (last: ${JSON.stringify(last)})`);
    await sleep(100);
  }
}

// Runs in the page before its own scripts. Records each socket's close code
// (the DevTools protocol does not give it) and every error or notice the page
// shows, and reports CSP violations as the browser test does.
function installRecorder() {
  window.addEventListener('securitypolicyviolation', (e) => {
    console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || '(inline)'}`);
  }, true);
  const closes = [];
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      const i = closes.length;
      closes.push(null);
      this.addEventListener('close', (e) => { closes[i] = e.code; });
    }
  };
  const shown = [];
  const watch = () => {
    const slots = document.querySelectorAll('[role="alert"], #room-notice');
    const look = () => {
      for (const el of slots) {
        const text = el.textContent.trim();
        const last = shown.filter((s) => s.slot === el.id).pop();
        if (!el.hidden && text && (!last || last.text !== text) && shown.length < 300) {
          shown.push({ slot: el.id, text, code: el.dataset.code || null, at: Date.now() });
        } else if (el.hidden && last && last.text) {
          shown.push({ slot: el.id, text: '', code: null, at: Date.now() });
        }
      }
    };
    const observer = new MutationObserver(look);
    for (const el of slots) observer.observe(el, { attributes: true, childList: true, characterData: true, subtree: true });
  };
  document.addEventListener('DOMContentLoaded', watch);
  Object.defineProperty(window, '__rolling', { value: Object.freeze({ closes, shown }) });
}

/** One person: a browser context with one page, and what was seen of it. */
async function openPage(name) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'en-US' });
  await context.addInitScript(installRecorder);
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  const p = {
    name, context, page,
    sockets: [], bySocket: new Map(),
    pageErrors: [], csp: [], loads: 0,
    chats: new Map(), // ref -> { content, socket }
    acked: [], refused: [],
    joinsSent: 0, joined: 0,
  };
  page.on('pageerror', (e) => p.pageErrors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error' && /CSP violation|Content Security Policy/i.test(m.text())) p.csp.push(m.text());
  });
  page.on('dialog', (d) => { p.pageErrors.push(`dialog: ${d.message()}`); d.dismiss().catch(() => {}); });
  page.on('load', () => { p.loads += 1; });
  const cdp = await context.newCDPSession(page);
  cdp.on('Network.webSocketCreated', ({ requestId, url }) => {
    const s = { url, instance: null, status: null, closed: false, joined: false, frames: 0 };
    p.sockets.push(s);
    p.bySocket.set(requestId, s);
  });
  cdp.on('Network.webSocketHandshakeResponseReceived', ({ requestId, response }) => {
    const s = p.bySocket.get(requestId);
    if (!s) return;
    s.status = response.status;
    const h = Object.fromEntries(Object.entries(response.headers || {}).map(([k, v]) => [k.toLowerCase(), v]));
    s.instance = h['x-chat-instance'] || null;
  });
  cdp.on('Network.webSocketClosed', ({ requestId }) => {
    const s = p.bySocket.get(requestId);
    if (s) s.closed = true;
  });
  cdp.on('Network.webSocketFrameSent', ({ requestId, response }) => {
    const s = p.bySocket.get(requestId);
    let f;
    try { f = JSON.parse(response.payloadData); } catch (_) { return; }
    if (f.type === 'chat' && typeof f.ref === 'string') p.chats.set(f.ref, { content: f.content, socket: s });
    if (f.type === 'join') p.joinsSent += 1;
  });
  cdp.on('Network.webSocketFrameReceived', ({ requestId, response }) => {
    const s = p.bySocket.get(requestId);
    let f;
    try { f = JSON.parse(response.payloadData); } catch (_) { return; }
    if (s) s.frames += 1;
    if (f.type === 'joined' && f.room && f.room.id === roomId) {
      p.joined += 1;
      if (s) s.joined = true;
    }
    const chat = typeof f.ref === 'string' ? p.chats.get(f.ref) : undefined;
    if (!chat) return;
    p.chats.delete(f.ref);
    if (f.type === 'message') p.acked.push([f.message.id, chat.content]);
    else if (f.type === 'error') p.refused.push([f.code, chat.content]);
  });
  await cdp.send('Network.enable');
  const res = await page.goto(`${front}/chat`);
  if (res.status() !== 200) throw new Error(`${name}: GET /chat answered ${res.status()}`);
  await until(`${name}'s page is connected`,
    async () => (await page.getByTestId('conn-status').getAttribute('data-state')) === 'online', 15_000);
  await until(`${name}'s socket names its instance`, () => p.sockets.at(-1)?.instance, 5000);
  return p;
}

async function join(p) {
  const { page } = p;
  await page.getByTestId('nickname-input').fill(p.name);
  const item = page.locator(`[data-testid="room-item"][data-room-id="${roomId}"]`);
  await item.waitFor({ state: 'visible', timeout: 10_000 });
  await item.click();
  await page.getByTestId('room-view').waitFor({ state: 'visible' });
  await until(`${p.name} is in the room`, async () => p.joined > 0
    && (await page.getByTestId('member-list').getByTestId('member-name').allTextContents()).includes(p.name), 10_000);
  // Gone if the page is ever loaded again.
  await page.evaluate(() => { window.__sameDocument = true; });
}

/** Types and sends a message every CHAT_EVERY_MS until `chatting` is false. */
async function chatLoop(p, state) {
  const input = p.page.getByTestId('message-input');
  let n = 0;
  while (state.chatting) {
    if ((await input.inputValue()) === '') {
      n += 1;
      await input.fill(`${p.name} ${n}`);
    }
    await input.press('Enter');
    await sleep(CHAT_EVERY_MS);
  }
}

/** The page as a person sees it now. */
function snapshot(p) {
  return p.page.evaluate(() => {
    const q = (id) => document.querySelector(`[data-testid="${id}"]`);
    const visible = (el) => Boolean(el) && !el.hidden && el.getClientRects().length > 0;
    const items = [...document.querySelectorAll('[data-testid="message-list"] > [data-testid="message"]')];
    const errors = {};
    for (const id of ['nickname-error', 'rooms-error', 'title-error', 'message-error', 'toast', 'room-notice']) {
      const el = q(id);
      if (visible(el)) errors[id] = el.textContent.trim();
    }
    return {
      sameDocument: window.__sameDocument === true,
      conn: q('conn-status').dataset.state,
      inRoom: visible(q('room-view')),
      title: q('current-room-title').textContent,
      composerOffline: q('composer').classList.contains('is-offline'),
      url: location.href,
      messages: items.map((li) => [Number(li.dataset.id), li.querySelector('[data-testid="message-content"]').textContent]),
      members: [...document.querySelectorAll('[data-testid="member-list"] [data-testid="member-name"]')].map((e) => e.textContent),
      errors,
      closes: [...window.__rolling.closes],
      shown: [...window.__rolling.shown],
    };
  });
}

async function restJson(path) {
  const res = await fetch(`${front}${path}`, { signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status}`);
  return res.json();
}

const stdinLines = readline.createInterface({ input: process.stdin });
const commands = [];
let stdinClosed = false;
stdinLines.on('line', (l) => commands.push(l.trim()));
stdinLines.on('close', () => { stdinClosed = true; });

/** Resolves once the driver wrote `word` on a line (or closed stdin). */
async function command(word) {
  while (!stdinClosed && !commands.includes(word)) await sleep(50);
}

async function main() {
  if (!front || !Number.isSafeInteger(roomId) || !roomTitle) {
    throw new Error('usage: node rolling.e2e.mjs <front-url> <room-id> <room-title>');
  }
  const started = Date.now();
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // Two pages in one browser: neither may be throttled as a background tab.
      '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
      '--disable-backgrounding-occluded-windows'],
  });
  const pages = [await openPage(PAGES[0])];
  let second = null;
  for (let i = 0; i < LANDING_TRIES; i++) {
    second = await openPage(PAGES[1]);
    if (second.sockets.at(-1).instance !== pages[0].sockets.at(-1).instance) break;
    if (i + 1 < LANDING_TRIES) await second.context.close();
  }
  pages.push(second);
  for (const p of pages) await join(p);
  say(`pages open in ${Date.now() - started} ms`);
  emit({ event: 'ready', pages: pages.map((p) => ({ name: p.name, instance: p.sockets.at(-1).instance })) });

  const state = { chatting: true };
  const loops = pages.map((p) => chatLoop(p, state));
  // A loop that fails (a page closed, an element gone) ends the test.
  const failed = Promise.all(loops).catch((e) => end(1, e));
  await until('each page had a chat acknowledged', () => pages.every((p) => p.acked.length > 0), 20_000);
  emit({ event: 'chatting' });

  // Until the driver says stop (its restarts are done), or stdin closes.
  await command('stop');
  state.chatting = false;
  await failed;
  const stopped = Date.now();

  // The pages have settled when each is online and in the room without a
  // notice, shows what REST has (messages and members), and the two agree.
  let settled = false;
  let last = null;
  const deadline = Date.now() + SETTLE_MS;
  while (Date.now() < deadline) {
    try {
      const [history, members] = await Promise.all([
        restJson(`/api/rooms/${roomId}/messages?after=0&limit=500`),
        restJson(`/api/rooms/${roomId}/members`),
      ]);
      const shots = await Promise.all(pages.map(snapshot));
      const ids = JSON.stringify(history.map((m) => m.id));
      const names = JSON.stringify(members.map((m) => m.nickname).sort());
      last = shots.map((s) => `${s.conn} ${s.messages.length}/${history.length} ${Object.keys(s.errors)}`).join('; ');
      settled = shots.every((s) => s.conn === 'online' && s.inRoom && !s.composerOffline
        && Object.keys(s.errors).length === 0
        && JSON.stringify(s.messages.map(([id]) => id)) === ids
        && JSON.stringify([...s.members].sort()) === names);
      if (settled) break;
    } catch (e) {
      last = e.message;
    }
    await sleep(250);
  }
  say(`settled: ${settled} after ${Date.now() - stopped} ms (${last})`);

  const report = [];
  for (const p of pages) {
    const shot = await snapshot(p);
    report.push({
      name: p.name,
      loads: p.loads,
      joinsSent: p.joinsSent,
      sockets: p.sockets.map((s, i) => ({
        instance: s.instance, status: s.status, closed: s.closed, joined: s.joined, frames: s.frames,
        closeCode: shot.closes[i] ?? null,
      })),
      socketsSeenByPage: shot.closes.length,
      acked: p.acked,
      refused: p.refused,
      unanswered: [...p.chats.values()].map((c) => c.content),
      pageErrors: p.pageErrors,
      csp: p.csp,
      dom: shot,
    });
  }
  emit({ event: 'result', settled, settleMs: Date.now() - stopped, pages: report });
  // The pages stay in the room until the driver has read REST.
  await command('quit');
  await end(0);
}

main().catch((e) => end(1, e));
