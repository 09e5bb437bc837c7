//! The metrics endpoint's web config, in the Prometheus exporter-toolkit's
//! format (`--web.config.file` of node_exporter and friends): TLS with an
//! optional client certificate, and basic auth with bcrypt hashes. Keys this
//! kvscope does not implement are errors, never silently ignored: a security
//! setting that is not applied must not look applied.
use std::{collections::BTreeMap, path::Path, sync::Arc};

use anyhow::Context as _;
use rustls::{
    ServerConfig,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
    client_ca_file: Option<std::path::PathBuf>,
    #[serde(default)]
    client_auth_type: ClientAuth,
    min_version: Option<TlsVersion>,
}

/// exporter-toolkit's names. RequestClientCert and RequireAnyClientCert take
/// a certificate without verifying it: not offered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
enum ClientAuth {
    #[default]
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum TlsVersion {
    TLS12,
    TLS13,
}

/// A loaded web config: what the listener and the auth check use.
pub struct WebConfig {
    /// None: plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    /// user -> bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
}

impl WebConfig {
    /// No file: plain HTTP, no authentication.
    pub fn open() -> WebConfig {
        WebConfig {
            tls: None,
            users: BTreeMap::new(),
        }
    }

    /// Reads and checks `path`; relative file names in it are taken from its
    /// directory (as exporter-toolkit does). Errors name the file and key.
    pub fn load(path: &Path) -> anyhow::Result<WebConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("web_config: cannot read {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir).with_context(|| format!("web_config {}", path.display()))
    }

    fn parse(text: &str, dir: &Path) -> anyhow::Result<WebConfig> {
        let f: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?
        };
        for (user, hash) in &f.basic_auth_users {
            // A plain password or a truncated hash would never match: say so.
            hash.parse::<bcrypt::HashParts>().map_err(|e| {
                anyhow::anyhow!("basic_auth_users.{user}: not a bcrypt hash ({e}); make one with `htpasswd -nBC 10 {user}`")
            })?;
        }
        let tls = f
            .tls_server_config
            .map(|t| server_config(&t, dir).context("tls_server_config"))
            .transpose()?;
        Ok(WebConfig {
            tls,
            users: f.basic_auth_users,
        })
    }
}

fn server_config(t: &TlsFile, dir: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let path = |p: &Path| dir.join(p);
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(path(&t.cert_file))
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("cert_file {}: {e}", t.cert_file.display()))?;
    if certs.is_empty() {
        anyhow::bail!("cert_file {}: no certificate in it", t.cert_file.display());
    }
    let key = PrivateKeyDer::from_pem_file(path(&t.key_file))
        .map_err(|e| anyhow::anyhow!("key_file {}: {e}", t.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version {
        Some(TlsVersion::TLS13) => &[&rustls::version::TLS13],
        None | Some(TlsVersion::TLS12) => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .context("min_version")?;
    let builder = match client_verifier(t, dir, provider)? {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut c = builder
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("cert_file/key_file: {e}"))?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

fn client_verifier(
    t: &TlsFile,
    dir: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Option<Arc<dyn ClientCertVerifier>>> {
    let ca = match (&t.client_ca_file, t.client_auth_type) {
        (None, ClientAuth::NoClientCert) => return Ok(None),
        (Some(_), ClientAuth::NoClientCert) => anyhow::bail!(
            "client_ca_file is set but client_auth_type is NoClientCert: set client_auth_type to RequireAndVerifyClientCert (or VerifyClientCertIfGiven)"
        ),
        (None, a) => anyhow::bail!("client_auth_type {a:?} needs client_ca_file"),
        (Some(ca), _) => ca,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(dir.join(ca))
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("client_ca_file {}: {e}", ca.display()))?;
    for c in certs {
        roots
            .add(c)
            .map_err(|e| anyhow::anyhow!("client_ca_file {}: {e}", ca.display()))?;
    }
    let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let b = match t.client_auth_type {
        ClientAuth::VerifyClientCertIfGiven => b.allow_unauthenticated(),
        _ => b,
    };
    Ok(Some(b.build().map_err(|e| {
        anyhow::anyhow!("client_ca_file {}: {e}", ca.display())
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!(
            "{:#}",
            WebConfig::parse(text, Path::new("/nonexistent"))
                .err()
                .unwrap()
        )
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            err("basic_auth_users:\n  alice: secret\n")
                .contains("basic_auth_users.alice: not a bcrypt hash")
        );
        assert!(err("http_server_config:\n  http2: false\n").contains("http_server_config"));
        let e = err("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n");
        assert!(e.contains("cert_file a.crt"), "{e}");
        let e = err("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n");
        assert!(e.contains("TLS10"), "{e}");
        let e = err(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n",
        );
        assert!(e.contains("RequireAnyClientCert"), "{e}");
    }

    #[test]
    fn an_empty_file_is_plain_and_open() {
        let c = WebConfig::parse("", Path::new(".")).unwrap();
        assert!(c.tls.is_none() && c.users.is_empty());
        let hash = bcrypt::hash("pw", 4).unwrap();
        let c = WebConfig::parse(
            &format!("basic_auth_users:\n  alice: '{hash}'\n"),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.users.len(), 1);
    }
}
