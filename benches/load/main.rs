//! The load benchmark: a canned upstream, a bare Pingora hop and weir on loopback,
//! driven by wrk at several concurrencies, JSON and SSE; then 1,000 open streams and a
//! soak run for memory. Prints one table and writes benches/RESULTS.md.
//!
//! Run through `benches/load/run.sh` (it builds the release binaries and installs wrk).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    duration: u64,
    conns: Vec<u32>,
    streams: usize,
    soak: u64,
    out: Option<PathBuf>,
    /// `--half-soak SECS`: only the long soak at half saturation, with `--append
    /// FILE` to add its section to a results file.
    half_soak: Option<u64>,
    append: Option<PathBuf>,
    bin_dir: PathBuf,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    Opts {
        duration: arg("--duration")
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 3 } else { 10 }),
        conns: arg("--conns")
            .map(|v| v.split(',').filter_map(|c| c.parse().ok()).collect())
            .unwrap_or_else(|| vec![1, 16, 64, 256]),
        streams: arg("--streams")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
        soak: arg("--soak")
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 20 } else { 300 }),
        out: arg("--out").map(PathBuf::from),
        half_soak: arg("--half-soak").and_then(|v| v.parse().ok()),
        append: arg("--append").map(PathBuf::from),
        bin_dir: std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("target/release")),
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(bin: &Path, args: &[&str], log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::from(
            log.try_clone().unwrap_or_else(|e| panic!("{e}")),
        ))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    Proc(child)
}

#[path = "ready.rs"]
mod ready;
#[path = "shared.rs"]
mod shared;

