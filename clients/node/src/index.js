// @authd/verify: verify authd access tokens in a Node service, with no call
// to authd per request. Keys come from authd's JWK Set (fetched at start,
// every five minutes, and again — at most once per 10 s — when a token names
// an unknown kid) or from the HS256 secret; ended sessions come from the
// revocation feed (GET /revocations at start, then GET /revocations/stream,
// resumed from its cursor after every disconnection). While authd is down it
// goes on with the keys and revocations it last had.

import { createHash } from 'node:crypto';
import { createLocalJWKSet, jwtVerify } from 'jose';

export const ACCESS_TYP = 'at+jwt';
const MAX_TOKEN_LEN = 4096;
const FETCH_TIMEOUT_MS = 5_000;
// authd sends a keep-alive comment every 15 s: silence beyond this is a dead connection.
const IDLE_MS = 45_000;
const MIN_BACKOFF_MS = 100;
const MAX_BACKOFF_MS = 10_000;

/** Why a token was refused: `code` is one of malformed, wrong_type,
 * algorithm, unknown_key, signature, claims, expired, revoked. */
export class VerifyError extends Error {
  constructor(code, message) {
    super(message ?? code);
    this.name = 'VerifyError';
    this.code = code;
  }
}

// authd's key id for an HMAC secret (see authd's tokens::kid_for).
function kidFor(secret) {
  return createHash('sha256').update('authd-kid:').update(secret).digest().subarray(0, 8).toString('hex');
}

