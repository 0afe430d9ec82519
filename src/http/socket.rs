//! WebSocket-held leases: a lease that lives exactly as long as a WebSocket
//! connection.
//!
//! The upgrade request goes through the edge like any request, and is
//! authenticated, admitted, validated and acquired by the very functions
//! the `PUT` uses; the `PUT`'s answer becomes the socket's first message
//! (`granted`, `refused`, `revoked` or `error`). While the socket is open,
//! the lease is renewed every ttl/3 as long as the client answers pings,
//! and closing the socket releases it. [`Sockets`] is this instance's
//! registry of socket-held leases: an acquire that evicts one of them, or a
//! revoke-all that revokes one, tells its socket at once, and a newer
//! socket for the same stream takes the lease over from an older one.
//!
//! Each socket's requests carry its holder token ([`notice`]), so that the
//! lease records which socket holds it. A socket never releases a lease it
//! no longer holds: not after an eviction or a revocation, and not after a
//! newer socket took it over, on this instance or any other, since its
//! release frees the lease only while its token is the lease's holder. A
//! loss decided on another instance reaches the socket as a notice.
//! Nothing here decides: every answer is the store's, through the rules.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tokio::sync::{OwnedMutexGuard, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tracing::Instrument;

use super::AppState;
use super::access::{Whose, authenticate};
use super::acquire::{acquire_lease, acquire_request, acquired};
use super::cors;
use super::dto::{RenewedMessage, RevokedMessage, SocketMessage, SocketQuery, rfc3339};
use super::notice::{self, InstanceId, Loss, Notice};
use super::problem::{ApiError, TYPE_BASE};
use super::respond;
use super::source::Source;
use crate::limiter::{Acquire, Decision, Grant, Lease, RevokeReason, StreamId, UserId};
use crate::metrics;
use crate::store::Store;

/// The subprotocol streamcap speaks; the server chooses it whenever the
/// client offers it.
pub const PROTOCOL: &str = "streamcap.v1";

/// A browser's credential: the subprotocol `streamcap.bearer.<token>`,
/// offered next to [`PROTOCOL`] and never chosen, so never echoed.
pub const BEARER_PROTOCOL: &str = "streamcap.bearer.";

/// The close codes a socket ends with. A refusal closes with 4000 plus the
/// status the `PUT` would have answered.
pub mod close {
    /// The client ended the lease.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down (or a browser left the page).
    pub const GOING_AWAY: u16 = 1001;
    /// The client's close frame carried no code.
    pub const NO_STATUS: u16 = 1005;
    /// No close frame: the connection dropped, or the server dropped a
    /// client that stopped answering. Never sent; recorded in metrics.
    pub const ABNORMAL: u16 = 1006;
    /// `revoked`: the stream was evicted, revoked or replaced.
    pub const REVOKED: u16 = 4410;
    /// A client's close code that is none of the above (for metrics).
    pub const OTHER: u16 = 0;
}

/// The longest a send may wait for a client that does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest the server waits for the client's half of a close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Client messages are ignored; a longer one ends the socket.
const MAX_CLIENT_MESSAGE: usize = super::MAX_BODY_BYTES;

/// The read buffer each socket allocates up front. Clients send little
/// more than pongs, and the library's default (128 KiB) would cost that
/// much memory per open socket.
const READ_BUFFER: usize = 4 * 1024;

/// A lease as the registry names it.
type Key = (UserId, StreamId);

/// This instance's socket-held leases, and its open sockets. Cheap to
/// clone; every clone is the same registry.
#[derive(Clone)]
pub(super) struct Sockets {
    shared: Arc<Shared>,
}

struct Shared {
    /// One slot per lease that a socket holds, or is acquiring or
    /// releasing. A sync mutex: nothing awaits while it is held.
    held: Mutex<HashMap<Key, Slot>>,
    next_id: AtomicU64,
    /// This instance, whose sockets' holder tokens name it.
    instance: InstanceId,
    /// Where notices to other instances go.
    store: Store,
    /// True once the server shuts down.
    closing: watch::Sender<bool>,
    /// Sockets accepted and not yet finished, releases included.
    running: watch::Sender<usize>,
}

