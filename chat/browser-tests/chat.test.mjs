// Real-browser tests of the chat page (chat/web), against the real chat-server binary, in
// headless Chromium.
//
//   CHAT_SERVER=... CHAT_CLIENT=... [CHAT_WEB_DIR=chat/web] node chat/browser-tests/chat.test.mjs [NAME-FILTER...]
//
// Each test starts its own server (127.0.0.1, free port, temp data dir) and cleans up after
// itself; any console error or uncaught exception on a page fails the test.

import { createHmac } from 'node:crypto';
import {
  test,
  run,
  waitFor,
  assert,
  assertEqual,
  framesOf,
  artifactPath,
  WS_FAILED,
} from './lib.mjs';

// -------------------------------------------------------------------------------------------------
// Page helpers

/** Open the chat page (from `base`, the server's own HTTP address by default) and wait until it
 *  is connected (as `nick`, when given). */
async function openChat(t, server, nick, { base, viewport, allowErrors, init } = {}) {
  const page = await t.page({ viewport, allowErrors });
  if (init) await page.addInitScript(init);
  const url = (base || server.httpUrl) + (nick ? `?nick=${encodeURIComponent(nick)}` : '');
  await page.goto(url);
  await waitConnected(page, nick);
  return page;
}

async function waitConnected(page, nick) {
  await page.waitForFunction(
    (n) => window.chatState && window.chatState.connected && (!n || window.chatState.nick === n),
    nick || null,
  );
  const status = await page.textContent('#status');
  assert(status.includes('connected'), `#status says ${JSON.stringify(status)}`);
  if (nick) assert(status.includes(nick), `#status does not name ${nick}: ${JSON.stringify(status)}`);
}

/** Join `room` with the join box; wait until the server's `joined` came and it is the current room. */
async function joinRoom(page, room) {
  // On a narrow screen the rooms are in a drawer.
  if (await page.isVisible('#toggle-side')) await page.click('#toggle-side');
  await page.fill('#join-room', room);
  await page.click('#join-btn');
  await page.waitForFunction((r) => window.chatState.joined.includes(r) && window.chatState.current === r, room);
  await page.waitForSelector(`#rooms li[data-room="${room}"].current`);
}

/** Type `text` in the composer and press Enter. */
async function say(page, text) {
  await page.fill('#compose', text);
  await page.press('#compose', 'Enter');
}

/** The messages #messages shows, in order. */
function shown(page) {
  return page.$$eval('#messages .msg', (els) =>
    els.map((e) => ({
      room: e.getAttribute('data-room'),
      seq: e.getAttribute('data-seq') ? Number(e.getAttribute('data-seq')) : null,
      cid: e.getAttribute('data-cid'),
      from: e.querySelector('.from').textContent,
      text: e.querySelector('.text').textContent,
    })),
  );
}

/** Wait until every text in `texts` is shown delivered (with a seq); returns what is shown. */
async function waitDelivered(page, texts, what = 'messages') {
  let last = [];
  try {
    return await waitFor(async () => {
      last = await shown(page);
      return texts.every((x) => last.some((m) => m.text === x && m.seq)) && last;
    }, what);
  } catch (e) {
    e.message += `\n    shown: ${JSON.stringify(last.map((m) => [m.seq, m.from, m.text]))}`;
    throw e;
  }
}

/** Each text exactly once, seqs strictly increasing, nothing pending. */
function checkOnceInOrder(list, what) {
  const texts = list.map((m) => m.text);
  const dup = texts.filter((x, i) => texts.indexOf(x) !== i);
  assert(!dup.length, `${what}: shown more than once: ${JSON.stringify(dup)}`);
  const pending = list.filter((m) => !m.seq);
  assert(!pending.length, `${what}: still pending: ${JSON.stringify(pending.map((m) => m.text))}`);
  for (let i = 1; i < list.length; i++) {
    assert(list[i].seq > list[i - 1].seq, `${what}: seq order broken at ${JSON.stringify(list.map((m) => m.seq))}`);
  }
}

async function statusText(page) {
  return page.textContent('#status');
}

// -------------------------------------------------------------------------------------------------
// Tests

test('two pages chat in a room: every message once, same seq order on both', async (t) => {
  const server = await t.server();
  const ann = await openChat(t, server, 'ann');
  const bob = await openChat(t, server, 'bob');
  await joinRoom(ann, 'r1');
  await joinRoom(bob, 'r1');
  await ann.waitForSelector('#members li[data-nick="bob"]');
  const texts = [];
  for (let i = 1; i <= 3; i++) {
    await say(ann, `ann says ${i}`);
    await say(bob, `bob says ${i}`);
    texts.push(`ann says ${i}`, `bob says ${i}`);
  }
  const a = await waitDelivered(ann, texts, 'all six messages on ann\'s page');
  const b = await waitDelivered(bob, texts, 'all six messages on bob\'s page');
  for (const [list, who] of [[a, 'ann'], [b, 'bob']]) {
    assertEqual(list.length, 6, `${who}: number of messages`);
    checkOnceInOrder(list, who);
    assert(list.every((m) => m.room === 'r1'), `${who}: a message of another room is shown`);
    // Own messages carry their cid; others' do not.
    for (const m of list) {
      assert(!!m.cid === m.text.startsWith(who), `${who}: data-cid on ${JSON.stringify(m)}`);
      assertEqual(m.from, m.text.split(' ')[0], `${who}: sender of ${m.text}`);
    }
  }
  assertEqual(a.map((m) => [m.seq, m.text]), b.map((m) => [m.seq, m.text]), 'both pages: seqs and texts');
  assertEqual(a.map((m) => m.seq), [1, 2, 3, 4, 5, 6], 'seqs');
  // Members and lastSeq are kept up to date.
  const members = await ann.$$eval('#members li', (els) => els.map((e) => e.getAttribute('data-nick')));
  assertEqual(members.sort(), ['ann', 'bob'], 'ann\'s member list');
  assertEqual(await ann.evaluate(() => window.chatState.lastSeq.r1), 6, 'chatState.lastSeq.r1');
});

