//! A child process's JSON log lines (`TILLSYNC_LOG_FORMAT=json`), collected as they arrive,
//! for the tests that read what a broker or a bridge said while it stopped.

use std::sync::{Arc, Mutex};

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Value>>>);

impl Log {
    /// Reads `stream` line by line into a log until it ends; a line that is not JSON fails the
    /// reading task (awaited by the test).
    pub fn follow(stream: impl AsyncRead + Unpin + Send + 'static) -> (Log, JoinHandle<()>) {
        let log = Log::default();
        let mut reader = BufReader::new(stream).lines();
        let lines = log.clone();
        let reading = tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                let value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                lines.0.lock().unwrap().push(value);
            }
        });
        (log, reading)
    }

    pub fn lines(&self) -> Vec<Value> {
        self.0.lock().unwrap().clone()
    }

    /// The lines whose message is `message`.
    pub fn find(&self, message: &str) -> Vec<Value> {
        self.lines().into_iter().filter(|l| l["message"] == message).collect()
    }

    /// Index of the first of `lines` whose message is `message`.
    pub fn position(lines: &[Value], message: &str) -> Option<usize> {
        lines.iter().position(|l| l["message"] == message)
    }
}

/// SIGTERMs `child` (whose log `reading` follows), waits up to `within` for it to exit 0, and
/// checks that exactly the tasks `names` logged `Task stopped.`, none aborted or panicked.
/// Returns the log's lines and the index of the last `Task stopped.`.
pub async fn stop_and_check_tasks(
    child: &mut tokio::process::Child,
    reading: JoinHandle<()>,
    log: &Log,
    within: Duration,
    names: &BTreeSet<String>,
) -> (Vec<Value>, usize) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("running")).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(within, child.wait())
        .await
        .unwrap_or_else(|_| panic!("did not exit within {within:?} of SIGTERM"))
        .unwrap();
    reading.await.unwrap();
    let lines = log.lines();
    assert!(status.success(), "exit status {status}; last lines: {:?}", &lines[lines.len().saturating_sub(10)..]);
    let stopped: BTreeSet<String> =
        log.find("Task stopped.").iter().map(|l| l["task"].as_str().unwrap().to_string()).collect();
    assert_eq!(&stopped, names, "each registered task logs that it stopped");
    assert!(log.find("Tasks did not stop in time; aborting them.").is_empty(), "no task needed aborting");
    assert!(log.find("Task ended abnormally.").is_empty(), "no task panicked");
    let last_task = lines.iter().rposition(|l| l["message"] == "Task stopped.").unwrap();
    (lines, last_task)
}