/// One lease's entry in the registry.
struct Slot {
    /// The socket holding the lease, if one does.
    owner: Option<Owner>,
    /// A loss that came while a socket was acquiring the lease, before it
    /// could own it: that socket hears of it as soon as it registers.
    pending: Option<Loss>,
    /// Serializes this instance's acquire-and-register and release of the
    /// lease, so that a socket's release never lands after a newer
    /// socket's acquire of the same stream.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Turns taken or awaited; the slot goes once this is 0 and nobody
    /// owns the lease.
    turns: usize,
}

struct Owner {
    id: u64,
    tell: oneshot::Sender<Loss>,
}

impl Sockets {
    pub(super) fn new(instance: InstanceId, store: Store) -> Self {
        let shared = Shared {
            held: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            instance,
            store,
            closing: watch::Sender::new(false),
            running: watch::Sender::new(0),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Tells the sockets that held the leases `grant` evicted that they
    /// lost them, and the one a newer socket's renewal took the lease from
    /// that it was replaced: here at once, elsewhere by a notice. Called
    /// with every grant and renewal; costs nothing without either.
    pub(super) fn granted(&self, user: &UserId, grant: &Grant) {
        if !grant.evicted.is_empty() {
            let loss = Loss::Evicted(grant.lease.stream_id.clone());
            self.tell(user, grant.evicted.iter().map(|lease| &lease.stream_id), &loss);
            self.notify(user, &grant.evicted, &loss);
        }
        if let Some(holder) = &grant.replaced {
            // Here, the newer socket's registration tells the older one.
            let stream = &grant.lease.stream_id;
            notice::send(&self.shared.store, &self.shared.instance, user, stream, holder, &Loss::Replaced);
        }
    }

    /// Tells the sockets that held `leases` that a revoke-all took them.
    pub(super) fn revoked(&self, user: &UserId, leases: &[Lease]) {
        if !leases.is_empty() {
            self.tell(user, leases.iter().map(|l| &l.stream_id), &Loss::Revoked);
            self.notify(user, leases, &Loss::Revoked);
        }
    }

    /// Sends a notice for each of `leases` that another instance's socket
    /// holds.
    fn notify(&self, user: &UserId, leases: &[Lease], loss: &Loss) {
        for lease in leases {
            if let Some(holder) = &lease.holder {
                notice::send(&self.shared.store, &self.shared.instance, user, &lease.stream_id, holder, loss);
            }
        }
    }

    /// Tells the socket a notice names of its loss, if that socket still
    /// holds the lease; false when it does not.
    pub(super) fn deliver(&self, notice: Notice) -> bool {
        let key = (notice.user, notice.stream);
        let mut held = self.lock();
        let Some(slot) = held.get_mut(&key) else { return false };
        if slot.owner.as_ref().is_none_or(|owner| owner.id != notice.socket) {
            return false;
        }
        let owner = slot.owner.take().expect("checked above");
        if slot.turns == 0 {
            held.remove(&key);
        }
        owner.tell.send(notice.loss).is_ok()
    }

    /// Tells every socket to close with 1001 and release its lease; a socket
    /// that opens from now on closes at once.
    pub(super) fn close_all(&self) {
        self.shared.closing.send_replace(true);
    }

    /// Waits until every socket has finished, its release included.
    pub(super) async fn all_closed(&self) {
        let mut running = self.shared.running.subscribe();
        let _ = running.wait_for(|n| *n == 0).await;
    }

    fn tell<'a>(&self, user: &UserId, streams: impl Iterator<Item = &'a StreamId>, loss: &Loss) {
        let mut held = self.lock();
        if held.is_empty() {
            return;
        }
        for stream in streams {
            let key = (user.clone(), stream.clone());
            let Some(slot) = held.get_mut(&key) else { continue };
            match slot.owner.take() {
                Some(owner) => {
                    let _ = owner.tell.send(loss.clone());
                }
                // Someone holds the turn: perhaps a socket whose acquire
                // made this lease, and which is about to register. Any
                // acquire that starts later meets the tombstone instead.
                None if slot.turns > 0 => slot.pending = Some(loss.clone()),
                None => {}
            }
            if slot.turns == 0 {
                held.remove(&key);
            }
        }
    }

    /// Waits for this instance's turn at `key`'s lease.
    async fn turn(&self, key: Key) -> Turn {
        let lock = {
            let mut held = self.lock();
            let slot = held.entry(key.clone()).or_insert_with(|| Slot {
                owner: None,
                pending: None,
                turn: Arc::new(tokio::sync::Mutex::new(())),
                turns: 0,
            });
            slot.turns += 1;
            slot.turn.clone()
        };
        // Counted before the wait, so that a cancelled wait uncounts itself.
        let mut turn = Turn { sockets: self.clone(), key, _guard: None };
        turn._guard = Some(lock.lock_owned().await);
        turn
    }

    /// A number for a new socket, and its holder token.
    fn number(&self) -> (u64, crate::limiter::Holder) {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        (id, self.shared.instance.holder(id))
    }

    /// Makes socket `id`, which just acquired `turn`'s lease, its owner. An
    /// older socket that owned it is told that it was replaced; a loss
    /// that came during the acquire is told to the new owner at once.
    fn register(&self, turn: &Turn, id: u64) -> oneshot::Receiver<Loss> {
        let (tell, told) = oneshot::channel();
        let mut held = self.lock();
        let slot = held.get_mut(&turn.key).expect("a turn keeps its slot");
        match slot.pending.take() {
            Some(loss) => {
                let _ = tell.send(loss);
            }
            None => {
                if let Some(older) = slot.owner.replace(Owner { id, tell }) {
                    let _ = older.tell.send(Loss::Replaced);
                }
            }
        }
        told
    }

    fn owns(&self, key: &Key, id: u64) -> bool {
        self.lock().get(key).and_then(|slot| slot.owner.as_ref()).is_some_and(|owner| owner.id == id)
    }

    /// The socket `id` no longer holds `key`'s lease, if it still did.
    fn leave(&self, key: &Key, id: u64) {
        let mut held = self.lock();
        if let Some(slot) = held.get_mut(key) {
            if slot.owner.as_ref().is_some_and(|owner| owner.id == id) {
                slot.owner = None;
            }
            if slot.owner.is_none() && slot.turns == 0 {
                held.remove(key);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        // The map stays consistent at every step, so a panic elsewhere
        // leaves nothing half-done behind.
        self.shared.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_closing(&self) -> bool {
        *self.shared.closing.borrow()
    }

    /// Counts a socket as running until the returned value is dropped.
    fn track(&self) -> Running {
        self.shared.running.send_modify(|n| *n += 1);
        Running(self.clone())
    }
}

/// A turn at one lease; the next waiter gets it on drop.
struct Turn {
    sockets: Sockets,
    key: Key,
    _guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut held = self.sockets.lock();
        if let Some(slot) = held.get_mut(&self.key) {
            slot.turns -= 1;
            if slot.turns == 0 && slot.owner.is_none() {
                held.remove(&self.key);
            }
        }
    }
}

/// A socket that shutdown waits for.
struct Running(Sockets);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.shared.running.send_modify(|n| *n -= 1);
    }
}

/// A socket's hold on its lease. Dropping it leaves the registry, so that
/// no path out of a socket leaves an owner behind; only [`release`] gives
/// the lease back.
struct Seat {
    sockets: Sockets,
    key: Key,
    /// This socket's number in the registry.
    id: u64,
    /// The connect's request without its take-over list: renewals evict
    /// nobody by name.
    renew: Acquire,
    /// Told when the lease is lost to an eviction, a revocation or a newer
    /// socket.
    lost: oneshot::Receiver<Loss>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.sockets.leave(&self.key, self.id);
    }
}

