//! Why the bridge is cut off from the cloud, told as truly as the wire allows.
//!
//! What a refused client receives is fixed by nats-server, not by the broker: whatever the
//! auth callout answers (`revoked`, `unavailable`, `bad_code`, `rate_limited`, ...), nats-server
//! 2.15 logs the answer and sends the client only `-ERR 'Authorization Violation'`; async-nats
//! reports that, while it retries, as `Event::ClientError("authorization violation")` and
//! nothing else (`edge_truth::a_refused_client_is_told_authorization_violation_whatever_the_reason`
//! pins it). So the refusal alone cannot tell a revoked credential from a broker that cannot
//! reach Postgres, and the bridge asks one more question: can this broker decide at all? A
//! probe connects as the activation user with a fresh key and a code-shaped password (the
//! code is never sent: no activation request follows). The callout admits that only when it
//! can write its audit row, so it is refused when Postgres is down, the callout is not
//! answering, or this address is over its budget (`rate_limited`). Refused while a probe is
//! admitted, again after the probe and again [`Rules::confirmations`] probes later, the
//! bridge's own credential is what is refused: `revoked` (revoked, or replaced by a newer
//! activation; only a new code helps). Then one question tells a decommissioned till apart: the
//! bridge connects as the activation user with its own key and sends a made-up code; the
//! refusal names what its key is to the broker ([`ask_why`]; only the key's holder can ask),
//! and `decommissioned` replaces `revoked`. Short of that proof it says `unavailable` and keeps
//! taking sales: the outbox is for outages, and a false `revoked` would turn sales away.
//!
//! [`Tracker`] decides from timestamped observations without I/O; [`Watcher`] feeds it the
//! client's events and the probes' answers, publishes the verdict (status, metrics, the submit
//! gate) and logs once per change, with a count of the attempts in between.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Why the bridge has no NATS connection. Codes leave the process (status, metrics, HTTP
/// refusals): stable, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No NATS server answered: the WAN, DNS, TLS or the server is down.
    Unreachable,
    /// NATS answered but the broker could not decide (its Postgres is down, no callout
    /// responder answered in time, or this address is over its budget), or the bridge does not
    /// know yet why it is refused. Sales are kept in the outbox.
    Unavailable,
    /// The broker decides and refuses this device's credential: revoked or replaced by a newer
    /// activation. New sales are refused; what the outbox holds stays.
    Revoked,
    /// Refused because head office decommissioned this device (or its tenant): it will not be
    /// activated again. New sales are refused; what the outbox holds stays.
    Decommissioned,
    /// Refused with no identity file (not activated: no credential of its own to be revoked).
    Refused,
}

impl Reason {
    pub const ALL: [Reason; 5] =
        [Reason::Unreachable, Reason::Unavailable, Reason::Revoked, Reason::Decommissioned, Reason::Refused];

    pub fn code(self) -> &'static str {
        match self {
            Reason::Unreachable => "unreachable",
            Reason::Unavailable => "unavailable",
            Reason::Revoked => "revoked",
            Reason::Decommissioned => "decommissioned",
            Reason::Refused => "refused",
        }
    }

    /// Whether new events are refused: only when no outage can end it.
    pub fn refuses_events(self) -> bool {
        matches!(self, Reason::Revoked | Reason::Decommissioned)
    }

    pub fn detail(self) -> &'static str {
        match self {
            Reason::Unreachable => "no NATS server answered (WAN, DNS, TLS or the server is down); sales are kept and sent once it answers",
            Reason::Unavailable => "NATS refuses the connection and the broker cannot decide now (its database is down, it does not answer, or this address made too many attempts); sales are kept and sent once it can",
            Reason::Revoked => "the broker refuses this device's credential (revoked, decommissioned, or replaced by a newer activation); new sales are refused, the ones held are kept: activate again with a new code (`tillsync devices add` at head office, then `tillsync-edge activate`)",
            Reason::Decommissioned => "head office decommissioned this device (or its tenant); new sales are refused, the ones held are kept and cannot be sent: take the till out of service, or ask head office (`tillsync devices show`)",
            Reason::Refused => "NATS refuses the connection and this bridge is not activated (no identity file); sales are kept: activate it (`tillsync-edge activate --code ...`)",
        }
    }
}

