//! Whether a connection would carry credentials and sales in clear text to another machine.
//! Broker, CLI and bridge refuse such a URL unless told explicitly (`--allow-plaintext`), and
//! warn on every start when told; loopback stays allowed, as nothing leaves the host.

use std::net::IpAddr;

/// The first of `urls` (comma-separated NATS URLs) that is plain text to a non-loopback host;
/// `tls_forced` when a CA or client certificate is configured (the client then requires TLS).
pub fn nats_in_clear(urls: &str, tls_forced: bool) -> Option<String> {
    if tls_forced {
        return None;
    }
    urls.split(',').map(str::trim).filter(|u| !u.is_empty()).find_map(|u| {
        let parsed = url::Url::parse(u).ok()?;
        let clear = matches!(parsed.scheme(), "nats" | "ws");
        (clear && !loopback(parsed.host_str().unwrap_or(""))).then(|| host_port(&parsed))
    })
}

/// The host of a Postgres URL when it is reached without TLS required: `sslmode` other than
/// `require`, `verify-ca` or `verify-full`, to a host other than loopback or a Unix socket.
pub fn postgres_in_clear(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let query = |key: &str| parsed.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned());
    let host = query("host").unwrap_or_else(|| parsed.host_str().unwrap_or("").to_string());
    if host.is_empty() || host.starts_with('/') || loopback(&host) {
        return None;
    }
    let sslmode = query("sslmode").unwrap_or_default();
    (!matches!(sslmode.as_str(), "require" | "verify-ca" | "verify-full")).then(|| host_port(&parsed))
}

/// A connection that would cross the network in clear. `at` is its scheme, host and port,
/// never a user, password or token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InClear {
    #[error("NATS at {at} is plain text to another host (use tls:// or NATS_CA_FILE)")]
    Nats { at: String },
    #[error("Postgres at {at} is reached without sslmode=require, verify-ca or verify-full")]
    Postgres { at: String },
}

/// The start [`check`] stops without `--allow-plaintext`, naming the first connection in clear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0}: credentials and sales would cross the network in clear; pass --allow-plaintext \
     (TILLSYNC_ALLOW_PLAINTEXT=true) to accept that"
)]
pub struct PlaintextRefused(pub InClear);

/// What would travel in clear: the NATS URLs (unless `tls_forced`) and the Postgres URL. With
/// `allow` (`--allow-plaintext`) the findings come back as warnings to log; without, the first
/// is the error that stops the start.
pub fn check(
    nats_urls: &str,
    tls_forced: bool,
    database_url: Option<&str>,
    allow: bool,
) -> Result<Vec<InClear>, PlaintextRefused> {
    let nats = nats_in_clear(nats_urls, tls_forced).map(|at| InClear::Nats { at });
    let postgres = database_url.and_then(postgres_in_clear).map(|at| InClear::Postgres { at });
    let found: Vec<InClear> = nats.into_iter().chain(postgres).collect();
    match found.first() {
        Some(first) if !allow => Err(PlaintextRefused(first.clone())),
        _ => Ok(found),
    }
}

fn loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn host_port(u: &url::Url) -> String {
    match u.port() {
        Some(p) => format!("{}://{}:{p}", u.scheme(), u.host_str().unwrap_or("")),
        None => format!("{}://{}", u.scheme(), u.host_str().unwrap_or("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_found_only_off_the_host() {
        assert_eq!(nats_in_clear("nats://127.0.0.1:4222,nats://localhost:4223", false), None);
        assert_eq!(nats_in_clear("nats://[::1]:4222", false), None);
        assert_eq!(nats_in_clear("tls://nats.example:4222", false), None);
        assert_eq!(nats_in_clear("nats://nats.example:4222", true), None, "a CA file forces TLS");
        // The token never appears in the answer.
        assert_eq!(
            nats_in_clear("nats://127.0.0.1:4222, nats://t0ken@nats-2:4222", false).as_deref(),
            Some("nats://nats-2:4222")
        );
        assert_eq!(postgres_in_clear("postgres://u@127.0.0.1/t"), None);
        assert_eq!(postgres_in_clear("postgres://u@db/t?sslmode=verify-full"), None);
        assert_eq!(postgres_in_clear("postgres:///t?host=/var/run/postgresql"), None);
        assert_eq!(postgres_in_clear("postgres://u:pw@db:5432/t").as_deref(), Some("postgres://db:5432"));
        assert_eq!(postgres_in_clear("postgres://u@db/t?sslmode=prefer").as_deref(), Some("postgres://db"));
    }

    #[test]
    fn plain_text_is_refused_unless_allowed_and_then_warned() {
        assert_eq!(check("nats://127.0.0.1:4222", false, Some("postgres://u@127.0.0.1/t"), false), Ok(vec![]));
        let refused = check("nats://nats:4222", false, None, false).unwrap_err();
        assert_eq!(refused, PlaintextRefused(InClear::Nats { at: "nats://nats:4222".into() }));
        let text = refused.to_string();
        assert!(
            text.starts_with("NATS at nats://nats:4222 is plain text") && text.contains("--allow-plaintext"),
            "{text}"
        );
        assert_eq!(check("nats://nats:4222", false, Some("postgres://db/t"), true).unwrap().len(), 2);
    }
}