/// How a socket starts, decided before the upgrade completes.
enum Start {
    /// The lease is held; `first` is the `granted` message.
    Holding { first: String, seat: Seat },
    /// The acquire was refused.
    Refused(Refusal),
    /// The server is shutting down: close with 1001 at once.
    ShuttingDown,
}

/// Answers a WebSocket route. A page of an origin that
/// `--cors-allowed-origins` does not list gets 403 first. A request that
/// cannot be upgraded, because it is not an upgrade or its subprotocols
/// leave out [`PROTOCOL`], is answered over HTTP with the first check that
/// fails, in the order of every route: authentication (401), the request's
/// validity (400), the caller's rights (403), then the subprotocols (400)
/// and the upgrade itself (426). Any other is upgraded, whatever the
/// acquire answered, so that a browser can read why it failed from the
/// first message.
pub(super) async fn open(
    state: Arc<AppState>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    headers: &HeaderMap,
    source: Source,
    target: Result<(Whose, StreamId), ApiError>,
    query: Result<SocketQuery, ApiError>,
) -> Response {
    if let Err(e) = cors::check_socket_origin(&state.protection.cors_allowed_origins, headers) {
        return e.into_response();
    }
    let offer = Offer::of(headers);
    let upgrade = match (upgrade, offer.speaks) {
        (Ok(upgrade), true) => upgrade,
        (upgrade, speaks) => {
            let e = match (admitted(&state, headers, source, offer.bearers, target, query), upgrade) {
                (Err(e), _) => e,
                (Ok(_), Err(rejection)) if speaks => not_an_upgrade(&rejection),
                (Ok(_), _) => Offer::unspoken(),
            };
            return e.into_response();
        }
    };
    let bearers = offer.bearers;
    // Counted from here, so that shutdown waits for a socket whose
    // upgrade is still under way.
    let running = state.sockets.track();
    let start = match state.sockets.is_closing() {
        true => Start::ShuttingDown,
        false => connect(&state, admitted(&state, headers, source, bearers, target, query)).await,
    };
    // Exactly one of the two callbacks runs; whichever does takes these.
    let pending = Arc::new(Mutex::new(Some((start, running))));
    let failed = (pending.clone(), state.clone());
    let span = tracing::Span::current();
    upgrade
        .protocols([PROTOCOL])
        .read_buffer_size(READ_BUFFER)
        // Each message is written at once: the server sends few and small.
        .write_buffer_size(0)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_failed_upgrade(move |error| {
            let (pending, state) = failed;
            tracing::debug!(%error, "the WebSocket upgrade failed");
            if let Some((Start::Holding { seat, .. }, running)) = take(&pending) {
                // Nobody will hold this lease: give it back.
                tokio::spawn(async move {
                    release(&state, &seat).await;
                    drop(running);
                });
            }
        })
        .on_upgrade(move |ws| {
            async move {
                if let Some((start, _running)) = take(&pending) {
                    run(&state, ws, start).await;
                }
            }
            .instrument(span)
        })
}

