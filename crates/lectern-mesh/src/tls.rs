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
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// The CA certificate's file name in a CA or node directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name in a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// The node certificate's file name in a node directory.
pub const NODE_CERT_FILE: &str = "node.pem";
/// The node key's file name in a node directory.
pub const NODE_KEY_FILE: &str = "node.key";

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
    /// both TLS server and client.
    pub fn issue_node(&self, id: &str) -> anyhow::Result<NodeCert> {
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
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let key = KeyPair::generate().context("generate the node key")?;
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("sign the certificate of {id}"))?;
        Ok(NodeCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
        })
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
}

/// A node's TLS material, parsed: its certificate chain, key and the cluster's root.
#[derive(Debug)]
pub struct NodeTls {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl Clone for NodeTls {
    fn clone(&self) -> Self {
        NodeTls {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
        }
    }
}

impl NodeTls {
    /// Loads `node.pem`, `node.key` and `ca.pem` from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<NodeTls> {
        NodeTls::from_pem(
            &read(&dir.join(NODE_CERT_FILE))?,
            &read(&dir.join(NODE_KEY_FILE))?,
            &read(&dir.join(CA_CERT_FILE))?,
        )
        .with_context(|| format!("load the node's TLS files from {}", dir.display()))
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
        })
    }

    /// The QUIC server config (a peer silent for `idle_timeout_ms` is dropped): TLS 1.3, ALPN `lectern/1`, a client certificate of the cluster
    /// CA required.
    pub fn server_config(&self, idle_timeout_ms: u64) -> anyhow::Result<quinn::ServerConfig> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .context("build the client certificate verifier")?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
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
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 with ring")?
            .with_root_certificates(self.roots.clone())
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
