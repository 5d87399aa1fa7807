//! Replay lanes: the stream is read in order and split by store ([`tillsync_broker::admin::lanes`])
//! over lanes that commit concurrently, as the live broker splits stores over partitions. A
//! store stays in one lane, so each device's events are applied in order. Lanes finish out of order, so the
//! resume position is the highest stream sequence at or below which everything committed
//! ([`Pending`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tillsync_actors::{ActorConfig, ActorSystem};
use tillsync_broker::admin::ingest::{process, Engine, IngestError, Raw, Report};
use tillsync_broker::admin::lanes::lane_of;
use tillsync_broker::admin::ports::PgPorts;
use tillsync_broker::admin::tenants::Tenants;
use tillsync_broker::admin::Chain;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::source::Source;

/// Stream sequences handed to lanes and not yet committed.
#[derive(Debug, Default)]
pub struct Pending {
    open: BTreeSet<u64>,
    last_dispatched: u64,
}

impl Pending {
    pub fn dispatch(&mut self, seqs: impl IntoIterator<Item = u64>) {
        for s in seqs {
            self.open.insert(s);
            self.last_dispatched = self.last_dispatched.max(s);
        }
    }

    /// Marks `seqs` committed; returns the position a resume may start after: every message
    /// at or below it is committed (dispatch is in stream order, so nothing below the oldest
    /// open sequence is still to come).
    pub fn commit(&mut self, seqs: impl IntoIterator<Item = u64>) -> u64 {
        for s in seqs {
            self.open.remove(&s);
        }
        match self.open.first() {
            Some(oldest) => oldest.saturating_sub(1),
            None => self.last_dispatched,
        }
    }
}

/// One committed lane batch.
pub struct Done {
    pub report: Report,
    /// Resume position after this commit (see [`Pending::commit`]).
    pub safe_seq: u64,
}

/// What every lane shares.
pub struct Shared {
    pub pool: PgPool,
    pub actors: ActorSystem,
    pub tenants: Tenants,
    pub pending: Mutex<Pending>,
}

impl Shared {
    /// A private actor system on the target `pool` (tenants are checked there, never created).
    pub async fn start(pool: PgPool) -> anyhow::Result<Arc<Shared>> {
        let actors = ActorSystem::start(ActorConfig::default(), Arc::new(PgPorts::new(pool.clone())))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Arc::new(Shared { pool, actors, tenants: Tenants::new(false), pending: Default::default() }))
    }

    /// Stops the actors once the lanes are done with them (the pool belongs to the caller).
    pub async fn stop(self: Arc<Self>) {
        if let Ok(s) = Arc::try_unwrap(self) {
            s.actors.shutdown().await;
        }
    }
}

/// Starts `n` lanes and the reader feeding them. Each committed batch arrives on the returned
/// channel, which closes when the source is exhausted, `stop` fires or a lane fails (its error
/// is the last item).
pub fn start(
    shared: Arc<Shared>,
    src: Source,
    n: usize,
    batch: usize,
    stop: CancellationToken,
) -> (mpsc::UnboundedReceiver<anyhow::Result<Done>>, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        // A few batches of look-ahead per lane; the reader waits when a lane falls behind.
        let (tx, rx) = mpsc::channel::<Vec<Raw>>(4);
        senders.push(tx);
        tokio::spawn(lane(shared.clone(), rx, done_tx.clone(), batch));
    }
    let reader = tokio::spawn(read(shared, src, senders, batch, stop));
    (done_rx, reader)
}

async fn read(
    shared: Arc<Shared>,
    mut src: Source,
    senders: Vec<mpsc::Sender<Vec<Raw>>>,
    batch: usize,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let n = senders.len();
    while !stop.is_cancelled() {
        // A batch for every lane at once: reading one batch and splitting it n ways would
        // leave each lane committing a small part of a batch.
        let raws = src.next_batch(batch * n).await?;
        if raws.is_empty() {
            break;
        }
        shared.pending.lock().expect("pending lock").dispatch(raws.iter().map(|r| r.stream_seq));
        let mut parts: Vec<Vec<Raw>> = vec![Vec::new(); n];
        for r in raws {
            parts[lane_of(&r.subject, n)].push(r);
        }
        for (tx, part) in senders.iter().zip(parts) {
            if !part.is_empty() && tx.send(part).await.is_err() {
                // That lane failed; its error reaches the caller on the done channel.
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Takes what the reader handed over (merging waiting parts up to about a batch), commits it,
/// reports it; stops at the first error.
async fn lane(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Vec<Raw>>,
    done: mpsc::UnboundedSender<anyhow::Result<Done>>,
    batch: usize,
) {
    let engine =
        Engine { pool: &shared.pool, actors: &shared.actors, tenants: &shared.tenants, fence: None, partitions: None };
    while let Some(mut raws) = rx.recv().await {
        while raws.len() < batch {
            match rx.try_recv() {
                Ok(more) => raws.extend(more),
                Err(_) => break,
            }
        }
        let result = process_with_retry(&engine, &raws).await.map(|report| {
            let safe_seq = shared.pending.lock().expect("pending lock").commit(raws.iter().map(|r| r.stream_seq));
            Done { report, safe_seq }
        });
        let failed = result.is_err();
        if done.send(result).is_err() || failed {
            return;
        }
    }
}

async fn process_with_retry(engine: &Engine<'_>, batch: &[Raw]) -> anyhow::Result<Report> {
    let mut attempt = 0u32;
    loop {
        match process(engine, batch).await {
            Ok(r) => return Ok(r),
            Err(e) if attempt < 4 && transient(&e) => {
                attempt += 1;
                tracing::warn!(error = %Chain(&e), attempt, "Transient failure replaying a batch; retrying.");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            Err(e) => {
                let (first, last) = (batch[0].stream_seq, batch[batch.len() - 1].stream_seq);
                return Err(anyhow::Error::new(e).context(format!(
                    "replaying {} message(s) between stream seqs {first} and {last}; nothing of this batch committed",
                    batch.len()
                )));
            }
        }
    }
}

fn transient(e: &IngestError) -> bool {
    match e {
        IngestError::Db(e) => tillsync_broker::admin::db::is_transient(e),
        IngestError::Actor(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_position_waits_for_the_oldest_open_message() {
        let mut p = Pending::default();
        p.dispatch([3, 5, 8, 9]);
        // A later lane finishes first: nothing below 3 is open, so only "before 3" is safe.
        assert_eq!(p.commit([8, 9]), 2);
        assert_eq!(p.commit([3]), 4);
        p.dispatch([12]);
        assert_eq!(p.commit([5]), 11);
        assert_eq!(p.commit([12]), 12);
    }

    #[test]
    fn an_empty_tracker_is_safe_at_what_was_dispatched() {
        let mut p = Pending::default();
        p.dispatch([1, 2]);
        assert_eq!(p.commit([1, 2]), 2);
        assert_eq!(p.commit([]), 2);
    }
}