fn take<T>(pending: &Mutex<Option<T>>) -> Option<T> {
    pending.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// 426 `upgrade-required`, saying what the route needs.
fn not_an_upgrade(rejection: &WebSocketUpgradeRejection) -> ApiError {
    ApiError::UpgradeRequired(match rejection {
        WebSocketUpgradeRejection::ConnectionNotUpgradable(_) => {
            "this connection cannot become a WebSocket: connect over HTTP/1.1 to `streamcap serve` \
             (an API Gateway HTTP API, and so streamcap-lambda, carries no WebSockets)"
                .to_owned()
        }
        other => format!(
            "this route is a WebSocket: connect with a WebSocket client (a GET with `Connection: Upgrade`, \
             `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key`); {}",
            other.body_text()
        ),
    })
}

/// The subprotocols a request offers (`Sec-WebSocket-Protocol`).
struct Offer {
    /// Whether it offers [`PROTOCOL`], or offers none: either can be
    /// answered, while no WebSocket client accepts an answer without one of
    /// the protocols it offered.
    speaks: bool,
    /// The tokens of the `streamcap.bearer.<token>` subprotocols.
    bearers: Vec<String>,
}

impl Offer {
    fn of(headers: &HeaderMap) -> Self {
        let (mut offered, mut speaks, mut bearers) = (false, false, Vec::new());
        let values = headers.get_all(header::SEC_WEBSOCKET_PROTOCOL).into_iter();
        for protocol in values.flat_map(|v| v.as_bytes().split(|&b| b == b',')) {
            offered = true;
            let protocol = std::str::from_utf8(protocol.trim_ascii()).unwrap_or("");
            if protocol == PROTOCOL {
                speaks = true;
            } else if let Some(token) = protocol.strip_prefix(BEARER_PROTOCOL) {
                bearers.push(token.to_owned());
            }
        }
        Self { speaks: speaks || !offered, bearers }
    }

    /// The 400 for an offer without [`PROTOCOL`].
    fn unspoken() -> ApiError {
        ApiError::BadRequest(format!(
            "the offered subprotocols do not include {PROTOCOL}; offer {PROTOCOL} \
             (with {BEARER_PROTOCOL}<token> to authenticate from a browser), or no subprotocol"
        ))
    }
}

/// The `Authorization` value a socket authenticates with: the header's, or
/// `Bearer <token>` from the one bearer subprotocol. Never both.
pub(super) fn credential(headers: &HeaderMap, bearers: Vec<String>) -> Result<Option<HeaderValue>, ApiError> {
    let header = headers.get(header::AUTHORIZATION);
    match (header, bearers.as_slice()) {
        (None, []) => Ok(None),
        (Some(value), []) => Ok(Some(value.clone())),
        // The token came in a header, so it is a valid header value.
        (None, [token]) => HeaderValue::try_from(format!("Bearer {token}"))
            .map(Some)
            .map_err(|_| ApiError::Unauthorized("malformed bearer subprotocol".into())),
        (None, _) => Err(ApiError::BadRequest(format!("offer one {BEARER_PROTOCOL}<token> subprotocol, not several"))),
        (Some(_), _) => Err(ApiError::BadRequest(format!(
            "send the credential once: in the Authorization header or in a {BEARER_PROTOCOL}<token> subprotocol"
        ))),
    }
}

/// The checks of the `PUT`, in the same order, for a socket's request:
/// its credential (the header's or the bearer subprotocol's) authenticated,
/// its target and query validated and the caller admitted for the user.
fn admitted(
    state: &AppState,
    headers: &HeaderMap,
    source: Source,
    bearers: Vec<String>,
    target: Result<(Whose, StreamId), ApiError>,
    query: Result<SocketQuery, ApiError>,
) -> Result<(UserId, Acquire), ApiError> {
    let credential = credential(headers, bearers)?;
    let caller = authenticate(state, source, credential.as_ref()).map_err(|e| match (e, &credential) {
        // The usual wording names only the header, which a browser
        // cannot send on a WebSocket.
        (ApiError::Unauthorized(_), None) => ApiError::Unauthorized(format!(
            "this socket needs a credential: an Authorization: Bearer header, or the subprotocols \
             {PROTOCOL}, {BEARER_PROTOCOL}<token>"
        )),
        (e, _) => e,
    })?;
    let (whose, stream) = target?;
    let body = query?.into_body();
    acquire_request(state, &caller, whose, stream, body)
}

/// Acquires the lease as the `PUT` would, once [`admitted`], and registers
/// the socket as its owner when it is held.
async fn connect(state: &AppState, admitted: Result<(UserId, Acquire), ApiError>) -> Start {
    let (user, req) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => return Start::Refused(refusal(e.into_response()).await),
    };
    let key = (user.clone(), req.stream_id.clone());
    let (id, holder) = state.sockets.number();
    let req = Acquire { holder: Some(holder), ..req };
    let renew = Acquire { evict: Vec::new(), ..req.clone() };
    let turn = state.sockets.turn(key.clone()).await;
    let answer = acquired(state, user, req).await.unwrap_or_else(IntoResponse::into_response);
    if !answer.status().is_success() {
        return Start::Refused(refusal(answer).await);
    }
    let first = tagged("granted", &body_text(answer).await);
    // Nothing awaits from here on, so a cancelled request cannot leave
    // an owner behind that no socket holds.
    let lost = state.sockets.register(&turn, id);
    drop(turn);
    Start::Holding { first, seat: Seat { sockets: state.sockets.clone(), key, id, renew, lost } }
}

