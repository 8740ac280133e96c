// Shared plumbing for the browser tests: start authd (dev or serve, SQLite in
// a temp dir), tiny static servers for "other origins", and headless
// Chromium. Everything started here is stopped by the test that started it
// (t.after) and, as a last resort, when this process exits.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(fileURLToPath(new URL('../..', import.meta.url)));
const AUTHD_BIN = process.env.AUTHD_BIN || path.join(ROOT, 'target', 'debug', 'authd');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/** A port nobody listens on right now (authd must be told its port up front). */
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

/**
 * Start `authd dev` or `authd serve` on a free loopback port with a fresh
 * SQLite database in a temp dir; resolves once GET /health/ready answers 200.
 * The environment is built from scratch: a DATABASE_URL or secret exported by
 * the caller (scripts/test.sh exports a Postgres URL) must not leak in.
 */
export async function startAuthd({ mode = 'dev', env = {} } = {}) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startAuthdOnce(mode, env);
    } catch (e) {
      // The free port may have been taken between freePort() and bind.
      if (attempt < 3 && /in use/i.test(e.message)) continue;
      throw e;
    }
  }
}

async function startAuthdOnce(mode, extraEnv) {
  const dir = mkdtempSync(path.join(tmpdir(), 'authd-e2e-'));
  const port = await freePort();
  const origin = `http://127.0.0.1:${port}`;
  // Every route is under BASE_PATH when one is set.
  const url = origin + (extraEnv.BASE_PATH || '').replace(/\/+$/, '');
  const env = {
    PATH: process.env.PATH,
    HOME: dir,
    BIND_ADDR: `127.0.0.1:${port}`,
    LOG_FORMAT: 'json',
    RUST_LOG: 'info',
  };
  if (mode === 'serve') {
    const secret = () => execFileSync(AUTHD_BIN, ['secret', 'generate'], { encoding: 'utf8' }).trim();
    Object.assign(env, {
      DATABASE_URL: `sqlite://${path.join(dir, 'authd.db')}`,
      ACCESS_TOKEN_SECRET: secret(),
      REFRESH_TOKEN_SECRET: secret(),
      DEMO_ENABLED: 'true',
    });
  }
  Object.assign(env, extraEnv);

  // cwd = the temp dir: `dev` keeps ./data/ there, `serve` finds no .env there.
  const child = spawn(AUTHD_BIN, [mode], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let stdout = '';
  let stderr = '';
  const onStdout = new EventTarget();
  child.stdout.setEncoding('utf8').on('data', (d) => {
    stdout += d;
    onStdout.dispatchEvent(new Event('data'));
  });
  child.stderr.setEncoding('utf8').on('data', (d) => { stderr += d; });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let gone = null;
  exited.then((e) => { gone = e; children.delete(child); });

  const server = {
    mode,
    url,
    origin,
    port,
    get stdout() { return stdout; },
    get stderr() { return stderr; },
    /** The request log (LOG_FORMAT=json): [{ method, path, status }]. */
    requests() {
      return stderr.split('\n').flatMap((line) => {
        if (!line.startsWith('{')) return [];
        try {
          const e = JSON.parse(line);
          return e.message === 'finished processing request' && e.span
            ? [{ method: e.span.method, path: e.span.path, status: e.status }]
            : [];
        } catch {
          return [];
        }
      });
    },
    /** Resolves once stdout matches `re` (e.g. the dev banner). */
    stdoutMatching(re, ms = 10_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          if (!re.test(stdout)) return;
          onStdout.removeEventListener('data', check);
          clearTimeout(timer);
          resolve(stdout);
        };
        const timer = setTimeout(() => {
          onStdout.removeEventListener('data', check);
          reject(new Error(`authd printed no ${re} within ${ms} ms:\n${stdout}`));
        }, ms);
        onStdout.addEventListener('data', check);
        check();
      });
    },
    warnings() {
      return stderr.split('\n').filter((l) => l.includes('"level":"WARN"'));
    },
    async stop() {
      if (!gone) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };

  // Readiness: poll /health/ready until 200, or fail as soon as authd exits.
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (gone) {
      await server.stop();
      throw new Error(`authd ${mode} exited (${JSON.stringify(gone)}) before it was ready:\n${stdout}\n${stderr}`);
    }
    try {
      const res = await fetch(`${url}/health/ready`, { signal: AbortSignal.timeout(2000) });
      if (res.status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      await server.stop();
      throw new Error(`authd ${mode} not ready on ${url} within 30 s:\n${stdout}\n${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return server;
}

/** Per test: `authd dev` (stopped by t.after), once it has printed its banner. */
export async function devServer(t, env = {}) {
  const authd = await startAuthd({ mode: 'dev', env });
  t.after(() => authd.stop());
  await authd.stdoutMatching(new RegExp(`listening on ${authd.url.replace(/\./g, '\\.')}\\b`));
  return authd;
}

/**
 * A tiny HTTP server for pages on another origin: `routes` maps a path to
 * { body, type?, headers? } (or a function of the request returning that).
 * It listens on 127.0.0.1 and, when possible, on [::1] with the same port, so
 * that http://localhost:<port> works whichever address the browser tries.
 */
export async function startStatic(routes) {
  const cookiesSeen = []; // the Cookie header of every request it got
  const handler = (req, res) => {
    if (req.headers.cookie) cookiesSeen.push(req.headers.cookie);
    const route = routes[new URL(req.url, 'http://x').pathname];
    const r = typeof route === 'function' ? route(req) : route;
    if (!r) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': r.type || 'text/html; charset=utf-8', ...r.headers }).end(r.body);
  };
  const v4 = createServer(handler);
  await new Promise((resolve, reject) => v4.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = v4.address();
  const v6 = createServer(handler);
  const v6ok = await new Promise((resolve) => {
    v6.once('error', () => resolve(false)).listen(port, '::1', () => resolve(true));
  });
  const close = (srv) => new Promise((resolve) => { srv.closeAllConnections(); srv.close(() => resolve()); });
  return {
    port,
    origin: `http://127.0.0.1:${port}`,
    localhostOrigin: `http://localhost:${port}`,
    cookiesSeen,
    async stop() {
      await Promise.all([close(v4), v6ok ? close(v6) : null]);
    },
  };
}

/** The demo's own files, as on disk (the binary embeds the same files). */
export function demoFiles() {
  return {
    html: readFileSync(path.join(ROOT, 'demo', 'index.html'), 'utf8'),
    js: readFileSync(path.join(ROOT, 'demo', 'app.js'), 'utf8'),
  };
}

/** The CSP authd serves /demo with (src/http/demo.rs). */
export const DEMO_CSP = "default-src 'self'; connect-src *; style-src 'self' 'unsafe-inline'; "
  + "frame-ancestors 'none'; base-uri 'none'; object-src 'none'; form-action 'self'";

/** Headless Chromium with its own fresh profile (playwright-core makes a temp user-data-dir). */
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
}

