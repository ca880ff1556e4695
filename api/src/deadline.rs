//! One deadline per request for all of its database work.
//!
//! During a database outage every pool acquire waits out the pool's acquire timeout, and a
//! request makes several database calls in a row (its nonce, a load, an append, a retry), some
//! of them behind other requests in a batch queue; each wait alone is bounded, their sum is
//! not. So [`request_deadline`] gives each request one deadline, `REQUEST_DB_DEADLINE_MS` after
//! it arrives, and [`within_deadline`] bounds the database work at each entry point (the nonce
//! check, the command store, the read queries) by it. Past the deadline the work is dropped
//! and the request answers 503 with `Retry-After`, whichever call it was in.
//!
//! Time spent waiting on a peer service ([`paused`], around every outgoing call) does not
//! count: the deadline bounds the database work, and peer calls have timeouts of their own.
//!
//! Work outside a request (projector, relay, jobs, inbound consumers) has no deadline: it runs
//! unbounded here and keeps its own backoff.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Deadline;
}

/// The current request's deadline, shared by everything the request runs.
#[derive(Debug, Clone)]
struct Deadline(Arc<Mutex<Instant>>);

impl Deadline {
    fn at(&self) -> Instant {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves the deadline to `later`, never earlier than it already is.
    fn extend_to(&self, later: Instant) {
        let mut at = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *at = (*at).max(later);
    }
}

/// The request's database deadline passed before its database work finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request's database deadline passed")]
pub struct DeadlinePassed;

/// Runs `work` (a request) with a database deadline `budget` from now.
pub async fn scope<F: Future>(budget: Duration, work: F) -> F::Output {
    let deadline = Deadline(Arc::new(Mutex::new(Instant::now() + budget)));
    DEADLINE.scope(deadline, work).await
}

/// Middleware that gives each request its database deadline; its state is the budget.
pub async fn request_deadline(
    State(budget): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    scope(budget, next.run(request)).await
}

/// When the current request's database work must be done; `None` outside a request.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(Deadline::at).ok()
}

/// Runs `work` until the current request's deadline; past it, `work` is dropped (its pool
/// wait, its place in a batch queue or its statement with it) and the answer is
/// [`DeadlinePassed`]. Outside a request, `work` runs unbounded. `call` names the work in the
/// log line and in `request_db_deadline_exceeded_total{call}`, which say where requests ran
/// out of time.
///
/// # Errors
/// `work`'s own error, or [`DeadlinePassed`] converted into it.
pub async fn within_deadline<T, E>(
    call: &'static str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    E: From<DeadlinePassed>,
{
    let Some(deadline) = current() else {
        return work.await;
    };
    if let Ok(done) = tokio::time::timeout_at(deadline, work).await {
        return done;
    }
    metrics::counter!("request_db_deadline_exceeded_total", "call" => call).increment(1);
    tracing::warn!(
        call,
        "the request's database deadline passed; answering 503"
    );
    Err(DeadlinePassed.into())
}

/// Runs `work` (a call to a peer service) with the current request's deadline held back for as
/// long as it takes, so that waiting on a peer does not use up the database's time. Concurrent
/// calls hold it back by the longest of them, not by their sum.
pub async fn paused<F: Future>(work: F) -> F::Output {
    let Ok(deadline) = DEADLINE.try_with(Clone::clone) else {
        return work.await;
    };
    let (before, started) = (deadline.at(), Instant::now());
    let output = work.await;
    deadline.extend_to(before + started.elapsed());
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_secs(5);

    async fn db_call(takes: Duration) -> Result<u8, DeadlinePassed> {
        tokio::time::sleep(takes).await;
        Ok(1)
    }

    #[tokio::test(start_paused = true)]
    async fn one_deadline_spans_every_call_of_a_request() {
        let started = Instant::now();
        let results = scope(BUDGET, async {
            let first = within_deadline("test", db_call(Duration::from_secs(3))).await;
            let second = within_deadline("test", db_call(Duration::from_secs(3))).await;
            let third = within_deadline("test", db_call(Duration::from_millis(1))).await;
            (first, second, third)
        })
        .await;
        assert_eq!(
            results,
            (Ok(1), Err(DeadlinePassed), Err(DeadlinePassed)),
            "each call alone fits; together they do not"
        );
        assert_eq!(
            started.elapsed(),
            BUDGET,
            "answered at the deadline, not later"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn outside_a_request_work_is_not_bounded() {
        assert_eq!(current(), None);
        assert_eq!(within_deadline("test", db_call(BUDGET * 10)).await, Ok(1));
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_on_peers_does_not_count() {
        let result = scope(BUDGET, async {
            within_deadline("test", db_call(Duration::from_secs(3))).await?;
            // Two peer calls at once hold the deadline back by the longer one only.
            let peer = |secs| paused(tokio::time::sleep(Duration::from_secs(secs)));
            futures::future::join(peer(4), peer(6)).await;
            within_deadline("test", db_call(Duration::from_secs(1))).await?;
            within_deadline("test", db_call(Duration::from_secs(2))).await
        })
        .await;
        assert_eq!(result, Err(DeadlinePassed), "3 + 1 + 2 s of database work");

        let started = Instant::now();
        let fits = scope(BUDGET, async {
            paused(tokio::time::sleep(Duration::from_secs(20))).await;
            within_deadline("test", db_call(Duration::from_secs(4))).await
        })
        .await;
        assert_eq!(fits, Ok(1));
        assert_eq!(started.elapsed(), Duration::from_secs(24));
    }
}
