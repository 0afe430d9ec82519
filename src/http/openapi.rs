//! The OpenAPI 3.1 document, generated from the handlers' annotations by
//! utoipa. The router and the document are built from the same
//! `routes!` calls in `app`, so a route cannot be served undocumented.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::dto::SocketMessage;

/// Everything about the document that is not a route.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "streamcap",
        description = "Concurrent-stream limits for video platforms. A playback stream holds a lease: \
acquire it with PUT when playback starts, renew it with the same PUT every ttl/3 or so, release it with \
DELETE when playback stops. At most `limit` leases per user are live at once. Or hold it over a WebSocket \
(`GET .../streams/{stream_id}/socket`): the lease is acquired at connect, renewed by the server while the \
socket stays open, and released when it closes; the server's messages are `SocketMessage`.\n\n\
Every error is `application/problem+json` (RFC 9457) whose `type` is \
`https://streamcap.dev/problems/<slug>`:\n\n\
| status | slug | when |\n|---|---|---|\n\
| 400 | `invalid-request` | an id, query or body field is malformed, or the plan is unknown |\n\
| 401 | `unauthorized` | no credential, or one that does not verify (with `WWW-Authenticate: Bearer`) |\n\
| 403 | `forbidden` | the credential may not act for this user, set a plan, or use an admin route |\n\
| 404 | `not-found` | no such route |\n\
| 405 | `method-not-allowed` | the route does not take that method (with `Allow`) |\n\
| 408 | `request-timeout` | the request took longer than the configured timeout |\n\
| 409 | `stream-limit-reached` | the account, or the scope of a configured rule, is full; carries `limit` and `active_streams`, and `rule` and `rule_limit` when a rule refused |\n\
| 410 | `stream-revoked` | the stream was evicted or revoked and must stop; carries `reason`, `by_stream_id` |\n\
| 413 | `payload-too-large` | the body is over 16 KiB |\n\
| 415 | `unsupported-media-type` | a non-empty body that is not JSON |\n\
| 426 | `upgrade-required` | a WebSocket route asked without a WebSocket upgrade (with `Upgrade: websocket`) |\n\
| 429 | `rate-limited` | a per-user or per-credential bucket is empty, or the source address failed authentication too often (with `Retry-After`) |\n\
| 431 | `headers-too-large` | the request headers are over 16 KiB |\n\
| 500 | `internal-error` | a bug; logged, never detailed |\n\
| 503 | `store-unavailable`, `overloaded`, `service-unavailable` | the store did not answer, or too many requests are in flight (with `Retry-After` for the store) |\n\n\
Authentication: players send a JWT as a Bearer token and may act only for the user in its user claim \
(`sub` by default). Services send an API key as a Bearer token. Scopes: `streams:service` acts for any \
user and may set `plan`; `streams:admin` may also change overrides and revoke one or all streams, and \
each such change is written to the audit log. On a \
WebSocket route, a browser sends its token as the subprotocol `streamcap.bearer.<token>`. `/livez`, \
`/readyz`, `/metrics` and `/openapi.json` need no credential. With auth mode `none` and no API keys, \
no credential is needed anywhere (loopback only unless `--insecure-no-auth`).",
        license(name = "Apache-2.0"),
    ),
    components(schemas(SocketMessage)),
    modifiers(&Security),
    tags(
        (name = "streams", description = "Leases: acquire, renew, release, list, revoke"),
        (name = "limits", description = "Per-user overrides and effective limits"),
        (name = "me", description = "The same stream routes for the user of a player token"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A player's JWT: HS256, RS256, ES256 or EdDSA, as configured."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A service or admin API key, sent as a Bearer token."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "bearer_subprotocol",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Sec-WebSocket-Protocol",
                "WebSocket routes only, for browsers, which cannot set Authorization on a WebSocket: offer \
                 the subprotocols `streamcap.v1, streamcap.bearer.<token>`, where the token is what would follow \
                 `Bearer `. The server answers `streamcap.v1` and never echoes the token.",
            ))),
        );
    }
}
