// Helpers for the chat server's real-browser tests: start/stop/restart a chat-server, run the
// library's terminal client, launch headless Chromium (Debian's /usr/bin/chromium through
// playwright-core), collect page errors, a TCP relay that can hold new connections, and a tiny
// test runner. Nothing here sleeps to synchronise: everything waits for a condition with a
// deadline.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const fromRepo = (p) => (path.isAbsolute(p) ? p : path.join(REPO, p));
export const SERVER_BIN = fromRepo(process.env.CHAT_SERVER || 'target/release/chat-server');
export const CLIENT_BIN = fromRepo(process.env.CHAT_CLIENT || 'target/release/examples/chat_client');
/** CHAT_WEB_DIR set: serve the pages from the files on disk (development) instead of the copies
 *  compiled into the server; its value if that is a directory of pages, else <repo>/chat/web. */
export const WEB_DIR = (() => {
  const v = process.env.CHAT_WEB_DIR;
  if (!v) return null;
  const dir = fromRepo(v);
  return existsSync(path.join(dir, 'chat.html')) ? dir : path.join(REPO, 'chat', 'web');
})();
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const ARTIFACTS = path.join(REPO, 'target', 'browser-tests');

/** The longest any single wait may take. */
export const WAIT_MS = 15000;

// -------------------------------------------------------------------------------------------------
// Waiting

