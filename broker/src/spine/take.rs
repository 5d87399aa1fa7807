//! The consumer template: what the spine does with a batch it pulled. Every consumer is
//! decode -> admit -> decide -> commit -> settle; a [`Consumer`] supplies its decoding, its
//! decide-and-commit and its counters, and [`take`] does the rest the same way for all of them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Message;
use tillsync_schemas::{Reason, WireError};

use super::{admit, settle, Refused, Settle};
use crate::partitions::{fence, Fence};
use crate::{metrics, quarantine, Ctx};

/// A broker consumer on the spine: how its messages decode and whose they are, and what it
/// decides and commits for the ones admitted.
pub trait Consumer: Sync {
    /// A message as decoded.
    type Item: Send + Sync;
    /// What a committed batch leaves to do once its messages are settled.
    type After: Send;
    /// Its stream, as quarantine rows name it.
    const STREAM: &'static str;
    /// What logs and `tillsync_db_retries_total` call it.
    const NAME: &'static str;
    /// Times a transient failure (admitting or committing) is retried in place, with backoff,
    /// before the batch goes back to JetStream.
    const RETRIES: u32 = 0;
    /// A batch failing for a reason retries cannot fix is committed again a message at a time,
    /// and each one that still fails is quarantined (`apply_failed`), so one poison message
    /// never blocks others. Otherwise the batch goes back to JetStream.
    const ISOLATE: bool = false;

    /// Decodes and validates a message for its subject.
    fn decode(&self, subject: &str, payload: &[u8]) -> Result<Self::Item, WireError>;

    /// The tenant the message is for.
    fn tenant<'a>(&self, item: &'a Self::Item) -> &'a str;

    /// Why a message of a tenant that is not provisioned is refused.
    fn unknown_tenant(&self, item: &Self::Item) -> WireError {
        super::unknown_tenant(self.tenant(item))
    }

    /// Counts a batch as it arrives, before anything is admitted.
    fn received(&self, _ctx: &Ctx, _batch: &[Message]) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Counts a message of this consumer that was quarantined.
    fn quarantined(&self, _e: &WireError) {}

    /// Decides about the admitted messages, in stream order, and commits under `fence`: a
    /// verdict per message, in the same order, or a failure when nothing was committed.
    fn commit(
        &self,
        ctx: &Arc<Ctx>,
        fence: Fence,
        batch: &[Admitted<Self::Item>],
    ) -> impl Future<Output = Result<Committed<Self::After>, Failure>> + Send;

    /// What follows once a committed batch's messages are settled.
    fn after(&self, _ctx: &Arc<Ctx>, after: Self::After) -> impl Future<Output = ()> + Send {
        drop(after);
        async {}
    }
}

/// An admitted message, decoded.
pub struct Admitted<T> {
    pub msg: Message,
    pub item: T,
}

/// What a consumer committed: a verdict per message, and what to do once they are settled.
pub struct Committed<A> {
    pub verdicts: Vec<Verdict>,
    pub after: A,
}

/// What became of one admitted message.
#[derive(Debug)]
pub enum Verdict {
    /// Its effect is committed: ack.
    Done,
    /// Refused, and recorded as such by the consumer (a rejected command): terminate.
    Ended,
    /// Refused by the consumer's decision: quarantine it with this reason, then terminate.
    Quarantine(WireError),
    /// Not committed: redeliver.
    Failed(Failure),
}

/// A commit that did not happen, as the spine settles it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The partition's fence refused the commit: another instance owns it now.
    pub fenced: bool,
    /// It may succeed if tried again soon.
    pub transient: bool,
    pub error: Arc<str>,
}

