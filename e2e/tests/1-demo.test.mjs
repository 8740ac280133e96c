// The demo frontend served by authd itself (`authd dev`, same origin), in
// headless Chromium: sign-in survives a reload, two tabs refreshing at once
// both stay signed in, and a logout in one tab signs the other out.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  browserContext, devServer, newUser, openDemo, recordResponses, refreshCookie,
} from '../lib/harness.mjs';

const COOKIE = '__Host-authd_rt';

const statusOf = (page) => page.locator('#status');

async function expectSignedIn(page, email) {
  await page.locator('#status[data-state="signed-in"]').waitFor();
  assert.equal(await statusOf(page).textContent(), `Signed in as ${email}`);
  assert.deepEqual(page.demoProblems, []);
}

test('log in through the demo, /me, reload: still signed in; the refresh token is HttpOnly', { timeout: 60_000 }, async (t) => {
  const authd = await devServer(t);
  const { context } = await browserContext(t);
  const page = await openDemo(context, `${authd.url}/demo`);
  const responses = recordResponses(page, authd.url);
  const user = newUser();

  // No cookie yet: the silent refresh on load finds no session.
  await page.locator('#status[data-state="signed-out"]').waitFor();

  await page.fill('#email', user.email);
  await page.fill('#password', user.password);
  await page.click('#register');
  await page.locator('#message', { hasText: `Registered ${user.email}` }).waitFor();
  await page.click('#login');
  await expectSignedIn(page, user.email);

  await page.locator('#me-result').evaluate((el) => { el.textContent = ''; });
  await page.click('#me');
  await page.locator('#me-result', { hasText: user.email }).waitFor();

  // The refresh token: in the browser's jar, HttpOnly, Secure, __Host-,
  // SameSite=Strict; never visible to page scripts.
  const cookie = await refreshCookie(context, authd.url, COOKIE);
  assert.ok(cookie, `the ${COOKIE} cookie is in the jar (Chromium accepted a Secure cookie from http://127.0.0.1)`);
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.secure, true);
  assert.equal(cookie.sameSite, 'Strict');
  assert.equal(cookie.path, '/');
  const storage = () => page.evaluate(() => ({
    cookie: document.cookie,
    local: { ...localStorage },
    session: { ...sessionStorage },
  }));
  const before = await storage();
  assert.equal(before.cookie, '', 'document.cookie shows nothing');
  assert.deepEqual(before.local, {}, 'nothing in localStorage (the access token is in memory only)');
  assert.deepEqual(before.session, {}, 'nothing in sessionStorage');

  // Reload: the in-memory access token is gone; the cookie restores the session.
  const refreshesBefore = responses.filter((r) => r.path === '/refresh').length;
  await page.reload();
  await page.evaluate(() => window.authd.ready);
  await expectSignedIn(page, user.email);
  const refreshes = responses.filter((r) => r.path === '/refresh').slice(refreshesBefore);
  assert.deepEqual(refreshes.map((r) => r.status), [200], 'one silent refresh on load');
  const rotated = await refreshCookie(context, authd.url, COOKIE);
  assert.notEqual(rotated.value, cookie.value, 'the refresh rotated the cookie');

  await page.locator('#me-result').evaluate((el) => { el.textContent = ''; });
  await page.click('#me');
  await page.locator('#me-result', { hasText: user.email }).waitFor();
  const after = await storage();
  assert.equal(after.cookie, '');
  assert.ok(!after.cookie.includes(rotated.value));
  assert.deepEqual(after.local, {});
  assert.deepEqual(after.session, {});
});

