// The streamcap player client: holds one stream's lease for as long as the
// player plays, either with HTTP heartbeats (PUT every ttl/3) or by keeping
// a WebSocket open. One ES module, no dependencies; runs in browsers and in
// Node 20+ (whose global WebSocket needs --experimental-websocket before
// Node 22, or pass the `WebSocket` option). The reference is in
// docs/players.md; the types are in streamcap.d.ts.

const ID = /^[A-Za-z0-9._~:@-]{1,128}$/;
const PROBLEMS = 'https://streamcap.dev/problems/';

/** The problem type of each status the server answers with, for close codes without a message. */
const SLUGS = {
  400: 'invalid-request',
  401: 'unauthorized',
  403: 'forbidden',
  408: 'request-timeout',
  409: 'stream-limit-reached',
  410: 'stream-revoked',
  429: 'rate-limited',
  503: 'store-unavailable',
};

const DEFAULTS = {
  initialRetryDelayMs: 500,
  maxRetryDelayMs: 30_000,
  requestTimeoutMs: 15_000,
  // API Gateway closes a WebSocket after 2 hours; the client moves to a new one 5 minutes before.
  maxConnectionMs: 115 * 60_000,
};

/** How long stop() waits for an acquire in flight to answer before it releases. */
const STOP_WAIT_MS = 3_000;

/** States in which the client holds, or is getting, a lease. */
const RUNNING = new Set(['acquiring', 'active', 'reconnecting']);

/**
 * Holds the lease of one playback stream. Create one per stream, call
 * `start()` when playback starts and `stop()` when it ends.
 */
export class StreamcapClient extends EventTarget {
  #opts;
  #fetch;
  #WebSocket;
  #page;
  #state = 'idle';
  #lease = null;
  #problem = null;
  /** The current run: one acquire-and-hold loop, ended by stop, suspend or a take-over. */
  #run = null;
  /** Promises of start()/takeOver() waiting for a decisive outcome. */
  #waiters = [];
  #stopping = null;
  /** The last credential sent, for releases that cannot wait for getToken(). */
  #token = null;
  /** A release sent on suspend; the next acquire waits for it so that it cannot undo the acquire. */
  #releasing = null;
  #pageListeners = null;

  /** @param {import('./streamcap.d.ts').StreamcapOptions} options */
  constructor(options) {
    super();
    const o = { ...DEFAULTS, ...options };
    if (o.mode === undefined) o.mode = 'heartbeat';
    if (o.mode !== 'heartbeat' && o.mode !== 'websocket' && o.mode !== 'lambda-websocket') {
      throw new TypeError(`mode must be 'heartbeat', 'websocket' or 'lambda-websocket', got ${String(o.mode)}`);
    }
    if (o.mode === 'lambda-websocket') {
      // An API Gateway WebSocket API has one URL; the stream and user go in its query.
      if (typeof o.socketUrl !== 'string') throw new TypeError("socketUrl (the WebSocket API's wss:// URL) is required in lambda-websocket mode");
      o.socketUrl = new URL(o.socketUrl, globalThis.location?.href).href;
      if (!(o.maxConnectionMs > 0)) throw new TypeError('maxConnectionMs must be a positive number of milliseconds');
    } else {
      if (o.baseUrl === undefined && globalThis.location?.origin) o.baseUrl = globalThis.location.origin;
      if (typeof o.baseUrl !== 'string') throw new TypeError('baseUrl is required outside a browser page');
      const base = new URL(o.baseUrl, globalThis.location?.href);
      o.baseUrl = base.href.replace(/\/+$/, '');
    }
    checkId('streamId', o.streamId);
    if (o.userId !== undefined) checkId('userId', o.userId);
    // Rules match on these, so they take the id alphabet, as the server checks.
    if (o.deviceClass !== undefined) checkId('deviceClass', o.deviceClass);
    if (o.contentKind !== undefined) checkId('contentKind', o.contentKind);
    if (o.token !== undefined && o.getToken !== undefined) throw new TypeError('give token or getToken, not both');
    if (o.getToken !== undefined && typeof o.getToken !== 'function') throw new TypeError('getToken must be a function');
    if (o.onHidden === undefined) o.onHidden = 'release';
    if (o.onHidden !== 'release' && o.onHidden !== 'keep') {
      throw new TypeError(`onHidden must be 'release' or 'keep', got ${String(o.onHidden)}`);
    }
    this.#opts = o;
    this.#fetch = o.fetch ?? globalThis.fetch?.bind(globalThis);
    if (typeof this.#fetch !== 'function' && o.mode === 'heartbeat') {
      throw new TypeError('no fetch implementation: pass the fetch option');
    }
    this.#WebSocket = o.WebSocket ?? globalThis.WebSocket;
    if (o.mode !== 'heartbeat' && typeof this.#WebSocket !== 'function') {
      throw new TypeError(
        'no WebSocket implementation: pass the WebSocket option (Node 20 has a global one only with --experimental-websocket)',
      );
    }
    if (o.page === false) {
      this.#page = null;
    } else if (o.page) {
      this.#page = o.page;
    } else if (typeof globalThis.window !== 'undefined' && typeof globalThis.document !== 'undefined') {
      this.#page = { window: globalThis.window, document: globalThis.document };
    } else {
      this.#page = null;
    }
  }

