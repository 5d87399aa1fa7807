//! Scale-out (issue 16): several broker processes on a 3-node NATS cluster share the stores by
//! partition, one owner at a time, fenced by an epoch in Postgres. Each test owns its cluster
//! and database; brokers are child processes (`kill -9`, SIGSTOP). Outcomes are read from
//! Postgres; the key figures are printed for docs/performance.md and the issue.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tillsync_tests::eventually;

use crate::commands::Statuses;
use crate::scale_support::*;

const TAKEOVER_LIMIT: Duration = Duration::from_secs(10);

/// Starts `n` brokers, `tune` applied to each config, and waits until each is ready and
/// holds some partitions. They start one after another: started at once, all but one exit
/// (see `three_brokers_started_at_once_all_come_up`).
async fn brokers(s: &mut Scale, n: usize, tune: impl Fn(&mut tillsync_broker::config::Config)) {
    for i in 0..n {
        s.add_broker(&tune);
        s.ready(i).await;
    }
    let all: Vec<String> = (0..n).map(instance).collect();
    wait_spread(s.pool(), &all).await;
}

/// The harness itself: an R3 stream keeps taking messages with a node down, and the node
/// catches up after its restart.
#[tokio::test]
async fn a_nats_cluster_keeps_an_r3_stream_through_a_node_restart() {
    use async_nats::jetstream::stream::Config as StreamConfig;
    let t = Instant::now();
    let mut cluster = tillsync_tests::NatsCluster::start(3).await;
    eprintln!("cluster of 3 ready in {:?}", t.elapsed());
    let js = cluster.jetstream().await;
    let config =
        StreamConfig { name: "PROBE".into(), subjects: vec!["probe.>".into()], num_replicas: 3, ..Default::default() };
    js.create_stream(config).await.unwrap();
    let put = |n: usize| {
        let js = js.clone();
        async move {
            // A publish in flight when a node dies may go unanswered: retry it under its msg id.
            for i in 0..n {
                let id = uuid::Uuid::new_v4().to_string();
                eventually(Duration::from_secs(20), "probe message stored", || {
                    let (js, id) = (js.clone(), id.clone());
                    async move {
                        let mut h = async_nats::HeaderMap::new();
                        h.insert(tillsync_schemas::streams::HEADER_MSG_ID, id.as_str());
                        js.publish_with_headers(format!("probe.{i}"), h, "x".into()).await.ok()?.await.ok()
                    }
                })
                .await;
            }
        }
    };
    put(100).await;
    let t = Instant::now();
    cluster.stop(0);
    put(100).await;
    eprintln!("100 messages with n0 down in {:?}", t.elapsed());
    let t = Instant::now();
    cluster.restart(0).await;
    eprintln!("n0 back in {:?}", t.elapsed());
    put(100).await;
    // Every node, read through its own connection, holds all 300.
    for i in 0..3 {
        let js = async_nats::jetstream::new(async_nats::connect(cluster.url(i)).await.unwrap());
        let mut stream = js.get_stream("PROBE").await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 300, "via n{i}");
    }
}

/// A deployment starts its replicas together. Each must come up: creating streams and the
/// lease bucket that another instance is creating at the same moment, and recording the
/// partition count another instance is recording, are not reasons to exit.
#[tokio::test(flavor = "multi_thread")]
async fn three_brokers_started_at_once_all_come_up() {
    let mut s = Scale::start().await;
    let started = Instant::now();
    for _ in 0..3 {
        s.add_broker(|_| {});
    }
    for i in 0..3 {
        s.ready(i).await;
    }
    eprintln!("three brokers started at once, all ready after {:?}", started.elapsed());
    wait_spread(s.pool(), &[instance(0), instance(1), instance(2)]).await;
}

