//! Tagged, pipelined frames over one long-lived libp2p stream: many requests in flight
//! on one stream, answered in any order, instead of a new stream (Yamux open,
//! multistream-select, a timer) per request.
//!
//! A frame is a 4-byte big-endian length `n`, then `n` bytes: an 8-byte big-endian tag
//! chosen by the requester and a `wire`-encoded body of at most `MESSAGE_BYTES_MAX`
//! bytes. An answer carries its request's tag; the answering side's first frame is a
//! hello (`HELLO_TAG`, empty) and nothing is sent before it. [`Pipe`] is the requesting end (used by
//! `teller-cli`, by a branch for its links, by the scenarios); [`serve`] is the
//! answering end. A frame too long, or one the answering side cannot decode, ends the
//! stream: a peer that breaks the framing is not worth guessing about.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::Stream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use wire::limits::MESSAGE_BYTES_MAX;

/// Bytes of a frame before its body: the length and the tag.
const TAG_BYTES: usize = 8;

/// The tag of the frame the answering side sends first, with an empty body, once it is
/// serving the stream. A requester sends nothing before it: libp2p-stream drops an
/// inbound stream when its accept queue is full (two arriving at once), and a request
/// written on such a stream would be lost with no way to tell that it never arrived.
/// Requesters number their own tags from 0, so they never reach this one.
const HELLO_TAG: u64 = u64::MAX;

/// Most times a requester opens a stream again when it ended before its hello.
pub const OPEN_ATTEMPTS_MAX: u32 = 6;
/// The first wait before opening again (milliseconds); it doubles each time, with a
/// random part, so streams dropped together by a busy node do not arrive together again.
const REOPEN_WAIT_MS: u64 = 5;

/// Most frames written in one flush.
const FRAMES_PER_FLUSH_MAX: usize = 256;

/// Why a request got no answer: the reason, and whether it may have arrived.
pub type Failure = (String, bool);

/// Reads one frame; `None` at a clean end of the stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(io: &mut R) -> io::Result<Option<(u64, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match io.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if !(TAG_BYTES..=TAG_BYTES + MESSAGE_BYTES_MAX).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes: a frame holds a tag and at most {MESSAGE_BYTES_MAX}"),
        ));
    }
    // Grown as the bytes arrive, not allocated from the length: a peer that sends only
    // lengths must not make the node hold a megabyte per stream.
    let mut frame = Vec::new();
    let want = u64::try_from(len).unwrap_or(u64::MAX);
    (&mut *io).take(want).read_to_end(&mut frame).await?;
    if frame.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let body = frame.split_off(TAG_BYTES);
    let tag = u64::from_be_bytes(frame.try_into().unwrap_or([0; TAG_BYTES]));
    Ok(Some((tag, body)))
}

/// Appends one frame to `buf`. The length is not checked here: the reader checks it.
pub fn put_frame(buf: &mut Vec<u8>, tag: u64, body: &[u8]) {
    let len = u32::try_from(TAG_BYTES + body.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&tag.to_be_bytes());
    buf.extend_from_slice(body);
}

/// Something written as one frame.
trait Frame {
    fn tag(&self) -> u64;
    fn body(&self) -> &[u8];
}

impl Frame for (u64, Vec<u8>) {
    fn tag(&self) -> u64 {
        self.0
    }
    fn body(&self) -> &[u8] {
        &self.1
    }
}

/// Writes every frame queued on `rx` (several per flush when they wait together) until
/// `rx` ends or a write fails. The frames are dropped only once flushed (an answer's
/// place and bytes are held until then).
async fn write_frames<W: AsyncWrite + Unpin, F: Frame>(
    io: &mut W,
    rx: &mut mpsc::UnboundedReceiver<F>,
    first: F,
) -> io::Result<()> {
    let mut buf = Vec::new();
    put_frame(&mut buf, first.tag(), first.body());
    let mut written = vec![first];
    while written.len() < FRAMES_PER_FLUSH_MAX {
        match rx.try_recv() {
            Ok(next) => {
                put_frame(&mut buf, next.tag(), next.body());
                written.push(next);
            }
            Err(_) => break,
        }
    }
    io.write_all(&buf).await?;
    io.flush().await
}

type Waiting = HashMap<u64, oneshot::Sender<Result<Vec<u8>, Failure>>>;

/// What the requesting end's tasks share: the requests waiting for answers, `None`
/// once the stream has ended (nothing more can be sent on it).
#[derive(Default)]
struct Calls {
    waiting: Mutex<Option<Waiting>>,
    next_tag: AtomicU64,
}

