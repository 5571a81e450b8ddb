// The chat page: one WebSocket to this page's own origin, rooms with sequence numbers, recovery
// after a reconnect, matchmaking. Plain browser JavaScript, no build step, no dependencies.
//
// Everything that came from another user (nicks, messages, room names) reaches the page through
// textContent / text nodes only, never as HTML.
(() => {
  'use strict';

  const LOBBY = 'lobby';
  const PAIR_PREFIX = 'pair:';
  const KEY = 'syncws-chat.';
  const ROOM_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
  const MAX_NICK = 32;
  const HISTORY_PAGE = 50;
  const TYPING_EVERY_MS = 3000;
  const TYPING_SHOWN_MS = 4000;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const CONNECT_TIMEOUT_MS = 15000;
  const STABLE_MS = 5000;
  const GROUP_MS = 5 * 60 * 1000;
  // The room list (and the lobby's online count, which has no presence events) is asked for
  // this often while the page is visible and its user was active lately: a tab left alone
  // stops asking, so the server's idle timeout still ends its connection.
  const ROOMS_EVERY_MS = 10000;
  const ROOMS_WHILE_INACTIVE_MS = 5 * 60 * 1000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'),
    reconnectNow: $('reconnect-now'),
    nickForm: $('nick-form'),
    nick: $('nick'),
    notices: $('notices'),
    rooms: $('rooms'),
    joinForm: $('join-form'),
    joinRoom: $('join-room'),
    directory: $('directory'),
    roomsRefresh: $('rooms-refresh'),
    matchStatus: $('match-status'),
    matchBtn: $('match-btn'),
    nextBtn: $('next-btn'),
    unmatchBtn: $('unmatch-btn'),
    roomTitle: $('room-title'),
    roomInfo: $('room-info'),
    messages: $('messages'),
    jump: $('jump'),
    typing: $('typing'),
    composeForm: $('compose-form'),
    compose: $('compose'),
    send: $('send'),
    members: $('members'),
    memberCount: $('member-count'),
    membersHint: $('members-hint'),
    side: $('side'),
    people: $('people'),
    toggleSide: $('toggle-side'),
    toggleMembers: $('toggle-members'),
    scrim: $('scrim'),
    topNick: $('top-nick'),
    sideNick: $('side-nick'),
  };

  // ---------------------------------------------------------------------------------------------
  // Small helpers

  /** An element: `attrs` are attributes (`class`, `data-*`, ...) or `on*` listeners; children
   *  that are strings become text nodes (never HTML). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      el.append(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    }
    return el;
  }

  function storageGet(name) {
    try {
      return localStorage.getItem(KEY + name);
    } catch (_) {
      return null;
    }
  }

  function storageSet(name, value) {
    try {
      if (value === null) localStorage.removeItem(KEY + name);
      else localStorage.setItem(KEY + name, value);
    } catch (_) {
      /* private mode or full: remembering is a convenience */
    }
  }

  function randomId() {
    const bytes = new Uint8Array(8);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  /** Why a nickname would be refused, or null (the server's rule: 1 to 32 characters, no
   *  control characters, no spaces at the edges). */
  function nickProblem(nick) {
    const n = Array.from(nick).length;
    if (n === 0) return 'a nickname cannot be empty';
    if (n > MAX_NICK) return `nicknames are at most ${MAX_NICK} characters`;
    if (/\p{Cc}/u.test(nick)) return 'nicknames cannot hold control characters';
    if (nick.trim() !== nick) return 'nicknames cannot start or end with a space';
    return null;
  }

  function isPair(name) {
    return name.startsWith(PAIR_PREFIX);
  }

  function hue(text) {
    let x = 0;
    for (const ch of text) x = (x * 31 + ch.codePointAt(0)) >>> 0;
    return x % 360;
  }

  const utf8 = new TextEncoder();
  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

  // ---------------------------------------------------------------------------------------------
  // State

  const params = new URLSearchParams(location.search);
  const token = params.get('token');
  // The prefix of this page's cids: new on every page load and never stored, so a cid says
  // nothing about who sent it across nicks, sessions or stranger chats. (Older versions kept
  // one in localStorage: forgotten here.)
  const clientId = randomId();
  storageSet('client', null);

  const state = {
    ws: null,
    connected: false, // welcomed on an open socket
    everConnected: false,
    myNick: '',
    wantedNick: '',
    myId: null,
    epoch: null,
    limits: { max_message: 65536, rate: 20, burst: 40 },
    rooms: new Map(), // name -> room
    order: [], // names of the rooms the user is in, in the order shown
    current: LOBBY,
    pending: new Map(), // cid -> own message not acknowledged yet (insertion order = send order)
    cidCounter: 0,
    pendingJoins: [], // rooms whose `joined` has not come yet, oldest first
    lobbyAuto: false, // the server's own `joined lobby` of this connection is still to come
    attempt: 0,
    retryAt: 0,
    retryTimer: 0,
    countdownTimer: 0,
    connectTimer: 0,
    stableTimer: 0,
    livenessTimer: 0,
    idleClosed: false,
    nextMinDelay: 0,
    match: matchState('idle'),
    bucket: { tokens: 20, at: performance.now() },
    outq: [],
    outTimer: 0,
    typingSentAt: new Map(),
    typingTimer: 0,
    directory: [],
    roomsTimer: 0,
    roomsPollTimer: 0,
    lastInput: performance.now(),
  };

  function makeRoom(name) {
    const view = h('div', { class: 'room-view', 'data-room': name });
    const top = h('div', { class: 'top' });
    view.append(top);
    const room = {
      name,
      pair: isPair(name),
      peer: null,
      ended: false,
      joined: false, // acknowledged on this connection
      joining: false,
      settling: false, // waiting for a replay or the first history page before sending
      replayUntil: 0,
      epoch: null,
      lastSeq: 0, // highest seq shown
      headSeq: 0, // the room's last seq as far as we know
      synced: false, // every message up to lastSeq is here (so `since` can recover the rest)
      members: [],
      count: 0,
      view,
      top,
      items: [], // {key, el} in display order
      bySeq: new Map(),
      gaps: [], // "could not recover" markers: {after: seq, el}
      more: false,
      historyReq: null, // 'initial' | 'older'
      unread: 0,
      typing: new Map(), // nick -> time it stops showing
      scrollTop: null,
      stick: true,
    };
    state.rooms.set(name, room);
    renderTop(room);
    return room;
  }

  function roomOf(name) {
    return state.rooms.get(name) || null;
  }

  function currentRoom() {
    return roomOf(state.current);
  }

  function savedRooms() {
    storageSet('rooms', JSON.stringify(state.order.filter((r) => !isPair(r))));
    if (!isPair(state.current)) storageSet('current', state.current);
  }

  // ---------------------------------------------------------------------------------------------
  // Notices

  const NOTICE_LIFE = { info: 6000, warn: 20000, error: 60000 };

  /** Show a notice; `code` is the error or close code (data-code). */
  function notice(code, title, detail, kind = 'error') {
    const close = h('button', { type: 'button', class: 'dismiss', 'aria-label': 'Dismiss', title: 'Dismiss' }, '×');
    const el = h(
      'div',
      { class: `notice ${kind}`, 'data-code': String(code), role: kind === 'info' ? 'status' : 'alert' },
      h('div', { class: 'notice-body' }, h('strong', {}, title), detail ? h('span', {}, detail) : null),
      close,
    );
    const remove = () => {
      clearTimeout(timer);
      el.remove();
    };
    close.addEventListener('click', remove);
    const timer = setTimeout(remove, NOTICE_LIFE[kind] || 20000);
    ui.notices.prepend(el);
    while (ui.notices.children.length > 5) ui.notices.lastElementChild.remove();
    return el;
  }

  const CLOSE_TEXT = {
    4008: ['Your connection fell behind', 'The server could not send to this page fast enough (slow consumer). Reconnecting and recovering what you missed…'],
    1008: ['Disconnected for sending too fast', 'The server closed the connection (policy violation: rate limit). Reconnecting shortly…'],
    1009: ['A message was too big', 'The server closed the connection because a message passed its size limit. Reconnecting…'],
    1001: ['The server is restarting', 'It closed every connection (going away). Reconnecting and recovering missed messages…'],
    1006: ['Connection lost', 'The connection ended without a close frame. Reconnecting…'],
    1011: ['Server error', 'The server hit an internal error. Reconnecting…'],
    1012: ['The server restarted its message store', 'Its store lost its data and began again. Reconnecting; earlier messages may not be recovered…'],
    1013: ['Server busy', 'The server asked to try again later. Reconnecting…'],
  };

  const ERROR_TITLE = {
    rate_limited: 'Slow down',
    too_many_rooms: 'Too many rooms',
    not_member: 'Not in that room',
    private_room: 'Private room',
    peer_left: 'Your partner has left',
    unavailable: 'The server could not do that just now',
    unconfirmed: 'Not confirmed',
    bad_text: 'Message refused',
    no_room: 'No room',
    bad_room: 'Bad room name',
    bad_nick: 'Nickname refused',
    bad_request: 'Request refused',
    bad_json: 'Request refused',
    unknown_op: 'Request refused',
    already_matched: 'Already matched',
    binary_unsupported: 'Request refused',
  };

  // ---------------------------------------------------------------------------------------------
  // Connection

  function wsUrl() {
    const q = new URLSearchParams();
    if (token) q.set('token', token);
    else if (state.wantedNick) q.set('nick', state.wantedNick);
    const qs = q.toString();
    return (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/' + (qs ? '?' + qs : '');
  }

  function clearRetry() {
    clearTimeout(state.retryTimer);
    clearInterval(state.countdownTimer);
    state.retryTimer = 0;
    state.countdownTimer = 0;
    state.retryAt = 0;
    ui.reconnectNow.hidden = true;
  }

  function connect() {
    clearRetry();
    state.idleClosed = false;
    if (state.ws) return;
    setStatus(state.everConnected ? `reconnecting… (attempt ${state.attempt})` : 'connecting…', 'wait');
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (e) {
      notice('connect', 'Cannot connect', String(e && e.message ? e.message : e));
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    state.connectTimer = setTimeout(() => {
      if (ws === state.ws && ws.readyState === WebSocket.CONNECTING) abandon(ws, 'no answer from the server');
    }, CONNECT_TIMEOUT_MS);
    ws.addEventListener('open', () => {
      if (ws === state.ws) onOpen();
    });
    ws.addEventListener('message', (e) => {
      if (ws !== state.ws || typeof e.data !== 'string') return;
      let ev;
      try {
        ev = JSON.parse(e.data);
      } catch (_) {
        return;
      }
      if (ev && typeof ev === 'object') {
        handle(ev);
        publish();
      }
    });
    ws.addEventListener('close', (e) => {
      if (ws === state.ws) onClose(e, ws.everOpen === true);
    });
    ws.addEventListener('open', () => {
      ws.everOpen = true;
    });
  }

  /** Give up on a socket that does not answer: close it, and do not wait for its close
   *  handshake (over a dead connection that can take minutes). */
  function abandon(ws, reason) {
    const wasOpen = ws.everOpen === true;
    try {
      ws.close(wasOpen ? 4000 : undefined, wasOpen ? reason : undefined);
    } catch (_) {
      /* already closing */
    }
    if (ws === state.ws) onClose({ code: 1006, reason }, wasOpen);
  }

  function onOpen() {
    clearTimeout(state.connectTimer);
    // Until `welcome` tells the server's limits, the page counts what it spends.
    state.bucket = { tokens: bucketSize(), at: performance.now(), spent: 0 };
    state.lobbyAuto = true;
    state.pendingJoins = [];
    clearTimeout(state.stableTimer);
    state.stableTimer = setTimeout(() => {
      state.attempt = 0;
    }, STABLE_MS);
    if (state.wantedNick && !token) sendFrame({ op: 'hello', nick: state.wantedNick });
    // Rejoin every room, each from the last message we have of it.
    for (const name of state.order) {
      const room = roomOf(name);
      if (!room || room.pair) continue;
      if (name === LOBBY && !room.synced) continue; // the server puts us there itself
      sendJoin(room);
    }
    if (state.match.resume) {
      state.match.resume = false;
      sendFrame({ op: 'match', cid: MATCH_CID });
      state.match.state = 'searching';
      renderMatch();
    }
    publish();
  }

  function sendJoin(room) {
    const join = { op: 'join', room: room.name };
    if (room.synced) {
      join.since = room.lastSeq;
      if (room.epoch) join.epoch = room.epoch;
    }
    room.joining = true;
    room.sinceSent = room.synced ? room.lastSeq : null;
    state.pendingJoins.push(room.name);
    sendFrame(join);
    renderRoomHead();
  }

  function onClose(e, wasOpen) {
    clearTimeout(state.roomsPollTimer);
    clearTimeout(state.connectTimer);
    clearTimeout(state.stableTimer);
    clearTimeout(state.livenessTimer);
    clearTimeout(state.outTimer);
    state.outq = [];
    state.ws = null;
    const wasConnected = state.connected;
    state.connected = false;
    state.pendingJoins = [];
    for (const room of state.rooms.values()) {
      room.joined = false;
      room.joining = false;
      room.settling = false;
      room.historyReq = null;
      room.typing.clear();
      if (room.pair && !room.ended) endPair(room, 'The connection was lost, which ended this conversation.');
    }
    if (state.match.state === 'queued' || state.match.state === 'searching' || state.match.state === 'matched') {
      state.match.resume = true;
      state.match.state = 'idle';
      state.match.partnerLeft = false;
    }
    for (const p of state.pending.values()) {
      if (p.state === 'sent') setPendingState(p, 'queued');
    }
    const code = e.code;
    const reason = e.reason || '';
    if (wasOpen) {
      if (code === 1000 && /idle/i.test(reason)) {
        state.idleClosed = true;
        notice(code, 'Disconnected for inactivity', 'The server closes connections that stay quiet too long. Type a message or press Reconnect to come back.', 'warn');
      } else if (CLOSE_TEXT[code]) {
        const [title, detail] = CLOSE_TEXT[code];
        let more = detail;
        if (code === 1009 && state.limits.max_message) more += ` (limit: ${state.limits.max_message} bytes)`;
        notice(code, title, more, code === 1001 || code === 1006 ? 'warn' : 'error');
      } else if (wasConnected || code !== 1000) {
        notice(code, 'Disconnected', `Close code ${code}${reason ? ': ' + reason : ''}. Reconnecting…`, 'warn');
      }
    }
    if (code === 1008) state.nextMinDelay = 5000;
    renderAll();
    if (state.idleClosed) {
      setStatus('disconnected (idle)', 'bad');
      ui.reconnectNow.hidden = false;
      ui.reconnectNow.textContent = 'Reconnect';
    } else {
      scheduleReconnect();
    }
    publish();
  }

  function scheduleReconnect() {
    clearRetry();
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
    let delay = base * (0.7 + Math.random() * 0.6);
    delay = Math.max(delay, state.nextMinDelay);
    state.nextMinDelay = 0;
    state.attempt += 1;
    state.retryAt = performance.now() + delay;
    state.retryTimer = setTimeout(connect, delay);
    const tick = () => {
      const left = Math.max(0, state.retryAt - performance.now());
      setStatus(`reconnecting in ${Math.ceil(left / 1000)} s`, 'wait');
    };
    tick();
    state.countdownTimer = setInterval(tick, 250);
    ui.reconnectNow.hidden = false;
    ui.reconnectNow.textContent = 'Reconnect now';
  }

  function reconnectSoon() {
    if (!state.ws) connect();
  }

  /** After an idle close the page waits for the user: anything they do reconnects. */
  function wake() {
    if (state.idleClosed) reconnectSoon();
  }

  function setStatus(text, kind) {
    ui.status.textContent = text;
    ui.status.className = 'status ' + kind;
  }

  // Outgoing frames keep under the server's rate limit (a token bucket like the server's, a
  // little slower), so a burst of typing never gets the page refused or closed. Each op costs
  // what the server charges for it (welcome.limits.costs): a message one token, a history page
  // or the room list more.
  function bucketSize() {
    return Math.max(1, state.limits.burst || 40);
  }

  function opCost(obj) {
    const costs = state.limits.costs || {};
    let cost = 1;
    if (obj.op === 'history') {
      const limit = Math.min(Math.max(Number(obj.limit) || 50, 1), 200);
      cost = 1 + Math.ceil(limit / 25) * (costs.history_per_25 ?? 1);
    } else if (obj.op === 'join' && obj.since !== undefined && obj.since !== null) {
      cost = costs.join_since ?? 5;
    } else if (obj.op === 'rooms') {
      cost = costs.rooms ?? 5;
    } else if (obj.op === 'who') {
      cost = costs.who ?? 2;
    }
    // The server takes at most a full bucket for one op.
    return Math.min(cost, bucketSize());
  }

  function bucketTake(cost) {
    const now = performance.now();
    const b = state.bucket;
    const rate = Math.max(0.5, (state.limits.rate || 20) * 0.8);
    b.tokens = Math.min(bucketSize(), b.tokens + ((now - b.at) / 1000) * rate);
    b.at = now;
    if (b.tokens >= cost) {
      b.tokens -= cost;
      b.spent = (b.spent || 0) + cost;
      return 0;
    }
    return ((cost - b.tokens) / rate) * 1000;
  }

  /** Send a protocol frame, paced; `droppable` frames (typing) are skipped instead of waiting. */
  function sendFrame(obj, droppable = false) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    if (state.outq.length) {
      if (droppable) return false;
      state.outq.push(obj);
      return true;
    }
    const wait = bucketTake(opCost(obj));
    if (wait === 0) {
      ws.send(JSON.stringify(obj));
      return true;
    }
    if (droppable) return false;
    state.outq.push(obj);
    state.outTimer = setTimeout(drainOut, Math.ceil(wait));
    return true;
  }

  function drainOut() {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      state.outq = [];
      return;
    }
    while (state.outq.length) {
      const wait = bucketTake(opCost(state.outq[0]));
      if (wait > 0) {
        state.outTimer = setTimeout(drainOut, Math.ceil(wait));
        return;
      }
      ws.send(JSON.stringify(state.outq.shift()));
    }
  }

  /** Make sure the connection is alive (after the tab was hidden or the network came back). */
  function checkLiveness() {
    const ws = state.ws;
    if (!state.connected || !ws) return;
    clearTimeout(state.livenessTimer);
    sendFrame({ op: 'ping' });
    state.livenessTimer = setTimeout(() => {
      if (ws === state.ws) abandon(ws, 'no answer to ping');
    }, 8000);
  }

  // ---------------------------------------------------------------------------------------------
  // Events from the server

  function handle(ev) {
    switch (ev.ev) {
      case 'welcome':
        return onWelcome(ev);
      case 'joined':
        return onJoined(ev);
      case 'msg':
        return onMsg(ev);
      case 'history':
        return onHistory(ev);
      case 'presence':
        return onPresence(ev);
      case 'typing':
        return onTyping(ev);
      case 'rooms':
        return onRooms(ev);
      case 'who':
        return onWho(ev);
      case 'queued':
        return onQueued(ev);
      case 'matched':
        return onMatched(ev);
      case 'peer_left':
        return onPeerLeft(ev);
      case 'unmatched':
        state.match = { ...state.match, state: 'idle', room: null, peer: null, partnerLeft: false };
        return renderMatch();
      case 'pong':
        clearTimeout(state.livenessTimer);
        return;
      case 'error':
        return onError(ev);
      case 'gap':
        return onGap(ev);
      default:
        return;
    }
  }

  function onWelcome(ev) {
    const old = state.myNick;
    const first = !state.connected;
    state.myNick = String(ev.nick);
    state.myId = ev.id;
    if (ev.limits && typeof ev.limits === 'object') state.limits = { ...state.limits, ...ev.limits };
    // The server's bucket holds `burst`, less what was sent before its limits were known.
    state.bucket.tokens = Math.min(state.bucket.tokens, Math.max(0, bucketSize() - (state.bucket.spent || 0)));
    state.connected = true;
    const wasReconnect = state.everConnected && first;
    state.everConnected = true;
    if (document.activeElement !== ui.nick) ui.nick.value = state.myNick;
    if (old && old !== state.myNick) {
      for (const room of state.rooms.values()) {
        const i = room.members.indexOf(old);
        if (i >= 0) room.members[i] = state.myNick;
      }
      if (!first) notice('nick', `You are now ${state.myNick}`, null, 'info');
    }
    setStatus(`connected as ${state.myNick}`, 'ok');
    ui.reconnectNow.hidden = true;
    if (first) {
      pollRooms();
      if (wasReconnect) notice('reconnected', 'Reconnected', 'Rejoining your rooms and recovering messages.', 'info');
    }
    renderMembers();
  }

  function onJoined(ev) {
    const name = String(ev.room);
    const i = state.pendingJoins.indexOf(name);
    const asked = i >= 0;
    if (asked) state.pendingJoins.splice(i, 1);
    let room = roomOf(name);
    if (!room) {
      // A room we did not ask for: the lobby, a pair room made by matchmaking, or a room the
      // user left before its `joined` came (the `leave` is already on its way).
      if (name !== LOBBY && !isPair(name)) return;
      room = makeRoom(name);
      addToOrder(name, isPair(name) ? undefined : 0);
    }
    const auto = name === LOBBY && state.lobbyAuto;
    if (name === LOBBY) state.lobbyAuto = false;
    room.members = Array.isArray(ev.members) ? ev.members.map(String) : [];
    room.count = typeof ev.count === 'number' ? ev.count : room.members.length;
    if (auto && room.joining) {
      // The server's own lobby join; our `join` with `since` follows and answers for recovery.
      renderMembers();
      return;
    }
    room.joined = true;
    room.joining = false;
    const seq = Number(ev.seq) || 0;
    const epoch = ev.epoch ? String(ev.epoch) : null;
    const since = asked ? room.sinceSent : null;
    room.sinceSent = null;
    const storeChanged = room.epoch && epoch && room.epoch !== epoch;
    if (storeChanged || seq < room.lastSeq) {
      // Another store (reset data directory): our numbers mean nothing there.
      resetRoom(room);
      addGap(room, 0, 'The server’s message store was reset: earlier messages could not be recovered.');
      if (since !== null) notice('recovery', `#${name}: history was reset`, 'Messages from before could not be recovered.', 'warn');
    } else if (since !== null && ev.recovered === false) {
      const first = typeof ev.first === 'number' ? ev.first : null;
      let lost;
      if (ev.reason === 'too_much') {
        lost = 'More was missed than the server replays at once: scroll up to read it.';
      } else if (ev.reason === 'unavailable') {
        lost = 'The server could not read its history just now.';
      } else {
        lost = first !== null && first > since + 1 ? `${first - since - 1} message${first - since - 1 === 1 ? '' : 's'} no longer kept by the server.` : 'The server no longer keeps them.';
      }
      addGap(room, since, 'Some messages could not be recovered. ' + lost);
      notice('recovery', `#${name}: some messages could not be recovered`, lost, 'warn');
      room.synced = false;
    }
    room.epoch = epoch;
    state.epoch = epoch;
    room.headSeq = Math.max(room.headSeq, seq);
    if (since !== null && ev.recovered === true && !storeChanged) {
      if (seq > room.lastSeq) {
        room.settling = true;
        room.replayUntil = seq;
        // The replay follows at once; should it not, messages must not wait for ever.
        const ws = state.ws;
        setTimeout(() => {
          if (ws === state.ws && room.settling && room.joined) settle(room);
        }, 10000);
      } else {
        settle(room);
      }
    } else if (room.bySeq.size === 0 || !room.synced) {
      if (seq > 0) {
        room.settling = true;
        room.historyReq = 'initial';
        sendFrame({ op: 'history', room: name, limit: HISTORY_PAGE });
      } else {
        room.more = false;
        settle(room);
      }
    } else {
      settle(room);
    }
    if (room.pair && state.match.room === name && state.match.peer) room.peer = state.match.peer;
    if (asked && !room.pair) refreshDirectorySoon();
    renderTop(room);
    renderRooms();
    if (room.name === state.current) {
      renderMembers();
      renderRoomHead();
      renderCompose();
    }
  }

  /** The room is caught up on this connection: send what waited for it. */
  function settle(room) {
    room.settling = false;
    room.synced = true;
    for (const p of state.pending.values()) {
      if (p.room === room.name && p.state === 'queued') transmit(p);
    }
    renderTop(room);
  }

  function onMsg(ev) {
    const room = roomOf(String(ev.room));
    if (!room) return;
    const isNew = addMessage(room, ev);
    if (isNew) {
      if (!room.pair) updateDirectory(room.name, Number(ev.seq));
      room.typing.delete(String(ev.from));
      if (room.name === state.current) renderTyping();
      if (!isOwnCid(ev.cid)) {
        if (room.name !== state.current || document.hidden) {
          room.unread += 1;
          renderRooms();
        }
        if (room.name === state.current && !room.stick) ui.jump.hidden = false;
      }
    }
    afterAdd(room);
  }

  function onHistory(ev) {
    const room = roomOf(String(ev.room));
    if (!room) return;
    const msgs = Array.isArray(ev.msgs) ? ev.msgs : [];
    const older = !ev.replay && room.historyReq === 'older';
    const box = ui.messages;
    const showing = room.name === state.current;
    const before = showing ? box.scrollHeight - box.scrollTop : 0;
    for (const m of msgs) addMessage(room, { ...m, room: room.name });
    if (ev.replay) {
      if (!ev.more || room.lastSeq >= room.replayUntil) settle(room);
    } else {
      const initial = room.historyReq === 'initial';
      room.historyReq = null;
      room.more = !!ev.more;
      if (initial) {
        room.stick = true;
        settle(room);
      }
    }
    updateCursor(room);
    renderTop(room);
    if (showing) {
      if (older) box.scrollTop = box.scrollHeight - before;
      else if (room.stick) scrollToBottom();
      fillView(room);
    }
    afterAdd(room, older);
  }

  function onPresence(ev) {
    const room = roomOf(String(ev.room));
    if (!room) return;
    const nick = String(ev.nick);
    if (ev.state === 'joined') {
      room.members.push(nick);
      room.count = room.members.length;
      // In a pair, `matched` says it better.
      if (nick !== state.myNick && !room.pair) addSystem(room, `${nick} joined`);
    } else if (ev.state === 'left') {
      const i = room.members.indexOf(nick);
      if (i >= 0) room.members.splice(i, 1);
      room.count = room.members.length;
      room.typing.delete(nick);
      addSystem(room, `${nick} left`);
    } else if (ev.state === 'renamed' && typeof ev.old === 'string') {
      const i = room.members.indexOf(ev.old);
      if (i >= 0) room.members[i] = nick;
      room.typing.delete(ev.old);
      addSystem(room, `${ev.old} is now ${nick}`);
    }
    if (!room.pair && room.name !== LOBBY && ev.state !== 'renamed') updateDirectory(room.name, undefined, room.members.length);
    if (room.name === state.current) {
      renderMembers();
      renderTyping();
    }
  }

  function onTyping(ev) {
    const room = roomOf(String(ev.room));
    if (!room) return;
    const nick = String(ev.nick);
    if (nick === state.myNick) return;
    room.typing.set(nick, performance.now() + TYPING_SHOWN_MS);
    if (room.name === state.current) renderTyping();
  }

  function onRooms(ev) {
    state.directory = Array.isArray(ev.rooms) ? ev.rooms : [];
    const lobby = state.directory.find((r) => r && r.room === LOBBY);
    const lr = roomOf(LOBBY);
    if (lobby && lr && typeof lobby.members === 'number') {
      lr.count = lobby.members;
      if (state.current === LOBBY) renderMembers();
    }
    renderDirectory();
  }

  /** Ask for the room list now, and again every ROOMS_EVERY_MS while the page is visible and
   *  in use (visibilitychange and input start it again). */
  function pollRooms() {
    clearTimeout(state.roomsPollTimer);
    state.roomsPollTimer = 0;
    if (!state.connected || document.hidden) return;
    if (performance.now() - state.lastInput > ROOMS_WHILE_INACTIVE_MS) return;
    sendFrame({ op: 'rooms' }, true);
    state.roomsPollTimer = setTimeout(pollRooms, ROOMS_EVERY_MS);
  }

  /** The page's user did something: a room list that stopped for inactivity starts again. */
  function active() {
    state.lastInput = performance.now();
    if (!state.roomsPollTimer) pollRooms();
  }

  /** Keep a room's line in the room list current from its own events: its last seq from a
   *  `msg`, its members from presence. */
  function updateDirectory(name, seq, members) {
    const entry = state.directory.find((r) => r && r.room === name);
    if (!entry) return;
    const n = Number(entry.seq) || 0;
    if (seq !== undefined && seq > n) entry.seq = seq;
    if (members !== undefined) entry.members = members;
    if (entry.seq === n && members === undefined) return;
    const li = [...ui.directory.children].find((el) => el.getAttribute('data-room') === name);
    const span = li && li.querySelector('.n');
    if (span) span.textContent = directoryCounts(entry);
  }

  /** Ask for the room list once things settle (many joins at a reconnect ask once). */
  function refreshDirectorySoon() {
    clearTimeout(state.roomsTimer);
    state.roomsTimer = setTimeout(() => {
      if (state.connected) sendFrame({ op: 'rooms' });
    }, 300);
  }

  function onWho(ev) {
    const room = roomOf(String(ev.room));
    if (!room || !Array.isArray(ev.members)) return;
    if (room.name === LOBBY) {
      room.count = ev.members.length;
    } else {
      room.members = ev.members.map(String);
      room.count = room.members.length;
    }
    if (room.name === state.current) renderMembers();
  }

  function onQueued(ev) {
    state.match.state = 'queued';
    state.match.pos = Number(ev.pos) || 0;
    renderMatch();
  }

  function onMatched(ev) {
    const name = String(ev.room);
    // Conversations that ended before this one are closed now.
    for (const r of [...state.order]) {
      const room = roomOf(r);
      if (room && room.pair && room.ended && r !== name) dropRoom(r);
    }
    const room = roomOf(name) || makeRoom(name);
    addToOrder(name);
    room.peer = String(ev.peer);
    room.ended = false;
    state.match = matchState('matched', name, room.peer);
    addSystem(room, `You are now talking with ${room.peer}. Say hi!`);
    switchTo(name);
    renderMatch();
  }

  function onPeerLeft(ev) {
    const name = String(ev.room);
    const room = roomOf(name);
    const peer = (room && room.peer) || state.match.peer || 'Your partner';
    if (room) endPair(room, `${peer} left the conversation.`);
    state.match = { state: 'queued', pos: state.match.pos, room: null, peer: null, partnerLeft: true, resume: false };
    notice('peer_left', 'Your partner left', `${peer} left the conversation. Looking for someone new…`, 'warn');
    renderMatch();
    renderRooms();
    if (name === state.current) {
      renderRoomHead();
      renderMembers();
      renderCompose();
    }
  }

  function endPair(room, why) {
    room.ended = true;
    room.joined = false;
    room.typing.clear();
    addSystem(room, why);
    for (const p of [...state.pending.values()]) {
      if (p.room === room.name) failPending(p, 'not sent: the conversation has ended');
    }
  }

  /** Messages the server will never deliver (they were gone from a cluster's log before this
   *  server could pass them on): a marker where they were, and the conversation goes on. */
  function onGap(ev) {
    const room = roomOf(String(ev.room));
    if (!room) return;
    const after = Number(ev.after) || 0;
    const next = Number(ev.next) || after + 1;
    const n = Math.max(next - after - 1, 1);
    const what = `${n} message${n === 1 ? '' : 's'}`;
    addGap(room, after, `${what} could not be delivered: the server no longer had them.`);
    notice('gap', `#${room.name}: ${what} missed`, 'The server no longer had them; the conversation goes on after them.', 'warn');
  }

  function onError(ev) {
    const code = String(ev.code || 'error');
    const message = String(ev.message || '');
    const cid = typeof ev.cid === 'string' ? ev.cid : null;
    const p = cid ? state.pending.get(cid) : null;
    if (p && code === 'unconfirmed') failPending(p, 'not confirmed: it may have been sent, and then it shows up here');
    else if (p) failPending(p, `not sent: ${message}`);
    // A refused `match` (ours, or the search the server went on with after a partner left:
    // an `unavailable` about no room) ends the search.
    const aboutMatching = ev.cid === MATCH_CID || (code === 'unavailable' && typeof ev.room !== 'string');
    if (aboutMatching && state.match.state === 'searching') {
      state.match = matchState('idle');
      renderMatch();
      publish();
    }
    if (code === 'bad_room' || code === 'too_many_rooms' || code === 'private_room') {
      // The server names the room it refused; older servers did not, and answered joins in order.
      const name = typeof ev.room === 'string' ? ev.room : state.pendingJoins[0];
      const i = state.pendingJoins.indexOf(name);
      if (i >= 0) state.pendingJoins.splice(i, 1);
      if (name && roomOf(name) && !roomOf(name).joined) dropRoom(name);
    }
    notice(code, ERROR_TITLE[code] || 'Error', message || code);
  }

  // ---------------------------------------------------------------------------------------------
  // Messages in a room

  function isOwnCid(cid) {
    return typeof cid === 'string' && cid.startsWith(clientId + '-');
  }

  /** Add a stored message (live, history or replay) once; returns whether it was new. */
  function addMessage(room, m) {
    const seq = Number(m.seq);
    if (!Number.isFinite(seq) || seq <= 0) return false;
    const cid = typeof m.cid === 'string' ? m.cid : null;
    const p = cid ? state.pending.get(cid) : null;
    let isNew = false;
    if (p && p.room === room.name) {
      state.pending.delete(cid);
      removeItem(room, p.el);
      if (!room.bySeq.has(seq)) {
        deliver(p.el, m);
        insertItem(room, seq, p.el);
        room.bySeq.set(seq, p.el);
        isNew = true;
      }
    } else if (!room.bySeq.has(seq)) {
      const el = messageElement(room.name, m, isOwnCid(cid));
      insertItem(room, seq, el);
      room.bySeq.set(seq, el);
      isNew = true;
    }
    if (seq > room.lastSeq) room.lastSeq = seq;
    if (seq > room.headSeq) room.headSeq = seq;
    // A hole closed by this message takes its marker with it.
    for (const gap of room.gaps) {
      if (gap.after > 0 && room.bySeq.has(gap.after) && room.bySeq.has(gap.after + 1)) {
        removeItem(room, gap.el);
        room.gaps = room.gaps.filter((g) => g !== gap);
        break;
      }
    }
    return isNew;
  }

  /** Where to page back from: the oldest message of the unbroken run ending at the newest. */
  function updateCursor(room) {
    const seqs = [...room.bySeq.keys()].sort((a, b) => a - b);
    if (!seqs.length) {
      room.cursor = null;
      return;
    }
    let i = seqs.length - 1;
    while (i > 0 && seqs[i - 1] === seqs[i] - 1) i -= 1;
    room.cursor = seqs[i];
    if (room.cursor <= 1) room.more = false;
  }

  function linkified(text) {
    const frag = document.createDocumentFragment();
    const re = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]}]/g;
    let last = 0;
    let m;
    while ((m = re.exec(text))) {
      if (m.index > last) frag.append(document.createTextNode(text.slice(last, m.index)));
      frag.append(h('a', { href: m[0], target: '_blank', rel: 'noopener noreferrer nofollow' }, m[0]));
      last = m.index + m[0].length;
    }
    if (last < text.length) frag.append(document.createTextNode(text.slice(last)));
    return frag;
  }

  function messageElement(roomName, m, own, cid) {
    const from = String(m.from ?? '');
    const el = h(
      'div',
      { class: own ? 'msg own' : 'msg', 'data-room': roomName, 'data-from': from },
      h('span', { class: 'avatar', 'aria-hidden': 'true' }, Array.from(from)[0] || '?'),
      h(
        'div',
        { class: 'bubble' },
        h('div', { class: 'meta' }, h('span', { class: 'from' }, from), h('time', { class: 'time' }), h('span', { class: 'state' })),
        h('div', { class: 'text' }, linkified(String(m.text ?? ''))),
      ),
    );
    el.style.setProperty('--hue', String(hue(from)));
    if (own && (cid || m.cid)) el.setAttribute('data-cid', String(cid || m.cid));
    if (m.seq) deliver(el, m);
    return el;
  }

  function deliver(el, m) {
    el.setAttribute('data-seq', String(m.seq));
    el.classList.remove('pending', 'queued', 'failed');
    const ts = Number(m.ts);
    el.dataset.ts = String(ts);
    const t = el.querySelector('.time');
    if (Number.isFinite(ts) && ts > 0) {
      const d = new Date(ts);
      t.textContent = timeFormat.format(d);
      t.setAttribute('datetime', d.toISOString());
      t.title = fullFormat.format(d);
    }
    const st = el.querySelector('.state');
    st.textContent = '';
    st.replaceChildren();
  }

  /** The visible "could not recover" marker, right after message `after`. */
  function addGap(room, after, text) {
    const el = h('div', { class: 'gap', role: 'note' }, h('span', {}, text));
    insertItem(room, after + 0.5, el);
    room.gaps.push({ after, el });
  }

  function addSystem(room, text) {
    insertItem(room, room.headSeq + 0.25, h('div', { class: 'sys' }, text));
    afterAdd(room);
  }

  /** Put `el` in the room's list at `key` (a seq; pending messages: Infinity), after equal keys. */
  function insertItem(room, key, el) {
    const items = room.items;
    let lo = 0;
    let hi = items.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (items[mid].key <= key) lo = mid + 1;
      else hi = mid;
    }
    const next = items[lo];
    items.splice(lo, 0, { key, el });
    room.view.insertBefore(el, next ? next.el : null);
    regroup(el);
    if (el.nextElementSibling) regroup(el.nextElementSibling);
  }

  function removeItem(room, el) {
    const i = room.items.findIndex((it) => it.el === el);
    if (i < 0) return;
    const next = el.nextElementSibling;
    room.items.splice(i, 1);
    el.remove();
    if (next) regroup(next);
  }

  /** A message right after one from the same sender (within minutes) drops its header. */
  function regroup(el) {
    if (!el.classList || !el.classList.contains('msg')) return;
    const prev = el.previousElementSibling;
    let cont = false;
    if (prev && prev.classList.contains('msg') && prev.dataset.from === el.dataset.from && prev.classList.contains('own') === el.classList.contains('own')) {
      const a = Number(prev.dataset.ts);
      const b = Number(el.dataset.ts);
      cont = !(a && b) || Math.abs(b - a) < GROUP_MS;
    }
    el.classList.toggle('cont', cont);
  }

  function resetRoom(room) {
    for (const item of [...room.items]) {
      if (!item.el.classList.contains('pending')) removeItem(room, item.el);
    }
    room.bySeq.clear();
    room.gaps = [];
    room.lastSeq = 0;
    room.headSeq = 0;
    room.synced = false;
    room.more = false;
    room.cursor = null;
  }

  function renderTop(room) {
    const top = room.top;
    top.replaceChildren();
    if (room.historyReq) {
      top.append(h('span', { class: 'loading' }, 'loading messages…'));
    } else if (room.more) {
      top.append(h('button', { type: 'button', class: 'load-older link-btn', onclick: () => loadOlder(room) }, 'Load older messages'));
    } else if (room.synced || room.bySeq.size) {
      const label = room.pair ? 'This is the start of your conversation.' : `This is the beginning of #${room.name}.`;
      top.append(h('span', { class: 'start' }, label));
    }
  }

  function afterAdd(room, older) {
    if (room.name !== state.current) {
      trim(room);
      return;
    }
    if (!older && room.stick) {
      trim(room);
      scrollToBottom();
    }
  }

  /** A long-open tab keeps the newest messages of a room on the page; older ones can be
   *  paged back in from the server. */
  const KEEP = 1000;
  function trim(room) {
    if (room.bySeq.size <= KEEP + 200) return;
    const seqs = [...room.bySeq.keys()].sort((a, b) => a - b);
    const cut = seqs[seqs.length - KEEP];
    for (const item of [...room.items]) {
      if (item.key < cut && !item.el.classList.contains('pending')) removeItem(room, item.el);
    }
    for (const s of seqs) if (s < cut) room.bySeq.delete(s);
    room.gaps = room.gaps.filter((g) => g.after >= cut);
    room.more = true;
    updateCursor(room);
    renderTop(room);
  }

  function scrollToBottom() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
    ui.jump.hidden = true;
  }

  function loadOlder(room) {
    if (!room.more || room.historyReq || !room.joined || room.cursor == null) return;
    room.historyReq = 'older';
    if (!sendFrame({ op: 'history', room: room.name, before: room.cursor, limit: HISTORY_PAGE })) {
      room.historyReq = null;
      return;
    }
    renderTop(room);
  }

  /** Older pages until the view can scroll (there is no "top" to scroll to before that). */
  function fillView(room) {
    const box = ui.messages;
    if (room.name === state.current && room.more && box.scrollHeight <= box.clientHeight + 8) loadOlder(room);
  }

  // ---------------------------------------------------------------------------------------------
  // Sending

  function setPendingState(p, st, why) {
    p.state = st;
    const el = p.el;
    el.classList.toggle('queued', st === 'queued');
    el.classList.toggle('failed', st === 'failed');
    const s = el.querySelector('.state');
    s.replaceChildren();
    if (st === 'sent') s.append('sending…');
    else if (st === 'queued') s.append(state.connected ? 'waiting…' : 'will send when reconnected');
    else if (st === 'failed') {
      s.append(why || 'not sent', ' ');
      s.append(h('button', { type: 'button', class: 'link-btn retry', onclick: () => retry(p) }, 'retry'));
      s.append(' ');
      s.append(h('button', { type: 'button', class: 'link-btn discard', onclick: () => discard(p) }, 'discard'));
    }
  }

  function failPending(p, why) {
    setPendingState(p, 'failed', why);
  }

  function retry(p) {
    const room = roomOf(p.room);
    if (!room || room.ended) {
      notice('not_member', 'Cannot resend', 'You are no longer in that room.');
      return;
    }
    setPendingState(p, 'queued');
    transmit(p);
  }

  function discard(p) {
    state.pending.delete(p.cid);
    const room = roomOf(p.room);
    if (room) removeItem(room, p.el);
    else p.el.remove();
    publish();
  }

  /** Send an own message now if its room is ready, else leave it queued for the rejoin. */
  function transmit(p) {
    const room = roomOf(p.room);
    if (!room || room.ended) return;
    if (state.connected && room.joined && !room.settling) {
      if (sendFrame({ op: 'say', room: p.room, text: p.text, cid: p.cid })) {
        setPendingState(p, 'sent');
        return;
      }
    }
    setPendingState(p, 'queued');
    wake();
  }

  function say(text) {
    const room = currentRoom();
    if (!room) return false;
    if (room.ended) {
      notice('peer_left', 'This conversation has ended', 'Start a new one with “Talk to a stranger”.');
      return false;
    }
    state.cidCounter += 1;
    const cid = `${clientId}-${Date.now().toString(36)}-${state.cidCounter}`;
    const frame = JSON.stringify({ op: 'say', room: room.name, text, cid });
    const max = Number(state.limits.max_message) || 65536;
    if (utf8.encode(frame).length > max) {
      notice('too_big', 'Message too long', `The server accepts messages up to ${max} bytes; this one is ${utf8.encode(text).length}. Nothing was sent.`);
      return false;
    }
    const el = messageElement(room.name, { from: state.myNick || state.wantedNick || 'me', text }, true, cid);
    el.classList.add('pending');
    const p = { cid, room: room.name, text, el, state: 'queued' };
    state.pending.set(cid, p);
    room.stick = true;
    insertItem(room, Infinity, el);
    // The message ends this burst of typing; the next keystroke announces a new one.
    state.typingSentAt.delete(room.name);
    transmit(p);
    scrollToBottom();
    return true;
  }

  // ---------------------------------------------------------------------------------------------
  // Rooms

  function addToOrder(name, at) {
    if (state.order.includes(name)) return;
    if (at === undefined) state.order.push(name);
    else state.order.splice(at, 0, name);
    savedRooms();
    renderRooms();
  }

  function joinRoom(raw) {
    const name = raw.trim().replace(/^#/, '');
    if (!name) return;
    if (isPair(name)) {
      notice('private_room', 'Private room', 'Pair rooms are made by matchmaking and cannot be joined by name.');
      return;
    }
    if (!ROOM_RE.test(name)) {
      notice('bad_room', 'Bad room name', 'Room names are 1 to 64 of A–Z a–z 0–9 - _ . :');
      return;
    }
    if (!roomOf(name)) {
      makeRoom(name);
      addToOrder(name);
      if (state.connected) sendJoin(roomOf(name));
      else wake();
    } else if (!state.order.includes(name)) {
      addToOrder(name);
    }
    switchTo(name);
  }

  /** Forget a room on this page (after leaving it, or a refused join). */
  function dropRoom(name) {
    const room = roomOf(name);
    if (!room || name === LOBBY) return;
    for (const p of [...state.pending.values()]) if (p.room === name) state.pending.delete(p.cid);
    state.rooms.delete(name);
    state.order = state.order.filter((r) => r !== name);
    savedRooms();
    if (state.current === name) switchTo(LOBBY);
    renderRooms();
    publish();
  }

  function leaveRoom(name) {
    const room = roomOf(name);
    if (!room || name === LOBBY) return;
    const unsent = [...state.pending.values()].filter((p) => p.room === name && p.state !== 'failed').length;
    if (room.pair) {
      if (!room.ended && state.match.room === name) unmatch();
    } else if (state.connected) {
      sendFrame({ op: 'leave', room: name });
      refreshDirectorySoon();
    }
    if (unsent) notice('discarded', `Left #${name}`, `${unsent} unsent message${unsent === 1 ? ' was' : 's were'} discarded.`, 'warn');
    dropRoom(name);
  }

  function switchTo(name) {
    const room = roomOf(name);
    if (!room) return;
    const old = currentRoom();
    if (old && old !== room) {
      old.scrollTop = ui.messages.scrollTop;
    }
    state.current = name;
    room.unread = 0;
    ui.messages.replaceChildren(room.view);
    if (room.stick || room.scrollTop === null) scrollToBottom();
    else ui.messages.scrollTop = room.scrollTop;
    ui.jump.hidden = true;
    savedRooms();
    closeDrawers();
    renderAll();
    fillView(room);
    publish();
  }

  // ---------------------------------------------------------------------------------------------
  // Matchmaking

  /** The cid of the page's `match` and `next`: a refusal carrying it (matchmaking out of
   *  reach) ends the search, so the panel never waits for an answer that will not come. */
  const MATCH_CID = 'match';

  /** The matchmaking panel's state: 'idle', 'searching' or 'matched' (in `room`, with `peer`). */
  function matchState(phase, room = null, peer = null) {
    return { state: phase, pos: 0, room, peer, partnerLeft: false, resume: false };
  }

  function startMatch() {
    state.match = matchState('searching');
    if (state.connected) sendFrame({ op: 'match', cid: MATCH_CID });
    else {
      state.match.resume = true;
      wake();
    }
    renderMatch();
    publish();
  }

  /** Leave the current pair (if any) with `op`: 'next' searches again, 'unmatch' stops. */
  function leaveMatch(op) {
    const name = state.match.room;
    state.match = matchState(op === 'next' ? 'searching' : 'idle');
    if (state.connected) sendFrame({ op, cid: MATCH_CID });
    if (name) dropRoom(name);
    renderMatch();
    publish();
  }

  function nextMatch() {
    leaveMatch('next');
  }

  function unmatch() {
    leaveMatch('unmatch');
  }

  // ---------------------------------------------------------------------------------------------
  // Rendering

  function renderAll() {
    renderRooms();
    renderRoomHead();
    renderMembers();
    renderTyping();
    renderCompose();
    renderMatch();
  }

  function roomLabel(room) {
    if (room.pair) return room.peer ? `stranger: ${room.peer}` : 'stranger';
    return `#${room.name}`;
  }

  function renderRooms() {
    const items = state.order.map((name) => {
      const room = roomOf(name);
      if (!room) return null;
      const classes = ['room'];
      if (name === state.current) classes.push('current');
      if (room.ended) classes.push('ended');
      if (room.pair) classes.push('pair');
      if (room.unread) classes.push('unread');
      const li = h(
        'li',
        { class: classes.join(' '), 'data-room': name, tabindex: '0', role: 'button', 'aria-current': name === state.current ? 'true' : null },
        h('span', { class: 'name' }, roomLabel(room)),
        room.unread ? h('span', { class: 'badge', 'aria-label': `${room.unread} unread` }, room.unread > 99 ? '99+' : String(room.unread)) : null,
        room.ended ? h('span', { class: 'tag' }, 'ended') : null,
      );
      if (name !== LOBBY) {
        li.append(
          h(
            'button',
            {
              type: 'button',
              class: 'leave',
              title: room.pair && !room.ended ? 'Leave the conversation' : `Leave ${roomLabel(room)}`,
              'aria-label': `Leave ${roomLabel(room)}`,
              onclick: (e) => {
                e.stopPropagation();
                leaveRoom(name);
              },
            },
            '×',
          ),
        );
      }
      li.addEventListener('click', () => switchTo(name));
      li.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' || e.key === ' ') {
          e.preventDefault();
          switchTo(name);
        }
      });
      return li;
    });
    ui.rooms.replaceChildren(...items.filter(Boolean));
    const unread = [...state.rooms.values()].reduce((n, r) => n + r.unread, 0);
    document.title = unread ? `(${unread}) syncws chat` : 'syncws chat';
  }

  function renderDirectory() {
    const list = state.directory.filter((r) => r && typeof r.room === 'string');
    if (!list.length) {
      ui.directory.replaceChildren(h('li', { class: 'empty' }, state.connected ? 'No rooms yet. Make one above!' : 'Not connected.'));
      return;
    }
    ui.directory.replaceChildren(
      ...list.map((r) => {
        const mine = state.order.includes(r.room);
        return h(
          'li',
          { 'data-room': r.room, class: mine ? 'mine' : null },
          h(
            'button',
            { type: 'button', class: 'dir-room', title: mine ? `Open #${r.room}` : `Join #${r.room}`, onclick: () => joinRoom(r.room) },
            h('span', { class: 'name' }, `#${r.room}`),
            h('span', { class: 'n' }, directoryCounts(r)),
          ),
        );
      }),
    );
  }

  function directoryCounts(r) {
    return `${Number(r.members) || 0} online · ${Number(r.seq) || 0} msgs`;
  }

  function renderRoomHead() {
    const room = currentRoom();
    if (!room) return;
    ui.roomTitle.textContent = roomLabel(room);
    let info = '';
    if (room.ended) info = 'conversation ended';
    else if (!state.connected) info = 'offline';
    else if (room.joining && !room.joined) info = 'joining…';
    else if (room.name === LOBBY) info = 'everyone starts here';
    else if (room.pair) info = 'one-to-one with a stranger';
    else info = `${room.count} member${room.count === 1 ? '' : 's'}`;
    ui.roomInfo.textContent = info;
  }

  function renderMembers() {
    const room = currentRoom();
    if (!room) return;
    renderRoomHead();
    if (room.name === LOBBY) {
      ui.memberCount.textContent = `${room.count} online`;
      ui.members.replaceChildren();
      ui.membersHint.hidden = false;
      ui.membersHint.textContent = `${room.count} ${room.count === 1 ? 'person is' : 'people are'} in the lobby. Everyone starts here; join a room to see who is in it.`;
      return;
    }
    ui.membersHint.hidden = true;
    const nicks = [...room.members].sort((a, b) => a.localeCompare(b, undefined, { sensitivity: 'base' }));
    let meMarked = false;
    ui.members.replaceChildren(
      ...nicks.map((nick) => {
        const me = !meMarked && nick === state.myNick;
        if (me) meMarked = true;
        const cls = [me ? 'me' : '', room.ended && !me ? 'gone' : ''].join(' ').trim();
        const li = h('li', { class: cls || null, 'data-nick': nick, title: room.ended && !me ? 'left' : null }, h('span', { class: 'dot', 'aria-hidden': 'true' }), h('span', { class: 'nick' }, nick));
        li.style.setProperty('--hue', String(hue(nick)));
        return li;
      }),
    );
    ui.memberCount.textContent = room.ended ? '' : String(room.count);
  }

  function renderTyping() {
    const room = currentRoom();
    clearTimeout(state.typingTimer);
    if (!room) return;
    const now = performance.now();
    let soonest = Infinity;
    const names = [];
    for (const [nick, until] of room.typing) {
      if (until <= now) room.typing.delete(nick);
      else {
        names.push(nick);
        soonest = Math.min(soonest, until);
      }
    }
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = `${names.length} people are typing…`;
    ui.typing.textContent = text;
    if (soonest < Infinity) state.typingTimer = setTimeout(renderTyping, soonest - now + 20);
  }

  function renderCompose() {
    const room = currentRoom();
    const ended = !room || room.ended;
    ui.compose.disabled = ended;
    ui.send.disabled = ended;
    if (ended) ui.compose.placeholder = 'This conversation has ended';
    else if (!state.connected) ui.compose.placeholder = `Message ${room ? roomLabel(room) : ''} (sent when reconnected)`;
    else ui.compose.placeholder = `Message ${roomLabel(room)}`;
  }

  function renderMatch() {
    const m = state.match;
    let text = 'Get paired with a random person for a one-to-one chat.';
    const show = { match: true, next: false, unmatch: false };
    if (m.state === 'searching') {
      text = 'Looking for someone…';
      show.match = false;
      show.unmatch = true;
    } else if (m.state === 'queued') {
      const pos = m.pos ? ` (position ${m.pos})` : '';
      text = m.partnerLeft ? `Your partner left. You are queued again${pos}: waiting for someone new…` : `You are queued${pos}: waiting for a stranger…`;
      show.match = false;
      show.unmatch = true;
    } else if (m.state === 'matched') {
      text = `You are matched with ${m.peer}.`;
      show.match = false;
      show.next = true;
      show.unmatch = true;
    } else if (m.resume) {
      text = 'Disconnected: you will be queued again after reconnecting.';
      show.match = false;
      show.unmatch = true;
    }
    ui.matchStatus.textContent = text;
    ui.matchStatus.className = 'match-status ' + m.state;
    ui.matchBtn.hidden = !show.match;
    ui.nextBtn.hidden = !show.next;
    ui.unmatchBtn.hidden = !show.unmatch;
    ui.unmatchBtn.textContent = m.state === 'matched' ? 'Leave' : 'Stop looking';
  }

  function closeDrawers() {
    document.body.classList.remove('show-side', 'show-people');
    ui.scrim.hidden = true;
    ui.toggleSide.setAttribute('aria-expanded', 'false');
    ui.toggleMembers.setAttribute('aria-expanded', 'false');
  }

  function toggleDrawer(which) {
    const cls = which === 'side' ? 'show-side' : 'show-people';
    const open = !document.body.classList.contains(cls);
    closeDrawers();
    if (open) {
      document.body.classList.add(cls);
      ui.scrim.hidden = false;
      (which === 'side' ? ui.toggleSide : ui.toggleMembers).setAttribute('aria-expanded', 'true');
    }
  }

  /** What tests (and the curious) can read: window.chatState. */
  function publish() {
    const lastSeq = {};
    for (const [name, room] of state.rooms) lastSeq[name] = room.lastSeq;
    window.chatState = {
      connected: state.connected,
      nick: state.myNick,
      rooms: [...state.order],
      joined: state.order.filter((n) => roomOf(n) && roomOf(n).joined && !roomOf(n).settling),
      current: state.current,
      lastSeq,
      epoch: state.epoch,
      pending: state.pending.size,
      match: { state: state.match.state, pos: state.match.pos, room: state.match.room, peer: state.match.peer },
      attempt: state.attempt,
    };
  }

  // ---------------------------------------------------------------------------------------------
  // User input

  ui.nickForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const nick = ui.nick.value.trim();
    ui.nick.value = nick;
    const problem = nickProblem(nick);
    if (problem) {
      notice('bad_nick', 'Nickname refused', problem);
      return;
    }
    state.wantedNick = nick;
    storageSet('nick', nick);
    if (state.connected) sendFrame({ op: 'hello', nick });
    else wake();
    ui.nick.blur();
  });

  ui.joinForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const v = ui.joinRoom.value;
    ui.joinRoom.value = '';
    joinRoom(v);
  });

  ui.composeForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = ui.compose.value;
    if (!text.trim()) return;
    if (say(text)) {
      ui.compose.value = '';
      autosize();
    }
    ui.compose.focus();
    publish();
  });

  ui.compose.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      ui.composeForm.requestSubmit();
    }
  });

  function autosize() {
    ui.compose.style.height = 'auto';
    ui.compose.style.height = Math.min(ui.compose.scrollHeight, 160) + 'px';
  }

  ui.compose.addEventListener('input', () => {
    autosize();
    wake();
    const room = currentRoom();
    if (!room || !ui.compose.value || !state.connected || !room.joined || room.ended || room.name === LOBBY) return;
    const now = performance.now();
    if (now - (state.typingSentAt.get(room.name) || -Infinity) < TYPING_EVERY_MS) return;
    if (sendFrame({ op: 'typing', room: room.name }, true)) state.typingSentAt.set(room.name, now);
  });

  ui.messages.addEventListener('scroll', () => {
    const room = currentRoom();
    if (!room) return;
    const box = ui.messages;
    room.stick = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
    if (room.stick) ui.jump.hidden = true;
    if (box.scrollTop < 80) loadOlder(room);
  });

  ui.jump.addEventListener('click', () => {
    const room = currentRoom();
    if (room) room.stick = true;
    scrollToBottom();
  });

  ui.roomsRefresh.addEventListener('click', () => {
    if (state.connected) sendFrame({ op: 'rooms' });
    else wake();
  });
  ui.matchBtn.addEventListener('click', startMatch);
  ui.nextBtn.addEventListener('click', nextMatch);
  ui.unmatchBtn.addEventListener('click', unmatch);
  ui.reconnectNow.addEventListener('click', () => {
    state.attempt = 0;
    reconnectSoon();
  });
  ui.toggleSide.addEventListener('click', () => toggleDrawer('side'));
  ui.toggleMembers.addEventListener('click', () => toggleDrawer('people'));
  ui.scrim.addEventListener('click', closeDrawers);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') closeDrawers();
  });

  // On a phone the nickname lives in the rooms drawer; the top bar keeps the status.
  const narrow = window.matchMedia('(max-width: 720px)');
  const placeNick = () => {
    const home = narrow.matches ? ui.sideNick : ui.topNick;
    if (ui.nickForm.parentElement !== home) home.append(ui.nickForm);
    ui.sideNick.hidden = !narrow.matches;
  };
  narrow.addEventListener('change', placeNick);
  placeNick();

  document.addEventListener('visibilitychange', () => {
    if (document.hidden) {
      clearTimeout(state.roomsPollTimer);
      state.roomsPollTimer = 0;
      return;
    }
    // Back in view: the room list and the lobby's count at once.
    state.lastInput = performance.now();
    pollRooms();
    const room = currentRoom();
    if (room && room.unread) {
      room.unread = 0;
      renderRooms();
    }
    if (state.ws) checkLiveness();
    else if (!state.idleClosed) reconnectSoon();
  });
  for (const type of ['keydown', 'pointerdown', 'focus']) window.addEventListener(type, active, { passive: true });
  window.addEventListener('online', () => {
    if (state.ws) checkLiveness();
    else {
      state.attempt = 0;
      reconnectSoon();
    }
  });

  // ---------------------------------------------------------------------------------------------
  // Start

  const urlNick = params.get('nick');
  if (urlNick && !nickProblem(urlNick.trim())) {
    state.wantedNick = urlNick.trim();
    storageSet('nick', state.wantedNick);
  } else {
    const saved = storageGet('nick');
    if (saved && !nickProblem(saved)) state.wantedNick = saved;
  }
  ui.nick.value = state.wantedNick;

  makeRoom(LOBBY);
  state.order.push(LOBBY);
  let remembered = [];
  try {
    remembered = JSON.parse(storageGet('rooms') || '[]');
  } catch (_) {
    remembered = [];
  }
  const urlRoom = params.get('room');
  if (urlRoom) remembered.push(urlRoom);
  for (const name of Array.isArray(remembered) ? remembered : []) {
    if (typeof name === 'string' && ROOM_RE.test(name) && !isPair(name) && !roomOf(name)) {
      makeRoom(name);
      state.order.push(name);
    }
  }
  const wanted = urlRoom || storageGet('current');
  state.current = wanted && roomOf(wanted) ? wanted : LOBBY;
  ui.messages.replaceChildren(currentRoom().view);
  renderAll();
  renderDirectory();
  publish();
  connect();
})();
