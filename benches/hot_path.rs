//! Criterion benchmarks of the per-request functions on weir's hot path.
//! `cargo bench --bench hot_path`; numbers are recorded in benches/RESULTS.md.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::SeedableRng;
use weir_filters::config;
use weir_filters::request_body::JsonBody;
use weir_filters::response_body::SseTap;
use weir_filters::upstream_peer::failover_order;

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

criterion_group!(benches, body_rewrite, sse_usage, channel_pick);
criterion_main!(benches);