/** Poll `fn` (sync or async) until it returns a truthy value; that value is returned. */
export async function waitFor(fn, what, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      if (e && e.fatal) throw e;
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** An error that ends a `waitFor` at once (the thing waited for can no longer happen). */
export function fatal(message) {
  const e = new Error(message);
  e.fatal = true;
  return e;
}

export function assert(cond, message) {
  if (!cond) throw new Error(message);
}

export function assertEqual(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

// -------------------------------------------------------------------------------------------------
// The chat server

const LISTENING = /^chat-server listening on ws:\/\/([^/\s]+)\//;

/**
 * Start a chat-server on 127.0.0.1 (a free port unless `listen` is given) with its own temporary
 * data directory and the rate limit out of the way. Returns
 * `{url, httpUrl, addr, port, dataDir, output, stop(signal), restart(), kill()}`.
 * `stop()` sends SIGTERM and waits for the exit; `restart()` starts it again on the same address
 * and data directory.
 */
export async function startServer(extraArgs = [], { listen = '127.0.0.1:0', dataDir } = {}) {
  const dir = dataDir || mkdtempSync(path.join(os.tmpdir(), 'chat-browser-test-'));
  const ownsDir = !dataDir;
  const server = {
    dataDir: dir,
    output: [],
    proc: null,
    exited: null,
    addr: null,
    port: null,
    url: null,
    httpUrl: null,
    extraArgs,
  };

  async function launch(listenAt) {
    // The rate limit is out of the way unless the test sets it.
    const defaults = [['--rate', '1000'], ['--burst', '1000']].filter(([flag]) => !extraArgs.includes(flag)).flat();
    const args = [
      '--listen', listenAt,
      '--tls-listen', 'off',
      '--data-dir', dir,
      ...defaults,
      ...(WEB_DIR ? ['--web-dir', WEB_DIR] : []),
      ...extraArgs,
    ];
    const proc = spawn(SERVER_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
    server.proc = proc;
    server.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    let exitInfo = null;
    server.exited.then((x) => (exitInfo = x));
    let addr = null;
    let spawnError = null;
    proc.once('error', (e) => (spawnError = e));
    // Keep reading both streams so the server never blocks on a full pipe.
    readline.createInterface({ input: proc.stdout }).on('line', (line) => {
      server.output.push(line);
      const m = LISTENING.exec(line);
      if (m && !addr) addr = m[1];
    });
    readline.createInterface({ input: proc.stderr }).on('line', (line) => server.output.push(line));
    await waitFor(() => {
      if (spawnError) throw fatal(`cannot start ${SERVER_BIN}: ${spawnError.message}`);
      if (exitInfo) throw fatal(`chat-server exited early (${JSON.stringify(exitInfo)}):\n${server.output.slice(-20).join('\n')}`);
      return addr;
    }, 'the chat server to listen');
    server.addr = addr;
    server.port = Number(addr.split(':').pop());
    server.url = `ws://${addr}/`;
    server.httpUrl = `http://${addr}/`;
  }

  server.stop = async (signal = 'SIGTERM') => {
    const proc = server.proc;
    if (!proc || proc.pid === undefined) return { code: null, signal: null }; // never started
    if (proc.exitCode !== null || proc.signalCode !== null) return server.exited;
    proc.kill(signal);
    const timer = setTimeout(() => proc.kill('SIGKILL'), 10000);
    const result = await server.exited;
    clearTimeout(timer);
    return result;
  };
  server.kill = () => server.stop('SIGKILL');
  server.restart = async () => {
    await server.stop();
    await launch(server.addr);
  };
  server.cleanup = async () => {
    await server.stop('SIGKILL');
    if (ownsDir) rmSync(dir, { recursive: true, force: true });
  };

  try {
    await launch(listen);
  } catch (e) {
    await server.cleanup();
    throw e;
  }
  return server;
}

// -------------------------------------------------------------------------------------------------
// The library's terminal client

/**
 * Run `chat_client URL NICK`. Each `send(line)` is one text frame (an object is sent as JSON);
 * `events` holds every JSON line it printed, `closed` its `closed: CODE REASON` line.
 */
export function startClient(url, nick) {
  const proc = spawn(CLIENT_BIN, [url, nick], { stdio: ['pipe', 'pipe', 'pipe'] });
  const client = { proc, events: [], raw: [], closed: null, stderr: [] };
  let spawnError = null;
  proc.once('error', (e) => (spawnError = e));
  client.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  readline.createInterface({ input: proc.stdout }).on('line', (line) => {
    client.raw.push(line);
    if (line.startsWith('closed:')) client.closed = line;
    else {
      try {
        client.events.push(JSON.parse(line));
      } catch (_) {
        /* not an event */
      }
    }
  });
  readline.createInterface({ input: proc.stderr }).on('line', (line) => client.stderr.push(line));
  client.send = (line) => {
    if (spawnError) throw new Error(`cannot start ${CLIENT_BIN}: ${spawnError.message}`);
    proc.stdin.write((typeof line === 'string' ? line : JSON.stringify(line)) + '\n');
  };
  /** Wait for an event matching `pred`; returns it. */
  client.waitFor = (pred, what, timeout) =>
    waitFor(() => {
      if (spawnError) throw fatal(`cannot start ${CLIENT_BIN}: ${spawnError.message}`);
      const found = client.events.find(pred);
      if (!found && client.closed) throw fatal(`the client was closed: ${client.closed}`);
      return found;
    }, `${nick}: ${what}`, timeout);
  client.join = async (room) => {
    client.send({ op: 'join', room });
    return client.waitFor((e) => e.ev === 'joined' && e.room === room, `joined ${room}`);
  };
  /** Say `text` in `room` and wait for its acknowledgement (the msg carrying our cid). */
  let n = 0;
  client.say = async (room, text) => {
    const cid = `${nick}-${++n}`;
    client.send({ op: 'say', room, text, cid });
    return client.waitFor((e) => e.ev === 'msg' && e.cid === cid, `ack of ${JSON.stringify(text)}`);
  };
  client.close = async () => {
    if (proc.pid === undefined || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.stdin.end();
    const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await client.exited;
    clearTimeout(t);
  };
  return client;
}

// -------------------------------------------------------------------------------------------------
// A TCP relay in front of the server, for tests that must decide when a browser's (re)connection
// reaches the server: while held, new connections are accepted and their bytes kept until release.

export async function startRelay(targetPort, targetHost = '127.0.0.1') {
  const sockets = new Set();
  // Each relayed connection's two sides, for stall/unstall.
  const pairs = new Set();
  let held = false;
  let waiting = [];
  const relay = { accepted: 0 };
  const pipeTo = (client, buffered) => {
    const upstream = net.connect(targetPort, targetHost);
    sockets.add(upstream);
    upstream.on('close', () => sockets.delete(upstream));
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
    upstream.on('connect', () => {
      for (const b of buffered) upstream.write(b);
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
      const pair = { client, upstream };
      pairs.add(pair);
      upstream.on('close', () => pairs.delete(pair));
    });
    upstream.on('close', () => client.destroy());
    client.on('close', () => upstream.destroy());
  };
  const server = net.createServer((client) => {
    relay.accepted += 1;
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    if (!held) {
      client.pause();
      pipeTo(client, []);
      return;
    }
    const buffered = [];
    const onData = (b) => buffered.push(b);
    client.on('data', onData);
    client.on('error', () => {});
    waiting.push({ client, buffered, onData });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  relay.port = server.address().port;
  relay.httpUrl = `http://127.0.0.1:${relay.port}/`;
  /** Connections accepted while held (and still open). */
  relay.heldCount = () => waiting.filter((w) => !w.client.destroyed).length;
  relay.hold = () => {
    held = true;
  };
  relay.release = () => {
    held = false;
    const list = waiting;
    waiting = [];
    for (const w of list) {
      if (w.client.destroyed) continue;
      w.client.off('data', w.onData);
      w.client.pause();
      pipeTo(w.client, w.buffered);
    }
  };
  /** Stop taking the server's bytes on every relayed connection (the connections stay open):
   *  to the server, the browser has stopped reading. */
  relay.stall = () => {
    for (const { client, upstream } of pairs) {
      upstream.unpipe(client);
      upstream.pause();
    }
  };
  relay.unstall = () => {
    for (const { client, upstream } of pairs) {
      upstream.pipe(client);
      upstream.resume();
    }
  };
  /** Drop every connection relayed now (both sides see the TCP connection end). */
  relay.cut = () => {
    for (const s of sockets) s.destroy();
  };
  relay.close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(() => r()));
  };
  return relay;
}

// -------------------------------------------------------------------------------------------------
// The browser

let browserPromise = null;

export function browser() {
  if (!browserPromise) {
    browserPromise = chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  }
  return browserPromise;
}

export async function closeBrowser() {
  if (browserPromise) {
    const b = await browserPromise.catch(() => null);
    browserPromise = null;
    if (b) await b.close().catch(() => {});
  }
}

/**
 * Record console errors and uncaught exceptions of `page` in `page.errors`. `allow`: regular
 * expressions for console errors that are expected (e.g. Chromium's own "WebSocket connection
 * to ... failed" while a server is down).
 */
export function collectErrors(page, { allow = [] } = {}) {
  page.errors = [];
  page.allowErrors = allow;
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    if (page.allowErrors.some((re) => re.test(text))) return;
    page.errors.push(`console error: ${text}`);
  });
  page.on('pageerror', (err) => page.errors.push(`page error: ${err.message}`));
  return page.errors;
}

/** Chromium's console line for a WebSocket that could not connect (expected while a server is down). */
export const WS_FAILED = /WebSocket connection to '.*' failed/;

/**
 * A page in a fresh browser context (its own storage), with its errors collected and every
 * WebSocket frame recorded in `page.frames` ({dir: 'sent'|'received', data, at}).
 */
export async function newPage({ viewport = { width: 1280, height: 800 }, allowErrors = [], extraHTTPHeaders } = {}) {
  const b = await browser();
  const context = await b.newContext({ viewport, ...(extraHTTPHeaders ? { extraHTTPHeaders } : {}) });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  collectErrors(page, { allow: allowErrors });
  page.frames_ = [];
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => page.frames_.push({ dir: 'sent', data: f.payload, at: Date.now() }));
    ws.on('framereceived', (f) => page.frames_.push({ dir: 'received', data: f.payload, at: Date.now() }));
  });
  page.closeAll = () => context.close().catch(() => {});
  return page;
}

