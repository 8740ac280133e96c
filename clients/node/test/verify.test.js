// The Node kit against a real authd: a live token accepted (directly and
// through the Express middleware), a revoked session's token refused within
// a second of /logout-all, forged / expired / wrong-audience / wrong-typ
// tokens refused, and with authd stopped the last known keys and revocations
// still used, then what was missed caught up when authd is back.
import assert from 'node:assert/strict';
import { createPrivateKey } from 'node:crypto';
import { after, test } from 'node:test';
import express from 'express';
import { SignJWT, decodeJwt, decodeProtectedHeader } from 'jose';
import { Verifier, VerifyError } from '../src/index.js';
import { ACCESS_SECRET, Authd, FEED_TOKEN, ed25519Pem, within } from './authd.js';

const running = [];
after(async () => {
  for (const x of running) await (x.stop?.() ?? x.close?.());
});

async function startAuthd(extra) {
  const a = await Authd.start(extra);
  running.push(a);
  return a;
}

async function startVerifier(options) {
  const v = await Verifier.start(options);
  running.push(v);
  if (options.revocationsToken) await v.waitFollowing();
  return v;
}

async function downstream(verifier) {
  const app = express();
  app.get('/me', verifier.middleware(), (req, res) => res.json(req.auth));
  const server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  running.push({ stop: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }) });
  return `http://127.0.0.1:${server.address().port}/me`;
}

const rejectsWith = (promise, code, name) =>
  assert.rejects(promise, (e) => e instanceof VerifyError && e.code === code, `${name}: expected ${code}`);

async function liveThenRevoked(authd, options) {
  const v = await startVerifier({ url: authd.base, revocationsToken: FEED_TOKEN, ...options });
  const me = await downstream(v);
  const keep = await authd.signedIn('keep@example.com');
  for (let round = 0; round < 3; round++) {
    const { access, sid } = await authd.signedIn('ada@example.com');
    assert.equal((await v.verify(access)).sid, sid);
    let r = await fetch(me, { headers: { authorization: `Bearer ${access}` } });
    assert.equal(r.status, 200);
    assert.equal((await r.json()).sid, sid);

    await authd.logoutAll(access);
    const took = await within(1000, () => v.verify(access).then(() => false, (e) => e.code === 'revoked'));
    console.log(`refused ${took.toFixed(1)} ms after the 204`);
    r = await fetch(me, { headers: { authorization: `Bearer ${access}` } });
    assert.equal(r.status, 401);
    assert.equal(r.headers.get('content-type'), 'application/problem+json');
    assert.equal((await r.json()).code, 'invalid_token');
    await v.verify(keep.access);
  }
  const r = await fetch(me);
  assert.equal(r.status, 401);
  assert.equal((await r.json()).code, 'missing_token');
}

test('EdDSA from the JWKS: live accepted, revoked refused within a second', async () => {
  const authd = await startAuthd({ ACCESS_TOKEN_ALG: 'EdDSA', ACCESS_TOKEN_PRIVATE_KEY: ed25519Pem() });
  await liveThenRevoked(authd, { algorithms: ['EdDSA'] });
});

test('HS256 with the secret: live accepted, revoked refused within a second', async () => {
  const authd = await startAuthd({});
  await liveThenRevoked(authd, { secret: ACCESS_SECRET });
});

test('forged, expired, wrong-audience and wrong-typ tokens are refused', async () => {
  const pem = ed25519Pem();
  const authd = await startAuthd({ ACCESS_TOKEN_ALG: 'EdDSA', ACCESS_TOKEN_PRIVATE_KEY: pem });
  const v = await startVerifier({ url: authd.base, algorithms: ['EdDSA'], revocationsToken: FEED_TOKEN });
  const { access } = await authd.signedIn('ada@example.com');
  const claims = decodeJwt(access);
  const { kid } = decodeProtectedHeader(access);
  const real = createPrivateKey(pem);
  const stranger = createPrivateKey(ed25519Pem());
  const now = Math.floor(Date.now() / 1000);
  const sign = (header, c, key) => new SignJWT(c).setProtectedHeader(header).sign(key);
  const good = { alg: 'EdDSA', typ: 'at+jwt', kid };
  // The test's own signing with the real key is accepted.
  await v.verify(await sign(good, claims, real));
  const jwks = await (await fetch(`${authd.base}/.well-known/jwks.json`)).text();
  const [, payload, sig] = access.split('.');
  const none = Buffer.from(JSON.stringify({ alg: 'none', typ: 'at+jwt', kid })).toString('base64url');
  const cases = [
    ['another key under our kid', await sign(good, claims, stranger), 'signature'],
    ['another key under its own kid', await sign({ ...good, kid: 'stranger' }, claims, stranger), 'unknown_key'],
    ['HS256 keyed with the public JWKS', await sign({ ...good, alg: 'HS256' }, claims, new TextEncoder().encode(jwks)), 'algorithm'],
    ['alg none', `${none}.${payload}.`, 'algorithm'],
    ['a flipped signature', access.replace(/\.[^.]+$/, `.${sig[0] === 'A' ? 'B' : 'A'}${sig.slice(1)}`), 'signature'],
    ['expired beyond the leeway', await sign(good, { ...claims, exp: now - 120 }, real), 'expired'],
    ['wrong audience', await sign(good, { ...claims, aud: 'billing' }, real), 'claims'],
    ['wrong issuer', await sign(good, { ...claims, iss: 'evil' }, real), 'claims'],
    ['issued in the future', await sign(good, { ...claims, iat: now + 3600 }, real), 'claims'],
    ['typ JWT', await sign({ ...good, typ: 'JWT' }, claims, real), 'wrong_type'],
    ['a refresh token typ', await sign({ ...good, typ: 'rt+jwt' }, claims, real), 'wrong_type'],
    ['not a JWT', 'hello', 'malformed'],
  ];
  for (const [name, token, code] of cases) await rejectsWith(v.verify(token), code, name);
  const es256Only = await startVerifier({ url: authd.base, algorithms: ['ES256'] });
  await rejectsWith(es256Only.verify(access), 'algorithm', 'pinned to ES256');
  const billing = await startVerifier({ url: authd.base, audience: 'billing' });
  await rejectsWith(billing.verify(access), 'claims', 'another audience');
});

test('with authd down it goes on, and catches up when authd is back', async () => {
  const authd = await startAuthd({ ACCESS_TOKEN_ALG: 'EdDSA', ACCESS_TOKEN_PRIVATE_KEY: ed25519Pem() });
  const v = await startVerifier({ url: authd.base, algorithms: ['EdDSA'], revocationsToken: FEED_TOKEN });
  const live = await authd.signedIn('ada@example.com');
  const revoked = await authd.signedIn('bob@example.com');
  await authd.logoutAll(revoked.access);
  await within(1000, () => v.isRevoked(revoked.sid));

  await authd.stop();
  await within(10_000, () => !v.following);
  await v.verify(live.access);
  await rejectsWith(v.verify(revoked.access), 'revoked', 'revoked before the outage');
  const stranger = createPrivateKey(ed25519Pem());
  const unknown = await new SignJWT(decodeJwt(live.access))
    .setProtectedHeader({ alg: 'EdDSA', typ: 'at+jwt', kid: 'rotated' })
    .sign(stranger);
  await rejectsWith(v.verify(unknown), 'unknown_key', 'unknown kid while authd is down');
  await v.verify(live.access);

  await authd.restart();
  await authd.logoutAll(live.access);
  await within(15_000, () => v.isRevoked(live.sid));
  await rejectsWith(v.verify(live.access), 'revoked', 'revoked while reconnecting');
});
