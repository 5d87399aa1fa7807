//! Broker configuration: environment first, flags override, one `validate()` before start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(name = "tillsync-broker")]
pub struct Config {
    /// NATS server URL(s), comma separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS credentials: a `.creds` file (JWT + nkey) or an nkey seed file (`tillsync auth init`
    /// writes `broker.nk`), when the server requires it.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,
    /// Answer NATS auth callouts as this user (nkey seed file of the callout account's user,
    /// `auth-callout.nk`); needs --auth-issuer-seed. Unset: this instance answers none.
    #[arg(long, env = "TILLSYNC_AUTH_CALLOUT_CREDS")]
    pub auth_callout_creds: Option<std::path::PathBuf>,
    /// Account nkey seed file the auth callout signs its answers with (`issuer.nk`); nats-server
    /// names its public key as the callout issuer.
    #[arg(long, env = "TILLSYNC_AUTH_ISSUER_SEED")]
    pub auth_issuer_seed: Option<std::path::PathBuf>,
    /// Account the callout places devices and portals in.
    #[arg(long, env = "TILLSYNC_AUTH_ACCOUNT", default_value = "TILLSYNC")]
    pub auth_account: String,
    /// Lifetime of the user JWT the callout grants, seconds: a connection older than this
    /// reconnects and is decided again (the bound on a revoked device when no disconnect works).
    #[arg(long, env = "TILLSYNC_AUTH_TTL_S", default_value_t = 3600)]
    pub auth_ttl_s: u64,
    /// Refused NATS connection attempts (no proven key, bad signature, unknown or revoked key, a
    /// password that is no code) and activation-user connects one source address may make per
    /// minute: a burst of this many, then one every 60/N s. Past it, the address's activation
    /// connects and unknown keys are refused as `rate_limited`; live credentials from it still
    /// connect and never count. 0: no limit.
    #[arg(long, env = "TILLSYNC_AUTH_MAX_REFUSALS_PER_ADDRESS_PER_MIN", default_value_t = 60)]
    pub auth_max_refusals_per_address_per_min: u32,
    /// NATS system account credentials (`system.nk`), to disconnect revoked devices at once.
    #[arg(long, env = "TILLSYNC_NATS_SYSTEM_CREDS")]
    pub nats_system_creds: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub nats_tls: crate::tls::TlsFiles,
    /// Postgres URL of the read-model database.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/tillsync")]
    pub database_url: String,
    /// Postgres pool size.
    #[arg(long, env = "TILLSYNC_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "TILLSYNC_HTTP_ADDR", default_value = "127.0.0.1:9464")]
    pub http_addr: SocketAddr,
    /// Name of this broker instance (shown by `tillsync status`).
    #[arg(long, env = "TILLSYNC_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// JetStream replicas for every stream (1 on a single server, 3 on a cluster).
    #[arg(long, env = "TILLSYNC_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// JetStream duplicate window for `Nats-Msg-Id`, seconds.
    #[arg(long, env = "TILLSYNC_DUPLICATE_WINDOW_S", default_value_t = 600)]
    pub duplicate_window_s: u64,
    /// How long the events stream keeps messages, days (replays reach back this far).
    #[arg(long, env = "TILLSYNC_EVENTS_MAX_AGE_DAYS", default_value_t = 30)]
    pub events_max_age_days: u64,
    /// Size limit of the events stream, bytes.
    #[arg(long, env = "TILLSYNC_EVENTS_MAX_BYTES", default_value_t = 10 * 1024 * 1024 * 1024)]
    pub events_max_bytes: i64,
    /// Most events of one device the events stream keeps: past it, the device's oldest are
    /// dropped (not other devices'), so no device can fill the stream for everyone. An event
    /// dropped before it was applied is a gap the bridge repairs from its outbox.
    #[arg(long, env = "TILLSYNC_EVENTS_MAX_PER_DEVICE", default_value_t = 100_000)]
    pub events_max_per_device: i64,
    /// Events a device may publish per second, averaged over 10 s of publish time; a device
    /// over it is cut off (its credentials revoked, reason `flooding`). Needs authorization.
    #[arg(long, env = "TILLSYNC_DEVICE_MAX_EVENTS_PER_S", default_value_t = 500)]
    pub device_max_events_per_s: u64,
    /// Event bytes a device may publish per second, averaged likewise; over it: cut off.
    #[arg(long, env = "TILLSYNC_DEVICE_MAX_BYTES_PER_S", default_value_t = 1024 * 1024)]
    pub device_max_bytes_per_s: u64,
    /// Largest group-commit batch, events.
    #[arg(long, env = "TILLSYNC_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// How long a batch waits for more events before committing, milliseconds.
    #[arg(long, env = "TILLSYNC_LINGER_MS", default_value_t = 5)]
    pub linger_ms: u64,
    /// Event batches committed at once, across the partitions this instance owns. Each
    /// partition's consumer commits one batch at a time, so a device's events stay in order
    /// whatever this is; each batch being committed holds one connection of TILLSYNC_DB_POOL.
    #[arg(long, env = "TILLSYNC_INGEST_LANES", default_value_t = 4)]
    pub ingest_lanes: usize,
    /// Command intake, command-ack and heartbeat batches handled at once, the three kinds
    /// together, across the partitions this instance owns. Each partition's consumer handles
    /// one batch at a time, so one store's commands stay in issue order. Also sizes the command
    /// path's own pool: 2 x this + 1 connections.
    #[arg(long, env = "TILLSYNC_MESSAGE_LANES", default_value_t = 8)]
    pub message_lanes: usize,
    /// JetStream ack wait for the broker's consumers, seconds.
    #[arg(long, env = "TILLSYNC_ACK_WAIT_S", default_value_t = 30)]
    pub ack_wait_s: u64,
    /// Deliveries of one message before JetStream gives up (the broker quarantines first).
    #[arg(long, env = "TILLSYNC_MAX_DELIVER", default_value_t = 20)]
    pub max_deliver: i64,
    /// A device actor idle this long is stopped (state reloads from Postgres), seconds.
    #[arg(long, env = "TILLSYNC_IDLE_PASSIVATE_S", default_value_t = 300)]
    pub idle_passivate_s: u64,
    /// Recent event ids each device actor remembers for the fast duplicate path.
    #[arg(long, env = "TILLSYNC_RECENT_IDS", default_value_t = 256)]
    pub recent_ids: usize,
    /// Longest command time-to-live accepted at intake, seconds.
    #[arg(long, env = "TILLSYNC_COMMAND_MAX_TTL_S", default_value_t = 86_400)]
    pub command_max_ttl_s: u64,
    /// Deliveries of one command before it ends `failed` with code `max_attempts`.
    #[arg(long, env = "TILLSYNC_COMMAND_MAX_ATTEMPTS", default_value_t = 5)]
    pub command_max_attempts: u32,
    /// First redelivery delay of an unacked command, milliseconds (doubles each attempt).
    #[arg(long, env = "TILLSYNC_COMMAND_RETRY_MS", default_value_t = 5_000)]
    pub command_retry_ms: u64,
    /// A device silent this long is marked offline, seconds.
    #[arg(long, env = "TILLSYNC_OFFLINE_AFTER_S", default_value_t = 90)]
    pub offline_after_s: u64,
    /// Accept events and commands for tenants not yet in the tenants table (demo only).
    /// The variable takes true/false, 1/0, yes/no, on/off.
    #[arg(long, env = "TILLSYNC_AUTO_TENANTS", default_value_t = false, value_parser = BoolishValueParser::new())]
    pub auto_tenants: bool,
    /// Accept plain text (a `nats://` URL without NATS_CA_FILE, Postgres without
    /// sslmode=require) to a host other than this one; logged at warn on every start.
    #[arg(long, env = "TILLSYNC_ALLOW_PLAINTEXT", default_value_t = false, value_parser = BoolishValueParser::new())]
    pub allow_plaintext: bool,
    /// Fault injection for tests: abort the process right after the first batch commits,
    /// before anything is acked.
    /// Debug builds only: a release binary has no such switch to flip by mistake.
    #[cfg(debug_assertions)]
    #[arg(
        long,
        env = "TILLSYNC_FAULT_CRASH_AFTER_COMMIT",
        default_value_t = false,
        value_parser = BoolishValueParser::new(),
        hide = true
    )]
    pub fault_crash_after_commit: bool,
    /// Fault injection for tests: create the streams without `deny_delete` and `deny_purge`,
    /// so a test (or the chaos run's nemesis) can delete acknowledged messages to play NATS
    /// write loss. JetStream cannot take those flags back, so it works only on streams this
    /// switch created.
    /// Debug builds only.
    #[cfg(debug_assertions)]
    #[arg(
        long,
        env = "TILLSYNC_FAULT_STREAMS_DELETABLE",
        default_value_t = false,
        value_parser = BoolishValueParser::new(),
        hide = true
    )]
    pub fault_streams_deletable: bool,
    /// How often the monitor refreshes the gauges it reads (streams, consumers, gaps,
    /// watermark stalls), milliseconds.
    #[arg(long, env = "TILLSYNC_MONITOR_INTERVAL_MS", default_value_t = 2_000)]
    pub monitor_interval_ms: u64,
    /// A device's watermark that has not reached the seq its bridge reported acked by
    /// JetStream for this long counts as stalled (`tillsync_watermarks_stalled_devices`), seconds.
    #[arg(long, env = "TILLSYNC_WATERMARK_STALL_S", default_value_t = 120)]
    pub watermark_stall_s: u64,
    /// Ask a device to resend an open gap, or seqs it reports beyond a stalled watermark,
    /// once they are this old; asked again at most this often per device (seconds).
    #[arg(long, env = "TILLSYNC_GAP_REPAIR_AFTER_S", default_value_t = 10)]
    pub gap_repair_after_s: u64,
    /// Partitions the stores are split into; each is owned by one broker instance at a time.
    /// Fixed for the life of a deployment: every instance must use the same number.
    #[arg(long, env = "TILLSYNC_PARTITIONS", default_value_t = tillsync_schemas::partition::DEFAULT_PARTITIONS)]
    pub partitions: u16,
    /// A partition lease (and an instance's membership) not renewed for this long has expired
    /// and another instance takes the partition over, seconds. Renewed every fifth of it.
    #[arg(long, env = "TILLSYNC_LEASE_TTL_S", default_value_t = 5)]
    pub lease_ttl_s: u64,
    /// Configuration deltas kept per store on TILLSYNC_CONFIG: a device further behind, or
    /// whose next delta is gone, takes the store's snapshot instead.
    #[arg(long, env = "TILLSYNC_CONFIG_DELTAS_KEPT", default_value_t = tillsync_schemas::config::DEFAULT_DELTAS_KEPT)]
    pub config_deltas_kept: u64,
    /// File holding the nkey seed (`SU...`) that signs every command delivered to a device.
    /// Required: bridges refuse unsigned commands.
    #[arg(long, env = "TILLSYNC_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// File holding the next signing key's seed during a rotation: not used to sign, only
    /// advertised so bridges can trust it before the switch.
    #[arg(long, env = "TILLSYNC_SIGNING_KEY_NEXT_FILE")]
    pub signing_key_next_file: Option<PathBuf>,
}