test('a browser page and a library client chat both ways', async (t) => {
  const server = await t.server();
  const lib = t.client(server.url, 'libby');
  await lib.join('mix');
  const page = await openChat(t, server, 'pia');
  await joinRoom(page, 'mix');
  await page.waitForSelector('#members li[data-nick="libby"]');
  await lib.waitFor((e) => e.ev === 'presence' && e.room === 'mix' && e.state === 'joined' && e.nick === 'pia', 'pia\'s arrival');

  // Library -> browser (a plain line is a say in the client's current room).
  lib.send('hello from the library');
  const list = await waitDelivered(page, ['hello from the library']);
  assertEqual(list[0].from, 'libby', 'sender shown on the page');

  // Browser -> library.
  await say(page, 'hello from the browser');
  const got = await lib.waitFor((e) => e.ev === 'msg' && e.text === 'hello from the browser', 'the page\'s message');
  assertEqual([got.room, got.from], ['mix', 'pia'], 'the msg event the library client got');
  const after = await waitDelivered(page, ['hello from the browser']);
  checkOnceInOrder(after, 'page');
  assertEqual(after.map((m) => m.seq), [1, got.seq], 'seqs on the page');
  assert(after[1].cid, 'the page\'s own message keeps its cid');
});

test('matchmaking between two pages, then the partner leaves', async (t) => {
  const server = await t.server();
  const ann = await openChat(t, server, 'ann');
  const bob = await openChat(t, server, 'bob');
  await ann.click('#match-btn');
  await ann.waitForFunction(() => /queued/i.test(document.querySelector('#match-status').textContent));
  await bob.click('#match-btn');
  for (const [page, peer] of [[ann, 'bob'], [bob, 'ann']]) {
    await page.waitForFunction((p) => document.querySelector('#match-status').textContent.includes(`matched with ${p}`), peer);
    await page.waitForFunction(() => window.chatState.current.startsWith('pair:') && window.chatState.joined.includes(window.chatState.current));
    assert(await page.isVisible('#next-btn'), 'Next is shown in a pair');
    assert(await page.isVisible('#unmatch-btn'), 'Leave is shown in a pair');
    assert(!(await page.isVisible('#match-btn')), 'Talk to a stranger is hidden in a pair');
  }
  const room = await ann.evaluate(() => window.chatState.current);
  assertEqual(await bob.evaluate(() => window.chatState.current), room, 'both pages are in the same pair room');
  await ann.waitForSelector(`#rooms li[data-room="${room}"].current`);

  await say(ann, 'hi stranger');
  await waitDelivered(bob, ['hi stranger']);
  await say(bob, 'hello to you');
  const list = await waitDelivered(ann, ['hi stranger', 'hello to you']);
  checkOnceInOrder(list, 'ann');
  assertEqual(list.map((m) => [m.from, m.text]), [['ann', 'hi stranger'], ['bob', 'hello to you']], 'the pair conversation');

  await bob.closeAll();
  await ann.waitForSelector('#notices .notice[data-code="peer_left"]');
  await ann.waitForFunction(() => {
    const s = document.querySelector('#match-status').textContent;
    return /partner left/i.test(s) && /queued/i.test(s);
  });
  await ann.waitForFunction(() => window.chatState.match.state === 'queued' && window.chatState.match.pos === 1);
  // The ended conversation stays readable but refuses new messages.
  assert(await ann.isDisabled('#compose'), 'the composer is disabled in an ended pair');
  await ann.waitForSelector(`#rooms li[data-room="${room}"].ended`);
});