/**
 * Per test: a browser and a fresh context (Playwright context `options`, e.g.
 * { userAgent }), closed by t.after. More contexts of `browser` are more
 * "devices": each has its own cookie jar.
 */
export async function browserContext(t, options = {}) {
  const browser = await launchBrowser();
  t.after(() => browser.close());
  const context = await browser.newContext(options);
  return { browser, context };
}

/**
 * Open the demo page and wait until its on-load session restore is done.
 * Page errors and CSP violations fail the test.
 */
export async function openDemo(context, url) {
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) problems.push(m.text());
  });
  page.demoProblems = problems;
  await page.goto(url);
  await page.evaluate(() => window.authd.ready);
  return page;
}

/** Record every response of `page` to an authd path: [{ path, method, status, response }]. */
export function recordResponses(page, authdUrl) {
  const seen = [];
  page.on('response', (response) => {
    const u = new URL(response.url());
    if (u.origin === authdUrl) {
      seen.push({ path: u.pathname, method: response.request().method(), status: response.status(), response });
    }
  });
  return seen;
}

/** The refresh cookie in the context's jar (undefined when there is none). */
export async function refreshCookie(context, authdUrl, name = '__Host-authd_rt') {
  return (await context.cookies(authdUrl)).find((c) => c.name === name);
}

let counter = 0;
export function newUser() {
  counter += 1;
  return { email: `user${process.pid}-${counter}-${Date.now()}@example.com`, password: 'correct horse battery staple' };
}

/**
 * What the browser itself says about each request of `page`, as sent (Chrome
 * DevTools Protocol): its headers, and every cookie it considered, attached
 * (blocked: []) or withheld and why. Playwright's request headers lack the
 * Cookie header of opaque (no-cors) requests, hence this.
 * Returns sent(method, url) -> { headers, cookies: [{ name, value, blocked }] }.
 */
export async function cookieWitness(context, page) {
  const cdp = await context.newCDPSession(page);
  const requests = new Map(); // requestId -> "METHOD url"
  const extra = [];
  cdp.on('Network.requestWillBeSent', (e) => requests.set(e.requestId, `${e.request.method} ${e.request.url}`));
  cdp.on('Network.requestWillBeSentExtraInfo', (e) => extra.push(e));
  await cdp.send('Network.enable');
  return {
    sent(method, url) {
      const found = extra.filter((e) => requests.get(e.requestId) === `${method} ${url}`);
      assert.equal(found.length, 1, `exactly one ${method} ${url} was sent`);
      return {
        headers: found[0].headers,
        cookies: found[0].associatedCookies.map((c) => ({
          name: c.cookie.name, value: c.cookie.value, blocked: c.blockedReasons,
        })),
      };
    },
  };
}