impl Calls {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Waiting>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the pipe: every request still waiting is told it may have arrived.
    fn end(&self, reason: &str) {
        let Some(waiting) = self.lock().take() else {
            return;
        };
        for (_, reply) in waiting {
            let _ = reply.send(Err((reason.to_string(), true)));
        }
    }

    /// Tells the request `tag` it was not sent.
    fn fail(&self, tag: u64, reason: &str) {
        let reply = self.lock().as_mut().and_then(|w| w.remove(&tag));
        if let Some(reply) = reply {
            let _ = reply.send(Err((reason.to_string(), false)));
        }
    }

    fn is_idle(&self) -> bool {
        self.lock().as_ref().is_none_or(HashMap::is_empty)
    }
}

/// The requesting end of one stream. Cheap to clone; the stream closes when it has been
/// idle for the `idle` given to [`Pipe::open`], or fails.
#[derive(Clone)]
pub struct Pipe {
    tx: mpsc::UnboundedSender<(u64, Vec<u8>)>,
    calls: Arc<Calls>,
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipe")
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

/// Why a stream could not be opened or got no hello: nothing was sent on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    #[error("the stream did not open with a hello")]
    NoHello,
    #[error("the stream was closed before its hello")]
    ClosedBeforeHello,
    #[error("the stream failed before its hello: {0}")]
    Broken(Arc<io::Error>),
    #[error("no hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("cannot open a stream: {0}")]
    Refused(Arc<libp2p_stream::OpenStreamError>),
    #[error("no stream within {0:?}")]
    StreamTimeout(Duration),
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// The task that owns the swarm has stopped (the client or the node is closing).
    #[error("the network task has stopped")]
    Stopped,
    /// The fault switch blocks the link (tests and drills).
    #[error("the link is blocked by the fault switch")]
    Blocked,
    /// No address of the branch (or of its leader) to try.
    #[error("no candidate to connect to")]
    NoCandidate,
}

impl Pipe {
    /// Waits (at most `timeout`) for the answering side's hello on `stream`, then starts
    /// the tasks that write requests to it and read answers from it. An error means
    /// nothing was sent.
    pub async fn open(
        stream: Stream,
        idle: Duration,
        timeout: Duration,
    ) -> Result<Pipe, OpenError> {
        let (mut read, write) = stream.split();
        match tokio::time::timeout(timeout, read_frame(&mut read)).await {
            Ok(Ok(Some((HELLO_TAG, body)))) if body.is_empty() => {}
            Ok(Ok(Some(_))) => return Err(OpenError::NoHello),
            Ok(Ok(None)) => return Err(OpenError::ClosedBeforeHello),
            Ok(Err(e)) => return Err(OpenError::Broken(Arc::new(e))),
            Err(_) => return Err(OpenError::HelloTimeout(timeout)),
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let calls = Arc::new(Calls {
            waiting: Mutex::new(Some(HashMap::new())),
            next_tag: AtomicU64::new(0),
        });
        let reader = tokio::spawn(read_answers(read, Arc::clone(&calls)));
        tokio::spawn(write_requests(write, rx, Arc::clone(&calls), reader, idle));
        Ok(Pipe { tx, calls })
    }

    /// Whether requests can still be sent on this stream.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed() && self.calls.lock().is_some()
    }

    /// Sends `body` and waits at most `timeout` for its answer. An error says whether the
    /// request may have arrived.
    pub async fn call(&self, body: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, Failure> {
        let tag = self.calls.next_tag.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        match self.calls.lock().as_mut() {
            Some(waiting) => waiting.insert(tag, reply),
            None => return Err(("the stream has closed".into(), false)),
        };
        if self.tx.send((tag, body)).is_err() {
            self.forget(tag);
            return Err(("the stream has closed".into(), false));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(("the stream ended".into(), true)),
            Err(_) => {
                self.forget(tag);
                Err((format!("no answer within {timeout:?}"), true))
            }
        }
    }

    fn forget(&self, tag: u64) {
        if let Some(waiting) = self.calls.lock().as_mut() {
            waiting.remove(&tag);
        }
    }
}

async fn read_answers(mut io: ReadHalf<Stream>, calls: Arc<Calls>) {
    let reason = loop {
        match read_frame(&mut io).await {
            Ok(Some((tag, body))) => {
                let reply = calls.lock().as_mut().and_then(|w| w.remove(&tag));
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(body));
                }
            }
            Ok(None) => break "the stream ended".to_string(),
            Err(e) => break format!("the stream failed: {e}"),
        }
    };
    calls.end(&reason);
}

