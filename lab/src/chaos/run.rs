//! The run's phases: set up every process, traffic with the nemesis, heal, quiesce (bounded),
//! collect from Postgres, check.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tillsync_schemas::streams;
use tillsync_testkit::free_port;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::auth::{self, Auth};
use super::fleet::{bridge_db, Bins, Fleet};
use super::history::{Histories, StatusSeen};
use super::nemesis::{self, with_fleet, Done};
use super::postgres::PgCluster;
use super::report::{Observed, Report};
use super::{checker, collect, handler, portal, pos, ChaosArgs, Device, TENANT};

/// What the run records while it goes (shared with the tasks that record it).
#[derive(Default)]
struct Recorded {
    accepted: Arc<Mutex<Vec<super::history::AcceptedEvent>>>,
    sent: Arc<Mutex<Vec<super::history::SentCommand>>>,
    statuses: Arc<Mutex<Vec<StatusSeen>>>,
    applications: Arc<Mutex<Vec<super::history::Application>>>,
}

pub async fn execute(args: &ChaosArgs, dir: &Path) -> anyhow::Result<Report> {
    let faults = args.faults.0.clone();
    let (devices_n, brokers) = (usize::from(args.devices), usize::from(args.brokers));
    let steps = nemesis::schedule(args.seed, args.seconds, &faults, brokers, devices_n);
    eprintln!("fault schedule (seed {}, {} steps):", args.seed, steps.len());
    for s in &steps {
        eprintln!(
            "  at {:>6.1}s  {:<15} target {}  hold {:.1}s",
            s.at_ms as f64 / 1e3,
            s.fault.name(),
            s.target,
            s.hold_ms as f64 / 1e3
        );
    }
    eprintln!("run directory: {}", dir.display());
    // The postgres user must reach its cluster under this directory.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let bins = Bins::find()?;
    let devices: Vec<Device> = (1..=devices_n)
        .map(|i| {
            Ok(Device {
                tenant_id: TENANT.into(),
                store_id: format!("s-{i}"),
                device_id: format!("till-{i}"),
                http: format!("127.0.0.1:{}", free_port()?),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let rec = Recorded::default();
    let pg_dir = dir.join("pg");
    let pg = tokio::task::spawn_blocking(move || PgCluster::start(&pg_dir)).await??;
    provision(&pg.url(), &devices).await?;
    let handler_stop = CancellationToken::new();
    let handler = handler::serve(rec.applications.clone(), handler_stop.clone()).await?;
    let auth = Auth::generate(&dir.join("auth"))?;
    let fleet = Fleet::new(&bins, dir, pg, brokers, &devices, &handler.to_string(), auth)?;
    let nats_url = fleet.nats_url.clone();
    let fleet = Arc::new(Mutex::new(fleet));
    let result = traffic_and_check(args, &steps, &devices, &fleet, &nats_url, &rec, dir).await;
    eprintln!("stopping every process");
    with_fleet(&fleet, |f| f.stop()).await;
    handler_stop.cancel();
    let (checks, observed) = result?;
    std::fs::write(dir.join("schedule.json"), serde_json::to_vec_pretty(&steps)?)?;
    let violations = checks.iter().map(|c| c.violations).sum();
    Ok(Report {
        seed: args.seed,
        seconds: args.seconds,
        devices: devices_n,
        brokers,
        // start_fleet carries out no run without it.
        authorization: true,
        faults: faults.iter().map(|f| f.name()).collect(),
        schedule: steps,
        observed,
        checks,
        violations,
        run_dir: None,
    })
}

/// Migrates the private database, adds the tenant with the test approvers the portal signs
/// with and provisions the devices (so commands to a device not heard from yet are queued, not
/// rejected).
async fn provision(url: &str, devices: &[Device]) -> anyhow::Result<()> {
    let pool = tillsync_ops::db::pool(url, None, 2).await?;
    tillsync_ops::db::migrate(&pool).await?;
    sqlx::query("INSERT INTO tenants (tenant_id, name) VALUES ($1, 'chaos run')").bind(TENANT).execute(&pool).await?;
    tillsync_ops::approvers::add_test_approvers(&pool, TENANT).await?;
    for d in devices {
        sqlx::query("INSERT INTO devices (tenant_id, store_id, device_id, provisioned) VALUES ($1, $2, $3, true)")
            .bind(&d.tenant_id)
            .bind(&d.store_id)
            .bind(&d.device_id)
            .execute(&pool)
            .await?;
    }
    pool.close().await;
    Ok(())
}

/// Polls `ready` every 200 ms until it is true, or fails with `what` after `timeout`.
async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !ready().await {
        anyhow::ensure!(Instant::now() < deadline, "{what} not within {} s", timeout.as_secs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

async fn bridge_status(http: &reqwest::Client, d: &Device) -> Option<serde_json::Value> {
    http.get(format!("http://{}/v1/status", d.http)).send().await.ok()?.json().await.ok()
}

/// Starts nats-server, the brokers and the bridges, each once the one before answers; the
/// bridges once activated. Fails unless nats-server turns away a client without credentials.
async fn start_fleet(
    fleet: &Arc<Mutex<Fleet>>,
    nats_url: &str,
    devices: &[Device],
    dir: &Path,
) -> anyhow::Result<async_nats::jetstream::Context> {
    let (auth, edge, logs, pg_url, broker_http) = {
        let f = fleet.lock().expect("fleet lock");
        (f.auth.clone(), f.edge.clone(), f.logs.clone(), f.pg.url(), f.broker_http.clone())
    };
    with_fleet(fleet, |f| f.nats.start()).await?;
    let js = async_nats::jetstream::new(auth.operator_client(nats_url).await?);
    wait_for(Duration::from_secs(20), "nats-server with JetStream", || async { js.query_account().await.is_ok() })
        .await?;
    with_fleet(fleet, |f| f.brokers.iter_mut().try_for_each(|b| b.start())).await?;
    wait_for(Duration::from_secs(60), "the broker's streams", || async {
        js.get_stream(streams::EVENTS).await.is_ok() && js.get_stream(streams::STATUS).await.is_ok()
    })
    .await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    for addr in &broker_http {
        wait_for(Duration::from_secs(30), &format!("the auth callout of the broker on {addr}"), || {
            auth::answers_callouts(&http, addr)
        })
        .await?;
    }
    let bridges: Vec<_> = devices.iter().map(|d| (d.clone(), bridge_db(dir, d))).collect();
    auth::activate_bridges(&edge, nats_url, &pg_url, &bridges, &logs).await.context("activating the bridges")?;
    anyhow::ensure!(
        auth::refuses_anonymous(nats_url).await,
        "nats-server admitted a client without credentials: authorization is not on"
    );
    with_fleet(fleet, |f| f.bridges.iter_mut().try_for_each(|b| b.start())).await?;
    for d in devices {
        wait_for(Duration::from_secs(30), &format!("bridge {}", d.device_id), || async {
            bridge_status(&http, d).await.is_some()
        })
        .await?;
    }
    Ok(js)
}

/// Traffic and faults for `args.seconds`, heal, quiesce, then collect and check.
async fn traffic_and_check(
    args: &ChaosArgs,
    steps: &[nemesis::Step],
    devices: &[Device],
    fleet: &Arc<Mutex<Fleet>>,
    nats_url: &str,
    rec: &Recorded,
    dir: &Path,
) -> anyhow::Result<(Vec<checker::CheckResult>, Observed)> {
    let js = start_fleet(fleet, nats_url, devices, dir).await?;
    let (stop, give_up, follow_stop, supervise_stop) =
        (CancellationToken::new(), CancellationToken::new(), CancellationToken::new(), CancellationToken::new());
    let start = Instant::now();
    eprintln!("traffic for {} s", args.seconds);
    let feeders: Vec<_> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let till = pos::Till::new(&d.device_id, args.seed.wrapping_mul(1_000).wrapping_add(i as u64));
            tokio::spawn(pos::feed(
                till,
                d.http.clone(),
                args.rate,
                stop.clone(),
                give_up.clone(),
                rec.accepted.clone(),
            ))
        })
        .collect();
    let every = Duration::from_secs_f64(1.0 / args.command_rate.max(0.01));
    let portal = tokio::spawn(portal::send(
        js.clone(),
        devices.to_vec(),
        args.seed,
        every,
        stop.clone(),
        give_up.clone(),
        rec.sent.clone(),
    ));
    let follower =
        tokio::spawn(portal::follow_statuses(js.clone(), TENANT.into(), follow_stop.clone(), rec.statuses.clone()));
    let supervisor = tokio::spawn(supervise(fleet.clone(), supervise_stop.clone()));
    let done = Arc::new(Done::default());
    let nemesis = tokio::spawn(nemesis::run(steps.to_vec(), start, fleet.clone(), js.clone(), args.seed, done.clone()));
    let end = start + Duration::from_secs(args.seconds);
    while Instant::now() < end {
        tokio::time::sleep_until((Instant::now() + Duration::from_secs(10)).min(end)).await;
        eprintln!(
            "[{:>6.1}s] {} events accepted, {} commands sent, {} faults injected",
            start.elapsed().as_secs_f64(),
            rec.accepted.lock().expect("lock").len(),
            rec.sent.lock().expect("lock").len(),
            done.faults.load(Ordering::Relaxed)
        );
    }
    eprintln!("heal: faults stop, traffic stops, everything resumes");
    if tokio::time::timeout(Duration::from_secs(30), nemesis).await.is_err() {
        tracing::warn!("The nemesis did not finish its last fault within 30 s.");
    }
    stop.cancel();
    with_fleet(fleet, |f| f.heal()).await.context("healing")?;
    let q = Instant::now();
    let quiesced = quiesce(args, devices, rec, &feeders).await;
    let quiesce_s = q.elapsed().as_secs_f64();
    give_up.cancel();
    let mut refused = 0;
    for f in feeders {
        refused += f.await.unwrap_or(0);
    }
    let _ = portal.await;
    follow_stop.cancel();
    let mut next = follower.await.unwrap_or(1);
    portal::read_statuses(&js, TENANT, &mut next, &rec.statuses).await;
    supervise_stop.cancel();
    let restarts = supervisor.await.unwrap_or(0);
    let url = fleet.lock().expect("fleet lock").pg.url();
    let pool = tillsync_ops::db::pool(&url, None, 2).await?;
    let (ledger, rows) = (collect::ledger(&pool, TENANT).await?, collect::rows(&pool, TENANT).await?);
    let commands = collect::commands(&pool, TENANT).await?;
    let h = Histories {
        accepted: rec.accepted.lock().expect("lock").clone(),
        ledger,
        rows,
        sent: rec.sent.lock().expect("lock").clone(),
        statuses: rec.statuses.lock().expect("lock").clone(),
        applications: rec.applications.lock().expect("lock").clone(),
        commands,
    };
    pool.close().await;
    std::fs::write(dir.join("histories.json"), serde_json::to_vec(&h)?)?;
    let checks = checker::check_all(&h);
    let observed = Observed {
        faults_injected: done.faults.load(Ordering::Relaxed),
        events_deleted_from_stream: done.deleted_events.load(Ordering::Relaxed),
        process_restarts_by_supervisor: restarts,
        events_accepted: h.accepted.len(),
        events_refused: refused,
        commands_sent: h.sent.len(),
        statuses_read: h.statuses.len(),
        handler_applications: h.applications.len(),
        quiesced,
        quiesce_s,
    };
    Ok((checks, observed))
}

/// Restarts what exited by itself every 500 ms until `stop`; returns how many restarts.
async fn supervise(fleet: Arc<Mutex<Fleet>>, stop: CancellationToken) -> u32 {
    let mut restarts = 0;
    while !stop.is_cancelled() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => break,
        }
        for name in with_fleet(&fleet, |f| f.supervise()).await {
            eprintln!("          supervisor: {name} exited by itself, restarted");
            restarts += 1;
        }
    }
    restarts
}

/// Waits (at most `--quiesce-s`) until every bridge's outbox is covered by the broker's
/// watermark up to its last accepted event, every confirmed command has a final status, and
/// the POS got an answer for its last event. Prints progress every 3 s.
async fn quiesce(
    args: &ChaosArgs,
    devices: &[Device],
    rec: &Recorded,
    feeders: &[tokio::task::JoinHandle<u64>],
) -> bool {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("http client");
    let start = Instant::now();
    let bound = Duration::from_secs(args.quiesce_s);
    let mut last_print = start;
    loop {
        let mut confirmed = 0;
        for d in devices {
            let accepted =
                rec.accepted.lock().expect("lock").iter().filter(|a| a.device_id == d.device_id).map(|a| a.seq).max();
            if let Some(s) = bridge_status(&http, d).await {
                let (last, wm) = (s["outbox"]["last_seq"].as_u64(), s["outbox"]["watermark"].as_u64());
                if last.is_some() && last == wm && last >= accepted {
                    confirmed += 1;
                }
            }
        }
        let (final_n, total) = {
            let sent = rec.sent.lock().expect("lock");
            let statuses = rec.statuses.lock().expect("lock");
            let confirmed_cmds: Vec<_> = sent.iter().filter(|s| s.confirmed).collect();
            let finals = confirmed_cmds
                .iter()
                .filter(|c| {
                    statuses.iter().any(|s| {
                        s.command_id == c.command_id
                            && s.is_final()
                            && (s.device_id.as_deref() == Some(c.device_id.as_str()) || s.state == "rejected")
                    })
                })
                .count();
            (finals, confirmed_cmds.len())
        };
        let pos_done = feeders.iter().all(|f| f.is_finished());
        let all = confirmed == devices.len() && final_n == total && pos_done;
        if all || start.elapsed() >= bound || last_print.elapsed() >= Duration::from_secs(3) {
            eprintln!(
                "quiesce {:>5.1}s: outboxes confirmed by the watermark {confirmed}/{}, commands final {final_n}/{total}, POS done {pos_done}",
                start.elapsed().as_secs_f64(),
                devices.len()
            );
            last_print = Instant::now();
        }
        if all {
            return true;
        }
        if start.elapsed() >= bound {
            return false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
