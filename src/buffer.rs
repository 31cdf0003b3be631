//! Body buffering that shields the app from slow clients, as nginx does.
//!
//! Requests: the whole body is read before the upstream is contacted — in
//! memory up to `buffering.memory`, then in an unlinked temporary file — and
//! sent on with a Content-Length. Responses: a task reads the upstream's body
//! as fast as it comes and the client takes it from a spool (memory, then an
//! unlinked temporary file), so a slow reader never holds the upstream.
//! Memory per body stays bounded either way.
//!
//! Every system call on a temporary file runs on tokio's blocking pool, never
//! on a worker thread, which serves thousands of other connections: creating
//! one, writing, reading, and above all the last close of an unlinked file,
//! which frees its blocks (2,000 slow readers of 1 MiB answers leaving at once
//! held each worker thread in `close` for 1–1.5 s, up to 85 ms a file, on ext4
//! under write load: docs/hardening.md, finding D).

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, StreamBody};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use crate::body::{self, Body, BoxError};

/// Read size when streaming a spooled request body to the (fast) upstream.
const CHUNK: usize = 64 << 10;
/// Read size when streaming a spooled response to a client: what the client's
/// connection holds unwritten counts against `buffering.memory`, so this is the
/// step in which a slow reader's share moves (nginx reads its temp file in
/// 8 KiB buffers).
const RESPONSE_CHUNK: usize = 16 << 10;

/// Where temporary files go: `buffering.dir`, else $TMPDIR, else /tmp.
pub fn temp_dir(configured: Option<&Path>) -> PathBuf {
    configured.map_or_else(std::env::temp_dir, Path::to_path_buf)
}

/// Holds what owns a temporary file and drops it on the blocking pool: the
/// last close of an unlinked file frees its blocks, which can take
/// milliseconds. Empty only once dropped (or never filled).
struct OffThread<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> Default for OffThread<T> {
    fn default() -> Self {
        OffThread(None)
    }
}

/// Closes under way at once: thousands of answers ending together (slow
/// readers leaving) would otherwise start a blocking thread each (~750 threads
/// for 2,000, measured) for no gain, the freeing being the file system's work.
static CLOSING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

impl<T: Send + 'static> Drop for OffThread<T> {
    fn drop(&mut self) {
        if let Some(v) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(async move {
                    let _turn = CLOSING.acquire().await;
                    let _ = tokio::task::spawn_blocking(move || drop(v)).await;
                })),
                Err(_) => drop(v),
            }
        }
    }
}

/// Runs `f` on the blocking pool; a panic or a shut-down runtime is an I/O error.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> io::Result<R> + Send + 'static) -> io::Result<R> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// A new unlinked temporary file in `dir`, created on the blocking pool.
async fn new_temp_file(dir: &Path) -> io::Result<File> {
    let dir = dir.to_path_buf();
    blocking(move || tempfile::tempfile_in(dir)).await
}

/// Why a request body could not be taken whole.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    #[error("client sent nothing for {0:?} in the middle of the body")]
    Timeout(Duration),
    #[error("client body: {0}")]
    Client(BoxError),
    #[error("cannot buffer the request body on disk: {0}")]
    Disk(io::Error),
}

/// A request body read in full.
pub enum Buffered {
    Memory(Bytes),
    /// An unlinked temporary file (read from the start) and the body's length.
    File(FileBody, u64),
}

/// A request body waiting in an unlinked temporary file.
pub struct FileBody(OffThread<File>);

