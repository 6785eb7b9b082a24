//! The mesh's mutual TLS: a cluster CA, node certificates it signs, and the rustls configs that
//! accept only peers holding one.
//!
//! `lectern cluster init` writes a CA (`ca.pem`, `ca.key`); `lectern cluster issue-node --id ID`
//! writes a node certificate whose subject alternative name is the node's cluster name
//! (`node.pem`, `node.key`) next to a copy of `ca.pem`. A node loads that directory with
//! [`NodeTls::load`]. Both directions verify: the server requires a client certificate chained to
//! the cluster CA (no certificate, or one of another CA, fails the handshake), and the client
//! checks that the server's certificate is the cluster's and names the peer it dialled.
//!
//! Node certificates are short-lived (`lectern cluster issue-node --valid-days`, default
//! [`NODE_CERT_VALIDITY_DAYS_DEFAULT`]) and renewed in place (`--renew`); a running node picks
//! renewed files up without a restart (the mesh driver reloads its TLS directory). The CA signs
//! certificate revocation lists (`lectern cluster revoke`, [`ClusterCa::revocation_list`]): a
//! node verifies peers against every CRL it holds ([`NodeTls::with_crls`]), and accepts a CRL
//! only if the cluster CA signed it ([`NodeTls::accepts_crl`]), so the CRLs can travel over the
//! mesh from any peer.
//!
//! Every config names its crypto provider (ring) explicitly instead of relying on a process-wide
//! default, so a second provider elsewhere in the graph cannot make rustls panic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

/// A certificate time `since_epoch` after the Unix epoch.
macro_rules! at_unix {
    ($since_epoch:expr) => {
        rcgen::date_time_ymd(1970, 1, 1) + $since_epoch
    };
}

/// The CA certificate's file name in a CA or node directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name in a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// The node certificate's file name in a node directory.
pub const NODE_CERT_FILE: &str = "node.pem";
/// The node key's file name in a node directory.
pub const NODE_KEY_FILE: &str = "node.key";
/// The certificate revocation lists' file name in a CA or node directory (PEM, any number of
/// CRLs; optional in a node directory).
pub const CRL_FILE: &str = "crl.pem";

/// How long a node certificate is valid unless `issue-node --valid-days` says otherwise: short,
/// so a stolen key is useful for weeks at most even if nobody revokes it.
pub const NODE_CERT_VALIDITY_DAYS_DEFAULT: u32 = 30;
/// [`NODE_CERT_VALIDITY_DAYS_DEFAULT`] as a duration.
pub const NODE_CERT_VALIDITY_DEFAULT: std::time::Duration =
    std::time::Duration::from_secs(NODE_CERT_VALIDITY_DAYS_DEFAULT as u64 * 86_400);
/// The longest validity `issue-node` grants (the CA/Browser Forum's limit for TLS certificates).
pub const NODE_CERT_VALIDITY_DAYS_MAX: u32 = 397;
/// How far back a new certificate's validity starts, for clocks a little behind the CA's.
const CLOCK_SKEW_ALLOWANCE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The common name of every cluster CA. The issuer of a node certificate is rebuilt from it
/// (rcgen cannot parse a certificate without the x509-parser dependency); a certificate of
/// another CA with the same name still fails, on its signature.
const CA_COMMON_NAME: &str = "Lectern cluster CA";

/// A cluster CA in memory.
pub struct ClusterCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA's private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// A node's certificate in memory, with its CA's certificate.
pub struct NodeCert {
    /// The node certificate, PEM.
    pub cert_pem: String,
    /// The node's private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The cluster CA's certificate, PEM.
    pub ca_pem: String,
    /// The certificate's serial number, lowercase hex (what a revocation names).
    pub serial_hex: String,
    /// When it stops being valid, in Unix seconds.
    pub not_after_s: u64,
}

