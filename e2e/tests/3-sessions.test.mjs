// Sessions and password change through the demo page (`authd dev`), with two
// browser contexts as two devices of one user: each has its own cookie jar and
// its own user agent, so each is a session of its own.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { browserContext, devServer, newUser, openDemo, recordResponses } from '../lib/harness.mjs';

const DEVICE = {
  a: 'Mozilla/5.0 (X11; Linux x86_64) authd-e2e device A',
  b: 'Mozilla/5.0 (X11; Linux x86_64) authd-e2e device B',
};
const ENDED = 'Signed out (the session was ended)';
const WRONG_PASSWORD = 'email or password is wrong'; // authd's detail for invalid_credentials

/** Two contexts of one browser: device A and device B. */
async function twoDevices(t) {
  const { browser, context: a } = await browserContext(t, { userAgent: DEVICE.a });
  const b = await browser.newContext({ userAgent: DEVICE.b });
  return { a, b };
}

async function signIn(page, user) {
  await page.fill('#email', user.email);
  await page.fill('#password', user.password);
  await page.click('#login');
  await page.locator('#status[data-state="signed-in"]').waitFor();
  assert.equal(await page.locator('#status').textContent(), `Signed in as ${user.email}`);
}

/** The sessions list as the page shows it. */
function sessionRows(page) {
  return page.locator('#sessions [data-testid="session"]').evaluateAll((rows) => rows.map((li) => ({
    id: li.dataset.sessionId,
    current: li.dataset.current === 'true',
    device: li.querySelector('[data-testid="session-device"]').textContent,
    marker: li.querySelector('[data-testid="this-device"]')?.textContent ?? null,
    meta: li.querySelector('[data-testid="session-meta"]').textContent,
    button: [...li.querySelectorAll('button')].map((b) => `${b.dataset.testid}:${b.textContent}`),
  })));
}

/** Waits until the list shows `n` sessions, then returns them. */
async function sessionsShown(page, n) {
  await page.waitForFunction(
    (count) => document.querySelectorAll('#sessions [data-testid="session"]').length === count,
    n,
    { timeout: 15_000 },
  );
  return sessionRows(page);
}

/** Click "Reload the list" and wait for the GET /sessions it sends. */
async function reloadList(page, authdUrl) {
  const answered = page.waitForResponse((r) => r.url() === `${authdUrl}/sessions`);
  await page.click('#sessions-reload');
  assert.equal((await answered).status(), 200);
}

/** Fill and submit the change-password form; resolves to authd's answer. */
async function submitPasswordChange(page, authdUrl, current, next) {
  await page.fill('#current-password', current);
  await page.fill('#new-password', next);
  const answered = page.waitForResponse((r) => r.url() === `${authdUrl}/password`);
  await page.click('#change-password');
  return answered;
}

const passwordResult = (page, outcome, hasText) =>
  page.locator(`#password-result[data-outcome="${outcome}"]`, { hasText }).waitFor();

/** Device B's next call finds its session ended: /me 401, /refresh 401, signed out with the reason. */
async function expectEndedAtNextCall(page, seen) {
  assert.equal((await page.evaluate(() => window.authd.state())).signedIn, true, 'nothing has told B yet');
  const from = seen.length;
  await page.click('#me');
  await page.locator('#status[data-state="signed-out"]').waitFor();
  assert.equal(await page.locator('#status').textContent(), ENDED);
  await page.locator('#me-result', { hasText: 'Not signed in.' }).waitFor();
  const calls = seen.slice(from);
  assert.deepEqual(calls.map((r) => `${r.method} ${r.path} ${r.status}`), ['GET /me 401', 'POST /refresh 401']);
  for (const { response } of calls) assert.equal((await response.json()).code, 'session_revoked');
  assert.equal(await page.locator('#sessions-section').isHidden(), true, 'no sessions list when signed out');
  assert.equal(await page.locator('#password-section').isHidden(), true, 'no password form when signed out');
}

async function expectStillSignedIn(page, user) {
  await page.locator('#me-result').evaluate((el) => { el.textContent = ''; });
  await page.click('#me');
  await page.locator('#me-result', { hasText: user.email }).waitFor();
  assert.equal(await page.locator('#status').textContent(), `Signed in as ${user.email}`);
}

