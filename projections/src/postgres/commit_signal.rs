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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// The first pause after a wake-up or a batch; each idle round after it doubles the pause.
pub const QUICK_RETRY: Duration = Duration::from_millis(2);

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
    pub fn worked(&mut self) {
        self.next_quick = Some(QUICK_RETRY);
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
