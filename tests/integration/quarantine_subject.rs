//! A message refused for its subject (`bad_subject`) is recorded, shown and redriven on the
//! subject its publisher used, never on the one the events stream stored it under (with the
//! partition token the stream's subject transform appends, docs/protocol.md section 3). Rows
//! an earlier broker recorded with that token are shown and redriven without it too.

use serde_json::Value;
use tillsync_schemas::{codec, partition, streams, DeviceAddr};
use tillsync_tests::{eventually_eq, DEFAULT_TIMEOUT as T};

use crate::common::*;
use crate::ops::tillsync;

/// What a till with a `~` in its device token publishes on (NATS takes it, tillsync does not).
const PUBLISHED: &str = "tillsync.ev.acme.s1.till~1";
const DETAIL: &str =
    r#"subject "tillsync.ev.acme.s1.till~1": token 5 (device) "till~1" must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}"#;

/// The subject of the events stream's message `seq`, as stored.
async fn stored_subject(js: &async_nats::jetstream::Context, seq: u64) -> String {
    let stream = js.get_stream(streams::EVENTS).await.unwrap();
    stream.get_raw_message(seq).await.unwrap().subject.to_string()
}

#[tokio::test]
async fn a_bad_subject_is_kept_shown_and_redriven_as_published() {
    let (stack, broker, js) = live().await;
    let db = &stack.db;
    let partitions = stack.broker_config().partitions;
    let stored = partition::stored_subject(PUBLISHED, "acme", "s1", partitions);
    let payload = codec::encode(&event(&DeviceAddr::new("acme", "s1", "till~1"), 1, opened("o-1")));
    publish_raw(&js, PUBLISHED.into(), payload.clone()).await;
    eventually_eq(T, "the refused message quarantined", 1, || db.count("SELECT count(*) FROM quarantine")).await;
    assert_eq!(stored_subject(&js, 1).await, stored, "the stream stored it under the partition token");

    let (id, subject, reason, detail): (i64, String, String, String) =
        sqlx::query_as("SELECT id, subject, reason, detail FROM quarantine").fetch_one(&db.pool).await.unwrap();
    assert_eq!((subject.as_str(), reason.as_str(), detail.as_str()), (PUBLISHED, "bad_subject", DETAIL));
    let shown = tillsync(&stack, &["quarantine", "show", &id.to_string(), "--json"]).await.ok().json();
    assert_eq!(shown["subject"], PUBLISHED, "{shown}");
    assert_eq!(shown["detail"], DETAIL, "{shown}");

    // A row an earlier broker wrote: the stored subject, partition token and all.
    let old: i64 = sqlx::query_scalar(
        "INSERT INTO quarantine (stream, stream_seq, subject, reason, detail, payload)
         VALUES ($1, 1000, $2, 'bad_subject', 'last token \"till~1\" ...', $3) RETURNING id",
    )
    .bind(streams::EVENTS)
    .bind(&stored)
    .bind(&payload)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let listed = tillsync(&stack, &["quarantine", "list", "--json"]).await.ok().json();
    let subjects: Vec<&Value> = listed.as_array().unwrap().iter().map(|r| &r["subject"]).collect();
    assert_eq!(subjects, [PUBLISHED, PUBLISHED], "{listed}");

    // Each redrive goes out on the publisher's subject, lands in the events stream (stored
    // with the store's partition again) and, the subject being what it was, is refused again.
    let mut seqs = Vec::new();
    for row in [id, old] {
        let args = ["quarantine", "redrive", &row.to_string(), "--force", "--operator", "ops", "--json"];
        let r = tillsync(&stack, &args).await.ok().json();
        assert_eq!(r["subject"], PUBLISHED, "{r}");
        assert_eq!(r["stream"], streams::EVENTS, "{r}");
        let seq = r["new_stream_seq"].as_u64().unwrap();
        assert_eq!(stored_subject(&js, seq).await, stored);
        seqs.push(seq as i64);
    }
    let again = "SELECT count(*) FROM quarantine WHERE stream_seq = ANY($1) AND subject = $2 AND reason = 'bad_subject' AND detail = $3";
    eventually_eq(T, "both redrives quarantined again", 2, || async {
        let q = sqlx::query_scalar::<_, i64>(again).bind(&seqs).bind(PUBLISHED).bind(DETAIL);
        q.fetch_one(&db.pool).await.unwrap()
    })
    .await;
    assert_eq!(db.count("SELECT count(*) FROM quarantine_redrives").await, 2);
    assert_eq!(db.count("SELECT count(*) FROM processed_events").await, 0, "nothing applied");
    broker.stop().await;
}