test('two devices: A lists both sessions and ends B\'s; B is signed out at its next call, A stays', { timeout: 90_000 }, async (t) => {
  const authd = await devServer(t);
  const devices = await twoDevices(t);
  const user = newUser();

  // B signs in first, then A: newest first, A's own session heads A's list.
  const b = await openDemo(devices.b, `${authd.url}/demo`);
  assert.equal((await b.evaluate((u) => window.authd.register(u.email, u.password), user)).status, 201);
  await signIn(b, user);
  const a = await openDemo(devices.a, `${authd.url}/demo`);
  await signIn(a, user);
  const seenA = recordResponses(a, authd.url);
  const seenB = recordResponses(b, authd.url);

  const listA = await sessionsShown(a, 2);
  assert.deepEqual(listA.map((s) => [s.device, s.current, s.marker, s.button]), [
    [DEVICE.a, true, 'this device', ['sign-out:Sign out']],
    [DEVICE.b, false, null, ['end-session:End']],
  ], 'A sees both devices, itself marked as this device, an End button only on the other one');
  for (const s of listA) assert.match(s.meta, /^IP 127\.0\.0\.1 · signed in .+ · last used .+$/);
  const idOf = { a: listA[0].id, b: listA[1].id };
  assert.equal((await a.evaluate(() => window.authd.state())).sessionId, idOf.a);

  // "current" follows the access token that asks: on B, B's session is the current one.
  await reloadList(b, authd.url);
  assert.deepEqual((await sessionsShown(b, 2)).map((s) => [s.id, s.current, s.marker]),
    [[idOf.a, false, null], [idOf.b, true, 'this device']]);

  // A ends B's session; A's list reloads and shows A alone.
  await a.locator(`#sessions [data-session-id="${idOf.b}"] [data-testid="end-session"]`).click();
  const after = await sessionsShown(a, 1);
  assert.deepEqual(after.map((s) => [s.id, s.current, s.device]), [[idOf.a, true, DEVICE.a]]);
  const ended = seenA.find((r) => r.method === 'DELETE');
  assert.equal(ended && `${ended.path} ${ended.status}`, `/sessions/${idOf.b} 204`);
  assert.equal(seenA.findLast((r) => r.path === '/sessions').method, 'GET', 'the list was reloaded after the DELETE');

  // B still holds an unexpired access token; its next call finds the session ended.
  await expectEndedAtNextCall(b, seenB);
  // (That refresh's answer cleared B's cookie: after a reload there is simply no session.)
  await b.reload();
  await b.evaluate(() => window.authd.ready);
  assert.equal(await b.locator('#status').getAttribute('data-state'), 'signed-out', 'a reload of B stays signed out');

  // A is untouched: /me works, and a reload restores it from its own cookie.
  await expectStillSignedIn(a, user);
  await a.reload();
  await a.evaluate(() => window.authd.ready);
  await a.locator('#status[data-state="signed-in"]').waitFor();
  assert.deepEqual((await sessionsShown(a, 1)).map((s) => s.id), [idOf.a]);
  assert.deepEqual(a.demoProblems, []);
  assert.deepEqual(b.demoProblems, []);
});

