// Type declarations of streamcap.js, the streamcap player client.
// The reference with examples is docs/players.md.

/** How the client holds the lease. */
/**
 * `heartbeat`: a PUT every ttl/3. `websocket`: a socket to `streamcap serve`, which renews while it is open.
 * `lambda-websocket`: a socket to an API Gateway WebSocket API in front of streamcap-lambda (`socketUrl`), which
 * the client starts with `start` and renews with `renew` every ttl/3.
 */
export type Mode = 'heartbeat' | 'websocket' | 'lambda-websocket';

/**
 * - `idle`: never started.
 * - `acquiring`: `start()` or `takeOver()` is getting the lease (retrying on 429, 503 and network errors).
 * - `active`: the lease is held.
 * - `reconnecting`: the lease was held, and renewing it (heartbeat) or the socket (websocket) failed; retrying.
 * - `suspended`: released because the page was hidden or left; acquires again when it is visible.
 * - `refused`: the account is full (see `problem.active_streams` and `takeOver()`).
 * - `revoked`: the stream was evicted by another stream or revoked; it must stop.
 * - `failed`: an answer that retrying cannot change (400, 401, 403, ...); see the `error` event.
 * - `stopped`: `stop()` was called.
 */
export type State =
  | 'idle'
  | 'acquiring'
  | 'active'
  | 'reconnecting'
  | 'suspended'
  | 'refused'
  | 'revoked'
  | 'failed'
  | 'stopped';

/** The page events the client listens to; by default the global `window` and `document` of a browser. */
export interface Page {
  window: Pick<EventTarget, 'addEventListener' | 'removeEventListener'>;
  document: Pick<EventTarget, 'addEventListener' | 'removeEventListener'> & {
    readonly visibilityState: DocumentVisibilityState | string;
  };
}

/**
 * The subset of the WebSocket class the client uses; the global one of browsers and Node 22+ fits. The client
 * sets the handlers, so their event parameters stay loose.
 */
