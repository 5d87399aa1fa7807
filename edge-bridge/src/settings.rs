//! The bridge process's settings: environment first, flags override, one `validate()` before
//! start. Device identity comes from here, never from the POS. The struct keeps the name
//! [`Config`] (the library's API); head office's configuration of the store is
//! [`crate::store_config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser};
use tillsync_schemas::DeviceAddr;

use crate::handler::HandlerSpec;
use crate::http_client::UrlError;
use crate::tls::TlsFilesError;

/// Why the settings are refused ([`Config::validate`], [`Config::resolve_identity`]). A
/// configuration error has no cause of its own: each message is the whole story, and
/// [`crate::BridgeError::Config`] prints it after "invalid configuration: ".
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "tenant, store and device are not set: activate the bridge (`tillsync-edge activate --code ...`) \
         or pass --tenant, --store and --device"
    )]
    NoDevice,
    /// Tenant, store or device is not a valid subject token.
    #[error("{0}")]
    Addr(tillsync_schemas::WireError),
    #[error("http_addr {0} must be a loopback address")]
    HttpAddr(SocketAddr),
    #[error("handler: {0}")]
    Handler(UrlError),
    /// A command key that is not a public nkey (the reason names it).
    #[error("command_keys: {0}")]
    CommandKey(tillsync_schemas::signature::NotAPublicKey),
    #[error("{0}")]
    TlsFiles(TlsFilesError),
    /// Plain text to another host without `allow_plaintext` (the reason says which).
    #[error("{0}")]
    Plaintext(tillsync_schemas::transport::PlaintextRefused),
    /// A number or name out of range (the message names the setting).
    #[error("{0}")]
    Range(&'static str),
    /// The identity file cannot be read or parsed.
    #[error("identity file {}: {why}", path.display())]
    IdentityFile { path: PathBuf, why: String },
    /// A tenant, store or device setting that names another than the activated identity.
    #[error("{what} {given:?} differs from the activated identity's {held:?} ({})", path.display())]
    OtherIdentity { what: &'static str, given: String, held: String, path: PathBuf },
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Tenant this device belongs to (from the identity file when the bridge is activated).
    #[arg(long, env = "TILLSYNC_TENANT", default_value = "")]
    pub tenant: String,
    /// Store of this device.
    #[arg(long, env = "TILLSYNC_STORE", default_value = "")]
    pub store: String,
    /// This device's id (one bridge per POS device).
    #[arg(long, env = "TILLSYNC_DEVICE", default_value = "")]
    pub device: String,
    /// NATS server URL(s), comma separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS credentials: a .creds file or an nkey seed file, when the server requires it and the
    /// bridge is not activated (an identity file's key wins).
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// Identity file written by `tillsync-edge activate` (default: next to --db, named
    /// `<db stem>.identity.json`). When it exists the bridge authenticates with its nkey.
    #[arg(long, env = "TILLSYNC_EDGE_IDENTITY")]
    pub identity: Option<PathBuf>,
    #[command(flatten)]
    pub nats_tls: crate::tls::TlsFiles,
    /// SQLite file of the outbox and command ledger (created if missing).
    #[arg(long, env = "TILLSYNC_EDGE_DB", default_value = "tillsync-edge.db")]
    pub db: PathBuf,
    /// Loopback address of the POS API and /metrics.
    #[arg(long, env = "TILLSYNC_EDGE_HTTP_ADDR", default_value = "127.0.0.1:8787")]
    pub http_addr: SocketAddr,
    /// Do not serve the HTTP API (library use, simulations). The variable takes true/false,
    /// 1/0, yes/no, on/off.
    #[arg(long, env = "TILLSYNC_EDGE_NO_HTTP", default_value_t = false, value_parser = BoolishValueParser::new())]
    pub no_http: bool,
    /// Accept a `nats://` URL to a host other than this one without NATS_CA_FILE (the one-time
    /// code, sales and commands in clear); logged at warn on every start.
    #[arg(long, env = "TILLSYNC_ALLOW_PLAINTEXT", default_value_t = false, value_parser = BoolishValueParser::new())]
    pub allow_plaintext: bool,
    /// Command handler: `none` (applies as a no-op) or `http://127.0.0.1:PORT/path` (POST JSON).
    #[arg(long, env = "TILLSYNC_EDGE_HANDLER", default_value = "none")]
    pub handler: String,
    /// Program that applies a command (command JSON on stdin, exit 0 = applied); overrides --handler.
    #[arg(long, env = "TILLSYNC_EDGE_HANDLER_EXEC")]
    pub handler_exec: Option<PathBuf>,
    /// Longest a handler may take before the command is acked failed/handler_timeout, ms.
    #[arg(long, env = "TILLSYNC_EDGE_HANDLER_TIMEOUT_MS", default_value_t = 10_000)]
    pub handler_timeout_ms: u64,
    /// Most rows the outbox holds before refusing events with `outbox_full`.
    #[arg(long, env = "TILLSYNC_EDGE_OUTBOX_MAX_ROWS", default_value_t = 1_000_000)]
    pub outbox_max_rows: u64,
    /// Most encoded event bytes the outbox holds before refusing events with `outbox_full`.
    #[arg(long, env = "TILLSYNC_EDGE_OUTBOX_MAX_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub outbox_max_bytes: u64,
    /// How long rows covered by the broker's watermark are kept before pruning, seconds.
    #[arg(long, env = "TILLSYNC_EDGE_RETENTION_S", default_value_t = 0)]
    pub retention_s: u64,
    /// How long POS-chosen event ids are remembered for idempotent retries, seconds.
    #[arg(long, env = "TILLSYNC_EDGE_EVENT_ID_RETENTION_S", default_value_t = 7 * 86_400)]
    pub event_id_retention_s: u64,
    /// Heartbeat interval, seconds.
    #[arg(long, env = "TILLSYNC_EDGE_HEARTBEAT_S", default_value_t = 30)]
    pub heartbeat_s: u64,
    /// Publishes in flight before the first unacked one must be acked.
    #[arg(long, env = "TILLSYNC_EDGE_PUBLISH_WINDOW", default_value_t = 64)]
    pub publish_window: usize,
    /// First retry delay after a failed publish, ms (doubles up to --backoff-max-ms, with jitter).
    #[arg(long, env = "TILLSYNC_EDGE_BACKOFF_MIN_MS", default_value_t = 200)]
    pub backoff_min_ms: u64,
    /// Longest retry delay, ms.
    #[arg(long, env = "TILLSYNC_EDGE_BACKOFF_MAX_MS", default_value_t = 30_000)]
    pub backoff_max_ms: u64,
    /// How long to wait for a JetStream publish ack, ms.
    #[arg(long, env = "TILLSYNC_EDGE_ACK_TIMEOUT_MS", default_value_t = 5_000)]
    pub ack_timeout_ms: u64,
    /// SQLite fsync on every commit (`full`, survives power loss) or only at WAL checkpoints
    /// (`normal`, survives a process crash).
    #[arg(long, env = "TILLSYNC_EDGE_SQLITE_SYNC", default_value = "full")]
    pub sqlite_sync: String,
    /// Publish a JetStream-acked event again when the broker's watermark has not covered it
    /// (and not moved) for this long, seconds; doubles per resend of the same row, up to 32x.
    #[arg(long, env = "TILLSYNC_EDGE_RESEND_AFTER_S", default_value_t = 30)]
    pub resend_after_s: u64,
    /// Public nkeys (`U...`, comma separated) whose signatures on commands this bridge
    /// accepts: the broker's signing key, and during a rotation its next key. With none, every
    /// command is refused `bad_signature`.
    #[arg(long, env = "TILLSYNC_EDGE_COMMAND_KEYS", value_delimiter = ',')]
    pub command_keys: Vec<String>,
    /// Ask the broker which keys sign commands this often, seconds, and once connected: a key
    /// rotation reaches the bridge without a change here (docs/security.md). 0: never ask.
    #[arg(long, env = "TILLSYNC_EDGE_COMMAND_KEYS_REFRESH_S", default_value_t = 300)]
    pub command_keys_refresh_s: u64,
    /// Take the configuration snapshot instead of the deltas when more than this many versions
    /// behind (the broker keeps 100 deltas per store by default).
    #[arg(long, env = "TILLSYNC_EDGE_CONFIG_SNAPSHOT_AFTER", default_value_t = 100)]
    pub config_snapshot_after: u64,
    /// How often a connected bridge reads its store's last configuration version again, to
    /// catch up when a live delta was lost, ms (spread over +/- 25 %; 0: never).
    #[arg(long, env = "TILLSYNC_EDGE_CONFIG_RECHECK_MS", default_value_t = 300_000)]
    pub config_recheck_ms: u64,
    /// While NATS refuses the bridge, probe at most this often whether the broker can decide
    /// at all (a connect as the activation user; no code is sent), ms. See `revoked` in
    /// docs/edge-bridge.md.
    #[arg(long, env = "TILLSYNC_EDGE_CUTOFF_PROBE_EVERY_MS", default_value_t = 15_000)]
    pub cutoff_probe_every_ms: u64,
    /// Admitted probes, each followed by a refusal of the bridge's own connection, before the
    /// bridge calls itself `revoked` and refuses new events.
    #[arg(long, env = "TILLSYNC_EDGE_CUTOFF_CONFIRMATIONS", default_value_t = 3)]
    pub cutoff_confirmations: u32,
}

/// Parses a [`Config`] from arguments alone (tests, simulations).
#[derive(Debug, Parser)]
#[command(name = "tillsync-edge")]
struct Standalone {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// Defaults for `addr`, with the given NATS URL and SQLite file; HTTP off.
    pub fn new(addr: &DeviceAddr, nats_url: &str, db: impl Into<PathBuf>) -> Config {
        let db: PathBuf = db.into();
        let mut c = Standalone::parse_from([
            "tillsync-edge",
            "--tenant",
            &addr.tenant_id,
            "--store",
            &addr.store_id,
            "--device",
            &addr.device_id,
        ])
        .config;
        c.nats_url = nats_url.into();
        c.db = db;
        c.no_http = true;
        c
    }

    /// Test-friendly timings: short backoff and heartbeat, HTTP on an ephemeral loopback port.
    pub fn for_tests(addr: &DeviceAddr, nats_url: &str, db: impl Into<PathBuf>) -> Config {
        let mut c = Config::new(addr, nats_url, db);
        c.no_http = false;
        c.http_addr = "127.0.0.1:0".parse().expect("static address");
        c.backoff_min_ms = 50;
        c.backoff_max_ms = 1_000;
        c.heartbeat_s = 1;
        c.ack_timeout_ms = 2_000;
        c.handler_timeout_ms = 2_000;
        c.sqlite_sync = "normal".into();
        // The cut-off probes keep their defaults: `revoked` takes at least two probe periods
        // (30 s), so tests that sell on a bridge right after revoking it are not refused; the
        // tests of cut-off reasons set their own.
        // The key of the test seed every test broker signs with.
        c.command_keys = vec![tillsync_schemas::signature::TEST_PUBLIC_KEY.to_string()];
        c
    }

    pub fn identity_path(&self) -> PathBuf {
        self.identity.clone().unwrap_or_else(|| crate::identity::default_path(&self.db))
    }

    /// Takes tenant, store and device from the identity file where not given; refuses a
    /// setting that names another device than the one activated.
    pub fn resolve_identity(&mut self) -> Result<Option<crate::identity::Identity>, SettingsError> {
        let path = self.identity_path();
        let Some(id) = crate::identity::Identity::load(&path)? else {
            return Ok(None);
        };
        for (given, held, what) in [
            (&mut self.tenant, &id.tenant_id, "tenant"),
            (&mut self.store, &id.store_id, "store"),
            (&mut self.device, &id.device_id, "device"),
        ] {
            if given.is_empty() {
                *given = held.clone();
            } else if given != held {
                return Err(SettingsError::OtherIdentity { what, given: given.clone(), held: held.clone(), path });
            }
        }
        for key in &id.command_keys {
            if !self.command_keys.contains(key) {
                self.command_keys.push(key.clone());
            }
        }
        Ok(Some(id))
    }

    /// The public keys whose command signatures this bridge accepts. Today only the configured
    /// list; kept as the one place to ask, so other sources of trusted keys join here.
    pub fn trusted_command_keys(&self) -> Vec<String> {
        self.command_keys.iter().map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect()
    }

    pub fn addr(&self) -> DeviceAddr {
        DeviceAddr::new(&self.tenant, &self.store, &self.device)
    }

    /// Plain text to another host: an error unless `allow_plaintext`, else warnings to log.
    pub fn plaintext(&self) -> Result<Vec<tillsync_schemas::transport::InClear>, SettingsError> {
        let tls_forced = self.nats_tls.ca.is_some() || self.nats_tls.cert.is_some();
        tillsync_schemas::transport::check(&self.nats_url, tls_forced, None, self.allow_plaintext)
            .map_err(SettingsError::Plaintext)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.tenant.is_empty() || self.store.is_empty() || self.device.is_empty() {
            return Err(SettingsError::NoDevice);
        }
        self.addr().validate().map_err(SettingsError::Addr)?;
        if !self.no_http && !self.http_addr.ip().is_loopback() {
            return Err(SettingsError::HttpAddr(self.http_addr));
        }
        self.handler_spec()?;
        for key in self.trusted_command_keys() {
            tillsync_schemas::signature::check_public_key(&key).map_err(SettingsError::CommandKey)?;
        }
        self.nats_tls.validate().map_err(SettingsError::TlsFiles)?;
        self.plaintext()?;
        let checks = [
            (self.outbox_max_rows == 0, "outbox_max_rows must be positive"),
            (self.outbox_max_bytes < 64 * 1024, "outbox_max_bytes must be at least 64 KiB"),
            (self.publish_window == 0 || self.publish_window > 1024, "publish_window must be in 1..=1024"),
            (self.heartbeat_s == 0, "heartbeat_s must be positive"),
            (self.handler_timeout_ms == 0, "handler_timeout_ms must be positive"),
            (self.backoff_min_ms == 0 || self.backoff_max_ms < self.backoff_min_ms, "backoff range is empty"),
            (self.ack_timeout_ms == 0, "ack_timeout_ms must be positive"),
            (!matches!(self.sqlite_sync.as_str(), "full" | "normal"), "sqlite_sync must be full or normal"),
            (self.resend_after_s == 0, "resend_after_s must be positive"),
            (self.config_snapshot_after == 0, "config_snapshot_after must be positive"),
            (self.cutoff_confirmations == 0, "cutoff_confirmations must be positive"),
        ];
        match checks.iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(SettingsError::Range(why)),
            None => Ok(()),
        }
    }

    pub fn handler_spec(&self) -> Result<HandlerSpec, SettingsError> {
        HandlerSpec::parse(&self.handler, self.handler_exec.as_deref()).map_err(SettingsError::Handler)
    }

    pub fn handler_timeout(&self) -> Duration {
        Duration::from_millis(self.handler_timeout_ms)
    }

    pub fn heartbeat_every(&self) -> Duration {
        Duration::from_secs(self.heartbeat_s)
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    pub fn resend_after(&self) -> Duration {
        Duration::from_secs(self.resend_after_s)
    }

    /// The same settings as environment variables, for starting the binary.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("TILLSYNC_TENANT", self.tenant.clone()),
            ("TILLSYNC_STORE", self.store.clone()),
            ("TILLSYNC_DEVICE", self.device.clone()),
            ("NATS_URL", self.nats_url.clone()),
            ("TILLSYNC_EDGE_DB", self.db.display().to_string()),
            ("TILLSYNC_EDGE_HTTP_ADDR", self.http_addr.to_string()),
            ("TILLSYNC_EDGE_NO_HTTP", self.no_http.to_string()),
            ("TILLSYNC_ALLOW_PLAINTEXT", self.allow_plaintext.to_string()),
            ("TILLSYNC_EDGE_HANDLER", self.handler.clone()),
            ("TILLSYNC_EDGE_HANDLER_TIMEOUT_MS", self.handler_timeout_ms.to_string()),
            ("TILLSYNC_EDGE_OUTBOX_MAX_ROWS", self.outbox_max_rows.to_string()),
            ("TILLSYNC_EDGE_OUTBOX_MAX_BYTES", self.outbox_max_bytes.to_string()),
            ("TILLSYNC_EDGE_RETENTION_S", self.retention_s.to_string()),
            ("TILLSYNC_EDGE_EVENT_ID_RETENTION_S", self.event_id_retention_s.to_string()),
            ("TILLSYNC_EDGE_HEARTBEAT_S", self.heartbeat_s.to_string()),
            ("TILLSYNC_EDGE_PUBLISH_WINDOW", self.publish_window.to_string()),
            ("TILLSYNC_EDGE_BACKOFF_MIN_MS", self.backoff_min_ms.to_string()),
            ("TILLSYNC_EDGE_BACKOFF_MAX_MS", self.backoff_max_ms.to_string()),
            ("TILLSYNC_EDGE_ACK_TIMEOUT_MS", self.ack_timeout_ms.to_string()),
            ("TILLSYNC_EDGE_SQLITE_SYNC", self.sqlite_sync.clone()),
            ("TILLSYNC_EDGE_RESEND_AFTER_S", self.resend_after_s.to_string()),
            ("TILLSYNC_EDGE_COMMAND_KEYS_REFRESH_S", self.command_keys_refresh_s.to_string()),
            ("TILLSYNC_EDGE_CONFIG_SNAPSHOT_AFTER", self.config_snapshot_after.to_string()),
            ("TILLSYNC_EDGE_CONFIG_RECHECK_MS", self.config_recheck_ms.to_string()),
            ("TILLSYNC_EDGE_CUTOFF_PROBE_EVERY_MS", self.cutoff_probe_every_ms.to_string()),
            ("TILLSYNC_EDGE_CUTOFF_CONFIRMATIONS", self.cutoff_confirmations.to_string()),
        ];
        if let Some(p) = &self.nats_creds {
            env.push(("NATS_CREDS", p.display().to_string()));
        }
        if let Some(p) = &self.identity {
            env.push(("TILLSYNC_EDGE_IDENTITY", p.display().to_string()));
        }
        env.extend(self.nats_tls.to_env());
        if let Some(p) = &self.handler_exec {
            env.push(("TILLSYNC_EDGE_HANDLER_EXEC", p.display().to_string()));
        }
        if !self.command_keys.is_empty() {
            env.push(("TILLSYNC_EDGE_COMMAND_KEYS", self.command_keys.join(",")));
        }
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = Config::for_tests(&DeviceAddr::new("acme", "s1", "till-1"), "nats://127.0.0.1:1", "/tmp/x.db");
        c.validate().unwrap();
        assert!(c.to_env().iter().any(|(k, v)| k == "TILLSYNC_DEVICE" && v == "till-1"));
        let keys = tillsync_schemas::signature::TEST_PUBLIC_KEY;
        assert!(c.to_env().iter().any(|(k, v)| k == "TILLSYNC_EDGE_COMMAND_KEYS" && v == keys));
    }

    /// A variable's value goes through the same value parser as a default value (set here,
    /// so no process environment races other tests).
    #[test]
    fn boolean_variables_take_the_usual_spellings() {
        use clap::CommandFactory;
        let parse = |v: &'static str| {
            let cmd = Standalone::command().mut_arg("no_http", |a| a.default_value(v));
            let m = cmd.try_get_matches_from(["e", "--tenant", "a", "--store", "s", "--device", "d"]);
            m.ok().and_then(|m| m.get_one::<bool>("no_http").copied())
        };
        for (v, want) in [("yes", true), ("1", true), ("on", true), ("false", false), ("off", false), ("0", false)] {
            assert_eq!(parse(v), Some(want), "{v}");
        }
        assert_eq!(parse("maybe"), None);
    }

    #[test]
    fn command_keys_are_comma_separated_public_keys() {
        let key = tillsync_schemas::signature::TEST_PUBLIC_KEY;
        let both = format!("{key},{key}");
        let c =
            Standalone::parse_from(["e", "--tenant", "a", "--store", "s", "--device", "d", "--command-keys", &both]);
        assert_eq!(c.config.trusted_command_keys(), vec![key.to_string(), key.to_string()]);
        let mut c = c.config;
        c.command_keys = vec![tillsync_schemas::signature::TEST_SEED.to_string()];
        assert!(c.validate().unwrap_err().to_string().contains("command_keys"));
    }

    #[test]
    fn refuses_non_loopback_http_and_bad_ids() {
        let mut c = Config::for_tests(&DeviceAddr::new("acme", "s1", "till-1"), "nats://127.0.0.1:1", "/tmp/x.db");
        c.http_addr = "0.0.0.0:8787".parse().unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("loopback"));
        let c = Config::for_tests(&DeviceAddr::new("acme", "s.1", "till-1"), "nats://127.0.0.1:1", "/tmp/x.db");
        assert!(c.validate().is_err());
    }
}
