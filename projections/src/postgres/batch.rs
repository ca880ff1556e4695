//! Coalescing of concurrent database work into batches: what the API's nonce store and by-id
//! order reads share.
//!
//! Under load the cost of a one-row statement is mostly the statement, not the row: a round
//! trip, a backend wake-up, parse, plan and executor start in Postgres, and sqlx's own work in
//! this process. A [`Batcher`] runs one background task that takes whatever requests are
//! waiting (up to a maximum), hands them to its batch function as one `Vec`, and answers each
//! caller from the result; while a batch runs, the next requests queue up and become the next
//! batch. Alone, a request is still sent at once, so nothing waits for a batch to fill, and one
//! batch in flight at a time keeps a single pool connection busy, not one per request.
//!
//! A caller may stop waiting (its request's deadline passed, or its client went away): its
//! request is left out of the batch it would have joined, and a batch whose callers have all
//! stopped waiting is dropped where it stands (a pool wait, a statement on a dead connection),
//! so that the requests queued behind it are not held up by work nobody waits for.
//!
//! Depends on tokio and the metrics facade (and [`HeldConnection`], for [`idle_hook`]) only:
//! what a batch does (and how it falls back when its statement fails) belongs to its user.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::held::HeldConnection;

/// Requests waiting for a batch; a full queue makes callers wait (backpressure).
const QUEUE: usize = 4_096;

/// A batch function's future.
pub type BatchFuture<O> = Pin<Box<dyn Future<Output = Vec<O>> + Send>>;

type BatchFn<I, O> = dyn Fn(Vec<I>) -> BatchFuture<O> + Send + Sync;

/// What a batcher runs once it has had nothing to do for a while, and after how long.
type IdleHook = (
    Duration,
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>,
);

/// One request waiting for its batch, and where its answer goes.
struct Job<I, O> {
    input: I,
    reply: oneshot::Sender<O>,
}

/// Runs concurrent requests as batches, one batch at a time. Cheap to clone: clones share the
/// task.
///
/// The batch function gets the inputs in arrival order and must return one output per input,
/// in the same order. An output it does not return (a shorter `Vec`, or a panic) reaches its
/// caller as `None` from [`Batcher::submit`], as does a batcher whose runtime has shut down, so
/// a caller always has its own way to answer.
pub struct Batcher<I, O> {
    /// Started by the first request, inside the runtime that serves requests.
    queue: Arc<OnceLock<mpsc::Sender<Job<I, O>>>>,
    run: Arc<BatchFn<I, O>>,
    max: usize,
    /// Histogram of batch sizes, for `/metrics`.
    metric: &'static str,
    idle: Option<IdleHook>,
    /// Batches started so far (for tests that check batching happens).
    batches: Arc<AtomicU64>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            queue: Arc::clone(&self.queue),
            run: Arc::clone(&self.run),
            max: self.max,
            metric: self.metric,
            idle: self.idle.clone(),
            batches: Arc::clone(&self.batches),
        }
    }
}

