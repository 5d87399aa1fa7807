//! The running tasks, their gauge, and the one way they stop.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::job::{AsJob, Job};

/// What [`Tasks::stop`] names for tracked work that did not end in time.
const SPAWNED: &str = "spawned_work";

/// Told each task's running state: 1 (`true`) from registration, 0 once it has ended.
type Gauge<J> = Arc<dyn Fn(&J, bool) + Send + Sync>;

/// The running tasks, joined by [`Tasks::stop`].
pub struct Tasks<J: AsJob = Job> {
    cancel: CancellationToken,
    gauge: Gauge<J>,
    set: JoinSet<()>,
    running: HashMap<Id, J>,
    jobs: Vec<J>,
    /// Made when first asked for: an owner that spawns no short-lived work has none to join.
    spawned: OnceLock<TaskTracker>,
}

impl<J: AsJob> Tasks<J> {
    /// An empty registry whose tasks stop when `cancel` fires; `gauge` is told each task's
    /// running state.
    pub fn new(cancel: CancellationToken, gauge: impl Fn(&J, bool) + Send + Sync + 'static) -> Tasks<J> {
        Tasks {
            cancel,
            gauge: Arc::new(gauge),
            set: JoinSet::new(),
            running: HashMap::new(),
            jobs: Vec::new(),
            spawned: OnceLock::new(),
        }
    }

    /// Where short-lived work is spawned so that [`Tasks::stop`] joins it once the tasks have
    /// stopped; work that tracked work spawns meanwhile is joined too. Work that only helps a
    /// running owner (the acks sent again after a reconnect) is not started once it is closed.
    pub fn spawned(&self) -> TaskTracker {
        self.spawned.get_or_init(TaskTracker::new).clone()
    }

    /// Registers `job` and starts its task; `task` is given the job (a periodic one reads its
    /// period from it) and must return once the cancellation fires.
    pub fn spawn<F, Fut>(&mut self, job: J, task: F)
    where
        F: FnOnce(J) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let running = Running::new(job, self.gauge.clone());
        let task = task(job);
        let handle = self.set.spawn(async move {
            let _running = running;
            task.await;
        });
        self.running.insert(handle.id(), job);
        self.jobs.push(job);
    }

    /// Every registered job, in registration order.
    pub fn jobs(&self) -> &[J] {
        &self.jobs
    }

    /// Logs what runs: one line with every name, and one line per job with its scope (if the
    /// owner has scopes) and trigger (debug).
    pub fn log_started(&self) {
        for job in &self.jobs {
            let (name, trigger) = (job.job().name, job.job().trigger);
            tracing::debug!(task = name, scope = job.scope(), trigger = %trigger, "Task registered.");
        }
        let names: Vec<&str> = self.jobs.iter().map(|j| j.job().name).collect();
        tracing::info!(count = names.len(), tasks = %names.join(","), "Tasks started.");
    }

    /// Cancels every task and joins them, then the tracked work, for at most `within` in all,
    /// logging each task as it stops; the tasks still running then are named and aborted, and
    /// tracked work still running is named `spawned_work`. Returns those names.
    pub async fn stop(mut self, within: Duration) -> Vec<&'static str> {
        self.cancel.cancel();
        let deadline = Instant::now() + within;
        let mut late = self.join_tasks(deadline, within).await;
        // Only now: until the tasks have stopped, they may still start work to join.
        if let Some(spawned) = self.spawned.get() {
            spawned.close();
            let pending = spawned.len();
            match tokio::time::timeout_at(deadline, spawned.wait()).await {
                Ok(()) => tracing::info!(pending, "Spawned work joined."),
                Err(_) => {
                    tracing::warn!(running = spawned.len(), ?within, "Spawned work did not end in time; leaving it.");
                    late.push(SPAWNED);
                }
            }
        }
        late
    }

    /// Joins the tasks until `deadline`, then aborts the rest and returns their names.
    async fn join_tasks(&mut self, deadline: Instant, within: Duration) -> Vec<&'static str> {
        loop {
            match tokio::time::timeout_at(deadline, self.set.join_next_with_id()).await {
                Ok(Some(Ok((id, ())))) => self.stopped(id, None),
                Ok(Some(Err(e))) => self.stopped(e.id(), Some(e)),
                Ok(None) => return Vec::new(),
                Err(_) => break,
            }
        }
        let mut late: Vec<&'static str> = self.running.values().map(|j| j.job().name).collect();
        late.sort_unstable();
        tracing::warn!(tasks = %late.join(","), ?within, "Tasks did not stop in time; aborting them.");
        self.set.shutdown().await;
        late
    }

    fn stopped(&mut self, id: Id, failed: Option<JoinError>) {
        let name = self.running.remove(&id).map_or("unknown", |j| j.job().name);
        match failed {
            None => tracing::info!(task = name, "Task stopped."),
            Some(error) => tracing::error!(%error, task = name, "Task ended abnormally."),
        }
    }
}

/// Tells the gauge 1 from registration; dropped when its task ends, returns, panics or is
/// aborted, 0.
struct Running<J: AsJob> {
    job: J,
    gauge: Gauge<J>,
}

