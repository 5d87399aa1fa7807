//! The POS simulator: one task per device feeding its bridge over `POST /v1/events`, one event
//! at a time, with realistic order flows (`tillsync_edge::simulate::order_flow`). Each event
//! gets its `event_id` once and is resent with it until the bridge answers, as a real till
//! does, so a retry after a timeout is idempotent. Every 202/200 answer is recorded.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tillsync_schemas::{now_ms, EventBody};
use tokio_util::sync::CancellationToken;

use super::history::AcceptedEvent;

/// The events of one device, in the order the till produces them; reproducible from the seed.
pub struct Till {
    device_id: String,
    rng: StdRng,
    orders: u64,
    queue: VecDeque<EventBody>,
}

impl Till {
    pub fn new(device_id: &str, seed: u64) -> Till {
        Till { device_id: device_id.into(), rng: StdRng::seed_from_u64(seed), orders: 0, queue: VecDeque::new() }
    }

    /// The next event and the id the till gives it.
    pub fn next(&mut self) -> (String, EventBody) {
        if self.queue.is_empty() {
            self.orders += 1;
            let order = format!("{}-o{}", self.device_id, self.orders);
            self.queue.extend(tillsync_edge::simulate::order_flow(&order, &mut self.rng));
        }
        let id = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid().to_string();
        (id, self.queue.pop_front().expect("an order flow has events"))
    }
}

#[derive(Deserialize)]
struct Answer {
    seq: u64,
    event_id: String,
}

/// Feeds one bridge at `rate` events/s until `stop`, then returns once its last event is
/// answered (or `give_up` is cancelled). Returns how many events the bridge refused (4xx: a
/// simulator bug, never retried).
pub async fn feed(
    mut till: Till,
    bridge: String,
    rate: f64,
    stop: CancellationToken,
    give_up: CancellationToken,
    record: Arc<Mutex<Vec<AcceptedEvent>>>,
) -> u64 {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("http client");
    let url = format!("http://{bridge}/v1/events");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refused = 0;
    while !stop.is_cancelled() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let (event_id, body) = till.next();
        let mut draft = serde_json::to_value(&body).expect("event body as JSON");
        draft["event_id"] = event_id.clone().into();
        draft["occurred_at_ms"] = now_ms().into();
        loop {
            if give_up.is_cancelled() {
                return refused;
            }
            match http.post(&url).json(&draft).send().await {
                Ok(r) if r.status().is_success() => {
                    if let Ok(a) = r.json::<Answer>().await {
                        let ev = AcceptedEvent {
                            device_id: till.device_id.clone(),
                            seq: a.seq,
                            event_id: a.event_id,
                            body: body.clone(),
                            at_ms: now_ms(),
                        };
                        record.lock().expect("history lock").push(ev);
                        break;
                    }
                }
                Ok(r) if r.status().is_client_error() => {
                    tracing::error!(status = %r.status(), device = till.device_id, "Bridge refused a simulated event.");
                    refused += 1;
                    break;
                }
                // 5xx (storage, shutting down), a timeout (SIGSTOP), refused connection (killed)
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_till_is_reproducible_from_its_seed() {
        let (mut a, mut b) = (Till::new("till-1", 7), Till::new("till-1", 7));
        for _ in 0..50 {
            let (ida, ba) = a.next();
            let (idb, bb) = b.next();
            assert_eq!(ida, idb);
            assert_eq!(ba.kind(), bb.kind());
        }
        assert_ne!(Till::new("till-1", 8).next().0, Till::new("till-1", 7).next().0);
    }
}