impl ClusterCa {
    /// Generates a fresh CA (ECDSA P-256, valid until 2100).
    pub fn generate() -> anyhow::Result<ClusterCa> {
        let key = KeyPair::generate().context("generate the CA key")?;
        let cert = ca_params()
            .self_signed(&key)
            .context("self-sign the CA certificate")?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Reads a CA written by [`ClusterCa::write`].
    pub fn read(dir: &Path) -> anyhow::Result<ClusterCa> {
        Ok(ClusterCa {
            cert_pem: read(&dir.join(CA_CERT_FILE))?,
            key_pem: read(&dir.join(CA_KEY_FILE))?,
        })
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into `dir`, creating it; refuses to overwrite.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        write_new(&dir.join(CA_CERT_FILE), &self.cert_pem, false)?;
        write_new(&dir.join(CA_KEY_FILE), &self.key_pem, true)
    }

    /// Issues a certificate for the node named `id` (its subject alternative name), usable as
    /// both TLS server and client, valid from now (less an hour of clock skew) for `valid_for`,
    /// with a random serial number.
    pub fn issue_node(&self, id: &str, valid_for: std::time::Duration) -> anyhow::Result<NodeCert> {
        validate_node_name(id)?;
        let ca_key = KeyPair::from_pem(&self.key_pem).context("parse the CA key")?;
        let issuer = Issuer::new(ca_params(), ca_key);
        let mut params = CertificateParams::new(vec![id.to_owned()])
            .with_context(|| format!("certificate parameters for {id}"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id);
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = unix_now();
        params.not_before = at_unix!(now.saturating_sub(CLOCK_SKEW_ALLOWANCE));
        let not_after = now + valid_for;
        params.not_after = at_unix!(not_after);
        let serial = random_serial();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let key = KeyPair::generate().context("generate the node key")?;
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("sign the certificate of {id}"))?;
        Ok(NodeCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
            serial_hex: hex(&serial),
            not_after_s: not_after.as_secs(),
        })
    }

    /// A certificate revocation list naming `serials` (as [`NodeCert::serial_hex`] writes
    /// them), numbered `number` (higher for a later list), signed by this CA; PEM.
    pub fn revocation_list(&self, serials: &[String], number: u64) -> anyhow::Result<String> {
        let ca_key = KeyPair::from_pem(&self.key_pem).context("parse the CA key")?;
        let issuer = Issuer::new(ca_params(), ca_key);
        let now = unix_now();
        let revoked_certs = serials
            .iter()
            .map(|s| {
                let bytes = unhex(s).with_context(|| format!("serial {s:?} is not hex"))?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&bytes),
                    revocation_time: at_unix!(now),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: at_unix!(now),
            // Nodes do not enforce the next update (the list stays in force until replaced).
            next_update: at_unix!(now + std::time::Duration::from_secs(365 * 86_400)),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&issuer)
            .context("sign the revocation list")?;
        crl.pem().context("encode the revocation list")
    }
}

impl NodeCert {
    /// Writes `node.pem`, `node.key` (mode 0600) and `ca.pem` into `dir`, creating it; refuses
    /// to overwrite.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        write_new(&dir.join(NODE_CERT_FILE), &self.cert_pem, false)?;
        write_new(&dir.join(NODE_KEY_FILE), &self.key_pem, true)?;
        write_new(&dir.join(CA_CERT_FILE), &self.ca_pem, false)
    }

    /// Renews the certificate of an existing node directory: its `ca.pem` must be this
    /// certificate's CA; `node.key` then `node.pem` are replaced atomically (each written
    /// beside it and renamed over it), so a node reloading the directory never reads half a
    /// file.
    pub fn replace(&self, dir: &Path) -> anyhow::Result<()> {
        let ca = read(&dir.join(CA_CERT_FILE))?;
        anyhow::ensure!(
            ca.trim() == self.ca_pem.trim(),
            "{} holds another cluster's CA: renew with the CA that issued it",
            dir.display()
        );
        replace_file(&dir.join(NODE_KEY_FILE), &self.key_pem, true)?;
        replace_file(&dir.join(NODE_CERT_FILE), &self.cert_pem, false)
    }
}

