//! A listener that holds at most a fixed number of connections open: one more is closed as soon as it is
//! accepted. Agents can open connections to the gateway without a token (the token comes with a request), so
//! without a cap a job could spend the service's file descriptors, and with them its webhooks and store.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

/// Connections the gateway holds open on each of its shared listeners (its loopback port, its socket).
pub const MAX_CONNECTIONS: usize = 1024;

/// Connections the gateway holds open on one job's own socket: model requests and egress tunnels (a
/// package manager opens a few dozen at once).
pub const JOB_CONNECTIONS: usize = 128;

pub struct Capped<L> {
    inner: L,
    slots: Arc<Semaphore>,
    warned: AtomicBool,
    name: &'static str,
}

impl<L> Capped<L> {
    pub fn new(inner: L, max: usize, name: &'static str) -> Capped<L> {
        Capped {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            warned: AtomicBool::new(false),
            name,
        }
    }
}

impl<L: Listener> Listener for Capped<L> {
    type Io = CappedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => return (CappedIo { io, _slot: slot }, addr),
                Err(_) => {
                    drop(io);
                    if !self.warned.swap(true, Ordering::Relaxed) {
                        warn!(
                            "the model gateway's {} has as many connections open as it holds; closing new \
                             ones until some end",
                            self.name
                        );
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding its slot until it is dropped.
pub struct CappedIo<T> {
    io: T,
    _slot: OwnedSemaphorePermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for CappedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CappedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
