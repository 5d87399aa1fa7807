//! Catch-up for bridges that hold no JetStream consumer (docs/architecture.md, "The downlink
//! without consumers"). A bridge reads its commands live on a plain subscription to its own
//! commands subject; whenever it (re)connects it asks on `tillsync.csync.<t>.<s>.<d>` (its
//! credential allows only its own), and any broker instance (one queue group) hands it every
//! command published to it and not yet finished again on `tillsync.ccopy.<t>.<s>.<d>`, signed
//! for the device's own commands subject, followed by an end marker carrying how many.
//!
//! - Who picks where the answer goes: nobody but the request's subject. Its reply subject is
//!   ignored; NATS permissions bind the subject to the requester, so no device can make the
//!   broker hand it, or send anywhere, another device's commands.
//! - A reconnect storm costs one query per batch: requests are taken as they come, the first
//!   and whatever arrived meanwhile (up to [`BATCH`]), and answered from one statement.
//! - One device asking in a loop is bounded by a budget per device ([`PER_MINUTE`]); what is
//!   over it is counted (`result="limited"`) and dropped. The bridge asks again until it hears
//!   the end marker, so a dropped or lost request costs only time.
//!
//! Nothing here changes a command's state: handing a copy again is not a new attempt, and the
//! bridge's ledger answers a command it already ran with its stored ack.

use std::num::NonZeroU32;
use std::sync::Arc;

use async_nats::{HeaderMap, Subscriber};
use futures::{FutureExt, StreamExt};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use sqlx::PgPool;
use tillsync_schemas::subject::{self, Family};
use tillsync_schemas::{streams, DeviceAddr};

use super::{publish, CommandError};
use crate::error::Chain;
use crate::{metrics, BrokerError, Ctx};

const QUEUE: &str = "tillsync-csync";
/// Requests answered from one statement at most.
pub const BATCH: usize = 500;
/// Copies handed in one batch at most; a device whose copies did not fit gets the rest when it
/// asks again (its end marker says how many it was handed).
const MAX_COPIES: i64 = 20_000;
/// Catch-up requests a device may make per minute (a burst of that many, then one every 5 s).
pub const PER_MINUTE: u32 = 12;

type Budget = RateLimiter<DeviceAddr, DashMapStateStore<DeviceAddr>, governor::clock::DefaultClock>;

/// Subscribes before the broker reports started, so a bridge that connects right after start
/// is answered.
pub async fn subscribe(nats: &async_nats::Client) -> Result<Subscriber, BrokerError> {
    crate::nats::responder(nats, Family::CommandSync.published_subjects(), QUEUE, "Command catch-up").await
}

pub async fn run(ctx: Arc<Ctx>, mut sub: Subscriber) {
    let budget: Budget = RateLimiter::dashmap(Quota::per_minute(NonZeroU32::new(PER_MINUTE).expect("non-zero")));
    loop {
        let first = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            m = sub.next() => match m {
                Some(m) => m,
                None => {
                    tracing::error!("Command catch-up subscription ended: this instance answers none.");
                    return;
                }
            },
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match sub.next().now_or_never() {
                Some(Some(m)) => batch.push(m),
                _ => break,
            }
        }
        let devices = admit(&budget, batch.iter().map(|m| m.subject.as_str()));
        budget.retain_recent();
        if let Err(error) = answer(&ctx, &devices).await {
            metrics::command_syncs("failed", devices.len() as u64);
            tracing::warn!(error = %Chain(&error), devices = devices.len(), "Command catch-up failed; the bridges ask again.");
        }
    }
}

/// The devices of a batch's subjects that are well-formed and within their budget, each once.
fn admit<'a>(budget: &Budget, subjects: impl Iterator<Item = &'a str>) -> Vec<DeviceAddr> {
    let mut devices: Vec<DeviceAddr> = subjects
        .filter_map(|s| subject::parse(s).ok().filter(|p| p.family == Family::CommandSync))
        .map(|p| p.device_addr())
        .collect();
    devices.sort();
    devices.dedup();
    devices.retain(|d| {
        let ok = budget.check_key(d).is_ok();
        if !ok {
            metrics::command_syncs("limited", 1);
        }
        ok
    });
    devices
}

