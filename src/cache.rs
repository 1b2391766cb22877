//! The response cache's store (P10): answers by request digest, a few per digest,
//! each with an expiry, in memory under a byte budget (least recently used go
//! first). Behind the async `CacheStore` so a shared (Redis) store can take its place.

use async_trait::async_trait;
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

#[async_trait]
pub trait CacheStore: Send + Sync {
    /// The answer in `slot` of `key`, when there is a fresh one.
    async fn get(&self, key: &CacheKey, slot: u32) -> Option<Arc<CachedAnswer>>;
    /// Stores an answer; a store may do this in the background.
    async fn put(&self, key: CacheKey, slot: u32, slots: u32, answer: CachedAnswer, ttl: Duration);
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

/// What an entry costs beyond its answers: key, slot list, list node.
const ENTRY_OVERHEAD: u64 = 128;

/// What an answer costs the budget.
fn weight(a: &CachedAnswer) -> u64 {
    a.body.len() as u64 + a.content_type.len() as u64 + 64
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
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lookup(&self, key: &CacheKey, slot: u32) -> Option<Arc<CachedAnswer>> {
        let mut inner = self.lock();
        let now = Instant::now();
        let entry = inner.map.peek_mut(key)?;
        let (hit, freed) = match entry.slots.get_mut(slot as usize) {
            Some(cell @ Some(_)) => match cell {
                Some((answer, expires)) if *expires > now => (Some(answer.clone()), 0),
                Some((answer, _)) => {
                    // Expired: free it so the next miss refills the slot.
                    let w = weight(answer);
                    *cell = None;
                    (None, w)
                }
                None => (None, 0),
            },
            _ => (None, 0),
        };
        entry.bytes -= freed;
        let empty = entry.slots.iter().all(Option::is_none);
        inner.bytes -= freed;
        if empty {
            if let Some(e) = inner.map.pop(key) {
                inner.bytes -= e.bytes;
            }
        } else if hit.is_some() {
            // Only a hit counts as use: expired entries must not look recent.
            inner.map.promote(key);
        }
        hit
    }

    pub fn store(&self, key: CacheKey, slot: u32, slots: u32, answer: CachedAnswer, ttl: Duration) {
        let mut inner = self.lock();
        let w = weight(&answer);
        if w + ENTRY_OVERHEAD > inner.max_bytes {
            return;
        }
        let slots = slots.max(slot + 1) as usize;
        let cell = Some((Arc::new(answer), Instant::now() + ttl));
        let (added, freed) = match inner.map.get_mut(&key) {
            Some(entry) => {
                if entry.slots.len() < slots {
                    entry.slots.resize(slots, None);
                }
                let freed = entry.slots[slot as usize]
                    .take()
                    .map(|(old, _)| weight(&old))
                    .unwrap_or(0);
                entry.slots[slot as usize] = cell;
                entry.bytes = entry.bytes + w - freed;
                (w, freed)
            }
            None => {
                let mut entry = Entry {
                    slots: vec![None; slots],
                    bytes: w + ENTRY_OVERHEAD,
                };
                entry.slots[slot as usize] = cell;
                inner.map.put(key, entry);
                (w + ENTRY_OVERHEAD, 0)
            }
        };
        inner.bytes = inner.bytes + added - freed;
        inner.evict();
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

#[async_trait]
impl CacheStore for MemoryCache {
    async fn get(&self, key: &CacheKey, slot: u32) -> Option<Arc<CachedAnswer>> {
        self.lookup(key, slot)
    }

    async fn put(&self, key: CacheKey, slot: u32, slots: u32, answer: CachedAnswer, ttl: Duration) {
        self.store(key, slot, slots, answer, ttl)
    }

    fn resize(&self, max_bytes: u64) {
        let mut inner = self.lock();
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

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn stores_per_slot_and_expires() {
        let c = MemoryCache::new(1 << 20);
        c.store([1; 32], 0, 2, answer(10), MIN);
        assert!(c.lookup(&[1; 32], 0).is_some());
        assert!(c.lookup(&[1; 32], 1).is_none());
        c.store([1; 32], 1, 2, answer(10), Duration::ZERO);
        assert!(c.lookup(&[1; 32], 1).is_none(), "expired");
        assert_eq!(c.bytes(), weight(&answer(10)) + ENTRY_OVERHEAD);
        // An entry whose last answer expired is gone, overhead included.
        c.store([2; 32], 0, 1, answer(10), Duration::ZERO);
        assert!(c.lookup(&[2; 32], 0).is_none());
        assert_eq!(c.bytes(), weight(&answer(10)) + ENTRY_OVERHEAD);
    }

    #[test]
    fn evicts_least_recently_used_within_the_budget() {
        let one = weight(&answer(100)) + ENTRY_OVERHEAD;
        let c = MemoryCache::new(3 * one);
        for k in 0..3u8 {
            c.store([k; 32], 0, 1, answer(100), MIN);
        }
        assert!(c.lookup(&[0; 32], 0).is_some()); // 0 is now the most recent
        c.store([9; 32], 0, 1, answer(100), MIN);
        assert!(c.lookup(&[1; 32], 0).is_none(), "1 was least recently used");
        assert!(c.lookup(&[0; 32], 0).is_some() && c.lookup(&[9; 32], 0).is_some());
        assert!(c.bytes() <= 3 * one);
        c.store([1; 32], 0, 1, answer(10_000), MIN);
        assert!(
            c.lookup(&[1; 32], 0).is_none(),
            "larger than the whole budget"
        );
        c.resize(0);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn replacing_a_slot_keeps_the_count_right() {
        let c = MemoryCache::new(1 << 20);
        c.store([1; 32], 0, 1, answer(10), MIN);
        c.store([1; 32], 0, 1, answer(20), MIN);
        assert_eq!(c.bytes(), weight(&answer(20)) + ENTRY_OVERHEAD);
    }
}