test('survives a server restart: every message once, in order, the missed ones by since-replay', async (t) => {
  const server = await t.server();
  // The page reaches the server through a relay, so the test decides when its reconnection
  // gets through: after messages were sent in the room it is away from.
  const relay = await t.relay(server.port);
  const page = await openChat(t, server, 'rita', { base: relay.httpUrl, allowErrors: [WS_FAILED] });
  await joinRoom(page, 'rr');
  const lib = t.client(server.url, 'libby');
  await lib.join('rr');
  await lib.say('rr', 'before 1');
  await say(page, 'before 2 from the page');
  await waitDelivered(page, ['before 2 from the page']);
  await lib.say('rr', 'before 3');
  await waitDelivered(page, ['before 1', 'before 2 from the page', 'before 3']);
  const before = await page.evaluate(() => ({ seq: window.chatState.lastSeq.rr, epoch: window.chatState.epoch }));
  assertEqual(before.seq, 3, 'lastSeq before the restart');
  assert(before.epoch, 'the page knows the store epoch');
  await lib.close();

  relay.hold();
  const mark = page.frames_.length;
  const stopped = await server.stop();
  assertEqual(stopped.code, 0, 'chat-server exit status after SIGTERM');
  await page.waitForSelector('#notices .notice[data-code="1001"]');
  await page.waitForFunction(() => /reconnecting/.test(document.querySelector('#status').textContent));
  assert(!(await page.evaluate(() => window.chatState.connected)), 'chatState.connected is false while down');

  // Typed while the server is down: shown once, pending, and sent after the rejoin.
  await say(page, 'typed while down');
  await page.waitForSelector('#messages .msg.pending[data-cid]');
  const whileDown = await shown(page);
  assertEqual(whileDown.filter((m) => m.text === 'typed while down').map((m) => m.seq), [null], 'the queued message, shown once without a seq');

  await server.restart();
  const lib2 = t.client(server.url, 'libby');
  await lib2.join('rr');
  const during = [];
  for (let i = 1; i <= 3; i++) during.push(await lib2.say('rr', `during ${i}`));
  assertEqual(during.map((m) => m.seq), [4, 5, 6], 'seqs of the messages sent while the page was away');
  assert(!(await page.evaluate(() => window.chatState.connected)), 'the page must still be away when the messages are sent');
  relay.release();

  const all = ['before 1', 'before 2 from the page', 'before 3', 'during 1', 'during 2', 'during 3', 'typed while down'];
  await waitConnected(page, 'rita');
  await page.waitForFunction(() => /connected/.test(document.querySelector('#status').textContent));
  const list = await waitDelivered(page, all, 'every message after the restart');
  checkOnceInOrder(list, 'after the restart');
  assertEqual(list.map((m) => m.text), all, 'the messages, in seq order');
  assertEqual(list.map((m) => m.seq), [1, 2, 3, 4, 5, 6, 7], 'seqs: no gaps');
  assertEqual(await page.$$eval('#messages .gap', (g) => g.length), 0, 'no "could not recover" marker');

  // The missed messages came from the rejoin's since-replay, not from a fresh history load.
  const sent = framesOf(page, 'sent').slice(0);
  const joins = sent.filter((f) => f.op === 'join' && f.room === 'rr' && f.since !== undefined);
  assert(joins.some((f) => f.since === before.seq && f.epoch === before.epoch), `no join{rr, since: ${before.seq}, epoch} sent: ${JSON.stringify(joins)}`);
  const received = page.frames_.slice(mark).filter((f) => f.dir === 'received').map((f) => JSON.parse(f.data));
  const replayed = received.filter((f) => f.ev === 'history' && f.room === 'rr' && f.replay).flatMap((f) => f.msgs.map((m) => m.text));
  assertEqual(replayed, ['during 1', 'during 2', 'during 3'], 'messages in the since-replay');
  assert(!sent.some((f) => f.op === 'history' && f.room === 'rr'), 'the page loaded rr\'s history instead of recovering');
  // The library client saw the page's queued message once.
  const theirs = await lib2.waitFor((e) => e.ev === 'msg' && e.text === 'typed while down', 'the queued message');
  assertEqual(theirs.seq, 7, 'seq of the queued message');
  assertEqual(await page.evaluate(() => window.chatState.lastSeq.rr), 7, 'chatState.lastSeq.rr');
});

test('recovery that cannot be complete shows the "could not recover" marker', async (t) => {
  const server = await t.server(['--history-max', '5']);
  const relay = await t.relay(server.port);
  const page = await openChat(t, server, 'gus', { base: relay.httpUrl, allowErrors: [WS_FAILED] });
  await joinRoom(page, 'gone');
  await say(page, 'first words');
  await waitDelivered(page, ['first words']);
  relay.hold();
  await server.stop();
  await page.waitForSelector('#notices .notice[data-code="1001"]');
  await server.restart();
  const lib = t.client(server.url, 'lou');
  await lib.join('gone');
  for (let i = 1; i <= 12; i++) await lib.say('gone', `missed ${i}`);
  relay.release();
  await waitConnected(page, 'gus');
  await page.waitForSelector('#messages .gap');
  // History is then loaded normally: the five the server still keeps, after the marker.
  const kept = ['missed 8', 'missed 9', 'missed 10', 'missed 11', 'missed 12'];
  const list = await waitDelivered(page, kept);
  checkOnceInOrder(list, 'gus');
  assertEqual(list.map((m) => m.text), ['first words', ...kept], 'messages shown around the gap');
  const order = await page.$$eval('#messages .msg, #messages .gap', (els) => els.map((e) => (e.classList.contains('gap') ? 'GAP' : e.querySelector('.text').textContent)));
  assertEqual(order, ['first words', 'GAP', ...kept], 'the marker sits where messages are missing');
  const gap = await page.textContent('#messages .gap');
  assert(/could not be recovered/.test(gap), `marker text: ${gap}`);
});

