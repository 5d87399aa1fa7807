//! A dependency's outage, injected for real, is a metric, a fast readiness answer, a coded
//! refusal and a status line naming the cause; and it ends by itself once the dependency is
//! back. Postgres here is a private cluster the test stops (`pg_ctl stop -m immediate`).

use std::time::{Duration, Instant};

use tillsync_tests::{
    bin_path, eventually, free_addr, http_get, metric, AuthSetup, BrokerProc, Certs, NatsServer, TestDb, TlsPostgres,
};

use crate::ops::Run;

/// `tillsync` with exactly these NATS and Postgres settings.
async fn tillsync(env: &[(&str, String)], args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(bin_path("tillsync"));
    for var in ["NATS_CREDS", "NATS_URL", "DATABASE_URL", "TILLSYNC_OPERATOR"] {
        cmd.env_remove(var);
    }
    let out = cmd.args(args).envs(env.iter().map(|(k, v)| (k, v))).stdin(std::process::Stdio::null()).output();
    Run::of(out.await.unwrap())
}

async fn gauge(b: &BrokerProc, name: &str, labels: &str) -> Option<f64> {
    metric(&b.metrics().await?, name, labels)
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_down_is_a_gauge_a_fast_503_an_unavailable_refusal_and_a_status_cause() {
    tillsync_tests::init_tracing();
    let certs = Certs::generate();
    let mut pg = TlsPostgres::start(&certs);
    let url = pg.url("sslmode=require");
    let auth = AuthSetup::new();
    let nats = NatsServer::start_with_auth(&auth).await;
    let env = vec![
        ("NATS_URL", nats.url()),
        ("DATABASE_URL", url.clone()),
        ("NATS_CREDS", auth.operator_creds().display().to_string()),
    ];
    tillsync(&env, &["migrate"]).await.ok();
    let mut config = tillsync_broker::config::Config::for_tests(&nats.url(), &url);
    config.http_addr = free_addr();
    auth.broker(&mut config);
    let broker = BrokerProc::start(&config);
    let up = || async { gauge(&broker, "tillsync_postgres_up", "").await };
    eventually(Duration::from_secs(30), "tillsync_postgres_up 1", || async { up().await.filter(|v| *v == 1.0) }).await;
    let refused_unavailable = "result=\"refused\",reason=\"unavailable\"";
    let before = gauge(&broker, "tillsync_auth_decisions_total", refused_unavailable).await;
    assert_eq!(before, Some(0.0), "the refusal counter exists at 0 from the start");

    pg.stop();
    let down_at = Instant::now();
    eventually(Duration::from_secs(10), "tillsync_postgres_up 0", || async { up().await.filter(|v| *v == 0.0) }).await;
    eprintln!("tillsync_postgres_up read 0 after {:?}", down_at.elapsed());

    // /readyz answers, within about a second, naming what is down.
    let asked = Instant::now();
    let (code, body) = http_get(broker.http_addr(), "/readyz").await.expect("an answer");
    let took = asked.elapsed();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("postgres: unavailable") && body.contains("nats: ok"), "{body}");
    assert!(took < Duration::from_millis(1500), "/readyz took {took:?}");

    // A connecting client cannot be decided: it is refused as unavailable, in time for
    // nats-server to pass the answer on, and counted.
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let tried = Instant::now();
    let err = async_nats::ConnectOptions::with_nkey(stranger)
        .max_reconnects(0)
        .connect(nats.url())
        .await
        .expect_err("no decision without Postgres");
    eprintln!("connect refused after {:?}: {err}", tried.elapsed());
    eventually(Duration::from_secs(10), "an unavailable refusal counted", || async {
        gauge(&broker, "tillsync_auth_decisions_total", refused_unavailable).await.filter(|v| *v >= 1.0)
    })
    .await;

    // `tillsync status` names the cause, quickly, and marks what it could not read as unknown.
    let asked = Instant::now();
    let status = tillsync(&env, &["status", "--timeout-s", "5"]).await;
    let took = asked.elapsed();
    assert_eq!(status.code, 3, "{}{}", status.stdout, status.stderr);
    assert!(status.stdout.contains("Postgres: UNREACHABLE"), "{}", status.stdout);
    assert!(status.stdout.to_lowercase().contains("connection refused"), "the cause is printed:\n{}", status.stdout);
    assert!(status.stdout.contains("OPEN GAPS: unknown"), "{}", status.stdout);
    assert!(status.stdout.contains("quarantined messages pending: unknown"), "{}", status.stdout);
    assert!(took < Duration::from_secs(5), "status took {took:?}");
    let json = tillsync(&env, &["--json", "status", "--timeout-s", "5"]).await.json();
    assert!(json["gaps"].is_null() && json["quarantined"].is_null(), "{json:#}");

    // Back by itself once Postgres is.
    pg.start_again();
    eventually(Duration::from_secs(30), "tillsync_postgres_up back to 1", || async {
        up().await.filter(|v| *v == 1.0)
    })
    .await;
    eventually(Duration::from_secs(10), "/readyz 200", || async {
        http_get(broker.http_addr(), "/readyz").await.filter(|(c, _)| *c == 200)
    })
    .await;
    let mut broker = broker;
    broker.kill();
}

