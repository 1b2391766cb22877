//! TLS on weir's listeners: the certificate and key of `server.tls`, read at
//! start (a bad pair stops the start with the field named) and reread whenever
//! either file changes, so a rotated certificate (certbot, a Kubernetes secret)
//! is served without a restart. A pair that does not load, or whose key does not
//! match, is logged and the previous certificate kept: a half-written rotation
//! never breaks the handshake.

use arc_swap::ArcSwap;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::protocols::ALPN;
use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{ClientHello, CryptoProvider, ResolvesServerCert};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use weir_filters::config::model::TlsConfig;

/// How often the files are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The certificate served now, swapped whole when the files change.
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Certificates {
    /// Loads the pair now, or says what is wrong with it.
    pub fn load(cfg: &TlsConfig) -> Result<Arc<Certificates>, String> {
        let (cert, key) = (PathBuf::from(&cfg.cert), PathBuf::from(&cfg.key));
        let first = read_pair(&cfg.cert, &cfg.key)?;
        Ok(Arc::new(Certificates {
            cert,
            key,
            current: ArcSwap::from_pointee(first),
        }))
    }

    /// TLS settings for a listener serving these certificates, HTTP/2 offered by
    /// ALPN before HTTP/1.1.
    pub fn settings(self: &Arc<Self>) -> Result<TlsSettings, String> {
        let mut settings =
            TlsSettings::intermediate(&self.cert.to_string_lossy(), &self.key.to_string_lossy())
                .map_err(|e| format!("server.tls: {e}"))?;
        settings.set_cert_resolver(self.clone());
        settings.set_alpn(ALPN::H2H1);
        Ok(settings)
    }

    /// Rereads the pair whenever either file changes (checked every second, on a
    /// thread of its own: the handshake path never touches the files).
    pub fn watch(self: &Arc<Self>) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("weir-tls".into())
            .spawn(move || {
                let mut seen = me.stamp();
                loop {
                    std::thread::sleep(CHECK_EVERY);
                    let now = me.stamp();
                    if now != seen {
                        seen = now;
                        me.reload();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot watch the TLS certificate; it is read at start only");
        }
    }

    fn reload(&self) {
        match read_pair(&self.cert.to_string_lossy(), &self.key.to_string_lossy()) {
            Ok(pair) => {
                self.current.store(Arc::new(pair));
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate not reloaded; the previous one is served")
            }
        }
    }

    /// What tells a change: each file's modification time and length (a symlink
    /// swapped to a new target changes both).
    fn stamp(&self) -> [Option<(SystemTime, u64)>; 2] {
        let of = |p: &PathBuf| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        };
        [of(&self.cert), of(&self.key)]
    }
}

/// Reads and checks one certificate chain and key pair.
fn read_pair(cert: &str, key: &str) -> Result<CertifiedKey, String> {
    pingora_rustls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| "server.tls: no TLS crypto provider".to_string())?;
    let pair = pingora_rustls::load_certs_and_key_files(cert, key)
        .map_err(|e| format!("server.tls: cannot read `{cert}` / `{key}`: {e}"))?;
    let Some((chain, private)) = pair else {
        return Err(format!(
            "server.tls: `{cert}` holds no certificate or `{key}` no private key"
        ));
    };
    let chain = chain.into_iter().map(|c| c.into_owned()).collect();
    CertifiedKey::from_der(chain, private.clone_key(), provider).map_err(|e| {
        format!("server.tls: the key `{key}` does not fit the certificate `{cert}`: {e}")
    })
}