test('a message with HTML in it (and in a nick) shows as literal text', async (t) => {
  const server = await t.server();
  const evil = '<script>window.__xss=1</script><b>bold</b>';
  const evilNick = '<img src=x onerror=__xss=2>';
  const page = await openChat(t, server, 'ann');
  await joinRoom(page, 'xss');
  const lib = t.client(server.url, evilNick);
  await lib.join('xss');
  await page.waitForSelector('#members li:nth-child(2)');
  await say(page, evil);
  await lib.say('xss', evil);
  const list = await waitFor(async () => {
    const l = await shown(page);
    return l.filter((m) => m.seq).length === 2 && l;
  }, 'both messages');
  assertEqual(list.map((m) => [m.from, m.text]), [['ann', evil], [evilNick, evil]], 'from and text, literally');
  assertEqual(await page.evaluate(() => window.__xss), undefined, 'window.__xss');
  for (const sel of ['#messages b', '#messages script', '#messages img', '#members img', '#app img', '#typing *']) {
    assertEqual(await page.$$eval(sel, (els) => els.length), 0, `elements matching ${sel}`);
  }
  const members = await page.$$eval('#members li', (els) => els.map((e) => e.textContent));
  assert(members.includes(evilNick), `the nick is listed literally: ${JSON.stringify(members)}`);
  // The other side's typing indicator is text too.
  lib.send({ op: 'typing', room: 'xss' });
  await page.waitForFunction((n) => document.querySelector('#typing').textContent.includes(n), evilNick);
  assertEqual(await page.evaluate(() => window.__xss), undefined, 'window.__xss after typing');
});