impl Failure {
    pub fn new(error: impl std::fmt::Display, fenced: bool, transient: bool) -> Failure {
        Failure { fenced, transient, error: error.to_string().into() }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Failure {
        Failure::new(&e, fence::is_fenced(&e), crate::db::is_transient(&e))
    }
}

/// Takes a pulled batch through the template: counts it, admits each message (partition,
/// decode, tenant), quarantines the refused ones, has `consumer` decide and commit the rest,
/// and settles every message, each only after its effect (or its quarantine) is committed.
pub async fn take<C: Consumer>(ctx: &Arc<Ctx>, fence: Fence, consumer: &C, batch: Vec<Message>) {
    consumer.received(ctx, &batch).await;
    let admitted = match retrying::<C, _, _, _>(|| admit_all(ctx, consumer, &batch)).await {
        Ok(a) => a,
        // In stream order or not at all: a later message must not overtake one left behind.
        Err(failure) => return fail(ctx, fence, C::NAME, batch.iter(), &failure).await,
    };
    let mut good = Vec::with_capacity(batch.len());
    let mut refused = Vec::new();
    for (msg, a) in batch.into_iter().zip(admitted) {
        match a {
            Ok(item) => good.push(Admitted { msg, item }),
            Err(e) => refused.push((msg, e)),
        }
    }
    let refused: Vec<(&Message, &WireError)> = refused.iter().map(|(m, e)| (m, e)).collect();
    quarantine(ctx, fence, consumer, &refused).await;
    commit(ctx, fence, consumer, &good).await;
}

/// Each message admitted, or why not; a failure when Postgres could not tell.
async fn admit_all<C: Consumer>(
    ctx: &Ctx,
    consumer: &C,
    batch: &[Message],
) -> Result<Vec<Result<C::Item, WireError>>, Failure> {
    let gate = ctx.gate();
    let mut out = Vec::with_capacity(batch.len());
    for msg in batch {
        out.push(match admit(&gate, consumer, &msg.subject, &msg.payload).await {
            Ok(item) => Ok(item),
            Err(Refused::Bad(e)) => Err(e),
            Err(Refused::Db(e)) => return Err(e.into()),
        });
    }
    Ok(out)
}

/// Commits the admitted messages and settles them by their verdicts; a failure settles them
/// all by the consumer's policy ([`Consumer::RETRIES`], [`Consumer::ISOLATE`]).
async fn commit<C: Consumer>(ctx: &Arc<Ctx>, fence: Fence, consumer: &C, batch: &[Admitted<C::Item>]) {
    if batch.is_empty() {
        return;
    }
    match retrying::<C, _, _, _>(|| consumer.commit(ctx, fence, batch)).await {
        Ok(done) => settle_verdicts(ctx, fence, consumer, batch, done).await,
        Err(f) if C::ISOLATE && !f.fenced && !f.transient => {
            tracing::error!(error = %f.error, consumer = C::NAME, "Batch failed; applying its messages one by one to isolate the cause.");
            for a in batch {
                isolate(ctx, fence, consumer, a).await;
            }
        }
        Err(f) => fail(ctx, fence, C::NAME, batch.iter().map(|a| &a.msg), &f).await,
    }
}

/// Commits one message of a batch that failed for good; quarantines it if it fails alone.
async fn isolate<C: Consumer>(ctx: &Arc<Ctx>, fence: Fence, consumer: &C, a: &Admitted<C::Item>) {
    let one = std::slice::from_ref(a);
    match consumer.commit(ctx, fence, one).await {
        Ok(done) => settle_verdicts(ctx, fence, consumer, one, done).await,
        Err(f) if f.fenced || f.transient => settle(&a.msg, failed(ctx, fence, C::NAME, &f)).await,
        Err(f) => {
            let e = WireError::new(Reason::ApplyFailed, f.error.to_string());
            match quarantine::record_all(&ctx.pool, fence, C::STREAM, &[(&a.msg, &e)]).await {
                Ok(()) => {
                    consumer.quarantined(&e);
                    settle(&a.msg, Settle::Term).await;
                }
                Err(error) => {
                    tracing::error!(%error, "Cannot quarantine; leaving the message for redelivery.");
                    settle(&a.msg, Settle::Nak(Duration::from_secs(5))).await;
                }
            }
        }
    }
}

async fn settle_verdicts<C: Consumer>(
    ctx: &Arc<Ctx>,
    fence: Fence,
    consumer: &C,
    batch: &[Admitted<C::Item>],
    done: Committed<C::After>,
) {
    debug_assert_eq!(done.verdicts.len(), batch.len(), "{}: a verdict per message", C::NAME);
    let mut to_quarantine = Vec::new();
    // One log line per failure, however many messages it left uncommitted.
    let mut logged: Option<Arc<str>> = None;
    for (a, verdict) in batch.iter().zip(done.verdicts) {
        let how = match verdict {
            Verdict::Done => Settle::Ack,
            Verdict::Ended => Settle::Term,
            Verdict::Quarantine(e) => {
                to_quarantine.push((&a.msg, e));
                continue;
            }
            Verdict::Failed(f) if logged.as_ref().is_some_and(|l| Arc::ptr_eq(l, &f.error)) => Settle::RETRY,
            Verdict::Failed(f) => {
                logged = Some(f.error.clone());
                failed(ctx, fence, C::NAME, &f)
            }
        };
        settle(&a.msg, how).await;
    }
    let to_quarantine: Vec<(&Message, &WireError)> = to_quarantine.iter().map(|(m, e)| (*m, e)).collect();
    quarantine(ctx, fence, consumer, &to_quarantine).await;
    consumer.after(ctx, done.after).await;
}

/// Quarantines refused messages in one transaction, then terminates them.
async fn quarantine<C: Consumer>(ctx: &Ctx, fence: Fence, consumer: &C, rows: &[(&Message, &WireError)]) {
    if rows.is_empty() {
        return;
    }
    match quarantine::record_all(&ctx.pool, fence, C::STREAM, rows).await {
        Ok(()) => {
            for (msg, e) in rows {
                consumer.quarantined(e);
                settle(msg, Settle::Term).await;
            }
        }
        Err(error) => fail(ctx, fence, C::NAME, rows.iter().map(|(m, _)| *m), &error.into()).await,
    }
}

/// Settles messages whose effect was not committed.
async fn fail<'m>(
    ctx: &Ctx,
    fence: Fence,
    name: &'static str,
    msgs: impl Iterator<Item = &'m Message>,
    failure: &Failure,
) {
    let how = failed(ctx, fence, name, failure);
    for msg in msgs {
        settle(msg, how).await;
    }
}