test('A changes the password: B is signed out, A stays; only the new password logs in', { timeout: 90_000 }, async (t) => {
  const authd = await devServer(t);
  const devices = await twoDevices(t);
  const user = newUser();
  const newPassword = 'a brand new passphrase';

  const a = await openDemo(devices.a, `${authd.url}/demo`);
  assert.equal((await a.evaluate((u) => window.authd.register(u.email, u.password), user)).status, 201);
  const b = await openDemo(devices.b, `${authd.url}/demo`);
  await signIn(b, user);
  await signIn(a, user);
  await sessionsShown(a, 2);
  const seenA = recordResponses(a, authd.url);
  const seenB = recordResponses(b, authd.url);
  assert.equal(await a.locator('#current-password').getAttribute('autocomplete'), 'current-password');
  assert.equal(await a.locator('#new-password').getAttribute('autocomplete'), 'new-password');

  // A wrong current password: authd's detail, shown as it is; nothing else happens.
  let r = await submitPasswordChange(a, authd.url, 'not my password at all', newPassword);
  assert.equal(r.status(), 401);
  await passwordResult(a, 'error', WRONG_PASSWORD);
  // A new password that is too short: the validation detail names the rule.
  r = await submitPasswordChange(a, authd.url, user.password, 'short');
  assert.equal(r.status(), 422);
  const detail = (await r.json()).detail;
  assert.match(detail, /at least 8 characters/);
  await passwordResult(a, 'error', detail);
  assert.deepEqual(seenA.map((x) => `${x.method} ${x.path} ${x.status}`), ['POST /password 401', 'POST /password 422'],
    'one request per attempt: a 401 invalid_credentials is not answered with a refresh and a retry');
  await a.locator('#status[data-state="signed-in"]').waitFor();

  // Neither attempt changed anything: B's session lives, both are listed.
  await expectStillSignedIn(b, user);
  await reloadList(a, authd.url);
  assert.equal((await sessionsShown(a, 2)).length, 2);

  // The change, with the ORIGINAL password as the current one (so the
  // too-short attempt above provably did not change it).
  r = await submitPasswordChange(a, authd.url, user.password, newPassword);
  assert.equal(r.status(), 204);
  await passwordResult(a, 'ok', 'Password changed');
  const left = await sessionsShown(a, 1);
  assert.deepEqual(left.map((s) => [s.current, s.device]), [[true, DEVICE.a]], 'only A\'s own session is left');
  assert.deepEqual(await a.evaluate(() => [...document.querySelectorAll('#password-form input[type="password"]')]
    .map((i) => i.value)), ['', ''], 'the form was cleared');

  await expectEndedAtNextCall(b, seenB);
  await expectStillSignedIn(a, user);

  // On B: the old password is refused, the new one signs in.
  await b.fill('#email', user.email);
  await b.fill('#password', user.password);
  const refused = b.waitForResponse((x) => x.url() === `${authd.url}/login`);
  await b.click('#login');
  assert.equal((await refused).status(), 401);
  await b.locator('#message', { hasText: WRONG_PASSWORD }).waitFor();
  assert.equal(await b.locator('#status').getAttribute('data-state'), 'signed-out');
  await signIn(b, { email: user.email, password: newPassword });
  await reloadList(a, authd.url);
  assert.deepEqual((await sessionsShown(a, 2)).map((s) => [s.device, s.current]),
    [[DEVICE.b, false], [DEVICE.a, true]]);
  assert.deepEqual(a.demoProblems, []);
  assert.deepEqual(b.demoProblems, []);
});

test('five wrong current passwords lock the form: 429 shown with the wait, still signed in', { timeout: 90_000 }, async (t) => {
  const authd = await devServer(t);
  const { context } = await browserContext(t);
  const user = newUser();
  const page = await openDemo(context, `${authd.url}/demo`);
  assert.equal((await page.evaluate((u) => window.authd.register(u.email, u.password), user)).status, 201);
  await signIn(page, user);
  await sessionsShown(page, 1);
  const seen = recordResponses(page, authd.url);

  for (let attempt = 1; attempt <= 5; attempt++) {
    const r = await submitPasswordChange(page, authd.url, `wrong guess number ${attempt}`, 'another good passphrase');
    assert.equal(r.status(), 401, `attempt ${attempt}`);
    await passwordResult(page, 'error', WRONG_PASSWORD);
  }
  // Locked now, even with the right password: the page shows the wait.
  const r = await submitPasswordChange(page, authd.url, user.password, 'another good passphrase');
  assert.equal(r.status(), 429);
  const wait = await r.headerValue('retry-after');
  assert.match(wait, /^[1-9][0-9]*$/);
  assert.equal((await r.json()).code, 'rate_limited');
  await passwordResult(page, 'error', `${wait} s`);
  t.diagnostic(`shown: ${await page.locator('#password-result').textContent()}`);

  assert.deepEqual(seen.map((x) => `${x.method} ${x.path} ${x.status}`),
    [...Array(5).fill('POST /password 401'), 'POST /password 429'],
    'exactly one request per attempt, and no refresh: a wrong password is not a refused token');
  await expectStillSignedIn(page, user);
  assert.deepEqual(page.demoProblems, []);
});