/// The verdict as status and the submit gate read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutOff {
    /// `unreachable`, `unavailable`, `revoked` or `refused` ([`Reason`]).
    pub reason: String,
    pub detail: String,
    /// When this reason began, Unix ms.
    pub since_ms: i64,
    /// Connection attempts that failed since then.
    pub attempts: u64,
    /// True when new events are refused (`revoked`).
    pub refuses_events: bool,
}

/// What the client or a probe reported, stamped with when (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    Connected,
    /// A connection attempt ended without reaching a server (I/O, timeout, DNS, TLS).
    Unreachable,
    /// A connection attempt was refused: `-ERR 'Authorization Violation'`.
    Refused,
    Probe(Probe),
    /// The broker says this bridge's key belongs to a decommissioned device ([`ask_why`]).
    Decommissioned,
}

/// What a probe found: the broker admitted the activation user, refused it, or no server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Admitted,
    Refused,
    Unreachable,
}

/// How much proof `revoked` needs.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Probes at most this often while refused.
    pub probe_every_ms: i64,
    /// Admitted probes, each followed by a refusal of the bridge's own connection, before
    /// `revoked` (at least 1).
    pub confirmations: u32,
    /// Whether the bridge has an identity file (a credential the broker can revoke).
    pub activated: bool,
}

/// What one observation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Step {
    /// The reason before and after, when it changed; with the attempts made under the old one.
    pub change: Option<(Option<Reason>, Option<Reason>, u64)>,
    /// Start a probe now.
    pub probe: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probing {
    Idle,
    Running,
    /// Admitted at this time: a refusal after it is one confirmation.
    Admitted(i64),
}

/// The decision, without I/O: observations in, the reason and the probes to make out.
#[derive(Debug, Clone)]
pub struct Tracker {
    rules: Rules,
    reason: Option<Reason>,
    since_ms: i64,
    attempts: u64,
    confirmed: u32,
    probing: Probing,
    next_probe_ms: i64,
}

impl Tracker {
    pub fn new(rules: Rules) -> Tracker {
        Tracker {
            rules,
            reason: None,
            since_ms: 0,
            attempts: 0,
            confirmed: 0,
            probing: Probing::Idle,
            next_probe_ms: 0,
        }
    }

    pub fn reason(&self) -> Option<Reason> {
        self.reason
    }

    pub fn view(&self) -> Option<CutOff> {
        self.reason.map(|r| CutOff {
            reason: r.code().into(),
            detail: r.detail().into(),
            since_ms: self.since_ms,
            attempts: self.attempts,
            refuses_events: r.refuses_events(),
        })
    }