test('a normal session: nickname, history paging, typing, room list, leaving', async (t) => {
  const server = await t.server();
  const filler = t.client(server.url, 'filler');
  await filler.join('hist');
  for (let i = 1; i <= 119; i++) filler.send({ op: 'say', room: 'hist', text: `old ${i}` });
  await filler.say('hist', 'old 120');

  // Nickname through the form, remembered across a reload.
  const page = await openChat(t, server, null);
  const guest = await page.evaluate(() => window.chatState.nick);
  assert(/^guest-/.test(guest), `nick before choosing one: ${guest}`);
  await page.fill('#nick', 'carol');
  await page.click('#nick-save');
  await waitConnected(page, 'carol');
  await page.reload();
  await waitConnected(page, 'carol');
  assertEqual(await page.inputValue('#nick'), 'carol', '#nick after a reload');

  // History: the last 50 on join, older pages when scrolled to the top.
  await joinRoom(page, 'hist');
  let list = await waitFor(async () => {
    const l = await shown(page);
    return l.length >= 50 && l;
  }, 'the first history page');
  assertEqual(list.length, 50, 'messages after joining');
  assertEqual([list[0].seq, list[49].seq], [71, 120], 'first page');
  for (const want of [100, 120]) {
    await page.$eval('#messages', (el) => {
      el.scrollTop = 0;
    });
    list = await waitFor(async () => {
      const l = await shown(page);
      return l.length >= want && l;
    }, `${want} messages after scrolling up`);
  }
  checkOnceInOrder(list, 'hist');
  assertEqual(list.map((m) => m.seq), Array.from({ length: 120 }, (_, i) => i + 1), 'all of hist\'s history');
  await page.waitForFunction(() => /beginning of #hist/.test(document.querySelector('#messages .top').textContent));
  // The page keeps its rooms across a reload.
  await page.reload();
  await waitConnected(page, 'carol');
  await page.waitForFunction(() => window.chatState.joined.includes('hist'));
  await page.waitForSelector('#rooms li[data-room="hist"].current');

  // Typing: shown on the other page, gone when the message arrives.
  const dave = await openChat(t, server, 'dave');
  await joinRoom(dave, 'hist');
  await page.waitForSelector('#members li[data-nick="dave"]');
  await dave.type('#compose', 'hello carol', { delay: 5 });
  await page.waitForFunction(() => document.querySelector('#typing').textContent.includes('dave is typing'));
  const typingSent = framesOf(dave, 'sent').filter((f) => f.op === 'typing');
  assertEqual(typingSent.length, 1, 'typing frames sent for one burst of keys (at most one per 3 s)');
  await dave.press('#compose', 'Enter');
  await waitDelivered(page, ['hello carol']);
  await page.waitForFunction(() => document.querySelector('#typing').textContent === '');

  // The room list.
  // (The list may already show hist from the refresh after joining: wait for fresh figures.)
  await page.click('#rooms-refresh');
  await waitFor(async () => {
    const text = await page.textContent('#directory li[data-room="hist"]').catch(() => '');
    return /3 online/.test(text) && /121 msgs/.test(text);
  }, 'hist in the room list with 3 online (carol, dave, filler) and 121 messages');

  // Switching rooms shows only that room's messages; leaving announces it to the others.
  await page.click('#rooms li[data-room="lobby"]');
  await page.waitForSelector('#rooms li[data-room="lobby"].current');
  assertEqual((await shown(page)).length, 0, 'messages shown in the lobby');
  assert(/online/.test(await page.textContent('#member-count')), 'the lobby shows its count');
  assertEqual(await page.$$eval('#members li', (e) => e.length), 0, 'the lobby lists no members');
  await dave.hover('#rooms li[data-room="hist"]');
  await dave.click('#rooms li[data-room="hist"] .leave');
  await page.click('#rooms li[data-room="hist"]');
  await page.waitForFunction(() => !document.querySelector('#members li[data-nick="dave"]'));
  assertEqual(await dave.evaluate(() => window.chatState.rooms), ['lobby'], 'dave\'s rooms after leaving');
});

test('limits: a too-big message is refused on the page, a slow rate limit paces sending', async (t) => {
  const server = await t.server(['--max-message', '300', '--rate', '4', '--burst', '4']);
  const page = await openChat(t, server, 'lim');
  await joinRoom(page, 'lim');
  await say(page, 'x'.repeat(400));
  await page.waitForSelector('#notices .notice[data-code="too_big"]');
  assertEqual((await shown(page)).length, 0, 'nothing shown for a refused message');
  assertEqual(await page.inputValue('#compose'), 'x'.repeat(400), 'the text stays in the composer');
  // Ten messages at once against 4 a second: the page paces them, none is refused.
  const texts = Array.from({ length: 10 }, (_, i) => `quick ${i + 1}`);
  for (const x of texts) await say(page, x);
  const list = await waitDelivered(page, texts);
  checkOnceInOrder(list, 'lim');
  assertEqual(list.map((m) => m.text), texts, 'in the order typed');
  assertEqual(await page.$$eval('#notices .notice[data-code="rate_limited"]', (e) => e.length), 0, 'rate_limited notices');
  assert((await statusText(page)).includes('connected'), 'still connected');
});

test('idle close: a notice, no reconnect loop; typing brings the page back with what it missed', async (t) => {
  const server = await t.server(['--idle-timeout', '3']);
  const page = await openChat(t, server, 'ida');
  await joinRoom(page, 'quiet');
  await say(page, 'anyone here?');
  await waitDelivered(page, ['anyone here?']);
  await page.waitForSelector('#notices .notice[data-code="1000"]');
  await page.waitForFunction(() => /disconnected \(idle\)/.test(document.querySelector('#status').textContent));
  assert(await page.isVisible('#reconnect-now'), 'a Reconnect button is offered');
  const sockets = page.frames_.filter((f) => f.dir === 'sent' && /"op":"hello"/.test(f.data)).length;
  // Someone speaks while the page is away (a fresh client, before its own idle time runs out).
  const lib = t.client(server.url, 'ned');
  await lib.join('quiet');
  await lib.say('quiet', 'I was here while you were idle');
  assert(!(await page.evaluate(() => window.chatState.connected)), 'the page stays disconnected by itself');
  // Typing wakes it: it reconnects, recovers the missed message, then sends the new one.
  await say(page, 'back again');
  const list = await waitDelivered(page, ['anyone here?', 'I was here while you were idle', 'back again']);
  checkOnceInOrder(list, 'ida');
  assertEqual(list.map((m) => m.seq), [1, 2, 3], 'seqs');
  const hellos = page.frames_.filter((f) => f.dir === 'sent' && /"op":"hello"/.test(f.data)).length;
  assertEqual(hellos, sockets + 1, 'connections made (hello frames): one more after waking');
  await lib.waitFor((e) => e.ev === 'msg' && e.text === 'back again', 'the message sent on waking');
});

test('screenshot of a conversation (1280x800, and a phone)', async (t) => {
  const server = await t.server();
  const ann = await openChat(t, server, 'ann');
  const bob = await openChat(t, server, 'bob');
  const cleo = t.client(server.url, 'cleo');
  await joinRoom(ann, 'rust');
  await joinRoom(bob, 'rust');
  await cleo.join('rust');
  await say(ann, 'Has anyone tried the new ClientSet? One thread for ten thousand connections.');
  await waitDelivered(bob, ['Has anyone tried the new ClientSet? One thread for ten thousand connections.']);
  await say(bob, 'Yes! Idle connections cost almost nothing, and every echo was checked.');
  await waitDelivered(ann, ['Yes! Idle connections cost almost nothing, and every echo was checked.']);
  await cleo.say('rust', 'And the chat server replays what you missed after a reconnect: see https://example.org/syncws');
  await say(bob, 'Try it: stop the server, send a few messages, start it again.');
  await say(bob, 'Nothing is lost, nothing is shown twice.');
  await say(ann, 'Sold. Reading the docs now');
  await waitDelivered(ann, ['Nothing is lost, nothing is shown twice.', 'Sold. Reading the docs now']);
  await bob.type('#compose', 'one more thing', { delay: 5 });
  await ann.waitForFunction(() => document.querySelector('#typing').textContent.includes('bob is typing'));
  await ann.waitForSelector('#members li[data-nick="cleo"]');
  const file = artifactPath('chat.png');
  await ann.screenshot({ path: file, animations: 'disabled' });
  const phone = await openChat(t, server, 'dana', { viewport: { width: 390, height: 844 } });
  await joinRoom(phone, 'rust');
  await waitDelivered(phone, ['Sold. Reading the docs now']);
  await phone.screenshot({ path: artifactPath('chat-phone.png'), animations: 'disabled' });
  console.log(`       screenshots: ${file}, ${artifactPath('chat-phone.png')}`);
});

test('a rename shows in the other page\'s member list', async (t) => {
  const server = await t.server();
  const a = await openChat(t, server, 'ann');
  const b = await openChat(t, server, 'bob');
  await joinRoom(a, 'names');
  await joinRoom(b, 'names');
  await b.waitForSelector('#members li[data-nick="ann"]');
  await a.fill('#nick', 'annie');
  await a.click('#nick-save');
  await b.waitForSelector('#members li[data-nick="annie"]');
  assertEqual(await b.$$eval('#members li[data-nick="ann"]', (l) => l.length), 0, 'the old nick in bob\'s list');
});

/** Before the page's own script: every WebSocket it opens is kept in `window.__sockets`, so a
 *  test can send what the page itself never would (past its pacing and its size check). */
function keepSockets() {
  const Native = window.WebSocket;
  window.__sockets = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      window.__sockets.push(this);
    }
  };
}