test('two tabs refreshing at the same moment both stay signed in', { timeout: 60_000 }, async (t) => {
  const authd = await devServer(t);
  const { context } = await browserContext(t);
  const user = newUser();

  // Tab A signs in; tab B (same browser context: same cookie jar) opens next
  // and restores the session from the cookie.
  const a = await openDemo(context, `${authd.url}/demo`);
  assert.equal((await a.evaluate((u) => window.authd.register(u.email, u.password), user)).status, 201);
  assert.equal((await a.evaluate((u) => window.authd.login(u.email, u.password), user)).status, 200);
  await expectSignedIn(a, user.email);
  const b = await openDemo(context, `${authd.url}/demo`);
  await expectSignedIn(b, user.email);

  const seen = { a: recordResponses(a, authd.url), b: recordResponses(b, authd.url) };
  const refreshesOf = (tab) => seen[tab].filter((r) => r.path === '/refresh');
  const sameTokenRounds = [];
  const logStart = authd.requests().length; // (A's first load, with no cookie yet, got a 401)
  for (let round = 1; round <= 5; round++) {
    const start = { a: refreshesOf('a').length, b: refreshesOf('b').length };
    // Both tabs at once, and each tab twice at once: the second call of a tab
    // must join the first one's request (single flight).
    const results = await Promise.all([a, b].map((tab) => tab.evaluate(
      () => Promise.all([window.authd.refresh(), window.authd.refresh()]),
    )));
    assert.deepEqual(results, [[true, true], [true, true]], `round ${round}: both tabs refreshed`);
    const mine = { a: refreshesOf('a').slice(start.a), b: refreshesOf('b').slice(start.b) };
    assert.equal(mine.a.length, 1, `round ${round}: tab A sent exactly one /refresh`);
    assert.equal(mine.b.length, 1, `round ${round}: tab B sent exactly one /refresh`);

    // Did both tabs present the same (old) token? Then authd must have given
    // both the same successor within the grace window.
    const presented = await Promise.all([mine.a[0], mine.b[0]].map(async ({ response }) => {
      const headers = await response.request().allHeaders();
      return (headers.cookie || '').match(new RegExp(`${COOKIE}=([^;]+)`))?.[1];
    }));
    if (presented[0] && presented[0] === presented[1]) {
      const successors = await Promise.all([mine.a[0], mine.b[0]].map(
        ({ response }) => response.headerValue('set-cookie').then((v) => v && v.split(';')[0]),
      ));
      assert.equal(successors[0], successors[1], `round ${round}: same token in, same successor out`);
      sameTokenRounds.push(round);
    }
  }
  t.diagnostic(`rounds in which both tabs presented the same refresh token: ${sameTokenRounds.join(', ') || 'none'}`);
  assert.ok(sameTokenRounds.length > 0, 'at least one round really raced on the same refresh token');

  const all = [...refreshesOf('a'), ...refreshesOf('b')];
  assert.deepEqual(all.filter((r) => r.status !== 200).map((r) => r.status), [], 'no /refresh answered other than 200');
  assert.deepEqual(
    authd.requests().slice(logStart).filter((r) => r.path === '/refresh' && r.status !== 200), [],
    'authd logged no failed refresh',
  );

  for (const tab of [a, b]) {
    const me = await tab.evaluate(() => window.authd.me());
    assert.equal(me.status, 200);
    assert.equal(me.data.email, user.email);
    await expectSignedIn(tab, user.email);
  }
});

test('logging out in one tab signs the other tab out on its next call', { timeout: 60_000 }, async (t) => {
  const authd = await devServer(t);
  const { context } = await browserContext(t);
  const user = newUser();

  const a = await openDemo(context, `${authd.url}/demo`);
  await a.evaluate((u) => window.authd.register(u.email, u.password), user);
  await a.evaluate((u) => window.authd.login(u.email, u.password), user);
  const b = await openDemo(context, `${authd.url}/demo`);
  await expectSignedIn(a, user.email);
  await expectSignedIn(b, user.email);
  const seenB = recordResponses(b, authd.url);

  await a.click('#logout');
  await a.locator('#status[data-state="signed-out"]').waitFor();
  assert.equal(await refreshCookie(context, authd.url, COOKIE), undefined, 'logout cleared the cookie');

  // Tab B still holds an access token that is a valid, unexpired JWT, and
  // still shows "signed in": nothing told it yet.
  assert.equal((await b.evaluate(() => window.authd.state())).signedIn, true);
  // Its next call: /me says session_revoked at once, the refresh that follows
  // fails (no cookie, and the session is over anyway), and B is signed out.
  await b.click('#me');
  await b.locator('#status[data-state="signed-out"]').waitFor();
  await b.locator('#me-result', { hasText: 'Not signed in.' }).waitFor();
  const me = seenB.find((r) => r.path === '/me');
  assert.equal(me.status, 401);
  assert.equal((await me.response.json()).code, 'session_revoked');
  assert.deepEqual(seenB.filter((r) => r.path === '/refresh').map((r) => r.status), [401]);
  assert.deepEqual(seenB.filter((r) => r.path === '/me').map((r) => r.status), [401], 'no retry without a token');

  // And a reload of either tab stays signed out.
  await b.reload();
  await b.evaluate(() => window.authd.ready);
  await b.locator('#status[data-state="signed-out"]').waitFor();
});