  /** `idle`, `acquiring`, `active`, `reconnecting`, `suspended`, `refused`, `revoked`, `failed` or `stopped`. */
  get state() {
    return this.#state;
  }

  /** The lease as the server last described it, or null when none is held. */
  get lease() {
    return this.#lease;
  }

  /** The problem document that ended the last attempt (refused, revoked, failed), or null. */
  get problem() {
    return this.#problem;
  }

  get mode() {
    return this.#opts.mode;
  }

  get streamId() {
    return this.#opts.streamId;
  }

  /**
   * Acquires the lease and keeps it. Resolves with the lease once granted,
   * or with null when no lease was obtained: refused, revoked, failed or
   * stopped (see `state`, `problem` and the events). Never rejects.
   */
  start() {
    if (this.#state === 'active') return Promise.resolve(this.#lease);
    const waiter = this.#wait();
    if (!RUNNING.has(this.#state) && this.#state !== 'suspended') this.#begin([]);
    return waiter;
  }

  /**
   * Acquires the lease by stopping the given streams of the same user (a
   * take-over, usually after `refused`). Resolves like `start()`.
   * @param {string[]} streamIds
   */
  takeOver(streamIds) {
    if (!Array.isArray(streamIds) || streamIds.length === 0) {
      throw new TypeError('takeOver needs a non-empty array of stream ids');
    }
    for (const id of streamIds) checkId('a stream id to take over', id);
    const waiter = this.#wait();
    this.#begin([...streamIds]);
    return waiter;
  }

  /**
   * Releases the lease (heartbeat: DELETE; websocket: close 1000), stops
   * every timer and forgets the page listeners. Idempotent; never rejects.
   */
  stop() {
    if (this.#state === 'stopped') return this.#stopping ?? Promise.resolve();
    const run = this.#run;
    this.#run = null;
    this.#unlistenPage();
    this.#lease = null;
    this.#setState('stopped');
    this.#settle(null);
    const earlier = this.#stopping;
    const stopping = (async () => {
      await earlier;
      if (run) await run.end(true, false);
      await this.#releasing;
    })().finally(() => {
      if (this.#stopping === stopping) this.#stopping = null;
    });
    this.#stopping = stopping;
    return stopping;
  }

  /**
   * Listens to an event and receives its detail. Returns a function that
   * removes the listener.
   */
  on(type, listener) {
    const wrapped = (event) => listener(event.detail, event);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  // ---- shared machinery ----

  #wait() {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  #settle(value) {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const resolve of waiters) resolve(value);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #setState(state) {
    const previous = this.#state;
    if (previous === state) return;
    this.#state = state;
    this.#emit('state', { state, previous });
  }

  /** Ends the current run (without waiting) and starts a new one. */
  #begin(evict) {
    const old = this.#run;
    this.#problem = null;
    this.#listenPage();
    const run = this.#opts.mode === 'heartbeat' ? new HeartbeatRun(this.#hooks(), evict) : new SocketRun(this.#hooks(), evict);
    this.#run = run;
    this.#setState('acquiring');
    // A take-over of a socket-held lease must close the old socket before
    // the new one connects, or the old close would release the new lease.
    const before = old ? old.end(false, true) : Promise.resolve();
    run.go(Promise.all([before, this.#releasing, this.#stopping]));
  }

  /** The callbacks through which a run reports to its client, ignored once the run is no longer current. */
  #hooks() {
    const current = (run) => this.#run === run;
    return {
      opts: this.#opts,
      fetch: this.#fetch,
      WebSocket: this.#WebSocket,
      token: async () => {
        const o = this.#opts;
        const token = o.getToken ? await o.getToken() : o.token;
        this.#token = token ?? null;
        return this.#token;
      },
      cachedToken: () => this.#token,
      granted: (run, lease, first) => {
        if (!current(run)) return;
        this.#lease = lease;
        this.#problem = null;
        this.#setState('active');
        this.#emit(first ? 'granted' : 'renewed', lease);
        if (first) this.#settle(lease);
      },
      reconnecting: (run) => {
        if (current(run) && this.#state === 'active') this.#setState('reconnecting');
      },
      lost: (run) => {
        if (current(run)) this.#lease = null;
      },
      error: (run, detail) => {
        if (current(run) || detail.phase === 'release') this.#emit('error', detail);
      },
      finished: (run, state, event, detail, problem) => {
        if (!current(run)) return;
        this.#run = null;
        this.#lease = null;
        this.#problem = problem;
        this.#setState(state);
        if (event) this.#emit(event, detail);
        this.#settle(null);
      },
    };
  }

  // ---- the page lifecycle ----

  #listenPage() {
    if (!this.#page || this.#pageListeners) return;
    const { window, document } = this.#page;
    const onPageHide = () => this.#suspend();
    const onPageShow = (event) => {
      if (event.persisted) this.#resume();
    };
    const onVisibility = () => {
      if (document.visibilityState === 'hidden') {
        if (this.#opts.onHidden === 'release') this.#suspend();
      } else if (document.visibilityState === 'visible') {
        this.#resume();
      }
    };
    window.addEventListener('pagehide', onPageHide);
    window.addEventListener('pageshow', onPageShow);
    document.addEventListener('visibilitychange', onVisibility);
    this.#pageListeners = () => {
      window.removeEventListener('pagehide', onPageHide);
      window.removeEventListener('pageshow', onPageShow);
      document.removeEventListener('visibilitychange', onVisibility);
    };
  }

  #unlistenPage() {
    this.#pageListeners?.();
    this.#pageListeners = null;
  }

  /**
   * The page is going away or out of sight: release now, synchronously, as
   * the page may be frozen or killed right after this event.
   */
  #suspend() {
    if (!RUNNING.has(this.#state)) return;
    const run = this.#run;
    this.#run = null;
    this.#lease = null;
    this.#setState('suspended');
    if (run) this.#releasing = run.end(false, false).catch(() => {});
  }

  /** The page is back: acquire again. Pending start() calls wait for the outcome. */
  #resume() {
    if (this.#state !== 'suspended') return;
    if (this.#page?.document.visibilityState === 'hidden') return;
    this.#begin([]);
  }
}

// ---- heartbeat mode ----

class HeartbeatRun {
  #h;
  #evict;
  /** Ends the sleeps between requests. */
  #timers = new AbortController();
  /** Aborts a request in flight. */
  #requests = new AbortController();
  #ended = false;
  #lease = null;
  /** Whether the server may hold a lease for this run (a PUT was sent and no refusal or release came back). */
  #mayHold = false;
  #inflight = null;

  constructor(hooks, evict) {
    this.#h = hooks;
    this.#evict = evict;
  }

  async go(before) {
    await before;
    const h = this.#h;
    let first = true;
    let failures = 0;
    while (!this.#ended) {
      const phase = first ? 'acquire' : 'renew';
      const body = { ...labels(h.opts) };
      if (this.#evict.length) body.evict = this.#evict;
      this.#mayHold = true;
      this.#inflight = this.#send('PUT', body, false);
      const res = await this.#inflight;
      this.#inflight = null;
      if (this.#ended) return;
      if (res.ok) {
        this.#evict = [];
        failures = 0;
        this.#lease = res.body;
        h.granted(this, res.body, first);
        first = false;
        await this.#sleep(renewInterval(res.body));
        continue;
      }
      const verdict = classify(res.status);
      if (verdict === 'refused') {
        this.#mayHold = false;
        return h.finished(this, 'refused', 'refused', res.problem, res.problem);
      }
      if (verdict === 'revoked') {
        this.#mayHold = false;
        const p = res.problem;
        return h.finished(this, 'revoked', 'revoked', revokedDetail(p), p);
      }
      if (verdict === 'fatal') {
        h.error(this, errorDetail(phase, res, null));
        this.#mayHold = false;
        return h.finished(this, 'failed', null, null, res.problem);
      }
      // Renewals keep their pace: a retry never waits past the next heartbeat unless the server asks.
      const cap = first ? h.opts.maxRetryDelayMs : Math.min(h.opts.maxRetryDelayMs, renewInterval(this.#lease));
      const delay = retryDelay(failures++, res.retryAfterMs, h.opts.initialRetryDelayMs, cap);
      if (!first) h.reconnecting(this);
      h.error(this, errorDetail(phase, res, delay));
      await this.#sleep(delay);
    }
  }

  /**
   * Ends the run. `wait`: let an acquire in flight answer first, so that the
   * release cannot overtake it. `keep`: do not release (a take-over will
   * renew this lease).
   */
  async end(wait, keep) {
    if (this.#ended) return;
    this.#ended = true;
    const inflight = this.#inflight;
    this.#timers.abort();
    if (wait && inflight && !keep) await Promise.race([inflight, delay(STOP_WAIT_MS)]);
    this.#requests.abort();
    if (keep || !this.#mayHold) return;
    this.#mayHold = false;
    const res = await this.#send('DELETE', undefined, true);
    if (!res.ok) this.#h.error(this, errorDetail('release', res, null));
  }

  #sleep(ms) {
    return delay(ms, this.#timers.signal);
  }

  /** One request; never throws. A release uses the cached token synchronously and keepalive, so it survives the page. */
  async #send(method, body, release) {
    const h = this.#h;
    let token;
    if (release) {
      token = h.cachedToken();
    } else {
      try {
        token = await h.token();
      } catch (error) {
        return { ok: false, status: null, problem: null, error, retryAfterMs: null };
      }
    }
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const init = { method, headers };
    if (body !== undefined) init.body = JSON.stringify(body);
    if (release) init.keepalive = true;
    return request(h.fetch, leaseUrl(h.opts, ''), init, release ? null : this.#requests.signal, h.opts.requestTimeoutMs);
  }
}

// ---- WebSocket mode ----

class SocketRun {
  #h;
  #evict;
  #abort = new AbortController();
  #ended = false;
  #ws = null;
  #lease = null;
  /** Resolves when the current socket has closed. */
  #closed = null;

  constructor(hooks, evict) {
    this.#h = hooks;
    this.#evict = evict;
  }

  async go(before) {
    await before;
    const h = this.#h;
    let first = true;
    let failures = 0;
    while (!this.#ended) {
      const out = await this.#connect(first);
      if (this.#ended) return;
      if (out.granted) {
        first = false;
        failures = 0;
        this.#evict = [];
      }
      if (out.finish) {
        const [state, event, detail, problem] = out.finish;
        if (out.error) h.error(this, out.error);
        return h.finished(this, state, event, detail, problem);
      }
      h.lost(this);
      const cap = first ? h.opts.maxRetryDelayMs : Math.min(h.opts.maxRetryDelayMs, renewInterval(this.#lease));
      const wait = retryDelay(failures++, out.retryAfterMs, h.opts.initialRetryDelayMs, cap);
      if (!first) h.reconnecting(this);
      h.error(this, { ...out.error, retryInMs: wait });
      await delay(wait, this.#abort.signal);
    }
  }

  /** Ends the run: closes the socket with 1000, which releases the lease, and waits for the close (at most 2 s). */
  async end(_wait, _keep) {
    if (this.#ended) return;
    this.#ended = true;
    this.#abort.abort();
    const ws = this.#ws;
    if (!ws) return;
    try {
      ws.close(1000, 'stop');
    } catch {
      // Already closing.
    }
    await Promise.race([this.#closed, delay(2_000)]);
  }

  /** One socket, from connect to close. Resolves with what happened. */
  async #connect(first) {
    const h = this.#h;
    let token;
    try {
      token = await h.token();
    } catch (error) {
      const phase = first ? 'acquire' : 'renew';
      return { error: { phase, status: null, problem: null, cause: error, retryInMs: null }, retryAfterMs: null };
    }
    if (this.#ended) return {};
    const protocols = ['streamcap.v1'];
    if (token) protocols.push(`streamcap.bearer.${token}`);
    // On API Gateway (lambda-websocket), the client speaks first and renews: `start`, then `renew` every ttl/3.
    const lambda = h.opts.mode === 'lambda-websocket';
    const url = lambda ? gatewayUrl(h.opts, this.#evict) : socketUrl(h.opts, this.#evict);
    let ws;
    try {
      ws = new h.WebSocket(url, protocols);
    } catch (error) {
      // A token with characters a subprotocol cannot carry, or a bad URL: retrying cannot help.
      const detail = { phase: first ? 'acquire' : 'renew', status: null, problem: null, cause: error, retryInMs: null };
      return { error: detail, finish: ['failed', null, null, null] };
    }
    this.#ws = ws;
    let closedResolve;
    this.#closed = new Promise((resolve) => (closedResolve = resolve));
    return new Promise((resolve) => {
      let granted = false;
      // Before the first grant of the run, a failure is part of getting the lease; after it, of keeping it.
      const phase = () => (first && !granted ? 'acquire' : 'renew');
      let outcome = null;
      let watchdog = null;
      let lease = null;
      let renewals = null;
      let rotation = null;
      const finish = (value) => {
        clearTimeout(watchdog);
        clearInterval(renewals);
        clearTimeout(rotation);
        resolve({ granted, ...value });
      };
      const say = (type) => {
        try {
          ws.send(JSON.stringify({ type }));
        } catch {
          // Closing: its close handler reports it.
        }
      };
      // Before API Gateway's 2-hour limit, a new socket takes the lease over (a renewal that replaces the holder):
      // the old socket is then told `replaced`, which is expected, and closed by the server.
      const rotate = () => {
        let next;
        try {
          next = new h.WebSocket(url, protocols);
        } catch {
          return;
        }
        next.onopen = () => {
          if (this.#ended) return next.close(1000, 'stop');
          const old = ws;
          old.onmessage = old.onclose = old.onerror = null;
          ws = this.#ws = next;
          attach();
          say('start');
        };
        next.onerror = () => {
          // The old socket still holds the lease: try again in a minute.
          rotation = setTimeout(rotate, 60_000);
        };
      };
      // The server speaks every ttl/3; a full TTL of silence means the connection is dead even if no close came.
      const arm = () => {
        clearTimeout(watchdog);
        const ttl = lease?.ttl_seconds;
        if (!(ttl > 0)) return;
        watchdog = setTimeout(() => {
          ws.onmessage = ws.onclose = ws.onerror = null;
          try {
            ws.close(1000, 'silent');
          } catch {
            // Already closing.
          }
          closedResolve();
          const cause = new Error(`no message from the server for ${ttl} s`);
          finish({ error: { phase: phase(), status: null, problem: null, cause, retryInMs: null }, retryAfterMs: null });
        }, ttl * 1000);
      };
      const onmessage = (event) => {
        if (this.#ended || typeof event.data !== 'string') return;
        let msg;
        try {
          msg = JSON.parse(event.data);
        } catch {
          return;
        }
        const { type, ...fields } = msg;
        if (type === 'granted') {
          const again = granted;
          lease = this.#lease = fields;
          const wasFirst = first && !granted;
          granted = true;
          arm();
          if (lambda && !again) {
            renewals = setInterval(() => say('renew'), renewInterval(lease));
            rotation = setTimeout(rotate, h.opts.maxConnectionMs);
          } else if (lambda) {
            rotation = setTimeout(rotate, h.opts.maxConnectionMs);
          }
          h.granted(this, lease, wasFirst);
        } else if (type === 'renewed') {
          lease = this.#lease = { ...lease, ...fields };
          arm();
          h.granted(this, lease, false);
        } else if (type === 'refused') {
          const p = problemOf(fields, 409);
          outcome = { finish: ['refused', 'refused', p, p] };
        } else if (type === 'revoked') {
          const p = problemOf(fields, 410);
          outcome = { finish: ['revoked', 'revoked', revokedDetail(p), p] };
        } else if (type === 'error') {
          const p = problemOf(fields, fields.status);
          outcome = fromStatus(phase(), p.status, p, fields.retry_after_seconds);
        } else {
          return;
        }
        // Refusals and revocations are final: report them now rather than at the close.
        if (outcome?.finish) {
          ws.onmessage = null;
          finish(outcome);
        }
      };
      const closed = (code, reason) => {
        ws.onmessage = ws.onclose = ws.onerror = null;
        closedResolve();
        if (this.#ended) return finish({});
        if (outcome) return finish(outcome);
        if (code >= 4000 && code < 5000) {
          const status = code - 4000;
          const p = problemOf({ status, detail: `the server closed the socket with code ${code} ${reason}`.trim() }, status);
          return finish(fromStatus(phase(), status, p, null));
        }
        const cause = new Error(`the socket closed with code ${code}${reason ? `: ${reason}` : ''}`);
        finish({ error: { phase: phase(), status: null, problem: null, cause, retryInMs: null }, retryAfterMs: null });
      };
      const attach = () => {
        ws.onmessage = onmessage;
        ws.onclose = (event) => closed(event.code, event.reason);
        // Browsers follow an error with a close (1006), but node 20's WebSocket may not, when the connection is
        // refused: an error ends the socket here.
        ws.onerror = () => {
          closed(1006, 'the connection failed');
          try {
            ws.close();
          } catch {
            // Not closable in its state: it is gone.
          }
        };
      };
      attach();
      if (lambda) ws.onopen = () => say('start');
    });
  }
}

// ---- helpers ----

function checkId(what, id) {
  if (typeof id !== 'string' || !ID.test(id)) {
    throw new TypeError(`${what} must be 1 to 128 characters of A-Z a-z 0-9 . _ ~ : @ -, got ${JSON.stringify(id)}`);
  }
}

function labels(o) {
  const out = {};
  if (o.deviceId !== undefined) out.device_id = o.deviceId;
  if (o.contentId !== undefined) out.content_id = o.contentId;
  if (o.deviceClass !== undefined) out.device_class = o.deviceClass;
  if (o.contentKind !== undefined) out.content_kind = o.contentKind;
  if (o.plan !== undefined) out.plan = o.plan;
  return out;
}

function leaseUrl(o, suffix) {
  const owner = o.userId === undefined ? '/v1/me' : `/v1/users/${encodeURIComponent(o.userId)}`;
  return `${o.baseUrl}${owner}/streams/${encodeURIComponent(o.streamId)}${suffix}`;
}

/** The URL of an API Gateway WebSocket API: its one URL, with the stream, the user and the labels in the query. */
function gatewayUrl(o, evict) {
  const url = new URL(o.socketUrl);
  url.searchParams.set('stream', o.streamId);
  if (o.userId !== undefined) url.searchParams.set('user', o.userId);
  for (const [k, v] of Object.entries(labels(o))) url.searchParams.set(k, v);
  if (evict.length) url.searchParams.set('evict', evict.join(','));
  return url.href;
}

function socketUrl(o, evict) {
  const url = new URL(leaseUrl(o, '/socket'));
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  for (const [k, v] of Object.entries(labels(o))) url.searchParams.set(k, v);
  if (evict.length) url.searchParams.set('evict', evict.join(','));
  return url.href;
}

/** A third of the lease's TTL: the heartbeat pace. */
function renewInterval(lease) {
  const ttl = lease?.ttl_seconds;
  return (ttl > 0 ? ttl : 60) * 1000 / 3;
}

/** What to do about a status: the acquire ends (refused, revoked, fatal) or is retried. */
function classify(status) {
  if (status === 409) return 'refused';
  if (status === 410) return 'revoked';
  // No answer at all, rate limits, timeouts and server-side failures pass.
  if (status === null || status === 408 || status === 429 || status >= 500) return 'retry';
  return 'fatal';
}

/** The outcome of a socket refused with a status (an `error` message or a 4xxx close). */
function fromStatus(phase, status, problem, retryAfterSeconds) {
  const verdict = classify(status);
  if (verdict === 'refused') return { finish: ['refused', 'refused', problem, problem] };
  if (verdict === 'revoked') return { finish: ['revoked', 'revoked', revokedDetail(problem), problem] };
  const retryAfterMs = retryAfterSeconds > 0 ? retryAfterSeconds * 1000 : null;
  const error = { phase, status, problem, cause: null, retryInMs: null };
  if (verdict === 'fatal') return { error, finish: ['failed', null, null, problem] };
  return { error, retryAfterMs };
}

/**
 * The delay before retry number `attempt` (from 0): exponential from
 * `initial`, capped, with "equal jitter" (half fixed, half random); never
 * sooner than the server's Retry-After, which gets up to 20% of jitter on
 * top so that clients refused together do not return together.
 */
function retryDelay(attempt, retryAfterMs, initial, cap) {
  const exp = Math.min(cap, initial * 2 ** Math.min(attempt, 30));
  const jittered = exp / 2 + Math.random() * (exp / 2);
  if (retryAfterMs === null || retryAfterMs === undefined) return Math.round(jittered);
  return Math.round(Math.max(jittered, retryAfterMs * (1 + 0.2 * Math.random())));
}

/**
 * The problem document of a socket message or close code, shaped as the
 * PUT's: on a socket, `type` names the message and the problem type is
 * `problem_type` (the status's usual one when a message has none).
 */
function problemOf(fields, status) {
  const { problem_type, ...rest } = fields;
  const s = Number.isInteger(rest.status) ? rest.status : status;
  const slug = SLUGS[s];
  return { ...rest, type: problem_type ?? (slug ? PROBLEMS + slug : 'about:blank'), status: s };
}

function revokedDetail(problem) {
  const detail = { reason: problem?.reason ?? 'revoked', problem };
  if (typeof problem?.by_stream_id === 'string') detail.by_stream_id = problem.by_stream_id;
  return detail;
}

function errorDetail(phase, res, retryInMs) {
  return { phase, status: res.status, problem: res.problem, cause: res.error ?? null, retryInMs };
}

/** Parses Retry-After: delay-seconds or an HTTP date. */
function parseRetryAfter(value) {
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, at - Date.now());
}

/**
 * One fetch, with a timeout; never throws. Answers `{ok, status, body}`,
 * or `{ok: false, status, problem, retryAfterMs}` for an HTTP error, or
 * `{ok: false, status: null, error}` when no answer came.
 */
async function request(fetchFn, url, init, signal, timeoutMs) {
  const ctl = new AbortController();
  const onAbort = () => ctl.abort(signal.reason);
  signal?.addEventListener('abort', onAbort);
  const timer = setTimeout(() => ctl.abort(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
  try {
    const res = await fetchFn(url, { ...init, signal: ctl.signal });
    const text = await res.text();
    let body = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch {
        body = null;
      }
    }
    if (res.ok) return { ok: true, status: res.status, body };
    const problem =
      body && typeof body === 'object'
        ? body
        : { type: 'about:blank', title: res.statusText || `HTTP ${res.status}`, status: res.status, detail: text };
    const header = parseRetryAfter(res.headers.get('retry-after'));
    const fromBody = problem.retry_after_seconds > 0 ? problem.retry_after_seconds * 1000 : null;
    return { ok: false, status: res.status, problem, retryAfterMs: header ?? fromBody };
  } catch (error) {
    return { ok: false, status: null, problem: null, error: ctl.signal.reason ?? error, retryAfterMs: null };
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  }
}

/** Sleeps; an abort ends the sleep early (it resolves, never rejects). */
function delay(ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done);
  });
}