/** Wait for the notice of close code `code`; returns its text. */
async function closeNotice(page, code) {
  await page.waitForSelector(`#notices .notice[data-code="${code}"]`);
  return page.textContent(`#notices .notice[data-code="${code}"]`);
}

test('close notices: 1009 for a message past the server\'s limit', async (t) => {
  const server = await t.server(['--max-message', '300']);
  const page = await openChat(t, server, 'big', { init: keepSockets });
  // Past the page's own check (it refuses this before sending): straight onto its socket.
  await page.evaluate(() => window.__sockets.at(-1).send(JSON.stringify({ op: 'say', room: 'lobby', text: 'x'.repeat(1000) })));
  const text = await closeNotice(page, '1009');
  assert(/A message was too big/.test(text), `1009 notice: ${text}`);
  assert(/limit: 300 bytes/.test(text), `1009 notice names the limit: ${text}`);
  await waitConnected(page, 'big');
});

test('close notices: 1008 for sending too fast', async (t) => {
  const server = await t.server(['--rate', '1', '--burst', '1', '--rate-abuse', '2']);
  const page = await openChat(t, server, 'fast', { init: keepSockets });
  // The page paces itself under the limit: these go straight onto its socket.
  await page.evaluate(() => {
    const ws = window.__sockets.at(-1);
    for (let i = 0; i < 6; i++) ws.send(JSON.stringify({ op: 'say', room: 'lobby', text: `spam ${i}` }));
  });
  const text = await closeNotice(page, '1008');
  assert(/Disconnected for sending too fast/.test(text), `1008 notice: ${text}`);
  assert(/rate limit/.test(text), `1008 notice says why: ${text}`);
});

test('close notices: 4008 when the page stops keeping up', async (t) => {
  // A small outbox (and messages small enough for it): what waits for one connection is
  // bounded by it, all counted in bytes.
  const server = await t.server(['--outbox-bytes', '32768', '--max-message', '8192']);
  const relay = await t.relay(server.port);
  const page = await openChat(t, server, 'slow', { base: relay.httpUrl, allowErrors: [WS_FAILED] });
  await joinRoom(page, 'big');
  const lib = t.client(server.url, 'writer');
  await lib.join('big');
  await lib.say('big', 'first');
  await waitDelivered(page, ['first']);
  // The page's connection stays open but takes nothing more (its relay stops reading from the
  // server), while the room fills, until the server gives up on it.
  relay.stall();
  const text = 'y'.repeat(7000);
  let n = 0;
  await waitFor(async () => {
    // A few at a time: the writer reads its own copies, and must not fall behind itself.
    for (let j = 0; j < 2; j++) lib.send({ op: 'say', room: 'big', text });
    await lib.say('big', `${n++} ${text}`);
    const metrics = await (await fetch(server.httpUrl + 'metrics')).text();
    return metricValue(metrics, 'chat_slow_consumer_closes_total') >= 1;
  }, 'the server closing the page as a slow consumer', 25000);
  relay.unstall();
  const notice = await closeNotice(page, '4008');
  assert(/Your connection fell behind/.test(notice), `4008 notice: ${notice}`);
  assert(/slow consumer/.test(notice), `4008 notice says why: ${notice}`);
});

test('the lobby\'s online count and the rooms\' message counts stay current without a click', async (t) => {
  const server = await t.server();
  const page = await openChat(t, server, 'watcher');
  await joinRoom(page, 'busy');
  // The room list the page asks for after a join has come, before anyone else is here.
  await page.waitForFunction(() => /1 online/.test(document.querySelector('#directory li[data-room="busy"]')?.textContent));
  await page.click('#rooms li[data-room="lobby"]');
  await page.waitForFunction(() => document.querySelector('#member-count').textContent === '1 online');
  const [c1, c2] = [t.client(server.url, 'c1'), t.client(server.url, 'c2')];
  t.client(server.url, 'c3');
  await c1.join('busy');
  await c2.join('other');
  await c1.say('busy', 'one');
  await c2.say('other', 'two');
  const entry = (room) => page.textContent(`#directory li[data-room="${room}"]`).catch(() => '');
  // The lobby counts everyone connected (the page and three clients); the server sends no
  // presence for the lobby, so the page asks for the room list by itself.
  await waitFor(async () => (await page.textContent('#member-count')) === '4 online', '"4 online" in the lobby', 25000);
  await waitFor(async () => /1 msgs/.test(await entry('busy')) && /1 msgs/.test(await entry('other')), 'both rooms listed with 1 message', 25000);
  // More messages: busy's count follows its msg events (the page is in busy), other's the next
  // room list.
  await c1.say('busy', 'two');
  await c1.say('busy', 'three');
  await c2.say('other', 'three');
  await waitFor(async () => /3 msgs/.test(await entry('busy')), 'busy with 3 messages', 25000);
  await waitFor(async () => /2 msgs/.test(await entry('other')), 'other with 2 messages', 25000);
  assert(/2 online/.test(await entry('busy')), `busy: ${await entry('busy')}`);
});