async fn write_requests(
    mut io: WriteHalf<Stream>,
    mut rx: mpsc::UnboundedReceiver<(u64, Vec<u8>)>,
    calls: Arc<Calls>,
    mut reader: tokio::task::JoinHandle<()>,
    idle: Duration,
) {
    loop {
        let next = tokio::select! {
            next = rx.recv() => next,
            _ = &mut reader => break,
            () = tokio::time::sleep(idle) => if calls.is_idle() { break } else { continue },
        };
        let Some(first) = next else { break };
        if let Err(e) = write_frames(&mut io, &mut rx, first).await {
            tracing::debug!(%e, "pipe write failed");
            break;
        }
    }
    rx.close();
    // Requests still queued were never written: nothing of them was sent.
    while let Ok((tag, _)) = rx.try_recv() {
        calls.fail(tag, "the stream closed before it was sent");
    }
    calls.end("the stream closed");
    reader.abort();
    let _ = io.close().await;
}

/// One peer's pipe on one protocol: opened on first use, and again on the next use
/// after it has closed (idle, or the connection went).
#[derive(Debug, Default)]
pub struct Slot(tokio::sync::Mutex<Option<Pipe>>);

impl Slot {
    /// Forgets the pipe: the next use opens a new one (to another replica, say). Calls
    /// in flight on the old one still get their answers.
    pub async fn clear(&self) {
        *self.0.lock().await = None;
    }

    /// The open pipe, or a new one on a stream `open` gives (opened again, up to
    /// `OPEN_ATTEMPTS_MAX` times, after a growing random wait, if one ends before its
    /// hello). An error: nothing sent.
    pub async fn pipe<F, Fut>(
        &self,
        idle: Duration,
        timeout: Duration,
        open: F,
    ) -> Result<Pipe, OpenError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Stream, OpenError>>,
    {
        let mut slot = self.0.lock().await;
        if let Some(pipe) = slot.as_ref().filter(|p| p.is_open()) {
            return Ok(pipe.clone());
        }
        let mut last = OpenError::NoCandidate;
        for attempt in 0..OPEN_ATTEMPTS_MAX {
            if attempt > 0 {
                let wait = REOPEN_WAIT_MS << attempt;
                let jitter = rand::random::<u64>() % wait;
                tokio::time::sleep(Duration::from_millis(wait + jitter)).await;
            }
            match Pipe::open(open().await?, idle, timeout).await {
                Ok(pipe) => {
                    *slot = Some(pipe.clone());
                    return Ok(pipe);
                }
                Err(e) => {
                    if let Some(o) = OBSERVER.get() {
                        o.stream_reopened();
                    }
                    tracing::debug!(%e, "stream not opened; opening another");
                    last = e;
                }
            }
        }
        Err(last)
    }
}

/// Opens a stream to `peer` on `protocol`, over the connection there is (the caller
/// dials first), within `timeout`.
pub async fn open_stream(
    mut control: libp2p_stream::Control,
    peer: libp2p::PeerId,
    protocol: libp2p::StreamProtocol,
    timeout: Duration,
) -> Result<Stream, OpenError> {
    match tokio::time::timeout(timeout, control.open_stream(peer, protocol)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(OpenError::Refused(Arc::new(e))),
        Err(_) => Err(OpenError::StreamTimeout(timeout)),
    }
}

/// Bytes a node holds for requests it read and has not finished with: a request's own
/// bytes from when it is read until its answer is written (or dropped), and the answer's
/// bytes until then. One is kept per stream, and may be shared by every stream of one
/// peer and by every stream of one kind (teller streams): past any of their limits a
/// stream is not read, which holds its requester back, so peers that send and never
/// read cannot make the node hold more than the limits together.
#[derive(Debug)]
pub struct Held {
    bytes: AtomicUsize,
    max: usize,
    drained: Notify,
}

impl Held {
    /// A count with room for `max` bytes (one request or answer may go past it, alone).
    pub fn new(max: usize) -> Arc<Held> {
        Arc::new(Held {
            bytes: AtomicUsize::new(0),
            max,
            drained: Notify::new(),
        })
    }

    /// The bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
        self.drained.notify_waiters();
    }

    /// Returns once fewer than its limit of bytes are held.
    async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            if self.bytes.load(Ordering::Relaxed) < self.max {
                return;
            }
            drained.await;
        }
    }
}

/// The counts one stream's bytes go to: its own, and those it shares.
#[derive(Clone, Debug)]
struct Counts(Vec<Arc<Held>>);

