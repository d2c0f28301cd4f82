//! `--web-config FILE`: TLS and basic auth for the metrics endpoint, in the format of the
//! Prometheus exporter-toolkit (node_exporter's `--web.config.file`), so one file and one
//! scrape config serve every exporter on a router:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/filter-agent/metrics.crt   # relative paths: from the file's directory
//!   key_file: /etc/filter-agent/metrics.key
//! basic_auth_users:
//!   prometheus: $2y$10$...                     # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':')
//! ```
//!
//! Both parts are optional. Keys this agent does not implement (client certificates,
//! `http_server_config`) are refused at start rather than silently ignored.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result, bail};
use base64::Engine;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFiles>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// How the metrics endpoint is served; the default is plain HTTP for everybody.
#[derive(Default)]
pub struct WebConfig {
    pub tls: Option<TlsAcceptor>,
    /// User name -> bcrypt hash; empty: no authentication.
    users: BTreeMap<String, String>,
    /// SHA-256 of `user:password` pairs bcrypt has accepted: a scrape every few
    /// seconds must not cost a bcrypt round each (exporter-toolkit caches likewise).
    accepted: Mutex<HashSet<[u8; 32]>>,
}

/// What a request's credentials came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// Missing, malformed or wrong: a 401 with a `WWW-Authenticate` challenge.
    Denied,
}

impl WebConfig {
    /// Reads and checks the file: every certificate, key and hash is loaded or parsed
    /// here, so a mistake stops the agent at start with the file and the reason.
    pub fn load(path: &Path) -> Result<WebConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the web config {}", path.display()))?;
        WebConfig::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .with_context(|| format!("web config {}", path.display()))
    }

    /// [`WebConfig::load`] of `text`, relative paths taken from `dir`.
    pub(crate) fn parse(text: &str, dir: &Path) -> Result<WebConfig> {
        // An empty file is an empty configuration, as in exporter-toolkit.
        let file: File = if text.trim().is_empty() {
            File {
                tls_server_config: None,
                basic_auth_users: BTreeMap::new(),
            }
        } else {
            crate::state_file::from_yaml(text)?
        };
        for (user, hash) in &file.basic_auth_users {
            if user.contains(':') {
                bail!("basic_auth_users: user name {user:?} contains ':'");
            }
            bcrypt::HashParts::from_str(hash).map_err(|e| {
                anyhow::anyhow!(
                    "basic_auth_users: the password of {user:?} is not a bcrypt hash: {e}"
                )
            })?;
        }
        let tls = match file.tls_server_config {
            Some(files) => Some(acceptor(
                &dir.join(files.cert_file),
                &dir.join(files.key_file),
            )?),
            None => None,
        };
        Ok(WebConfig {
            tls,
            users: file.basic_auth_users,
            accepted: Mutex::default(),
        })
    }

    /// Whether the endpoint wants a user name and password.
    pub fn requires_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// Checks an `Authorization` header's value (`None`: there was none). Runs bcrypt for
    /// a pair not seen before, so call it off the async runtime.
    pub fn check(&self, authorization: Option<&[u8]>) -> Access {
        if !self.requires_auth() {
            return Access::Allowed;
        }
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return Access::Denied;
        };
        let Some(hash) = self.users.get(&user) else {
            return Access::Denied;
        };
        let digest: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update(b":")
            .chain_update(&password)
            .finalize()
            .into();
        let mut accepted = self.accepted.lock().expect("credential cache poisoned");
        if accepted.contains(&digest) {
            return Access::Allowed;
        }
        if bcrypt::verify(&password, hash).unwrap_or(false) {
            accepted.insert(digest);
            Access::Allowed
        } else {
            Access::Denied
        }
    }
}

/// `Basic base64(user:password)` -> (user, password).
fn basic_credentials(header: &[u8]) -> Option<(String, Vec<u8>)> {
    let header = std::str::from_utf8(header).ok()?;
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("tls_server_config: cert_file {}", cert_file.display()))?;
    if certs.is_empty() {
        bail!(
            "tls_server_config: cert_file {} holds no certificate",
            cert_file.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("tls_server_config: key_file {}", key_file.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .with_context(|| {
        format!(
            "tls_server_config: the key in {} does not go with the certificate in {}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bcrypt of "secret" at the lowest cost, with a fixed salt.
    fn hash(password: &str) -> String {
        bcrypt::hash_with_salt(password, 4, [7; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY)
    }

    fn basic(user: &str, password: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
        .into_bytes()
    }

    #[test]
    fn basic_auth_checks_user_and_password() {
        let dir = tempfile::tempdir().unwrap();
        let config = WebConfig::parse(
            &format!("basic_auth_users:\n  prometheus: '{}'\n", hash("secret")),
            dir.path(),
        )
        .unwrap();
        assert!(config.requires_auth() && config.tls.is_none());
        assert_eq!(config.check(None), Access::Denied);
        assert_eq!(
            config.check(Some(&basic("prometheus", "wrong"))),
            Access::Denied
        );
        assert_eq!(
            config.check(Some(&basic("nobody", "secret"))),
            Access::Denied
        );
        assert_eq!(config.check(Some(b"Bearer abc")), Access::Denied);
        assert_eq!(config.check(Some(b"Basic !!!")), Access::Denied);
        for _ in 0..2 {
            // The second time from the cache.
            assert_eq!(
                config.check(Some(&basic("prometheus", "secret"))),
                Access::Allowed
            );
        }
        assert_eq!(
            config.check(Some(&basic("prometheus", "secret2"))),
            Access::Denied
        );
        let open = WebConfig::parse("", dir.path()).unwrap();
        assert_eq!(open.check(None), Access::Allowed);
    }

    #[test]
    fn mistakes_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let error = |text: &str| format!("{:#}", WebConfig::parse(text, dir.path()).err().unwrap());
        assert!(
            error("basic_auth_users:\n  prometheus: plaintext\n").contains("not a bcrypt hash"),
        );
        assert!(error("tls_server_config:\n  cert_file: a.crt\n").contains("key_file"));
        assert!(
            error("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  client_ca_file: ca.crt\n")
                .contains("client_ca_file")
        );
        assert!(error("http_server_config:\n  http2: false\n").contains("http_server_config"));
        let missing = error("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n");
        assert!(
            missing.contains("cert_file") && missing.contains("a.crt"),
            "{missing}"
        );

        // A certificate with somebody else's key.
        let one = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.path().join("a.crt"), one.cert.pem()).unwrap();
        std::fs::write(dir.path().join("a.key"), other.signing_key.serialize_pem()).unwrap();
        let mismatch = error("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n");
        assert!(mismatch.contains("does not go with"), "{mismatch}");
        // Relative paths are taken from the file's directory.
        std::fs::write(dir.path().join("a.key"), one.signing_key.serialize_pem()).unwrap();
        let config = WebConfig::parse(
            "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n",
            dir.path(),
        )
        .unwrap();
        assert!(config.tls.is_some() && !config.requires_auth());
    }
}