export interface WebSocketLike {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onmessage: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onclose: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onerror: ((event: any) => void) | null;
  /** Set and used in `lambda-websocket` mode only, where the client speaks first. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onopen?: ((event: any) => void) | null;
  /** Used in `lambda-websocket` mode only. */
  send?(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface StreamcapOptions {
  /**
   * Where streamcap answers, such as `https://streamcap.example.com` (a path prefix is kept).
   * Optional in a browser page, where it defaults to the page's origin. Not used in `lambda-websocket` mode.
   */
  baseUrl?: string;
  /** The user whose stream this is. Omit it to use the `/v1/me` routes, which take the user from the token. */
  userId?: string;
  /** The playback stream: 1 to 128 characters of `A-Z a-z 0-9 . _ ~ : @ -`, unique per playback. */
  streamId: string;
  /** A JWT or API key, sent as `Authorization: Bearer` (or, on a browser WebSocket, as a subprotocol). */
  token?: string;
  /** Called before every acquire, renewal and connect, so that a refreshed token is used. Not with `token`. */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Shown to the user's other players in `active_streams` (up to 128 characters). */
  deviceId?: string;
  /** Shown in `active_streams` (up to 128 characters). */
  contentId?: string;
  /**
   * What kind of device plays the stream, such as `'tv'`, for the server's rules (1 to 128 characters of
   * `A-Z a-z 0-9 . _ ~ : @ -`). Sent with every acquire and renewal, and as a query parameter on a WebSocket.
   */
  deviceClass?: string;
  /** What kind of content the stream plays, such as `'live'` or `'download'`, for the server's rules; as `deviceClass`. */
  contentKind?: string;
  /** A configured plan; only a service credential may choose one (a player token's plan claim wins). */
  plan?: string;
  /** Default `'heartbeat'`. */
  mode?: Mode;
  /**
   * `lambda-websocket` only, and required there: the WebSocket API's `wss://` URL (the stack's `WebSocketUrl`).
   * The stream, the user and the labels go in its query; `baseUrl` is not used.
   */
  socketUrl?: string;
  /**
   * `lambda-websocket` only: how long a connection is used before a new one takes the lease over, ahead of API
   * Gateway's 2-hour limit. Default 6900000 (115 minutes).
   */
  maxConnectionMs?: number;
  /**
   * What to do when the page is hidden (`visibilitychange`): `'release'` (default) releases the lease at once and
   * acquires it again when the page is visible; `'keep'` holds it (for background audio or picture-in-picture).
   * `pagehide` always releases.
   */
  onHidden?: 'release' | 'keep';
  /** The page whose lifecycle releases the lease; `false` to handle it yourself. Default: the browser's, if any. */
  page?: Page | false;
  /** Default: the global `fetch`. */
  fetch?: typeof fetch;
  /** Default: the global `WebSocket` (Node 20 has one only with `--experimental-websocket`). */
  WebSocket?: WebSocketConstructor;
  /** The first retry delay, doubled at each failure (with jitter). Default 500. */
  initialRetryDelayMs?: number;
  /** The longest retry delay the client chooses itself; a longer `Retry-After` is still honoured. Default 30000. */
  maxRetryDelayMs?: number;
  /** A request without an answer after this long counts as a network error. Default 15000. */
  requestTimeoutMs?: number;
}

/** An RFC 9457 problem document, as the server sent it. */
export interface Problem {
  type: string;
  title?: string;
  status: number;
  detail?: string;
  [extension: string]: unknown;
}

/** A live stream of the user, as listed in `active_streams` and `evicted`. */
export interface StreamSummary {
  stream_id: string;
  device_id?: string;
  content_id?: string;
  device_class?: string;
  content_kind?: string;
  started_at: string;
  expires_at: string;
  /** In listings (`GET …/streams`): the plan the lease keeps. */
  plan?: string;
  /** In listings: when the lease was last acquired or renewed. */
  renewed_at?: string;
  /** In listings: whether a WebSocket holds the lease. */
  socket?: boolean;
}

/** A stopped stream still refused with 410, as listed in `tombstones`. */
export interface Tombstone {
  stream_id: string;
  /** When the stream may start again. */
  expires_at: string;
}

/** `GET /v1/users/{user_id}/streams` and `GET /v1/me/streams`. */
export interface Listing {
  user_id: string;
  /** The effective limit. */
  limit: number;
  active_streams: StreamSummary[];
  tombstones: Tombstone[];
}

/** The body of `PUT /v1/users/{user_id}/limit` (an admin call). */
export interface SetLimitBody {
  limit: number;
  /** RFC 3339; in the future and at most 366 days ahead. Absent or null: for good. */
  expires_at?: string | null;
}

/** `GET` and `PUT /v1/users/{user_id}/limit`: the effective limit and where it comes from. */
export interface UserLimit {
  user_id: string;
  limit: number;
  source: 'override' | 'plan' | 'default';
  /** When the override in force ends; absent for one that holds for good, or for no override. */
  expires_at?: string;
}

/** 409 `stream-limit-reached`: the account is full. */
export interface LimitProblem extends Problem {
  status: 409;
  /** The user's total limit. */
  limit: number;
  /**
   * The live streams in the full scope, oldest first: offer to stop one of these with `takeOver()`. When a rule
   * refused, the streams in that rule's scope; otherwise those that count toward the total.
   */
  active_streams: StreamSummary[];
  /** The name of the configured rule that refused the stream; absent when the total did. */
  rule?: string;
  /** That rule's limit. */
  rule_limit?: number;
}

/** 410 `stream-revoked`. */
export interface RevokedProblem extends Problem {
  status: 410;
  reason: RevokeReason;
  by_stream_id?: string | null;
}

/** 429 `rate-limited`. */
export interface RateLimitedProblem extends Problem {
  status: 429;
  retry_after_seconds: number;
}

/**
 * `evicted_by_new_stream`: evict-oldest or a take-over gave the seat to `by_stream_id`; `revoked`: a revoke-all;
 * `replaced` (WebSocket only): a newer socket for the same stream holds the lease now.
 */
export type RevokeReason = 'evicted_by_new_stream' | 'revoked' | 'replaced';

/** The lease: the body of the PUT's 200/201, or of the WebSocket `granted` message, updated by `renewed`. */
export interface Lease {
  user_id: string;
  stream_id: string;
  device_id?: string;
  content_id?: string;
  device_class?: string;
  content_kind?: string;
  started_at: string;
  expires_at: string;
  ttl_seconds: number;
  /** Live leases of the user, this one included; null in a degraded grant. */
  active_streams: number | null;
  limit: number;
  enforced: boolean;
  /** The streams this acquire stopped to make room. */
  evicted?: StreamSummary[];
  /** Shadow mode only. */
  would_deny?: boolean;
  /** Shadow mode, with `would_deny`: the rule that would have refused the stream, and its limit. */
  rule?: string;
  rule_limit?: number;
  /** Shadow mode only: the ids of the streams enforcement would have stopped. */
  would_evict?: string[];
  /** Granted while the store was down, under `on_store_error = "allow"`. */
  degraded?: boolean;
  [field: string]: unknown;
}

/** The detail of `revoked`. */
export interface RevokedDetail {
  reason: RevokeReason;
  /** The stream that took the seat, for an eviction (this stream, for `replaced`). */
  by_stream_id?: string;
  /** The 410 problem (heartbeat), or the `revoked` message's fields as a 410 problem (websocket). */
  problem: RevokedProblem;
}

/** The detail of `error`. */
export interface ErrorDetail {
  /** Getting the lease, keeping it (renewal or connection), or releasing it. */
  phase: 'acquire' | 'renew' | 'release';
  /** The HTTP status, or for a socket the status of its `error` message or 4xxx close code; null without an answer. */
  status: number | null;
  problem: Problem | null;
  /** The network error, timeout or close, when there was no problem document. */
  cause: unknown;
  /** When the client retries, in ms; null when it does not (the state is then `failed`, or it was a release). */
  retryInMs: number | null;
}

export interface StateDetail {
  state: State;
  previous: State;
}

export interface StreamcapEventMap {
  /** The lease was acquired (once per `start()`, `takeOver()` or return of a hidden page). */
  granted: Lease;
  /** The lease was renewed (or, after a lost connection, acquired again). */
  renewed: Lease;
  /** The account is full; the state is `refused`. */
  refused: LimitProblem;
  /** The stream was evicted or revoked; the state is `revoked`. The player should stop. */
  revoked: RevokedDetail;
  /** A failure; `retryInMs` says whether the client retries. */
  error: ErrorDetail;
  state: StateDetail;
}

export type StreamcapEvent<K extends keyof StreamcapEventMap> = CustomEvent<StreamcapEventMap[K]>;

export class StreamcapClient extends EventTarget {
  constructor(options: StreamcapOptions);

  readonly state: State;
  /** The lease as last described by the server, or null when none is held. */
  readonly lease: Lease | null;
  /** The problem that ended the last attempt (`refused`, `revoked`, `failed`), or null. */
  readonly problem: Problem | null;
  readonly mode: Mode;
  readonly streamId: string;

  /**
   * Acquires the lease and holds it until `stop()`. Resolves with the lease once granted, or with null when no
   * lease was obtained (the state is then `refused`, `revoked`, `failed` or `stopped`). Never rejects.
   */
  start(): Promise<Lease | null>;
  /** Acquires the lease by stopping these streams of the same user. Resolves like `start()`. */
  takeOver(streamIds: string[]): Promise<Lease | null>;
  /** Releases the lease and stops every timer and listener. Idempotent; never rejects. */
  stop(): Promise<void>;

  /** Adds a listener that receives the event's detail; returns a function that removes it. */
  on<K extends keyof StreamcapEventMap>(
    type: K,
    listener: (detail: StreamcapEventMap[K], event: StreamcapEvent<K>) => void,
  ): () => void;

  addEventListener<K extends keyof StreamcapEventMap>(
    type: K,
    listener: (event: StreamcapEvent<K>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof StreamcapEventMap>(
    type: K,
    listener: (event: StreamcapEvent<K>) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}
