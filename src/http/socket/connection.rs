//! One socket's life: the upgrade (checked as the `PUT` is, in the same
//! order), the acquire and its first message, the renewal loop that
//! renews every ttl/3 while the client answers pings, the losses the
//! registry tells it of, and the close that releases the lease.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tracing::Instrument;

use super::registry::{Key, Sockets};
use super::{BEARER_PROTOCOL, PROTOCOL, Refusal, body_text, close, credential, message, refusal, tagged};
use crate::http::access::{Whose, authenticate};
use crate::http::acquire::{acquire_lease, acquire_request, acquired};
use crate::http::dto::{RenewedMessage, RevokedMessage, SocketMessage, SocketQuery, rfc3339};
use crate::http::notice::Loss;
use crate::http::problem::ApiError;
use crate::http::source::Source;
use crate::http::{AppState, MAX_BODY_BYTES, cors, respond};
use crate::limiter::{Acquire, Decision, RevokeReason, StreamId, UserId};
use crate::metrics;

/// The longest a send may wait for a client that does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest the server waits for the client's half of a close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Client messages are ignored; a longer one ends the socket.
const MAX_CLIENT_MESSAGE: usize = MAX_BODY_BYTES;

/// The read buffer each socket allocates up front. Clients send little
/// more than pongs, and the library's default (128 KiB) would cost that
/// much memory per open socket.
const READ_BUFFER: usize = 4 * 1024;

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
pub(in crate::http) async fn open(
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
    let mut closing = state.sockets.closing();
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

    use crate::auth::Authenticator;
    use crate::clock::SystemClock;
    use crate::http::{AppState, app};
    use crate::limiter::{Limit, Ttl};
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
}