/// A configuration the broker does not start with; each message names the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting out of range or inconsistent with another.
    #[error("{0}")]
    Setting(&'static str),
    #[error(transparent)]
    TlsFiles(#[from] crate::tls::TlsFilesError),
    /// Plain text to NATS or Postgres without `TILLSYNC_ALLOW_PLAINTEXT`.
    #[error("{0}")]
    Plaintext(tillsync_schemas::transport::PlaintextRefused),
}

impl Config {
    /// Checks every setting, naming the variable that sets a wrong one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.nats_tls.validate()?;
        self.plaintext()?;
        let checks = [
            (self.batch_size == 0 || self.batch_size > 10_000, "TILLSYNC_BATCH_SIZE must be in 1..=10000"),
            (
                self.events_max_per_device < 1
                    || self.events_max_per_device as u64
                        <= self.device_max_events_per_s * crate::flood::WINDOW_S as u64,
                "TILLSYNC_EVENTS_MAX_PER_DEVICE must be more than 10 x TILLSYNC_DEVICE_MAX_EVENTS_PER_S, \
                 so the stream keeps a flood long enough for the broker to see it",
            ),
            (self.device_max_events_per_s == 0, "TILLSYNC_DEVICE_MAX_EVENTS_PER_S must be positive"),
            (self.device_max_bytes_per_s == 0, "TILLSYNC_DEVICE_MAX_BYTES_PER_S must be positive"),
            (self.db_pool < 2, "TILLSYNC_DB_POOL must be at least 2"),
            (self.ingest_lanes == 0 || self.ingest_lanes > 64, "TILLSYNC_INGEST_LANES must be in 1..=64"),
            (self.message_lanes == 0 || self.message_lanes > 64, "TILLSYNC_MESSAGE_LANES must be in 1..=64"),
            (self.stream_replicas == 0 || self.stream_replicas > 5, "TILLSYNC_STREAM_REPLICAS must be in 1..=5"),
            (self.max_deliver < 2, "TILLSYNC_MAX_DELIVER must be at least 2"),
            (self.recent_ids == 0, "TILLSYNC_RECENT_IDS must be positive"),
            (self.command_max_attempts == 0, "TILLSYNC_COMMAND_MAX_ATTEMPTS must be positive"),
            (self.duplicate_window_s == 0, "TILLSYNC_DUPLICATE_WINDOW_S must be positive"),
            (self.monitor_interval_ms < 50, "TILLSYNC_MONITOR_INTERVAL_MS must be at least 50"),
            (self.gap_repair_after_s == 0, "TILLSYNC_GAP_REPAIR_AFTER_S must be positive"),
            (
                self.partitions == 0 || self.partitions > tillsync_schemas::partition::MAX_PARTITIONS,
                "TILLSYNC_PARTITIONS must be in 1..=1024",
            ),
            (self.lease_ttl_s < 2 || self.lease_ttl_s > 60, "TILLSYNC_LEASE_TTL_S must be in 2..=60"),
            (
                self.auth_callout_creds.is_some() != self.auth_issuer_seed.is_some(),
                "TILLSYNC_AUTH_CALLOUT_CREDS and TILLSYNC_AUTH_ISSUER_SEED go together (both or neither)",
            ),
            (self.auth_ttl_s < 10, "TILLSYNC_AUTH_TTL_S must be at least 10"),
            (
                self.auth_max_refusals_per_address_per_min > 100_000,
                "TILLSYNC_AUTH_MAX_REFUSALS_PER_ADDRESS_PER_MIN must be in 0..=100000 (0: no limit)",
            ),
            (
                self.config_deltas_kept == 0 || self.config_deltas_kept > 100_000,
                "TILLSYNC_CONFIG_DELTAS_KEPT must be in 1..=100000",
            ),
        ];
        match checks.iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(ConfigError::Setting(why)),
            None => Ok(()),
        }
    }

    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_s)
    }

    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "localhost".into());
            format!("{}-{}", host.trim(), std::process::id())
        })
    }

    /// Defaults with test-friendly timings and an ephemeral HTTP port. Test scaffolding: only in
    /// tests and with the `test-support` feature.
    #[cfg(any(test, feature = "test-support"))]
    pub fn for_tests(nats_url: &str, database_url: &str) -> Config {
        let mut c = Config::parse_from(["tillsync-broker"]);
        c.nats_url = nats_url.into();
        c.database_url = database_url.into();
        c.http_addr = "127.0.0.1:0".parse().unwrap();
        // JetStream refuses a stream whose limit exceeds the free disk: keep tests small.
        c.events_max_bytes = 256 * 1024 * 1024;
        c.ack_wait_s = 5;
        // Many tests run at once against one Postgres: fewer connections each, still several lanes.
        c.db_pool = 8;
        c.ingest_lanes = 2;
        c.message_lanes = 4;
        c.command_retry_ms = 500;
        c.offline_after_s = 5;
        c.monitor_interval_ms = 250;
        // Fewer partitions: each is four durable consumers, created at start.
        c.partitions = 4;
        // The public test key, which `tillsync_edge::Config::for_tests` trusts.
        c.signing_key_file = Some(crate::signing::test_key_file());
        c
    }

    /// What would cross the network in clear: an error unless `allow_plaintext`, else the
    /// warnings to log at start.
    pub fn plaintext(&self) -> Result<Vec<tillsync_schemas::transport::InClear>, ConfigError> {
        let tls_forced = self.nats_tls.ca.is_some() || self.nats_tls.cert.is_some();
        tillsync_schemas::transport::check(&self.nats_url, tls_forced, Some(&self.database_url), self.allow_plaintext)
            .map_err(ConfigError::Plaintext)
    }

    /// What `--print-config` prints: every setting as the variable that sets it, passwords in
    /// URLs masked, test-only switches left out.
    pub fn printable(&self) -> std::collections::BTreeMap<String, String> {
        self.to_env()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("TILLSYNC_FAULT_"))
            .map(|(k, v)| {
                let v = if k.ends_with("_URL") { mask_passwords(&v) } else { v };
                (k, v)
            })
            .collect()
    }

    /// The same configuration as environment variables, for starting the binary.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("NATS_URL", self.nats_url.clone()),
            ("DATABASE_URL", self.database_url.clone()),
            ("TILLSYNC_DB_POOL", self.db_pool.to_string()),
            ("TILLSYNC_HTTP_ADDR", self.http_addr.to_string()),
            ("TILLSYNC_STREAM_REPLICAS", self.stream_replicas.to_string()),
            ("TILLSYNC_DUPLICATE_WINDOW_S", self.duplicate_window_s.to_string()),
            ("TILLSYNC_EVENTS_MAX_AGE_DAYS", self.events_max_age_days.to_string()),
            ("TILLSYNC_EVENTS_MAX_BYTES", self.events_max_bytes.to_string()),
            ("TILLSYNC_EVENTS_MAX_PER_DEVICE", self.events_max_per_device.to_string()),
            ("TILLSYNC_DEVICE_MAX_EVENTS_PER_S", self.device_max_events_per_s.to_string()),
            ("TILLSYNC_DEVICE_MAX_BYTES_PER_S", self.device_max_bytes_per_s.to_string()),
            ("TILLSYNC_BATCH_SIZE", self.batch_size.to_string()),
            ("TILLSYNC_LINGER_MS", self.linger_ms.to_string()),
            ("TILLSYNC_INGEST_LANES", self.ingest_lanes.to_string()),
            ("TILLSYNC_MESSAGE_LANES", self.message_lanes.to_string()),
            ("TILLSYNC_ACK_WAIT_S", self.ack_wait_s.to_string()),
            ("TILLSYNC_MAX_DELIVER", self.max_deliver.to_string()),
            ("TILLSYNC_IDLE_PASSIVATE_S", self.idle_passivate_s.to_string()),
            ("TILLSYNC_RECENT_IDS", self.recent_ids.to_string()),
            ("TILLSYNC_COMMAND_MAX_TTL_S", self.command_max_ttl_s.to_string()),
            ("TILLSYNC_COMMAND_MAX_ATTEMPTS", self.command_max_attempts.to_string()),
            ("TILLSYNC_COMMAND_RETRY_MS", self.command_retry_ms.to_string()),
            ("TILLSYNC_OFFLINE_AFTER_S", self.offline_after_s.to_string()),
            ("TILLSYNC_AUTO_TENANTS", self.auto_tenants.to_string()),
            ("TILLSYNC_ALLOW_PLAINTEXT", self.allow_plaintext.to_string()),
            ("TILLSYNC_MONITOR_INTERVAL_MS", self.monitor_interval_ms.to_string()),
            ("TILLSYNC_WATERMARK_STALL_S", self.watermark_stall_s.to_string()),
            ("TILLSYNC_GAP_REPAIR_AFTER_S", self.gap_repair_after_s.to_string()),
            ("TILLSYNC_PARTITIONS", self.partitions.to_string()),
            ("TILLSYNC_LEASE_TTL_S", self.lease_ttl_s.to_string()),
            ("TILLSYNC_AUTH_ACCOUNT", self.auth_account.clone()),
            ("TILLSYNC_AUTH_TTL_S", self.auth_ttl_s.to_string()),
            ("TILLSYNC_AUTH_MAX_REFUSALS_PER_ADDRESS_PER_MIN", self.auth_max_refusals_per_address_per_min.to_string()),
            ("TILLSYNC_CONFIG_DELTAS_KEPT", self.config_deltas_kept.to_string()),
        ];
        #[cfg(debug_assertions)]
        env.push(("TILLSYNC_FAULT_CRASH_AFTER_COMMIT", self.fault_crash_after_commit.to_string()));
        #[cfg(debug_assertions)]
        env.push(("TILLSYNC_FAULT_STREAMS_DELETABLE", self.fault_streams_deletable.to_string()));
        if let Some(id) = &self.instance_id {
            env.push(("TILLSYNC_INSTANCE_ID", id.clone()));
        }
        let files = [
            ("NATS_CREDS", &self.nats_creds),
            ("TILLSYNC_AUTH_CALLOUT_CREDS", &self.auth_callout_creds),
            ("TILLSYNC_AUTH_ISSUER_SEED", &self.auth_issuer_seed),
            ("TILLSYNC_NATS_SYSTEM_CREDS", &self.nats_system_creds),
        ];
        for (name, path) in files {
            if let Some(p) = path {
                env.push((name, p.display().to_string()));
            }
        }
        if let Some(p) = &self.signing_key_file {
            env.push(("TILLSYNC_SIGNING_KEY_FILE", p.display().to_string()));
        }
        if let Some(p) = &self.signing_key_next_file {
            env.push(("TILLSYNC_SIGNING_KEY_NEXT_FILE", p.display().to_string()));
        }
        env.extend(self.nats_tls.to_env());
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// `scheme://user:secret@host/db?password=secret` (comma-separated lists too) with `****` for
/// each secret.
fn mask_passwords(urls: &str) -> String {
    let mask = |u: &str| match url::Url::parse(u) {
        Ok(mut p) => {
            if p.password().is_some() {
                let _ = p.set_password(Some("****"));
            } else if p.scheme().starts_with("nats") || p.scheme() == "tls" {
                // `nats://TOKEN@host`: a NATS URL's user without a password is a token.
                if !p.username().is_empty() {
                    let _ = p.set_username("****");
                }
            }
            let secret = |k: &str| {
                let k = k.to_ascii_lowercase();
                ["password", "token", "secret"].iter().any(|s| k.contains(s))
            };
            let pairs: Vec<(String, String)> = p
                .query_pairs()
                .map(|(k, v)| {
                    let v = if secret(&k) { "****".to_string() } else { v.into_owned() };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                p.query_pairs_mut().clear().extend_pairs(pairs);
            }
            p.to_string()
        }
        Err(_) => u.to_string(),
    };
    urls.split(',').map(mask).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_urls_hide_their_passwords() {
        let m = mask_passwords("postgres://tillsync:s3cret@db:5432/tillsync?sslmode=require&password=s3cret");
        assert!(!m.contains("s3cret") && m.contains("tillsync:****@db") && m.contains("sslmode=require"), "{m}");
        assert_eq!(mask_passwords("nats://a:1,nats://u:p@b:2"), "nats://a:1,nats://u:****@b:2");
        assert_eq!(mask_passwords("nats://t0ken@b:2,tls://t0ken@c:3"), "nats://****@b:2,tls://****@c:3");
        let m = mask_passwords("postgres://u@db/t?sslmode=verify-full&sslpassword=k3y&sslkey=/k.pem");
        assert!(!m.contains("k3y") && m.contains("postgres://u@db") && m.contains("sslkey=%2Fk.pem"), "{m}");
    }

    #[test]
    fn defaults_validate_and_round_trip_through_env() {
        let c = Config::for_tests("nats://127.0.0.1:1", "postgres://127.0.0.1/z");
        c.validate().unwrap();
        let env = c.to_env();
        assert!(env.iter().any(|(k, v)| k == "NATS_URL" && v == "nats://127.0.0.1:1"));
        assert!(env.iter().any(|(k, _)| k == "TILLSYNC_SIGNING_KEY_FILE"));
    }

    /// A variable's value goes through the same value parser as a default value, which is
    /// what this sets (no process environment to race other tests on).
    #[test]
    fn boolean_variables_take_the_usual_spellings() {
        use clap::CommandFactory;
        let parse = |v: &'static str| {
            let cmd = Config::command().mut_arg("auto_tenants", |a| a.default_value(v));
            cmd.try_get_matches_from(["tillsync-broker"]).ok().and_then(|m| m.get_one::<bool>("auto_tenants").copied())
        };
        for (v, want) in [("true", true), ("1", true), ("yes", true), ("on", true), ("0", false), ("no", false)] {
            assert_eq!(parse(v), Some(want), "{v}");
        }
        assert_eq!(parse("maybe"), None);
    }

    #[test]
    fn rejects_an_address_budget_too_large_to_bound_anything() {
        let mut c = Config::for_tests("a", "b");
        c.auth_max_refusals_per_address_per_min = 0;
        c.validate().unwrap();
        c.auth_max_refusals_per_address_per_min = 1_000_000;
        assert!(c.validate().unwrap_err().to_string().contains("TILLSYNC_AUTH_MAX_REFUSALS_PER_ADDRESS_PER_MIN"));
        assert_eq!(c.printable()["TILLSYNC_AUTH_MAX_REFUSALS_PER_ADDRESS_PER_MIN"], "1000000");
    }

    #[test]
    fn rejects_zero_batch() {
        let mut c = Config::for_tests("a", "b");
        c.batch_size = 0;
        assert!(c.validate().unwrap_err().to_string().contains("TILLSYNC_BATCH_SIZE"));
    }
}
