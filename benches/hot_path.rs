//! Criterion benchmarks of the per-request functions on weir's hot path.
//! `cargo bench --bench hot_path`; numbers are recorded in benches/RESULTS.md.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::SeedableRng;
use weir_filters::config;
use weir_filters::failover::failover_order;
use weir_filters::request_body::JsonBody;
use weir_filters::response_body::SseTap;
use weir_filters::route::Endpoint;

fn chat_body(content_len: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o",
        "stream": true,
        "temperature": 0.2,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "x".repeat(content_len)},
        ],
    }))
    .unwrap_or_default()
}

fn body_rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_body");
    for (name, len) in [("2KB", 2 * 1024), ("1MiB", 1024 * 1024)] {
        let raw = chat_body(len);
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("parse_map_include_usage", name),
            &raw,
            |b, raw| {
                b.iter(|| {
                    let mut body =
                        JsonBody::parse(black_box(raw)).unwrap_or_else(|e| panic!("{e}"));
                    let facts = body.facts().unwrap_or_else(|e| panic!("{e}"));
                    weir_filters::shape::check(Endpoint::ChatCompletions, &body)
                        .unwrap_or_else(|e| panic!("{e}"));
                    body.ensure_stream_usage().unwrap_or_else(|e| panic!("{e}"));
                    body.set("model", &"qwen2-7b")
                        .unwrap_or_else(|e| panic!("{e}"));
                    black_box((facts, body.to_bytes()))
                })
            },
        );
    }
    g.finish();
}

fn sse_stream(chunks: usize) -> Vec<Bytes> {
    let mut out: Vec<Bytes> = (0..chunks)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"finish_reason\":null}}]}}\n\n"
            ))
        })
        .collect();
    out.push(Bytes::from_static(b"data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"));
    out.push(Bytes::from_static(b"data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":24,\"total_tokens\":34}}\n\n"));
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

fn sse_usage(c: &mut Criterion) {
    let stream = sse_stream(24);
    let mut g = c.benchmark_group("sse_tap_24_chunks");
    for (name, strip) in [("observe", false), ("strip_usage", true)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut tap = SseTap::new(strip);
                for chunk in &stream {
                    black_box(tap.feed(chunk.clone()));
                }
                black_box(tap.usage)
            })
        });
    }
    g.finish();
}

fn channel_pick(c: &mut Criterion) {
    let yaml = "channels:\n  - {name: a, type: mock, models: [m], priority: 10, weight: 4}\n  - {name: b, type: mock, models: [m], priority: 10, weight: 1}\n  - {name: c, type: mock, models: [m], priority: 5}\n  - {name: d, type: mock, models: [default]}\n";
    let rt = config::parse(yaml).unwrap_or_else(|e| panic!("{e}"));
    let gw = &rt.gateways[0];
    let mut rng = StdRng::seed_from_u64(1);
    c.bench_function("route_and_failover_order", |b| {
        b.iter(|| {
            let (routes, _) = rt.routes(gw, black_box("m"), "default").unwrap_or_default();
            black_box(failover_order(&routes, &rt.channels, &mut rng))
        })
    });
}

/// The upstream request's bytes: head with a provider key, and a 2 KB body behind it.
fn upstream_request(c: &mut Criterion) {
    use weir_filters::upstream_request::{encode, RequestHead};
    let headers = [("authorization", "Bearer sk-upstream-bench-key".to_string())];
    let body = chat_body(2 * 1024);
    let head = RequestHead {
        authority: "api.example.com",
        path: "/v1/chat/completions",
        accept: Some("text/event-stream"),
        headers: &headers,
    };
    c.bench_function("upstream_request_head_and_2KB_body", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            let inline = encode(black_box(&head), black_box(&body), &mut out);
            black_box((inline, out))
        })
    });
}

criterion_group!(
    benches,
    body_rewrite,
    sse_usage,
    channel_pick,
    upstream_request
);

/// Key extraction and lookup, JWT verification and the rate-limit check: the
/// admission work every authenticated request does.
mod admission {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use std::collections::HashMap;
    use weir::accounts::Accounts;
    use weir_filters::auth::{hash_key, strip_bearer, JwtSettings, JwtVerifier};

    pub fn key_lookup(c: &mut Criterion) {
        let keys: HashMap<String, u64> = (0..10_000u64)
            .map(|i| (hash_key(&format!("sk-bench-key-{i:040}")), i))
            .collect();
        let header = format!("Bearer sk-bench-key-{:040}", 4242);
        c.bench_function("key_extract_and_lookup_10k_keys", |b| {
            b.iter(|| {
                let key = strip_bearer(black_box(&header));
                black_box(keys.get(&hash_key(key)))
            })
        });
    }

    pub fn jwt_verify(c: &mut Criterion) {
        let secret = "bench-secret-0123456789abcdef0123";
        let algs = ["HS256".to_string()];
        let v = JwtVerifier::new(&JwtSettings {
            secret: Some(secret),
            public_key_pem: None,
            algorithms: &algs,
            identity_claim: "sub",
            group_claim: None,
            leeway_secs: 0,
            audience: None,
            issuer: None,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() + 3600)
            .unwrap_or(0);
        let token = encode(
            &Header::default(),
            &serde_json::json!({"sub": "alice", "exp": exp}),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        c.bench_function("jwt_verify_hs256", |b| {
            b.iter(|| black_box(v.verify(black_box(&token))))
        });
    }

    pub fn rate_limit(c: &mut Criterion) {
        let rt = config::parse(
            "gateways:\n  - {name: g, path: /v1, auth: {method: regex, regex: '.+'}, rate_limits: ['secret:1000000000/minute', 'secret:1000000000/day', 'ingress:1000000000/hour']}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let accounts = Accounts::default();
        let gw = &rt.gateways[0];
        // One ms further at each call: a new minute bucket every time, as under load.
        let mut now = 1_767_262_650_000u64;
        c.bench_function("rate_limit_check_3_rules", |b| {
            b.iter(|| {
                now += 1;
                black_box(accounts.check_rates(gw, black_box("key:42"), now).is_ok())
            })
        });
    }
}

fn shaping(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_shaping");
    let map: indexmap::IndexMap<String, (serde_json::Value, serde_json::Value)> = [(
        "model".to_string(),
        (serde_json::json!("gpt-4o"), serde_json::json!("qwen2-7b")),
    )]
    .into_iter()
    .collect();
    let fixed: indexmap::IndexMap<String, serde_json::Value> = [
        ("temperature".to_string(), serde_json::json!(0.2)),
        ("metadata.team".to_string(), serde_json::json!("a")),
    ]
    .into_iter()
    .collect();
    for (name, len) in [("2KB", 2 * 1024), ("1MiB", 1024 * 1024)] {
        let raw = chat_body(len);
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("template_map_fixed", name),
            &raw,
            |b, raw| {
                b.iter(|| {
                    let mut body =
                        JsonBody::parse(black_box(raw)).unwrap_or_else(|e| panic!("{e}"));
                    body.apply_template("Answer as an expert. Question: {{query}}")
                        .unwrap_or_else(|e| panic!("{e}"));
                    body.map_params(&map).unwrap_or_else(|e| panic!("{e}"));
                    body.fix_params(&fixed).unwrap_or_else(|e| panic!("{e}"));
                    black_box(body.to_bytes())
                })
            },
        );
    }
    g.finish();
}

criterion_group!(
    access,
    admission::key_lookup,
    admission::jwt_verify,
    admission::rate_limit,
    shaping
);

criterion_main!(benches, access);
