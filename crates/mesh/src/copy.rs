//! Moving bytes both ways between a client and its backend until both
//! sides are done, with half-close, per-backend byte counters and the
//! idle timeout.
//!
//! Two loops do the moving: a fixed buffer per direction, and Linux
//! `splice(2)` through a pipe, where the bytes go from one socket to the
//! other inside the kernel. [`CopyMode::Splice`] starts each direction on
//! the buffer and goes over to splice once a read fills it;
//! [`CopyMode::Buffered`] stays on the buffer. Both work on `&TcpStream` with
//! readiness and `try_*` calls, so that the two directions run as two
//! futures of one task and a half-close is a `shutdown(SHUT_WR)` on the
//! other socket while the reverse direction goes on.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes per read of the buffered loop (one buffer per direction, so a
/// connection holds twice this).
pub const CHUNK: usize = 16 * 1024;

/// The capacity asked for each splice pipe. Larger than the kernel's
/// default of 64 KiB because fewer, larger splices measured a third less
/// CPU per byte with several connections (see the crate doc); the pages
/// are only held while bytes are in flight.
pub const PIPE_BYTES: usize = 256 * 1024;

/// How the bytes of a connection are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyMode {
    /// Read into a buffer of [`CHUNK`] bytes, write it out.
    Buffered,
    /// The buffer until a read fills it, then `splice(2)` socket -> pipe
    /// -> socket, no copy through user space. Falls back to the buffer
    /// when a pipe cannot be made.
    #[default]
    Splice,
}

/// Why a connection's copy ended other than by both sides closing.
#[derive(Debug, Error)]
pub enum CopyError {
    #[error("no byte either way for {0:?}")]
    Idle(Duration),
    #[error("copy from {direction}: {source}")]
    Io {
        direction: &'static str,
        #[source]
        source: io::Error,
    },
}

/// When the last byte moved, as milliseconds since the connection began,
/// shared by both directions and the idle watchdog.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    /// One direction reached its end (and half-closed the other socket).
    one_ended: AtomicBool,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Copies client -> backend (counted in `bytes_in`) and backend -> client
/// (`bytes_out`) until both directions reached end of stream, or either
/// fails, or nothing moved for `idle` (when set).
pub async fn copy_both(
    mode: CopyMode,
    client: &TcpStream,
    backend: &TcpStream,
    bytes_in: &AtomicU64,
    bytes_out: &AtomicU64,
    idle: Option<Duration>,
) -> Result<(), CopyError> {
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
        one_ended: AtomicBool::new(false),
    };
    let both = async {
        let up = pump(mode, client, backend, bytes_in, &activity);
        let down = pump(mode, backend, client, bytes_out, &activity);
        tokio::try_join!(
            async {
                up.await.map_err(|source| CopyError::Io {
                    direction: "client",
                    source,
                })
            },
            async {
                down.await.map_err(|source| CopyError::Io {
                    direction: "backend",
                    source,
                })
            }
        )
        .map(|_| ())
    };
    match idle {
        None => both.await,
        Some(idle) => {
            let watchdog = async {
                loop {
                    let deadline = activity.last() + idle;
                    if Instant::now() >= deadline {
                        return CopyError::Idle(idle);
                    }
                    tokio::time::sleep_until(deadline).await;
                }
            };
            tokio::select! {
                done = both => done,
                idle = watchdog => Err(idle),
            }
        }
    }
}

/// One direction, then the half-close of the other socket's write side.
async fn pump(
    mode: CopyMode,
    src: &TcpStream,
    dst: &TcpStream,
    counter: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    match mode {
        CopyMode::Buffered => {
            buffered(src, dst, counter, activity, false).await?;
        }
        // Small messages (requests and answers of keep-alive HTTP) go
        // through the buffer, which costs less per message than a pipe;
        // once a read fills it (a large transfer) the direction goes over
        // to splice, as HAProxy's splice-auto does. Measured: docs/mesh.md.
        CopyMode::Splice => {
            if buffered(src, dst, counter, activity, true).await? == Ended::Large {
                match Pipe::take() {
                    Ok(pipe) => {
                        spliced(&pipe, src, dst, counter, activity).await?;
                        // Drained: a copy that ended cleanly leaves
                        // nothing in it.
                        pipe.give_back();
                    }
                    // Out of file descriptors for a pipe, most likely: the
                    // copy still works through the buffer.
                    Err(_) => {
                        buffered(src, dst, counter, activity, false).await?;
                    }
                }
            }
        }
    }
    // The second direction to end needs no half-close: both sockets are
    // closed next, and the close sends the FIN. With a connection per
    // request this saves one system call in 21 (docs/mesh.md).
    if activity.one_ended.swap(true, Ordering::Relaxed) {
        return Ok(());
    }
    shutdown_write(dst)
}