/// How a message whose effect did not commit is settled: redelivered, and when the fence
/// refused the commit, the partition's work stops (another instance owns it now).
fn failed(ctx: &Ctx, fence: Fence, name: &'static str, failure: &Failure) -> Settle {
    if failure.fenced {
        ctx.partitions.report_fenced(fence);
    } else {
        tracing::warn!(error = %failure.error, consumer = name, "Not committed; redelivering in 2 s.");
    }
    Settle::RETRY
}

/// Runs `attempt` until it succeeds, fails for good, or has failed transiently
/// [`Consumer::RETRIES`] times more.
async fn retrying<C, T, F, Fut>(mut attempt: F) -> Result<T, Failure>
where
    C: Consumer,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut retries = 0u32;
    loop {
        match attempt().await {
            Err(f) if f.transient && !f.fenced && retries < C::RETRIES => {
                metrics::db_retry(C::NAME);
                retries += 1;
                tracing::warn!(error = %f.error, attempt = retries, consumer = C::NAME, "Transient failure; retrying.");
                tokio::time::sleep(Duration::from_millis(100 << retries)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A consumer whose only use here is its failure policy.
    struct TwoRetries;

    impl Consumer for TwoRetries {
        type Item = ();
        type After = ();
        const STREAM: &'static str = "TEST";
        const NAME: &'static str = "test";
        const RETRIES: u32 = 2;

        fn decode(&self, _: &str, _: &[u8]) -> Result<(), WireError> {
            Ok(())
        }

        fn tenant<'a>(&self, _: &'a ()) -> &'a str {
            "t"
        }

        async fn commit(&self, _: &Arc<Ctx>, _: Fence, _: &[Admitted<()>]) -> Result<Committed<()>, Failure> {
            unreachable!("not committed in these tests")
        }
    }

    /// How many attempts `retrying` makes at something that always fails with `failure`.
    async fn attempts(failure: Failure) -> u32 {
        let n = AtomicU32::new(0);
        let r: Result<(), Failure> = retrying::<TwoRetries, _, _, _>(|| {
            n.fetch_add(1, Ordering::Relaxed);
            let f = failure.clone();
            async move { Err(f) }
        })
        .await;
        assert!(r.is_err());
        n.into_inner()
    }

    #[tokio::test]
    async fn only_transient_failures_are_retried_in_place_and_only_so_often() {
        assert_eq!(attempts(Failure::new("timed out", false, true)).await, 3, "the first try and two retries");
        assert_eq!(attempts(Failure::new("bad row", false, false)).await, 1);
        assert_eq!(attempts(Failure::new("fenced", true, true)).await, 1, "a fenced commit never comes right");
    }
}
