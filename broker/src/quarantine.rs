//! Quarantine: the durable record of a message the broker refused, with its coded reason and
//! its bytes, for `tillsync quarantine` to show and redrive. Every consumer quarantines the same
//! way: the spine records what a batch refused in one transaction ([`record_all`]); replay
//! writes its refused messages in the batch's own transaction ([`insert`]).

use async_nats::jetstream::Message;
use sqlx::{PgConnection, PgPool};
use tillsync_schemas::{partition, subject, WireError};

use crate::metrics;
use crate::partitions::{fence, Fence};

/// A refused message, as recorded.
#[derive(Debug, Clone)]
pub struct BadRow {
    pub stream: String,
    pub stream_seq: u64,
    /// The subject as published (without the partition token the stream added), so it is shown
    /// as its publisher sent it and a redrive publishes it where it first went, even when the
    /// broker refused the subject itself (`bad_subject`).
    pub subject: String,
    pub reason: &'static str,
    pub detail: String,
    pub payload: Vec<u8>,
    pub tenant_id: Option<String>,
    pub store_id: Option<String>,
    pub device_id: Option<String>,
}

/// The quarantine row of a refused message, with whatever address its subject gives.
pub fn bad_row(stream: &str, subject_str: &str, stream_seq: u64, payload: &[u8], e: &WireError) -> BadRow {
    let parsed = subject::parse(subject_str).ok();
    BadRow {
        stream: stream.into(),
        stream_seq,
        subject: partition::published_subject(subject_str).into(),
        reason: e.reason.as_str(),
        detail: e.detail.clone(),
        payload: payload.to_vec(),
        tenant_id: parsed.as_ref().map(|p| p.tenant_id.clone()),
        store_id: parsed.as_ref().map(|p| p.store_id.clone()),
        device_id: parsed.map(|p| p.last),
    }
}

/// Inserts `bad` in the caller's transaction; a message quarantined before is left as it was.
pub async fn insert(tx: &mut PgConnection, bad: &[BadRow]) -> Result<(), sqlx::Error> {
    if bad.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO quarantine (tenant_id, store_id, device_id, stream, stream_seq, subject, reason, detail, payload)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::text[], $8::text[], $9::bytea[])
         ON CONFLICT (stream, stream_seq) DO NOTHING",
    )
    .bind(bad.iter().map(|b| b.tenant_id.clone()).collect::<Vec<_>>())
    .bind(bad.iter().map(|b| b.store_id.clone()).collect::<Vec<_>>())
    .bind(bad.iter().map(|b| b.device_id.clone()).collect::<Vec<_>>())
    .bind(bad.iter().map(|b| b.stream.clone()).collect::<Vec<_>>())
    .bind(bad.iter().map(|b| b.stream_seq as i64).collect::<Vec<_>>())
    .bind(bad.iter().map(|b| b.subject.clone()).collect::<Vec<_>>())
    .bind(bad.iter().map(|b| b.reason).collect::<Vec<_>>())
    .bind(bad.iter().map(|b| b.detail.clone()).collect::<Vec<_>>())
    .bind(bad.iter().map(|b| b.payload.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Folds a refused heartbeat into the pending row of the same subject and reason, if there is
/// one (see `migrations/0013_hygiene.sql`): the latest payload and stream seq, one more repeat.
/// False when there is none (or its stream seq is already on another row): insert it instead.
async fn collapse(tx: &mut PgConnection, bad: &BadRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE quarantine SET stream_seq = $2, payload = $3, detail = $4, repeats = repeats + 1,
                               last_received_at = now()
         WHERE id = (SELECT id FROM quarantine WHERE subject = $5 AND reason = $6 AND stream = $1
                       AND redrive_count = 0 AND dismissed_at IS NULL ORDER BY id DESC LIMIT 1)
           AND NOT EXISTS (SELECT 1 FROM quarantine WHERE stream = $1 AND stream_seq = $2)",
    )
    .bind(&bad.stream)
    .bind(bad.stream_seq as i64)
    .bind(&bad.payload)
    .bind(&bad.detail)
    .bind(&bad.subject)
    .bind(bad.reason)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records one refused message under `fence` and counts it by reason. The caller terminates
/// the JetStream message once this returns `Ok`.
pub async fn record(
    pool: &PgPool,
    fence: Fence,
    stream: &str,
    msg: &Message,
    e: &WireError,
) -> Result<(), sqlx::Error> {
    record_all(pool, fence, stream, &[(msg, e)]).await
}

/// Records refused messages of `stream` under `fence`, in one transaction, and counts each by
/// reason. The caller terminates the JetStream messages once this returns `Ok`. A heartbeat
/// repeating a pending one is folded into it ([`collapse`]).
pub async fn record_all(
    pool: &PgPool,
    fence: Fence,
    stream: &str,
    refused: &[(&Message, &WireError)],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    fence::check(&mut tx, fence).await?;
    for (msg, e) in refused {
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let bad = bad_row(stream, &msg.subject, seq, &msg.payload, e);
        if !(stream == tillsync_schemas::streams::HEARTBEATS && collapse(&mut tx, &bad).await?) {
            insert(&mut tx, &[bad]).await?;
        }
    }
    tx.commit().await?;
    for (msg, e) in refused {
        metrics::event_quarantined(e.reason.as_str());
        tracing::warn!(reason = %e.reason, detail = %e.detail, subject = %msg.subject, "Message quarantined.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tillsync_schemas::{Reason, WireError};

    #[test]
    fn a_refused_subject_is_recorded_as_its_publisher_sent_it() {
        let e = tillsync_schemas::subject::parse("tillsync.ev.acme.s1.till~1.4").unwrap_err();
        let row = super::bad_row("TILLSYNC_EVENTS", "tillsync.ev.acme.s1.till~1.4", 9, b"x", &e);
        assert_eq!(row.subject, "tillsync.ev.acme.s1.till~1");
        assert_eq!(row.reason, "bad_subject");
        assert!(row.detail.contains(r#"token 5 (device) "till~1""#), "{}", row.detail);
        assert_eq!(row.tenant_id, None, "a refused subject names no address");
        let ok = WireError::new(Reason::UnknownTenant, "t");
        let row = super::bad_row("TILLSYNC_EVENTS", "tillsync.ev.ghost.s1.till-1.3", 10, b"x", &ok);
        assert_eq!(row.subject, "tillsync.ev.ghost.s1.till-1");
        assert_eq!(row.device_id.as_deref(), Some("till-1"));
    }
}
