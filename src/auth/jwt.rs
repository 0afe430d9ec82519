//! JWT verification per RFC 8725: an explicit algorithm allowlist, one key
//! family per algorithm (no HS/RS confusion), `exp` required, `nbf`
//! honoured, a small leeway, `iss` and `aud` checked when configured.

use std::collections::BTreeSet;
use std::fmt;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};

use super::{AuthError, Caller};
use crate::limiter::UserId;

/// Clock skew tolerated on `exp` and `nbf`, in seconds (RFC 8725 asks for
/// little; we allow at most 60).
pub const LEEWAY_SECONDS: u64 = 30;

/// The algorithms streamcap verifies.
pub const SUPPORTED: [Algorithm; 4] = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Key material and checks, as read from configuration.
#[derive(Clone, Default)]
pub struct JwtConfig {
    /// HS256 secret.
    pub secret: Option<Vec<u8>>,
    /// A PEM public key: RSA, EC P-256 or Ed25519.
    pub public_key_pem: Option<Vec<u8>>,
    /// A JWKS document.
    pub jwks_json: Option<String>,
    /// The allowlist; `None` allows what the configured keys allow.
    pub algorithms: Option<Vec<Algorithm>>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub user_claim: String,
    pub plan_claim: String,
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_pem", &self.public_key_pem.is_some())
            .field("jwks", &self.jwks_json.is_some())
            .field("algorithms", &self.algorithms)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("user_claim", &self.user_claim)
            .field("plan_claim", &self.plan_claim)
            .finish()
    }
}

/// Verifies tokens against the configured keys.
pub struct JwtVerifier {
    hmac: Option<DecodingKey>,
    /// The PEM key and the one algorithm it verifies.
    public: Option<(DecodingKey, Algorithm)>,
    /// JWKS keys: (kid, key, algorithm).
    jwks: Vec<(Option<String>, DecodingKey, Algorithm)>,
    algorithms: Vec<Algorithm>,
    issuer: Option<String>,
    audience: Option<String>,
    user_claim: String,
    plan_claim: String,
}

pub fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

pub fn parse_algorithm(s: &str) -> Option<Algorithm> {
    SUPPORTED.into_iter().find(|a| algorithm_name(*a) == s)
}