/// A node's TLS material, parsed: its certificate chain, key and the cluster's root.
#[derive(Debug)]
pub struct NodeTls {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    /// The revocation lists peers are checked against (each verified as the CA's).
    crls: Vec<CertificateRevocationListDer<'static>>,
}

impl Clone for NodeTls {
    fn clone(&self) -> Self {
        NodeTls {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            crls: self.crls.clone(),
        }
    }
}

impl NodeTls {
    /// Loads `node.pem`, `node.key` and `ca.pem` from `dir`, and `crl.pem` if there is one
    /// (each of its lists must be the CA's).
    pub fn load(dir: &Path) -> anyhow::Result<NodeTls> {
        let tls = NodeTls::from_pem(
            &read(&dir.join(NODE_CERT_FILE))?,
            &read(&dir.join(NODE_KEY_FILE))?,
            &read(&dir.join(CA_CERT_FILE))?,
        )
        .with_context(|| format!("load the node's TLS files from {}", dir.display()))?;
        let crl_path = dir.join(CRL_FILE);
        if !crl_path.exists() {
            return Ok(tls);
        }
        let crls = parse_crls(&read(&crl_path)?)
            .with_context(|| format!("parse {}", crl_path.display()))?;
        for crl in &crls {
            anyhow::ensure!(
                tls.accepts_crl(crl),
                "{} holds a revocation list the cluster CA did not sign",
                crl_path.display()
            );
        }
        Ok(tls.with_crls(crls))
    }

    /// The same material checking peers against `crls` too (duplicates are kept once).
    pub fn with_crls(
        mut self,
        crls: impl IntoIterator<Item = CertificateRevocationListDer<'static>>,
    ) -> NodeTls {
        for crl in crls {
            if !self.crls.contains(&crl) {
                self.crls.push(crl);
            }
        }
        self
    }

    /// The revocation lists in force.
    pub fn crls(&self) -> &[CertificateRevocationListDer<'static>] {
        &self.crls
    }

    /// Whether `crl` is a revocation list the cluster CA signed: checked by verifying this
    /// node's own certificate against it (a list this node is revoked by is the CA's too).
    pub fn accepts_crl(&self, crl: &CertificateRevocationListDer<'static>) -> bool {
        let Some((leaf, chain)) = self.certs.split_first() else {
            return false;
        };
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .with_crls([crl.clone()])
            .only_check_end_entity_revocation()
            .build();
        let Ok(verifier) = verifier else {
            return false;
        };
        match verifier.verify_client_cert(leaf, chain, UnixTime::now()) {
            Ok(_) => true,
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => true,
            Err(_) => false,
        }
    }

    /// Whether a peer's certificate chain (as its handshake presented it) is still accepted:
    /// the cluster CA's, valid now, and revoked by none of this node's lists.
    pub fn accepts_peer(&self, certs: &[CertificateDer<'static>]) -> bool {
        let Some((leaf, chain)) = certs.split_first() else {
            return false;
        };
        let Ok(verifier) = self.client_verifier() else {
            return false;
        };
        verifier
            .verify_client_cert(leaf, chain, UnixTime::now())
            .is_ok()
    }

    fn client_verifier(&self) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
        WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .with_crls(self.crls.clone())
            .only_check_end_entity_revocation()
            .build()
            .context("build the client certificate verifier")
    }