impl<J: AsJob> Running<J> {
    fn new(job: J, gauge: Gauge<J>) -> Running<J> {
        gauge(&job, true);
        Running { job, gauge }
    }
}

impl<J: AsJob> Drop for Running<J> {
    fn drop(&mut self) {
        (self.gauge)(&self.job, false);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// A gauge that remembers what it was told, by task name, in order.
    #[derive(Clone, Default)]
    struct Told(Arc<Mutex<Vec<(&'static str, bool)>>>);

    impl Told {
        fn gauge(&self) -> impl Fn(&Job, bool) + Send + Sync + 'static {
            let told = self.0.clone();
            move |job, running| told.lock().unwrap().push((job.name, running))
        }

        fn of(&self, task: &str) -> Vec<bool> {
            self.0.lock().unwrap().iter().filter(|(t, _)| *t == task).map(|(_, r)| *r).collect()
        }
    }

    #[tokio::test]
    async fn stop_joins_every_task_and_names_the_ones_that_do_not_stop() {
        let (cancel, told) = (CancellationToken::new(), Told::default());
        let mut tasks = Tasks::new(cancel.clone(), told.gauge());
        let (c1, c2) = (cancel.clone(), cancel.clone());
        tasks.spawn(Job::on("polite", "the test"), move |_| async move { c1.cancelled().await });
        tasks.spawn(Job::every("done", Duration::from_secs(1)), move |_| async move { drop(c2) });
        tasks.spawn(Job::on("stubborn", "nothing"), |_| std::future::pending());
        assert_eq!(tasks.jobs().iter().map(|j| j.name).collect::<Vec<_>>(), ["polite", "done", "stubborn"]);
        assert_eq!(told.of("polite"), [true], "1 from registration");
        let late = tasks.stop(Duration::from_millis(200)).await;
        assert!(cancel.is_cancelled());
        assert_eq!(late, ["stubborn"]);
        for task in ["polite", "done", "stubborn"] {
            assert_eq!(told.of(task), [true, false], "{task}: 1, then 0 once it ended or was aborted");
        }
    }

    #[tokio::test]
    async fn stop_returns_nothing_when_all_stopped() {
        let cancel = CancellationToken::new();
        let mut tasks = Tasks::new(cancel.clone(), |_: &Job, _| {});
        let c = cancel.clone();
        tasks.spawn(Job::on("polite", "the test"), move |_| async move { c.cancelled().await });
        assert!(tasks.stop(Duration::from_secs(5)).await.is_empty());
    }

    #[tokio::test]
    async fn a_task_that_panics_reads_0_and_is_not_named_late() {
        let told = Told::default();
        let mut tasks = Tasks::new(CancellationToken::new(), told.gauge());
        tasks.spawn(Job::on("broken", "the test"), |_| async { panic!("the test") });
        assert!(tasks.stop(Duration::from_secs(5)).await.is_empty());
        assert_eq!(told.of("broken"), [true, false]);
    }

    #[tokio::test]
    async fn an_owners_job_reaches_its_task_and_its_gauge() {
        #[derive(Clone, Copy)]
        struct Scoped(Job, &'static str);
        impl AsJob for Scoped {
            fn job(&self) -> Job {
                self.0
            }
            fn scope(&self) -> Option<&'static str> {
                Some(self.1)
            }
        }
        let told = Arc::new(Mutex::new(Vec::new()));
        let seen = told.clone();
        let mut tasks = Tasks::new(CancellationToken::new(), move |j: &Scoped, r| seen.lock().unwrap().push((j.1, r)));
        let (tx, rx) = tokio::sync::oneshot::channel();
        tasks.spawn(Scoped(Job::on("led", "the test"), "lead"), |job| async move { tx.send(job.1).unwrap() });
        assert_eq!(rx.await.unwrap(), "lead");
        assert!(tasks.stop(Duration::from_secs(5)).await.is_empty());
        assert_eq!(*told.lock().unwrap(), [("lead", true), ("lead", false)]);
    }

    #[tokio::test]
    async fn stop_joins_the_work_tasks_spawn_as_they_stop_and_the_work_it_spawns() {
        let cancel = CancellationToken::new();
        let mut tasks = Tasks::new(cancel.clone(), |_: &Job, _| {});
        let (spawned, c) = (tasks.spawned(), cancel.clone());
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        // Like a last intake batch whose wake marks statuses: spawned at the stop, and spawning.
        tasks.spawn(Job::on("intake", "the test"), move |_| async move {
            c.cancelled().await;
            let again = spawned.clone();
            spawned.spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                again.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    flag.store(true, Ordering::SeqCst);
                });
            });
        });
        assert!(tasks.stop(Duration::from_secs(5)).await.is_empty());
        assert!(done.load(Ordering::SeqCst), "the work spawned by spawned work was joined");
    }

    #[tokio::test]
    async fn stop_names_spawned_work_that_does_not_end() {
        let tasks = Tasks::new(CancellationToken::new(), |_: &Job, _| {});
        tasks.spawned().spawn(std::future::pending::<()>());
        assert_eq!(tasks.stop(Duration::from_millis(100)).await, [SPAWNED]);
    }
}
