//! The response cache (P10) shared on Redis: an answer stored through one
//! instance is answered by every other. Entries expire in Redis by their TTL;
//! while Redis is away each instance falls back to its own memory cache.

use super::Shared;
use crate::cache::{CacheKey, CacheStore, CachedAnswer, MemoryCache};
use async_trait::async_trait;
use bytes::Bytes;
use redis::AsyncCommands;
use std::sync::Arc;
use std::time::Duration;

pub struct SharedCache {
    shared: Arc<Shared>,
    local: MemoryCache,
}

impl SharedCache {
    pub fn new(shared: Arc<Shared>, max_bytes: u64) -> SharedCache {
        SharedCache {
            shared,
            local: MemoryCache::new(max_bytes),
        }
    }

    fn name(&self, key: &CacheKey, slot: u32) -> String {
        let mut hex = String::with_capacity(64);
        for b in key {
            hex.push_str(&format!("{b:02x}"));
        }
        format!("{}cache:{hex}:{slot}", self.shared.prefix())
    }
}

/// `[stream flag][content-type length, 2 bytes][content type][body]`.
pub fn encode(a: &CachedAnswer) -> Vec<u8> {
    let ct = a.content_type.as_bytes();
    let ct = &ct[..ct.len().min(u16::MAX as usize)];
    let mut out = Vec::with_capacity(3 + ct.len() + a.body.len());
    out.push(u8::from(a.stream));
    out.extend_from_slice(&(ct.len() as u16).to_be_bytes());
    out.extend_from_slice(ct);
    out.extend_from_slice(&a.body);
    out
}

pub fn decode(raw: &[u8]) -> Option<CachedAnswer> {
    let (&flag, rest) = raw.split_first()?;
    let len = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
    let ct = rest.get(2..2 + len)?;
    Some(CachedAnswer {
        content_type: String::from_utf8(ct.to_vec()).ok()?,
        body: Bytes::copy_from_slice(rest.get(2 + len..)?),
        stream: flag == 1,
    })
}

#[async_trait]
impl CacheStore for SharedCache {
    async fn get(&self, key: &CacheKey, slot: u32) -> Option<Arc<CachedAnswer>> {
        if !self.shared.is_up() {
            return self.local.lookup(key, slot);
        }
        let name = self.name(key, slot);
        let raw: Option<Vec<u8>> = self
            .shared
            .run_quiet(|mut conn| async move { conn.get(name).await })
            .await?;
        raw.as_deref().and_then(decode).map(Arc::new)
    }

    async fn put(&self, key: CacheKey, slot: u32, slots: u32, answer: CachedAnswer, ttl: Duration) {
        let ms = ttl.as_millis().min(u64::MAX as u128) as u64;
        if !self.shared.is_up() || ms == 0 {
            self.local.store(key, slot, slots, answer, ttl);
            return;
        }
        let (name, value) = (self.name(&key, slot), encode(&answer));
        let shared = self.shared.clone();
        tokio::spawn(async move {
            shared
                .run_quiet(
                    |mut conn| async move { conn.pset_ex::<_, _, ()>(name, value, ms).await },
                )
                .await;
        });
    }

    fn resize(&self, max_bytes: u64) {
        self.local.resize(max_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_survive_the_round_trip_and_garbage_is_no_answer() {
        let a = CachedAnswer {
            content_type: "text/event-stream".into(),
            body: Bytes::from_static(b"data: {}\n\n"),
            stream: true,
        };
        let back = decode(&encode(&a)).unwrap();
        assert_eq!(
            (back.content_type.as_str(), &back.body[..], back.stream),
            ("text/event-stream", &b"data: {}\n\n"[..], true)
        );
        assert!(decode(&[]).is_none());
        assert!(decode(&[0, 0, 9, b'x']).is_none());
    }
}