/// `NATS_URL` lists every node of the cluster, comma separated (as config.rs documents), so a
/// broker can start while any one node is down.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_takes_every_cluster_node_in_nats_url() {
    let mut s = Scale::start().await;
    let urls = s.cluster.urls();
    s.add_broker(|c| c.nats_url = urls);
    s.ready(0).await;
    wait_spread(s.pool(), &[instance(0)]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_brokers_keep_every_device_in_order() {
    let mut s = Scale::start().await;
    brokers(&mut s, 3, |_| {}).await;
    let devices = fleet(8, 5);
    let started = Instant::now();
    let (published, task) = spawn_history(s.cluster.jetstream().await, &devices, 300, Duration::ZERO);
    task.await.unwrap();
    eprintln!("published {} events in {:?}", published.load(Ordering::Relaxed), started.elapsed());
    wait_watermarks(s.pool(), devices.len(), 300, started).await;

    let pool = s.pool();
    assert_every_event_once(pool, devices.len(), 300).await;
    assert_in_order(pool).await;
    assert_eq!(count(pool, "SELECT count(*) FROM device_gaps").await, 0, "in order: no gap ever seen");
    assert_read_models(pool, &devices, 300).await;
    assert_partitions_of_rows(pool).await;
    assert_one_writer_per_partition(pool).await;
    let writers = count(
        pool,
        "SELECT count(DISTINCT e.instance_id) FROM processed_events pe
         JOIN partition_epochs e ON e.partition = pe.partition AND e.epoch = pe.epoch",
    )
    .await;
    eprintln!("instances that committed events: {writers}");
    assert_eq!(writers, 3, "every broker committed some of the stores");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_broker_loses_nothing() {
    let mut s = Scale::start().await;
    brokers(&mut s, 3, |_| {}).await;
    let devices = fleet(20, 5);
    let started = Instant::now();
    let (_, task) = spawn_history(s.cluster.jetstream().await, &devices, 200, Duration::from_millis(10));
    wait_ledger(s.pool(), 4_000).await;

    let victim = instance(1);
    let held = owners(s.pool()).await;
    s.kill(1);
    let killed_at = Instant::now();
    let committed = count(s.pool(), "SELECT count(*) FROM processed_events").await;
    eprintln!("killed {victim} at {committed} committed events; owners before: {held:?}");
    let takeover = wait_taken_over(s.pool(), &victim, killed_at).await;
    eprintln!("takeover after kill -9: {takeover:?}; owners after: {:?}", owners(s.pool()).await);

    task.await.unwrap();
    wait_watermarks(s.pool(), devices.len(), 200, started).await;
    let pool = s.pool();
    assert_every_event_once(pool, devices.len(), 200).await;
    assert_read_models(pool, &devices, 200).await;
    assert_one_writer_per_partition(pool).await;
    assert!(takeover < TAKEOVER_LIMIT, "takeover took {takeover:?}");
    assert_in_order(pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_broker_commits_nothing_after_takeover() {
    let mut s = Scale::start().await;
    brokers(&mut s, 3, |_| {}).await;
    let devices = fleet(16, 5);
    let started = Instant::now();
    let (_, task) = spawn_history(s.cluster.jetstream().await, &devices, 200, Duration::from_millis(20));
    wait_ledger(s.pool(), 3_000).await;

    let paused = instance(2);
    s.broker(2).pause();
    let paused_at = Instant::now();
    let takeover = wait_taken_over(s.pool(), &paused, paused_at).await;
    eprintln!("takeover of the paused {paused}: {takeover:?}; owners: {:?}", owners(s.pool()).await);
    s.broker(2).resume();
    // It wakes with its batches in flight and finds its epochs fenced; then it rejoins.
    let lost = eventually(DRAIN, "the woken broker reports its lost partitions", || async {
        let text = s.broker(2).metrics().await?;
        tillsync_tests::metric(&text, "tillsync_partition_changes_total", "change=\"lost\"").filter(|n| *n >= 1.0)
    })
    .await;
    eprintln!("{paused} after SIGCONT: partition_changes_total{{change=\"lost\"}} = {lost}");

    task.await.unwrap();
    wait_watermarks(s.pool(), devices.len(), 200, started).await;
    let pool = s.pool();
    let late: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM processed_events pe
         JOIN partition_epochs mine ON mine.partition = pe.partition AND mine.epoch = pe.epoch
         JOIN partition_epochs nxt ON nxt.partition = pe.partition AND nxt.epoch > pe.epoch
         WHERE mine.instance_id = $1 AND pe.committed_at > nxt.acquired_at",
    )
    .bind(&paused)
    .fetch_one(pool)
    .await
    .unwrap();
    let by_paused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM processed_events pe
         JOIN partition_epochs e ON e.partition = pe.partition AND e.epoch = pe.epoch WHERE e.instance_id = $1",
    )
    .bind(&paused)
    .fetch_one(pool)
    .await
    .unwrap();
    eprintln!("{paused} committed {by_paused} events over its epochs {:?}", epochs_of(pool, &paused).await);
    assert_eq!(late, 0, "events the paused broker committed after its partitions were taken over");
    assert_every_event_once(pool, devices.len(), 200).await;
    assert_read_models(pool, &devices, 200).await;
    assert_one_writer_per_partition(pool).await;
    assert!(takeover < TAKEOVER_LIMIT, "takeover took {takeover:?}");
    assert_in_order(pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_node_restart_loses_and_doubles_nothing() {
    let mut s = Scale::start().await;
    brokers(&mut s, 3, |_| {}).await;
    let devices = fleet(16, 5);
    let started = Instant::now();
    let js = s.cluster.jetstream().await;
    let (_, task) = spawn_history(js.clone(), &devices, 200, Duration::from_millis(20));
    wait_ledger(s.pool(), 3_000).await;

    // The node leading the events stream: its loss moves the stream's leader too.
    let mut events = js.get_stream(tillsync_schemas::streams::EVENTS).await.unwrap();
    let leader = events.info().await.unwrap().cluster.as_ref().and_then(|c| c.leader.clone()).unwrap_or_default();
    let node: usize = leader.trim_start_matches('n').parse().unwrap_or(0);
    s.cluster.stop(node);
    let at = count(s.pool(), "SELECT count(*) FROM processed_events").await;
    eprintln!("stopped nats node n{node} (events leader {leader:?}) at {at} committed events");
    wait_ledger(s.pool(), at + 1_500).await;
    eprintln!("1,500 more events committed on two nodes");
    let down = Instant::now();
    s.cluster.restart(node).await;
    eprintln!("n{node} back in the cluster after {:?}", down.elapsed());

    task.await.unwrap();
    wait_watermarks(s.pool(), devices.len(), 200, started).await;
    let pool = s.pool();
    assert_every_event_once(pool, devices.len(), 200).await;
    assert_read_models(pool, &devices, 200).await;
    assert_one_writer_per_partition(pool).await;
    assert_in_order_but_redeliveries(pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_joining_broker_takes_partitions_and_no_partition_has_two_writers() {
    let mut s = Scale::start().await;
    brokers(&mut s, 1, |_| {}).await;
    let devices = fleet(16, 4);
    let started = Instant::now();
    let (_, task) = spawn_history(s.cluster.jetstream().await, &devices, 200, Duration::from_millis(30));
    wait_ledger(s.pool(), 2_000).await;

    let joined_at = Instant::now();
    s.add_broker(|_| {});
    s.ready(1).await;
    let half = i64::from(PARTITIONS / 2);
    let split = eventually(DRAIN, "the joining broker holds half the partitions", || async {
        let o = owners(s.pool()).await;
        (o.len() == 2 && o.iter().all(|r| r.1 == half)).then_some(o)
    })
    .await;
    eprintln!("rebalanced to {split:?} {:?} after the join", joined_at.elapsed());
    let want = half as f64;
    eventually(DRAIN, &format!("broker-1's tillsync_partitions_owned at {want}"), || async {
        owned_metric(s.broker(1)).await.filter(|n| *n == want)
    })
    .await;

    task.await.unwrap();
    wait_watermarks(s.pool(), devices.len(), 200, started).await;
    let pool = s.pool();
    assert_every_event_once(pool, devices.len(), 200).await;
    assert_read_models(pool, &devices, 200).await;
    assert_one_writer_per_partition(pool).await;
    let handed = count(pool, "SELECT count(*) FROM partition_epochs WHERE instance_id = 'broker-1'").await;
    let by_new = count(
        pool,
        "SELECT count(*) FROM processed_events pe
         JOIN partition_epochs e ON e.partition = pe.partition AND e.epoch = pe.epoch
         WHERE e.instance_id = 'broker-1'",
    )
    .await;
    eprintln!("broker-1 took {handed} epochs and committed {by_new} events");
    assert!(by_new > 0, "the joining broker committed part of the drain");
    assert_in_order(pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_reach_one_final_state_while_a_broker_is_killed() {
    const COMMANDS: usize = 1_000;
    let mut s = Scale::start().await;
    // Heartbeats of a killed broker's stores wait for the takeover: keep devices online.
    brokers(&mut s, 3, |c| c.offline_after_s = 60).await;
    let devices = fleet(16, 2);
    let sim = s.devices_online(&devices).await;
    let statuses = Statuses::watch(&s.cluster.client().await, TENANT).await;

    let started = Instant::now();
    let cmds = commands_for(&devices, COMMANDS);
    let sender = spawn_commands(s.cluster.jetstream().await, &cmds);
    let acked = "SELECT count(*) FROM command_inbox WHERE state = 'acked'";
    eventually(DRAIN, "200 commands acked", || async { (count(s.pool(), acked).await >= 200).then_some(()) }).await;
    s.kill(1);
    let killed_at = Instant::now();
    eprintln!("killed broker-1 at {} acked commands", count(s.pool(), acked).await);
    let takeover = wait_taken_over(s.pool(), &instance(1), killed_at).await;
    eprintln!("takeover after kill -9: {takeover:?}");
    sender.await.unwrap();
    eventually(DRAIN, "every command acked", || async {
        (count(s.pool(), acked).await == COMMANDS as i64).then_some(())
    })
    .await;
    eprintln!("{COMMANDS} commands acked after {:?}", started.elapsed());
    assert_commands_acked_once(s.pool(), &cmds, &sim, &statuses).await;
    assert!(takeover < TAKEOVER_LIMIT, "takeover took {takeover:?}");
}