/// Hands each device its unfinished delivered commands, then its end marker.
async fn answer(ctx: &Ctx, devices: &[DeviceAddr]) -> Result<(), CommandError> {
    if devices.is_empty() {
        return Ok(());
    }
    let copies = delivered(&ctx.pool, devices).await?;
    let mut handed = std::collections::HashMap::<&DeviceAddr, u32>::new();
    for (addr, envelope, attempt) in &copies {
        let (_, headers, payload) = publish::signed_delivery(&ctx.signer, addr, envelope, *attempt)?;
        hand(ctx, addr, headers, payload).await?;
        *handed.entry(addr).or_default() += 1;
    }
    metrics::command_copies_handed("sync", copies.len() as u64);
    for addr in devices {
        let mut h = HeaderMap::new();
        h.insert(streams::HEADER_SYNC_DONE, handed.get(addr).copied().unwrap_or(0).to_string().as_str());
        hand(ctx, addr, h, Vec::new()).await?;
    }
    metrics::command_syncs("answered", devices.len() as u64);
    Ok(())
}

/// One message on the device's copies subject (core NATS: nothing stores it).
pub async fn hand(ctx: &Ctx, addr: &DeviceAddr, headers: HeaderMap, payload: Vec<u8>) -> Result<(), CommandError> {
    ctx.nats
        .publish_with_headers(subject::command_copies(addr), headers, payload.into())
        .await
        .map_err(|e| CommandError::Publish(e.to_string()))
}

/// (device, envelope, attempt) of every delivered, unfinished, unexpired entry of these devices,
/// in issue order per device.
async fn delivered(pool: &PgPool, devices: &[DeviceAddr]) -> Result<Vec<(DeviceAddr, Vec<u8>, u32)>, sqlx::Error> {
    let col = |f: fn(&DeviceAddr) -> &String| devices.iter().map(f).cloned().collect::<Vec<_>>();
    let rows: Vec<(String, String, String, Vec<u8>, i32)> = sqlx::query_as(
        "SELECT i.tenant_id, i.store_id, i.device_id, c.envelope, i.attempts
         FROM unnest($1::text[], $2::text[], $3::text[]) AS d(tenant_id, store_id, device_id)
         JOIN command_inbox i
           ON i.tenant_id = d.tenant_id AND i.store_id = d.store_id AND i.device_id = d.device_id
          AND i.state = 'delivered' AND i.expires_at > now()
         JOIN commands c ON c.tenant_id = i.tenant_id AND c.command_id = i.command_id
         ORDER BY i.tenant_id, i.store_id, i.device_id, i.inbox_seq
         LIMIT $4",
    )
    .bind(col(|d| &d.tenant_id))
    .bind(col(|d| &d.store_id))
    .bind(col(|d| &d.device_id))
    .bind(MAX_COPIES)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t, s, d, envelope, attempts)| (DeviceAddr::new(t, s, d), envelope, attempts.max(1) as u32))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_admits_each_well_formed_device_once_within_its_budget() {
        let budget: Budget = RateLimiter::dashmap(Quota::per_minute(NonZeroU32::new(2).unwrap()));
        let a = "tillsync.csync.acme.s1.till-1";
        let b = "tillsync.csync.acme.s1.till-2";
        let got = admit(&budget, [a, b, a, "tillsync.csync.acme.s1", "tillsync.ev.acme.s1.till-3"].into_iter());
        assert_eq!(got, vec![DeviceAddr::new("acme", "s1", "till-1"), DeviceAddr::new("acme", "s1", "till-2")]);
        assert_eq!(admit(&budget, [a].into_iter()).len(), 1, "the second of a burst of two");
        assert!(admit(&budget, [a].into_iter()).is_empty(), "over budget");
        assert_eq!(admit(&budget, [b].into_iter()).len(), 1, "another device's budget is its own");
    }
}
