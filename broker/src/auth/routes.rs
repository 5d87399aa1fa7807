//! `tillsync auth routes`: what a NATS cluster's nodes need so that only they can route to each
//! other. The auth callout never sees route connections, so without this anyone who reaches a
//! node's cluster port joins the cluster and sees every message.
//!
//! Two locks, both in `routes.conf` (to `include` inside the `cluster {}` block): route
//! authorization (one user and a random password, which the solicited route URLs carry) and
//! mutual TLS (a route CA made here and one certificate for every node name given, signed by
//! it, with `verify: true`). A node without both is refused by the others. The certificates
//! are made with rcgen; nothing here is cryptography of our own.

use std::path::{Path, PathBuf};

use rcgen::ExtendedKeyUsagePurpose;

use crate::auth::pki::{refuse_existing, write_private, Ca};

/// File names written next to the authorization keys.
pub const ROUTES_CONF: &str = "routes.conf";
pub const ROUTE_CA: &str = "route-ca.pem";
pub const ROUTE_CERT: &str = "route.pem";
pub const ROUTE_KEY: &str = "route-key.pem";
/// The route user every node presents.
pub const ROUTE_USER: &str = "route";

/// Writes the route CA, the nodes' certificate and key, and `routes.conf` into `dir`.
/// `routes`: every node's `host:port` for routes; `nats_dir`: where nats-server sees `dir`
/// (the config names the certificate files by that path). Refuses to overwrite: new route
/// credentials on one node only would split the cluster.
pub fn generate(dir: &Path, nats_dir: &Path, routes: &[String]) -> std::io::Result<PathBuf> {
    use std::io::{Error, ErrorKind};
    if routes.is_empty() {
        return Err(Error::new(ErrorKind::InvalidInput, "name every node's route address (--route HOST:PORT)"));
    }
    let hosts: Vec<String> = routes.iter().map(|r| host_of(r)).collect::<Result<_, _>>()?;
    refuse_existing(dir, &[ROUTES_CONF, ROUTE_CA, ROUTE_CERT, ROUTE_KEY], "route credentials")?;
    let ca = Ca::new("tillsync route CA")?;
    // One certificate for every node: each presents it to the others as client and as server.
    let usages = [ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let (node_cert, node_key) = ca.sign(&node_names(&hosts), "tillsync NATS route", &usages)?;
    let password = format!("{}{}", crate::auth::new_code(), crate::auth::new_code()).replace('-', "");
    std::fs::DirBuilder::new().recursive(true).create(dir)?;
    write_private(&dir.join(ROUTE_CA), &ca.pem())?;
    write_private(&dir.join(ROUTE_CERT), &node_cert)?;
    write_private(&dir.join(ROUTE_KEY), &node_key)?;
    let conf = routes_conf(nats_dir, &password, routes);
    write_private(&dir.join(ROUTES_CONF), &conf)?;
    Ok(dir.join(ROUTES_CONF))
}

/// The `cluster {}` contents: authorization, TLS and the routes to solicit.
fn routes_conf(nats_dir: &Path, password: &str, routes: &[String]) -> String {
    let file = |n: &str| nats_dir.join(n).display().to_string();
    let urls: Vec<String> =
        routes.iter().map(|r| format!("    \"nats-route://{ROUTE_USER}:{password}@{r}\"")).collect();
    format!(
        "# tillsync: cluster route security (written by `tillsync auth routes`; docs/security.md).
# Include inside the cluster {{}} block. Only a node presenting this user and password over TLS,
# with a certificate signed by {ca}, becomes a route.
authorization {{ user: {ROUTE_USER}, password: \"{password}\", timeout: 2 }}
tls {{
  cert_file: \"{cert}\"
  key_file: \"{key}\"
  ca_file: \"{ca}\"
  verify: true
  timeout: 3
}}
routes: [
{urls}
]
",
        ca = file(ROUTE_CA),
        cert = file(ROUTE_CERT),
        key = file(ROUTE_KEY),
        urls = urls.join("\n"),
    )
}

fn host_of(route: &str) -> std::io::Result<String> {
    match route.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(host.to_string()),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{route:?} is not HOST:PORT (a node's cluster listen address)"),
        )),
    }
}

/// The nodes' names, and loopback, which a node's own tools dial.
fn node_names(hosts: &[String]) -> Vec<String> {
    let mut names: Vec<String> = hosts.to_vec();
    for local in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == local) {
            names.push(local.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routes_carry_the_password_and_the_files_are_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let routes = vec!["nats:6222".to_string(), "nats-2:6222".to_string()];
        let conf = generate(dir.path(), Path::new("/etc/nats/auth"), &routes).unwrap();
        let text = std::fs::read_to_string(conf).unwrap();
        assert!(text.contains("verify: true") && text.contains("/etc/nats/auth/route.pem"), "{text}");
        assert_eq!(text.matches("nats-route://route:").count(), 2);
        assert!(generate(dir.path(), dir.path(), &routes).is_err());
        assert!(generate(tempfile::tempdir().unwrap().path(), dir.path(), &["nats".into()]).is_err());
        assert!(generate(tempfile::tempdir().unwrap().path(), dir.path(), &[]).is_err());
    }
}
