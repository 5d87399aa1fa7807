//! tillsync's integration tests: one binary, a module per area, real nats-server and Postgres
//! started per test by the harness in `tests/harness`.

mod adversary;
mod approvals;
mod bench;
mod chaos;
mod cli;
mod commands;
mod commands_truth;
mod common;
mod config;
mod config_cloud;
mod config_edge;
mod config_scale;
mod converge;
mod dashboards;
mod edge;
mod example;
mod hygiene;
mod ingest;
mod logs;
mod ops;
mod outages;
mod package;
mod production;
mod readme;
mod recovery;
mod resend;
mod routes;
mod scale;
mod scale_support;
mod security;
mod signals;
mod signed;
mod tls;
mod tls_files;
mod upgrade;
