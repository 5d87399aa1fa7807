//! `tillsync-edge simulate`: N devices in one process, each a full [`Bridge`] with its own
//! SQLite file, submitting realistic order flows through the library API until Ctrl-C. Used by
//! the local demo script.

use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;
use tillsync_schemas::event::*;
use tillsync_schemas::{DeviceAddr, EventBody};
use tokio_util::sync::CancellationToken;

use crate::{Bridge, Config, EventDraft};

#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Tenant of every simulated device (it must exist in the broker's tenants table).
    #[arg(long, env = "TILLSYNC_TENANT", default_value = "demo")]
    pub tenant: String,
    /// Number of stores (`store-1`, `store-2`, ...).
    #[arg(long, default_value_t = 2)]
    pub stores: usize,
    /// Devices per store (`till-1`, `till-2`, ...).
    #[arg(long, default_value_t = 2)]
    pub devices_per_store: usize,
    /// Events per second per device.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Directory of the SQLite files, one per device (kept across runs: seqs continue).
    #[arg(long, default_value = "tillsync-sim")]
    pub data_dir: PathBuf,
    /// NATS server URL(s).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS credentials (a .creds or nkey seed file) for devices that are not activated; an
    /// activated device connects with its identity file.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// Heartbeat interval of each device, seconds.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_s: u64,
    /// Public keys whose command signatures the devices accept (the broker's signing key).
    #[arg(long, env = "TILLSYNC_EDGE_COMMAND_KEYS", value_delimiter = ',')]
    pub command_keys: Vec<String>,
    /// Accept a `nats://` URL to another host without TLS (logged at warn by each device).
    #[arg(long, env = "TILLSYNC_ALLOW_PLAINTEXT", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_plaintext: bool,
    /// Seconds between summary lines.
    #[arg(long, default_value_t = 5)]
    pub summary_s: u64,
}

pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0.0 && args.rate <= 1000.0, "--rate must be in (0, 1000]");
    anyhow::ensure!(args.stores > 0 && args.devices_per_store > 0, "--stores and --devices-per-store must be positive");
    std::fs::create_dir_all(&args.data_dir)?;
    let mut bridges = Vec::new();
    for s in 1..=args.stores {
        for d in 1..=args.devices_per_store {
            let addr = DeviceAddr::new(&args.tenant, format!("store-{s}"), format!("till-{d}"));
            let db = args.data_dir.join(format!("{}-{}-{}.db", addr.tenant_id, addr.store_id, addr.device_id));
            let mut config = Config::new(&addr, &args.nats_url, db);
            config.nats_creds = args.nats_creds.clone();
            config.heartbeat_s = args.heartbeat_s;
            config.allow_plaintext = args.allow_plaintext;
            config.command_keys = args.command_keys.clone();
            // Many files on one disk: crash safety is enough for a demo, power-loss safety costs fsyncs.
            config.sqlite_sync = "normal".into();
            bridges.push(std::sync::Arc::new(Bridge::start(config).await?));
        }
    }
    println!(
        "simulating {} devices ({} stores x {}) at {} events/s each; Ctrl-C to stop",
        bridges.len(),
        args.stores,
        args.devices_per_store,
        args.rate
    );
    let cancel = CancellationToken::new();
    let mut generators = tokio::task::JoinSet::new();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    for bridge in &bridges {
        let (bridge, cancel, run_id) = (bridge.clone(), cancel.clone(), run_id.clone());
        let every = Duration::from_secs_f64(1.0 / args.rate);
        generators.spawn(async move { generate(&bridge, every, &run_id, cancel).await });
    }
    let mut tick = tokio::time::interval(Duration::from_secs(args.summary_s.max(1)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => println!("{}", summary(&bridges).await),
        }
    }
    cancel.cancel();
    while generators.join_next().await.is_some() {}
    println!("{}", summary(&bridges).await);
    for bridge in bridges {
        if let Ok(b) = std::sync::Arc::try_unwrap(bridge) {
            b.shutdown().await;
        }
    }
    println!("stopped");
    Ok(())
}

async fn summary(bridges: &[std::sync::Arc<Bridge>]) -> String {
    let (mut accepted, mut sent, mut acked, mut applied, mut online) = (0, 0, 0, 0, 0);
    for b in bridges {
        if let Ok(s) = b.status().await {
            accepted += s.outbox.last_seq;
            sent += s.outbox.last_seq - s.outbox.unsent;
            acked += s.outbox.watermark;
            applied += s.commands_applied;
            online += usize::from(s.connection == "connected");
        }
    }
    format!(
        "accepted {accepted}  sent {sent}  acked-by-watermark {acked}  commands applied {applied}  connected {online}/{}",
        bridges.len()
    )
}