    /// Parses PEM text (tests keep certificates in memory).
    pub fn from_pem(cert_pem: &str, key_pem: &str, ca_pem: &str) -> anyhow::Result<NodeTls> {
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("parse the node certificate")?;
        anyhow::ensure!(
            !certs.is_empty(),
            "the node certificate file holds no certificate"
        );
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("parse the node key")?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(ca.context("parse the CA certificate")?)
                .context("add the CA certificate to the roots")?;
        }
        anyhow::ensure!(!roots.is_empty(), "the CA file holds no certificate");
        Ok(NodeTls {
            certs,
            key,
            roots: Arc::new(roots),
            crls: Vec::new(),
        })
    }

    /// The QUIC server config (a peer silent for `idle_timeout_ms` is dropped): TLS 1.3, ALPN `lectern/1`, a client certificate of the cluster
    /// CA required.
    pub fn server_config(&self, idle_timeout_ms: u64) -> anyhow::Result<quinn::ServerConfig> {
        let verifier = self.client_verifier()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 with ring")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .context("use the node certificate")?;
        tls.alpn_protocols = vec![lectern_wire::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .context("a QUIC server config from rustls")?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport(idle_timeout_ms));
        Ok(config)
    }

    /// The QUIC client config (a peer silent for `idle_timeout_ms` is dropped): TLS 1.3, ALPN `lectern/1`, the cluster CA as the only root and
    /// this node's certificate as the client certificate.
    pub fn client_config(&self, idle_timeout_ms: u64) -> anyhow::Result<quinn::ClientConfig> {
        let verifier = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .with_crls(self.crls.clone())
            .only_check_end_entity_revocation()
            .build()
            .context("build the server certificate verifier")?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 with ring")?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())
            .context("use the node certificate as the client certificate")?;
        tls.alpn_protocols = vec![lectern_wire::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .context("a QUIC client config from rustls")?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport(idle_timeout_ms));
        Ok(config)
    }
}

/// Checks a node's cluster name: it becomes a DNS name in its certificate.
pub fn validate_node_name(id: &str) -> anyhow::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    anyhow::ensure!(
        ok,
        "node name {id:?} must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
    );
    Ok(())
}

/// The paths of a node directory's files, for messages.
pub fn node_files(dir: &Path) -> [PathBuf; 3] {
    [
        dir.join(NODE_CERT_FILE),
        dir.join(NODE_KEY_FILE),
        dir.join(CA_CERT_FILE),
    ]
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Transport limits of a peer connection: keep-alive well under the idle timeout, so that a
/// quiet link stays up and a dead one is noticed within the idle timeout.
fn transport(idle_timeout_ms: u64) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    let keep_alive_ms = crate::KEEP_ALIVE_INTERVAL_MS
        .min(idle_timeout_ms / 3)
        .max(1);
    t.keep_alive_interval(Some(std::time::Duration::from_millis(keep_alive_ms)));
    // An idle timeout in milliseconds always fits quinn's VarInt.
    if let Ok(idle) =
        quinn::IdleTimeout::try_from(std::time::Duration::from_millis(idle_timeout_ms))
    {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_uni_streams(0u8.into());
    Arc::new(t)
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    params
}

/// The revocation lists in PEM text.
pub fn parse_crls(pem: &str) -> anyhow::Result<Vec<CertificateRevocationListDer<'static>>> {
    CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parse the revocation lists")
}

/// Revocation lists as PEM text (what [`parse_crls`] reads).
pub fn crls_pem(crls: &[CertificateRevocationListDer<'static>]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for crl in crls {
        let b64 = base64::engine::general_purpose::STANDARD.encode(crl.as_ref());
        out.push_str("-----BEGIN X509 CRL-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END X509 CRL-----\n");
    }
    out
}

