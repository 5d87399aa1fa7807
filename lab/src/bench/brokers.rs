//! The broker processes of a `bench scale` drain. One that exits by itself is started again
//! (as a deployment's restart policy would) and counted, so a broker that crashes shows in
//! the report rather than as a drain that never ends; one killed on purpose stays down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::AbortOnDrop;
use crate::chaos::procs::Proc;

pub struct Brokers {
    procs: Arc<Mutex<Vec<Proc>>>,
    _supervisor: AbortOnDrop<()>,
}

impl Brokers {
    /// Starts every process, then watches them.
    pub fn start(mut procs: Vec<Proc>) -> anyhow::Result<Brokers> {
        for p in &mut procs {
            p.start()?;
        }
        let procs = Arc::new(Mutex::new(procs));
        let watched = procs.clone();
        let supervisor = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                for p in watched.lock().unwrap().iter_mut() {
                    match p.supervise() {
                        Ok(true) => eprintln!("{} exited by itself; started again", p.name),
                        Ok(false) => {}
                        Err(error) => eprintln!("{} exited and could not be started again: {error:#}", p.name),
                    }
                }
            }
        });
        Ok(Brokers { procs, _supervisor: AbortOnDrop(supervisor) })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.lock().unwrap().iter().filter_map(|p| p.pid()).collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.procs.lock().unwrap().iter().map(|p| p.name.clone()).collect()
    }

    /// SIGKILL to the broker named `name`; it stays down. False when there is none.
    pub fn kill9(&self, name: &str) -> bool {
        let mut procs = self.procs.lock().unwrap();
        let Some(p) = procs.iter_mut().find(|p| p.name == name) else { return false };
        p.kill9();
        true
    }

    /// Times a broker exited by itself and was started again.
    pub fn restarts(&self) -> u32 {
        self.procs.lock().unwrap().iter().map(|p| p.crashes).sum()
    }

    /// Stops every broker gracefully (SIGTERM, SIGKILL after 10 s).
    pub fn stop(self) {
        drop(self._supervisor);
        for p in self.procs.lock().unwrap().iter_mut() {
            p.terminate(Duration::from_secs(10));
        }
    }
}