/// NATS lost (the server killed): every partition is given up within one lease TTL, all in
/// the same round rather than one per timed-out renewal; `tillsync_partitions_owned` and
/// `tillsync status` follow as they are lost; all come back once NATS does.
#[tokio::test(flavor = "multi_thread")]
async fn partitions_are_given_up_within_one_ttl_of_losing_nats_and_status_says_so() {
    let db = TestDb::new().await;
    let mut nats = NatsServer::start().await;
    let mut config = tillsync_broker::config::Config::for_tests(&nats.url(), &db.url);
    config.http_addr = free_addr();
    config.partitions = 16;
    let ttl = config.lease_ttl();
    let mut broker = BrokerProc::start(&config);
    let owned = || async { gauge(&broker, "tillsync_partitions_owned", "").await };
    eventually(Duration::from_secs(60), "16 partitions owned", || async { owned().await.filter(|v| *v == 16.0) }).await;

    nats.stop();
    let cut = Instant::now();
    let seen = std::sync::Mutex::new(Vec::new());
    eventually(ttl * 3, "no partition owned", || async {
        let v = owned().await?;
        let mut seen = seen.lock().unwrap();
        if seen.last() != Some(&v) {
            seen.push(v);
        }
        (v == 0.0).then_some(())
    })
    .await;
    let took = cut.elapsed();
    let seen = seen.into_inner().unwrap();
    eprintln!("partitions owned after the cut: {seen:?}, 0 after {took:?} (lease TTL {ttl:?})");
    // The last renewal was at most one renewal interval (TTL / 5) before the cut.
    assert!(took <= ttl + Duration::from_millis(1500), "all lost within one TTL, took {took:?}");
    let lost = gauge(&broker, "tillsync_partition_changes_total", "change=\"lost\"").await;
    assert_eq!(lost, Some(16.0));
    let unmarked = || async {
        db.count("SELECT count(*) FROM partition_owners WHERE released_at IS NULL AND lost_at IS NULL").await
    };
    eventually(Duration::from_secs(10), "every owner row marked lost", || async {
        (unmarked().await == 0).then_some(())
    })
    .await;
    let env = vec![("NATS_URL", nats.url()), ("DATABASE_URL", db.url.clone())];
    let status = tillsync(&env, &["status", "--timeout-s", "3"]).await;
    assert_eq!(status.code, 3, "{}{}", status.stdout, status.stderr);
    assert!(status.stdout.contains("16 partition(s) have no owner"), "{}", status.stdout);

    nats.restart().await;
    eventually(Duration::from_secs(60), "16 partitions owned again", || async { owned().await.filter(|v| *v == 16.0) })
        .await;
    assert_eq!(unmarked().await, 16, "a new epoch clears lost_at");
    broker.kill();
}