test('the page\'s cids carry no identity from one page load to the next', async (t) => {
  const server = await t.server();
  const page = await openChat(t, server, 'ann');
  await joinRoom(page, 'ids');
  await say(page, 'before the reload');
  await waitDelivered(page, ['before the reload']);
  await page.reload();
  await waitConnected(page, 'ann');
  await page.waitForFunction(() => window.chatState.joined.includes('ids'));
  await say(page, 'after the reload');
  await waitDelivered(page, ['after the reload']);
  const cids = framesOf(page, 'sent').filter((f) => f.op === 'say').map((f) => f.cid);
  assertEqual(cids.length, 2, 'say frames sent');
  const prefixes = cids.map((c) => c.split('-')[0]);
  assert(prefixes[0] !== prefixes[1], `the same prefix across page loads: ${JSON.stringify(cids)}`);
  const stored = await page.evaluate(() => Object.keys(localStorage).map((k) => `${k}=${localStorage.getItem(k)}`));
  for (const p of prefixes) {
    assert(!stored.some((kv) => kv.includes(p)), `${p} is kept in localStorage: ${JSON.stringify(stored)}`);
  }
});

// -------------------------------------------------------------------------------------------------
// The operator's pages

/** The value of `name` (no labels) in Prometheus text. */
function metricValue(text, name) {
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  assert(line, `no ${name} in /metrics`);
  return Number(line.slice(name.length + 1));
}

test('the report page draws its charts with totals that match /metrics', async (t) => {
  const server = await t.server(['--stats-every', '1']);
  const ann = await openChat(t, server, 'ann');
  const bob = await openChat(t, server, 'bob');
  await joinRoom(ann, 'ops');
  await joinRoom(bob, 'ops');
  const texts = ['one', 'two', 'three', 'four'];
  for (const text of texts) await say(ann, text);
  await waitDelivered(bob, texts);
  const metrics = await (await fetch(server.httpUrl + 'metrics')).text();
  const want = {};
  for (const m of ['chat_messages_total', 'chat_deliveries_total', 'chat_connections_total', 'chat_bytes_in_total', 'chat_bytes_out_total']) {
    want[m] = metricValue(metrics, m);
  }
  assertEqual(want.chat_messages_total, texts.length, '/metrics messages');
  const report = await t.page();
  // Samples are taken every second: reload until one taken after the messages is shown.
  await waitFor(async () => {
    await report.goto(server.httpUrl + 'report?window=hour');
    const cell = await report.$('td[data-metric="chat_deliveries_total"]');
    return cell && Number(await cell.textContent()) === want.chat_deliveries_total;
  }, 'a sample with the deliveries');
  // The pages keep talking (pings, typing), so bytes may have grown since; the counts of
  // messages, deliveries and connections may not.
  const after = await (await fetch(server.httpUrl + 'metrics')).text();
  for (const [metric, value] of Object.entries(want)) {
    const shown = Number(await report.textContent(`td[data-metric="${metric}"]`));
    if (metric.startsWith('chat_bytes')) {
      const now = metricValue(after, metric);
      assert(shown >= value && shown <= now, `${metric} on the report: ${shown}, /metrics ${value}..${now}`);
    } else {
      assertEqual(shown, value, `${metric} on the report`);
    }
  }
  // Every chart is an SVG with at least one point drawn, and the page has a real layout.
  const charts = await report.$$eval('svg.chart', (svgs) => svgs.map((s) => ({
    id: s.id,
    points: Number(s.dataset.points),
    drawn: s.querySelectorAll('polyline, circle').length,
    width: s.getBoundingClientRect().width,
  })));
  assertEqual(charts.map((c) => c.id).sort(), ['chart-bytes', 'chart-connections', 'chart-cpu', 'chart-latency', 'chart-messages', 'chart-rss', 'chart-threads'], 'charts');
  for (const c of charts) {
    assert(c.points >= 2 && c.drawn >= 1 && c.width > 200, `${c.id} drawn: ${JSON.stringify(c)}`);
  }
  const legend = await report.textContent('#chart-messages + .legend');
  assert(/messages [0-9.]+/.test(legend), `messages legend: ${legend}`);
  for (const w of ['day', 'week', 'all']) {
    await report.click(`nav.windows a[href="/report?window=${w}"]`);
    await report.waitForSelector(`nav.windows a.current[href="/report?window=${w}"]`);
  }
  await report.setViewportSize({ width: 1280, height: 1100 });
  const file = artifactPath('report.png');
  await report.screenshot({ path: file, fullPage: true, animations: 'disabled' });
  console.log(`       screenshot: ${file}`);
});