impl Buffered {
    pub fn len(&self) -> u64 {
        match self {
            Buffered::Memory(b) => b.len() as u64,
            Buffered::File(_, n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn into_body(self) -> Body {
        match self {
            Buffered::Memory(b) if b.is_empty() => body::empty(),
            Buffered::Memory(b) => body::full(b),
            Buffered::File(FileBody(mut f), len) => {
                let Some(f) = f.0.take() else { return body::empty() };
                let reader = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(f), CHUNK);
                let stream = OffThread(Some(reader)).map(|r| r.map(Frame::data).map_err(BoxError::from));
                // The length is known: say so, so hyper sends Content-Length, not chunks.
                body::Sized::new(BodyExt::boxed(StreamBody::new(stream)), len).boxed()
            }
        }
    }
}

/// The request body's file stream, closed off the worker thread when dropped.
impl<S: futures_util::Stream + Send + Unpin + 'static> futures_util::Stream for OffThread<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        match self.0.as_mut() {
            Some(s) => s.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

/// Request bodies up to this size are read and thrown away when gatekeeper
/// answers without the app, so the connection can carry the next request;
/// larger ones end the connection (with a lingering close).
pub const DISCARD_MAX: u64 = 64 << 10;

/// Reads and discards a body of at most [`DISCARD_MAX`] bytes within `within`;
/// true when it was read to its end.
pub async fn discard<B>(body: &mut B, within: Duration) -> bool
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    let read = async {
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(d) = frame.data_ref() {
                total += d.len() as u64;
                if total > DISCARD_MAX {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(within, read).await.unwrap_or(false)
}

/// Reads a request body whole: memory up to `memory` bytes, then an unlinked
/// temporary file in `dir`. More than `max` bytes, or `idle` without a byte, fails.
pub async fn read_request<B>(
    mut body: B,
    memory: usize,
    max: u64,
    dir: &Path,
    idle: Duration,
) -> Result<Buffered, RequestBodyError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut mem = BytesMut::new();
    // The file to write and a handle to read it back (dropped off the worker on every way out).
    let mut file: OffThread<(tokio::fs::File, File)> = OffThread(None);
    let mut total: u64 = 0;
    // One timer for the whole body, moved on only when it fires: a slow client
    // trickling bytes would otherwise cost a timer registration per chunk.
    let mut last_progress = tokio::time::Instant::now();
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    loop {
        let next = tokio::select! {
            biased;
            f = body.frame() => f,
            () = &mut deadline => {
                let due = last_progress + idle;
                if tokio::time::Instant::now() >= due {
                    return Err(RequestBodyError::Timeout(idle));
                }
                deadline.as_mut().reset(due);
                continue;
            }
        };
        last_progress = tokio::time::Instant::now();
        let frame = match next {
            None => break,
            Some(Err(e)) => return Err(RequestBodyError::Client(e.into())),
            Some(Ok(f)) => f,
        };
        let Ok(data) = frame.into_data() else { continue }; // trailers are not forwarded
        total += data.len() as u64;
        if total > max {
            return Err(RequestBodyError::TooLarge(max));
        }
        match &mut file.0 {
            None if mem.len() + data.len() <= memory => mem.extend_from_slice(&data),
            None => {
                let std_file = new_temp_file(dir).await.map_err(RequestBodyError::Disk)?;
                let clone = std_file.try_clone().map_err(RequestBodyError::Disk)?;
                let (f, _) = file.0.insert((tokio::fs::File::from_std(std_file), clone));
                f.write_all(&mem).await.map_err(RequestBodyError::Disk)?;
                f.write_all(&data).await.map_err(RequestBodyError::Disk)?;
                mem = BytesMut::new();
            }
            Some((f, _)) => f.write_all(&data).await.map_err(RequestBodyError::Disk)?,
        }
    }
    match &mut file.0 {
        None => Ok(Buffered::Memory(mem.freeze())),
        Some((f, clone)) => {
            f.flush().await.map_err(RequestBodyError::Disk)?;
            use std::io::Seek;
            clone.seek(io::SeekFrom::Start(0)).map_err(RequestBodyError::Disk)?;
            // The clone keeps the file open: the writer's close is not the last one.
            let clone = clone.try_clone().map_err(RequestBodyError::Disk)?;
            Ok(Buffered::File(FileBody(OffThread(Some(clone))), total))
        }
    }
}

// === Response spool ===

#[derive(Default)]
struct SpoolState {
    /// `buffering.memory`: the most of this answer held in RAM at once (or one
    /// file read, `RESPONSE_CHUNK`, when that is more).
    memory: usize,
    /// Copies, not slices of the upstream connection's read buffer: a slice
    /// would keep that whole buffer (up to ~400 KiB) alive until the client
    /// took it.
    mem: VecDeque<Vec<u8>>,
    mem_bytes: usize,
    /// Handed to the client's connection and not yet written to its socket
    /// (hyper queues what it pulls): still in RAM, so it counts against `memory`.
    in_flight: usize,
    /// Created by the first write that needs it.
    file: OffThread<Arc<File>>,
    write_pos: u64,
    /// A write to the file is under way (off the runtime): the file must not be reset meanwhile.
    writing: bool,
    read_pos: u64,
    done: bool,
    error: Option<BoxError>,
    reader_gone: bool,
    waker: Option<Waker>,
}

/// The client's side of a spooled response body.
struct SpoolBody {
    state: Arc<Mutex<SpoolState>>,
    hint: SizeHint,
    /// A read of the file under way (on the blocking pool), at most one.
    reading: Option<JoinHandle<io::Result<Vec<u8>>>>,
}

impl Drop for SpoolBody {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.reader_gone = true;
        }
    }
}

impl HttpBody for SpoolBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(read) = &mut this.reading {
            let res = std::task::ready!(Pin::new(read).poll(cx)).unwrap_or_else(|e| Err(io::Error::other(e)));
            this.reading = None;
            return Poll::Ready(Some(this.read_done(res)));
        }
        let mut guard = match this.state.lock() {
            Ok(g) => g,
            Err(_) => return Poll::Ready(Some(Err("response spool poisoned".into()))),
        };
        let s = &mut *guard;
        if let Some(b) = s.mem.pop_front() {
            s.mem_bytes -= b.len();
            s.in_flight += b.len();
            return Poll::Ready(Some(Ok(Frame::data(in_flight(b, &this.state)))));
        }
        if s.read_pos < s.write_pos {
            if let Some(f) = &s.file.0 {
                let n = usize::try_from(s.write_pos - s.read_pos)
                    .unwrap_or(RESPONSE_CHUNK)
                    .min(RESPONSE_CHUNK);
                if s.in_flight > 0 && s.in_flight + n > s.memory {
                    // The client has not taken what it already has: wait until it
                    // does (dropping a written chunk wakes us) rather than read on.
                    // With nothing in flight one read always goes, so a `memory`
                    // below the read size still moves a read's worth at a time.
                    s.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                let (f, pos) = (f.clone(), s.read_pos);
                drop(guard);
                this.reading = Some(tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; n];
                    f.read_exact_at(&mut buf, pos).map(|()| buf)
                }));
                // Polled at once: the task's completion must wake this one.
                return Pin::new(this).poll_frame(cx);
            }
        }
        if let Some(e) = s.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if s.done {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.done && s.error.is_none() && s.mem.is_empty() && s.read_pos == s.write_pos)
            .unwrap_or(false)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl SpoolBody {
    /// A file read has finished: hand its bytes on.
    fn read_done(&mut self, res: io::Result<Vec<u8>>) -> Result<Frame<Bytes>, BoxError> {
        let buf = res?;
        let mut s = self.state.lock().map_err(|_| "response spool poisoned")?;
        s.read_pos += buf.len() as u64;
        if s.read_pos == s.write_pos && !s.writing {
            // Drained: the next write starts over at the beginning, so the file
            // grows no larger than the most that ever waited in it. Not
            // truncated: that frees blocks, on this thread (the close does it).
            s.read_pos = 0;
            s.write_pos = 0;
        }
        s.in_flight += buf.len();
        drop(s);
        Ok(Frame::data(in_flight(buf, &self.state)))
    }
}