impl JwtVerifier {
    /// Loads keys and fixes the allowlist. Errors are for operators.
    pub fn new(cfg: JwtConfig) -> Result<Self, String> {
        let hmac = match &cfg.secret {
            Some(s) if s.len() < 32 => return Err("the HS256 secret must be at least 32 bytes".into()),
            Some(s) => Some(DecodingKey::from_secret(s)),
            None => None,
        };
        let public = cfg.public_key_pem.as_deref().map(public_key).transpose()?;
        let jwks = match &cfg.jwks_json {
            Some(text) => jwks(text)?,
            None => Vec::new(),
        };
        let mut available: Vec<Algorithm> = Vec::new();
        if hmac.is_some() {
            available.push(Algorithm::HS256);
        }
        available.extend(public.iter().map(|(_, a)| *a));
        available.extend(jwks.iter().map(|(_, _, a)| *a));
        if available.is_empty() {
            return Err("auth mode jwt needs a key: --jwt-secret-file, --jwt-public-key-file or --jwks-file".into());
        }
        let algorithms = match cfg.algorithms {
            None => {
                available.sort_by_key(|a| algorithm_name(*a));
                available.dedup();
                available
            }
            Some(list) => {
                for a in &list {
                    if !available.contains(a) {
                        return Err(format!(
                            "--jwt-algorithms allows {} but no configured key uses it",
                            algorithm_name(*a)
                        ));
                    }
                }
                list
            }
        };
        Ok(Self {
            hmac,
            public,
            jwks,
            algorithms,
            issuer: cfg.issuer,
            audience: cfg.audience,
            user_claim: cfg.user_claim,
            plan_claim: cfg.plan_claim,
        })
    }

    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let invalid = |m: &str| AuthError::Invalid(m.to_owned());
        let header = decode_header(token).map_err(|_| invalid("malformed token or unsupported algorithm"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!("algorithm {:?} is not allowed", header.alg)));
        }
        let key = self.key_for(header.alg, header.kid.as_deref()).ok_or_else(|| invalid("no key for this token"))?;

        let mut v = Validation::new(header.alg);
        v.leeway = LEEWAY_SECONDS;
        v.validate_nbf = true;
        // `exp` always; `iss` and `aud` must be present when they are checked.
        let mut required = vec!["exp"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        let claims = decode::<Map<String, Value>>(token, key, &v)
            .map_err(|e| {
                AuthError::Invalid(
                    match e.kind() {
                        ErrorKind::ExpiredSignature => "the token has expired",
                        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                        ErrorKind::InvalidIssuer => "wrong issuer (iss)",
                        ErrorKind::InvalidAudience => "wrong audience (aud)",
                        ErrorKind::InvalidSignature => "bad signature",
                        ErrorKind::MissingRequiredClaim(_) => "a required claim (exp, iss or aud) is missing",
                        ErrorKind::InvalidAlgorithm => "the algorithm does not match the key",
                        _ => "malformed token",
                    }
                    .to_owned(),
                )
            })?
            .claims;

        let user = claims
            .get(&self.user_claim)
            .and_then(Value::as_str)
            .and_then(|s| UserId::new(s).ok())
            .ok_or_else(|| AuthError::Invalid(format!("missing or invalid `{}` claim", self.user_claim)))?;
        let plan = match claims.get(&self.plan_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(p.clone()),
            Some(_) => return Err(AuthError::Invalid(format!("the `{}` claim must be a string", self.plan_claim))),
        };
        let scopes: BTreeSet<String> = claims
            .get("scope")
            .and_then(Value::as_str)
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Caller::User { user, plan, scopes })
    }

    /// The key for `alg`: HS256 only ever uses the secret, the asymmetric
    /// algorithms only ever use public keys, so no token can make us verify
    /// with the wrong kind of key.
    fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Option<&DecodingKey> {
        if alg == Algorithm::HS256 {
            return self.hmac.as_ref();
        }
        let from_jwks = || {
            let mut candidates = self.jwks.iter().filter(|(_, _, a)| *a == alg);
            match kid {
                Some(kid) => candidates.find(|(k, _, _)| k.as_deref() == Some(kid)).map(|(_, key, _)| key),
                None => {
                    let first = candidates.next();
                    // Without a kid, only an unambiguous set is usable.
                    if candidates.next().is_some() { None } else { first.map(|(_, key, _)| key) }
                }
            }
        };
        match &self.public {
            Some((key, a)) if *a == alg && (kid.is_none() || self.jwks.is_empty()) => Some(key),
            _ => from_jwks(),
        }
    }
}

fn public_key(pem: &[u8]) -> Result<(DecodingKey, Algorithm), String> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((k, Algorithm::RS256));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((k, Algorithm::ES256));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Ok((k, Algorithm::EdDSA));
    }
    Err("the public key file is not an RSA, EC P-256 or Ed25519 public key in PEM".into())
}

fn jwks(text: &str) -> Result<Vec<(Option<String>, DecodingKey, Algorithm)>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("the JWKS file is not valid: {e}"))?;
    let mut out = Vec::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::RS256), _) | (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (Some(KeyAlgorithm::ES256), _) => Algorithm::ES256,
            (None, AlgorithmParameters::EllipticCurve(p)) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
            (Some(KeyAlgorithm::EdDSA), _) | (None, AlgorithmParameters::OctetKeyPair(_)) => Algorithm::EdDSA,
            _ => {
                return Err(format!(
                    "JWKS key {} uses an unsupported algorithm (RS256, ES256 or EdDSA)",
                    kid.as_deref().unwrap_or("without kid")
                ));
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key {}: {e}", kid.as_deref().unwrap_or("?")))?;
        out.push((kid, key, alg));
    }
    if out.is_empty() {
        return Err("the JWKS file has no keys".into());
    }
    Ok(out)
}
