//! Who is calling, and what they may do.
//!
//! [`Authenticator`] turns an `Authorization: Bearer …` header into a
//! [`Caller`]: a player's JWT becomes [`Caller::User`], an API key becomes
//! [`Caller::Service`]. The HTTP layer asks the caller for permission before
//! every store call. Secrets (HMAC keys, API keys, tokens) never reach logs,
//! errors or `Debug` output: only key *names* and SHA-256 digests are kept.

use std::collections::BTreeSet;
use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::limiter::UserId;

mod jwt;

pub use jwt::{JwtConfig, JwtVerifier, LEEWAY_SECONDS, algorithm_name, parse_algorithm as jwt_algorithm};

/// How players authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// No player tokens. Without API keys, nobody authenticates at all.
    None,
    /// Players send a JWT.
    Jwt,
}

/// What an API key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyScope {
    /// Act for any user, and choose the plan.
    Service,
    /// Everything a service may, plus overrides and revoke-all.
    Admin,
}

/// One configured API key. Only its SHA-256 digest is known.
#[derive(Clone)]
pub struct ApiKey {
    pub name: String,
    pub sha256: [u8; 32],
    pub scope: KeyScope,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey").field("name", &self.name).field("scope", &self.scope).finish_non_exhaustive()
    }
}

/// The authenticated caller of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No authentication is configured (mode `none`, no API keys).
    Anonymous,
    /// A player, from a verified JWT.
    User { user: UserId, plan: Option<String>, scopes: BTreeSet<String> },
    /// A trusted backend or operator, from an API key.
    Service { name: String, scope: KeyScope },
}

/// Scope that lets a token act for any user and choose the plan.
pub const SCOPE_SERVICE: &str = "streams:service";
/// Scope that additionally allows overrides and revoke-all.
pub const SCOPE_ADMIN: &str = "streams:admin";

impl Caller {
    /// May act for any user and choose the plan.
    pub fn is_service(&self) -> bool {
        match self {
            Caller::Anonymous | Caller::Service { .. } => true,
            Caller::User { scopes, .. } => scopes.contains(SCOPE_SERVICE) || scopes.contains(SCOPE_ADMIN),
        }
    }

    /// May change overrides and revoke all of a user's streams.
    pub fn is_admin(&self) -> bool {
        match self {
            Caller::Anonymous => true,
            Caller::Service { scope, .. } => *scope == KeyScope::Admin,
            Caller::User { scopes, .. } => scopes.contains(SCOPE_ADMIN),
        }
    }

    /// May read and change `user`'s streams.
    pub fn may_act_for(&self, user: &UserId) -> bool {
        self.is_service() || matches!(self, Caller::User { user: me, .. } if me == user)
    }

    /// The user a token speaks for, if any (for `/v1/me`).
    pub fn own_user(&self) -> Option<&UserId> {
        match self {
            Caller::User { user, .. } => Some(user),
            _ => None,
        }
    }

    /// A stable, secret-free key for per-credential rate limits.
    pub fn credential_key(&self) -> Option<String> {
        match self {
            Caller::Anonymous => None,
            Caller::User { user, .. } => Some(format!("user:{user}")),
            Caller::Service { name, .. } => Some(format!("key:{name}")),
        }
    }
}

/// Why a request was not authenticated. The text is safe to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this request needs an Authorization: Bearer credential")]
    Missing,
    #[error("the credential is not valid: {0}")]
    Invalid(String),
}

/// Verifies credentials. Cheap to share behind an `Arc`.
pub struct Authenticator {
    mode: AuthMode,
    jwt: Option<JwtVerifier>,
    api_keys: Vec<ApiKey>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("jwt", &self.jwt.is_some())
            .field("api_keys", &self.api_keys)
            .finish()
    }
}

impl Authenticator {
    /// `jwt` must be `Some` exactly when `mode` is `Jwt`.
    pub fn new(mode: AuthMode, jwt: Option<JwtVerifier>, api_keys: Vec<ApiKey>) -> Self {
        Self { mode, jwt, api_keys }
    }

    /// Open access: what tests and loopback-only setups use.
    pub fn none() -> Self {
        Self::new(AuthMode::None, None, Vec::new())
    }

    /// True when requests without any credential are let in.
    pub fn is_open(&self) -> bool {
        self.mode == AuthMode::None && self.api_keys.is_empty()
    }

    /// Authenticates the value of an `Authorization` header, if any.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        let Some(header) = authorization else {
            return if self.is_open() { Ok(Caller::Anonymous) } else { Err(AuthError::Missing) };
        };
        let token = bearer(header).ok_or_else(|| AuthError::Invalid("expected the Bearer scheme".into()))?;
        if let Some(key) = self.api_key(token) {
            return Ok(Caller::Service { name: key.name.clone(), scope: key.scope });
        }
        match &self.jwt {
            Some(jwt) if token.split('.').count() == 3 => jwt.verify(token),
            Some(_) => Err(AuthError::Invalid("not a known API key or a JWT".into())),
            None if self.is_open() => Ok(Caller::Anonymous),
            None => Err(AuthError::Invalid("not a known API key".into())),
        }
    }

    /// Finds the key whose digest matches, comparing every digest in
    /// constant time so that timing reveals nothing about near misses.
    fn api_key(&self, presented: &str) -> Option<&ApiKey> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.api_keys {
            if bool::from(key.sha256.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found
    }
}

fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Parses the lowercase or uppercase hex of a SHA-256 digest.
pub fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str, scope: KeyScope) -> ApiKey {
        ApiKey { name: format!("{scope:?}"), sha256: Sha256::digest(secret.as_bytes()).into(), scope }
    }

    #[test]
    fn api_keys_match_by_digest_and_scope() {
        let auth = Authenticator::new(
            AuthMode::None,
            None,
            vec![key("svc-secret", KeyScope::Service), key("adm-secret", KeyScope::Admin)],
        );
        let svc = auth.authenticate(Some("Bearer svc-secret")).unwrap();
        assert!(svc.is_service() && !svc.is_admin());
        assert!(auth.authenticate(Some("bearer adm-secret")).unwrap().is_admin());
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        assert!(matches!(auth.authenticate(Some("Bearer nope")), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.authenticate(Some("Basic c3ZjLXNlY3JldA==")), Err(AuthError::Invalid(_))));
        assert!(!format!("{auth:?}").contains("secret"));
    }

    #[test]
    fn users_act_only_for_themselves_unless_scoped() {
        let alice = UserId::new("alice").unwrap();
        let bob = UserId::new("bob").unwrap();
        let user = |scopes: &[&str]| Caller::User {
            user: alice.clone(),
            plan: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        };
        assert!(user(&[]).may_act_for(&alice) && !user(&[]).may_act_for(&bob));
        assert!(!user(&[]).is_service() && !user(&[]).is_admin());
        assert!(user(&[SCOPE_SERVICE]).may_act_for(&bob) && !user(&[SCOPE_SERVICE]).is_admin());
        assert!(user(&[SCOPE_ADMIN]).is_admin() && user(&[SCOPE_ADMIN]).is_service());
    }

    #[test]
    fn sha256_hex_parses_strictly() {
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(parse_sha256_hex(hex).unwrap(), <[u8; 32]>::from(Sha256::digest(b"test")));
        assert_eq!(parse_sha256_hex(&hex.to_uppercase()), parse_sha256_hex(hex));
        assert!(parse_sha256_hex(&hex[1..]).is_none());
        assert!(parse_sha256_hex(&hex.replace('f', "g")).is_none());
    }
}