impl<I, O> std::fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("max", &self.max)
            .field("metric", &self.metric)
            .field("batches", &self.batches.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// A batcher that passes at most `max` requests (at least 1) to `run` at a time and records
    /// each batch's size in the histogram `metric`.
    pub fn new<F>(max: usize, metric: &'static str, run: F) -> Self
    where
        F: Fn(Vec<I>) -> BatchFuture<O> + Send + Sync + 'static,
    {
        Self {
            queue: Arc::new(OnceLock::new()),
            run: Arc::new(run),
            max: max.max(1),
            metric,
            idle: None,
            batches: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Runs `hook` whenever the batcher has been idle for `after` since its last batch (and
    /// once more when the batcher ends): where a batch function keeps a resource between
    /// batches, such as a connection, this gives it back while nobody needs it, so that
    /// whoever closes the pool is not kept waiting.
    #[must_use]
    pub fn on_idle<H>(mut self, after: Duration, hook: H) -> Self
    where
        H: Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static,
    {
        self.idle = Some((after, Arc::new(hook)));
        self
    }

    /// Queues `input` for the next batch and waits for its output; `None` when the batch did
    /// not answer it (see [`Batcher`]). Dropping the returned future withdraws the request.
    pub async fn submit(&self, input: I) -> Option<O> {
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            tokio::spawn(run_batches(
                receiver,
                Arc::clone(&self.run),
                self.max,
                self.metric,
                self.idle.clone(),
                Arc::clone(&self.batches),
            ));
            sender
        });
        let (reply, answer) = oneshot::channel();
        queue.send(Job { input, reply }).await.ok()?;
        answer.await.ok()
    }

    /// Batches started so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

/// The batcher's task: waits for a request, takes every other one already waiting (up to
/// `max`) whose caller still waits, runs them as one batch, answers, and does it again. A batch
/// whose callers have all stopped waiting is dropped unfinished. Ends when every [`Batcher`]
/// clone is gone.
async fn run_batches<I, O>(
    mut queue: mpsc::Receiver<Job<I, O>>,
    run: Arc<BatchFn<I, O>>,
    max: usize,
    metric: &'static str,
    idle: Option<IdleHook>,
    batches: Arc<AtomicU64>,
) {
    while let Some(first) = next_job(&mut queue, idle.as_ref()).await {
        let mut jobs = vec![first];
        while jobs.len() < max {
            match queue.try_recv() {
                Ok(next) => jobs.push(next),
                Err(_) => break,
            }
        }
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        batches.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!(metric).record(jobs.len() as f64);
        let (inputs, mut replies): (Vec<I>, Vec<oneshot::Sender<O>>) =
            jobs.into_iter().map(|j| (j.input, j.reply)).unzip();
        let outputs = tokio::select! {
            outputs = run(inputs) => outputs,
            _ = futures::future::join_all(replies.iter_mut().map(oneshot::Sender::closed)) => {
                metrics::counter!("batches_abandoned_total", "batch" => metric).increment(1);
                continue;
            }
        };
        // A missing output drops its reply, which its caller sees as `None`.
        for (reply, output) in replies.into_iter().zip(outputs) {
            let _ = reply.send(output);
        }
    }
    if let Some((_, hook)) = idle {
        hook().await;
    }
}

/// The next request; runs the idle hook first if none comes within its time.
async fn next_job<I, O>(
    queue: &mut mpsc::Receiver<Job<I, O>>,
    idle: Option<&IdleHook>,
) -> Option<Job<I, O>> {
    let Some((after, hook)) = idle else {
        return queue.recv().await;
    };
    if let Ok(next) = tokio::time::timeout(*after, queue.recv()).await {
        return next;
    }
    hook().await;
    queue.recv().await
}

/// [`HeldConnection::release`] as a batcher's idle hook ([`Batcher::on_idle`]),
/// with the idle time it is meant for: long against the gaps between batches under load, short
/// against a pool's close.
pub fn idle_hook(
    held: &HeldConnection,
) -> (
    Duration,
    impl Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static,
) {
    let held = held.clone();
    let hook = move || {
        let held = held.clone();
        Box::pin(async move { held.release().await }) as Pin<Box<dyn Future<Output = ()> + Send>>
    };
    (HELD_IDLE, hook)
}

/// How long a batcher, the lone creates or a projection runner keep their [`HeldConnection`]
/// without a statement to run.
pub const HELD_IDLE: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    fn doubling(max: usize) -> Batcher<u32, u32> {
        Batcher::new(max, "test_batch_size", |inputs: Vec<u32>| {
            Box::pin(async move {
                tokio::task::yield_now().await;
                inputs.into_iter().map(|i| i * 2).collect()
            }) as BatchFuture<u32>
        })
    }

    #[tokio::test]
    async fn a_lone_request_is_answered_without_waiting_for_others() {
        let batcher = doubling(8);
        assert_eq!(batcher.submit(21).await, Some(42));
        assert_eq!(batcher.batches(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_share_batches_and_each_gets_its_own_answer() {
        let batcher = doubling(16);
        let answers = futures::future::join_all((0..200u32).map(|i| batcher.submit(i))).await;
        for (i, answer) in (0..200u32).zip(answers) {
            assert_eq!(answer, Some(i * 2));
        }
        let batches = batcher.batches();
        assert!(
            (13..100).contains(&batches),
            "200 concurrent requests at most 16 per batch took {batches} batches"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_hook_runs_once_the_batcher_has_nothing_to_do() {
        let idled = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&idled);
        let batcher = doubling(8).on_idle(Duration::from_millis(50), move || {
            count.fetch_add(1, Ordering::Relaxed);
            Box::pin(async {})
        });
        assert_eq!(batcher.submit(1).await, Some(2));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(batcher.submit(2).await, Some(4));
        assert_eq!(
            idled.load(Ordering::Relaxed),
            0,
            "busy within the idle time"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(idled.load(Ordering::Relaxed), 1, "idle for longer");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(idled.load(Ordering::Relaxed), 1, "once per idle spell");
        assert_eq!(batcher.submit(3).await, Some(6));
        drop(batcher);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            idled.load(Ordering::Relaxed),
            2,
            "and when the batcher ends"
        );
    }

    /// The inputs of every batch started, in order.
    type Seen = Arc<std::sync::Mutex<Vec<Vec<u32>>>>;

    /// A batcher whose batches take `takes` each, the first one forever, and record what
    /// they were given.
    fn slow(takes: Duration) -> (Batcher<u32, u32>, Seen) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let batcher = Batcher::new(8, "test_batch_size", move |inputs: Vec<u32>| {
            let first = {
                let mut seen = record.lock().unwrap();
                seen.push(inputs.clone());
                seen.len() == 1
            };
            Box::pin(async move {
                if first {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(takes).await;
                inputs
            }) as BatchFuture<u32>
        });
        (batcher, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_batch_is_dropped_once_its_callers_stop_waiting() {
        let (batcher, seen) = slow(Duration::from_millis(10));
        let gave_up = tokio::time::timeout(Duration::from_secs(1), batcher.submit(1)).await;
        assert!(gave_up.is_err(), "the first batch never finishes");
        let answered = tokio::time::timeout(Duration::from_secs(1), batcher.submit(2)).await;
        assert_eq!(answered, Ok(Some(2)), "the next batch was not held up");
        assert_eq!(*seen.lock().unwrap(), [vec![1], vec![2]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_withdrawn_while_queued_is_left_out_of_its_batch() {
        let (batcher, seen) = slow(Duration::from_millis(10));
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { tokio::time::timeout(Duration::from_secs(2), batcher.submit(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Queued behind the stuck batch: one gives up before it ends, one waits longer.
        let (withdrawn, waited) = futures::future::join(
            tokio::time::timeout(Duration::from_secs(1), batcher.submit(2)),
            tokio::time::timeout(Duration::from_secs(5), batcher.submit(3)),
        )
        .await;
        assert!(first.await.unwrap().is_err());
        assert!(withdrawn.is_err());
        assert_eq!(waited, Ok(Some(3)));
        assert_eq!(*seen.lock().unwrap(), [vec![1], vec![3]]);
    }

    #[tokio::test]
    async fn an_output_the_batch_does_not_return_is_none() {
        let batcher: Batcher<u32, u32> = Batcher::new(8, "test_batch_size", |inputs| {
            Box::pin(async move { inputs.into_iter().filter(|i| *i < 3).collect() })
        });
        let answers = futures::future::join_all((0..6u32).map(|i| batcher.submit(i))).await;
        // The batch answers in order, so a short answer leaves the last callers without one.
        assert_eq!(answers[..3], [Some(0), Some(1), Some(2)]);
        assert!(answers[3..].iter().all(Option::is_none));
    }
}
