// A real authd for the tests: `authd serve` ($AUTHD_BIN) on a free port,
// on the fresh database $AUTHD_TEST_DATABASE_URL (test.sh creates it), killed
// by its own process id.
import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:net';

export const ACCESS_SECRET = 'node-kit-access-secret-0123456789abcdef0123456';
export const FEED_TOKEN = 'node-kit-feed-credential-0123456789abcdef012345';
const PASSWORD = 'correct horse battery';

export function ed25519Pem() {
  return generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Poll `check` until it is true, at most `limitMs`; resolves to the ms it took. */
export async function within(limitMs, check) {
  const started = performance.now();
  for (;;) {
    if (await check()) return performance.now() - started;
    if (performance.now() - started > limitMs) throw new Error(`not within ${limitMs} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

export class Authd {
  constructor(env) {
    this.env = env;
    this.child = null;
  }

  static async start(extra = {}) {
    const bin = process.env.AUTHD_BIN;
    const db = process.env.AUTHD_TEST_DATABASE_URL;
    if (!bin || !db) throw new Error('run through clients/node/test.sh (AUTHD_BIN, AUTHD_TEST_DATABASE_URL)');
    const a = new Authd({
      PATH: process.env.PATH,
      DATABASE_URL: db,
      // Only with HS256: authd warns that EdDSA ignores it.
      ...(extra.ACCESS_TOKEN_ALG ? {} : { ACCESS_TOKEN_SECRET: ACCESS_SECRET }),
      REFRESH_TOKEN_SECRET: 'node-kit-refresh-secret-0123456789abcdef012345',
      REVOCATIONS_TOKEN: FEED_TOKEN,
      RATE_LIMIT_PER_IP: '0',
      RUST_LOG: 'warn',
      ...extra,
    });
    a.port = await freePort();
    a.base = `http://127.0.0.1:${a.port}`;
    await a.spawn();
    return a;
  }

  async spawn() {
    this.child = spawn(process.env.AUTHD_BIN, ['serve'], {
      env: { ...this.env, BIND_ADDR: `127.0.0.1:${this.port}` },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const exited = new Promise((_, reject) => this.child.once('exit', (c) => reject(new Error(`authd exited: ${c}`))));
    exited.catch(() => {});
    await Promise.race([
      within(30_000, async () => {
        try {
          return (await fetch(`${this.base}/health/ready`)).ok;
        } catch {
          return false;
        }
      }),
      exited,
    ]);
  }

  async stop() {
    if (!this.child) return;
    const child = this.child;
    this.child = null;
    if (child.exitCode !== null) return;
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await gone;
  }

  async restart() {
    await this.stop();
    await this.spawn();
  }

  async post(path, body, headers = {}) {
    return fetch(`${this.base}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  /** Register (if needed) and log in: { access, sid }. */
  async signedIn(email) {
    const creds = { email, password: PASSWORD };
    const r = await this.post('/register', creds);
    if (r.status !== 201 && r.status !== 409) throw new Error(`register: ${r.status}`);
    const l = await this.post('/login', creds);
    if (l.status !== 200) throw new Error(`login: ${l.status}`);
    const body = await l.json();
    return { access: body.access_token, sid: body.session_id };
  }

  async logoutAll(access) {
    const r = await fetch(`${this.base}/logout-all`, { method: 'POST', headers: { authorization: `Bearer ${access}` } });
    if (r.status !== 204) throw new Error(`logout-all: ${r.status}`);
  }
}
