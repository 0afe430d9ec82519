//! TLS to Redis: what a `rediss://` connection trusts, and how a failed
//! handshake reads.
//!
//! rustls does the TLS, with ring as its crypto provider. A connection
//! checks the server's certificate against the system's roots, read once at
//! start, and the certificates of `--redis-ca-file`; `--redis-tls-insecure`
//! checks nothing. The redis crate takes the roots as one PEM bundle, and
//! with a bundle it trusts nothing else, so the system's roots go into the
//! bundle too.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use redis::cluster::ClusterClientBuilder;
use redis::{RedisError, TlsCertificates, TlsMode};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::store::RedisTls;

/// The certificates of a `--redis-ca-file`, each checked as a trust anchor
/// (DER). The error is one line that names the file.
pub fn read_ca_file(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let at = format!("--redis-ca-file {}", path.display());
    let pem = std::fs::read(path).map_err(|e| format!("{at}: cannot read it: {e}"))?;
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{at}: not a PEM file of CA certificates: {e}"))?;
        RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| format!("{at}: certificate {} cannot be a trust anchor: {e}", certs.len() + 1))?;
        certs.push(cert.to_vec());
    }
    if certs.is_empty() {
        return Err(format!("{at}: not a PEM file of CA certificates (no BEGIN CERTIFICATE block)"));
    }
    Ok(certs)
}

/// How connections to the configured URLs are secured. Built once per
/// backend: the system's roots are read here, not at every reconnection.
pub(super) enum Trust {
    /// `redis://` URLs.
    Plain,
    /// `rediss://` URLs, whose certificates are checked against these roots.
    Verify(TlsCertificates),
    /// `rediss://` URLs with `--redis-tls-insecure`.
    Insecure,
}

impl Trust {
    /// Config has checked that the URLs are all `rediss://` or all not,
    /// and that TLS settings come only with `rediss://`.
    pub(super) fn new(urls: &[String], tls: &RedisTls) -> Trust {
        if !urls.iter().any(|u| u.starts_with("rediss://")) {
            return Trust::Plain;
        }
        // ring, whichever other provider the build also contains (the AWS
        // SDK brings aws-lc-rs along); the first installed stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if tls.insecure {
            tracing::warn!(
                "!!! INSECURE: TLS to redis WITHOUT CERTIFICATE VERIFICATION (--redis-tls-insecure). \
                 Anyone on the network path can pose as Redis and read or change every lease. For tests only."
            );
            return Trust::Insecure;
        }
        let system = system_roots();
        let extra: &[Vec<u8>] = tls.ca.as_ref().map_or(&[], |(_, certs)| certs);
        if system.is_empty() && extra.is_empty() {
            tracing::warn!(
                "no CA certificates to check redis's against: install the system's (ca-certificates) \
                 or give --redis-ca-file"
            );
        }
        tracing::info!(
            system_roots = system.len(),
            ca_file = tls.ca.as_ref().map(|(path, _)| path.display().to_string()),
            ca_file_certificates = extra.len(),
            "redis over TLS"
        );
        let ders = system.iter().map(|c| c.as_ref()).chain(extra.iter().map(Vec::as_slice));
        Trust::Verify(TlsCertificates { client_tls: None, root_cert: Some(pem(ders)) })
    }

    /// A standalone client for `url`.
    pub(super) fn client(&self, url: &str) -> Result<redis::Client, RedisError> {
        match self {
            Trust::Plain => redis::Client::open(url),
            Trust::Verify(certs) => redis::Client::build_with_tls(url, certs.clone()),
            // Config refuses a URL fragment, so this is the only one.
            Trust::Insecure => redis::Client::open(format!("{url}#insecure")),
        }
    }

    /// A standalone client for `url` that speaks RESP3, which subscriptions
    /// over a multiplexed connection need.
    pub(super) fn resp3_client(&self, url: &str) -> Result<redis::Client, RedisError> {
        let info = self.client(url)?.get_connection_info().clone();
        let settings = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
        redis::Client::open(info.set_redis_settings(settings))
    }

    /// The cluster client's TLS, for the seeds and every node it learns of.
    pub(super) fn cluster(&self, builder: ClusterClientBuilder) -> ClusterClientBuilder {
        match self {
            Trust::Plain => builder,
            Trust::Verify(certs) => builder.certs(certs.clone()),
            Trust::Insecure => builder.tls(TlsMode::Insecure),
        }
    }
}

/// The system's roots that rustls accepts as trust anchors. A root that
/// cannot be read is skipped with a warning, so that one bad file among
/// the system's certificates does not stop every connection.
fn system_roots() -> Vec<CertificateDer<'static>> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "skipping system root certificates that cannot be read");
    }
    found.certs.into_iter().filter(|c| RootCertStore::empty().add(c.clone()).is_ok()).collect()
}

/// DER certificates as one PEM bundle.
fn pem<'a>(ders: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = String::new();
    for der in ders {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let text = STANDARD.encode(der);
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let (line, tail) = rest.split_at(rest.len().min(64));
            out.push_str(line);
            out.push('\n');
            rest = tail;
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

/// What the operator should do when `e` says that the server's
/// certificate is not trusted: unknown CA, wrong name, expired. That does
/// not get better by trying again. The redis crate keeps only the text of
/// the rustls error for a cluster's seeds, so the text is what is read
/// (rustls' `InvalidCertificate` reads "invalid peer certificate: ...").
pub(super) fn untrusted_certificate(e: &RedisError) -> Option<&'static str> {
    e.to_string().contains("invalid peer certificate").then_some(
        "the server's certificate is not trusted: give the CA that signed it with --redis-ca-file, \
         and connect by a name the certificate lists",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_reads_back_as_the_same_certificates() {
        let ders: Vec<Vec<u8>> = vec![(0..=255).collect(), vec![1, 2, 3], (0..200).map(|i| i as u8).collect()];
        let bundle = pem(ders.iter().map(Vec::as_slice));
        let back: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&bundle).map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(back, ders);
        assert!(String::from_utf8(bundle).unwrap().lines().all(|l| l.len() <= 64));
    }
}
