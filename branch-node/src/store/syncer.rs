//! The writer's second stage: a batch's fsync off the writer thread. The writer commits
//! a batch (its pages written to the WAL, not yet synced) and goes on to execute the
//! next one while this thread makes the WAL durable with one `fdatasync` for every
//! batch committed meanwhile, and only then answers their callers, in commit order.
//! A [`Watermark`] says how far commits are durable, so reads beside the writer never
//! show a batch that a crash of the machine could still take back.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wire::limits::WRITER_SYNC_QUEUE_BATCHES;

use super::StoreError;
use super::ops::WriteOp;
use super::writer::{BatchError, BatchHook, Journal};

/// How long a read waits for the batches it may have seen to become durable before it
/// is refused: far above one fsync, so only a stuck disk or a stopped writer reaches it.
const READ_WAIT_MAX: Duration = Duration::from_secs(30);

/// How far the store's batches are durable. Batches are numbered in commit order;
/// `begun` is the newest whose commit has begun, `durable` the newest on disk.
#[derive(Debug)]
pub struct Watermark {
    begun: AtomicU64,
    durable: watch::Sender<u64>,
}

impl Default for Watermark {
    fn default() -> Watermark {
        Watermark {
            begun: AtomicU64::new(0),
            durable: watch::Sender::new(0),
        }
    }
}

impl Watermark {
    /// Numbers the batch whose commit begins now. Called before the commit, so a
    /// reader that sees the batch's rows also sees its number.
    pub(super) fn begin(&self) -> u64 {
        self.begun.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The newest batch whose commit has begun: read after a read, every batch that
    /// read may have seen.
    pub fn begun(&self) -> u64 {
        self.begun.load(Ordering::SeqCst)
    }

    /// The newest batch known durable (with every one before it).
    pub fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Every batch up to `number` is durable.
    pub(super) fn made_durable(&self, number: u64) {
        self.durable.send_modify(|d| *d = (*d).max(number));
    }

    /// Waits until batch `seen` (from [`Watermark::begun`] after a read) is durable, so
    /// the read's answer shows nothing a crash could undo.
    pub async fn wait_durable(&self, seen: u64) -> Result<(), StoreError> {
        self.wait_durable_within(seen, READ_WAIT_MAX).await
    }

    async fn wait_durable_within(&self, seen: u64, most: Duration) -> Result<(), StoreError> {
        let mut durable = self.durable.subscribe();
        match tokio::time::timeout(most, durable.wait_for(|d| *d >= seen)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StoreError::WriterGone),
        }
    }
}

/// The WAL file, opened on its own to be synced from this thread.
struct Wal {
    path: PathBuf,
    file: Option<File>,
}

impl Wal {
    /// Makes everything written to the WAL so far durable. The file is opened again if
    /// it is no longer the one at `path` (SQLite made a new one), so the sync never
    /// lands on a file nobody writes.
    fn sync(&mut self) -> std::io::Result<()> {
        let now = std::fs::metadata(&self.path)?;
        let same = match &self.file {
            Some(f) => f
                .metadata()
                .is_ok_and(|m| (m.dev(), m.ino()) == (now.dev(), now.ino())),
            None => false,
        };
        if !same {
            self.file = Some(File::open(&self.path)?);
        }
        match &self.file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }
}

/// Gives a batch's callers their answers: each its result, or the batch's error.
pub(super) type Answer = Box<dyn FnOnce(Option<&BatchError>) + Send>;

/// A batch the writer has run, on its way to its callers.
pub(super) struct Committed {
    /// Its number from [`Watermark::begin`] (0 when its commit never began).
    pub number: u64,
    /// Its answers: given once it is durable (or failed).
    pub answer: Answer,
    /// Its commit's error: nothing to sync, the callers get the error.
    pub failed: Option<BatchError>,
    /// Its writes, for a journal.
    pub ops: Vec<WriteOp>,
}

/// What the writer hands this thread, in order.
pub(super) enum Tail {
    Batch(Committed),
    /// Runs after each batch from now on, once its callers were answered.
    Hook(BatchHook),
    /// Answered once everything handed over before it was answered.
    Flush(SyncSender<()>),
}