impl Counts {
    fn add(&self, n: usize) {
        self.0.iter().for_each(|h| h.add(n));
    }

    fn sub(&self, n: usize) {
        self.0.iter().for_each(|h| h.sub(n));
    }

    async fn room(&self) {
        for h in &self.0 {
            h.room().await;
        }
    }
}

/// An answer waiting to be written. Until it is (or the stream ends) it holds its
/// request's in-flight place, and its bytes and its request's stay counted as held.
#[derive(Debug)]
struct Answer {
    tag: u64,
    body: Vec<u8>,
    /// Its bytes and its request's.
    held: usize,
    counts: Counts,
    _place: OwnedSemaphorePermit,
}

impl Frame for Answer {
    fn tag(&self) -> u64 {
        self.tag
    }
    fn body(&self) -> &[u8] {
        &self.body
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.counts.sub(self.held);
    }
}

/// The answering end's handle for one request: answer it with [`Responder::answer`].
/// It holds one of its stream's in-flight places and its request's bytes, and its
/// answer holds both on until the answer is written.
#[derive(Debug)]
pub struct Responder {
    tag: u64,
    tx: mpsc::UnboundedSender<Answer>,
    /// The request's bytes, counted as held until the answer is written; 0 once handed
    /// to the answer.
    request_bytes: usize,
    counts: Counts,
    place: Option<OwnedSemaphorePermit>,
}

impl Responder {
    /// Sends `answer` back on the stream the request came by; a requester that went away
    /// is normal.
    pub fn answer<T: serde::Serialize>(mut self, answer: &T) {
        let Some(place) = self.place.take() else {
            return;
        };
        match wire::encode(answer) {
            Ok(body) => {
                self.counts.add(body.len());
                let held = body.len() + std::mem::take(&mut self.request_bytes);
                let answer = Answer {
                    tag: self.tag,
                    body,
                    held,
                    counts: self.counts.clone(),
                    _place: place,
                };
                if self.tx.send(answer).is_err() {
                    tracing::debug!("answer dropped: the stream has ended");
                }
            }
            Err(e) => tracing::warn!(%e, "answer not sent: it does not encode"),
        }
    }

    /// The size of the request, in bytes as read.
    pub fn request_bytes(&self) -> usize {
        self.request_bytes
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.counts.sub(self.request_bytes);
    }
}

/// How a stream is served: at most `in_flight` requests unanswered or with answers
/// unwritten, at most `held_bytes` of requests and answers held for it (and at most
/// the limits of the counts in `shared`; past any the stream is not read, which holds
/// the requester back), closed after `idle` with nothing sent, or when a write makes
/// no progress for `write_stall`.
#[derive(Clone, Debug)]
pub struct Bounds {
    pub in_flight: usize,
    pub held_bytes: usize,
    pub shared: Vec<Arc<Held>>,
    pub idle: Duration,
    pub write_stall: Duration,
}

