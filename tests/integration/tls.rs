//! TLS end to end with real servers and certificates made at test time: a nats-server that
//! demands client certificates, reached by the broker binary, the edge bridge binary and the
//! `tillsync` CLI over `tls://`; clients without a certificate or without the CA refused; and a
//! private Postgres cluster that accepts only TLS, reached with `sslmode=verify-full`.

use std::process::Stdio;

use serde_json::json;
use tillsync_broker::admin::nats::TlsFiles;
use tillsync_broker::admin::Chain;
use tillsync_schemas::DeviceAddr;
use tillsync_tests::{
    bin_path, eventually_eq, free_addr, BrokerProc, Certs, InProcBroker, NatsServer, TestDb, TlsPostgres,
    DEFAULT_TIMEOUT,
};

use crate::common::*;
use crate::edge::support::EdgeProc;
use crate::ops::Run;

/// Runs `tillsync` with exactly these environment variables for NATS and Postgres.
async fn tillsync(env: &[(&str, String)], args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(bin_path("tillsync"));
    for var in ["NATS_CREDS", "NATS_CA_FILE", "NATS_CERT_FILE", "NATS_KEY_FILE", "TILLSYNC_OPERATOR"] {
        cmd.env_remove(var);
    }
    let out = cmd.args(args).envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).output().await.unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn nats_env(nats: &NatsServer, files: &TlsFiles, db_url: &str) -> Vec<(&'static str, String)> {
    let mut env = vec![("NATS_URL", nats.url()), ("DATABASE_URL", db_url.to_string())];
    env.extend(files.to_env());
    env
}

#[tokio::test]
async fn an_event_crosses_nats_tls_from_the_bridge_binary_to_the_broker_binary_and_status_passes() {
    tillsync_tests::init_tracing();
    let certs = Certs::generate();
    let (nats, db) = tokio::join!(NatsServer::start_tls(&certs), TestDb::new());
    assert!(nats.url().starts_with("tls://127.0.0.1:"));
    add_tenant(&db.pool, "acme").await;

    let mut config = tillsync_broker::config::Config::for_tests(&nats.url(), &db.url);
    config.nats_tls = certs.broker_files();
    let _broker = BrokerProc::start(&config);

    let dir = tempfile::tempdir().unwrap();
    let mut edge_config = tillsync_edge::Config::for_tests(
        &DeviceAddr::new("acme", "s1", "till-1"),
        &nats.url(),
        dir.path().join("edge.db"),
    );
    edge_config.http_addr = free_addr();
    edge_config.nats_tls = certs.edge_files();
    let edge = EdgeProc::start(&edge_config);
    edge.wait_ready().await;
    let body = json!({"kind": "order_opened", "payload": {"order_id": "o-tls", "currency": "EUR"}});
    let r = reqwest::Client::new().post(edge.url("/v1/events")).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);

    eventually_eq(DEFAULT_TIMEOUT, "the order row, via NATS over TLS", 1, || {
        db.count("SELECT count(*) FROM orders WHERE tenant_id = 'acme' AND order_id = 'o-tls'")
    })
    .await;
    let run = tillsync(&nats_env(&nats, &certs.broker_files(), &db.url), &["status"]).await;
    assert_eq!(run.code, 0, "tillsync status over TLS:\n{}{}", run.stdout, run.stderr);
}

#[tokio::test]
async fn nats_refuses_a_client_without_a_certificate_and_one_that_does_not_trust_the_ca() {
    let certs = Certs::generate();
    let stranger = Certs::generate();
    let nats = NatsServer::start_tls(&certs).await;
    let connect = |files: TlsFiles| {
        let url = nats.url();
        async move { tillsync_broker::admin::nats::connect(&url, None, &files, "tls-test").await.map(drop) }
    };
    connect(certs.broker_files()).await.expect("the CA and a client certificate are accepted");

    let no_cert = TlsFiles { ca: Some(certs.ca.clone()), cert: None, key: None };
    let err = Chain(&connect(no_cert).await.expect_err("no client certificate")).to_string();
    assert!(err.contains("cannot connect to NATS at tls://127.0.0.1:") && err.contains("CertificateRequired"), "{err}");

    let other_ca = TlsFiles { ca: Some(stranger.ca.clone()), ..certs.broker_files() };
    let err = Chain(&connect(other_ca).await.expect_err("a server certificate the client does not trust")).to_string();
    assert!(err.contains("invalid peer certificate: UnknownIssuer"), "{err}");

    // `tillsync status` reports NATS unreachable with the cause and exits 3.
    let env = nats_env(
        &nats,
        &TlsFiles { ca: Some(stranger.ca.clone()), ..certs.broker_files() },
        "postgres://x@127.0.0.1:1/x",
    );
    let run = tillsync(&env, &["status"]).await;
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("UNREACHABLE") && run.stdout.contains("UnknownIssuer"), "{}", run.stdout);

    // A certificate without its key is a usage mistake, refused before any connection.
    let half = TlsFiles { key: None, ..certs.broker_files() };
    let err = connect(half).await.expect_err("a certificate without its key").to_string();
    assert!(err.contains("NATS_CERT_FILE and NATS_KEY_FILE must be given together"), "{err}");
}

#[tokio::test]
async fn the_broker_and_the_cli_reach_postgres_with_sslmode_verify_full() {
    tillsync_tests::init_tracing();
    let certs = Certs::generate();
    let pg = TlsPostgres::start(&certs);
    let url = pg.verify_full_url(&certs.ca);
    let nats = NatsServer::start().await;
    let env = nats_env(&nats, &TlsFiles::default(), &url);

    tillsync(&env, &["migrate"]).await.ok();
    tillsync(&env, &["tenants", "add", "acme"]).await.ok();
    let broker = InProcBroker::start(tillsync_broker::config::Config::for_tests(&nats.url(), &url)).await;
    let js = nats.jetstream().await;
    publish(&js, &event(&DeviceAddr::new("acme", "s1", "till-1"), 1, opened("o-pg-tls"))).await;

    let pool = tillsync_broker::admin::db::connect(&url, 2).await.expect("a verified TLS connection");
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders WHERE order_id = 'o-pg-tls'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    eventually_eq(DEFAULT_TIMEOUT, "the order row, via Postgres over TLS", 1, count).await;
    let ssl: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(&pool).await.unwrap();
    assert!(ssl, "the session is encrypted");
    broker.stop().await;
}

#[tokio::test]
async fn postgres_over_tls_refuses_an_untrusted_certificate_and_plain_text() {
    let certs = Certs::generate();
    let stranger = Certs::generate();
    let pg = TlsPostgres::start(&certs);
    let wrong_ca = pg.verify_full_url(&stranger.ca);

    let err = tillsync_broker::admin::db::connect(&wrong_ca, 1).await.expect_err("a server certificate of another CA");
    let err = err.to_string();
    assert!(err.contains("invalid peer certificate: UnknownIssuer"), "{err}");
    let run = tillsync(&[("DATABASE_URL", wrong_ca)], &["migrate"]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("cannot connect to Postgres") && run.stderr.contains("UnknownIssuer"),
        "{}",
        run.stderr
    );

    // pg_hba.conf has only hostssl lines: without TLS there is no way in.
    let plain =
        tillsync_broker::admin::db::connect(&pg.url("sslmode=disable"), 1).await.expect_err("plain text").to_string();
    assert!(plain.contains("no pg_hba.conf entry"), "{plain}");
}
