//! Cluster routes are authenticated and encrypted: three nodes with the `routes.conf` that
//! `tillsync auth routes` writes form a cluster, and a node that reaches their cluster port
//! without the route credentials (none at all, or the password without the certificate) is
//! refused: it never becomes a route, and nodes stay at two peers each.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use tillsync_tests::{eventually, free_port, http_get, nats_bin, DEFAULT_TIMEOUT};

/// How long three nodes may take to route to each other over TLS on a loaded host (a refused
/// handshake is retried by nats-server a second later; the CI host is shared).
const FORM: std::time::Duration = std::time::Duration::from_secs(30);

/// A nats-server process, killed when dropped.
struct Node {
    child: Child,
    http: std::net::SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a node named `name` with `cluster` as the body of its `cluster {}` block.
fn node(dir: &Path, name: &str, cluster_port: u16, cluster: &str) -> Node {
    let (port, http) = (free_port(), free_port());
    let log = dir.join(format!("{name}.log"));
    let conf = dir.join(format!("{name}.conf"));
    let text = format!(
        "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{http}\"\nlog_file: \"{log}\"\n\
         jetstream {{ store_dir: \"{store}\" }}\n\
         cluster {{\n  name: routes-test\n  listen: \"127.0.0.1:{cluster_port}\"\n{cluster}\n}}\n",
        log = log.display(),
        store = dir.join(name).display(),
    );
    std::fs::write(&conf, text).unwrap();
    let child = Command::new(nats_bin())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start nats-server: {e} (run ./scripts/test.sh)"));
    Node { child, http: ([127, 0, 0, 1], http).into(), log }
}

/// The server names this node has routes to (a route pool counts once per peer).
async fn peers(n: &Node) -> Option<Vec<String>> {
    let (_, body) = http_get(n.http, "/routez").await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut names: Vec<String> =
        v["routes"].as_array()?.iter().filter_map(|r| r["remote_name"].as_str().map(str::to_string)).collect();
    names.sort();
    names.dedup();
    Some(names)
}

/// Three nodes with `routes.conf` in `dir`, once they route to each other (`Err` with their
/// logs' tails when they do not within [`FORM`], e.g. a port taken by another test meanwhile).
async fn form(dir: &Path) -> Result<(Vec<String>, std::path::PathBuf, Vec<Node>), String> {
    std::fs::create_dir_all(dir).unwrap();
    let auth = dir.join("auth");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let conf = tillsync_broker::admin::auth::routes::generate(&auth, &auth, &routes).unwrap();
    // nats-server resolves an include relative to the including file: the configs are in dir.
    let include = "  include \"auth/routes.conf\"";
    let nodes: Vec<Node> = (0..3).map(|i| node(dir, &format!("n{i}"), ports[i], include)).collect();
    for (i, n) in nodes.iter().enumerate() {
        let want: Vec<String> = (0..3).filter(|j| *j != i).map(|j| format!("n{j}")).collect();
        let deadline = std::time::Instant::now() + FORM;
        while peers(n).await.filter(|p| *p == want).is_none() {
            if std::time::Instant::now() > deadline {
                let logs: Vec<String> = nodes
                    .iter()
                    .map(|n| {
                        let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(15).collect();
                        format!("{}:\n{}", n.log.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
                    })
                    .collect();
                return Err(format!("n{i} not routed to the other two within {FORM:?}\n{}", logs.join("\n")));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    Ok((routes, conf, nodes))
}

#[tokio::test]
async fn a_node_without_the_route_credentials_is_refused_by_the_cluster() {
    let root = tempfile::tempdir().unwrap();
    // Ports are picked free and bound a moment later: another test may take one in between,
    // and a node that cannot bind never routes. Such an attempt is started over on new ports.
    let mut attempt = 0;
    let (dir, (routes, conf, nodes)) = loop {
        attempt += 1;
        let dir = root.path().join(format!("attempt-{attempt}"));
        match form(&dir).await {
            Ok(formed) => break (dir, formed),
            Err(e) if attempt < 3 => eprintln!("routes: attempt {attempt} did not form, trying new ports: {e}"),
            Err(e) => panic!("three nodes never formed a cluster in {attempt} attempts: {e}"),
        }
    };
    let dir = dir.as_path();

    // Three intruders: no credentials at all; the password (copied from a route URL) without
    // a certificate; the password with a certificate of another route CA.
    let text = std::fs::read_to_string(&conf).unwrap();
    let password = text.split("nats-route://route:").nth(1).unwrap().split('@').next().unwrap().to_string();
    let other = dir.join("other");
    let other_conf = tillsync_broker::admin::auth::routes::generate(&other, &other, &routes).unwrap();
    let other_password = std::fs::read_to_string(&other_conf)
        .unwrap()
        .split("nats-route://route:")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string();
    let to_n0 = |creds: &str| format!("  routes: [\"nats-route://{creds}{}\"]", routes[0]);
    let intruders = [
        ("plain", to_n0("")),
        ("password", to_n0(&format!("route:{password}@"))),
        ("other-ca", std::fs::read_to_string(&other_conf).unwrap().replace(&other_password, &password)),
    ];
    let refusals = |n: &Node| {
        let log = std::fs::read_to_string(&n.log).unwrap_or_default();
        log.lines().filter(|l| l.contains("[ERR]") && (l.contains("TLS") || l.contains("Authorization"))).count()
    };
    for (name, cluster) in intruders {
        let before = refusals(&nodes[0]);
        let intruder = node(dir, name, free_port(), &cluster);
        let what = format!("n0 refusing {name}");
        eventually(DEFAULT_TIMEOUT, &what, || async { (refusals(&nodes[0]) > before).then_some(()) }).await;
        assert_eq!(peers(&intruder).await, Some(vec![]), "{name} joined the cluster");
        let seen = peers(&nodes[0]).await.unwrap();
        assert_eq!(seen, vec!["n1".to_string(), "n2".to_string()], "{name} became a route of n0");
    }
}
