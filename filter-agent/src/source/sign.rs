//! Ed25519 signatures over policy files, in minisign's format (the `minisign` crate, by
//! minisign's author): `filter-agent keygen`, `sign` and `verify` write and read the same
//! key and signature files as the `minisign` tool, so operators may use either.
//!
//! Signatures are minisign's default, pre-hashed (BLAKE2b-512) ones; legacy signatures
//! (`minisign -l`) are refused. Secret keys may be unencrypted (what `keygen` writes, for
//! a signing job without a person) or protected by a password (`minisign -G`), which
//! `sign` asks for on the terminal.

use std::{
    fs,
    io::{Cursor, IsTerminal, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context, Result, bail};
use minisign::{KeyPair, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};

use crate::state_file;

/// A minisign signature file is a few hundred bytes; a trusted comment may make it longer.
pub const MAX_SIGNATURE_BYTES: usize = 64 * 1024;

/// The public key that policies must be signed with.
#[derive(Clone)]
pub struct PublicKey(minisign::PublicKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl PublicKey {
    /// Reads a minisign public key file (`KEY.pub`).
    pub fn read(path: &Path) -> Result<PublicKey> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read the public key {}", path.display()))?;
        PublicKey::parse(&text)
            .with_context(|| format!("{} is not a minisign public key", path.display()))
    }

    pub fn parse(text: &str) -> Result<PublicKey> {
        let key = PublicKeyBox::from_string(text)
            .and_then(PublicKeyBox::into_public_key)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(PublicKey(key))
    }

    /// The key id as minisign prints it (16 hex digits).
    pub fn id(&self) -> String {
        key_id(self.0.keynum())
    }

    /// Checks `signature` (a `.sig` file's text) over `data`.
    pub fn verify(&self, data: &[u8], signature: &str) -> Result<(), String> {
        let signature = SignatureBox::from_string(signature)
            .map_err(|e| format!("the signature is not a minisign signature: {e}"))?;
        if signature.keynum() != self.0.keynum() {
            return Err(format!(
                "signed with key {}, not with the trusted key {}",
                key_id(signature.keynum()),
                self.id()
            ));
        }
        minisign::verify(&self.0, &signature, Cursor::new(data), true, false, false)
            .map_err(|e| format!("the signature does not verify: {e}"))
    }
}

/// minisign prints key ids as the little-endian number in upper-case hex.
fn key_id(keynum: &[u8]) -> String {
    let mut bytes = [0u8; 8];
    let n = keynum.len().min(8);
    bytes[..n].copy_from_slice(&keynum[..n]);
    format!("{:016X}", u64::from_le_bytes(bytes))
}

/// `KEY.pub` for `KEY`.
pub fn public_key_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// `POLICY.yaml.sig` for `POLICY.yaml`.
pub fn signature_path(policy: &Path) -> PathBuf {
    let mut name = policy.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// `filter-agent keygen --out KEY`: a new unencrypted key pair, `KEY` (mode 0600) and
/// `KEY.pub`. Existing files are never overwritten. Returns the public key and its path.
pub fn keygen(out: &Path) -> Result<(PublicKey, PathBuf)> {
    let public = public_key_path(out);
    for path in [out, public.as_path()] {
        if fs::symlink_metadata(path).is_ok() {
            bail!(
                "{} exists; refusing to overwrite a key (remove it first, or choose another --out)",
                path.display()
            );
        }
    }
    let KeyPair { pk, sk } =
        KeyPair::generate_unencrypted_keypair().map_err(|e| anyhow::anyhow!("{e}"))?;
    let id = key_id(pk.keynum());
    let secret = sk
        .to_box(Some(&format!("filter-agent secret key {id}")))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_string();
    let public_text = pk
        .to_box()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_string();
    // Created 0600 from the start: the secret is never readable by others, not even
    // for a moment.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    state_file::write_atomically_with_mode(
        &public,
        public_text.as_bytes(),
        0o644,
        "the public key",
    )?;
    Ok((PublicKey(pk), public))
}

/// How `sign` gets the password of a protected key.
pub type AskPassword<'a> = &'a dyn Fn(&Path) -> Result<String>;

/// The terminal's answer; no terminal is an error that says what to do instead.
pub fn ask_on_terminal(key: &Path) -> Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "{} is protected by a password and there is no terminal to ask for it; run `filter-agent sign` in a terminal, or make a key without a password for unattended signing (`filter-agent keygen`)",
            key.display()
        );
    }
    rpassword::prompt_password(format!("Password for {}: ", key.display()))
        .context("reading the password")
}

/// Reads a minisign secret key, asking for its password if it has one. The key's text
/// is never part of an error.
pub fn read_secret_key(path: &Path, ask: AskPassword) -> Result<SecretKey> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read the secret key {}", path.display()))?;
    let not_a_key = || format!("{} is not a minisign secret key", path.display());
    let encrypted = match SecretKeyBox::from_string(&text)
        .and_then(SecretKeyBox::into_unencrypted_secret_key)
    {
        Ok(key) => return Ok(key),
        // The crate's words for a key with a password.
        Err(e) if e.to_string().contains("might be encrypted") => SecretKeyBox::from_string(&text),
        // minisign 0.11's `-G -W` leaves the checksum of an unencrypted key empty, which
        // the crate refuses: such a key still signs with the minisign tool itself.
        Err(e) if e.to_string().contains("Corrupted key") => bail!(
            "{}: {e} (a key made by `minisign -G -W` has no checksum; sign with `minisign -S -s {} -m POLICY.yaml -x POLICY.yaml.sig`, or make the key with `filter-agent keygen`)",
            not_a_key(),
            path.display()
        ),
        Err(e) => bail!("{}: {e}", not_a_key()),
    };
    let password = ask(path)?;
    encrypted
        .and_then(|b| b.into_secret_key(Some(password)))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// `filter-agent sign --key KEY POLICY.yaml`: writes `POLICY.yaml.sig`. Returns its path.
