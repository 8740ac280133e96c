// authd demo client: the recommended browser pattern, in plain JavaScript.
//
// - The access token lives in memory only (the `accessToken` variable): never
//   in localStorage, sessionStorage or a readable cookie, where any script
//   injected into the page could read it. A reload forgets it; the refresh
//   cookie brings it back (see `restore` at the bottom).
// - The refresh token is an HttpOnly cookie that authd sets and reads: this
//   code never sees it. Every call uses `credentials: 'include'` so that the
//   browser sends and stores that cookie, also when authd is on another
//   origin (then authd must list this page's origin in CORS_ALLOWED_ORIGINS).
// - /refresh and /logout are sent with `Content-Type: application/json`: a
//   request that an HTML form or a "simple" cross-site fetch cannot make,
//   which is half of authd's CSRF check (the other half: an allowed Origin).
// - Silent refresh is single-flight: each refresh rotates the cookie, so one
//   page keeps at most one refresh in flight and every caller awaits it.
// - A 401 `invalid_credentials` on a bearer route (a wrong current password
//   on POST /password) is about what the user typed, not about the token: it
//   is shown, never answered with a refresh and a retry.
'use strict';

const LOOPBACK = ['localhost', '127.0.0.1', '[::1]'];

// authd's base URL: this page's own origin and authd's base path (BASE_PATH,
// which authd writes into the page's `authd-base-path` meta tag) by default.
// `?authd=<url>` points the page at an authd elsewhere (origin and path);
// honoured only when the page or that authd is on this machine, so that a
// demo left enabled in production cannot be turned into a login form that
// posts passwords elsewhere.
// In your app, simply hard-code your authd's URL here.
const AUTHD = (() => {
  const own = document.querySelector('meta[name="authd-base-path"]')?.content || '';
  const wanted = new URLSearchParams(location.search).get('authd');
  if (!wanted) return own;
  try {
    const url = new URL(wanted);
    const local = LOOPBACK.includes(location.hostname) || LOOPBACK.includes(url.hostname);
    if (/^https?:$/.test(url.protocol) && local) return url.origin + url.pathname.replace(/\/+$/, '');
  } catch { /* not a URL: ignored */ }
  return own;
})();

let accessToken = null; // memory only, see above
let refreshing = null;  // the refresh request in flight, shared by all callers
let user = null;        // { id, email, session_id } from GET /me

// Why a refresh was refused, for the status line ("invalid_token" is also the
// answer when there is simply no cookie: nothing to explain then).
const REASONS = {
  session_revoked: 'the session was ended',
  session_expired: 'the session expired',
  token_expired: 'the session expired',
  refresh_token_reused: 'a refresh token was reused: session revoked for safety',
};