/// How a buffered copy ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// End of stream.
    Done,
    /// A read filled the buffer: a large transfer, to be spliced (only
    /// when asked for).
    Large,
}

async fn buffered(
    src: &TcpStream,
    dst: &TcpStream,
    counter: &AtomicU64,
    activity: &Activity,
    until_large: bool,
) -> io::Result<Ended> {
    let mut buf = vec![0u8; CHUNK];
    let fd = src.as_raw_fd();
    loop {
        src.readable().await?;
        // A read shorter than the buffer emptied the socket's queue: clear
        // the readiness now (WouldBlock) rather than learn it from one
        // more read that fails, as in `spliced`.
        let mut moved = 0;
        let got = src.try_io(Interest::READABLE, || {
            let n = recv(fd, &mut buf)?;
            moved = n;
            if n > 0 && n < buf.len() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match got {
            Ok(0) => return Ok(Ended::Done),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && moved > 0 => moved,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        activity.touch();
        let mut written = 0;
        while written < n {
            dst.writable().await?;
            match dst.try_write(&buf[written..n]) {
                Ok(m) => {
                    written += m;
                    activity.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if until_large && n == buf.len() {
            return Ok(Ended::Large);
        }
    }
}

/// A non-blocking pipe, the kernel buffer `splice` moves pages through.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Its capacity: the most one splice into the empty pipe can move.
    size: usize,
}

/// Empty pipes kept for the next connections of this worker thread, at
/// most this many: a pipe costs `pipe2` and two `fcntl` to make and two
/// `close` to end, which with a new connection per request was a third of
/// the mesh's system calls (the HAProxy benchmark, docs/mesh.md). Per
/// thread, so that taking one takes no lock.
const POOLED_PIPES: usize = 64;

thread_local! {
    static PIPES: std::cell::RefCell<Vec<Pipe>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Pipe {
    /// A pooled empty pipe, or a new one.
    fn take() -> io::Result<Pipe> {
        match PIPES.with(|p| p.borrow_mut().pop()) {
            Some(pipe) => Ok(pipe),
            None => Pipe::new(),
        }
    }

    /// Keeps an empty pipe for a later connection (a pipe that may hold
    /// bytes is dropped instead: the caller gives back only drained ones).
    fn give_back(self) {
        PIPES.with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < POOLED_PIPES {
                pool.push(self);
            }
        });
    }

    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: fds is a valid array of two ints for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors we own.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Best effort: an unprivileged process over its pipe memory limit
        // (fs.pipe-user-pages-soft) keeps the default size, which works,
        // only slower.
        // SAFETY: fcntl on a descriptor we own, with an int argument.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_BYTES as libc::c_int,
            )
        };
        // SAFETY: as above; F_GETPIPE_SZ takes no argument.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        let size = if size > 0 { size as usize } else { CHUNK };
        Ok(Pipe { read, write, size })
    }
}

/// One `recv(2)` into `buf`.
fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length, and the descriptor
    // is open while its owner is borrowed by the caller.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (the
    // caller borrows their owners); null offsets mean "current position",
    // required for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

async fn spliced(
    pipe: &Pipe,
    src: &TcpStream,
    dst: &TcpStream,
    counter: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    let (pipe_r, pipe_w) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
    loop {
        // The pipe is empty here (drained below), so EAGAIN means the
        // socket has nothing to read, and try_io clears its readiness.
        src.readable().await?;
        // A splice shorter than the pipe emptied the socket's queue: say
        // so (WouldBlock), so that try_io clears the readiness now rather
        // than after one more splice that would fail with EAGAIN (one
        // wasted system call per message with keep-alive HTTP). tokio
        // clears only the readiness it saw before the call, so bytes that
        // arrive meanwhile still wake the loop.
        let mut moved = 0;
        let got = src.try_io(Interest::READABLE, || {
            let n = splice(src_fd, pipe_w, pipe.size)?;
            moved = n;
            if n > 0 && n < pipe.size {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match got {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && moved > 0 => moved,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        activity.touch();
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || splice(pipe_r, dst_fd, left)) {
                Ok(m) => {
                    left -= m;
                    activity.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Ends the write side only: the peer reads end of stream and can still
/// answer, which the other direction carries on copying.
fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    // SAFETY: the descriptor is open while `stream` is borrowed.
    let rc = unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // The peer already went away: nothing left to tell it.
        if err.raw_os_error() == Some(libc::ENOTCONN) {
            return Ok(());
        }
        return Err(err);
    }
    Ok(())
}
