//! The response cache's store (P10): answers by request digest, a few per digest,
//! each with an expiry, in memory under a byte budget (least recently used go
//! first). Behind `CacheStore` so a shared (Redis) store can take its place.

use bytes::Bytes;
use lru::LruCache;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type CacheKey = [u8; 32];

/// One answer exactly as a client received it.
#[derive(Debug, Clone)]
pub struct CachedAnswer {
    pub content_type: String,
    pub body: Bytes,
    /// Replayed as SSE (chunked) rather than JSON (with a length).
    pub stream: bool,
}

pub trait CacheStore: Send + Sync {
    /// The answer in `slot` of `key`, when there is a fresh one.
    fn get(&self, key: &CacheKey, slot: u32) -> Option<Arc<CachedAnswer>>;
    fn put(&self, key: CacheKey, slot: u32, slots: u32, answer: CachedAnswer, ttl: Duration);
    /// A new byte budget (after a reload); evicts down to it.
    fn resize(&self, max_bytes: u64);
}

struct Entry {
    slots: Vec<Option<(Arc<CachedAnswer>, Instant)>>,
    bytes: u64,
}

struct Inner {
    map: LruCache<CacheKey, Entry>,
    bytes: u64,
    max_bytes: u64,
}

pub struct MemoryCache {
    inner: Mutex<Inner>,
}

impl MemoryCache {
    pub fn new(max_bytes: u64) -> Self {
        MemoryCache {
            inner: Mutex::new(Inner {
                map: LruCache::unbounded(),
                bytes: 0,
                max_bytes,
            }),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

impl Inner {
    fn evict(&mut self) {
        while self.bytes > self.max_bytes {
            match self.map.pop_lru() {
                Some((_, e)) => self.bytes -= e.bytes,
                None => break,
            }
        }
    }
}

/// What an answer costs the budget: its body and some bookkeeping.
fn weight(a: &CachedAnswer) -> u64 {
    a.body.len() as u64 + a.content_type.len() as u64 + 64
}

impl CacheStore for MemoryCache {
    fn get(&self, key: &CacheKey, slot: u32) -> Option<Arc<CachedAnswer>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let entry = inner.map.get_mut(key)?;
        let cell = entry.slots.get_mut(slot as usize)?;
        match cell {
            Some((answer, expires)) if *expires > Instant::now() => Some(answer.clone()),
            Some((answer, _)) => {
                // Expired: drop it so the next miss refills the slot.
                let w = weight(answer);
                *cell = None;
                entry.bytes -= w;
                inner.bytes -= w;
                None
            }
            None => None,
        }
    }

    fn put(&self, key: CacheKey, slot: u32, slots: u32, answer: CachedAnswer, ttl: Duration) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let w = weight(&answer);
        if w > inner.max_bytes {
            return;
        }
        let expires = Instant::now() + ttl;
        let slots = slots.max(slot + 1) as usize;
        let answer = Some((Arc::new(answer), expires));
        let mut freed = 0;
        match inner.map.get_mut(&key) {
            Some(entry) => {
                if entry.slots.len() < slots {
                    entry.slots.resize(slots, None);
                }
                if let Some((old, _)) = entry.slots[slot as usize].take() {
                    freed = weight(&old);
                }
                entry.slots[slot as usize] = answer;
                entry.bytes = entry.bytes + w - freed;
            }
            None => {
                let mut entry = Entry {
                    slots: vec![None; slots],
                    bytes: w,
                };
                entry.slots[slot as usize] = answer;
                inner.map.put(key, entry);
            }
        }
        inner.bytes = inner.bytes + w - freed;
        inner.evict();
    }

    fn resize(&self, max_bytes: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.max_bytes = max_bytes;
        inner.evict();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(n: usize) -> CachedAnswer {
        CachedAnswer {
            content_type: "application/json".into(),
            body: Bytes::from(vec![b'x'; n]),
            stream: false,
        }
    }

    #[test]
    fn stores_per_slot_and_expires() {
        let c = MemoryCache::new(1 << 20);
        c.put([1; 32], 0, 2, answer(10), Duration::from_secs(60));
        assert!(c.get(&[1; 32], 0).is_some());
        assert!(c.get(&[1; 32], 1).is_none());
        c.put([1; 32], 1, 2, answer(10), Duration::ZERO);
        assert!(c.get(&[1; 32], 1).is_none(), "expired");
        assert_eq!(c.bytes(), weight(&answer(10)));
    }

    #[test]
    fn evicts_least_recently_used_within_the_budget() {
        let c = MemoryCache::new(3 * weight(&answer(100)));
        for k in 0..3u8 {
            c.put([k; 32], 0, 1, answer(100), Duration::from_secs(60));
        }
        assert!(c.get(&[0; 32], 0).is_some()); // 0 is now the most recent
        c.put([9; 32], 0, 1, answer(100), Duration::from_secs(60));
        assert!(c.get(&[1; 32], 0).is_none(), "1 was least recently used");
        assert!(c.get(&[0; 32], 0).is_some() && c.get(&[9; 32], 0).is_some());
        assert!(c.bytes() <= 3 * weight(&answer(100)));
        c.put([1; 32], 0, 1, answer(10_000), Duration::from_secs(60));
        assert!(c.get(&[1; 32], 0).is_none(), "larger than the whole budget");
        c.resize(0);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn replacing_a_slot_keeps_the_count_right() {
        let c = MemoryCache::new(1 << 20);
        c.put([1; 32], 0, 1, answer(10), Duration::from_secs(60));
        c.put([1; 32], 0, 1, answer(20), Duration::from_secs(60));
        assert_eq!(c.bytes(), weight(&answer(20)));
    }
}