    pub fn observe(&mut self, observed: Observed, now_ms: i64) -> Step {
        let before = self.reason;
        let attempts_before = self.attempts;
        let mut probe = false;
        match observed {
            Observed::Connected => {
                self.reason = None;
                self.reset_proof();
            }
            Observed::Unreachable => {
                self.attempts += 1;
                self.reason = Some(Reason::Unreachable);
                self.reset_proof();
            }
            Observed::Refused => {
                self.attempts += 1;
                if let Probing::Admitted(at) = self.probing {
                    if now_ms > at {
                        self.confirmed += 1;
                        self.probing = Probing::Idle;
                    }
                }
                let proven = self.confirmed >= self.rules.confirmations.max(1);
                self.reason = Some(match (proven, self.rules.activated) {
                    _ if self.reason == Some(Reason::Decommissioned) => Reason::Decommissioned,
                    (true, true) => Reason::Revoked,
                    (true, false) => Reason::Refused,
                    (false, _) if self.reason == Some(Reason::Revoked) => Reason::Revoked,
                    (false, _) => Reason::Unavailable,
                });
                if !proven && self.probing == Probing::Idle && now_ms >= self.next_probe_ms {
                    self.probing = Probing::Running;
                    self.next_probe_ms = now_ms + self.rules.probe_every_ms;
                    probe = true;
                }
            }
            Observed::Probe(Probe::Admitted) if self.probing == Probing::Running => {
                self.probing = Probing::Admitted(now_ms);
            }
            Observed::Probe(Probe::Refused) if self.probing == Probing::Running => {
                // The broker cannot decide: nothing proven so far counts.
                self.confirmed = 0;
                self.probing = Probing::Idle;
            }
            Observed::Probe(_) => {
                if self.probing == Probing::Running {
                    self.probing = Probing::Idle;
                }
            }
            Observed::Decommissioned => {
                if self.reason == Some(Reason::Revoked) {
                    self.reason = Some(Reason::Decommissioned);
                }
            }
        }
        let failed = matches!(observed, Observed::Refused | Observed::Unreachable);
        let change = (before != self.reason).then(|| {
            self.since_ms = now_ms;
            // Attempts are counted per reason: this one is the first under the new one.
            self.attempts = u64::from(failed && self.reason.is_some());
            (before, self.reason, attempts_before)
        });
        Step { change, probe }
    }

    fn reset_proof(&mut self) {
        self.confirmed = 0;
        self.probing = Probing::Idle;
        self.next_probe_ms = 0;
    }
}

/// Connects as the activation user with a fresh key and a random code-shaped password, and
/// disconnects at once: whether the broker can decide now ([`Probe`]).
pub async fn probe(servers: Vec<async_nats::ServerAddr>, tls: &crate::tls::TlsFiles, timeout: Duration) -> Probe {
    let key = nkeys::KeyPair::new_user();
    let Ok(seed) = key.seed() else { return Probe::Unreachable };
    let options = crate::tls::apply(async_nats::ConnectOptions::new().name("tillsync-edge/probe"), tls)
        .nkey(seed)
        .user_and_password(tillsync_schemas::identity::ACTIVATION_USER.into(), probe_password())
        .custom_inbox_prefix(tillsync_schemas::identity::activation_inbox(&key.public_key()))
        .connection_timeout(timeout);
    match tokio::time::timeout(timeout * 2, options.connect(servers)).await {
        Ok(Ok(client)) => {
            let _ = tokio::time::timeout(timeout, client.drain()).await;
            Probe::Admitted
        }
        Ok(Err(e)) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation => Probe::Refused,
        _ => Probe::Unreachable,
    }
}

/// Asks the broker what this bridge's key is: connects as the activation user with the key
/// itself (proved by signing the nonce) and a made-up code, and reads the refusal's `key`
/// (`live`, `revoked`, `decommissioned`); `None` when there is no answer.
pub async fn ask_why(
    servers: Vec<async_nats::ServerAddr>,
    tls: &crate::tls::TlsFiles,
    seed: &str,
    timeout: Duration,
) -> Option<String> {
    use tillsync_schemas::{codec, identity};
    let key = nkeys::KeyPair::from_seed(seed).ok()?.public_key();
    let options = crate::tls::apply(async_nats::ConnectOptions::new().name("tillsync-edge/why"), tls)
        .nkey(seed.to_string())
        .user_and_password(identity::ACTIVATION_USER.into(), probe_password())
        .custom_inbox_prefix(identity::activation_inbox(&key))
        .connection_timeout(timeout);
    let client = tokio::time::timeout(timeout * 2, options.connect(servers)).await.ok()?.ok()?;
    let request = codec::encode(&identity::ActivateRequest { code: probe_password() });
    let answer = tokio::time::timeout(timeout, client.request(identity::activate_subject(&key), request.into())).await;
    let _ = tokio::time::timeout(timeout, client.drain()).await;
    match codec::decode::<identity::ActivateReply>(&answer.ok()?.ok()?.payload).ok()? {
        identity::ActivateReply::Refused { key, .. } => key,
        identity::ActivateReply::Activated { .. } => None,
    }
}

