//! The HTTP server loop: hyper's HTTP/1.1 connections over our own accept loop,
//! so that every connection is bounded. A connection must send a complete
//! request head within `HEADER_READ_TIMEOUT` of opening (or of its first byte
//! after going idle), an idle keep-alive connection is closed after
//! `KEEP_ALIVE_TIMEOUT`, at most `MAX_CONNECTIONS` are served at once (the
//! rest wait in the listen backlog), and a request head is at most
//! [`MAX_HEAD_BYTES`]. Shutdown stops accepting, lets in-flight requests
//! finish and closes idle connections (hyper-util's `GracefulShutdown`).
//!
//! HTTP/1.1 only, as `axum::serve` was with axum's default features: authd
//! sits behind a proxy that terminates TLS, and h2c would bring a second
//! protocol's attack surface for no gain.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

/// A request head (request line and headers) larger than this is answered
/// `431` by hyper itself, with an empty body, and the connection closed.
/// Smaller heads whose headers exceed [`crate::http::MAX_HEADER_BYTES`] get a
/// problem+json `431` from the router.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A connection closed while its client is still sending (a body refused
/// from its headers) reads and discards what arrives until the client stops
/// for this long…
const LINGER_IDLE: Duration = Duration::from_secs(1);
/// …or for this long in all (see [`linger`]).
const LINGER_MAX: Duration = Duration::from_secs(5);

/// How connections are bounded (see the module documentation).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
}

/// Serve `router` on `listener` until `shutdown` resolves, then stop
/// accepting, finish the requests in flight and return once every
/// connection is closed. Requests carry `ConnectInfo<SocketAddr>`.
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper starts this timer whenever a connection goes idle, which
        // would make it the keep-alive timeout as well; [`expire`] applies
        // each timeout in its own right.
        .header_read_timeout(None)
        .max_header_size(MAX_HEAD_BYTES);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (activity, watch_activity) = Activity::new();
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
            permit: Some(permit),
        });
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let in_flight = activity.begin();
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                let response = router.oneshot(request).await?;
                // The request is in flight until hyper drops the response body.
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(InFlight {
                        inner: body,
                        _guard: in_flight,
                    })
                }))
            }
        });
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let connection = builder.serve_connection(io, service);
            let connection = watcher.watch(connection);
            tokio::select! {
                served = connection => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                }
                () = expire(watch_activity, limits) => {
                    tracing::debug!(%peer, "connection closed: header read or keep-alive timeout");
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// `accept` fails on a full file table or a connection reset before it was
/// accepted: log, back off a little on the former, keep serving.
async fn accept_error(e: io::Error) {
    let transient = matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    );
    if transient {
        tracing::debug!(error = %e, "accept failed");
    } else {
        tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a connection is doing, for [`expire`].
#[derive(Clone, Copy, Debug)]
struct State {
    /// Requests whose response body hyper still holds.
    in_flight: usize,
    /// When the connection opened or last went idle.
    idle_since: Instant,
    /// The first byte received since then, if any: a request head is coming.
    head_started: Option<Instant>,
    /// Whether any request has been served: the first head is due within the
    /// header read timeout of the connection opening, bytes or not.
    served: bool,
}

#[derive(Clone)]
struct Activity(Arc<watch::Sender<State>>);

impl Activity {
    fn new() -> (Self, watch::Receiver<State>) {
        let (tx, rx) = watch::channel(State {
            in_flight: 0,
            idle_since: Instant::now(),
            head_started: None,
            served: false,
        });
        (Self(Arc::new(tx)), rx)
    }

    fn begin(&self) -> InFlightGuard {
        self.0.send_modify(|s| {
            s.in_flight += 1;
            s.served = true;
            s.head_started = None;
        });
        InFlightGuard(self.clone())
    }

    fn received(&self) {
        self.0.send_if_modified(|s| {
            if s.in_flight == 0 && s.head_started.is_none() {
                s.head_started = Some(Instant::now());
                true
            } else {
                false
            }
        });
    }
}

struct InFlightGuard(Activity);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        (self.0).0.send_modify(|s| {
            s.in_flight -= 1;
            if s.in_flight == 0 {
                s.idle_since = Instant::now();
                s.head_started = None;
            }
        });
    }
}

/// When the connection is to be closed, or `None` while a request is in
/// flight (`REQUEST_TIMEOUT` bounds those).
fn deadline(s: &State, limits: &ConnectionLimits) -> Option<Instant> {
    if s.in_flight > 0 {
        None
    } else if !s.served {
        Some(s.idle_since + limits.header_read_timeout)
    } else if let Some(started) = s.head_started {
        Some(started + limits.header_read_timeout)
    } else {
        Some(s.idle_since + limits.keep_alive_timeout)
    }
}

/// Resolves when the connection has overstayed: a head not complete within
/// the header read timeout, or idle for the keep-alive timeout.
async fn expire(mut activity: watch::Receiver<State>, limits: ConnectionLimits) {
    loop {
        let due = deadline(&activity.borrow_and_update(), &limits);
        match due {
            Some(due) => {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {
                        if deadline(&activity.borrow(), &limits).is_some_and(|d| d <= Instant::now()) {
                            return;
                        }
                    }
                    changed = activity.changed() => if changed.is_err() { return },
                }
            }
            None => {
                if activity.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The socket, noting when bytes arrive. Holds the connection's place
/// (`MAX_CONNECTIONS`) until the socket is closed.
struct Watched {
    inner: TcpStream,
    activity: Activity,
    permit: Option<OwnedSemaphorePermit>,
}

/// Closing a socket with unread bytes resets the connection, and a client
/// still sending its request (most send the whole body before they read)
/// then sees the reset instead of the response that was already written: a
/// 413 refused from `Content-Length`, say. So when the connection ends with
/// bytes waiting, the socket [lingers](linger) instead.
impl Drop for Watched {
    fn drop(&mut self) {
        let mut probe = [0u8; 1];
        if !matches!(self.inner.try_read(&mut probe), Ok(n) if n > 0) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let _entered = runtime.enter();
        let stream = std::os::fd::AsFd::as_fd(&self.inner)
            .try_clone_to_owned()
            .map(std::net::TcpStream::from)
            .and_then(TcpStream::from_std);
        match stream {
            Ok(stream) => {
                tokio::spawn(linger(stream, self.permit.take()));
            }
            Err(e) => tracing::debug!(error = %e, "cannot linger on a closing connection"),
        }
    }
}

/// The lingering close (as web servers do it): shut down the sending side,
/// so the client reads the response and then the end of the stream, and
/// read and discard whatever it still sends until it stops for
/// [`LINGER_IDLE`], closes, or [`LINGER_MAX`] has passed. The connection's
/// place is held meanwhile.
async fn linger(mut stream: TcpStream, _permit: Option<OwnedSemaphorePermit>) {
    let _ = stream.shutdown().await;
    let until = Instant::now() + LINGER_MAX;
    let mut discard = vec![0u8; 16 * 1024];
    loop {
        let quiet = (Instant::now() + LINGER_IDLE).min(until);
        match tokio::time::timeout_at(quiet, stream.read(&mut discard)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.received();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A response body that keeps its request counted as in flight.
struct InFlight {
    inner: Body,
    _guard: InFlightGuard,
}

impl http_body::Body for InFlight {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
