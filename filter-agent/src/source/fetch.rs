//! One fetch of a signed policy: `GET URL` (with `If-None-Match` when the last good
//! fetch had an ETag), then `GET URL.sig`, the signature checked over the body. Blocking
//! (ureq, rustls with ring): the agent runs it off its main loop.
//!
//! The body is fetched first and its signature after, so a signature that does not
//! match (a publisher midway through an upload) is refused and fetched again at the next
//! poll. Bodies are bounded ([`MAX_POLICY_BYTES`], [`MAX_SIGNATURE_BYTES`]); every
//! request has a time limit.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};

use super::{
    Outcome, UrlSource,
    sign::{MAX_SIGNATURE_BYTES, PublicKey},
    signature_url,
};
use crate::control::protocol::MAX_POLICY_BYTES;

/// Connecting (and resolving) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One whole request, body included (64 MiB at 5 MB/s fits).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A fetch that was refused: why, and under which outcome it is counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub outcome: Outcome,
    pub reason: String,
}

impl Refused {
    fn new(outcome: Outcome, reason: impl Into<String>) -> Refused {
        Refused {
            outcome,
            reason: reason.into(),
        }
    }
}

/// What the server has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// 304: what we have is current.
    NotModified,
    /// A policy text whose signature verified.
    Signed {
        text: String,
        signature: String,
        etag: Option<String>,
    },
}

/// The client for one URL and key.
pub struct Fetcher {
    http: ureq::Agent,
    url: String,
    signature_url: String,
    key: PublicKey,
}

impl Fetcher {
    /// Reads the key, and for https the CA certificates.
    pub fn new(source: &UrlSource) -> Result<Fetcher> {
        let key = PublicKey::read(&source.key)?;
        let scheme = source
            .url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase());
        let tls = match scheme.as_deref() {
            Some("https") => Some(tls_config(&source.ca)?),
            Some("http") => None,
            _ => bail!(
                "--policy-url {}: want an http:// or https:// URL",
                source.url
            ),
        };
        let mut config = ureq::Agent::config_builder()
            // 304, 404 and the rest are outcomes here, not errors.
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(format!("filter-agent/{}", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = tls {
            config = config.tls_config(tls);
        }
        Ok(Fetcher {
            http: config.build().new_agent(),
            url: source.url.clone(),
            signature_url: signature_url(&source.url),
            key,
        })
    }

    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// Fetches the policy (conditionally on `etag`) and its signature, and verifies it.
    pub fn fetch(&self, etag: Option<&str>) -> Result<Fetched, Refused> {
        let mut request = self.http.get(&self.url);
        if let Some(etag) = etag {
            request = request.header("If-None-Match", etag);
        }
        let mut response = request.call().map_err(|e| refused(&self.url, e))?;
        match response.status().as_u16() {
            304 => return Ok(Fetched::NotModified),
            200 => {}
            status => {
                return Err(Refused::new(
                    Outcome::HttpError,
                    format!("{}: HTTP {status}", self.url),
                ));
            }
        }
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_POLICY_BYTES as u64)
            .read_to_vec()
            .map_err(|e| refused(&self.url, e))?;
        let signature = self.signature()?;
        self.key.verify(&body, &signature).map_err(|reason| {
            Refused::new(
                Outcome::BadSignature,
                format!(
                    "{}: {reason} (a publisher still uploading is caught at the next poll)",
                    self.url
                ),
            )
        })?;
        let text = String::from_utf8(body).map_err(|_| {
            Refused::new(
                Outcome::Invalid,
                format!("{}: the policy is not UTF-8 text", self.url),
            )
        })?;
        Ok(Fetched::Signed {
            text,
            signature,
            etag,
        })
    }

    fn signature(&self) -> Result<String, Refused> {
        let url = &self.signature_url;
        let mut response = self.http.get(url).call().map_err(|e| refused(url, e))?;
        match response.status().as_u16() {
            200 => {}
            404 => {
                return Err(Refused::new(
                    Outcome::BadSignature,
                    format!("{url}: HTTP 404: the policy has no signature beside it"),
                ));
            }
            status => {
                return Err(Refused::new(
                    Outcome::HttpError,
                    format!("{url}: HTTP {status}"),
                ));
            }
        }
        response
            .body_mut()
            .with_config()
            .limit(MAX_SIGNATURE_BYTES as u64)
            .read_to_string()
            .map_err(|e| refused(url, e))
    }
}

/// A transport or body error, by outcome.
fn refused(url: &str, error: ureq::Error) -> Refused {
    use ureq::Error as E;
    let outcome = match &error {
        E::Io(_)
        | E::Timeout(_)
        | E::HostNotFound
        | E::ConnectionFailed
        | E::Tls(_)
        | E::Rustls(_)
        | E::Pem(_) => Outcome::Unreachable,
        _ => Outcome::HttpError,
    };
    let reason = match error {
        E::BodyExceedsLimit(limit) => format!("the response is larger than {limit} bytes"),
        other => other.to_string(),
    };
    Refused::new(outcome, format!("{url}: {reason}"))
}

/// rustls (ring) trusting the certificates in `ca` only.
fn tls_config(ca: &Path) -> Result<ureq::tls::TlsConfig> {
    let pem = std::fs::read(ca).with_context(|| {
        format!(
            "reading the CA certificates {} for an https --policy-url (install ca-certificates, or give --policy-ca FILE)",
            ca.display()
        )
    })?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let ureq::tls::PemItem::Certificate(cert) =
            item.with_context(|| format!("{}: invalid PEM", ca.display()))?
        {
            certs.push(cert);
        }
    }
    if certs.is_empty() {
        bail!("{} holds no certificate", ca.display());
    }
    Ok(ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build())
}
