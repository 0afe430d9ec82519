// The support console. It keeps the operator's credential in this tab's
// sessionStorage, sends it as `Authorization: Bearer` to the /v1 API of
// its own origin, and turns every answer into words: the API's problem
// details are explained, never shown as JSON.

const STORAGE_KEY = 'streamcap-console-credential';
const USER_ID = /^[A-Za-z0-9._~:@-]{1,128}$/;
// Local time, to the second, in the browser's own format.
const TIME_STYLE = { dateStyle: 'short', timeStyle: 'medium' };

const $ = (id) => document.getElementById(id);

// The user on screen, and how many times the page has shown a user (the
// browser test waits on it).
let shown = null;
let loads = 0;

// ---- the API ----

// A refusal or failure of the API, explained for the operator.
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Calls the API; resolves to the JSON body (null for 204), or throws an
// ApiError whose message says what went wrong in words.
async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  const credential = sessionStorage.getItem(STORAGE_KEY);
  if (credential) headers.authorization = `Bearer ${credential}`;
  const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'streamcap could not be reached. Check your connection and try again.');
  }
  if (res.ok) {
    return res.status === 204 ? null : res.json();
  }
  let detail = '';
  if ((res.headers.get('content-type') || '').includes('json')) {
    try {
      const problem = await res.json();
      if (typeof problem.detail === 'string') detail = problem.detail;
    } catch {
      // A body that is not JSON says nothing more than its status.
    }
  }
  throw new ApiError(res.status, explain(res.status, detail, res.headers.get('retry-after')));
}

// What a status means to the operator, with the API's own detail.
function explain(status, detail, retryAfter) {
  const why = detail ? ` streamcap said: “${detail}”.` : '';
  switch (status) {
    case 400:
      return `streamcap refused the request as invalid (400).${why}`;
    case 401:
      return `Your credential was not accepted (401): it is wrong, expired or missing.${why} Sign in again with a valid API key or token.`;
    case 403:
      return `Your credential may not do this (403): it can only read, or may not act for this user.${why} To change users, sign in with an admin key or a token with the streams:admin scope.`;
    case 404:
      return `This streamcap does not know that request (404): it may be older than the console.${why}`;
    case 408:
      return `streamcap took too long to answer (408). Try again.${why}`;
    case 429: {
      const seconds = Number.parseInt(retryAfter || '', 10);
      const when = Number.isFinite(seconds) ? `in ${seconds} second${seconds === 1 ? '' : 's'}` : 'in a moment';
      return `Too many requests (429): wait and try again ${when}.${why}`;
    }
    case 503:
      return `streamcap is unavailable right now (503): its storage did not answer or it is overloaded. Nothing was changed; try again shortly.${why}`;
    default:
      return status >= 500
        ? `streamcap failed to answer (${status}). Try again; if it keeps failing, tell the operators.`
        : `streamcap refused the request (${status}).${why}`;
  }
}

const userPath = (user) => `/v1/users/${encodeURIComponent(user)}`;

// ---- messages ----

// Shows a message; `kind` is "error", "ok" or "info".
function say(text, kind) {
  const m = $('message');
  m.textContent = text;
  m.dataset.kind = kind;
  m.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  m.hidden = false;
}

function quiet() {
  const m = $('message');
  m.hidden = true;
  m.textContent = '';
  delete m.dataset.kind;
}

// ---- confirmation ----

// Asks in an in-page dialog; resolves to true only for "Confirm".
function confirmAction(text, confirmLabel) {
  const dialog = $('confirm');
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = confirmLabel;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.returnValue = '';
    dialog.showModal();
    $('confirm-cancel').focus();
  });
}

$('confirm-ok').addEventListener('click', () => $('confirm').close('ok'));
$('confirm-cancel').addEventListener('click', () => $('confirm').close('cancel'));

// ---- showing a user ----

// A `<time>` in the browser's local time, with the ISO value as its title.
function timeOf(iso) {
  if (!iso) return text('—');
  const t = document.createElement('time');
  t.dateTime = iso;
  t.title = iso;
  const date = new Date(iso);
  t.textContent = Number.isNaN(date.getTime()) ? iso : date.toLocaleString(undefined, TIME_STYLE);
  return t;
}

function text(value) {
  return document.createTextNode(value === undefined || value === null || value === '' ? '—' : String(value));
}

function cell(row, content) {
  const td = document.createElement('td');
  td.append(content);
  row.append(td);
  return td;
}