/// Twenty base32 characters in groups of four, as activation codes are: the callout admits
/// the activation user only with a password of that shape. Random, so it names nothing.
fn probe_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::rng();
    let chars: Vec<char> = (0..20).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    chars.chunks(4).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("-")
}

/// The client's event, reduced to what tells the reasons apart (`None`: nothing to learn).
pub fn classify(event: &async_nats::Event) -> Option<Observed> {
    use async_nats::{ClientError, ConnectErrorKind, Event};
    match event {
        Event::Connected => Some(Observed::Connected),
        // While it retries, async-nats reports only the kind of each failed attempt.
        Event::ClientError(ClientError::Other(kind)) => {
            if *kind == ConnectErrorKind::AuthorizationViolation.to_string() {
                Some(Observed::Refused)
            } else if *kind == ConnectErrorKind::Authentication.to_string() {
                // The bridge could not sign the nonce (identity file unreadable): logged by
                // the auth callback, no server was asked.
                None
            } else {
                Some(Observed::Unreachable)
            }
        }
        _ => None,
    }
}

/// What the watcher shares: the verdict, and whether reconnects should slow down.
#[derive(Clone)]
pub struct Shared {
    pub verdict: watch::Receiver<Option<CutOff>>,
    /// Set while `revoked`: a refused credential stays refused, so retrying every few seconds
    /// only spends the broker's lookups and this address's budget.
    pub slow_retries: Arc<AtomicBool>,
}

/// How long a reconnect waits while `revoked` (a new activation still takes effect within it).
pub const REVOKED_RETRY: Duration = Duration::from_secs(15);
/// How often a line says the bridge is still cut off, with the attempts since the last one.
const REMIND_EVERY: Duration = Duration::from_secs(300);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the tracker on the client's events and the probes' answers.
pub struct Watcher {
    pub tracker: Tracker,
    pub events: mpsc::UnboundedReceiver<(Observed, i64)>,
    pub verdict: watch::Sender<Option<CutOff>>,
    pub slow_retries: Arc<AtomicBool>,
    pub servers: Vec<async_nats::ServerAddr>,
    pub tls: crate::tls::TlsFiles,
    pub metrics: Arc<Metrics>,
    pub cancel: CancellationToken,
    pub device: String,
    /// The bridge's own key (its identity file), to ask the broker what it is.
    pub seed: Option<String>,
}