async fn generate(bridge: &Bridge, every: Duration, run_id: &str, cancel: CancellationToken) {
    let device = bridge.status().await.map(|s| s.device_id).unwrap_or_default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        n += 1;
        let order = format!("o-{device}-{run_id}-{n}");
        let flow = order_flow(&order, &mut rand::rng());
        for body in flow {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = bridge.submit(EventDraft::new(body)).await {
                tracing::warn!(%error, code = error.code(), "Simulated event refused.");
            }
        }
    }
}

const MENU: &[(&str, &str, i64)] = &[
    ("latte", "Latte", 350),
    ("espresso", "Espresso", 220),
    ("croissant", "Croissant", 280),
    ("bagel", "Bagel", 390),
    ("juice", "Orange juice", 420),
    ("muffin", "Blueberry muffin", 310),
];

/// One order's life: opened, items (sometimes one removed), held or not, paid, receipt,
/// closed; sometimes a refund, sometimes an availability override on the side.
pub fn order_flow(order: &str, rng: &mut impl Rng) -> Vec<EventBody> {
    let currency = "EUR".to_string();
    let table = rng.random_bool(0.5).then(|| format!("T{}", rng.random_range(1..=20)));
    let mut events =
        vec![EventBody::OrderOpened(OrderOpened { order_id: order.into(), currency: currency.clone(), table })];
    let mut total = 0;
    let lines = rng.random_range(1..=4);
    for l in 1..=lines {
        let (sku, name, price) = MENU[rng.random_range(0..MENU.len())];
        let quantity = rng.random_range(1..=3);
        events.push(EventBody::OrderItemAdded(OrderItemAdded {
            order_id: order.into(),
            line_id: format!("l-{l}"),
            sku: sku.into(),
            name: name.into(),
            quantity,
            unit_price_minor: price,
        }));
        total += price * i64::from(quantity);
        if l == lines && lines > 1 && rng.random_bool(0.1) {
            events.push(EventBody::OrderItemRemoved(OrderItemRemoved {
                order_id: order.into(),
                line_id: format!("l-{l}"),
            }));
            total -= price * i64::from(quantity);
        }
    }
    if rng.random_bool(0.2) {
        events
            .push(EventBody::OrderStatusChanged(OrderStatusChanged { order_id: order.into(), status: "held".into() }));
    }
    let payment_id = format!("p-{order}");
    events.push(EventBody::PaymentCaptured(PaymentCaptured {
        order_id: order.into(),
        payment_id: payment_id.clone(),
        amount_minor: total,
        currency: currency.clone(),
        method: if rng.random_bool(0.7) { "card" } else { "cash" }.into(),
    }));
    events.push(EventBody::OrderStatusChanged(OrderStatusChanged { order_id: order.into(), status: "paid".into() }));
    events.push(EventBody::ReceiptIssued(ReceiptIssued {
        order_id: order.into(),
        receipt_id: format!("r-{order}"),
        number: format!("R-{}", order.rsplit('-').next().unwrap_or("0")),
        total_minor: total,
        currency: currency.clone(),
    }));
    if rng.random_bool(0.05) {
        events.push(EventBody::PaymentRefunded(PaymentRefunded {
            order_id: order.into(),
            payment_id,
            refund_id: format!("rf-{order}"),
            amount_minor: (total / 2).max(1),
            currency,
            reason: "customer complaint".into(),
        }));
    }
    events.push(EventBody::OrderStatusChanged(OrderStatusChanged { order_id: order.into(), status: "closed".into() }));
    if rng.random_bool(0.03) {
        let (sku, _, _) = MENU[rng.random_range(0..MENU.len())];
        events.push(EventBody::AvailabilityOverridden(AvailabilityOverridden {
            sku: sku.into(),
            available: false,
            until_ms: Some(crate::now_ms() + 3_600_000),
        }));
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_are_valid_events() {
        let addr = DeviceAddr::new("demo", "store-1", "till-1");
        let mut rng = rand::rng();
        for n in 0..200 {
            let order = format!("o-till-1-abcdef12-{n}");
            let flow = order_flow(&order, &mut rng);
            assert_eq!(flow[0].kind(), "order_opened");
            for (i, body) in flow.into_iter().enumerate() {
                EventDraft::new(body)
                    .into_envelope(&addr, i as u64 + 1, uuid::Uuid::now_v7().to_string(), 1)
                    .unwrap_or_else(|e| panic!("{order} event {i}: {e}"));
            }
        }
    }
}