// Where the limit comes from, in words.
function sourceOf(limit, plan) {
  switch (limit.source) {
    case 'override': {
      const span = document.createElement('span');
      if (limit.expires_at) {
        span.append('an override set by support, until ', timeOf(limit.expires_at));
      } else {
        span.append('an override set by support, with no end');
      }
      return span;
    }
    case 'plan':
      return text(plan ? `the plan “${plan}”` : 'the plan');
    case 'default':
      return text('the default for every user');
    default:
      return text(limit.source);
  }
}

function render(user, list, limit, plan) {
  shown = user;
  $('user-heading').textContent = `User ${user}`;
  $('limit-value').textContent = String(limit.limit);
  $('limit-value').dataset.limit = String(limit.limit);
  $('limit-source').replaceChildren(sourceOf(limit, plan));
  $('limit-source').dataset.source = limit.source;
  $('clear-override').disabled = limit.source !== 'override';

  const streams = list.active_streams || [];
  $('streams-heading').textContent = `Live streams: ${streams.length} of ${limit.limit}`;
  const rows = streams.map((s) => {
    const tr = document.createElement('tr');
    tr.dataset.streamId = s.stream_id;
    tr.dataset.socket = String(Boolean(s.socket));
    const id = document.createElement('th');
    id.scope = 'row';
    id.textContent = s.stream_id;
    tr.append(id);
    cell(tr, text(s.device_id));
    cell(tr, text(s.device_class));
    cell(tr, text(s.content_id));
    cell(tr, text(s.content_kind));
    cell(tr, text(s.plan));
    cell(tr, timeOf(s.started_at));
    cell(tr, timeOf(s.renewed_at));
    cell(tr, timeOf(s.expires_at));
    cell(tr, text(s.socket ? 'held by a socket' : 'heartbeats'));
    const stop = document.createElement('button');
    stop.type = 'button';
    stop.className = 'danger stop';
    stop.textContent = 'Stop';
    stop.setAttribute('aria-label', `Stop stream ${s.stream_id}`);
    stop.addEventListener('click', () => stopOne(user, s));
    cell(tr, stop);
    return tr;
  });
  $('streams-body').replaceChildren(...rows);
  $('no-streams').hidden = streams.length > 0;
  $('stop-all').disabled = streams.length === 0;

  const tombstones = list.tombstones || [];
  $('tombstones-body').replaceChildren(...tombstones.map((t) => {
    const tr = document.createElement('tr');
    tr.dataset.streamId = t.stream_id;
    const id = document.createElement('th');
    id.scope = 'row';
    id.textContent = t.stream_id;
    tr.append(id);
    cell(tr, timeOf(t.expires_at));
    return tr;
  }));
  $('no-tombstones').hidden = tombstones.length > 0;

  $('user').hidden = false;
  $('user').dataset.loads = String(++loads);
}

// Reads the user's streams and effective limit, and shows them. The
// limit is asked for under the plan of the newest stream that names one,
// since a user's plan is known only from what their players send.
async function load(user) {
  const list = await api('GET', `${userPath(user)}/streams`);
  const streams = list.active_streams || [];
  const plan = streams.map((s) => s.plan).filter(Boolean).pop();
  const query = plan ? `?plan=${encodeURIComponent(plan)}` : '';
  const limit = await api('GET', `${userPath(user)}/limit${query}`);
  render(user, list, limit, plan);
}

// Runs an action's request, says how it went, then shows the user again
// (whatever happened, so the page never shows a stale state).
async function act(user, request, done) {
  setBusy(true);
  let outcome = null;
  try {
    outcome = done(await request());
    say(outcome, 'ok');
  } catch (e) {
    say(e.message, 'error');
  }
  try {
    await load(user);
  } catch (e) {
    // Whether the action happened must stay on screen.
    say(outcome ? `${outcome} But the user could not be shown again: ${e.message}` : e.message, 'error');
  } finally {
    setBusy(false);
  }
}

// While a request runs, the user's panel and the look-up form take no
// clicks or keys (`inert` leaves each button's own disabled state alone).
function setBusy(busy) {
  document.body.dataset.busy = String(busy);
  $('user').inert = busy;
  $('lookup-form').inert = busy;
}

function listed(ids) {
  return ids.length ? ids.join(', ') : 'none';
}

// ---- actions ----

