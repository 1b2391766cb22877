//! Channel health shared by every instance on one Redis (S1): a suspension, a
//! trial under way and a recovery decided by one instance are published and
//! applied by the others, so one instance's finding spares them the same failed
//! requests and a suspended channel sees one trial, not one per instance.
//! Best effort by nature: a message lost while Redis is away only means each
//! instance learns for itself, as without Redis.

use super::Shared;
use futures_util::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use weir_filters::health::{HealthEvent, HealthId, HealthRegistry};

/// Findings waiting to be published; beyond this they are dropped (each
/// instance still decides for itself).
const OUTBOX: usize = 4096;

pub type Apply = Arc<dyn Fn(&HealthId, &HealthEvent) + Send + Sync>;

/// One finding as published: who found it, what, about which channel or key.
pub fn message(from: u64, id: &HealthId, e: &HealthEvent) -> String {
    let (event, for_ms, reason) = match e {
        HealthEvent::Suspended { for_ms, reason } => ("suspended", *for_ms, reason.as_str()),
        HealthEvent::Trial => ("trial", 0, ""),
        HealthEvent::Recovered => ("recovered", 0, ""),
    };
    json!({"from": from, "channel": id.channel, "key": id.key, "event": event,
           "for_ms": for_ms, "reason": reason})
    .to_string()
}

pub fn parse(text: &str) -> Option<(u64, HealthId, HealthEvent)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let id = HealthId {
        channel: v["channel"].as_str()?.to_string(),
        key: v["key"].as_u64(),
    };
    let event = match v["event"].as_str()? {
        "suspended" => HealthEvent::Suspended {
            for_ms: v["for_ms"].as_u64()?,
            reason: v["reason"].as_str().unwrap_or("").to_string(),
        },
        "trial" => HealthEvent::Trial,
        "recovered" => HealthEvent::Recovered,
        _ => return None,
    };
    Some((v["from"].as_u64()?, id, event))
}

impl Shared {
    fn health_channel(&self) -> String {
        format!("{}health", self.prefix())
    }

    /// Tells the others what `health` decides, and applies what they decide.
    pub fn share_health(self: &Arc<Self>, health: &HealthRegistry, apply: Apply) {
        let (tx, rx) = tokio::sync::mpsc::channel::<String>(OUTBOX);
        let me = self.instance;
        health.observe(Arc::new(move |id, e| {
            let _ = tx.try_send(message(me, id, e));
        }));
        let _ = self.health_outbox.set(std::sync::Mutex::new(Some(rx)));
        let _ = self.health_apply.set(apply);
    }

    /// Publishes findings as they come (on the Redis thread's runtime).
    pub(super) async fn publish_findings(self: Arc<Self>) {
        let rx = loop {
            let taken = self
                .health_outbox
                .get()
                .and_then(|m| m.lock().unwrap_or_else(|p| p.into_inner()).take());
            match taken {
                Some(rx) => break rx,
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let mut rx = rx;
        let channel = self.health_channel();
        while let Some(msg) = rx.recv().await {
            let channel = channel.clone();
            self.run("publish", |mut conn| async move {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(msg)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await;
        }
    }

    /// Listens for the others' findings, subscribing again whenever Redis comes
    /// back.
    pub(super) async fn listen_findings(self: Arc<Self>) {
        let channel = self.health_channel();
        loop {
            if let Ok(Ok(mut pubsub)) =
                tokio::time::timeout(Duration::from_secs(1), self.client.get_async_pubsub()).await
            {
                let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
                if pubsub.subscribe(&channel).await.is_ok() {
                    let mut messages = pubsub.on_message();
                    let mut tick = tokio::time::interval(super::WATCH_EVERY);
                    loop {
                        tokio::select! {
                            msg = messages.next() => match msg {
                                Some(msg) => {
                                    if let Ok(text) = msg.get_payload::<String>() {
                                        self.heard(&text);
                                    }
                                }
                                None => break,
                            },
                            _ = tick.tick() => {
                                // Redis was lost since (this connection may be a
                                // dead one that never says so): subscribe anew.
                                let now = self.generation.load(std::sync::atomic::Ordering::Acquire);
                                if now != generation {
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(super::WATCH_EVERY).await;
        }
    }

    fn heard(&self, text: &str) {
        let Some((from, id, event)) = parse(text) else {
            tracing::debug!("unreadable health message on Redis");
            return;
        };
        if from == self.instance {
            return;
        }
        if let Some(apply) = self.health_apply.get() {
            apply(&id, &event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_survive_the_wire() {
        let id = HealthId::key("c", "sk-1");
        let e = HealthEvent::Suspended {
            for_ms: 1500,
            reason: "HTTP 429".into(),
        };
        assert_eq!(parse(&message(7, &id, &e)), Some((7, id.clone(), e)));
        let back = parse(&message(1, &HealthId::channel("c"), &HealthEvent::Trial));
        assert_eq!(back, Some((1, HealthId::channel("c"), HealthEvent::Trial)));
        assert!(parse("{\"event\": \"nonsense\"}").is_none());
    }
}