/// A chunk handed to the client's connection: when the connection drops it
/// (written out, or the connection gone), it no longer counts as in flight.
struct InFlight {
    data: Vec<u8>,
    state: Arc<Mutex<SpoolState>>,
}

impl AsRef<[u8]> for InFlight {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.in_flight -= self.data.len();
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }
}

fn in_flight(data: Vec<u8>, state: &Arc<Mutex<SpoolState>>) -> Bytes {
    Bytes::from_owner(InFlight {
        data,
        state: state.clone(),
    })
}

/// Reads `upstream` as fast as it comes in a task of its own and returns the
/// body the client reads from; what the client has not taken yet waits in
/// memory (up to `memory`), then in an unlinked temporary file in `dir`.
pub fn spool_response<B>(upstream: B, memory: usize, dir: PathBuf) -> Body
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let hint = upstream.size_hint();
    let state = Arc::new(Mutex::new(SpoolState {
        memory,
        ..SpoolState::default()
    }));
    let body = SpoolBody {
        state: state.clone(),
        hint,
        reading: None,
    };
    tokio::spawn(fill_spool(upstream, state, dir));
    body.boxed()
}

async fn fill_spool<B>(mut upstream: B, state: Arc<Mutex<SpoolState>>, dir: PathBuf)
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    loop {
        let write = {
            // Scoped: the frame (and its error type, maybe not Send) is gone before the write's await.
            let next = upstream.frame().await;
            let Ok(mut s) = state.lock() else { return };
            if s.reader_gone {
                return; // client went away: drop the upstream body (and its connection)
            }
            let mut write = None;
            match next {
                None => s.done = true,
                Some(Err(e)) => {
                    s.error = Some(e.into());
                    s.done = true;
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if let Placed::File { file, pos, data } = place(&mut s, data, &dir) {
                            write = Some((file, pos, data));
                        }
                    }
                }
            }
            write
        };
        if let Some((file, pos, data)) = write {
            let len = data.len() as u64;
            // Disk writes can stall (dirty-page throttling): never on a worker thread,
            // which serves many other connections.
            let res = blocking(move || {
                let file = match file {
                    Spill::To(f) => f,
                    Spill::CreateIn(dir) => Arc::new(tempfile::tempfile_in(dir)?),
                };
                file.write_all_at(&data, pos).map(|()| file)
            })
            .await;
            let Ok(mut s) = state.lock() else { return };
            s.writing = false;
            match res {
                Ok(file) => {
                    s.file.0.get_or_insert(file);
                    s.write_pos += len;
                }
                Err(e) => disk_failed(&mut s, e, &dir),
            }
        }
        let Ok(mut s) = state.lock() else { return };
        let done = s.done;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        if done {
            return;
        }
    }
}