async function fetchJson(url, headers = {}) {
  const r = await fetch(url, { headers, signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms).unref?.());

export class Verifier {
  #base; #algorithms; #issuer; #audience; #leeway; #keep; #refetchMs;
  #hmac = null; #jwks = null; #keys = null; #lastFetch = 0; #fetching = null;
  #feedToken; #revoked = new Map(); #cursor = ''; #connected = false;
  #waiters = []; #stopped = false; #abort = null; #timers = []; #nextPrune = 0;

  /**
   * @param {object} o
   * @param {string} o.url authd's URL, with BASE_PATH if any.
   * @param {string[]} [o.algorithms] accepted with the JWKS (default EdDSA and ES256).
   * @param {string} [o.secret] HS256: authd's ACCESS_TOKEN_SECRET (then no JWKS).
   * @param {string} [o.previousSecret] HS256: ACCESS_TOKEN_SECRET_PREVIOUS, during a rotation.
   * @param {string} [o.revocationsToken] authd's REVOCATIONS_TOKEN: follow the feed.
   * @param {string} [o.issuer] JWT_ISSUER (default authd).
   * @param {string} [o.audience] JWT_AUDIENCE (default authd).
   * @param {number} [o.tokenLifetime] ACCESS_TOKEN_TTL in seconds (default 900).
   * @param {number} [o.leeway] clock skew tolerated, seconds (default 30).
   * @param {number} [o.refetchInterval] ms between refetches on unknown kids (default 10000).
   */
  constructor(o) {
    if (!/^https?:\/\//.test(o?.url ?? '')) throw new TypeError('url must be an http(s) URL');
    this.#base = o.url.replace(/\/+$/, '');
    this.#issuer = o.issuer ?? 'authd';
    this.#audience = o.audience ?? 'authd';
    this.#leeway = o.leeway ?? 30;
    this.#keep = (o.tokenLifetime ?? 900) + this.#leeway;
    this.#refetchMs = o.refetchInterval ?? 10_000;
    this.#feedToken = o.revocationsToken;
    if (o.secret) {
      this.#algorithms = ['HS256'];
      const enc = new TextEncoder();
      this.#hmac = new Map([o.secret, o.previousSecret].filter(Boolean).map((s) => [kidFor(s), enc.encode(s)]));
    } else {
      this.#algorithms = o.algorithms ?? ['EdDSA', 'ES256'];
      if (this.#algorithms.some((a) => a.startsWith('HS'))) throw new TypeError('HMAC needs `secret`, not the JWKS');
    }
  }

  /** A started verifier: keys and revocations read, the feed followed. Throws if authd cannot be read. */
  static async start(options) {
    const v = new Verifier(options);
    try {
      await v.#start();
    } catch (e) {
      v.stop();
      throw e;
    }
    return v;
  }

  async #start() {
    if (!this.#hmac) {
      this.#lastFetch = Date.now();
      this.#setKeys(await fetchJson(`${this.#base}/.well-known/jwks.json`));
      const t = setInterval(() => this.#refetch(true).catch(() => {}), 300_000);
      t.unref?.();
      this.#timers.push(t);
    }
    if (this.#feedToken) {
      await this.#catchUp();
      this.#follow();
    }
  }

  #setKeys(jwks) {
    // Only keys of an accepted algorithm, each used with its own `alg` alone.
    const keys = (jwks.keys ?? []).filter((k) => k.kid && this.#algorithms.includes(k.alg));
    this.#jwks = createLocalJWKSet({ keys });
    this.#keys = new Set(keys.map((k) => k.kid));
  }

  // Fetch the JWKS again unless fetched within the refetch interval; on
  // failure keep the keys we have.
  async #refetch(periodic = false) {
    if (this.#fetching) return this.#fetching;
    if (!periodic && Date.now() - this.#lastFetch < this.#refetchMs) return;
    this.#lastFetch = Date.now();
    this.#fetching = fetchJson(`${this.#base}/.well-known/jwks.json`)
      .then((jwks) => this.#setKeys(jwks))
      .catch(() => {})
      .finally(() => { this.#fetching = null; });
    return this.#fetching;
  }

  #key = async (header, token) => {
    if (this.#hmac) {
      const key = this.#hmac.get(header.kid);
      if (!key) throw new VerifyError('unknown_key');
      return key;
    }
    if (typeof header.kid !== 'string') throw new VerifyError('unknown_key');
    if (!this.#keys.has(header.kid)) {
      await this.#refetch();
      if (!this.#keys.has(header.kid)) throw new VerifyError('unknown_key');
    }
    return this.#jwks(header, token);
  };

  /** Verify an access token; resolves to its claims or rejects with a VerifyError. */
  async verify(token) {
    if (typeof token !== 'string' || !token || token.length > MAX_TOKEN_LEN || token.split('.').length !== 3) {
      throw new VerifyError('malformed');
    }
    let payload;
    try {
      ({ payload } = await jwtVerify(token, this.#key, {
        algorithms: this.#algorithms,
        issuer: this.#issuer,
        audience: this.#audience,
        typ: ACCESS_TYP,
        clockTolerance: this.#leeway,
        requiredClaims: ['exp', 'iss', 'aud', 'sub', 'sid', 'iat'],
      }));
    } catch (e) {
      if (e instanceof VerifyError) throw e;
      switch (e.code) {
        case 'ERR_JWT_EXPIRED': throw new VerifyError('expired', 'the token has expired');
        case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED': throw new VerifyError('signature');
        case 'ERR_JOSE_ALG_NOT_ALLOWED': throw new VerifyError('algorithm');
        case 'ERR_JWKS_NO_MATCHING_KEY': throw new VerifyError('unknown_key');
        case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
          throw new VerifyError(e.claim === 'typ' ? 'wrong_type' : 'claims', e.message);
        default: throw new VerifyError('malformed');
      }
    }
    if (payload.iat > Date.now() / 1000 + this.#leeway || payload.exp < payload.iat) {
      throw new VerifyError('claims', 'iat is in the future');
    }
    if (this.#revoked.has(payload.sid)) throw new VerifyError('revoked', "the token's session has ended");
    return payload;
  }

  /** Express (or plain node:http) middleware: a valid Bearer access token or 401; claims in req.auth. */
  middleware() {
    return (req, res, next) => {
      const m = /^bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
      if (!m) return refuse(res, 'missing_token', 'Authentication required', 'an access token is required (Authorization: Bearer)', 'Bearer');
      this.verify(m[1]).then(
        (claims) => { req.auth = claims; next(); },
        (e) => e.code === 'expired'
          ? refuse(res, 'token_expired', 'Token expired', e.message, 'Bearer error="invalid_token"')
          : refuse(res, 'invalid_token', 'Invalid token', e.message, 'Bearer error="invalid_token"'),
      );
    };
  }

  /** Whether this session ended (as far as the feed has told). */
  isRevoked(sid) { return this.#revoked.has(sid); }
  get revokedSessions() { return this.#revoked.size; }
  get cursor() { return this.#cursor; }
  get following() { return this.#connected; }

  /** Resolves once the revocation stream is connected. */
  waitFollowing() {
    return this.#connected ? Promise.resolve() : new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Stop following the feed and refreshing keys. */
  stop() {
    this.#stopped = true;
    this.#abort?.abort();
    this.#timers.forEach(clearInterval);
  }

  #apply({ sid, at }) {
    const now = Date.now() / 1000;
    const forget = Date.parse(at) / 1000 + this.#keep;
    if (typeof sid === 'string' && forget > now) this.#revoked.set(sid, forget);
    if (now >= this.#nextPrune) {
      for (const [s, f] of this.#revoked) if (f <= now) this.#revoked.delete(s);
      this.#nextPrune = now + 60;
    }
  }

  #auth() { return { authorization: `Bearer ${this.#feedToken}` }; }

  async #catchUp() {
    for (;;) {
      const page = await fetchJson(`${this.#base}/revocations?after=${encodeURIComponent(this.#cursor)}`, this.#auth());
      if (!page.revoked.length) return;
      page.revoked.forEach((e) => this.#apply(e));
      this.#cursor = page.cursor;
    }
  }

  #setConnected(c) {
    this.#connected = c;
    if (c) this.#waiters.splice(0).forEach((resolve) => resolve());
  }

  async #follow() {
    let backoff = MIN_BACKOFF_MS;
    while (!this.#stopped) {
      const connected = await this.#followOnce().catch(() => false);
      this.#setConnected(false);
      if (this.#stopped) return;
      if (connected) backoff = MIN_BACKOFF_MS;
      await sleep(backoff);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    }
  }

  // One connection; resolves to whether it was established.
  async #followOnce() {
    const abort = new AbortController();
    this.#abort = abort;
    let idle = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    const headers = { ...this.#auth(), accept: 'text/event-stream' };
    if (this.#cursor) headers['last-event-id'] = this.#cursor;
    let response;
    try {
      response = await fetch(`${this.#base}/revocations/stream`, { headers, signal: abort.signal });
      if (!response.ok) return false;
    } catch {
      clearTimeout(idle);
      return false;
    }
    this.#setConnected(true);
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      for await (const chunk of response.body) {
        clearTimeout(idle);
        idle = setTimeout(() => abort.abort(), IDLE_MS);
        buffer += decoder.decode(chunk, { stream: true }).replace(/\r\n?/g, '\n');
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          this.#event(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch {
      // Broken or idle: reconnect.
    } finally {
      clearTimeout(idle);
    }
    return true;
  }

  // One SSE event block (comments and unknown fields ignored).
  #event(block) {
    let event = 'message', id = null;
    const data = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'id') id = value;
      else if (field === 'data') data.push(value);
    }
    if (event !== 'revoked') return;
    try {
      this.#apply(JSON.parse(data.join('\n')));
      if (id) this.#cursor = id;
    } catch {
      // An unreadable entry is skipped.
    }
  }
}

function refuse(res, code, title, detail, challenge) {
  res.statusCode = 401;
  res.setHeader('content-type', 'application/problem+json');
  res.setHeader('www-authenticate', challenge);
  res.end(JSON.stringify({ type: `urn:authd:problem:${code}`, title, status: 401, detail, code }));
}