/// Serves one stream within `bounds`: hands each request to `on_request` with its
/// [`Responder`], and writes the answers as they come. Ends when the requester closes
/// the stream, breaks the framing, sends nothing for `idle`, does not read its answers
/// for `write_stall`, or `on_request` returns `false` (it could not decode the body).
pub async fn serve(
    stream: Stream,
    bounds: Bounds,
    mut on_request: impl FnMut(Vec<u8>, Responder) -> bool,
) {
    let (mut read, mut write) = stream.split();
    let mut hello = Vec::new();
    put_frame(&mut hello, HELLO_TAG, &[]);
    let said = async {
        write.write_all(&hello).await?;
        write.flush().await
    };
    if !matches!(
        tokio::time::timeout(bounds.write_stall, said).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_answers(write, rx, bounds.write_stall));
    let places = Arc::new(Semaphore::new(bounds.in_flight));
    let mut counts = vec![Held::new(bounds.held_bytes)];
    counts.extend(bounds.shared.iter().cloned());
    let counts = Counts(counts);
    loop {
        let room = async {
            let place = Arc::clone(&places).acquire_owned().await.ok();
            counts.room().await;
            place
        };
        let place = tokio::select! {
            p = room => p,
            () = tx.closed() => None,
        };
        let Some(place) = place else {
            break;
        };
        let frame = tokio::select! {
            f = tokio::time::timeout(bounds.idle, read_frame(&mut read)) => f,
            () = tx.closed() => break,
        };
        let (tag, body) = match frame {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(e)) => {
                tracing::warn!(%e, "stream closed: broken framing");
                refused("framing");
                break;
            }
        };
        counts.add(body.len());
        let responder = Responder {
            tag,
            tx: tx.clone(),
            request_bytes: body.len(),
            counts: counts.clone(),
            place: Some(place),
        };
        if !on_request(body, responder) {
            refused("framing");
            writer.abort();
            return;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Writes the answers queued on `rx` until every sender is gone; gives up (and so
/// ends the stream) when a write makes no progress for `stall`.
async fn write_answers(
    mut write: WriteHalf<Stream>,
    mut rx: mpsc::UnboundedReceiver<Answer>,
    stall: Duration,
) {
    while let Some(first) = rx.recv().await {
        match tokio::time::timeout(stall, write_frames(&mut write, &mut rx, first)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!(
                    "stream closed: its answers were not read for {} s",
                    stall.as_secs()
                );
                refused("unread");
                return;
            }
        }
    }
    let _ = write.close().await;
}

/// What a node counts of its streams. The node installs one ([`observe`]); a client
/// leaves it unset and nothing is counted.
pub trait Observer: Send + Sync {
    /// A stream could not be opened, and another is being opened.
    fn stream_reopened(&self);
    /// An inbound stream was closed by this side, and why (`framing`, `unread`, ...).
    fn stream_refused(&self, why: &'static str);
}

static OBSERVER: std::sync::OnceLock<&'static dyn Observer> = std::sync::OnceLock::new();

/// Installs the process's observer; the first one stays.
pub fn observe(observer: &'static dyn Observer) {
    let _ = OBSERVER.set(observer);
}

/// Counts an inbound stream this node closed, by why.
pub fn refused(why: &'static str) {
    if let Some(o) = OBSERVER.get() {
        o.stream_refused(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A responder for a request of `n` bytes counted in `counts`, as `serve` makes one.
    fn responder(counts: &Counts, tx: &mpsc::UnboundedSender<Answer>, n: usize) -> Responder {
        counts.add(n);
        let place = Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .expect("place");
        Responder {
            tag: 1,
            tx: tx.clone(),
            request_bytes: n,
            counts: counts.clone(),
            place: Some(place),
        }
    }

    /// A request's bytes, and then its answer's, stay counted in the stream's, the
    /// peer's and the node's counts until the answer is written (dropped here); a
    /// request never answered gives its bytes back when its responder goes.
    #[test]
    fn held_bytes_count_from_read_until_the_answer_is_written() {
        let (stream, peer, node) = (Held::new(10), Held::new(100), Held::new(1_000));
        let counts = Counts(vec![stream.clone(), peer.clone(), node.clone()]);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let r = responder(&counts, &tx, 40);
        assert_eq!(r.request_bytes(), 40);
        assert_eq!((stream.bytes(), peer.bytes(), node.bytes()), (40, 40, 40));
        r.answer(&vec![7u8; 20]);
        let held = stream.bytes();
        assert!(held > 60, "the answer's bytes too: {held}");
        assert_eq!((peer.bytes(), node.bytes()), (held, held));
        let answer = rx.try_recv().expect("queued");
        drop(answer);
        assert_eq!((stream.bytes(), peer.bytes(), node.bytes()), (0, 0, 0));
        drop(responder(&counts, &tx, 30));
        assert_eq!((stream.bytes(), peer.bytes(), node.bytes()), (0, 0, 0));
    }

    #[tokio::test]
    async fn frames_round_trip_and_bad_lengths_are_refused() {
        let mut buf = Vec::new();
        put_frame(&mut buf, 7, b"hello");
        put_frame(&mut buf, u64::MAX, b"");
        let mut io = futures::io::Cursor::new(buf);
        assert_eq!(
            read_frame(&mut io).await.expect("frame"),
            Some((7, b"hello".to_vec()))
        );
        assert_eq!(
            read_frame(&mut io).await.expect("frame"),
            Some((u64::MAX, Vec::new()))
        );
        assert_eq!(read_frame(&mut io).await.expect("frame"), None);
        for len in [
            0u32,
            7,
            u32::try_from(TAG_BYTES + MESSAGE_BYTES_MAX + 1).expect("fits"),
        ] {
            let mut io = futures::io::Cursor::new(len.to_be_bytes().to_vec());
            let e = read_frame(&mut io).await.expect_err("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "length {len}");
        }
        // Cut short inside a frame: an error, not a clean end.
        let mut short = Vec::new();
        put_frame(&mut short, 1, b"abc");
        short.pop();
        let mut io = futures::io::Cursor::new(short);
        assert!(read_frame(&mut io).await.is_err());
    }
}