/// How long a tool or weir may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Starts a bench tool on port 0 with a ready file; returns it and its port.
fn spawn_tool(bin: &Path, args: &[&str], dir: &Path, name: &str) -> (Proc, u16) {
    let ready_file = dir.join(format!("{name}.ready"));
    let log = dir.join(format!("{name}.log"));
    let mut all = args.to_vec();
    let ready_arg = ready_file.to_string_lossy().into_owned();
    all.extend(["--ready-file", &ready_arg]);
    let mut p = spawn(bin, &all, &log);
    let addr = ready::wait(&ready_file, &mut p.0, START_LIMIT)
        .and_then(|text| text.trim().parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| {
            panic!(
                "{name} did not report its address:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    (p, addr.port())
}

/// Starts `weir serve` on `config` (its listeners on port 0) and reads the ports it
/// got from its ready file; returns the process and its proxy port.
fn spawn_weir(bin: &Path, config: &Path, dir: &Path, name: &str) -> (Proc, u16) {
    let ready_file = dir.join(format!("{name}.ready"));
    let log = dir.join(format!("{name}.log"));
    let mut p = spawn(
        bin,
        &[
            "serve",
            "-c",
            &config.to_string_lossy(),
            "--ready-file",
            &ready_file.to_string_lossy(),
        ],
        &log,
    );
    let pid = p.0.id();
    // {"proxy":"127.0.0.1:P","admin":"127.0.0.1:Q","pid":N}, written by rename.
    let port = ready::wait(&ready_file, &mut p.0, START_LIMIT)
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .filter(|v| v["pid"].as_u64() == Some(u64::from(pid)))
        .and_then(|v| v["proxy"].as_str()?.parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| {
            panic!(
                "{name} did not report its addresses:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    (p, port.port())
}

/// (utime + stime) in seconds and RSS in KiB, from /proc.
fn proc_stats(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 0, utime 11, stime 12.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, rss)
}

/// Resident memory split as the kernel counts it: anonymous (heap, stacks) and
/// file-backed (the binary's pages that were read), in KiB.
fn rss_parts(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("RssAnon:"), field("RssFile:"))
}

#[derive(Clone, Copy, Default)]
struct Run {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    requests: f64,
    errors: f64,
}

fn to_us(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => n,
    }
}

fn wrk(port: u16, lua: &Path, conns: u32, secs: u64) -> Run {
    let threads = conns.min(2);
    let out = Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &conns.to_string(),
            "-d",
            &format!("{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(lua)
        .arg(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .output()
        .unwrap_or_else(|e| panic!("wrk: {e} (run benches/load/run.sh, which installs it)"));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r = Run::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            r.p50_us = to_us(v.trim());
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_us = to_us(v.trim());
        } else if t.contains("requests in") {
            r.requests = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
        } else if t.starts_with("Non-2xx") || t.starts_with("Socket errors") {
            r.errors += t
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<f64>().ok())
                .sum::<f64>();
        }
    }
    r
}

impl Run {
    /// Two runs of the same target as one: rates by total requests over total time,
    /// p50 averaged, p99 the worse.
    fn merge(self, o: Run) -> Run {
        let secs = |r: &Run| if r.rps > 0.0 { r.requests / r.rps } else { 0.0 };
        let t = secs(&self) + secs(&o);
        Run {
            rps: if t > 0.0 {
                (self.requests + o.requests) / t
            } else {
                0.0
            },
            p50_us: (self.p50_us + o.p50_us) / 2.0,
            p99_us: self.p99_us.max(o.p99_us),
            requests: self.requests + o.requests,
            errors: self.errors + o.errors,
        }
    }
}

fn lua(dir: &Path, name: &str, key: Option<&str>, stream: bool) -> PathBuf {
    let body = format!(
        r#"{{"model":"bench","stream":{stream},"messages":[{{"role":"system","content":"You are terse."}},{{"role":"user","content":"Write one sentence about foxes and dogs, please."}}]}}"#
    );
    let auth = key
        .map(|k| format!("wrk.headers[\"Authorization\"] = \"Bearer {k}\"\n"))
        .unwrap_or_default();
    let path = dir.join(format!("{name}.lua"));
    let script = format!("wrk.method = \"POST\"\nwrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n{auth}");
    std::fs::write(&path, script).unwrap_or_else(|e| panic!("{e}"));
    path
}

/// Median time to the first response byte over sequential requests.
fn ttfb(port: u16, key: Option<&str>, stream: bool, n: usize) -> f64 {
    use std::io::Read;
    let body = format!(
        r#"{{"model":"bench","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
    let _ = s.set_nodelay(true);
    let mut times = Vec::with_capacity(n);
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut got = s.read(&mut buf).unwrap_or(0);
        times.push(t.elapsed().as_secs_f64() * 1e6);
        // Read the rest of this answer (ends with a chunked terminator or a JSON body).
        let mut all = buf[..got].to_vec();
        while !(all.ends_with(b"0\r\n\r\n") || (!stream && all.ends_with(b"}"))) && got > 0 {
            got = s.read(&mut buf).unwrap_or(0);
            all.extend_from_slice(&buf[..got]);
        }
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let o = opts();
    let dir = tempdir();
    let bins = &o.bin_dir;
    let upstream_bin = bins.join("weir-bench-upstream");
    let (_up, up_port) = spawn_tool(&upstream_bin, &[], &dir, "upstream");
    let (_slow, slow_port) = spawn_tool(&upstream_bin, &["--slow-ms", "1000"], &dir, "slow");
    let bare_bin = bins.join("weir-bench-bare");
    let up_addr = format!("127.0.0.1:{up_port}");
    let (_bare, bare_port) = spawn_tool(&bare_bin, &["--upstream", &up_addr], &dir, "bare");
    // The reference for the memory run: the bare hop in front of the slow upstream.
    let slow_addr = format!("127.0.0.1:{slow_port}");
    let (bare_slow, bare_slow_port) =
        spawn_tool(&bare_bin, &["--upstream", &slow_addr], &dir, "bare-slow");
    // weir with a realistic config: database keys, a `secret:` rate limit that does
    // not trigger, usage accounting, metrics and the access log.
    let weir_bin = bins.join("weir");
    let setup_on = |name: &str, storage: &str| -> (PathBuf, String) {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "server:\n  listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n  threads: 2\n  grace_period: 1s\nstorage:\n  sqlite: {db}\n{storage}models:\n  - {{name: bench, price_in: 0.5, price_out: 1.5}}\nchannels:\n  - {{name: bench, type: openai, base_url: 'http://127.0.0.1:{up_port}', keys: [sk-upstream-bench-key], models: [bench]}}\n  - {{name: slow, type: openai, base_url: 'http://127.0.0.1:{slow_port}', models: [slow], timeouts: {{first_byte: 120s, total: 1h}}}}\ngateways:\n  - name: default\n    path: /v1\n    auth: {{method: database}}\n    rate_limits: ['secret:100000000/minute']\n",
                // Apart from the config: weir watches the config's directory.
                db = dir.join(format!("db-{name}")).join("weir.db").display()
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let created = Command::new(&weir_bin)
            .args(["keys", "create", "--name", "bench", "--models", "*", "-c"])
            .arg(&config)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let created: serde_json::Value = serde_json::from_slice(&created.stdout)
            .unwrap_or_else(|e| panic!("weir keys create: {e}"));
        let key = created["key"].as_str().unwrap_or_default().to_string();
        (config, key)
    };
    let setup = |name: &str| setup_on(name, "");
    let (config, key) = setup("weir");
    let (weir, weir_port) = spawn_weir(&weir_bin, &config, &dir, "weir");
    let weir_pid = weir.0.id();
    if let Some(secs) = o.half_soak {
        drop(weir);
        let text = half_soak(&dir, &weir_bin, &setup_on, secs);
        println!("{text}");
        if let Some(out) = &o.append {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(out)
                .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
            let _ = writeln!(f, "\n{text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    if std::env::args().any(|a| a == "--scale-out-only") {
        println!("{}", scale_out_cells(&o, &dir, &setup_on, weir_port, &key));
        drop(weir);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }

    let mut table = String::new();
    let _ = writeln!(table, "| mode | conns | upstream rps | bare rps | weir rps | weir/bare | bare p50 | weir p50 | bare p99 | weir p99 | weir CPU/req | weir RSS |");
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for stream in [false, true] {
        let mode = if stream { "stream" } else { "json" };
        let direct_lua = lua(&dir, &format!("direct-{mode}"), None, stream);
        let weir_lua = lua(&dir, &format!("weir-{mode}"), Some(&key), stream);
        // Warm pools and caches.
        wrk(weir_port, &weir_lua, 16, 2);
        wrk(bare_port, &direct_lua, 16, 2);
        for &c in &o.conns {
            let direct = wrk(up_port, &direct_lua, c, o.duration);
            // bare, weir, bare, weir, half the cell each: a disturbance on this shared
            // machine then falls on both sides instead of on one.
            let half = (o.duration / 2).max(1);
            let mut bare = Run::default();
            let mut w = Run::default();
            let mut cpu = 0.0;
            let mut rss = 0;
            for round in 0..2 {
                let b = wrk(bare_port, &direct_lua, c, half);
                let (cpu0, _) = proc_stats(weir_pid);
                let r = wrk(weir_port, &weir_lua, c, half);
                let (cpu1, now) = proc_stats(weir_pid);
                cpu += cpu1 - cpu0;
                rss = now;
                (bare, w) = if round == 0 {
                    (b, r)
                } else {
                    (bare.merge(b), w.merge(r))
                };
            }
            let cpu_per_req = if w.requests > 0.0 {
                cpu / w.requests * 1e6
            } else {
                f64::NAN
            };
            let ratio = w.rps / bare.rps;
            let _ = writeln!(
                table,
                "| {mode} | {c} | {:.0} | {:.0} | {:.0} | {ratio:.2} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {cpu_per_req:.0} µs | {:.1} MiB |",
                direct.rps, bare.rps, w.rps, bare.p50_us, w.p50_us, bare.p99_us, w.p99_us, rss as f64 / 1024.0
            );
            if w.errors > 0.0 || bare.errors > 0.0 {
                let _ = writeln!(
                    table,
                    "|  | errors: bare {} weir {} |  |  |  |  |  |  |  |  |  |  |",
                    bare.errors, w.errors
                );
            }
            summary.push((mode, c, ratio, w.p50_us - bare.p50_us));
            eprintln!(
                "{mode} c={c}: bare {:.0} rps, weir {:.0} rps ({ratio:.2}), p50 {:.0}/{:.0} µs",
                bare.rps, w.rps, bare.p50_us, w.p50_us
            );
        }
    }
    let shared_text = scale_out_cells(&o, &dir, &setup_on, weir_port, &key);
    let mut ttfb_text = String::new();
    for stream in [false, true] {
        let bare = ttfb(bare_port, None, stream, 2000);
        let w = ttfb(weir_port, Some(&key), stream, 2000);
        let _ = writeln!(
            ttfb_text,
            "- {}: time to first byte at one connection, median of 2,000: bare {bare:.0} µs, weir {w:.0} µs ({:+.0} µs)",
            if stream { "stream" } else { "json" },
            w - bare
        );
    }

    // Memory: many streams held open by the slow upstream, through a weir and a bare
    // hop that both start fresh, then through the weir that ran the cells above.
    let (mem_config, mem_key) = setup("weir-mem");
    let (weir_mem, mem_port) = spawn_weir(&weir_bin, &mem_config, &dir, "weir-mem");
    std::thread::sleep(Duration::from_millis(500));
    let mem_pid = weir_mem.0.id();
    let (_, fresh_before) = proc_stats(mem_pid);
    let fresh = hold_streams(mem_port, Some(&mem_key), o.streams, mem_pid);
    drop(weir_mem);
    let bare_slow_pid = bare_slow.0.id();
    let (_, bare_before) = proc_stats(bare_slow_pid);
    let bare_streams = hold_streams(bare_slow_port, None, o.streams, bare_slow_pid).rss;
    drop(bare_slow);
    let (_, rss_before) = proc_stats(weir_pid);
    let rss_streams = hold_streams(weir_port, Some(&key), o.streams, weir_pid).rss;
    // Soak: JSON at 64 connections; RSS sampled as it runs.
    let soak_lua = lua(&dir, "soak", Some(&key), false);
    let mut samples = Vec::new();
    let soak_start = Instant::now();
    let mut soak_child = Command::new("wrk")
        .args(["-t", "2", "-c", "64", "-d", &format!("{}s", o.soak), "-s"])
        .arg(&soak_lua)
        .arg(format!("http://127.0.0.1:{weir_port}/v1/chat/completions"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("wrk: {e}"));
    while soak_start.elapsed() < Duration::from_secs(o.soak) {
        std::thread::sleep(Duration::from_secs((o.soak / 10).max(1)));
        samples.push(proc_stats(weir_pid).1);
    }
    let _ = soak_child.wait();
    let soak_text = format!(
        "- soak: {} s of JSON at 64 connections, RSS sampled every {} s: {} MiB",
        o.soak,
        (o.soak / 10).max(1),
        samples
            .iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let machine = machine();
    let verdict: Vec<String> = summary
        .iter()
        .filter(|(_, c, _, _)| *c == 16 || *c == 64)
        .map(|(m, c, r, _)| {
            format!(
                "{m}@{c}: {r:.2}× {}",
                if *r >= 0.9 {
                    "(≥ 0.9, met)"
                } else {
                    "(< 0.9, NOT met)"
                }
            )
        })
        .collect();
    let p50_one: Vec<String> = summary
        .iter()
        .filter(|(_, c, _, _)| *c == 1)
        .map(|(m, _, _, d)| {
            format!(
                "{m}: {d:+.0} µs {}",
                if *d <= 50.0 {
                    "(≤ 50, met)"
                } else {
                    "(> 50, NOT met)"
                }
            )
        })
        .collect();
    let report = format!(
        "# Load benchmark results\n\nRun: {date}, {dur} s per cell (bare and weir alternate in two halves), wrk with `-t min(c,2)`.\n\n{machine}\n\n{table}\n{ttfb_text}- memory, {n} streams open at once, each process started fresh: weir RSS {fresh_before:.1} MiB idle, {fresh_rss:.1} MiB with the streams open ({per_fresh:.1} KiB per stream; {fresh_anon:.1} MiB anonymous, {fresh_file:.1} MiB pages of the binary); the bare hop {bare_before:.1} MiB idle, {bare_streams:.1} MiB ({per_bare:.1} KiB per stream)\n- memory, the same {n} streams through the weir that ran the cells above: {before:.1} MiB idle, {streams_rss:.1} MiB with the streams open (the allocator keeps pages freed after the 256-connection cells for reuse)\n{soak_text}\n\n{shared_text}\n\nBudget (weir/bare throughput at 16 and 64 connections): {verdict}.\n\np50 at one connection, weir minus bare: {p50}.\n",
        date = date(),
        dur = o.duration,
        before = rss_before as f64 / 1024.0,
        streams_rss = rss_streams as f64 / 1024.0,
        fresh_before = fresh_before as f64 / 1024.0,
        fresh_rss = fresh.rss as f64 / 1024.0,
        per_fresh = fresh.rss.saturating_sub(fresh_before) as f64 / o.streams.max(1) as f64,
        fresh_anon = fresh.anon as f64 / 1024.0,
        fresh_file = fresh.file as f64 / 1024.0,
        bare_before = bare_before as f64 / 1024.0,
        bare_streams = bare_streams as f64 / 1024.0,
        per_bare = bare_streams.saturating_sub(bare_before) as f64 / o.streams.max(1) as f64,
        n = o.streams,
        verdict = verdict.join("; "),
        p50 = p50_one.join("; "),
    );
    println!("{report}");
    if let Some(path) = &o.out {
        std::fs::write(path, &report).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
    }
    drop(weir);
    // The run's databases and logs are large (the soak's call log): not kept.
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a process held with the streams open: highest RSS, and its anonymous and
/// file-backed parts at that moment (KiB).
#[derive(Clone, Copy, Default)]
struct Held {
    rss: u64,
    anon: u64,
    file: u64,
}

/// Opens `n` streaming requests to the slow model at once (24 chunks a second
/// apart) and samples the process's RSS while they are all open; the streams then
/// run to their end, usage chunk included, as clients would.
fn hold_streams(port: u16, key: Option<&str>, n: usize, pid: u32) -> Held {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = r#"{"model":"slow","stream":true,"messages":[{"role":"user","content":"hold"}]}"#;
        let auth = key
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut tasks = Vec::new();
        for _ in 0..n {
            let req = req.clone();
            tasks.push(tokio::spawn(async move {
                let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    return 0usize;
                };
                if s.write_all(req.as_bytes()).await.is_err() {
                    return 0;
                }
                let mut buf = vec![0u8; 4096];
                let mut total = 0;
                // To the end of the stream (~24 s), or 40 s at most.
                let _ = tokio::time::timeout(Duration::from_secs(40), async {
                    while let Ok(k) = s.read(&mut buf).await {
                        if k == 0 {
                            break;
                        }
                        total += k;
                    }
                })
                .await;
                total
            }));
        }
        let mut peak = Held::default();
        // The first stream ends after ~24 s: sample well before that.
        for _ in 0..16 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss = proc_stats(pid).1;
            if rss > peak.rss {
                let (anon, file) = rss_parts(pid);
                peak = Held { rss, anon, file };
            }
        }
        let mut open = 0;
        for t in tasks {
            if t.await.unwrap_or(0) > 0 {
                open += 1;
            }
        }
        eprintln!("{open} of {n} streams received data");
        peak
    })
}

/// The scale-out cells (S1): JSON through a weir on Redis-backed limits and a
/// PostgreSQL store against the single-instance weir on SQLite, alternating.
fn scale_out_cells(
    o: &Opts,
    dir: &Path,
    setup_on: &dyn Fn(&str, &str) -> (PathBuf, String),
    weir_port: u16,
    key: &str,
) -> String {
    let Some((_redis, redis_url)) = shared::redis(dir) else {
        return "- scale-out: not run (no redis-server)".into();
    };
    let Some((_pg, pg_url)) = shared::postgres(dir) else {
        return "- scale-out: not run (no PostgreSQL)".into();
    };
    let redis = format!("  redis: {{url: '{redis_url}', timeout: 5ms}}\n");
    let postgres = format!("  postgres: '{pg_url}'\n");
    let variants = [
        ("redis + sqlite", redis.clone()),
        ("postgres", postgres.clone()),
        ("redis + postgres", format!("{redis}{postgres}")),
    ];
    let single_lua = lua(dir, "single-json", Some(key), false);
    let mut lines = vec![
        "Scale-out (S1): a weir with its limits on Redis (one admission script per request, 5 ms budget) and/or its store on PostgreSQL, against the single-instance weir on SQLite; JSON, alternating halves as above. Redis and PostgreSQL run on the same cores.".to_string(),
        String::new(),
        "| backends | conns | single rps | shared rps | shared/single | single p50 | shared p50 | single p99 | shared p99 | shared CPU/req |".into(),
        "|---|---|---|---|---|---|---|---|---|---|".into(),
    ];
    for (i, (label, storage)) in variants.iter().enumerate() {
        let name = format!("weir-shared-{i}");
        let (config, shared_key) = setup_on(&name, storage);
        let (shared_weir, shared_port) = spawn_weir(&o.bin_dir.join("weir"), &config, dir, &name);
        let pid = shared_weir.0.id();
        let shared_lua = lua(dir, &format!("{name}-json"), Some(&shared_key), false);
        wrk(shared_port, &shared_lua, 16, 2);
        for &c in o.conns.iter().filter(|&&c| c == 16 || c == 64) {
            let half = (o.duration / 2).max(1);
            let (mut one, mut many) = (Run::default(), Run::default());
            let mut cpu = 0.0;
            for round in 0..2 {
                let a = wrk(weir_port, &single_lua, c, half);
                let (cpu0, _) = proc_stats(pid);
                let b = wrk(shared_port, &shared_lua, c, half);
                cpu += proc_stats(pid).0 - cpu0;
                (one, many) = if round == 0 {
                    (a, b)
                } else {
                    (one.merge(a), many.merge(b))
                };
            }
            let ratio = many.rps / one.rps;
            let per_req = cpu / many.requests.max(1.0) * 1e6;
            eprintln!(
                "scale-out {label} c={c}: single {:.0} rps, shared {:.0} rps ({ratio:.2})",
                one.rps, many.rps
            );
            lines.push(format!(
                "| {label} | {c} | {:.0} | {:.0} | {ratio:.2} {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {per_req:.0} µs |",
                one.rps,
                many.rps,
                if ratio >= 0.8 { "(≥ 0.8, met)" } else { "(< 0.8, NOT met)" },
                one.p50_us,
                many.p50_us,
                one.p99_us,
                many.p99_us
            ));
            if many.errors > 0.0 {
                lines.push(format!(
                    "|  |  | errors: shared {} |  |  |  |  |  |  |  |",
                    many.errors
                ));
            }
        }
    }
    lines.join("\n")
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weir-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir
}

fn date() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    format!(
        "Machine: {cores} cores, {cpu}, Linux {}, {}. The upstream, the bare proxy, weir and wrk share these cores: only ratios taken in one run mean anything.",
        kernel.trim(),
        mem.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
    )
}

/// The long soak (issue 14): JSON and streams together at half of what weir
/// serves saturated, through a weir whose call log is pruned after 5 minutes (so
/// the store reaches its steady size); RSS, open file descriptors and the database
/// size sampled every minute. Flat lines are the result wanted.
fn half_soak(
    dir: &Path,
    weir_bin: &Path,
    setup_on: &dyn Fn(&str, &str) -> (PathBuf, String),
    secs: u64,
) -> String {
    let (config, key) = setup_on("weir-soak", "logs: {keep: 5m, keep_failed_bodies: 5m}\n");
    let (weir, port) = spawn_weir(weir_bin, &config, dir, "weir-soak");
    let pid = weir.0.id();
    let json = lua(dir, "soak-json", Some(&key), false);
    let stream = lua(dir, "soak-stream", Some(&key), true);
    wrk(port, &json, 16, 2);
    let full_json = wrk(port, &json, 16, 10).rps;
    let full_stream = wrk(port, &stream, 16, 10).rps;
    // A quarter of each saturated rate, together about half of what weir serves.
    // wrk paces with a whole-millisecond delay per connection: 10 ms plus the
    // request's own time, so the connection count sets the rate.
    const PACE_MS: f64 = 10.0;
    let pace = |name: &str, stream: bool, rate: f64| -> (PathBuf, u32) {
        let path = lua(dir, name, Some(&key), stream);
        let mut script = std::fs::read_to_string(&path).unwrap_or_default();
        script.push_str(&format!("function delay() return {PACE_MS} end\n"));
        std::fs::write(&path, script).unwrap_or_else(|e| panic!("{e}"));
        let latency_ms = if stream { 1.0 } else { 0.3 };
        let conns = (rate * (PACE_MS + latency_ms) / 1000.0).round().max(1.0) as u32;
        (path, conns)
    };
    let (json_paced, json_conns) = pace("soak-json-paced", false, full_json / 4.0);
    let (stream_paced, stream_conns) = pace("soak-stream-paced", true, full_stream / 4.0);
    let drive = |lua: &Path, conns: u32| {
        Command::new("wrk")
            .args([
                "-t",
                "1",
                "-c",
                &conns.to_string(),
                "-d",
                &format!("{secs}s"),
                "-s",
            ])
            .arg(lua)
            .arg(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("wrk: {e}"))
    };
    let db = dir.join("db-weir-soak");
    let sample = |at: u64| -> String {
        let (cpu, rss) = proc_stats(pid);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        let db_bytes: u64 = std::fs::read_dir(&db)
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        format!(
            "| {} | {:.1} | {fds} | {:.0} | {cpu:.0} |",
            at / 60,
            rss as f64 / 1024.0,
            db_bytes as f64 / 1048576.0
        )
    };
    let mut rows = vec![sample(0)];
    let start = Instant::now();
    let json_run = drive(&json_paced, json_conns);
    let stream_run = drive(&stream_paced, stream_conns);
    let step = 60.min(secs.max(1));
    let mut next = step;
    while next <= secs {
        let wait = Duration::from_secs(next).saturating_sub(start.elapsed());
        std::thread::sleep(wait);
        rows.push(sample(next));
        next += step;
    }
    let summary = |child: Child, what: &str| -> String {
        let out = child
            .wait_with_output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&out);
        let find = |part: &str| {
            text.lines()
                .find(|l| l.contains(part))
                .map(|l| l.trim().to_string())
                .unwrap_or_default()
        };
        let bad = [find("Non-2xx"), find("Socket errors")]
            .into_iter()
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        format!(
            "{what}: {} ({}){}",
            find("Requests/sec:"),
            find("requests in"),
            if bad.is_empty() {
                String::new()
            } else {
                format!(", {bad}")
            }
        )
    };
    let json_text = summary(json_run, "JSON");
    let stream_text = summary(stream_run, "streams");
    format!(
        "## Soak at half saturation ({date})\n\n`benches/load/run.sh --half-soak {secs}`: {secs} s of JSON and streams together through one weir (database keys, usage into SQLite with `logs.keep: 5m`, so rows are pruned as they age). Saturated at 16 connections it served {full_json:.0} JSON or {full_stream:.0} stream requests/s; the soak paces each at a quarter of that ({json_conns} and {stream_conns} connections, each waiting {PACE_MS} ms between requests). {json_text}; {stream_text}.\n\n{}\n\n| minute | RSS MiB | open fds | database MiB | CPU s |\n|---|---|---|---|---|\n{}\n",
        machine(),
        rows.join("\n"),
        date = date(),
    )
}
