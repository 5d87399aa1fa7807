//! The fence in Postgres: epochs of partition ownership, and the check every commit makes.
//!
//! A lease in NATS says who should own a partition; it cannot stop an instance that was
//! paused or cut off from committing a batch it already held. So taking a partition also bumps
//! its epoch in `partition_owners` (waiting for commits in flight under the old epoch), and
//! every transaction for the partition starts with `tillsync_fence(partition, epoch)`, which
//! fails with SQLSTATE `TSF01` once the epoch is not current: a late batch rolls back.

use sqlx::{PgConnection, PgPool};

/// A partition held under an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fence {
    pub partition: u16,
    pub epoch: i64,
}

/// SQLSTATE raised by `tillsync_fence`.
pub const FENCED: &str = "TSF01";

/// True when `e` is the fence refusing a commit: the partition has a newer owner.
pub fn is_fenced(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(FENCED))
}

/// Checks, inside the caller's transaction, that `fence` is still current; holds the owner row
/// until the transaction ends.
pub async fn check(conn: &mut PgConnection, fence: Fence) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT tillsync_fence($1, $2)")
        .bind(i32::from(fence.partition))
        .bind(fence.epoch)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes `partition` for `instance`: the next epoch, once commits under the previous one are done.
pub async fn acquire(pool: &PgPool, partition: u16, instance: &str) -> Result<Fence, sqlx::Error> {
    Ok(take(pool, partition, instance).await?.0)
}

/// [`acquire`], also telling whether the previous epoch was left unreleased: a takeover from
/// an instance that was killed, paused or cut off, rather than a handover.
pub async fn take(pool: &PgPool, partition: u16, instance: &str) -> Result<(Fence, bool), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Locking the row waits for commits in flight under the previous epoch (FOR SHARE).
    let previous: Option<(bool,)> =
        sqlx::query_as("SELECT released_at IS NULL FROM partition_owners WHERE partition = $1 FOR UPDATE")
            .bind(i32::from(partition))
            .fetch_optional(&mut *tx)
            .await?;
    let (epoch,): (i64,) = sqlx::query_as(
        "INSERT INTO partition_owners (partition, epoch, instance_id) VALUES ($1, 1, $2)
         ON CONFLICT (partition) DO UPDATE SET epoch = partition_owners.epoch + 1, instance_id = $2,
           acquired_at = clock_timestamp(), released_at = NULL, lost_at = NULL
         RETURNING epoch",
    )
    .bind(i32::from(partition))
    .bind(instance)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO partition_epochs (partition, epoch, instance_id) VALUES ($1, $2, $3)")
        .bind(i32::from(partition))
        .bind(epoch)
        .bind(instance)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((Fence { partition, epoch }, previous.is_some_and(|(unreleased,)| unreleased)))
}

/// Marks `fence` released after its work ended (a handover, not a takeover).
pub async fn release(pool: &PgPool, fence: Fence) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for table in ["partition_owners", "partition_epochs"] {
        sqlx::query(&format!(
            "UPDATE {table} SET released_at = clock_timestamp() WHERE partition = $1 AND epoch = $2 AND released_at IS NULL"
        ))
        .bind(i32::from(fence.partition))
        .bind(fence.epoch)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Marks `fence` lost: its owner could not renew the lease and stopped its work. Only what
/// `tillsync status` shows changes; the fence itself holds until the next owner bumps it.
pub async fn mark_lost(pool: &PgPool, fence: Fence) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE partition_owners SET lost_at = clock_timestamp()
         WHERE partition = $1 AND epoch = $2 AND released_at IS NULL AND lost_at IS NULL",
    )
    .bind(i32::from(fence.partition))
    .bind(fence.epoch)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Records the partition count on first start and refuses any other later: a store's partition
/// is in the subjects the streams stored.
pub async fn check_count(pool: &PgPool, partitions: u16) -> Result<(), crate::BrokerError> {
    let (stored,): (i32,) = sqlx::query_as(
        // An upsert that always returns the stored row, also when another instance inserted it
        // while this statement ran.
        "INSERT INTO partition_settings (partitions) VALUES ($1)
         ON CONFLICT (singleton) DO UPDATE SET partitions = partition_settings.partitions
         RETURNING partitions",
    )
    .bind(i32::from(partitions))
    .fetch_one(pool)
    .await
    .map_err(crate::BrokerError::PartitionSettings)?;
    if stored != i32::from(partitions) {
        return Err(crate::BrokerError::PartitionCount { stored, configured: partitions });
    }
    Ok(())
}