/// A refusal as the socket tells it: a message, then a close.
pub(super) struct Refusal {
    pub(super) message: String,
    pub(super) code: u16,
    /// The close frame's reason: the problem's slug.
    reason: String,
}

/// The refusal that stands for a refusing answer of the `PUT`: 409 is
/// `refused`, 410 `revoked` and any other `error`, each closed with 4000
/// plus the status.
pub(super) async fn refusal(answer: Response) -> Refusal {
    let status = answer.status();
    let retry_after = answer.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut fields: Map<String, Value> = serde_json::from_str(&body_text(answer).await).unwrap_or_default();
    let code = 4000 + status.as_u16();
    let slug = match fields.remove("type") {
        Some(Value::String(uri)) => {
            let slug = uri.strip_prefix(TYPE_BASE).unwrap_or("").to_owned();
            fields.insert("problem_type".into(), Value::String(uri));
            slug
        }
        _ => String::new(),
    };
    if status == StatusCode::GONE {
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let revoked = RevokedMessage {
            reason: text(fields.remove("reason")).unwrap_or_else(|| "revoked".into()),
            by_stream_id: text(fields.remove("by_stream_id")),
        };
        return Refusal { message: message(&SocketMessage::Revoked(revoked)), code, reason: slug };
    }
    if let Some(seconds) = retry_after {
        fields.entry("retry_after_seconds").or_insert(Value::from(seconds));
    }
    let kind = if status == StatusCode::CONFLICT { "refused" } else { "error" };
    Refusal { message: tagged(kind, &Value::Object(fields).to_string()), code, reason: slug }
}