test('the logs page follows the log live, filters by kind and shows text as text', async (t) => {
  const server = await t.server();
  const nasty = '<img src=x onerror=__xss=1>'; // a nick is at most 32 characters
  const page = await openChat(t, server, nasty);
  const logs = await t.page();
  await logs.goto(server.httpUrl + 'logs');
  // The page's own hello, with the nick as plain text in the table.
  await waitFor(async () => {
    await logs.goto(server.httpUrl + 'logs?kind=hello');
    return (await logs.$$('#log tbody tr')).length === 1;
  }, 'the hello line');
  const fields = await logs.textContent('#log tbody tr td.f');
  assert(fields.includes(nasty), `the nick as text: ${fields}`);
  assertEqual(await logs.$$eval('#log img', (imgs) => imgs.length), 0, 'img elements in the log');
  assertEqual(await logs.evaluate(() => window.__xss), undefined, 'window.__xss');
  // Live: a message said now appears at the top of the unfiltered first page by itself.
  await logs.goto(server.httpUrl + 'logs');
  const before = await logs.$$eval('#log tbody tr', (rows) => rows.length);
  await say(page, 'logged while watching');
  await logs.waitForFunction(() => {
    const first = document.querySelector('#log tbody tr');
    return first && first.children[1].textContent === 'msg';
  }, null, { timeout: 15000 });
  assert((await logs.$$eval('#log tbody tr', (rows) => rows.length)) > before, 'a new row');
  // The filter keeps to its kind.
  await logs.fill('#kind', 'msg');
  await logs.click('form button');
  await logs.waitForURL(/kind=msg/);
  const kinds = await logs.$$eval('#log tbody tr td:nth-child(2)', (tds) => [...new Set(tds.map((td) => td.textContent))]);
  assertEqual(kinds, ['msg'], 'kinds shown with the filter');
});

test('the logs page runs no script from its address', async (t) => {
  const server = await t.server();
  const logs = await t.page();
  const payload = '</script><script>window.__xss=1</script>';
  const polled = logs.waitForRequest((r) => r.url().includes('format=json') && r.url().includes(`kind=${encodeURIComponent(payload)}`));
  await logs.goto(server.httpUrl + 'logs?kind=' + encodeURIComponent(payload));
  // The live poll asks for the same kind: the value reached the script as data.
  await polled;
  assertEqual(await logs.evaluate(() => window.__xss), undefined, 'window.__xss');
  assertEqual(await logs.inputValue('#kind'), payload, 'the filter box shows the kind as text');
  assertEqual(await logs.$$eval('script', (s) => s.map((e) => e.getAttribute('src'))), ['/logs.js'], 'scripts on the page');
});

/** An HS256 token (what an operator's tooling would mint). */
function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const data = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${data}.${createHmac('sha256', secret).update(data).digest('base64url')}`;
}

test('opened with a token from elsewhere, the operator pages keep it: live poll, older, windows', async (t) => {
  const secret = 'browser-test-secret-0123456789-abcdef';
  const server = await t.server(['--jwt-secret', secret, '--stats-every', '1']);
  const token = jwt(secret, { sub: 'operator' });
  // Through a proxy on this host: the server does not take the browser for a local user.
  const page = await t.page({ extraHTTPHeaders: { 'X-Forwarded-For': '203.0.113.7' } });
  const refused = [];
  page.on('response', (r) => {
    if (r.status() >= 400) refused.push(`${r.status()} ${r.url()}`);
  });
  const first = await page.goto(`${server.httpUrl}logs?token=${token}`);
  assertEqual(first.status(), 200, '/logs?token=');
  const rows = await page.$$eval('#log tbody tr', (r) => r.length);
  // Something new is logged: the page shows it by itself.
  const lib = t.client(`${server.url}?token=${jwt(secret, { sub: 'ann' })}`, 'ann');
  // (Rows the live poll adds are marked "new".)
  await page.waitForFunction(() => [...document.querySelectorAll('#log tbody tr.new')].some((tr) => tr.children[1].textContent === 'connect'));
  assert((await page.$$eval('#log tbody tr', (r) => r.length)) > rows, 'new rows');
  await lib.close();
  // "older" (a page of one line has one) and the report's windows answer too.
  await page.goto(`${server.httpUrl}logs?limit=1&token=${token}`);
  await Promise.all([page.waitForNavigation(), page.click('#older')]);
  assert(/before=/.test(page.url()), `older: ${page.url()}`);
  await page.goto(`${server.httpUrl}report?token=${token}`);
  for (const w of ['day', 'all']) {
    await Promise.all([page.waitForNavigation(), page.click(`nav.windows a:text-is("${w === 'all' ? 'all' : 'last day'}")`)]);
    await page.waitForSelector('nav.windows a.current');
    assert(page.url().includes(`window=${w}`), page.url());
  }
  await Promise.all([page.waitForNavigation(), page.click('header a:text-is("logs")')]);
  await page.waitForSelector('#log');
  assertEqual(refused, [], 'answers refused');
});

await run();
