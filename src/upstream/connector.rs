//! The platform connector: hyper-rustls over hyper-util's `HttpConnector`, except that its
//! connections report no `HttpInfo`. hyper-util copies a connection's "extra" info into every
//! response's extensions (a map allocated, filled and dropped per platform answer), and the
//! gateway never reads it.
//!
//! Kept for its measured gain: alternating builds with and without it, forwarded status polls
//! (`benches/instructions.sh 2000`, 2026-12-03): 59,126 and 59,197 instructions per poll with
//! it, 59,810 and 59,732 without (about 600, 1 %, all of it in `Upstream::forward`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};

/// Wraps a connector; its connections are [`Quiet`].
#[derive(Clone)]
pub struct QuietConnector<C>(pub C);

/// A connection that reports whether it is proxied or negotiated HTTP/2, and nothing else.
pub struct Quiet<S>(S);

impl<C> tower_service::Service<Uri> for QuietConnector<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
{
    type Response = Quiet<C::Response>;
    type Error = C::Error;
    // Boxed: a connect is rare (connections are pooled), so naming the future is not worth it.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.0.call(dst);
        Box::pin(async move { connecting.await.map(Quiet) })
    }
}

impl<S: Connection> Connection for Quiet<S> {
    // A fresh `Connected`: the pool's own poison flag starts clear, as the inner one would
    // (the gateway never poisons a connection).
    fn connected(&self) -> Connected {
        let inner = self.0.connected();
        let quiet = Connected::new().proxy(inner.is_proxied());
        if inner.is_negotiated_h2() {
            quiet.negotiated_h2()
        } else {
            quiet
        }
    }
}

impl<S: Read + Unpin> Read for Quiet<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: Write + Unpin> Write for Quiet<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that reports an extra, proxied or not, HTTP/2 or not.
    struct Reports(bool, bool);

    impl Connection for Reports {
        fn connected(&self) -> Connected {
            let c = Connected::new().proxy(self.0).extra(7u32);
            if self.1 {
                c.negotiated_h2()
            } else {
                c
            }
        }
    }

    #[test]
    fn keeps_what_the_pool_reads_and_drops_the_extra() {
        let mut ext = http::Extensions::new();
        Reports(false, false).connected().get_extras(&mut ext);
        assert_eq!(ext.get::<u32>(), Some(&7), "the inner connection reports an extra");
        for (proxied, h2) in [(false, false), (true, false), (false, true), (true, true)] {
            let quiet = Quiet(Reports(proxied, h2)).connected();
            let mut ext = http::Extensions::new();
            quiet.get_extras(&mut ext);
            assert!(ext.is_empty());
            assert_eq!((quiet.is_proxied(), quiet.is_negotiated_h2()), (proxied, h2));
        }
    }
}
