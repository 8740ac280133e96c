// Other origins, against `authd serve` (SQLite): in `authd dev` every loopback
// origin is allowed for convenience, which would hide what is tested here.
//
// Vocabulary (what the browser decides by):
// - origin = scheme + host + port: http://127.0.0.1:A and http://127.0.0.1:B
//   are different origins, so CORS applies between them;
// - site = scheme + registrable domain, ports ignored: those two are the SAME
//   site, so a SameSite=Strict cookie is still sent between them, while
//   http://localhost:B and http://127.0.0.1:A are different sites.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  DEMO_CSP, browserContext, cookieWitness, demoFiles, newUser, openDemo, recordResponses, refreshCookie,
  startAuthd, startStatic,
} from '../lib/harness.mjs';

const COOKIE = '__Host-authd_rt';

async function serve(t, allowedOrigins) {
  const authd = await startAuthd({ mode: 'serve', env: { CORS_ALLOWED_ORIGINS: allowedOrigins } });
  t.after(() => authd.stop());
  return authd;
}

async function staticServer(t, routes) {
  const s = await startStatic(routes);
  t.after(() => s.stop());
  return s;
}

/** authd's request log entries for POST /refresh and POST /logout (and their preflights). */
const cookieRoutes = (authd, from) => authd.requests().slice(from)
  .filter((r) => r.path === '/refresh' || r.path === '/logout')
  .map((r) => `${r.method} ${r.path} ${r.status}`);