/** The JSON frames a page sent or received, parsed. */
export function framesOf(page, dir) {
  const out = [];
  for (const f of page.frames_) {
    if (f.dir !== dir || typeof f.data !== 'string') continue;
    try {
      out.push(JSON.parse(f.data));
    } catch (_) {
      /* not JSON */
    }
  }
  return out;
}

export function artifactPath(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return path.join(ARTIFACTS, name);
}

// -------------------------------------------------------------------------------------------------
// A small test runner: `test(name, fn)` registers, `run()` runs them in order. Each test gets a
// context `t` whose servers, clients, relays and pages are cleaned up after it (also on failure),
// and whose pages' console errors fail it.

const tests = [];

export function test(name, fn, { timeout = 90000 } = {}) {
  tests.push({ name, fn, timeout });
}

class TestContext {
  constructor(name) {
    this.name = name;
    this.cleanups = [];
    this.pages = [];
  }

  defer(fn) {
    this.cleanups.push(fn);
  }

  async server(extraArgs = [], opts = {}) {
    const s = await startServer(extraArgs, opts);
    this.defer(() => s.cleanup());
    return s;
  }

  client(url, nick) {
    const c = startClient(url, nick);
    this.defer(() => c.close().catch(() => c.proc.kill('SIGKILL')));
    return c;
  }

