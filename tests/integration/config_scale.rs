//! Configuration distribution across brokers: the owner of partition 0 distributes, and when
//! it is killed mid-stream another instance takes partition 0 and carries on. A checker reads
//! every delta on the (R3, 3-node) stream and reports, per store, versions lost, doubled or out
//! of order, and whether the snapshot reached the newest version.

use std::collections::BTreeMap;
use std::time::Instant;

use async_nats::jetstream;
use serde_json::json;
use sqlx::PgPool;
use tillsync_broker::admin::store_config;
use tillsync_schemas::config::{snapshot_subject, ChangeRequest, ChangeSet, ConfigSnapshot};
use tillsync_schemas::{codec, streams, DeviceAddr};

use crate::scale_support::*;

const STORES: usize = 6;
const PUBLISHES: u64 = 40;

fn price_change(i: u64) -> ChangeSet {
    ChangeSet {
        tenant_id: TENANT.into(),
        store_id: None,
        if_match: None,
        published_by: "hq".into(),
        changes: vec![
            ChangeRequest {
                op: "upsert".into(),
                entity_type: "menu_category".into(),
                id: "drinks".into(),
                body: Some(json!({"name": "Drinks"})),
            },
            ChangeRequest {
                op: "upsert".into(),
                entity_type: "menu_item".into(),
                id: "latte".into(),
                body: Some(json!({"name": "Latte", "price_minor": 300 + i, "category_id": "drinks"})),
            },
        ],
    }
}

/// The instance holding partition 0, which distributes configuration.
async fn distributor(pool: &PgPool) -> Option<String> {
    sqlx::query_scalar("SELECT instance_id FROM partition_owners WHERE partition = 0 AND released_at IS NULL")
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// Per store, the versions of its deltas in stream order.
async fn versions_on_stream(js: &jetstream::Context) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for d in crate::config_cloud::deltas(js).await {
        out.entry(d.store_id).or_default().push(d.version);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_keeps_flowing_in_order_when_its_distributor_is_killed() {
    let mut s = Scale::start().await;
    for i in 0..2 {
        s.add_broker(|_| {});
        s.ready(i).await;
    }
    wait_spread(s.pool(), &[instance(0), instance(1)]).await;
    let stores = spread_stores(STORES);
    for store in &stores {
        let d = DeviceAddr::new(TENANT, store, "till-1");
        crate::commands::provision(s.pool(), &d).await;
    }
    let pool = s.pool().clone();
    for i in 1..=PUBLISHES / 2 {
        store_config::publish(&pool, &price_change(i)).await.unwrap();
    }

    // The fault: kill -9 the distributing broker while it works through the first half.
    let victim = distributor(&pool).await.expect("partition 0 is held");
    let n: usize = victim.trim_start_matches("broker-").parse().unwrap();
    s.kill(n);
    let killed_at = Instant::now();
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM config_versions WHERE distributed_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    eprintln!("killed {victim}, the distributor, with {pending} versions not yet recorded as distributed");
    for i in PUBLISHES / 2 + 1..=PUBLISHES {
        store_config::publish(&pool, &price_change(i)).await.unwrap();
    }
    let survivor = instance(1 - n);
    crate::config_cloud::distributed_within(&pool, DRAIN).await;
    eprintln!("every version distributed {:?} after killing {victim}", killed_at.elapsed());
    assert_eq!(distributor(&pool).await.as_deref(), Some(survivor.as_str()));

    // The checker: each store's versions 1..=N, each once, in order; snapshot at N.
    let js = s.cluster.jetstream().await;
    let on_stream = versions_on_stream(&js).await;
    let want: Vec<u64> = (1..=PUBLISHES).collect();
    let snapshots = js.get_stream(streams::CONFIG_SNAPSHOTS).await.unwrap();
    let mut problems = Vec::new();
    for store in &stores {
        let got = on_stream.get(store).cloned().unwrap_or_default();
        let lost: Vec<u64> = want.iter().copied().filter(|v| !got.contains(v)).collect();
        let doubled: Vec<u64> = want.iter().copied().filter(|v| got.iter().filter(|g| *g == v).count() > 1).collect();
        let reordered = got.windows(2).filter(|w| w[0] >= w[1]).count();
        if !lost.is_empty() || !doubled.is_empty() || reordered > 0 {
            problems.push(format!("{store}: lost {lost:?}, doubled {doubled:?}, {reordered} out of order"));
        }
        let m = snapshots.direct_get_last_for_subject(snapshot_subject(TENANT, store)).await.unwrap();
        let snap: ConfigSnapshot = codec::decode(&m.payload).unwrap();
        if snap.version != PUBLISHES {
            problems.push(format!("{store}: snapshot at {} of {PUBLISHES}", snap.version));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
