use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

pub use tillsync_testkit::within;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// Polls `check` every 25 ms until it returns `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match within(timeout, check).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for: {what}"),
    }
}

/// Polls until `get` returns `want`; on timeout, panics showing the last value seen.
pub async fn eventually_eq<T, F, Fut>(timeout: Duration, what: &str, want: T, mut get: F)
where
    T: PartialEq + Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let got = get().await;
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}: want {want:?}, last saw {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