fn disk_failed(s: &mut SpoolState, e: io::Error, dir: &Path) {
    tracing::error!(dir = %dir.display(), error = %e, "cannot spool the response to disk; truncating it");
    s.error = Some(e.into());
    s.done = true;
}

/// Where a chunk of the upstream's answer goes.
enum Placed {
    Memory,
    /// To be written at `pos` in the spool file (the caller does the I/O).
    File {
        file: Spill,
        pos: u64,
        data: Bytes,
    },
}

/// The spool file, or where to create it.
enum Spill {
    To(Arc<File>),
    CreateIn(PathBuf),
}

fn place(s: &mut SpoolState, data: Bytes, dir: &Path) -> Placed {
    // Order matters: once bytes wait in the file, later bytes go behind them.
    let file_pending = s.read_pos < s.write_pos;
    if !file_pending && s.mem_bytes + s.in_flight + data.len() <= s.memory {
        s.mem_bytes += data.len();
        s.mem.push_back(data.to_vec());
        return Placed::Memory;
    }
    s.writing = true;
    let file = match &s.file.0 {
        Some(f) => Spill::To(f.clone()),
        None => Spill::CreateIn(dir.to_path_buf()),
    };
    Placed::File {
        file,
        pos: s.write_pos,
        data,
    }
}