/// Now, as a duration since the Unix epoch.
fn unix_now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// A random positive serial number of 16 bytes (RFC 5280: at most 20, positive).
fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    serial[0] = (serial[0] & 0x7f) | 0x01;
    serial
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex (either case); `None` if it is not.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Replaces `path` with `text` atomically: written to a file beside it (mode 0600 if
/// `secret`), synced, then renamed over it.
fn replace_file(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    let tmp = path.with_extension("renew");
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, text, secret)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("sync {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("rename {} over {}", tmp.display(), path.display()))
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

fn write_new(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(path)
        .with_context(|| format!("create {} (it must not exist yet)", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MONTH: Duration = NODE_CERT_VALIDITY_DEFAULT;

    fn tls(cert: &NodeCert) -> NodeTls {
        NodeTls::from_pem(&cert.cert_pem, &cert.key_pem, &cert.ca_pem).expect("parses")
    }

    fn chain(cert: &NodeCert) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("parses")
    }

    #[test]
    fn certificates_are_valid_for_the_time_asked_and_no_longer() {
        let ca = ClusterCa::generate().unwrap();
        let me = tls(&ca.issue_node("a", MONTH).unwrap());
        let fresh = ca.issue_node("b", MONTH).unwrap();
        assert!(me.accepts_peer(&chain(&fresh)));
        let expired = ca.issue_node("c", Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(!me.accepts_peer(&chain(&expired)), "an expired certificate");
        let other = ClusterCa::generate()
            .unwrap()
            .issue_node("d", MONTH)
            .unwrap();
        assert!(!me.accepts_peer(&chain(&other)), "another CA's certificate");
        assert_ne!(fresh.serial_hex, expired.serial_hex);
        let now = unix_now().as_secs();
        assert!(fresh.not_after_s.abs_diff(now + MONTH.as_secs()) < 5);
    }

    #[test]
    fn only_the_cas_revocation_lists_are_taken_and_they_revoke() {
        let ca = ClusterCa::generate().unwrap();
        let me = tls(&ca.issue_node("a", MONTH).unwrap());
        let (b, c) = (
            ca.issue_node("b", MONTH).unwrap(),
            ca.issue_node("c", MONTH).unwrap(),
        );
        let crl = parse_crls(
            &ca.revocation_list(std::slice::from_ref(&c.serial_hex), 7)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(crl.len(), 1);
        assert!(me.accepts_crl(&crl[0]));
        let forged = ClusterCa::generate()
            .unwrap()
            .revocation_list(std::slice::from_ref(&b.serial_hex), 8)
            .unwrap();
        let forged = parse_crls(&forged).unwrap();
        assert!(!me.accepts_crl(&forged[0]), "another CA's list");
        let me = me.with_crls(crl.clone()).with_crls(crl.clone());
        assert_eq!(me.crls().len(), 1, "a list is kept once");
        assert!(me.accepts_peer(&chain(&b)));
        assert!(!me.accepts_peer(&chain(&c)), "a revoked certificate");
        // A list that revokes this node itself is still the CA's.
        let mine = tls(&c);
        assert!(mine.accepts_crl(&crl[0]));
        // PEM round trip (how lists learned from peers are kept).
        assert_eq!(parse_crls(&crls_pem(me.crls())).unwrap(), crl);
        assert!(ca.revocation_list(&["not hex".into()], 9).is_err());
    }

    #[test]
    fn a_renewal_replaces_the_certificate_of_the_same_cluster_only() {
        let dir = std::env::temp_dir().join(format!("lectern-tls-renew-{}", rand::random::<u64>()));
        let ca = ClusterCa::generate().unwrap();
        let first = ca.issue_node("a", MONTH).unwrap();
        first.write(&dir).unwrap();
        assert!(first.write(&dir).is_err(), "write never overwrites");
        let renewed = ca.issue_node("a", MONTH).unwrap();
        renewed.replace(&dir).unwrap();
        let loaded = NodeTls::load(&dir).unwrap();
        assert_eq!(loaded.certs, chain(&renewed));
        let foreign = ClusterCa::generate()
            .unwrap()
            .issue_node("a", MONTH)
            .unwrap();
        assert!(foreign.replace(&dir).is_err(), "another cluster's CA");
        // A revocation list beside it is loaded (and must be the CA's).
        let crl = ca
            .revocation_list(std::slice::from_ref(&first.serial_hex), 1)
            .unwrap();
        std::fs::write(dir.join(CRL_FILE), crl).unwrap();
        assert_eq!(NodeTls::load(&dir).unwrap().crls().len(), 1);
        let forged = ClusterCa::generate()
            .unwrap()
            .revocation_list(&[], 1)
            .unwrap();
        std::fs::write(dir.join(CRL_FILE), forged).unwrap();
        assert!(NodeTls::load(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
