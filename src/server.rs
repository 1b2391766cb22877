//! Builds the Pingora server: the proxy service, the admin service and the reload
//! watcher, all sharing one `AppState`.

use crate::accounts::Accounts;
use crate::admin_backend::Admin;
use crate::listeners::{self, Adopting, Bound};
use crate::proxy::Weir;
use crate::reload::{Prober, Reloader};
use crate::state::AppState;
use crate::store::Store;
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_admin::manager::Manager;
use weir_admin::AdminApp;
use weir_filters::config::{self, ChannelType, LogFormat, Runtime, ServerConfig};

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<(String, Runtime), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let rt = config::parse(&text).map_err(|e| {
        let mut msg = format!("{} is not valid:", path.display());
        for p in &e.problems {
            msg.push_str("\n  ");
            msg.push_str(p);
        }
        msg
    })?;
    // The certificate pair is read now too, so `weir check` finds a bad one.
    if let Some(tls) = &rt.file.server.tls {
        crate::tls::Certificates::load(tls)
            .map_err(|e| format!("{} is not valid:\n  {e}", path.display()))?;
    }
    Ok((text, rt))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(crate::logbuf::BufferedStderr::global())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Transparent huge pages back each allocator region touched by a connection with
/// 2 MiB: with 1,000 open streams RSS was 230 MiB with them and 96 MiB without (the
/// load benchmark's memory run). A gateway gains nothing from them worth that.
/// `main.rs` calls this from an `.init_array` hook, before the allocator's first mapping.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes a flag of
    // this process; failure (an old kernel) leaves THP as it was, which is harmless.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// SIGHUP's default action ends the process. The reload service listens for it once
/// the server runs; install the handler now so a SIGHUP during start-up (a quick
/// `systemctl reload`) cannot kill weir. The handler stays installed process-wide.
fn take_over_sighup() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map(drop)
            .map_err(|e| format!("cannot handle SIGHUP: {e}"))
    })
}

/// Runs weir on `path` until a signal stops it; with `ready_file`, writes the
/// addresses it listens on there once they are bound.
pub fn serve(path: PathBuf, ready_file: Option<PathBuf>) -> Result<(), String> {
    let (text, rt) = load(&path)?;
    init_logging(rt.server().log_format);
    // A panic message must not wait behind buffered log lines.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        crate::logbuf::flush();
        default_hook(info)
    }));
    // The tokenizer (tens of MiB) loads when first needed; the mock channel always
    // needs it, so load it ahead for configs that have one.
    if rt.channels.iter().any(|c| c.kind == ChannelType::Mock) {
        std::thread::spawn(weir_filters::usage::warm_up);
    }
    take_over_sighup()?;
    let server_cfg = rt.server().clone();
    let mut server = pingora_server(&server_cfg);
    let connector = TransportConnector::new(Some(ConnectorOptions::from_server_conf(
        &server.configuration,
    )));
    let accounts = Arc::new(Accounts::default());
    let storage = rt.file.storage.clone();
    if storage.redis.is_some() || storage.postgres.is_some() {
        accounts
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .persist = false;
    }
    let store = Store::open(
        &crate::store::schema::Target::of(&storage),
        storage.flush_interval.0,
        &rt.file.logs,
        storage.secret_key.as_deref(),
        accounts.clone(),
    )?;
    let state = Arc::new(AppState::new(path, text, rt, connector, accounts, store)?);
    if let Some(shared) = &state.shared {
        // What one instance learns about a channel, the others apply.
        let weak = Arc::downgrade(&state);
        let apply = move |id: &weir_filters::health::HealthId,
                          e: &weir_filters::health::HealthEvent| {
            if let Some(state) = weak.upgrade() {
                state.health.apply(id, e);
            }
        };
        shared.share_health(&state.health, Arc::new(apply));
    }
    // The store's channels and gateways join the file's before anything is served.
    state.restock("start")?;

    // Bound before anything is served, and exactly as configured: see `listeners`.
    let proxy_socket = listeners::bind("server.listen", &server_cfg.listen)?;
    let admin_socket = listeners::bind("server.admin_listen", &server_cfg.admin_listen)?;
    state.set_proxy_addr(proxy_socket.addr);
    let ready = listeners::Ready {
        proxy: proxy_socket.addr,
        admin: admin_socket.addr,
        pid: std::process::id(),
    };
    let tls = match &server_cfg.tls {
        Some(cfg) => Some((crate::tls::Certificates::load(cfg)?, cfg.admin)),
        None => None,
    };
    let listening = Listening {
        proxy: proxy_socket,
        admin: admin_socket,
        tls,
        h2c: server_cfg.h2c,
    };
    add_services(&mut server, &state, listening)?;
    // The sockets already accept connections into their backlog: the addresses are
    // true from here on, and requests wait only until the services start.
    let threads = server.configuration.threads;
    tracing::info!(proxy = %ready.proxy, admin = %ready.admin, threads, "weir listening");
    if let Some(path) = &ready_file {
        listeners::write_ready_file(path, &ready)?;
    }
    stop_when_idle(&server, &state, server_cfg.grace_period.0);
    server.run(RunArgs::default());
    // Every request has ended: write the last usage before the process goes.
    state.store.shutdown();
    tracing::info!("weir stopped");
    crate::logbuf::flush();
    Ok(())
}