impl Watcher {
    pub async fn run(mut self) {
        let mut remind = tokio::time::interval(REMIND_EVERY);
        remind.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        remind.reset();
        let mut reminded_at = 0u64;
        loop {
            let (observed, at) = tokio::select! {
                _ = self.cancel.cancelled() => return,
                e = self.events.recv() => match e { Some(e) => e, None => return },
                _ = remind.tick() => {
                    self.remind(&mut reminded_at);
                    continue;
                }
            };
            let step = self.apply(observed, at);
            if step.change.is_some() {
                reminded_at = 0;
            }
            if matches!(step.change, Some((_, Some(Reason::Revoked), _))) {
                if let Some(seed) = self.seed.clone() {
                    let why = tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        w = ask_why(self.servers.clone(), &self.tls, &seed, PROBE_TIMEOUT) => w,
                    };
                    tracing::debug!(?why, "Asked the broker what this key is.");
                    if why.as_deref() == Some("decommissioned") {
                        self.apply(Observed::Decommissioned, crate::now_ms());
                    }
                }
            }
            if step.probe {
                let probed = tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    p = probe(self.servers.clone(), &self.tls, PROBE_TIMEOUT) => p,
                };
                self.metrics.cutoff_probe(probe_code(probed)).increment(1);
                tracing::debug!(result = probe_code(probed), "Probed whether the broker can decide.");
                self.apply(Observed::Probe(probed), crate::now_ms());
            }
        }
    }

    fn apply(&mut self, observed: Observed, at: i64) -> Step {
        match observed {
            Observed::Refused => self.metrics.connect_failures("refused").increment(1),
            Observed::Unreachable => self.metrics.connect_failures("unreachable").increment(1),
            _ => {}
        }
        let step = self.tracker.observe(observed, at);
        if let Some((from, to, attempts)) = step.change {
            self.announce(from, to, attempts);
            for r in Reason::ALL {
                self.metrics.cut_off(r.code()).set(if Some(r) == to { 1.0 } else { 0.0 });
            }
            self.slow_retries.store(to.is_some_and(Reason::refuses_events), Ordering::Relaxed);
        }
        self.verdict.send_replace(self.tracker.view());
        step
    }

    fn announce(&self, from: Option<Reason>, to: Option<Reason>, attempts: u64) {
        let device = self.device.as_str();
        let was = from.map(Reason::code);
        match to {
            None => tracing::info!(device_id = device, was, attempts_before = attempts, "NATS connection restored."),
            Some(r) if r.refuses_events() => {
                tracing::error!(
                    device_id = device,
                    reason = r.code(),
                    was,
                    attempts,
                    detail = r.detail(),
                    "Cut off from the cloud."
                )
            }
            Some(r) => tracing::warn!(
                device_id = device,
                reason = r.code(),
                was,
                attempts,
                detail = r.detail(),
                "Cut off from the cloud."
            ),
        }
    }

    /// One line per [`REMIND_EVERY`] while cut off, saying how many attempts failed since.
    fn remind(&self, reminded_at: &mut u64) {
        let Some(v) = self.tracker.view() else { return };
        let new = v.attempts.saturating_sub(*reminded_at);
        *reminded_at = v.attempts;
        let since_s = (crate::now_ms() - v.since_ms).max(0) / 1000;
        if v.refuses_events {
            tracing::error!(device_id = %self.device, reason = %v.reason, since_s, attempts = new, "Still cut off from the cloud.");
        } else {
            tracing::warn!(device_id = %self.device, reason = %v.reason, since_s, attempts = new, "Still cut off from the cloud.");
        }
    }
}