pub(super) async fn body_text(answer: Response) -> String {
    let bytes = axum::body::to_bytes(answer.into_body(), 1 << 20).await.unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `{"type":"<kind>", ...}`: the JSON object `body` with `type` in front.
pub(super) fn tagged(kind: &str, body: &str) -> String {
    let rest = body.trim().strip_prefix('{').unwrap_or("}");
    let comma = if rest.trim_start().starts_with('}') { "" } else { "," };
    format!("{{\"type\":\"{kind}\"{comma}{rest}")
}

fn message(m: &SocketMessage<'_>) -> String {
    serde_json::to_string(m).expect("messages serialize")
}

/// The socket's life, from its first message to its close.
async fn run(state: &AppState, mut ws: WebSocket, start: Start) {
    let mut open = Open::counted();
    open.code = match start {
        Start::ShuttingDown => {
            close_with(&mut ws, close::GOING_AWAY, "server shutting down").await;
            close::GOING_AWAY
        }
        Start::Refused(refusal) => refuse(&mut ws, refusal).await,
        Start::Holding { first, seat } => hold(state, &mut ws, first, seat).await,
    };
    tracing::debug!(code = open.code, "socket closed");
}

/// An open socket in the metrics, until dropped with the code it ended
/// with.
struct Open {
    code: u16,
}

impl Open {
    fn counted() -> Self {
        metrics::websocket_opened();
        Self { code: close::ABNORMAL }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::websocket_closed(self.code);
    }
}

/// Holds the lease while the socket is open: renews it every ttl/3 while
/// the client answers pings, and releases it when the client leaves.
async fn hold(state: &AppState, ws: &mut WebSocket, first: String, mut seat: Seat) -> u16 {
    let ttl = Duration::from_secs(seat.renew.ttl.as_secs().into());
    let period = (ttl / 3).max(Duration::from_millis(1));
    let mut closing = state.sockets.shared.closing.subscribe();
    if !(send(ws, Message::text(first)).await && send(ws, ping()).await) {
        release(state, &seat).await;
        return close::ABNORMAL;
    }
    let mut ticks = interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Whether the client answered (a pong or any message) since the last
    // ping, and when it last did.
    let mut answered = false;
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            biased;
            () = shutting_down(&mut closing) => {
                // Released first, so that a client reconnecting elsewhere
                // at the 1001 finds the seat free rather than losing it to
                // this release.
                release(state, &seat).await;
                close_with(ws, close::GOING_AWAY, "server shutting down").await;
                return close::GOING_AWAY;
            }
            loss = &mut seat.lost => {
                revoke(ws, &seat.key.1, loss.unwrap_or(Loss::Replaced)).await;
                return close::REVOKED;
            }
            read = ws.recv() => match read {
                Some(Ok(Message::Close(frame))) => {
                    // Released before the close is answered, so that the
                    // client finds the seat free once its close completes.
                    release(state, &seat).await;
                    let _ = timeout(CLOSE_TIMEOUT, ws.recv()).await;
                    return match frame.map(|f| f.code) {
                        None => close::NO_STATUS,
                        Some(code @ (close::NORMAL | close::GOING_AWAY)) => code,
                        Some(_) => close::OTHER,
                    };
                }
                Some(Ok(_)) => {
                    answered = true;
                    heard = Instant::now();
                }
                Some(Err(_)) | None => {
                    release(state, &seat).await;
                    return close::ABNORMAL;
                }
            },
            _ = ticks.tick() => {
                if heard.elapsed() >= ttl {
                    // Silent for a whole TTL: drop it without a word, and
                    // let its lease expire as any unrenewed lease does.
                    return close::ABNORMAL;
                }
                if answered && let Some(code) = renew(state, ws, &seat).await {
                    return code;
                }
                answered = false;
                if !send(ws, ping()).await {
                    release(state, &seat).await;
                    return close::ABNORMAL;
                }
            }
        }
    }
}

