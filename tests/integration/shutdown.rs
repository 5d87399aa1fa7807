//! A SIGTERM stops the broker whole: every task it registered (the `Tasks started.` line names
//! them) is joined, each logging `Task stopped.`, none is left to abort; then the short-lived
//! work they spawned (actor wakes, status marks: `Spawned work joined.`); then the actors stop
//! and the pools close (`Pools closed.`), and the process exits 0 well inside its bound,
//! leaving no connection of its own in Postgres. The broker runs as a process of its own so
//! its logs and its exit are its own.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use crate::json_log::Log;
use tillsync_tests::{bin_path, eventually, free_addr, http_get, metric, Stack, DEFAULT_TIMEOUT};

/// How long the broker may take from SIGTERM to its exit: its partitions' handover and
/// in-flight batches, well below the bound on its tasks (20 s).
const EXITS_WITHIN: Duration = Duration::from_secs(15);

async fn connections(pool: &sqlx::PgPool, application_name: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(application_name)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn sigterm_joins_every_task_then_closes_the_pools_and_exits_0() {
    // With authorization, so the callout and revocation tasks run too.
    let stack = Stack::start_with_auth().await;
    let mut config = stack.broker_config();
    config.http_addr = free_addr();
    let instance = format!("shutdown-{}", uuid::Uuid::new_v4().simple());
    config.instance_id = Some(instance.clone());
    let mut child = tokio::process::Command::new(bin_path("tillsync-broker"))
        .envs(config.to_env())
        .env("TILLSYNC_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tillsync-broker");
    let (log, reading) = Log::follow(child.stdout.take().unwrap());

    eventually(DEFAULT_TIMEOUT, "the broker started", || async {
        (!log.find("Broker started.").is_empty()).then_some(())
    })
    .await;
    let started = log.find("Tasks started.");
    let names: BTreeSet<String> =
        started[0]["tasks"].as_str().expect("the task names").split(',').map(String::from).collect();
    for expected in
        ["http", "partitions", "monitor", "passivate", "auth_callout", "revocation_kick", "config_distribute"]
    {
        assert!(names.contains(expected), "{expected} not among the registered tasks {names:?}");
    }
    // Every partition owned (its leases are handed over at the stop) and every task exported
    // as running.
    let partitions = f64::from(config.partitions);
    eventually(DEFAULT_TIMEOUT, "every partition owned and every task running", || async {
        let (_, m) = http_get(config.http_addr, "/metrics").await?;
        metric(&m, "tillsync_partitions_owned", "").filter(|v| *v == partitions)?;
        let running = |name: &String| {
            m.lines().any(|l| {
                l.starts_with("tillsync_broker_tasks{") && l.contains(&format!("task=\"{name}\"")) && l.ends_with(" 1")
            })
        };
        names.iter().all(running).then_some(())
    })
    .await;
    let application_name = format!("tillsync-broker {instance}");
    assert!(
        connections(&stack.db.pool, &application_name).await > 0,
        "the broker's connections are named {application_name:?}"
    );

    let (lines, last_task) =
        crate::json_log::stop_and_check_tasks(&mut child, reading, &log, EXITS_WITHIN, &names).await;
    let pools = Log::position(&lines, "Pools closed.").expect("the pools are closed");
    let actors = Log::position(&lines, "Actors stopped.").expect("the actors are stopped");
    assert!(last_task < actors && actors < pools, "tasks joined, then actors stopped, then pools closed");
    let spawned = Log::position(&lines, "Spawned work joined.").expect("the spawned work is joined");
    assert!(last_task < spawned && spawned < actors, "the tasks' spawned work joined before the actors stop");
    let stopped = log.find("Broker stopped.");
    assert_eq!(stopped[0]["tasks_not_stopped"], 0);

    // Closed pools left nothing behind: no connection of the broker's is open.
    eventually(Duration::from_secs(5), "the broker's connections gone", || async {
        (connections(&stack.db.pool, &application_name).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        stack.db.count(&format!("SELECT count(*) FROM broker_instances WHERE instance_id = '{instance}'")).await,
        0,
        "the instance report is removed when its task stops"
    );
}