test('a page on another origin cannot refresh or log out with the user\'s cookie', { timeout: 90_000 }, async (t) => {
  // Same-site attacker: 127.0.0.1, another port, not in the allow-list.
  const sameSite = await staticServer(t, { '/': { body: '<!doctype html><title>same-site attacker</title>' } });
  // Cross-site attacker: http://localhost:<port> auto-submitting HTML forms.
  // (Assigned below, once authd's URL is known.)
  const forms = {};
  const crossSite = await staticServer(t, {
    '/form-refresh': () => forms.refresh,
    '/form-logout': () => forms.logout,
  });
  // The allow-list holds some other app, never an attacker's origin.
  const authd = await serve(t, 'https://app.example.test');
  // The classic JSON-CSRF form: enctype=text/plain and a field name that
  // makes the body look like JSON. And a plain urlencoded form.
  forms.refresh = {
    body: `<!doctype html><form method="post" action="${authd.url}/refresh" enctype="text/plain">
      <input name='{"a":"' value='"}'></form><script>document.forms[0].submit()</script>`,
  };
  forms.logout = {
    body: `<!doctype html><form method="post" action="${authd.url}/logout">
      <input name="x" value="1"></form><script>document.forms[0].submit()</script>`,
  };

  // The user signs in on the demo served by authd itself (same origin).
  const { context } = await browserContext(t);
  const user = newUser();
  const demo = await openDemo(context, `${authd.url}/demo`);
  const demoSeen = recordResponses(demo, authd.url);
  await demo.evaluate((u) => window.authd.register(u.email, u.password), user);
  assert.equal((await demo.evaluate((u) => window.authd.login(u.email, u.password), user)).status, 200);
  await demo.locator('#status[data-state="signed-in"]').waitFor();
  const original = await refreshCookie(context, authd.url, COOKIE);
  const signedInAt = authd.requests().length;
  assert.ok(original, 'signed in with a refresh cookie');
  const cookieUnchanged = async (what) => {
    const now = await refreshCookie(context, authd.url, COOKIE);
    assert.equal(now && now.value, original.value, `${what}: the refresh cookie is unchanged`);
  };

  // Then visits the attackers' pages in the same browser (same cookie jar).
  const evil = await context.newPage();
  const evilSeen = recordResponses(evil, authd.url);
  const evilCookies = await cookieWitness(context, evil);
  await evil.goto(`${sameSite.origin}/`);
  // An aside on this stand-in: cookies are not isolated by port, so the
  // browser has just sent the refresh cookie to the attacker's own server on
  // 127.0.0.1:<other port> with the page request itself. The same host is no
  // boundary for cookies at all; in production the same-site neighbour to
  // worry about is a sibling subdomain, which a host-only __Host- cookie never
  // reaches. What is tested below is the browser path: script on a same-site
  // page, whose requests to authd do carry the SameSite=Strict cookie.
  assert.ok(sameSite.cookiesSeen.some((c) => c.includes(`${COOKIE}=`)), 'cookies ignore ports');

  // (a) Cross-origin, same-site: a credentialed JSON fetch needs a CORS
  // preflight, which authd does not approve for this origin: the browser never
  // sends the POST.
  let from = authd.requests().length;
  const blocked = await evil.evaluate(async (base) => {
    const out = [];
    for (const path of ['/refresh', '/logout']) {
      try {
        const r = await fetch(base + path, {
          method: 'POST', credentials: 'include', headers: { 'Content-Type': 'application/json' }, body: '{}',
        });
        out.push(`${path}: answered ${r.status}`);
      } catch (e) {
        out.push(`${path}: ${e.name}`);
      }
    }
    return out;
  }, authd.url);
  assert.deepEqual(blocked, ['/refresh: TypeError', '/logout: TypeError'], 'both fetches fail in the browser');
  assert.deepEqual(cookieRoutes(authd, from), ['OPTIONS /refresh 200', 'OPTIONS /logout 200'],
    'authd saw only the preflights, never the POSTs');
  await cookieUnchanged('(a) credentialed JSON fetch');

  // (b) Same origin as (a), a "simple" request: no preflight, so the browser
  // does send it, with the cookie (same site). authd refuses it on Origin (and
  // it is text/plain as well) before touching the token: 403, no Set-Cookie.
  from = authd.requests().length;
  const evilFrom = evilSeen.length;
  const opaque = await evil.evaluate(async (base) => Promise.all(['/refresh', '/logout'].map(async (path) => {
    const r = await fetch(base + path, {
      method: 'POST', mode: 'no-cors', credentials: 'include', headers: { 'Content-Type': 'text/plain' }, body: '{}',
    });
    return r.type;
  })), authd.url);
  assert.deepEqual(opaque, ['opaque', 'opaque']);
  assert.deepEqual(cookieRoutes(authd, from).sort(), ['POST /logout 403', 'POST /refresh 403']);
  // (An opaque response's body and headers are hidden even from DevTools:
  // the status and authd's log tell what happened, the jar what was stored.)
  const answered = evilSeen.slice(evilFrom);
  assert.deepEqual(answered.map((r) => `${r.path} ${r.status}`).sort(), ['/logout 403', '/refresh 403']);
  for (const { path } of answered) {
    const sent = evilCookies.sent('POST', authd.url + path);
    assert.equal(sent.headers['Sec-Fetch-Site'], 'same-site');
    assert.deepEqual(sent.cookies, [{ name: COOKIE, value: original.value, blocked: [] }],
      `(b) ${path}: same site, so the browser did send the cookie: only authd's check stopped it`);
  }
  await cookieUnchanged('(b) no-cors text/plain fetch');

  // (c) Cross-site: auto-submitted forms on http://localhost:<port>. A form
  // POST is a top-level navigation the browser always sends, but across sites
  // it carries no SameSite=Strict cookie, and authd refuses the Origin anyway.
  from = authd.requests().length;
  const formPage = await context.newPage();
  const formCookies = await cookieWitness(context, formPage);
  for (const [name, path] of [['form-refresh', '/refresh'], ['form-logout', '/logout']]) {
    const answered = formPage.waitForResponse((r) => r.url() === authd.url + path);
    await formPage.goto(`${crossSite.localhostOrigin}/${name}`);
    const response = await answered;
    assert.equal(response.status(), 403, `(c) ${path}`);
    assert.equal(await response.request().headerValue('origin'), crossSite.localhostOrigin);
    const sent = formCookies.sent('POST', authd.url + path);
    assert.equal(sent.headers['Sec-Fetch-Site'], 'cross-site');
    assert.equal(sent.headers.Cookie, undefined, `(c) ${path}: no Cookie header`);
    // Chromium names the reason "SchemefulSameSiteStrict" here (cross-site
    // once schemes count too); either way: withheld for SameSite=Strict.
    assert.deepEqual(sent.cookies.map((c) => [c.name, c.blocked.some((r) => /SameSiteStrict$/.test(r))]),
      [[COOKIE, true]], `(c) ${path}: cross-site, so the browser withheld the SameSite=Strict cookie`);
    assert.equal(await response.headerValue('set-cookie'), null);
    assert.equal((await response.json()).code, 'origin_not_allowed');
  }
  assert.deepEqual(cookieRoutes(authd, from), ['POST /refresh 403', 'POST /logout 403']);
  await cookieUnchanged('(c) cross-site forms');

  // The user is still signed in and the session is intact: the demo tab's
  // next refresh is the one that rotates the cookie (no reuse detected, no
  // revocation), and /me works.
  assert.deepEqual(demoSeen.filter((r) => r.path === '/refresh'), [], 'no refresh from the demo tab so far');
  assert.equal(await demo.evaluate(() => window.authd.refresh()), true);
  const rotated = await refreshCookie(context, authd.url, COOKIE);
  assert.notEqual(rotated.value, original.value, 'the legitimate refresh rotated the token');
  const me = await demo.evaluate(() => window.authd.me());
  assert.equal(me.status, 200);
  assert.equal(me.data.email, user.email);
  await demo.locator('#status[data-state="signed-in"]').waitFor();
  assert.deepEqual(
    authd.requests().slice(signedInAt).filter((r) => r.method === 'POST' && r.path === '/refresh')
      .map((r) => r.status),
    [403, 403, 200],
    'since sign-in, authd answered the attackers 403 and only the legitimate refresh 200',
  );
  assert.deepEqual(demo.demoProblems, []);
});