// One request to authd. Answers are JSON; errors are RFC 9457 problem+json
// bodies whose stable `code` (e.g. "session_revoked") is what to branch on.
async function call(method, path, { body, token } = {}) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(AUTHD + path, {
    method,
    headers,
    credentials: 'include',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = (res.headers.get('content-type') || '').includes('json');
  const data = json ? await res.json() : null;
  log(`${method} ${path} → ${res.status}${data && data.code ? ` ${data.code}` : ''}`);
  return { status: res.status, ok: res.ok, data, retryAfter: res.headers.get('retry-after') };
}

// Trade the refresh cookie for a new access token (and a rotated cookie).
// Resolves true when signed in, false when the session is over; rejects when
// authd could not be asked (network, 5xx): then nothing is decided.
function refresh() {
  if (!refreshing) {
    refreshing = (async () => {
      try {
        const r = await call('POST', '/refresh', { body: {} });
        if (r.ok) {
          accessToken = r.data.access_token;
          return true;
        }
        if (r.status === 401) { // no cookie, or its session is over: sign in again
          signedOut(REASONS[r.data && r.data.code]);
          return false;
        }
        throw new Error(`refresh failed: ${r.status} ${(r.data && r.data.code) || ''}`);
      } finally {
        refreshing = null;
      }
    })();
  }
  return refreshing;
}

// A call that needs the access token. With no token yet, refresh first; when
// the token is refused (expired, or its session ended elsewhere) refresh once
// and retry once. Resolves to null when there is no session.
async function authed(method, path, body) {
  if (!accessToken && !(await refresh())) return null;
  const used = accessToken;
  const r = await call(method, path, { body, token: used });
  if (!tokenRefused(r)) return r;
  // Another caller may have refreshed while this request was out: then the
  // token has already changed and a retry is enough.
  if (accessToken === used) await refresh();
  if (!accessToken) return null;
  return call(method, path, { body, token: accessToken });
}

// Every 401 of a bearer route is about the token except a wrong password
// typed into a form: refreshing and retrying that would count it twice
// towards the brute-force lock.
function tokenRefused(r) {
  return r.status === 401 && !(r.data && r.data.code === 'invalid_credentials');
}

async function register(email, password) {
  const r = await call('POST', '/register', { body: { email, password } });
  say(r.ok ? `Registered ${r.data.email}: you can log in.` : problem(r));
  return r;
}

async function login(email, password) {
  const r = await call('POST', '/login', { body: { email, password } });
  if (!r.ok) {
    say(problem(r));
    return r;
  }
  accessToken = r.data.access_token; // the refresh token arrived as a cookie
  $('#password').value = '';
  say('');
  await me();
  return r;
}

// GET /me: who the access token belongs to. Also what the status line shows.
// Then the sessions list, which resolves before this does.
async function me() {
  const r = await authed('GET', '/me');
  if (r && r.ok) {
    user = r.data;
    render();
  }
  $('#me-result').textContent = r ? JSON.stringify(r.data, null, 2) : 'Not signed in.';
  if (r && r.ok) await loadSessions();
  return r;
}

async function logout() {
  // Let a refresh in flight land first, or its answer could sign this page
  // back in (with a fresh cookie) after the logout.
  await (refreshing || Promise.resolve()).catch(() => {});
  const r = await call('POST', '/logout', { body: {} });
  if (r.ok) signedOut('logged out');
  else say(problem(r));
  return r;
}

// Ends every session of the user, on every device: needs the access token.
async function logoutAll() {
  const r = await authed('POST', '/logout-all');
  if (r && r.ok) signedOut('logged out everywhere');
  else if (r) say(problem(r));
  return r;
}

// GET /sessions: this user's live sessions, newest first; `current` marks the
// one of the access token that asked (this device).
async function loadSessions() {
  const r = await authed('GET', '/sessions');
  if (!r) return r; // signed out: signedOut() has hidden the list
  if (!r.ok) {
    say(problem(r));
    return r;
  }
  $('#sessions').replaceChildren(...r.data.sessions.map(sessionItem));
  $('#sessions-section').hidden = false;
  return r;
}

// DELETE /sessions/{id}: that device is signed out at its next request (its
// access token is refused at once, its refresh cookie too). A 404 means it
// had already ended: the reloaded list shows that as well.
async function endSession(id) {
  const r = await authed('DELETE', `/sessions/${encodeURIComponent(id)}`);
  if (!r) return r;
  if (!r.ok && r.status !== 404) say(problem(r));
  await loadSessions();
  return r;
}

// POST /password: needs the current password; ends every other session,
// keeps this one. A wrong current password counts as a failed login (five in
// a row: 429 with Retry-After, and authd's detail names the wait).
async function changePassword(currentPassword, newPassword) {
  passwordResult('pending', '');
  const r = await authed('POST', '/password', { current_password: currentPassword, new_password: newPassword });
  if (!r) return r; // signed out
  if (r.ok) {
    $('#password-form').reset();
    passwordResult('ok', 'Password changed. Every other session has been signed out.');
    await loadSessions();
  } else {
    passwordResult('error', problem(r));
  }
  return r;
}

function signedOut(reason) {
  accessToken = null;
  user = null;
  render(reason);
  $('#me-result').textContent = '';
  $('#sessions-section').hidden = true;
  $('#sessions').replaceChildren();
  $('#password-form').reset();
  passwordResult('', '');
}

// What the tests (and your console) can look at: never the tokens.
function state() {
  return { signedIn: Boolean(accessToken && user), email: user && user.email, sessionId: user && user.session_id };
}

// ---- page plumbing ----------------------------------------------------------

function $(selector) {
  return document.querySelector(selector);
}

function render(reason) {
  const status = $('#status');
  const signedIn = Boolean(accessToken && user);
  status.dataset.state = signedIn ? 'signed-in' : 'signed-out';
  status.textContent = signedIn
    ? `Signed in as ${user.email}`
    : `Signed out${reason ? ` (${reason})` : ''}`;
  $('#password-section').hidden = !signedIn;
  $('#password-username').value = signedIn ? user.email : '';
}

// One row of the sessions list. Built with textContent only: the user agent
// is whatever the other device sent.
function sessionItem(s) {
  const li = el('li', { 'data-testid': 'session', 'data-session-id': s.id, 'data-current': String(s.current) });
  const title = el('div', {});
  title.append(el('span', { class: 'device', 'data-testid': 'session-device' }, s.user_agent || 'Unknown device'));
  if (s.current) title.append(el('span', { class: 'marker', 'data-testid': 'this-device' }, 'this device'));
  li.append(title);
  const when = (iso) => new Date(iso).toLocaleString();
  li.append(el('div', { class: 'meta', 'data-testid': 'session-meta' },
    `IP ${s.ip || 'unknown'} · signed in ${when(s.created_at)} · last used ${when(s.last_used_at)}`));
  const button = s.current
    ? el('button', { type: 'button', 'data-testid': 'sign-out' }, 'Sign out')
    : el('button', { type: 'button', 'data-testid': 'end-session' }, 'End');
  button.addEventListener('click', guard(() => (s.current ? logout() : endSession(s.id))));
  li.append(button);
  return li;
}

function el(tag, attributes, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function passwordResult(outcome, text) {
  const result = $('#password-result');
  result.dataset.outcome = outcome;
  result.textContent = text;
}

function say(text) {
  $('#message').textContent = text;
}

function problem(r) {
  return (r.data && (r.data.detail || r.data.title)) || `HTTP ${r.status}`;
}

function log(line) {
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()} ${line}`;
  $('#log').prepend(li);
  while ($('#log').children.length > 50) $('#log').lastChild.remove();
}

// Report an exception (authd unreachable, ...) without losing the state.
function guard(fn) {
  return (event) => {
    if (event) event.preventDefault();
    fn().catch((e) => say(`Error: ${e.message}`));
  };
}

const credentials = () => [$('#email').value, $('#password').value];

$('#authd-url').textContent = AUTHD.startsWith('http') ? AUTHD : location.origin + AUTHD;
$('#credentials').addEventListener('submit', guard(() => login(...credentials())));
$('#register').addEventListener('click', guard(async () => {
  if ($('#credentials').reportValidity()) await register(...credentials());
}));
$('#me').addEventListener('click', guard(me));
$('#logout').addEventListener('click', guard(logout));
$('#logout-all').addEventListener('click', guard(logoutAll));
$('#sessions-reload').addEventListener('click', guard(loadSessions));
$('#password-form').addEventListener('submit', guard(
  () => changePassword($('#current-password').value, $('#new-password').value),
));

// On load, restore the session from the refresh cookie, if there is one: the
// access token did not survive the reload, by design.
async function restore() {
  try {
    if (await refresh()) await me();
  } catch (e) {
    say(`Error: ${e.message}`);
  }
  if ($('#status').dataset.state === 'loading') render();
}

// A hook for the end-to-end tests (and your console): the functions above
// (all but state() return promises), and `ready`, which settles once the
// session restore of page load is done.
window.authd = {
  register, login, me, refresh, logout, logoutAll, loadSessions, endSession, changePassword, state, ready: restore(),
};
