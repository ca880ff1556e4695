//! In-process wake-ups for feed readers, so that a reader in the same process as the writer
//! sees a commit within a round trip instead of at its next poll.
//!
//! This is not Postgres `LISTEN/NOTIFY` (a per-event NOTIFY measured about 30 % slower on the
//! write path, and it serialises commits on a global lock): the writer bumps a counter in memory
//! after each append, and readers keep their polls for commits made by other replicas.
//!
//! A commit is not always readable at once: the feed's fence holds it back while an older
//! transaction (of any database in the cluster) is still open. So after a wake-up or a batch,
//! an idle reader retries after [`QUICK_RETRY`], doubling the pause each time until it reaches
//! its idle poll: an event held back for `t` is read within about `2t`, and a quiet reader
//! makes only a handful of extra polls.
//!
//! Under load a wake-up per commit would mean a round per commit, each several round trips
//! and a commit of its own (a checkpoint), competing with the writers for the same cores. So
//! after a round that did work, a reader that has already been woken again waits a short
//! gather pause ([`DEFAULT_GATHER`] unless configured)
//! before its next round, and the commits landing meanwhile are read together; one that has
//! not been woken goes to its idle wait rather than straight into a round that would find
//! nothing. A reader woken after a quiet spell still starts at once, so a lone commit is read
//! with no added delay; only a commit that lands while the reader is busy waits, at most the
//! gather pause plus the round in progress.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// The first pause after a wake-up or a batch; each idle round after it doubles the pause.
pub const QUICK_RETRY: Duration = Duration::from_millis(2);

/// How long, by default, a reader that did work and was woken again meanwhile waits before its
/// next round, so that the commits landing in that time share one round: a bound on the delay
/// it adds under load, the price of a round per few commits instead of one per commit. A
/// backlog (a full batch) is read straight on.
pub const DEFAULT_GATHER: Duration = Duration::from_millis(5);

/// The writer's side: bumped after every append. Cheap to clone; every clone bumps the same
/// counter.
#[derive(Debug, Clone)]
pub struct CommitSignal {
    tx: Arc<watch::Sender<u64>>,
}

impl Default for CommitSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl CommitSignal {
    /// A signal with no readers yet.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Tells every reader that events were committed. Never blocks, never fails.
    pub fn committed(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A reader's handle; it sees only commits after this call.
    pub fn subscribe(&self) -> CommitWatch {
        CommitWatch {
            rx: self.tx.subscribe(),
            next_quick: None,
        }
    }
}

/// A reader's side of a [`CommitSignal`], which also paces the reader between rounds.
#[derive(Debug)]
pub struct CommitWatch {
    rx: watch::Receiver<u64>,
    /// The next pause while recent activity may still be held behind the fence.
    next_quick: Option<Duration>,
}

impl CommitWatch {
    /// Marks every commit so far as seen. Call it just before reading the feed, so that a
    /// commit landing during the read wakes the next wait at once.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Records that the last round did work: the next idle rounds retry quickly, since more
    /// may be held behind the fence.
    fn worked(&mut self) {
        self.next_quick = Some(QUICK_RETRY);
    }

    /// Paces the next round after one that did work (see the module doc): straight on after a
    /// full batch, after `gather` when a commit landed during the round, else the idle wait
    /// (woken at once by the next commit, or a quick retry for events held behind the fence).
    pub async fn after_work(&mut self, filled_batch: bool, gather: Duration, idle_poll: Duration) {
        self.worked();
        if filled_batch {
            return;
        }
        if self.rx.has_changed().unwrap_or(false) {
            tokio::time::sleep(gather).await;
        } else {
            self.idle_wait(idle_poll).await;
        }
    }

    /// Waits before the next round after an idle one: until a commit not yet seen, or a quick
    /// retry when recent activity may be held behind the fence, or else `idle_poll`.
    pub async fn idle_wait(&mut self, idle_poll: Duration) {
        let wait = self.next_quick.map_or(idle_poll, |q| q.min(idle_poll));
        self.next_quick = self
            .next_quick
            .map(|q| q * 2)
            .filter(|next| *next < idle_poll);
        match tokio::time::timeout(wait, self.rx.changed()).await {
            Ok(Ok(())) => self.next_quick = Some(QUICK_RETRY),
            // The writer is gone (shutdown, or a store dropped in a test): plain polling.
            Ok(Err(_)) => tokio::time::sleep(wait).await,
            Err(_elapsed) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_commit_wakes_an_idle_reader_before_its_poll() {
        let signal = CommitSignal::new();
        let mut watch = signal.subscribe();
        watch.mark_seen();
        let started = tokio::time::Instant::now();
        let waiter = tokio::spawn(async move {
            watch.idle_wait(Duration::from_secs(10)).await;
            started.elapsed()
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        signal.committed();
        let waited = waiter.await.unwrap();
        assert!(waited < Duration::from_secs(1), "woke after {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_during_the_read_is_not_missed() {
        let signal = CommitSignal::new();
        let mut watch = signal.subscribe();
        watch.mark_seen();
        signal.committed(); // lands while the reader is busy reading
        let started = tokio::time::Instant::now();
        watch.idle_wait(Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_is_followed_by_the_next_round_at_once() {
        let signal = CommitSignal::new();
        let mut watch = signal.subscribe();
        watch.mark_seen();
        signal.committed();
        let started = tokio::time::Instant::now();
        watch
            .after_work(true, DEFAULT_GATHER, Duration::from_secs(10))
            .await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn commits_during_a_round_are_gathered_for_the_next() {
        let signal = CommitSignal::new();
        let mut watch = signal.subscribe();
        watch.mark_seen();
        signal.committed(); // lands while the round is applied
        let started = tokio::time::Instant::now();
        watch
            .after_work(false, DEFAULT_GATHER, Duration::from_secs(10))
            .await;
        assert_eq!(started.elapsed(), DEFAULT_GATHER);
    }

    #[tokio::test(start_paused = true)]
    async fn after_work_with_no_new_commit_the_next_commit_wakes_the_reader_at_once() {
        let signal = CommitSignal::new();
        let mut watch = signal.subscribe();
        watch.mark_seen();
        let started = tokio::time::Instant::now();
        // No commit during the round: the reader waits for one instead of reading again, and
        // wakes at its quick retry or at the next commit, whichever is first.
        watch
            .after_work(false, DEFAULT_GATHER, Duration::from_secs(10))
            .await;
        assert_eq!(started.elapsed(), QUICK_RETRY);
        watch.mark_seen();
        let waiter = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            watch
                .after_work(false, DEFAULT_GATHER, Duration::from_secs(10))
                .await;
            started.elapsed()
        });
        tokio::task::yield_now().await;
        signal.committed();
        assert_eq!(waiter.await.unwrap(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_double_after_work_until_they_reach_the_poll() {
        let signal = CommitSignal::new();
        let mut watch = signal.subscribe();
        watch.worked();
        let mut pauses = vec![];
        for _ in 0..10 {
            let started = tokio::time::Instant::now();
            watch.idle_wait(Duration::from_millis(100)).await;
            pauses.push(started.elapsed().as_millis());
        }
        assert_eq!(pauses, [2, 4, 8, 16, 32, 64, 100, 100, 100, 100]);
    }
}