test('the demo served from an allowed second origin works with credentials', { timeout: 90_000 }, async (t) => {
  // http://127.0.0.1:<static> -> http://127.0.0.1:<authd>: cross-origin (CORS
  // with credentials, the origin is in CORS_ALLOWED_ORIGINS) but same-site (so
  // the SameSite=Strict cookie is sent).
  const { html, js } = demoFiles();
  const app = await staticServer(t, {
    '/demo': { body: html, headers: { 'content-security-policy': DEMO_CSP } },
    '/demo/app.js': { body: js, type: 'text/javascript; charset=utf-8' },
  });
  const authd = await serve(t, app.origin);
  const { context } = await browserContext(t);
  const user = newUser();
  const page = await openDemo(context, `${app.origin}/demo?authd=${encodeURIComponent(authd.url)}`);
  const seen = recordResponses(page, authd.url);
  assert.equal(await page.locator('#authd-url').textContent(), authd.url);
  await page.locator('#status[data-state="signed-out"]').waitFor();

  await page.fill('#email', user.email);
  await page.fill('#password', user.password);
  await page.click('#register');
  await page.locator('#message', { hasText: `Registered ${user.email}` }).waitFor();
  await page.click('#login');
  await page.locator('#status[data-state="signed-in"]').waitFor();
  assert.equal(await page.locator('#status').textContent(), `Signed in as ${user.email}`);

  const login = seen.find((r) => r.path === '/login');
  assert.equal(await login.response.headerValue('access-control-allow-origin'), app.origin);
  assert.equal(await login.response.headerValue('access-control-allow-credentials'), 'true');
  const cookie = await refreshCookie(context, authd.url, COOKIE);
  assert.ok(cookie && cookie.httpOnly, 'the cross-origin login stored the HttpOnly cookie');

  await page.click('#me');
  await page.locator('#me-result', { hasText: user.email }).waitFor();
  // GET /sessions with a bearer token: a preflighted cross-origin call, allowed.
  await page.locator('#sessions [data-testid="session"][data-current="true"]').waitFor();
  assert.equal(seen.findLast((r) => r.path === '/sessions').status, 200);
  assert.equal(await page.locator('#message').textContent(), '');

  await page.reload();
  await page.evaluate(() => window.authd.ready);
  await page.locator('#status[data-state="signed-in"]').waitFor();
  assert.equal(seen.filter((r) => r.path === '/refresh').at(-1).status, 200, 'restored by a cross-origin refresh');
  assert.notEqual((await refreshCookie(context, authd.url, COOKIE)).value, cookie.value);

  await page.click('#logout');
  await page.locator('#status[data-state="signed-out"]').waitFor();
  assert.equal(seen.filter((r) => r.path === '/logout').at(-1).status, 204);
  assert.equal(await refreshCookie(context, authd.url, COOKIE), undefined, 'logout cleared the cookie');
  await page.reload();
  await page.evaluate(() => window.authd.ready);
  await page.locator('#status[data-state="signed-out"]').waitFor();
  assert.deepEqual(page.demoProblems, []);
  assert.deepEqual(authd.requests().filter((r) => r.status === 403), [], 'no CSRF/origin refusal on the allowed origin');
});
