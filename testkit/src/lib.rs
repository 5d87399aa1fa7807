//! Private servers for tillsync's tests, its lab (bench and chaos) and scripts: one launcher
//! of each kind, owned by the value that started it.
//!
//! - [`NatsServer`]: one `nats-server` with JetStream on a free loopback port, a store and a
//!   log of its own, any extra config (authorization, TLS); started over on new ports when a
//!   picked port was taken meanwhile. Killed, paused, resumed and restarted on the same port
//!   and store by its pid.
//! - [`NatsCluster`]: `n` such servers clustered over loopback routes; a node can be killed,
//!   paused and restarted while the others run.
//! - [`PgServer`]: a private Postgres cluster (`initdb` into a temp dir, `pg_ctl` on a free
//!   loopback port), with TLS if asked; stopped, killed, paused and started again.
//! - [`FreshDb`]: a new, empty database on a given Postgres server, dropped after.
//!
//! Everything listens on 127.0.0.1 only, and only processes started here are ever signalled,
//! by their pid; dropping a launcher stops what it started. Functions return [`Error`]s with
//! context (the lab reports them); the tests' harness wraps them in panicking helpers.

mod bin;
mod cluster;
mod connect;
mod db;
mod dir;
mod error;
mod nats;
mod poll;
mod postgres;
mod process;

pub use bin::nats_bin;
pub use cluster::{ClusterConfig, ClusterOptions, NatsCluster};
pub use connect::Connect;
pub use db::{with_database, FreshDb};
pub use error::{BoxError, Error};
pub use nats::{NatsOptions, NatsServer};
pub use poll::{until_blocking, within};
pub use postgres::{PgOptions, PgServer};
pub use process::{free_port, Process};

/// The result of every launcher.
pub type Result<T, E = Error> = std::result::Result<T, E>;
