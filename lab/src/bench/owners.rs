//! Who owns which partition, as the brokers record it in Postgres (`partition_owners`, rows
//! with no `released_at`): what `bench scale` waits for and times.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// Current owners and the partitions each holds.
pub async fn owners(pool: &PgPool) -> anyhow::Result<BTreeMap<String, Vec<i32>>> {
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT instance_id, partition FROM partition_owners WHERE released_at IS NULL")
            .fetch_all(pool)
            .await?;
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (owner, p) in rows {
        out.entry(owner).or_default().push(p);
    }
    Ok(out)
}

/// The current owner of each of `partitions` (`None`: nobody).
pub async fn owners_of(pool: &PgPool, partitions: &[i32]) -> anyhow::Result<Vec<Option<String>>> {
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT partition, instance_id FROM partition_owners WHERE released_at IS NULL AND partition = ANY($1)",
    )
    .bind(partitions)
    .fetch_all(pool)
    .await?;
    let by: BTreeMap<i32, String> = rows.into_iter().collect();
    Ok(partitions.iter().map(|p| by.get(p).cloned()).collect())
}

/// Partitions per owner, the largest share first.
pub async fn split(pool: &PgPool) -> anyhow::Result<Vec<usize>> {
    let mut v: Vec<usize> = owners(pool).await?.values().map(Vec::len).collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    Ok(v)
}

/// Seconds from `since` until every partition has an owner; `None` when that takes more than
/// a minute.
pub async fn all_owned(pool: &PgPool, partitions: u16, since: Instant) -> anyhow::Result<Option<f64>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let owned: usize = owners(pool).await?.values().map(Vec::len).sum();
        if owned >= usize::from(partitions) {
            return Ok(Some(since.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

/// Waits (up to a minute) until each of `instances` owns its round-robin share; false when
/// that does not happen.
pub async fn shared_out(pool: &PgPool, instances: usize, partitions: u16) -> anyhow::Result<bool> {
    let share = usize::from(partitions) / instances.max(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let owners = owners(pool).await?;
        if owners.len() == instances && owners.values().all(|ps| ps.len() >= share) {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(false)
}
