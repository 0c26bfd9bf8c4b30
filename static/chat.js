// The browser chat page. Plain JS, no build step, no dependencies.
//
// It speaks the wire contract in docs/PROTOCOL.md: REST for the room list and
// for catching up after a reconnect, one WebSocket for everything live.
//
// Safety rule for this file: text that came from a user (titles, nicknames,
// message contents, server error messages) is only ever put into the page
// with textContent / createElement. Never innerHTML.
'use strict';

(() => {
  // ---------------------------------------------------------------- setup --

  const $ = (id) => document.getElementById(id);
  const body = document.body;

  function readLimit(key, fallback) {
    const n = Number.parseInt(body.dataset[key] ?? '', 10);
    return Number.isFinite(n) && n > 0 ? n : fallback;
  }

  const limits = {
    title: readLimit('maxTitle', 50),
    nickname: readLimit('maxNickname', 50),
    content: readLimit('maxContent', 1000),
  };

  const ui = {
    app: $('app'),
    conn: $('conn-status'),
    connText: $('conn-text'),
    nickname: $('nickname-input'),
    nicknameError: $('nickname-error'),
    roomList: $('room-list'),
    roomCount: $('room-count'),
    roomsEmpty: $('rooms-empty'),
    roomsMore: $('rooms-more'),
    roomsError: $('rooms-error'),
    createForm: $('create-form'),
    title: $('room-title-input'),
    titleError: $('title-error'),
    createButton: $('create-button'),
    welcome: $('welcome'),
    roomView: $('room-view'),
    roomTitle: $('current-room-title'),
    roomSub: $('room-sub'),
    notice: $('room-notice'),
    membersToggle: $('members-toggle'),
    membersToggleCount: $('members-toggle-count'),
    leave: $('leave-button'),
    messages: $('message-list'),
    messagesEmpty: $('messages-empty'),
    jump: $('jump-button'),
    composer: $('composer'),
    input: $('message-input'),
    messageError: $('message-error'),
    counter: $('char-counter'),
    members: $('members'),
    memberList: $('member-list'),
    memberCount: $('member-count'),
    membersClose: $('members-close'),
    scrim: $('scrim'),
    toast: $('toast'),
  };

  const NICKNAME_KEY = 'chat.nickname';
  const ROOMS_REFRESH_MS = 3000;
  const PING_EVERY_MS = 20000;
  const PONG_TIMEOUT_MS = 10000;
  const REQUEST_TIMEOUT_MS = 10000;
  const REJOIN_GIVE_UP_MS = 45000;
  const PAGE_LIMIT = 500;
  const GROUP_WINDOW_MS = 5 * 60 * 1000;
  const NEAR_BOTTOM_PX = 120;
  /** Message elements the list keeps; older ones are dropped from the page. */
  const MAX_MESSAGES = 500;
  /** Rooms per page of the room list (GET /api/rooms?limit=). */
  const ROOMS_PAGE = 50;
  /** Longest wait for the next render of arriving messages when the browser
   * does not run animation frames (a hidden tab). */
  const FLUSH_FALLBACK_MS = 250;

  // ------------------------------------------------------------ validation --

  // docs/PROTOCOL.md: control characters are U+0000–U+001F and U+007F–U+009F;
  // message content may still hold \n and \t.
  const CONTROL = /[\u0000-\u001f\u007f-\u009f]/u;
  const CONTROL_EXCEPT_NL_TAB = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/u;

  /** Length in Unicode code points, as the server counts. */
  const charCount = (s) => [...s].length;

  function validateText(raw, max, what, multiline) {
    const value = String(raw ?? '').trim();
    const n = charCount(value);
    if (n === 0) return { error: `${what} can’t be empty.` };
    if (n > max) return { error: `${what} can be at most ${max} characters (this one has ${n}).` };
    if ((multiline ? CONTROL_EXCEPT_NL_TAB : CONTROL).test(value)) {
      return {
        error: multiline
          ? `${what} contains an invisible control character; only line breaks and tabs are allowed.`
          : `${what} can’t contain control characters or line breaks.`,
      };
    }
    return { value };
  }

  const validateNickname = (raw) => validateText(raw, limits.nickname, 'Your nickname', false);
  const validateTitle = (raw) => validateText(raw, limits.title, 'The room title', false);
  const validateContent = (raw) => validateText(raw, limits.content, 'A message', true);

  // ---------------------------------------------------------------- errors --

  const ERROR_TEXT = {
    nickname_taken: 'Someone in this room already uses that nickname. Please choose another one.',
    invalid_nickname: `Nicknames are 1–${limits.nickname} characters, without control characters.`,
    invalid_title: `Room titles are 1–${limits.title} characters, without control characters.`,
    invalid_content: `Messages are 1–${limits.content} characters; only line breaks and tabs are allowed as special characters.`,
    room_not_found: 'That room doesn’t exist any more. It may have closed when its last member left.',
    rate_limited: 'You’re going a bit fast. Wait a moment, then try again.',
    unavailable: 'The server is temporarily unavailable. Please try again in a moment.',
    not_in_room: 'You’re no longer in this room.',
    invalid_json: 'The server couldn’t read that request.',
    invalid_message: 'The server didn’t understand that request.',
    invalid_parameter: 'That request had an invalid value.',
    payload_too_large: 'That’s too large to send.',
    not_found: 'Not found.',
    not_connected: 'Not connected to the server. Reconnecting…',
    timeout: 'The server didn’t answer in time. Please try again.',
  };

  function describeError(code, serverMessage) {
    if (ERROR_TEXT[code]) return ERROR_TEXT[code];
    if (serverMessage) return String(serverMessage);
    return `Something went wrong (${code}).`;
  }

  const slots = {
    nickname: { el: ui.nicknameError, input: ui.nickname },
    title: { el: ui.titleError, input: ui.title },
    rooms: { el: ui.roomsError, input: null },
    message: { el: ui.messageError, input: ui.input },
  };

  /** Shows `text` under the input the error belongs to. `source` lets a
   * periodic task clear only the errors it set itself. */
  function showError(slotName, code, text, source = 'request') {
    const slot = slots[slotName];
    if (!slot) return toast(text);
    slot.el.textContent = text;
    slot.el.dataset.code = code;
    slot.el.dataset.source = source;
    slot.el.hidden = false;
    if (slot.input) slot.input.setAttribute('aria-invalid', 'true');
  }

  function clearError(slotName, source) {
    const slot = slots[slotName];
    if (!slot || slot.el.hidden) return;
    if (source && slot.el.dataset.source !== source) return;
    slot.el.hidden = true;
    slot.el.textContent = '';
    delete slot.el.dataset.code;
    delete slot.el.dataset.source;
    if (slot.input) slot.input.removeAttribute('aria-invalid');
  }

  let toastTimer = null;
  function toast(text) {
    ui.toast.textContent = text;
    ui.toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { ui.toast.hidden = true; }, 6000);
  }

  let noticeTimer = null;
  function showNotice(text, kind = 'warn', hideAfterMs = 0) {
    clearTimeout(noticeTimer);
    ui.notice.textContent = text;
    ui.notice.dataset.kind = kind;
    ui.notice.hidden = false;
    if (hideAfterMs > 0) noticeTimer = setTimeout(hideNotice, hideAfterMs);
  }

  function hideNotice() {
    clearTimeout(noticeTimer);
    ui.notice.hidden = true;
    ui.notice.textContent = '';
  }

  // ----------------------------------------------------------------- state --

  const state = {
    /** The room this page shows: {id, title}, or null in the lobby. */
    room: null,
    /** Our nickname in that room, as the server echoed it. */
    me: null,
    /** True while the current socket is a member of `room`. */
    live: false,
    /** message id -> <li> for the messages on the page (at most
     * MAX_MESSAGES), for de-duplication. */
    messages: new Map(),
    /** Highest id dropped from the page to keep it bounded: anything at or
     * below it is older than what the page shows and is not put back. */
    floorId: 0,
    /** Highest message id up to which we hold every message of the room. */
    lastSeenId: 0,
    /** True while catching up over REST after a reconnect. */
    resyncing: false,
    /** nickname -> joinedAt, in join order. */
    members: new Map(),
    /** A create/join waiting for its answer. */
    busy: false,
    /** When the current re-join attempt series started (ms). */
    rejoinSince: 0,
    unread: 0,
  };

  const messageData = new WeakMap(); // <li> -> Message

  // ------------------------------------------------------------ connection --

  const conn = {
    ws: null,
    attempt: 0,
    everOpened: false,
    retryTimer: null,
    retryAt: 0,
    openedAt: 0,
    countdownTimer: null,
    pingTimer: null,
    pongTimer: null,
  };

  let refSeq = 0;
  /** ref -> {kind, ...}: requests waiting for their direct reply. */
  const pending = new Map();
  /** How many of our chats the server answered `pending` (the database has
   * not confirmed them yet) and not yet for good. */
  let unconfirmed = 0;
  const UNCONFIRMED_TEXT =
    'Waiting for the database to confirm your message… it appears here once stored, or you’ll see an error.';

  function wsUrl() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/ws`;
  }

  function setConnState(s, text) {
    ui.conn.dataset.state = s;
    ui.app.dataset.conn = s;
    ui.connText.textContent = text;
    renderRoomSub();
  }

  function isOpen() {
    return conn.ws !== null && conn.ws.readyState === WebSocket.OPEN;
  }

  function connect() {
    clearTimeout(conn.retryTimer);
    clearInterval(conn.countdownTimer);
    conn.retryTimer = null;
    if (conn.ws) return;
    setConnState(conn.everOpened ? 'reconnecting' : 'connecting',
      conn.everOpened ? 'Reconnecting…' : 'Connecting…');
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (_) {
      scheduleReconnect();
      return;
    }
    conn.ws = ws;
    ws.addEventListener('open', () => { if (conn.ws === ws) onOpen(); });
    ws.addEventListener('message', (ev) => { if (conn.ws === ws) onFrame(ev.data); });
    ws.addEventListener('close', () => { if (conn.ws === ws) onDisconnect(); });
    // An 'error' is always followed by 'close'; nothing to do here.
  }

  /** Drops the current socket now, without waiting for a close handshake
   * that may never come on a dead network. */
  function dropSocket() {
    const ws = conn.ws;
    if (!ws) return;
    conn.ws = null;
    try { ws.close(); } catch (_) { /* already closing */ }
    onDisconnect(true);
  }

  function onOpen() {
    conn.openedAt = Date.now();
    conn.everOpened = true;
    setConnState('online', 'Connected');
    startPing();
    if (state.room) {
      rejoin();
    } else if (pendingDeepLink) {
      const id = pendingDeepLink;
      pendingDeepLink = null;
      const nick = validateNickname(ui.nickname.value);
      if (nick.value) joinRoom(id, nick.value);
    }
  }

  function onDisconnect(alreadyDetached = false) {
    if (!alreadyDetached) conn.ws = null;
    stopPing();
    // Back off from scratch only after a connection that held for a while,
    // so a server that accepts and drops at once is not hammered.
    if (conn.openedAt && Date.now() - conn.openedAt > 5000) conn.attempt = 0;
    conn.openedAt = 0;
    state.live = false;
    // Every request in flight is lost with the socket.
    settleUnconfirmed(unconfirmed);
    for (const [ref, req] of pending) {
      pending.delete(ref);
      clearTimeout(req.timer);
      if (req.kind === 'create' || req.kind === 'join') {
        setBusy(false);
        showError(req.kind === 'create' ? 'title' : 'rooms', 'not_connected',
          'The connection dropped before the server answered. Please try again.');
      } else if (req.kind === 'chat') {
        showError('message', 'not_connected',
          'The connection dropped while sending; your last message may not have arrived.');
      }
    }
    if (state.room) {
      showNotice('Connection lost. Reconnecting… messages you miss will appear when you’re back.');
      renderComposerState();
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    clearTimeout(conn.retryTimer);
    clearInterval(conn.countdownTimer);
    const base = Math.min(10000, 500 * 2 ** conn.attempt);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    conn.attempt = Math.min(conn.attempt + 1, 10);
    conn.retryAt = Date.now() + delay;
    const tick = () => {
      const s = Math.max(0, Math.ceil((conn.retryAt - Date.now()) / 1000));
      setConnState('reconnecting', s > 0 ? `Retrying in ${s} s` : 'Reconnecting…');
    };
    tick();
    conn.countdownTimer = setInterval(tick, 500);
    conn.retryTimer = setTimeout(connect, delay);
  }

  /** Retry now (network came back, tab became visible). */
  function reconnectSoon() {
    if (conn.ws) return;
    conn.attempt = 0;
    connect();
  }

  window.addEventListener('online', reconnectSoon);
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) {
      reconnectSoon();
      state.unread = 0;
      renderDocumentTitle();
      refreshRooms();
    }
  });

  function startPing() {
    stopPing();
    conn.pingTimer = setInterval(() => {
      if (!isOpen()) return;
      send('ping', {}, { kind: 'ping' });
      clearTimeout(conn.pongTimer);
      conn.pongTimer = setTimeout(() => {
        // No pong: the socket is dead even if the browser hasn't noticed.
        dropSocket();
      }, PONG_TIMEOUT_MS);
    }, PING_EVERY_MS);
  }

  function stopPing() {
    clearInterval(conn.pingTimer);
    clearTimeout(conn.pongTimer);
    conn.pingTimer = null;
    conn.pongTimer = null;
  }

  /** Sends one frame with a fresh `ref`; `meta` describes the request so the
   * reply can be routed. Returns the ref, or null when not connected. */
  function send(type, fields, meta) {
    if (!isOpen()) return null;
    const ref = `${type}-${++refSeq}`;
    const frame = Object.assign({ type }, fields, { ref });
    if (meta) {
      const req = Object.assign({ kind: type }, meta);
      if (req.kind === 'create' || req.kind === 'join' || req.kind === 'rejoin') {
        req.timer = setTimeout(() => onRequestTimeout(ref), REQUEST_TIMEOUT_MS);
      }
      pending.set(ref, req);
    }
    try {
      conn.ws.send(JSON.stringify(frame));
    } catch (_) {
      pending.delete(ref);
      return null;
    }
    return ref;
  }

  function onRequestTimeout(ref) {
    const req = pending.get(ref);
    if (!req) return;
    pending.delete(ref);
    if (req.kind === 'rejoin') {
      // The server is alive enough to hold the socket but not answering.
      dropSocket();
      return;
    }
    setBusy(false);
    showError(req.kind === 'create' ? 'title' : 'rooms', 'timeout', describeError('timeout'));
  }

  // --------------------------------------------------------- server frames --

  function onFrame(text) {
    let f;
    try { f = JSON.parse(text); } catch (_) { return; }
    if (!f || typeof f !== 'object' || typeof f.type !== 'string') return;
    if (f.type === 'pending') {
      onPending(f);
      return;
    }
    let req;
    if (typeof f.ref === 'string' && pending.has(f.ref)) {
      req = pending.get(f.ref);
      pending.delete(f.ref);
      clearTimeout(req.timer);
      if (req.unconfirmed) settleUnconfirmed(1);
    }
    switch (f.type) {
      case 'joined': onJoined(f, req); break;
      case 'message': onMessage(f.message); break;
      case 'memberJoined': onMemberJoined(f); break;
      case 'memberLeft': onMemberLeft(f); break;
      case 'left': onLeft(f, req); break;
      case 'pong': clearTimeout(conn.pongTimer); break;
      case 'error': onError(f, req); break;
      default: break; // an extension we don't know: ignore
    }
  }

  /** A chat the database has not confirmed yet: not an error (it may be
   * stored). Its echo or error follows with the same ref, so the request
   * stays waiting; meanwhile the room says so, quietly. */
  function onPending(f) {
    const req = typeof f.ref === 'string' ? pending.get(f.ref) : undefined;
    if (!req || req.kind !== 'chat' || req.unconfirmed) return;
    req.unconfirmed = true;
    unconfirmed += 1;
    if (state.room) showNotice(UNCONFIRMED_TEXT, 'info');
  }

  /** `n` unconfirmed chats got their final answer (or were lost with the
   * socket); the notice goes once none is left. */
  function settleUnconfirmed(n) {
    if (n <= 0) return;
    unconfirmed = Math.max(0, unconfirmed - n);
    if (unconfirmed === 0 && !ui.notice.hidden && ui.notice.textContent === UNCONFIRMED_TEXT) {
      hideNotice();
    }
  }

  function onJoined(f, req) {
    if (!f.room || !f.you) return;
    const kind = req ? req.kind : 'join';
    const sameRoom = state.room !== null && state.room.id === f.room.id;
    const resume = kind === 'rejoin' && sameRoom;
    if (kind === 'rejoin' && !sameRoom) {
      // The user left while the re-join was on its way: undo it quietly.
      send('leave', {}, { kind: 'leave' });
      return;
    }
    if (resume && !sameCreation(state.room.created, f.room.created)) {
      // Same id, another room: the one we were in is gone (a server that
      // lost its rooms gives their ids out again). Never show the new
      // room under the old history, and never send into it.
      send('leave', {}, { kind: 'leave' });
      const title = state.room.title;
      enterLobby();
      showError('rooms', 'room_gone',
        `The room you were in is gone: “${title}” no longer exists on the server. Pick a room or start a new one.`);
      return;
    }
    setBusy(false);
    if (!resume) resetRoom();
    state.room = {
      id: f.room.id,
      title: String(f.room.title ?? ''),
      created: typeof f.room.created === 'string' ? f.room.created : null,
    };
    state.me = String(f.you.nickname ?? '');
    state.live = true;
    state.rejoinSince = 0;
    saveNickname(state.me);
    if (resume) {
      if (ui.messageError.dataset.code === 'not_connected') clearError('message');
    } else {
      ui.nickname.value = state.me;
      clearError('nickname');
      clearError('rooms', 'request');
      clearError('title');
      clearError('message');
    }
    if (kind === 'create') ui.title.value = '';

    setMembers(Array.isArray(f.members) ? f.members : []);
    const history = Array.isArray(f.history) ? f.history : [];
    if (resume) {
      // Keep what we have; the history and a REST catch-up fill the gap.
      state.resyncing = true;
      mergeMessages(history);
      resync(state.room.id, req.after, req.quiet);
    } else {
      mergeMessages(history);
      state.lastSeenId = maxMessageId();
    }
    enterRoomView();
    if (!resume) {
      scrollToBottom();
      if (!matchMedia('(hover: none)').matches) ui.input.focus();
    }
    try { window.history.replaceState(null, '', `#room=${state.room.id}`); } catch (_) { /* ignore */ }
    refreshRooms();
  }

  /** Whether two `created` times name the same moment (a room's identity
   * together with its id). Unknown on either side counts as the same. */
  function sameCreation(a, b) {
    if (typeof a !== 'string' || typeof b !== 'string') return true;
    const ta = Date.parse(a);
    const tb = Date.parse(b);
    if (Number.isNaN(ta) || Number.isNaN(tb)) return a === b;
    return ta === tb;
  }

  // Arriving messages are collected and put into the page once per
  // animation frame: a room that delivers hundreds of messages a second
  // costs one DOM update and one layout per frame, not one per message.
  let incoming = [];
  let flushFrame = 0;
  let flushTimer = null;

  function onMessage(m) {
    if (!m || typeof m.id !== 'number' || !state.room || m.roomId !== state.room.id) return;
    if (m.id <= state.floorId || state.messages.has(m.id)) return;
    if (!state.resyncing && m.id > state.lastSeenId) state.lastSeenId = m.id;
    incoming.push(m);
    // More than the page keeps can wait for one frame only when the tab is
    // in the background; the oldest would be dropped from the page anyway.
    if (incoming.length > 2 * MAX_MESSAGES) incoming = incoming.slice(-MAX_MESSAGES);
    scheduleFlush();
  }

  function scheduleFlush() {
    if (flushFrame || flushTimer) return;
    flushFrame = requestAnimationFrame(flushIncoming);
    // Hidden tabs get no animation frames: a timer takes over there.
    flushTimer = setTimeout(flushIncoming, FLUSH_FALLBACK_MS);
  }

  function cancelFlush() {
    if (flushFrame) cancelAnimationFrame(flushFrame);
    clearTimeout(flushTimer);
    flushFrame = 0;
    flushTimer = null;
  }

  function flushIncoming() {
    cancelFlush();
    const batch = incoming;
    incoming = [];
    if (!state.room || batch.length === 0) return;
    const stick = following;
    const added = insertMessages(batch);
    if (added.length === 0) return;
    renderEmptyState();
    const own = added.some((m) => m.nickname === state.me);
    if (stick || own) {
      scrollToBottom();
    } else {
      ui.jump.hidden = false;
    }
    if (document.hidden) {
      const others = added.filter((m) => m.nickname !== state.me).length;
      if (others) {
        state.unread += others;
        renderDocumentTitle();
      }
    }
  }

  function onMemberJoined(f) {
    if (!state.room || f.roomId !== state.room.id || !f.member) return;
    const name = String(f.member.nickname ?? '');
    if (!name) return;
    state.members.delete(name);
    state.members.set(name, f.member.joinedAt);
    renderMembers();
  }

  function onMemberLeft(f) {
    if (!state.room || f.roomId !== state.room.id) return;
    if (state.members.delete(String(f.nickname ?? ''))) renderMembers();
  }

  function onLeft(f, req) {
    if (req && req.kind === 'leave') return; // we went to the lobby when we asked
    if (!state.room || f.roomId !== state.room.id) return;
    // Taken out of the room without asking: the server does this when we
    // join another room (it leaves the current one first). If that join
    // fails, onError puts us back; otherwise the new room's joined follows.
    state.live = false;
    renderComposerState();
    if (!state.busy) rejoin('Rejoining the room…', true);
  }

  function onError(f, req) {
    const code = typeof f.code === 'string' ? f.code : 'error';
    const text = describeError(code, f.message);
    const kind = req ? req.kind : null;
    if ((kind === 'create' || kind === 'join') && state.room && !state.live) {
      // A failed switch to another room: the server already took us out of
      // the one we were in, so go back to it.
      rejoin(`Staying in #${state.room.title}…`, true);
    }
    switch (kind) {
      case 'create':
        setBusy(false);
        if (code === 'invalid_nickname' || code === 'nickname_taken') {
          showError('nickname', code, text);
          ui.nickname.focus();
        } else {
          showError('title', code, text);
        }
        break;
      case 'join':
        setBusy(false);
        if (code === 'invalid_nickname' || code === 'nickname_taken') {
          showError('nickname', code, text);
          ui.nickname.focus();
          ui.nickname.select();
        } else {
          showError('rooms', code, text);
          if (code === 'room_not_found') {
            if (req) roomPages.older.delete(req.roomId);
            refreshRooms();
          }
        }
        break;
      case 'rejoin':
        onRejoinError(code, text);
        break;
      case 'chat':
        if (req && !ui.input.value.trim()) {
          ui.input.value = req.content; // give the text back so nothing is lost
          autosize();
          renderCounter();
        }
        showError('message', code, text);
        if (code === 'not_in_room' && state.room) {
          state.live = false;
          rejoin();
        }
        break;
      case 'leave':
      case 'ping':
        break;
      default:
        // No ref we know: not the answer to anything we asked.
        if (code === 'not_in_room' && state.room && state.live) {
          state.live = false;
          rejoin();
        } else if (state.room) {
          showError('message', code, text);
        } else {
          toast(text);
        }
    }
  }

  // --------------------------------------------------- joining and leaving --

  function setBusy(b) {
    state.busy = b;
    ui.createButton.disabled = b;
    ui.app.classList.toggle('is-busy', b);
  }

  async function joinRoom(roomId, nickname) {
    if (state.busy) return;
    if (state.room && state.room.id === roomId && state.live) {
      enterRoomView();
      return;
    }
    if (!isOpen()) {
      showError('rooms', 'not_connected', describeError('not_connected'));
      return;
    }
    setBusy(true);
    if (state.room && state.live && await nicknameTakenIn(roomId, nickname)) {
      // Switching rooms: the server leaves the current room before it
      // tries the new one, so catch the common failure before asking.
      setBusy(false);
      showError('nickname', 'nickname_taken', describeError('nickname_taken'));
      return;
    }
    if (!send('join', { roomId, nickname }, { kind: 'join', roomId })) {
      setBusy(false);
      showError('rooms', 'not_connected', describeError('not_connected'));
    }
  }

  /** Best effort: false when the member list can't be read. */
  async function nicknameTakenIn(roomId, nickname) {
    try {
      const res = await fetch(`/api/rooms/${encodeURIComponent(roomId)}/members`,
        { cache: 'no-store', headers: { Accept: 'application/json' } });
      if (!res.ok) return false;
      const members = await res.json();
      return Array.isArray(members) && members.some((m) => m && m.nickname === nickname);
    } catch (_) {
      return false;
    }
  }

  function rejoin(notice = 'Reconnected. Rejoining the room…', quiet = false) {
    if (!state.room || !state.me) return;
    if (!state.rejoinSince) state.rejoinSince = Date.now();
    const ref = send('join', { roomId: state.room.id, nickname: state.me },
      { kind: 'rejoin', after: state.lastSeenId, quiet });
    if (ref) showNotice(notice, 'info');
  }

  let rejoinRetryTimer = null;
  function onRejoinError(code, text) {
    const room = state.room;
    if (!room) return;
    const waited = Date.now() - state.rejoinSince;
    const transient = code === 'nickname_taken' || code === 'unavailable' || code === 'rate_limited';
    if (transient && waited < REJOIN_GIVE_UP_MS) {
      // nickname_taken here usually means the server still holds our old,
      // dead connection; it lets go of it after its client timeout.
      const why = code === 'nickname_taken'
        ? 'Waiting for the server to release your previous connection…'
        : 'The server is busy. Retrying…';
      showNotice(why, 'info');
      clearTimeout(rejoinRetryTimer);
      rejoinRetryTimer = setTimeout(() => { if (state.room === room && !state.live) rejoin(why); }, 2000);
      return;
    }
    const title = room.title;
    enterLobby();
    if (code === 'room_not_found') {
      showError('rooms', code, `“${title}” has closed (a room closes when its last member leaves).`);
    } else if (code === 'nickname_taken' || code === 'invalid_nickname') {
      showError('nickname', code, text);
    } else {
      showError('rooms', code, text);
    }
  }

  function leaveRoom() {
    if (!state.room) return;
    if (state.live) send('leave', {}, { kind: 'leave' });
    enterLobby();
  }

  /** Catches up on messages sent while we were away, by REST. */
  async function resync(roomId, after, quiet) {
    let cursor = Number.isInteger(after) && after >= 0 ? after : 0;
    try {
      for (let page = 0; page < 100; page++) {
        const res = await fetch(`/api/rooms/${encodeURIComponent(roomId)}/messages?after=${cursor}&limit=${PAGE_LIMIT}`,
          { cache: 'no-store', headers: { Accept: 'application/json' } });
        if (!res.ok) {
          const err = await readRestError(res);
          throw new Error(describeError(err.code, err.message));
        }
        const list = await res.json();
        if (!state.room || state.room.id !== roomId) return;
        if (!Array.isArray(list)) throw new Error('unexpected answer');
        const stick = isNearBottom();
        mergeMessages(list);
        if (stick) scrollToBottom();
        if (list.length < PAGE_LIMIT) break;
        cursor = list[list.length - 1].id;
      }
      if (state.room && state.room.id === roomId) {
        state.lastSeenId = maxMessageId();
        if (quiet) hideNotice();
        else showNotice('Back online.', 'ok', 2500);
      }
    } catch (e) {
      if (state.room && state.room.id === roomId) {
        showNotice(`Reconnected, but some messages could not be loaded: ${e.message}`, 'warn');
      }
    } finally {
      if (state.room && state.room.id === roomId) state.resyncing = false;
      renderComposerState();
    }
  }

  async function readRestError(res) {
    try {
      const j = await res.json();
      if (j && j.error && typeof j.error.code === 'string') return j.error;
    } catch (_) { /* not JSON */ }
    return { code: res.status === 503 ? 'unavailable' : 'error', message: `HTTP ${res.status}` };
  }

  // ---------------------------------------------------------------- views --

  function resetRoom() {
    cancelFlush();
    incoming = [];
    state.messages.clear();
    state.floorId = 0;
    state.members.clear();
    state.lastSeenId = 0;
    state.resyncing = false;
    state.unread = 0;
    ui.messages.replaceChildren();
    ui.memberList.replaceChildren();
    ui.jump.hidden = true;
    hideNotice();
  }

  function enterRoomView() {
    ui.app.dataset.view = 'room';
    ui.welcome.hidden = true;
    ui.roomView.hidden = false;
    ui.members.hidden = false;
    ui.roomTitle.textContent = state.room.title;
    renderRoomSub();
    renderMembers();
    renderEmptyState();
    renderComposerState();
    renderActiveRoom();
    renderDocumentTitle();
  }

  function enterLobby() {
    clearTimeout(rejoinRetryTimer);
    state.room = null;
    state.me = null;
    state.live = false;
    state.rejoinSince = 0;
    resetRoom();
    closeMembersDrawer();
    ui.app.dataset.view = 'lobby';
    ui.roomView.hidden = true;
    ui.members.hidden = true;
    ui.welcome.hidden = false;
    clearError('message');
    renderActiveRoom();
    renderDocumentTitle();
    try { window.history.replaceState(null, '', location.pathname + location.search); } catch (_) { /* ignore */ }
    refreshRooms();
  }

  function renderRoomSub() {
    if (!state.room) return;
    const n = state.members.size;
    const parts = [`${n} ${n === 1 ? 'member' : 'members'}`];
    if (state.me) parts.push(`you are ${state.me}`);
    ui.roomSub.textContent = parts.join(' · ');
  }

  function renderComposerState() {
    const ok = state.live && isOpen();
    ui.composer.classList.toggle('is-offline', !ok);
    ui.input.placeholder = ok
      ? `Message #${state.room ? state.room.title : ''}`
      : 'Reconnecting… you can keep typing';
  }

  function renderDocumentTitle() {
    const unread = state.unread > 0 ? `(${state.unread}) ` : '';
    document.title = state.room ? `${unread}#${state.room.title} · Chat` : 'Chat';
  }

  function renderEmptyState() {
    ui.messagesEmpty.hidden = state.messages.size > 0;
  }

  // -------------------------------------------------------------- messages --

  function maxMessageId() {
    let max = state.floorId;
    for (const id of state.messages.keys()) if (id > max) max = id;
    for (const m of incoming) if (m.id > max) max = m.id;
    return max;
  }

  function mergeMessages(list) {
    insertMessages(list);
    renderEmptyState();
  }

  /** Puts messages of the current room into the list in id order, skipping
   * duplicates, then drops the oldest beyond MAX_MESSAGES. Messages newer
   * than the last one shown (the usual case) go in as one fragment.
   * Returns the messages added. */
  function insertMessages(list) {
    if (!state.room) return [];
    const fresh = [];
    const ids = new Set();
    for (const m of list) {
      if (!m || typeof m.id !== 'number' || m.roomId !== state.room.id) continue;
      if (m.id <= state.floorId || state.messages.has(m.id) || ids.has(m.id)) continue;
      ids.add(m.id);
      fresh.push(m);
    }
    if (fresh.length === 0) return fresh;
    fresh.sort((a, b) => a.id - b.id);
    // Only the newest MAX_MESSAGES can stay on the page.
    const keep = fresh.length > MAX_MESSAGES ? fresh.slice(-MAX_MESSAGES) : fresh;
    const lastEl = ui.messages.lastElementChild;
    const lastId = lastEl ? messageData.get(lastEl).id : 0;
    const frag = document.createDocumentFragment();
    let prevData = lastEl ? messageData.get(lastEl) : null;
    for (const m of keep) {
      if (m.id > lastId) {
        const li = renderMessage(m);
        const data = messageData.get(li);
        li.classList.toggle('continued', continues(prevData, data));
        prevData = data;
        state.messages.set(m.id, li);
        frag.append(li);
      } else {
        insertOne(m); // older than the newest shown: rare (a catch-up)
      }
    }
    ui.messages.append(frag);
    trimMessages();
    return keep;
  }

  /** Inserts one message before the first newer one. */
  function insertOne(m) {
    const li = renderMessage(m);
    state.messages.set(m.id, li);
    let next = null;
    let cursor = ui.messages.lastElementChild;
    while (cursor && messageData.get(cursor).id > m.id) {
      next = cursor;
      cursor = cursor.previousElementSibling;
    }
    ui.messages.insertBefore(li, next);
    regroup(li);
    if (next) regroup(next);
  }

  /** Keeps at most MAX_MESSAGES elements (and ids) by dropping the oldest. */
  function trimMessages() {
    let dropped = false;
    while (state.messages.size > MAX_MESSAGES) {
      const first = ui.messages.firstElementChild;
      if (!first) break;
      const { id } = messageData.get(first);
      state.messages.delete(id);
      if (id > state.floorId) state.floorId = id;
      first.remove();
      dropped = true;
    }
    if (dropped && ui.messages.firstElementChild) regroup(ui.messages.firstElementChild);
  }

  function renderMessage(m) {
    const nickname = String(m.nickname ?? '');
    const own = state.me !== null && nickname === state.me;
    const sent = new Date(m.sentAt);

    const li = document.createElement('li');
    li.className = own ? 'msg own' : 'msg';
    li.dataset.testid = 'message';
    li.dataset.id = String(m.id);
    li.dataset.own = own ? 'true' : 'false';
    messageData.set(li, { id: m.id, nickname, time: sent.getTime() });

    const avatar = makeAvatar(nickname);
    avatar.classList.add('msg-avatar');

    const main = document.createElement('div');
    main.className = 'msg-main';

    const meta = document.createElement('div');
    meta.className = 'msg-meta';
    const author = document.createElement('span');
    author.className = 'msg-author';
    author.dataset.testid = 'message-author';
    author.textContent = nickname;
    author.style.setProperty('--hue', String(hueOf(nickname)));
    meta.append(author, makeTime(sent, 'msg-time'));

    const content = document.createElement('div');
    content.className = 'msg-content';
    content.dataset.testid = 'message-content';
    content.textContent = String(m.content ?? '');

    const gutterTime = makeTime(sent, 'msg-gutter-time');
    gutterTime.setAttribute('aria-hidden', 'true');
    gutterTime.textContent = formatClock(sent);

    main.append(meta, content);
    li.append(avatar, gutterTime, main);
    return li;
  }

  /** A follow-up from the same person within a few minutes drops its header. */
  function regroup(li) {
    const prev = li.previousElementSibling;
    li.classList.toggle('continued', continues(prev ? messageData.get(prev) : null, messageData.get(li)));
  }

  function continues(b, a) {
    return Boolean(b && b.nickname === a.nickname && a.time - b.time >= 0
      && a.time - b.time < GROUP_WINDOW_MS);
  }

  function makeTime(date, className) {
    const t = document.createElement('time');
    t.className = className;
    t.dataset.testid = className === 'msg-time' ? 'message-time' : 'message-gutter-time';
    if (!Number.isNaN(date.getTime())) {
      t.dateTime = date.toISOString();
      t.title = FORMAT.full.format(date);
      t.textContent = formatWhen(date);
    }
    return t;
  }

  // Formatters made once (toLocale*String builds one per call: slow in a flood).
  const FORMAT = {
    full: new Intl.DateTimeFormat(undefined, {
      year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric',
    }),
    clock: new Intl.DateTimeFormat([], { hour: 'numeric', minute: '2-digit' }),
    dayClock: new Intl.DateTimeFormat([], { month: 'short', day: 'numeric', hour: 'numeric', minute: '2-digit' }),
  };

  function formatClock(d) {
    if (Number.isNaN(d.getTime())) return '';
    return FORMAT.clock.format(d);
  }

  function formatWhen(d) {
    const now = new Date();
    const sameDay = d.getFullYear() === now.getFullYear() && d.getMonth() === now.getMonth()
      && d.getDate() === now.getDate();
    if (sameDay) return formatClock(d);
    const yesterday = new Date(now.getFullYear(), now.getMonth(), now.getDate() - 1);
    if (d.getFullYear() === yesterday.getFullYear() && d.getMonth() === yesterday.getMonth()
      && d.getDate() === yesterday.getDate()) {
      return `Yesterday ${formatClock(d)}`;
    }
    return FORMAT.dayClock.format(d);
  }

  function isNearBottom() {
    const el = ui.messages;
    return el.scrollHeight - el.scrollTop - el.clientHeight < NEAR_BOTTOM_PX;
  }

  /** Whether the view follows new content (the reader is at the bottom). */
  let following = true;

  function scrollToBottom() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
    ui.jump.hidden = true;
    following = true;
  }

  ui.messages.addEventListener('scroll', () => {
    following = isNearBottom();
    if (following) ui.jump.hidden = true;
  }, { passive: true });
  ui.jump.addEventListener('click', scrollToBottom);

  // When the list gets shorter (the composer grows, a phone keyboard opens,
  // the window is resized), stay at the bottom if we were there.
  if (typeof ResizeObserver === 'function') {
    new ResizeObserver(() => {
      if (following) ui.messages.scrollTop = ui.messages.scrollHeight;
    }).observe(ui.messages);
  }

  // --------------------------------------------------------------- members --

  function setMembers(list) {
    state.members.clear();
    for (const m of list) {
      if (m && typeof m.nickname === 'string') state.members.set(m.nickname, m.joinedAt);
    }
    renderMembers();
  }

  function renderMembers() {
    const items = [];
    for (const [nickname, joinedAt] of state.members) {
      const li = document.createElement('li');
      li.className = 'member';
      li.dataset.testid = 'member';
      const avatar = makeAvatar(nickname);
      const name = document.createElement('span');
      name.className = 'member-name';
      name.dataset.testid = 'member-name';
      name.textContent = nickname;
      li.append(avatar, name);
      if (nickname === state.me) {
        li.classList.add('me');
        const you = document.createElement('span');
        you.className = 'tag';
        you.textContent = 'you';
        li.append(you);
      }
      const since = new Date(joinedAt);
      if (!Number.isNaN(since.getTime())) li.title = `Joined ${since.toLocaleString()}`;
      items.push(li);
    }
    ui.memberList.replaceChildren(...items);
    const n = state.members.size;
    ui.memberCount.textContent = String(n);
    ui.membersToggleCount.textContent = String(n);
    ui.membersToggle.setAttribute('aria-label', `Members (${n})`);
    renderRoomSub();
  }

  function hueOf(s) {
    let h = 2166136261;
    for (const ch of s) {
      h ^= ch.codePointAt(0);
      h = Math.imul(h, 16777619);
    }
    return Math.abs(h) % 360;
  }

  function makeAvatar(nickname) {
    const a = document.createElement('span');
    a.className = 'avatar';
    a.setAttribute('aria-hidden', 'true');
    a.style.setProperty('--hue', String(hueOf(nickname)));
    const first = [...nickname.trim()][0] || '?';
    a.textContent = first.toLocaleUpperCase();
    return a;
  }

  const narrow = matchMedia('(max-width: 1023px)');

  function toggleMembers() {
    if (narrow.matches) {
      const open = !ui.app.classList.contains('members-open');
      ui.app.classList.toggle('members-open', open);
      ui.scrim.hidden = !open;
      ui.membersToggle.setAttribute('aria-expanded', String(open));
    } else {
      const collapsed = ui.app.classList.toggle('members-collapsed');
      ui.membersToggle.setAttribute('aria-expanded', String(!collapsed));
    }
  }

  function closeMembersDrawer() {
    ui.app.classList.remove('members-open');
    ui.scrim.hidden = true;
    ui.membersToggle.setAttribute('aria-expanded', String(!narrow.matches && !ui.app.classList.contains('members-collapsed')));
  }

  ui.membersToggle.addEventListener('click', toggleMembers);
  ui.membersClose.addEventListener('click', closeMembersDrawer);
  ui.scrim.addEventListener('click', closeMembersDrawer);
  narrow.addEventListener('change', closeMembersDrawer);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && ui.app.classList.contains('members-open')) closeMembersDrawer();
  });

  // ----------------------------------------------------------------- rooms --

  // The room list asks only for what it shows: the newest ROOMS_PAGE rooms,
  // polled every few seconds, and older pages on request ("Show older
  // rooms", GET /api/rooms?limit=&before=), which are kept as loaded.

  const roomItems = new Map(); // room id -> <li>
  let roomsInFlight = false;
  const roomPages = {
    /** The first page as last polled, in the server's order (newest first). */
    first: [],
    /** Where the page after the first one starts (`before`), or null. */
    firstNext: null,
    /** room id -> Room, the rooms loaded with "Show older rooms". */
    older: new Map(),
    /** Whether older pages were loaded, and where the next one starts. */
    expanded: false,
    olderNext: null,
    moreInFlight: false,
  };

  class RestError extends Error {
    constructor(err) {
      super(describeError(err.code, err.message));
      this.code = err.code;
    }
  }

  /** One page of rooms, newest first, with the `before` of the next page
   * (null when there is none). Also correct against a server that ignores
   * `limit` and `before` and returns every room. */
  async function fetchRoomPage(before) {
    const q = before === null ? '' : `&before=${encodeURIComponent(before)}`;
    const res = await fetch(`/api/rooms?limit=${ROOMS_PAGE}${q}`,
      { cache: 'no-store', headers: { Accept: 'application/json' } });
    if (!res.ok) throw new RestError(await readRestError(res));
    const all = await res.json();
    if (!Array.isArray(all)) throw new Error('unexpected answer');
    let list = all.filter((r) => r && typeof r.id === 'number' && (before === null || r.id < before));
    const header = Number.parseInt(res.headers.get('X-Next-Before') ?? '', 10);
    let next = Number.isSafeInteger(header) && header > 0 ? header : null;
    if (list.length > ROOMS_PAGE) {
      list = list.slice(0, ROOMS_PAGE);
      if (next === null) next = list[list.length - 1].id;
    }
    return { list, next };
  }

  async function refreshRooms() {
    if (roomsInFlight) return;
    roomsInFlight = true;
    try {
      const { list, next } = await fetchRoomPage(null);
      clearError('rooms', 'load');
      if (roomPages.expanded) {
        if (next === null) {
          // Everything fits on the first page now.
          roomPages.older.clear();
          roomPages.expanded = false;
          roomPages.olderNext = null;
        } else {
          const end = list.length ? list[list.length - 1].id : Infinity;
          const now = new Set(list.map((r) => r.id));
          // Rooms pushed off the first page by newer ones stay listed.
          for (const r of roomPages.first) {
            if (r.id < end && !now.has(r.id)) roomPages.older.set(r.id, r);
          }
          // Above the first page's end, a room not on it is gone.
          for (const id of [...roomPages.older.keys()]) if (id >= end) roomPages.older.delete(id);
        }
      }
      roomPages.first = list;
      roomPages.firstNext = next;
      renderRoomPages();
    } catch (e) {
      if (e instanceof RestError) {
        showError('rooms', e.code, `Couldn’t load the rooms: ${e.message}`, 'load');
      } else {
        showError('rooms', 'unavailable', 'Couldn’t load the rooms. Retrying…', 'load');
      }
    } finally {
      roomsInFlight = false;
    }
  }

  async function loadOlderRooms() {
    const cursor = roomPages.expanded ? roomPages.olderNext : roomPages.firstNext;
    if (cursor === null || roomPages.moreInFlight) return;
    roomPages.moreInFlight = true;
    ui.roomsMore.disabled = true;
    try {
      const { list, next } = await fetchRoomPage(cursor);
      for (const r of list) roomPages.older.set(r.id, r);
      roomPages.expanded = true;
      roomPages.olderNext = next;
      clearError('rooms', 'more');
      renderRoomPages();
    } catch (e) {
      showError('rooms', e.code || 'unavailable', `Couldn’t load older rooms: ${e.message}`, 'more');
    } finally {
      roomPages.moreInFlight = false;
      ui.roomsMore.disabled = false;
    }
  }

  ui.roomsMore.addEventListener('click', loadOlderRooms);

  function renderRoomPages() {
    const shown = roomPages.first.slice();
    if (roomPages.expanded) {
      const ids = new Set(shown.map((r) => r.id));
      const older = [...roomPages.older.values()].filter((r) => !ids.has(r.id));
      older.sort((a, b) => b.id - a.id);
      shown.push(...older);
    }
    const more = (roomPages.expanded ? roomPages.olderNext : roomPages.firstNext) !== null;
    renderRooms(shown, more);
  }

  function renderRooms(rooms, more) {
    const seen = new Set();
    let prev = null;
    for (const r of rooms) {
      if (!r || typeof r.id !== 'number') continue;
      seen.add(r.id);
      let li = roomItems.get(r.id);
      if (!li) {
        li = makeRoomItem(r.id);
        roomItems.set(r.id, li);
      }
      const title = String(r.title ?? '');
      const count = Number(r.memberCount) || 0;
      const name = li.querySelector('.room-name');
      if (name.textContent !== title) name.textContent = title;
      const badge = li.querySelector('.room-members');
      badge.textContent = String(count);
      badge.title = `${count} ${count === 1 ? 'member' : 'members'} online`;
      li.querySelector('button').setAttribute('aria-label', `${title}, ${count} ${count === 1 ? 'member' : 'members'}`);
      // Keep the server's order (newest first) without rebuilding the list.
      const want = prev ? prev.nextElementSibling : ui.roomList.firstElementChild;
      if (want !== li) ui.roomList.insertBefore(li, want);
      prev = li;
    }
    for (const [id, li] of roomItems) {
      if (!seen.has(id)) {
        li.remove();
        roomItems.delete(id);
      }
    }
    ui.roomCount.textContent = roomItems.size ? `${roomItems.size}${more ? '+' : ''}` : '';
    ui.roomsEmpty.hidden = roomItems.size > 0;
    ui.roomsMore.hidden = !more;
    renderActiveRoom();
  }

  function makeRoomItem(id) {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'room-item';
    b.dataset.testid = 'room-item';
    b.dataset.roomId = String(id);
    const hash = document.createElement('span');
    hash.className = 'room-hash';
    hash.setAttribute('aria-hidden', 'true');
    hash.textContent = '#';
    const name = document.createElement('span');
    name.className = 'room-name';
    name.dataset.testid = 'room-name';
    const count = document.createElement('span');
    count.className = 'room-members';
    count.dataset.testid = 'room-members';
    b.append(hash, name, count);
    b.addEventListener('click', () => onRoomClick(id));
    li.append(b);
    return li;
  }

  function renderActiveRoom() {
    for (const [id, li] of roomItems) {
      const b = li.firstElementChild;
      const active = state.room !== null && state.room.id === id;
      b.classList.toggle('active', active);
      if (active) b.setAttribute('aria-current', 'true');
      else b.removeAttribute('aria-current');
    }
  }

  function onRoomClick(id) {
    clearError('rooms', 'request');
    clearError('nickname');
    clearError('title');
    const nick = validateNickname(ui.nickname.value);
    if (nick.error) {
      showError('nickname', 'invalid_nickname', nick.error);
      ui.nickname.focus();
      return;
    }
    joinRoom(id, nick.value);
  }

  // ----------------------------------------------------------------- forms --

  ui.createForm.addEventListener('submit', (e) => {
    e.preventDefault();
    clearError('title');
    clearError('nickname');
    const nick = validateNickname(ui.nickname.value);
    const title = validateTitle(ui.title.value);
    if (nick.error) showError('nickname', 'invalid_nickname', nick.error);
    if (title.error) showError('title', 'invalid_title', title.error);
    if (nick.error) { ui.nickname.focus(); return; }
    if (title.error) { ui.title.focus(); return; }
    if (state.busy) return;
    if (!isOpen()) {
      showError('title', 'not_connected', describeError('not_connected'));
      return;
    }
    setBusy(true);
    send('create', { title: title.value, nickname: nick.value }, { kind: 'create' });
  });

  ui.nickname.addEventListener('input', () => {
    clearError('nickname');
    saveNickname(ui.nickname.value.trim());
  });
  ui.title.addEventListener('input', () => clearError('title'));

  ui.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    sendMessage();
  });

  ui.input.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' || e.shiftKey || e.isComposing || e.keyCode === 229) return;
    e.preventDefault();
    sendMessage();
  });

  ui.input.addEventListener('input', () => {
    if (ui.messageError.dataset.code === 'invalid_content') clearError('message');
    autosize();
    renderCounter();
  });

  ui.leave.addEventListener('click', leaveRoom);

  function sendMessage() {
    const raw = ui.input.value;
    if (!raw.trim()) return; // nothing to send: not an error
    const c = validateContent(raw);
    if (c.error) {
      showError('message', 'invalid_content', c.error);
      return;
    }
    if (!state.room || !state.live || !isOpen()) {
      showError('message', 'not_connected', 'Not connected right now. Your message is kept here; send it once you’re back online.');
      return;
    }
    const ref = send('chat', { content: c.value }, { kind: 'chat', content: raw });
    if (!ref) {
      showError('message', 'not_connected', describeError('not_connected'));
      return;
    }
    clearError('message');
    ui.input.value = '';
    autosize();
    renderCounter();
  }

  function autosize() {
    ui.input.style.height = 'auto';
    ui.input.style.height = `${Math.min(ui.input.scrollHeight, 200)}px`;
  }

  function renderCounter() {
    const n = charCount(ui.input.value.trim());
    const show = n > limits.content * 0.8;
    ui.counter.textContent = show ? `${n} / ${limits.content}` : '';
    ui.counter.classList.toggle('over', n > limits.content);
  }

  // ----------------------------------------------------------- persistence --

  function saveNickname(n) {
    try {
      if (n) localStorage.setItem(NICKNAME_KEY, n);
    } catch (_) { /* storage may be disabled */ }
  }

  function loadNickname() {
    try { return localStorage.getItem(NICKNAME_KEY) || ''; } catch (_) { return ''; }
  }

  // ----------------------------------------------------------------- start --

  let pendingDeepLink = null;
  {
    const m = /^#room=(\d{1,15})$/.exec(location.hash);
    if (m) pendingDeepLink = Number(m[1]);
  }

  ui.nickname.value = loadNickname();
  setBusy(false);
  refreshRooms();
  setInterval(() => { if (!document.hidden) refreshRooms(); }, ROOMS_REFRESH_MS);
  connect();
})();
