//! Reading a broker's /metrics in tests.

/// GETs `http://<addr>/<path>`; `None` while the server is not up.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(format!("http://{addr}{path}")).await.ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.text().await.ok()?))
}

/// The value of the sample `name{labels}` in Prometheus text output, where `labels` is the
/// exact label set as rendered (e.g. `reason="oversize"`), or empty for none.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let want = if labels.is_empty() { name.to_string() } else { format!("{name}{{{labels}}}") };
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series == want).then(|| value.parse().ok()).flatten()
    })
}

/// A sample of the in-process brokers' metrics, 0 when absent. Every [`crate::InProcBroker`] in
/// the test binary records into the process's one recorder, so a counter holds what other
/// tests counted too: compare with a reading taken before your own broker could count.
pub fn inproc_broker_metric(name: &str, labels: &str) -> f64 {
    metric(&tillsync_broker::admin::metrics::install().render(), name, labels).unwrap_or(0.0)
}

/// A free loopback address for a child process's HTTP listener.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_samples() {
        let t = "# HELP x y\nx_total{reason=\"a\"} 3\nx_total 5\n";
        assert_eq!(super::metric(t, "x_total", "reason=\"a\""), Some(3.0));
        assert_eq!(super::metric(t, "x_total", ""), Some(5.0));
        assert_eq!(super::metric(t, "x_total", "reason=\"b\""), None);
    }
}