/// Renews the socket's lease and says so; `Some(code)` when the socket
/// closed instead. A store error is retried at the next tick.
async fn renew(state: &AppState, ws: &mut WebSocket, seat: &Seat) -> Option<u16> {
    let (user, stream) = &seat.key;
    match acquire_lease(state, user, seat.renew.clone()).await {
        // Granted: the lease had gone (released elsewhere, or expired
        // while the store was down) and there was room to take it again.
        Ok(Decision::Renewed(grant) | Decision::Granted(grant)) => {
            let renewed =
                RenewedMessage { expires_at: rfc3339(grant.lease.expires_at), active_streams: grant.active_streams };
            if send(ws, Message::text(message(&SocketMessage::Renewed(renewed)))).await {
                return None;
            }
            release(state, seat).await;
            Some(close::ABNORMAL)
        }
        // The lease had gone and its seat was taken meanwhile.
        Ok(Decision::Denied(denial)) => {
            let answer = ApiError::LimitReached(user.clone(), denial).into_response();
            Some(refuse(ws, refusal(answer).await).await)
        }
        // A socket's renewals never say they hold the lease; were one to,
        // it would be answered as the `PUT` is.
        Ok(Decision::NotHeld) => {
            let answer = ApiError::NotHeld(respond::NOT_HELD).into_response();
            Some(refuse(ws, refusal(answer).await).await)
        }
        // Evicted or revoked, here or on another instance.
        Ok(Decision::Gone(tombstone)) => {
            let loss = match tombstone.reason {
                RevokeReason::EvictedBy(by) => Loss::Evicted(by),
                RevokeReason::Revoked => Loss::Revoked,
            };
            revoke(ws, stream, loss).await;
            Some(close::REVOKED)
        }
        Err(e) => {
            tracing::warn!(error = %e, "renewing a socket's lease failed; retrying at the next tick");
            None
        }
    }
}

/// Tells the client why it holds no lease, and closes; returns the code.
async fn refuse(ws: &mut WebSocket, refusal: Refusal) -> u16 {
    if send(ws, Message::text(refusal.message)).await {
        close_with(ws, refusal.code, &refusal.reason).await;
    }
    refusal.code
}

/// Tells the client why its stream must stop, and closes with 4410.
async fn revoke(ws: &mut WebSocket, stream: &StreamId, loss: Loss) {
    let (reason, by) = match loss {
        Loss::Evicted(by) => ("evicted_by_new_stream", Some(by.as_str().to_owned())),
        Loss::Revoked => ("revoked", None),
        Loss::Replaced => ("replaced", Some(stream.as_str().to_owned())),
    };
    let revoked = RevokedMessage { reason: reason.to_owned(), by_stream_id: by };
    if send(ws, Message::text(message(&SocketMessage::Revoked(revoked)))).await {
        close_with(ws, close::REVOKED, "stream-revoked").await;
    }
}

/// Releases the socket's lease, unless it was lost to an eviction, a
/// revocation or a newer socket: here, the registry knows; and the store
/// frees it only while this socket's token is its holder.
async fn release(state: &AppState, seat: &Seat) {
    let sockets = &state.sockets;
    let _turn = sockets.turn(seat.key.clone()).await;
    if sockets.owns(&seat.key, seat.id)
        && let Some(holder) = &seat.renew.holder
    {
        let (user, stream) = &seat.key;
        if let Err(e) = state.store.release_held(user, stream.clone(), holder.clone()).await {
            tracing::warn!(error = %e, "releasing a socket's lease failed; it expires on its own");
        }
    }
    sockets.leave(&seat.key, seat.id);
}