pub fn sign(key: &Path, policy: &Path, ask: AskPassword) -> Result<PathBuf> {
    let secret = read_secret_key(key, ask)?;
    let data = fs::read(policy).with_context(|| format!("cannot read {}", policy.display()))?;
    let signature = signature_of(&secret, &data, policy)?;
    let out = signature_path(policy);
    state_file::write_atomically_with_mode(&out, signature.as_bytes(), 0o644, "the signature")?;
    Ok(out)
}

/// The `.sig` text for `data`, with minisign's trusted comment (time and file name).
pub fn signature_of(secret: &SecretKey, data: &[u8], name: &Path) -> Result<String> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let file = name
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trusted = format!("timestamp:{now}\tfile:{file}\thashed");
    let signature = minisign::sign(None, secret, Cursor::new(data), Some(&trusted), None)
        .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
    Ok(signature.into_string())
}

/// `filter-agent verify --key KEY.pub POLICY.yaml`: `Ok(Err(reason))` when the signature
/// does not verify; `Err` when a file cannot be read.
pub fn verify_file(key: &Path, policy: &Path) -> Result<Result<PublicKey, String>> {
    let key = PublicKey::read(key)?;
    let data = fs::read(policy).with_context(|| format!("cannot read {}", policy.display()))?;
    let sig_path = signature_path(policy);
    let signature = fs::read_to_string(&sig_path)
        .with_context(|| format!("cannot read the signature {}", sig_path.display()))?;
    Ok(key.verify(&data, &signature).map(|()| key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_password(_: &Path) -> Result<String> {
        bail!("no password here")
    }

    #[test]
    fn a_signed_policy_verifies_and_a_changed_byte_or_another_key_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("fleet.key");
        let (public, public_path) = keygen(&key).unwrap();
        assert_eq!(public_path, dir.path().join("fleet.key.pub"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let policy = dir.path().join("policy.yaml");
        fs::write(&policy, "version: 1\nmode: enforce\r\n").unwrap();
        let sig = sign(&key, &policy, &no_password).unwrap();
        assert_eq!(sig, dir.path().join("policy.yaml.sig"));
        let verified = verify_file(&public_path, &policy).unwrap().unwrap();
        assert_eq!(verified.id(), public.id());

        // One byte changed: refused.
        fs::write(&policy, "version: 1\nmode: monitor\r\n").unwrap();
        let refused = verify_file(&public_path, &policy).unwrap().unwrap_err();
        assert!(refused.contains("does not verify"), "{refused}");

        // Signed by another key: refused, naming both keys.
        let other = dir.path().join("other.key");
        keygen(&other).unwrap();
        sign(&other, &policy, &no_password).unwrap();
        let refused = verify_file(&public_path, &policy).unwrap().unwrap_err();
        assert!(
            refused.contains(&format!("not with the trusted key {}", public.id())),
            "{refused}"
        );

        // Garbage instead of a signature.
        fs::write(signature_path(&policy), "not a signature\n").unwrap();
        let refused = verify_file(&public_path, &policy).unwrap().unwrap_err();
        assert!(refused.contains("not a minisign signature"), "{refused}");
    }

    #[test]
    fn keygen_never_overwrites_and_unreadable_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        keygen(&key).unwrap();
        let before = fs::read(&key).unwrap();
        let error = keygen(&key).unwrap_err().to_string();
        assert!(error.contains("refusing to overwrite"), "{error}");
        assert_eq!(fs::read(&key).unwrap(), before);

        let missing = dir.path().join("missing.yaml");
        let error = verify_file(&public_key_path(&key), &missing).unwrap_err();
        assert!(error.to_string().contains("cannot read"), "{error}");
        let error = format!("{:#}", sign(&key, &missing, &no_password).unwrap_err());
        assert!(error.contains("cannot read"), "{error}");
        // A public key where a secret one is expected: an error that does not quote it.
        let error = format!(
            "{:#}",
            sign(&public_key_path(&key), &key, &no_password).unwrap_err()
        );
        assert!(error.contains("is not a minisign secret key"), "{error}");
        assert!(!error.contains(&fs::read_to_string(public_key_path(&key)).unwrap()));
    }

    #[test]
    fn a_password_protected_key_signs_with_its_password_only() {
        let dir = tempfile::tempdir().unwrap();
        let KeyPair { pk, sk } =
            KeyPair::generate_encrypted_keypair(Some("correct horse".into())).unwrap();
        let key = dir.path().join("protected.key");
        fs::write(&key, sk.to_box(None).unwrap().into_string()).unwrap();
        let policy = dir.path().join("p.yaml");
        fs::write(&policy, "version: 1\n").unwrap();
        let error = format!("{:#}", sign(&key, &policy, &no_password).unwrap_err());
        assert!(error.contains("no password here"), "{error}");
        let wrong = |_: &Path| Ok("wrong".to_string());
        assert!(sign(&key, &policy, &wrong).is_err());
        let right = |_: &Path| Ok("correct horse".to_string());
        sign(&key, &policy, &right).unwrap();
        let public = PublicKey(pk);
        let signature = fs::read_to_string(signature_path(&policy)).unwrap();
        public.verify(b"version: 1\n", &signature).unwrap();
    }
}