/// Pingora sleeps the whole grace period after SIGTERM even with nothing to
/// finish, and drops what still runs at its end. Watches that period instead:
/// once no request is in flight (at once when idle, or as soon as the last stream
/// ends), the usage is written and the process exits. Streams still open shortly
/// before the period ends are cut (an error event to the client, their usage so
/// far counted as for any broken stream) and written before the process leaves.
fn stop_when_idle(server: &Server, state: &Arc<AppState>, grace: Duration) {
    let mut phases = server.watch_execution_phase();
    let state = state.clone();
    let watcher = std::thread::Builder::new()
        .name("weir-stop".into())
        .spawn(move || loop {
            match phases.blocking_recv() {
                Ok(pingora_core::server::ExecutionPhase::ShutdownGracePeriod) => {
                    // The cut leaves the relays time to write their ends and usage
                    // (Pingora drops whatever still runs when the period ends).
                    let cut_at = Instant::now() + grace - (grace / 2).min(Duration::from_secs(2));
                    let idle = || state.metrics.in_flight.get() <= 0;
                    if !idle() {
                        // A cut stream's usage may need the tokenizer: loaded now, not
                        // in the last moment (it takes a while, and a lot of memory
                        // that an instance never estimating should not carry).
                        let _ = std::thread::Builder::new()
                            .name("weir-tokenizer".into())
                            .spawn(weir_filters::usage::warm_up);
                    }
                    while !idle() && Instant::now() < cut_at {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if !idle() {
                        let open = state.metrics.in_flight.get();
                        tracing::warn!(open, "grace period over: cutting the requests still open");
                        state.stopping.send_replace(true);
                        let give_up = Instant::now() + Duration::from_secs(2);
                        while !idle() && Instant::now() < give_up {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    state.store.shutdown();
                    tracing::info!("weir stopped: nothing left in flight");
                    crate::logbuf::flush();
                    std::process::exit(0);
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        });
    if let Err(e) = watcher {
        tracing::warn!(error = %e, "cannot watch the stop; it waits the whole grace period");
    }
}

fn pingora_server(cfg: &ServerConfig) -> Server {
    let threads = if cfg.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        cfg.threads
    };
    let conf = ServerConf {
        threads,
        // Whole seconds here, rounded up: weir cuts and exits by the exact period
        // itself, and Pingora must not drop the streams before that (`1.5s` was
        // cut to 1 s).
        grace_period_seconds: Some(cfg.grace_period.0.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(5),
        ca_file: cfg.ca_file.clone(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), conf);
    server.bootstrap();
    server
}

/// How the two listeners serve: their sockets, TLS (with whether the admin
/// listener has it too), cleartext HTTP/2.
struct Listening {
    proxy: Bound,
    admin: Bound,
    tls: Option<(Arc<crate::tls::Certificates>, bool)>,
    h2c: bool,
}

/// The proxy and admin services on their sockets, and the reload watcher.
fn add_services(server: &mut Server, state: &Arc<AppState>, l: Listening) -> Result<(), String> {
    let Listening {
        proxy,
        admin,
        tls,
        h2c,
    } = l;
    let backend = Arc::new(Admin::new(state.clone(), proxy.addr));
    let manager = Arc::new(Manager::new(backend.clone()));
    let mut options = pingora_core::apps::HttpServerOptions::default();
    options.h2c = h2c;
    let mut proxy_service = Service::new(
        "weir proxy".to_string(),
        Weir {
            state: state.clone(),
            manager: manager.clone(),
            options,
        },
    );
    // Plain TCP: Pingora reads headers and bodies into its own buffers, so a 64 KiB L4
    // read buffer per client connection only adds a copy and resident memory.
    let mut proxy_listener = proxy
        .config()
        .l4_buffer(pingora_core::protocols::l4::stream::L4BufferSettings::default().read(0));
    let mut admin_listener = admin.config();
    if let Some((certs, on_admin)) = &tls {
        proxy_listener = proxy_listener.tls(certs.settings()?);
        if *on_admin {
            admin_listener = admin_listener.tls(certs.settings()?);
        }
        certs.watch();
    }
    proxy_service.add_listener(proxy_listener);
    let mut admin_service = Service::new("weir admin".to_string(), AdminApp::new(backend, manager));
    admin_service.add_listener(admin_listener);
    admin_service.threads = Some(1);
    let reloader = background_service(
        "config reload",
        Reloader {
            state: state.clone(),
        },
    );
    server.add_service(Adopting::new(proxy_service, vec![proxy]));
    server.add_service(Adopting::new(admin_service, vec![admin]));
    server.add_service(reloader);
    server.add_service(background_service(
        "mailer",
        crate::mail::Mailer {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "channel prober",
        Prober {
            state: state.clone(),
        },
    ));
    Ok(())
}