/// The second stage's thread; dropping the sender ends it after the queued work.
pub(super) struct Syncer {
    pub tx: SyncSender<Tail>,
    /// Whether this stage syncs the WAL (the writer's commits then do not).
    pub fsync: bool,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the stage for the store at `db`: with `fsync`, every batch is synced
    /// before its answers; without (benchmark durability), answered at once.
    pub fn start(
        db: Option<PathBuf>,
        fsync: bool,
        mark: Arc<Watermark>,
        journal: Option<Journal>,
    ) -> Syncer {
        // Bounded: memory stays bounded and the disk sets the pace.
        let (tx, rx) = mpsc::sync_channel(WRITER_SYNC_QUEUE_BATCHES);
        let wal = db.filter(|_| fsync).map(|db| {
            let mut path = db.into_os_string();
            path.push("-wal");
            Wal {
                path: path.into(),
                file: None,
            }
        });
        let stage = Stage {
            wal,
            mark,
            journal,
            hooks: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || stage.run(rx))
            .ok();
        Syncer { tx, fsync, thread }
    }

    /// Waits until every batch handed over so far was answered.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Tail::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Answers what is queued and ends the thread.
    pub fn stop(self) {
        let Syncer { tx, thread, .. } = self;
        drop(tx);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

struct Stage {
    wal: Option<Wal>,
    mark: Arc<Watermark>,
    journal: Option<Journal>,
    hooks: Vec<BatchHook>,
}

impl Stage {
    fn run(mut self, rx: Receiver<Tail>) {
        while let Ok(first) = rx.recv() {
            // Every batch already queued shares the one fsync.
            let mut tails = vec![first];
            tails.extend(rx.try_iter());
            self.sync(&tails);
            for tail in tails {
                self.finish(tail);
            }
        }
    }

    /// Makes the committed batches among `tails` durable. A failed fsync leaves their
    /// outcome unknown while other work may already have read their rows: the process
    /// stops here, before any answer, and a restart recovers what the disk holds (an
    /// answer never claims what a crash could undo).
    fn sync(&mut self, tails: &[Tail]) {
        let batches = || {
            tails.iter().filter_map(|t| match t {
                Tail::Batch(b) => Some(b),
                _ => None,
            })
        };
        // A failed batch was rolled back: nothing of it to sync, and nothing to wait for.
        let Some(newest) = batches().map(|b| b.number).max() else {
            return;
        };
        if let (Some(wal), true) = (&mut self.wal, batches().any(|b| b.failed.is_none())) {
            let started = Instant::now();
            if let Err(e) = wal.sync() {
                tracing::error!(
                    error = %e,
                    wal = %wal.path.display(),
                    "the store's WAL could not be made durable: stopping before any answer"
                );
                std::process::abort();
            }
            crate::metrics::get()
                .writer_sync_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        self.mark.made_durable(newest);
    }

    fn finish(&mut self, tail: Tail) {
        match tail {
            Tail::Hook(h) => self.hooks.push(h),
            Tail::Flush(done) => {
                let _ = done.send(());
            }
            Tail::Batch(b) => {
                if let (None, Some(journal)) = (&b.failed, &self.journal) {
                    let _ = journal.send(b.ops);
                }
                crate::metrics::get().write_ended(b.failed.as_ref().map(ToString::to_string));
                (b.answer)(b.failed.as_ref());
                for hook in &self.hooks {
                    hook();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_waits_for_the_batches_it_may_have_seen() {
        let mark = Arc::new(Watermark::default());
        mark.wait_durable(mark.begun())
            .await
            .expect("nothing begun: no wait");
        let n = mark.begin();
        let later = Arc::clone(&mark);
        let syncer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            later.made_durable(n);
        });
        let started = Instant::now();
        mark.wait_durable(mark.begun())
            .await
            .expect("durable in time");
        assert!(started.elapsed() >= Duration::from_millis(90));
        assert_eq!(mark.durable(), n);
        syncer.join().expect("joins");
    }

    #[tokio::test]
    async fn a_read_behind_a_stuck_sync_is_refused_not_answered() {
        let mark = Watermark::default();
        let seen = mark.begin();
        let r = mark
            .wait_durable_within(seen, Duration::from_millis(50))
            .await;
        assert!(matches!(r, Err(StoreError::WriterGone)), "{r:?}");
    }
}