fn probe_code(p: Probe) -> &'static str {
    match p {
        Probe::Admitted => "admitted",
        Probe::Refused => "refused",
        Probe::Unreachable => "unreachable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(activated: bool) -> Tracker {
        Tracker::new(Rules { probe_every_ms: 1_000, confirmations: 2, activated })
    }

    #[test]
    fn the_reasons_are_the_metrics_labels() {
        let codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes, crate::metrics::CUT_OFF_REASONS);
        let probes = [Probe::Admitted, Probe::Refused, Probe::Unreachable].map(probe_code);
        assert_eq!(probes.as_slice(), crate::metrics::PROBE_RESULTS);
    }

    fn reason(t: &Tracker) -> Option<&'static str> {
        t.reason().map(Reason::code)
    }

    #[test]
    fn an_unreachable_server_is_unreachable_and_asks_nothing() {
        let mut t = tracker(true);
        let step = t.observe(Observed::Unreachable, 1);
        assert_eq!(step, Step { change: Some((None, Some(Reason::Unreachable), 0)), probe: false });
        assert_eq!(t.observe(Observed::Unreachable, 2), Step::default());
        assert_eq!(t.view().unwrap().attempts, 2);
        assert_eq!(t.observe(Observed::Connected, 3).change, Some((Some(Reason::Unreachable), None, 2)));
        assert_eq!(t.view(), None);
    }

    #[test]
    fn a_refusal_is_unavailable_until_proven_otherwise_and_asks_a_probe() {
        let mut t = tracker(true);
        let step = t.observe(Observed::Refused, 10);
        assert!(step.probe);
        assert_eq!(reason(&t), Some("unavailable"));
        assert!(!t.view().unwrap().refuses_events);
        // No second probe while one runs.
        assert!(!t.observe(Observed::Refused, 11).probe);
        // The broker cannot decide either: still unavailable, and the next probe waits its turn.
        t.observe(Observed::Probe(Probe::Refused), 12);
        assert!(!t.observe(Observed::Refused, 500).probe);
        assert!(t.observe(Observed::Refused, 1_010).probe);
        assert_eq!(reason(&t), Some("unavailable"));
    }

    #[test]
    fn revoked_takes_admitted_probes_each_followed_by_a_refusal() {
        let mut t = tracker(true);
        assert!(t.observe(Observed::Refused, 0).probe);
        t.observe(Observed::Probe(Probe::Admitted), 100);
        // A refusal from before the probe answered proves nothing.
        t.observe(Observed::Refused, 100);
        assert_eq!(reason(&t), Some("unavailable"));
        t.observe(Observed::Refused, 200);
        assert_eq!(reason(&t), Some("unavailable"), "one confirmation of two");
        assert!(t.observe(Observed::Refused, 1_000).probe);
        t.observe(Observed::Probe(Probe::Admitted), 1_100);
        let step = t.observe(Observed::Refused, 1_200);
        assert_eq!(step.change, Some((Some(Reason::Unavailable), Some(Reason::Revoked), 4)));
        assert!(!step.probe);
        let v = t.view().unwrap();
        assert!(v.refuses_events && v.reason == "revoked" && v.since_ms == 1_200);
        // Sticky: no more probes, until a connection succeeds.
        assert_eq!(t.observe(Observed::Refused, 5_000), Step::default());
        assert_eq!(reason(&t), Some("revoked"));
        assert_eq!(t.observe(Observed::Connected, 6_000).change.map(|c| c.1), Some(None));
    }

    #[test]
    fn a_refused_probe_or_a_connection_between_confirmations_starts_over() {
        let mut t = tracker(true);
        t.observe(Observed::Refused, 0);
        t.observe(Observed::Probe(Probe::Admitted), 10);
        t.observe(Observed::Refused, 20);
        // Postgres went down: the broker cannot decide, so the one confirmation is void.
        assert!(t.observe(Observed::Refused, 1_000).probe);
        t.observe(Observed::Probe(Probe::Refused), 1_010);
        assert!(t.observe(Observed::Refused, 2_000).probe);
        t.observe(Observed::Probe(Probe::Admitted), 2_010);
        t.observe(Observed::Refused, 2_020);
        assert_eq!(reason(&t), Some("unavailable"), "one confirmation since the refused probe");
        // A connection in between clears everything.
        t.observe(Observed::Connected, 2_030);
        assert!(t.observe(Observed::Refused, 2_040).probe);
        t.observe(Observed::Probe(Probe::Admitted), 2_050);
        t.observe(Observed::Refused, 2_060);
        assert_eq!(reason(&t), Some("unavailable"));
    }

    #[test]
    fn an_unactivated_bridge_is_refused_not_revoked() {
        let mut t = Tracker::new(Rules { probe_every_ms: 0, confirmations: 1, activated: false });
        t.observe(Observed::Refused, 0);
        t.observe(Observed::Probe(Probe::Admitted), 1);
        t.observe(Observed::Refused, 2);
        assert_eq!(reason(&t), Some("refused"));
        assert!(!t.view().unwrap().refuses_events);
    }

    #[test]
    fn the_clients_events_are_classified_by_the_kind_async_nats_reports() {
        use async_nats::{ClientError, ConnectErrorKind, Event};
        let other = |k: ConnectErrorKind| Event::ClientError(ClientError::Other(k.to_string()));
        assert_eq!(classify(&other(ConnectErrorKind::AuthorizationViolation)), Some(Observed::Refused));
        for k in [ConnectErrorKind::Io, ConnectErrorKind::TimedOut, ConnectErrorKind::Dns, ConnectErrorKind::Tls] {
            assert_eq!(classify(&other(k)), Some(Observed::Unreachable), "{k}");
        }
        assert_eq!(classify(&other(ConnectErrorKind::Authentication)), None);
        assert_eq!(classify(&Event::Connected), Some(Observed::Connected));
        assert_eq!(classify(&Event::Disconnected), None);
    }

    #[test]
    fn probe_passwords_look_like_codes_and_differ() {
        let (a, b) = (probe_password(), probe_password());
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(crate::identity::looks_like_code(&a), "{a}");
    }
}
