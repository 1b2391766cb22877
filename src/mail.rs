//! Mail for new keys (K2): an outbox the admin API fills and a background service
//! that sends, retries with backoff and records each mail's state in the store. The
//! `smtp:` section is read at every attempt, so a fixed password in a reload helps
//! the mails still waiting. No log line carries a key: only key ids and addresses.

use crate::accounts::now_unix;
use crate::state::AppState;
use async_trait::async_trait;
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Semaphore};
use weir_filters::config::{SmtpConfig, SmtpTls};
use weir_filters::key_mail::{compose, retry_delay, KeyMail};

/// The `smtp:` section and `server.ca_file`, which verifies the server's certificate.
pub type Settings = (SmtpConfig, Option<String>);

/// Mails sent at the same time, whatever the import's size.
const PARALLEL: usize = 4;

/// Where the admin API drops the keys to mail; the mailer service takes them out.
pub struct Outbox {
    tx: mpsc::UnboundedSender<KeyMail>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<KeyMail>>>,
}

impl Default for Outbox {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Outbox {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl Outbox {
    /// Hands the mails (already `queued` in the store) to the mailer.
    pub fn send(&self, mails: Vec<KeyMail>) {
        for m in mails {
            // The receiver lives as long as the process serves.
            let _ = self.tx.send(m);
        }
    }

    fn take(&self) -> Option<mpsc::UnboundedReceiver<KeyMail>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What one attempt came to, as the outbox records it.
pub struct Attempt {
    pub status: &'static str,
    pub attempts: u32,
    pub error: Option<String>,
}

/// Sends `m`, trying again after each failure as `smtp:` says, and reports every
/// attempt to `record`. `config` is asked before each attempt.
pub async fn deliver<R, F, C, G>(
    m: &KeyMail,
    transports: &Transports,
    config: impl Fn() -> Option<Settings>,
    current: C,
    record: R,
    on_result: impl Fn(&str),
) where
    R: Fn(Attempt) -> F,
    F: std::future::Future<Output = ()>,
    C: Fn() -> G,
    G: std::future::Future<Output = bool>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        if !current().await {
            tracing::info!(
                key_id = m.key_id,
                "mail dropped: the key was reset or deleted since"
            );
            return;
        }
        let Some((cfg, ca_file)) = config() else {
            let error = Some("smtp: is no longer configured".to_string());
            record(Attempt {
                status: "failed",
                attempts: attempt - 1,
                error,
            })
            .await;
            on_result("failed");
            return;
        };
        match send_once(&cfg, ca_file.as_deref(), transports, m).await {
            Ok(()) => {
                tracing::info!(key_id = m.key_id, to = %m.email, attempt, "key mailed");
                record(Attempt {
                    status: "sent",
                    attempts: attempt,
                    error: None,
                })
                .await;
                on_result("sent");
                return;
            }
            Err(e) => {
                let last = attempt > cfg.retries;
                tracing::warn!(key_id = m.key_id, to = %m.email, attempt, error = %e, gives_up = last, "mail failed");
                let status = if last { "failed" } else { "queued" };
                record(Attempt {
                    status,
                    attempts: attempt,
                    error: Some(e),
                })
                .await;
                if last {
                    on_result("failed");
                    return;
                }
                on_result("retry");
                tokio::time::sleep(retry_delay(cfg.retry_interval.0, attempt)).await;
            }
        }
    }
}

async fn send_once(
    cfg: &SmtpConfig,
    ca_file: Option<&str>,
    transports: &Transports,
    m: &KeyMail,
) -> Result<(), String> {
    let (subject, body) = compose(m, &cfg.public_url);
    let from: Mailbox = cfg
        .from
        .parse()
        .map_err(|e| format!("smtp.from `{}`: {e}", cfg.from))?;
    let to = Mailbox::new(
        Some(m.name.clone()),
        m.email
            .parse()
            .map_err(|e| format!("`{}` is not an address: {e}", m.email))?,
    );
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| format!("cannot build the mail: {e}"))?;
    let transport = transports.get(cfg, ca_file)?;
    transport
        .send(message)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// One pooled SMTP transport, rebuilt when `smtp:` changes.
#[derive(Default)]
pub struct Transports {
    current: Mutex<Option<(Settings, AsyncSmtpTransport<Tokio1Executor>)>>,
}

impl Transports {
    fn get(
        &self,
        cfg: &SmtpConfig,
        ca_file: Option<&str>,
    ) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(((c, ca), t)) = current.as_ref() {
            if c == cfg && ca.as_deref() == ca_file {
                return Ok(t.clone());
            }
        }
        let t = transport(cfg, ca_file)?;
        *current = Some(((cfg.clone(), ca_file.map(str::to_string)), t.clone()));
        Ok(t)
    }
}

fn transport(
    cfg: &SmtpConfig,
    ca_file: Option<&str>,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host)
        .port(cfg.port())
        .timeout(Some(cfg.timeout.0));
    if cfg.tls != SmtpTls::None {
        let params = tls_parameters(&cfg.host, ca_file)?;
        builder = builder.tls(match cfg.tls {
            SmtpTls::Tls => Tls::Wrapper(params),
            _ => Tls::Required(params),
        });
    }
    if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(builder.build())
}

/// The server's certificate is checked against `server.ca_file` when set (as for
/// upstreams), else against the system's roots.
fn tls_parameters(host: &str, ca_file: Option<&str>) -> Result<TlsParameters, String> {
    let mut params = TlsParameters::builder(host.to_string());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("server.ca_file `{path}`: {e}"))?;
        let roots =
            Certificate::from_pem(&pem).map_err(|e| format!("server.ca_file `{path}`: {e}"))?;
        params = params
            .certificate_store(CertificateStore::None)
            .add_root_certificate(roots);
    }
    params
        .build_rustls()
        .map_err(|e| format!("TLS for {host}: {e}"))
}

/// The background service that sends what the outbox receives.
pub struct Mailer {
    pub state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for Mailer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut rx) = self.state.outbox.take() else {
            return;
        };
        let transports = Arc::new(Transports::default());
        let parallel = Arc::new(Semaphore::new(PARALLEL));
        loop {
            tokio::select! {
                Some(m) = rx.recv() => {
                    let state = self.state.clone();
                    let (transports, parallel) = (transports.clone(), parallel.clone());
                    tokio::spawn(async move {
                        let Ok(_slot) = parallel.acquire_owned().await else { return };
                        deliver_for(&state, &transports, &m).await;
                    });
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}

async fn deliver_for(state: &Arc<AppState>, transports: &Transports, m: &KeyMail) {
    let config = || {
        let rt = state.snapshot();
        rt.file
            .smtp
            .clone()
            .map(|s| (s, rt.file.server.ca_file.clone()))
    };
    let record = |a: Attempt| async move {
        let (id, mail) = (m.key_id, m.clone());
        let written = state
            .store
            .call(false, move |c| {
                crate::store::mail::record(
                    c,
                    &mail,
                    a.status,
                    a.attempts,
                    a.error.as_deref(),
                    now_unix(),
                )
            })
            .await;
        if let Err(e) = written {
            tracing::error!(key_id = id, error = %e, "cannot record the mail's state");
        }
    };
    let count = |result: &str| state.metrics.mails.with_label_values(&[result]).inc();
    let current = || async {
        let mail = m.clone();
        state
            .store
            .read(move |c| crate::store::mail::current(c, &mail))
            .await
            // Unknown (the store is busy or failing): try the mail anyway.
            .unwrap_or(true)
    };
    deliver(m, transports, config, current, record, count).await;
}