async fn shutting_down(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

fn ping() -> Message {
    Message::Ping(Bytes::new())
}

/// Sends `message`; false when the client is gone or does not read.
async fn send(ws: &mut WebSocket, message: Message) -> bool {
    matches!(timeout(SEND_TIMEOUT, ws.send(message)).await, Ok(Ok(())))
}

/// Sends a close frame and waits, briefly, for the client's.
async fn close_with(ws: &mut WebSocket, code: u16, reason: &str) {
    if !send(ws, Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await {
        return;
    }
    let _ = timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(message)) = ws.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode, header};
    use serde_json::Value;
    use tower::ServiceExt;

    use super::{InstanceId, Loss, Notice, Sockets, tagged};
    use crate::auth::Authenticator;
    use crate::clock::SystemClock;
    use crate::http::{AppState, app};
    use crate::limiter::{Acquire, Limit, StreamId, Timestamp, Ttl, UserId};
    use crate::policy::{Policy, Protection};
    use crate::store::{Store, StoreConfig, StoreKind};

    /// A request that comes without a connection to upgrade, as every
    /// request does through API Gateway and streamcap-lambda, gets a 426
    /// that says so, even with every WebSocket header in place.
    #[tokio::test]
    async fn without_a_connection_to_upgrade_the_answer_is_426() {
        let config = StoreConfig::new(StoreKind::Memory, std::env::temp_dir());
        let store = Store::open(&config, Arc::new(SystemClock)).await.unwrap();
        let policy = Policy::uniform(Limit::new(2).unwrap(), Ttl::from_secs(60).unwrap());
        let state = AppState::new(store, policy, Arc::new(Authenticator::none()), Protection::unlimited());
        let req = Request::get("/v1/users/alice/streams/tv/socket")
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .body(Body::empty())
            .unwrap();
        let res = app(state).oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(res.headers()[header::UPGRADE], "websocket");
        let body: Value = serde_json::from_slice(&to_bytes(res.into_body(), 1 << 16).await.unwrap()).unwrap();
        assert_eq!(body["type"], "https://streamcap.dev/problems/upgrade-required");
        assert!(body["detail"].as_str().unwrap().contains("streamcap-lambda"), "{body}");
    }

    async fn registry() -> Sockets {
        let config = StoreConfig::new(StoreKind::Memory, std::env::temp_dir());
        let store = Store::open(&config, Arc::new(SystemClock)).await.unwrap();
        Sockets::new(InstanceId::generate(), store)
    }

    #[tokio::test]
    async fn the_registry_tells_owners_and_acquirers_of_their_losses() {
        let sockets = registry().await;
        let key = (UserId::new("alice").unwrap(), StreamId::new("tv").unwrap());
        let lease = [Acquire::for_test("tv", 1).into_lease(Timestamp::from_millis(0))];
        let register = || async {
            let (id, _) = sockets.number();
            let turn = sockets.turn(key.clone()).await;
            (id, sockets.register(&turn, id))
        };
        let (first, mut first_lost) = register().await;
        assert!(sockets.owns(&key, first));
        // A newer socket for the stream replaces the older one.
        let (second, mut second_lost) = register().await;
        assert!(matches!(first_lost.try_recv(), Ok(Loss::Replaced)));
        assert!(!sockets.owns(&key, first) && sockets.owns(&key, second));
        // A revocation reaches the owner, which owns nothing after it.
        sockets.revoked(&key.0, &lease);
        assert!(matches!(second_lost.try_recv(), Ok(Loss::Revoked)));
        assert!(!sockets.owns(&key, second));
        // A loss during an acquire reaches the socket as it registers.
        let (third, _) = sockets.number();
        let turn = sockets.turn(key.clone()).await;
        sockets.revoked(&key.0, &lease);
        let mut third_lost = sockets.register(&turn, third);
        drop(turn);
        assert!(matches!(third_lost.try_recv(), Ok(Loss::Revoked)));
        assert!(!sockets.owns(&key, third));
        // Nothing is left behind.
        sockets.leave(&key, third);
        assert!(sockets.lock().is_empty());
    }

    /// A notice from another instance reaches the socket it names, and only
    /// while that socket holds the lease.
    #[tokio::test]
    async fn a_notice_reaches_only_the_socket_it_names() {
        let sockets = registry().await;
        let key = (UserId::new("alice").unwrap(), StreamId::new("tv").unwrap());
        let notice = |socket, loss| Notice { user: key.0.clone(), stream: key.1.clone(), socket, loss };
        let (older, _) = sockets.number();
        let turn = sockets.turn(key.clone()).await;
        let _older_lost = sockets.register(&turn, older);
        drop(turn);
        let (newer, _) = sockets.number();
        let turn = sockets.turn(key.clone()).await;
        let mut newer_lost = sockets.register(&turn, newer);
        drop(turn);
        // A notice for the replaced socket finds nobody.
        assert!(!sockets.deliver(notice(older, Loss::Revoked)));
        assert!(newer_lost.try_recv().is_err());
        let by = StreamId::new("phone").unwrap();
        assert!(sockets.deliver(notice(newer, Loss::Evicted(by.clone()))));
        assert!(matches!(newer_lost.try_recv(), Ok(Loss::Evicted(s)) if s == by));
        assert!(!sockets.owns(&key, newer));
        assert!(!sockets.deliver(notice(newer, Loss::Revoked)), "told once");
        assert!(sockets.lock().is_empty());
    }

    #[test]
    fn tagged_puts_the_type_first() {
        assert_eq!(tagged("granted", r#"{"a":1}"#), r#"{"type":"granted","a":1}"#);
        assert_eq!(tagged("error", "{}"), r#"{"type":"error"}"#);
    }
}