  async relay(port) {
    const r = await startRelay(port);
    this.defer(() => r.close());
    return r;
  }

  async page(opts) {
    const p = await newPage(opts);
    this.pages.push(p);
    this.defer(() => p.closeAll());
    return p;
  }

  /** Fail if any page of this test logged a console error or threw. */
  checkPages() {
    const errors = this.pages.flatMap((p) => p.errors);
    if (errors.length) throw new Error(`errors on the page:\n    ${errors.join('\n    ')}`);
  }

  async cleanup() {
    for (const fn of this.cleanups.reverse()) {
      try {
        await fn();
      } catch (e) {
        console.error(`  (cleanup of "${this.name}" failed: ${e.message})`);
      }
    }
    this.cleanups = [];
  }
}

/** Run the registered tests (those whose name contains one of `filters`, if any); exits 1 on
 *  failure, and when a filter matches no test (a typo must not pass as "0 failed"). */
export async function run(filters = process.argv.slice(2)) {
  const unmatched = filters.filter((f) => !tests.some((t) => t.name.includes(f)));
  if (unmatched.length) {
    console.log(`FAILED: no test name contains ${unmatched.map((f) => JSON.stringify(f)).join(', ')}`);
    process.exit(1);
  }
  const chosen = filters.length ? tests.filter((t) => filters.some((f) => t.name.includes(f))) : tests;
  let failed = 0;
  const started = Date.now();
  for (const { name, fn, timeout } of chosen) {
    const t = new TestContext(name);
    const t0 = Date.now();
    let error = null;
    let timer;
    try {
      await Promise.race([
        (async () => {
          await fn(t);
          t.checkPages();
        })(),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`test timed out after ${timeout} ms`)), timeout);
        }),
      ]);
    } catch (e) {
      error = e;
    } finally {
      clearTimeout(timer);
      // Errors seen during a failing test are part of its story.
      if (error) {
        const errors = t.pages.flatMap((p) => p.errors);
        if (errors.length && !String(error.message).includes('errors on the page')) {
          error.message += `\n    page errors:\n      ${errors.join('\n      ')}`;
        }
      }
      await t.cleanup();
    }
    const secs = ((Date.now() - t0) / 1000).toFixed(1);
    if (error) {
      failed += 1;
      // Playwright's call logs are long: the first lines say enough.
      // eslint-disable-next-line no-control-regex
      const lines = String(error.message).replace(/\x1b\[[0-9;]*m/g, '').split('\n');
      const message = lines.length > 12 ? [...lines.slice(0, 12), `    ... (${lines.length - 12} more lines; VERBOSE=1 for the stack)`].join('\n') : lines.join('\n');
      console.log(`FAILED ${name} (${secs} s): ${message}`);
      if (process.env.VERBOSE && error.stack) console.log(error.stack);
    } else {
      console.log(`ok     ${name} (${secs} s)`);
    }
  }
  await closeBrowser();
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  console.log(`${chosen.length - failed} passed, ${failed} failed (${secs} s)`);
  process.exit(failed ? 1 : 0);
}