async function stopOne(user, stream) {
  const how = stream.socket
    ? 'Its player is told at once over its socket and stops playing.'
    : 'Its player stops at its next heartbeat, within a third of the lease time.';
  const sure = await confirmAction(
    `Stop stream ${stream.stream_id} of user ${user}? ${how} It cannot resume this stream until its tombstone ends; the viewer may start a new one.`,
    'Stop stream',
  );
  if (!sure) return;
  await act(
    user,
    () => api('POST', `${userPath(user)}/streams/${encodeURIComponent(stream.stream_id)}/revoke`),
    (a) => (a.revoked.length ? `Stopped stream ${listed(a.revoked)}.` : `Stream ${stream.stream_id} had already ended.`),
  );
}

$('stop-all').addEventListener('click', async () => {
  const user = shown;
  const sure = await confirmAction(
    `Stop every stream of user ${user}? Every player of theirs stops, and none can resume its stream until its tombstone ends.`,
    'Stop all streams',
  );
  if (!sure) return;
  await act(
    user,
    () => api('DELETE', `${userPath(user)}/streams`),
    (a) => `Stopped ${a.revoked.length} stream${a.revoked.length === 1 ? '' : 's'}: ${listed(a.revoked)}.`,
  );
});

$('override-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const user = shown;
  const raw = $('override-limit').value.trim();
  const limit = Number(raw);
  if (raw === '' || !Number.isInteger(limit) || limit < 0 || limit > 1000) {
    say('The override must be a whole number from 0 to 1000.', 'error');
    $('override-limit').focus();
    return;
  }
  const body = { limit };
  let until = 'until it is cleared';
  const local = $('override-expires').value;
  if (local) {
    const at = new Date(local);
    if (Number.isNaN(at.getTime())) {
      say('The end of the override is not a date and time.', 'error');
      $('override-expires').focus();
      return;
    }
    body.expires_at = at.toISOString();
    until = `until ${at.toLocaleString(undefined, TIME_STYLE)}`;
  }
  const sure = await confirmAction(
    `Let user ${user} watch ${limit} stream${limit === 1 ? '' : 's'} at once, ${until}, whatever their plan allows? Streams already playing go on; the new limit applies to the next one they start.`,
    'Set override',
  );
  if (!sure) return;
  await act(user, () => api('PUT', `${userPath(user)}/limit`, body), (a) => `User ${user} may now watch ${a.limit} at once.`);
});

$('clear-override').addEventListener('click', async () => {
  const user = shown;
  const sure = await confirmAction(
    `Clear the override of user ${user}? Their plan's or the default limit applies again to the next stream they start; streams already playing go on.`,
    'Clear override',
  );
  if (!sure) return;
  await act(user, () => api('DELETE', `${userPath(user)}/limit`), () => `The override of user ${user} is cleared.`);
});

// ---- signing in and looking up ----

function showSignedIn() {
  const signedIn = Boolean(sessionStorage.getItem(STORAGE_KEY));
  $('signin-form').hidden = signedIn;
  $('signed-in').hidden = !signedIn;
  document.body.dataset.signedIn = String(signedIn);
}

$('signin-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const credential = $('credential').value.trim();
  $('credential').value = '';
  if (!credential) {
    say('Paste an API key or a token to sign in.', 'error');
    return;
  }
  sessionStorage.setItem(STORAGE_KEY, credential);
  showSignedIn();
  quiet();
  if (USER_ID.test($('user-id').value)) {
    lookUp();
  } else {
    $('user-id').focus();
  }
});

$('sign-out').addEventListener('click', () => {
  sessionStorage.removeItem(STORAGE_KEY);
  shown = null;
  $('user').hidden = true;
  showSignedIn();
  say('Signed out.', 'info');
  $('credential').focus();
});

async function lookUp() {
  const user = $('user-id').value.trim();
  if (!USER_ID.test(user)) {
    say('A user id is 1 to 128 characters: letters, digits and . _ ~ : @ -', 'error');
    $('user-id').focus();
    return;
  }
  if (!sessionStorage.getItem(STORAGE_KEY)) {
    say('Sign in first.', 'error');
    $('credential').focus();
    return;
  }
  setBusy(true);
  quiet();
  try {
    await load(user);
  } catch (e) {
    $('user').hidden = true;
    shown = null;
    say(e.message, 'error');
  } finally {
    setBusy(false);
  }
}

$('lookup-form').addEventListener('submit', (event) => {
  event.preventDefault();
  lookUp();
});

showSignedIn();
document.body.dataset.ready = 'true';