/// `place` and the write in one go (for tests).
#[cfg(test)]
fn push(s: &mut SpoolState, data: Bytes, dir: &Path) -> io::Result<()> {
    if let Placed::File { file, pos, data } = place(s, data, dir) {
        let file = match file {
            Spill::To(f) => f,
            Spill::CreateIn(dir) => s.file.0.insert(Arc::new(tempfile::tempfile_in(dir)?)).clone(),
        };
        file.write_all_at(&data, pos)?;
        s.write_pos += data.len() as u64;
        s.writing = false;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    fn chunks(
        parts: Vec<&'static [u8]>,
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, io::Error>>> {
        StreamBody::new(stream::iter(
            parts.into_iter().map(|p| Ok(Frame::data(Bytes::from_static(p)))),
        ))
    }

    /// Reads a body as a connection does: each chunk is let go once "written".
    async fn collect(mut b: Body) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(frame) = b.frame().await {
            match frame {
                Ok(f) => out.extend_from_slice(f.data_ref().map_or(&[][..], |d| &d[..])),
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    #[tokio::test]
    async fn small_request_stays_in_memory() {
        let dir = std::env::temp_dir();
        let b = read_request(chunks(vec![b"ab", b"cd"]), 10, 100, &dir, Duration::from_secs(1)).await;
        let b = b.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(b, Buffered::Memory(_)));
        assert_eq!(b.len(), 4);
        assert_eq!(collect(b.into_body()).await, b"abcd");
    }

    #[tokio::test]
    async fn large_request_spills_to_file_in_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let b = read_request(
            chunks(vec![b"0123", b"4567", b"89"]),
            5,
            100,
            dir.path(),
            Duration::from_secs(1),
        )
        .await;
        let b = b.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(b, Buffered::File(_, 10)));
        let body = b.into_body();
        assert_eq!(body.size_hint().exact(), Some(10));
        assert_eq!(collect(body).await, b"0123456789");
        // Unlinked: nothing left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).map(|d| d.count()).unwrap_or(99), 0);
    }

    #[tokio::test]
    async fn request_over_max_is_refused() {
        let dir = std::env::temp_dir();
        let r = read_request(chunks(vec![b"0123", b"4567"]), 5, 6, &dir, Duration::from_secs(1)).await;
        assert!(matches!(r, Err(RequestBodyError::TooLarge(6))));
    }

    #[tokio::test]
    async fn stalled_request_times_out() {
        let dir = std::env::temp_dir();
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, io::Error>>(1);
        let body = StreamBody::new(tokio_stream_from(rx));
        let r = read_request(body, 5, 6, &dir, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(RequestBodyError::Timeout(_))));
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    #[tokio::test]
    async fn spool_keeps_order_across_memory_and_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // The filler runs ahead of the reader: two parts fit in memory, the rest waits in the file.
        let mut s = SpoolState {
            memory: 6,
            ..SpoolState::default()
        };
        for p in [&b"aaa"[..], b"bbb", b"cccc", b"dddd", b"ee"] {
            push(&mut s, Bytes::from_static(p), dir.path()).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!((s.mem_bytes, s.write_pos), (6, 10));
        s.done = true;
        let body = SpoolBody {
            state: Arc::new(Mutex::new(s)),
            hint: SizeHint::default(),
            reading: None,
        };
        assert_eq!(collect(body.boxed()).await, b"aaabbbccccddddee");
        let parts: Vec<&'static [u8]> = vec![b"aaaa", b"bbbb", b"cccc", b"dddd", b"ee"];
        let body = spool_response(chunks(parts), 6, dir.path().to_path_buf());
        assert_eq!(collect(body).await, b"aaaabbbbccccddddee");
    }

    #[tokio::test]
    async fn a_reader_that_holds_its_chunks_gets_no_more_than_memory() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let parts: Vec<&'static [u8]> = vec![b"aaaa", b"bbbb", b"cccc", b"dddd", b"ee"];
        let mut body = spool_response(chunks(parts), 6, dir.path().to_path_buf());
        // A client socket that takes nothing: the chunks pile up unwritten.
        let mut held = Vec::new();
        let mut pending = false;
        for _ in 0..10 {
            match tokio::time::timeout(Duration::from_millis(100), body.frame()).await {
                Ok(Some(Ok(f))) => held.push(f),
                Ok(other) => panic!("unexpected {:?}", other.map(|r| r.is_ok())),
                Err(_) => {
                    pending = true;
                    break;
                }
            }
        }
        let held_bytes: usize = held.iter().filter_map(|f| f.data_ref()).map(|d| d.len()).sum();
        assert!(pending, "the spool kept handing out chunks nobody wrote");
        assert!(held_bytes <= 6, "{held_bytes} bytes in flight, memory is 6");
        // The socket takes them: the rest follows, in order.
        let mut out: Vec<u8> = held
            .iter()
            .filter_map(|f| f.data_ref())
            .flat_map(|d| d.to_vec())
            .collect();
        drop(held);
        out.extend(collect(body).await);
        assert_eq!(out, b"aaaabbbbccccddddee");
    }

    #[tokio::test]
    async fn spool_passes_upstream_errors_on() {
        let dir = std::env::temp_dir();
        let s = stream::iter(vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Err(io::Error::other("reset")),
        ]);
        let body = spool_response(StreamBody::new(s), 6, dir);
        assert!(body.collect().await.is_err());
    }
}
