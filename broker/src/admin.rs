//! The broker's admin surface: what the operator CLI (`tillsync`, in ops/), its replay, the lab
//! (benches and chaos) and the integration tests use of the broker's interior, and nothing more.
//! Everything else in the crate is crate-private, so a change inside the broker that keeps
//! these items is not a change to any other crate (docs/architecture.md, "The broker's surface").

/// Error display: the binaries and tests print an error with its causes.
pub use crate::error::Chain;

/// Connections and schema (ops, replay, lab, tests): Postgres as the broker connects to it.
pub mod db {
    pub use crate::db::{connect, connect_keyed, is_transient, migrate, options, MIGRATOR};
}

/// Connections and schema (ops, lab, tests): NATS as the broker connects to it.
pub mod nats {
    pub use crate::nats::{connect, credentials, TlsFiles};
}

/// Connections and schema (lab, tests): the JetStream streams the broker ensures.
pub mod streams {
    pub use crate::streams::ensure;
}

/// Key files (ops, tests): the seeds of approvers and signers, read and written as the broker does.
pub mod keyfile {
    pub use crate::keyfile::{read_seed, write_new, SeedError};
}

/// Identity and devices admin (ops, lab, tests): activation codes, the audit and credential
/// records, and the NATS auth, route and client TLS files.
pub mod auth {
    pub use crate::auth::{client_tls, new_code, records, routes, setup};
}

/// Commands admin: withdrawing a decommissioned device's commands (ops), and the command path's
/// SQL and its partition fence for the tests that drive them without a broker.
pub mod commands {
    pub use crate::commands::ack_sql::record_acks;
    pub use crate::commands::cancel::withdraw_device;
    pub use crate::commands::intake_sql::{accept_many, Accepted};
    pub use crate::commands::sql::CommandRow;
    pub use crate::commands::sync::PER_MINUTE as CATCH_UP_PER_MINUTE;
    pub use crate::partitions::fence::acquire as acquire_fence;
}

/// Store configuration admin (ops, tests): publishing, refusals and the versions kept.
pub mod store_config {
    pub use crate::store_config::{ensure_store, model, publish, record_refusal, rows, PublishError};
}

/// Ingest for replay (ops `replay`, lab benches): the broker's event processing, run outside it.
pub mod ingest {
    pub use crate::ingest::{content_hash, process, Engine, EventOutcome, IngestError, Raw, Report};

    /// The group commit of accepted events (lab baseline bench).
    pub mod writer {
        pub use crate::ingest::writer::{commit, Candidate, DeviceUpdate};
    }
}

/// Ingest for replay (ops `replay`): events split by store as the broker's lanes split them.
pub mod lanes {
    pub use crate::lanes::lane_of;
}

/// Ingest for replay (ops `replay`, lab benches): the actors' Postgres ports.
pub mod ports {
    pub use crate::ports::PgPorts;
}

/// Ingest for replay (ops `replay`): the tenants the broker knows.
pub mod tenants {
    pub use crate::tenants::Tenants;
}

/// Logging (the binaries): the broker's log formats and their installation.
pub mod logging {
    pub use crate::logging::{init, LogFormat, Output};
}

/// Metrics (lab): the Prometheus recorder, and the names a chaos run checks.
pub mod metrics {
    pub use crate::metrics::{install, AUTH_RESPONDER_UP};
}

/// Signing (the broker binary, lab, tests): the command signing keys, loaded as the broker
/// loads them, and the fixed test key (only with the `test-support` feature).
pub mod signing {
    #[cfg(any(test, feature = "test-support"))]
    pub use crate::signing::test_key_file;
    pub use crate::signing::Signer;
}
