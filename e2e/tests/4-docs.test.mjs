// The API reference page (/docs) in headless Chromium: it renders the
// document with the script authd embeds, under its strict CSP, and asks no
// other origin for anything (no CDN, no web fonts). And the demo under a
// BASE_PATH: its script and its API calls follow the base path.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { browserContext, devServer, newUser, openDemo, refreshCookie } from '../lib/harness.mjs';

/** Every request the page makes, and every CSP violation or page error. */
function watch(page) {
  const requests = [];
  const problems = [];
  page.on('request', (r) => requests.push(r.url()));
  page.on('requestfailed', (r) => problems.push(`failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  return { requests, problems };
}

test('/docs renders the API reference from authd alone, under its CSP', { timeout: 60_000 }, async (t) => {
  const authd = await devServer(t);
  const { context } = await browserContext(t);
  const page = await context.newPage();
  const seen = watch(page);
  const response = await page.goto(`${authd.url}/docs`);
  const csp = response.headers()['content-security-policy'];
  assert.match(csp, /frame-ancestors 'none'/);
  assert.match(csp, /script-src 'self'(;|$)/);

  // RapiDoc draws the operations from /openapi.json (inside its shadow DOM,
  // which Playwright's locators enter).
  await page.getByText('/register').first().waitFor({ timeout: 30_000 });
  await page.getByText('/sessions/{id}').first().waitFor();
  await page.getByText('API Key (__Host-authd_rt)').first().waitFor();

  const elsewhere = seen.requests.filter((u) => !u.startsWith(`${authd.origin}/`) && !u.startsWith('data:'));
  assert.deepEqual(elsewhere, [], 'the page asked another origin for something');
  assert.ok(seen.requests.includes(`${authd.url}/openapi.json`), seen.requests.join('\n'));
  assert.deepEqual(seen.problems, []);
});

test('the demo under BASE_PATH loads its script and calls authd under the base path', { timeout: 60_000 }, async (t) => {
  const authd = await devServer(t, { BASE_PATH: '/auth' });
  assert.equal(authd.url, `${authd.origin}/auth`);
  const { context } = await browserContext(t);
  const page = await openDemo(context, `${authd.url}/demo`);
  const calls = [];
  page.on('request', (r) => calls.push(new URL(r.url()).pathname));
  const user = newUser();
  await page.fill('#email', user.email);
  await page.fill('#password', user.password);
  await page.click('#register');
  await page.locator('#message', { hasText: `Registered ${user.email}` }).waitFor();
  await page.click('#login');
  await page.locator('#status[data-state="signed-in"]').waitFor();
  assert.deepEqual(page.demoProblems, []);
  assert.ok(calls.includes('/auth/register') && calls.includes('/auth/login'), calls.join('\n'));
  assert.ok(calls.every((p) => p.startsWith('/auth/')), calls.join('\n'));
  // A __Host- cookie keeps Path=/ (the prefix requires it).
  const cookie = await refreshCookie(context, authd.origin);
  assert.equal(cookie?.path, '/');
});
