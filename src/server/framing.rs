//! Spots request-smuggling shapes that hyper quietly repairs.
//!
//! hyper (per RFC 9112 §6.3) lets Transfer-Encoding win over Content-Length and closes the
//! connection afterwards, dropping the Content-Length header before the service sees the
//! request. That is safe, but a front-line gateway should refuse such a request outright (400)
//! rather than guess. This wrapper watches the bytes of each HTTP/1 request head as they are
//! read, follows body framing to find the next head, and raises a per-connection flag that the
//! gateway turns into a 400. It never changes the bytes; on anything it does not understand
//! (HTTP/2, upgrades, malformed framing — which hyper refuses anyway) it stops watching.
//!
//! Because it knows where each head begins, it also tells the connection's watchdog when a
//! head after the first one has begun but not arrived whole ([`Signals::partial_head_since`]):
//! the head deadline runs from that first byte (as nginx's `client_header_timeout` does for
//! keep-alive requests), so a keep-alive connection that is merely idle gets the idle timeout,
//! and a dribbled later head still gets the head deadline. hyper's own `header_read_timeout`
//! would instead start a timer at the end of every response, closing idle keep-alive
//! connections at the head deadline (and logging them as refused heads).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest head examined (hyper refuses longer ones itself).
const MAX_HEAD: usize = 64 * 1024;
/// Headers parsed per head.
const MAX_HEADERS: usize = 128;

/// Put in the extensions of a request with a chunked body: the connection's signals, to read
/// the chunk sizes declared so far ([`Signals::largest_chunk`]).
#[derive(Debug, Clone)]
pub struct ChunkWatch(pub Arc<Signals>);

impl ChunkWatch {
    /// The largest chunk size declared so far in this request's body.
    pub fn largest(&self) -> u64 {
        self.0.largest_chunk.load(Ordering::Relaxed)
    }
}

/// Marker put in request extensions when the connection carried an ambiguous request.
#[derive(Debug, Clone, Copy)]
pub struct AmbiguousFraming;

/// What the follower tells the rest of the connection. Only atomics on the request path; the
/// notification is sent only when a later head arrives in pieces.
#[derive(Debug)]
pub struct Signals {
    /// An ambiguous request was seen on this connection.
    pub ambiguous: AtomicBool,
    /// The largest chunk size declared so far in the current request's chunked body, so a
    /// reader can refuse a body over its cap as soon as a chunk header says so (413) instead
    /// of after that many bytes. Reset by each head. (A pipelined later request's head can
    /// reset it early; that only loses the early answer, never refuses a good body.)
    pub largest_chunk: AtomicU64,
    /// The head just read has a chunked body (an atomic the service reads, instead of a header
    /// lookup for every request).
    pub chunked: AtomicBool,
    /// Microseconds after `origin`, plus one, when the head now being read began; 0 when no
    /// head after the first is partly read.
    partial_since: AtomicU64,
    origin: Instant,
    /// Woken when a later head begins without completing, so a watchdog can bring its deadline
    /// forward.
    wake: Arc<tokio::sync::Notify>,
}

impl Signals {
    /// Signals for a connection accepted at `origin`, waking `wake` when a later head begins.
    pub fn new(origin: Instant, wake: Arc<tokio::sync::Notify>) -> Self {
        Signals {
            ambiguous: AtomicBool::new(false),
            largest_chunk: AtomicU64::new(0),
            chunked: AtomicBool::new(false),
            partial_since: AtomicU64::new(0),
            origin,
            wake,
        }
    }

    /// When the head being read began, if it is a later head (not the connection's first) that
    /// has not arrived whole yet.
    pub fn partial_head_since(&self) -> Option<Instant> {
        match self.partial_since.load(Ordering::Acquire) {
            0 => None,
            us => Some(self.origin + Duration::from_micros(us - 1)),
        }
    }

    fn head_begun(&self) {
        let us = self.origin.elapsed().as_micros() as u64 + 1;
        self.partial_since.store(us, Ordering::Release);
        self.wake.notify_one();
    }

    fn head_complete(&self) {
        self.partial_since.store(0, Ordering::Release);
    }
}

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkEnd(u8),
    Trailers(Vec<u8>),
    Off,
}

/// Framing follower for one connection; see the module docs.
#[derive(Debug)]
pub struct Framing {
    state: State,
    signals: Arc<Signals>,
    /// A head has been read whole on this connection (its first one's deadline is the
    /// watchdog's from accept).
    spoke: bool,
    /// `signals` holds this head's start.
    partial: bool,
    /// The last head's buffer, cleared, for the next head: one allocation per connection
    /// rather than a fresh, regrown one per request.
    spare: Vec<u8>,
}

impl Framing {
    /// A follower reporting to `signals`.
    pub fn new(signals: Arc<Signals>) -> Self {
        Framing { state: State::Head(Vec::new()), signals, spoke: false, partial: false, spare: Vec::new() }
    }

    /// Feeds bytes read from the client.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            data = match &mut self.state {
                State::Off => return,
                State::Head(buf) => {
                    let before = buf.len();
                    // The usual case, a whole head in one read, is examined where it lies;
                    // only a head split across reads is gathered into the buffer.
                    let (end, bare_lf) = if before == 0 {
                        scan_head(data)
                    } else {
                        buf.extend_from_slice(data);
                        // Earlier bytes held no terminator; it may straddle the boundary. Only
                        // the new bytes are searched, and the head is read once it is whole.
                        let from = before.saturating_sub(3);
                        match memchr::memmem::find(&buf[from..], b"\r\n\r\n") {
                            Some(i) => scan_head(&buf[..from + i + 4]),
                            None => (
                                None,
                                memchr::memchr_iter(b'\n', &buf[from..])
                                    .any(|i| from + i > 0 && buf[from + i - 1] != b'\r'),
                            ),
                        }
                    };
                    // A line ended by a bare LF: hyper accepts it, a proxy behind or before us
                    // may not split lines the same way. Refused like ambiguous framing.
                    if bare_lf {
                        self.signals.ambiguous.store(true, Ordering::Relaxed);
                        self.state = State::Off;
                        return;
                    }
                    let Some((end, framing)) = end else {
                        if before == 0 {
                            buf.extend_from_slice(data);
                        }
                        // A later head has begun with its first byte that is not one of the blank
                        // lines a client may send between requests (which hyper skips).
                        if self.spoke && !self.partial && buf.iter().any(|&b| b != b'\r' && b != b'\n') {
                            self.signals.head_begun();
                            self.partial = true;
                        }
                        if buf.len() > MAX_HEAD {
                            self.state = State::Off;
                        }
                        return;
                    };
                    let head_len = end + 4;
                    self.spoke = true;
                    if self.partial {
                        self.partial = false;
                        self.signals.head_complete();
                    }
                    let mut spare = std::mem::take(buf);
                    self.state = if before == 0 {
                        self.after_head(&data[..head_len], framing)
                    } else {
                        self.after_head(&spare[..head_len], framing)
                    };
                    spare.clear();
                    match &mut self.state {
                        State::Head(next) => *next = spare,
                        _ => self.spare = spare,
                    }
                    &data[head_len - before..]
                }
                State::Body(left) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Head(std::mem::take(&mut self.spare));
                    }
                    &data[n..]
                }
                State::ChunkSize(line) => match data.iter().position(|&b| b == b'\n') {
                    None => {
                        line.extend_from_slice(data);
                        if line.len() > 1024 {
                            self.state = State::Off;
                        }
                        return;
                    }
                    Some(i) => {
                        line.extend_from_slice(&data[..=i]);
                        let text = String::from_utf8_lossy(line);
                        let size = text
                            .trim_end()
                            .split(';')
                            .next()
                            .map(str::trim)
                            .and_then(|h| u64::from_str_radix(h, 16).ok());
                        self.state = match size {
                            None => State::Off,
                            Some(0) => State::Trailers(Vec::new()),
                            Some(n) => {
                                self.signals.largest_chunk.fetch_max(n, Ordering::Relaxed);
                                State::ChunkData(n)
                            }
                        };
                        &data[i + 1..]
                    }
                },
                State::ChunkData(left) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::ChunkEnd(2);
                    }
                    &data[n..]
                }
                State::ChunkEnd(left) => {
                    let n = (*left as usize).min(data.len());
                    *left -= n as u8;
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                    &data[n..]
                }
                State::Trailers(line) => match data.iter().position(|&b| b == b'\n') {
                    None => {
                        line.extend_from_slice(data);
                        return;
                    }
                    Some(i) => {
                        line.extend_from_slice(&data[..=i]);
                        let empty = line.as_slice() == b"\r\n" || line.as_slice() == b"\n";
                        self.state = if empty {
                            State::Head(std::mem::take(&mut self.spare))
                        } else {
                            State::Trailers(Vec::new())
                        };
                        &data[i + 1..]
                    }
                },
            };
        }
    }

    /// What follows `head`; `framing` is whether a header line of it names a framing header.
    fn after_head(&self, head: &[u8], framing: bool) -> State {
        if head.starts_with(b"PRI * HTTP/2.0") {
            return State::Off;
        }
        // Most heads (every poll) name none of the headers that decide framing: no body, nothing
        // to refuse, and no need to parse them a second time after hyper.
        let state =
            if !head.starts_with(b"CONNECT ") && !framing { State::Head(Vec::new()) } else { self.parse_head(head) };
        // Stored only when it changes: most connections never carry a chunked body.
        let chunked = matches!(state, State::ChunkSize(_));
        if self.signals.chunked.load(Ordering::Relaxed) != chunked {
            self.signals.chunked.store(chunked, Ordering::Relaxed);
        }
        state
    }

    fn parse_head(&self, head: &[u8]) -> State {
        // Uninitialised slots: zeroing 128 headers for every request was measurable.
        let mut headers = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let Ok(httparse::Status::Complete(_)) = req.parse_with_uninit_headers(head, &mut headers) else {
            return State::Off;
        };
        if req.method == Some("CONNECT") {
            return State::Off;
        }
        let mut length = None;
        let mut chunked = false;
        let mut te = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok()).or(Some(0));
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Twice (as two headers or a list naming chunked twice): which one frames the
                // body is a guess another hop may make differently.
                let codings =
                    h.value.split(|&b| b == b',').filter(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked")).count();
                if te || codings > 1 {
                    self.signals.ambiguous.store(true, Ordering::Relaxed);
                }
                te = true;
                chunked = h.value.to_ascii_lowercase().ends_with(b"chunked");
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                return State::Off;
            }
        }
        if te && length.is_some() {
            self.signals.ambiguous.store(true, Ordering::Relaxed);
        }
        if chunked {
            self.signals.largest_chunk.store(0, Ordering::Relaxed);
        }
        match (te, chunked, length) {
            (true, true, _) => State::ChunkSize(Vec::new()),
            (true, false, _) => State::Off,
            (false, _, Some(0)) | (false, _, None) => State::Head(Vec::new()),
            (false, _, Some(n)) => State::Body(n),
        }
    }
}

/// Whether `line` begins with a header name that bears on framing (case-insensitively, as a
/// prefix: a false alarm only costs the full parse).
fn names_framing_at(line: &[u8]) -> bool {
    const NAMES: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"upgrade"];
    NAMES.iter().any(|n| line.get(..n.len()).is_some_and(|l| l.eq_ignore_ascii_case(n)))
}

/// One pass over bytes that begin with a head: where its first `\r\n\r\n` starts, and whether
/// a header line before it names a framing header (one walk over its line ends, rather than a
/// search for the end and a second walk over the lines).
///
/// Also says whether a line before that end (or before the data's end) ends in a bare LF: one
/// more byte compare per line, in the walk that is made anyway.
fn scan_head(data: &[u8]) -> (Option<(usize, bool)>, bool) {
    let mut framing = false;
    for i in memchr::memchr_iter(b'\n', data) {
        if i > 0 && data[i - 1] != b'\r' {
            return (None, true);
        }
        if i > 0 && data.get(i + 1..i + 3) == Some(b"\r\n") {
            return (Some((i - 1, framing)), false);
        }
        framing = framing || names_framing_at(&data[i + 1..]);
    }
    (None, false)
}

/// An IO wrapper feeding everything read into a [`Framing`] follower.
pub struct Watched<IO> {
    io: IO,
    framing: Framing,
}

impl<IO> Watched<IO> {
    /// Wraps a connection.
    pub fn new(io: IO, signals: Arc<Signals>) -> Self {
        Watched { io, framing: Framing::new(signals) }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.framing.feed(&buf.filled()[before..]);
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn signals() -> Arc<Signals> {
        Arc::new(Signals::new(Instant::now(), Arc::new(tokio::sync::Notify::new())))
    }

    fn run(parts: &[&[u8]]) -> (bool, bool) {
        let signals = signals();
        let mut f = Framing::new(signals.clone());
        for p in parts {
            f.feed(p);
        }
        (signals.ambiguous.load(Ordering::Relaxed), matches!(f.state, State::Off))
    }

    #[test]
    fn a_later_head_in_pieces_is_reported_from_its_first_byte_until_whole() {
        let s = signals();
        let mut f = Framing::new(s.clone());
        // The first head's deadline is the watchdog's own (from accept): not reported.
        f.feed(b"GET /a HTTP/1.1\r\nHo");
        assert_eq!(s.partial_head_since(), None);
        f.feed(b"st: x\r\n\r\n");
        // A later head arriving whole in one read costs nothing.
        f.feed(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(s.partial_head_since(), None);
        // One in pieces is reported from its first piece, and the watchdog is woken once.
        let before = Instant::now();
        f.feed(b"GET /c HTTP/1.1\r\n");
        let since = s.partial_head_since().expect("reported");
        assert!(since >= before.checked_sub(Duration::from_millis(1)).unwrap() && since <= Instant::now());
        f.feed(b"X-A: b\r\n");
        assert_eq!(s.partial_head_since(), Some(since), "the start stays the first byte's");
        f.feed(b"\r\n");
        assert_eq!(s.partial_head_since(), None);
        // Blank lines between requests are not a head.
        f.feed(b"\r\n");
        assert_eq!(s.partial_head_since(), None);
        f.feed(b"GET /c2 HTTP/1.1\r\n");
        assert!(s.partial_head_since().is_some());
        f.feed(b"\r\n");
        assert_eq!(s.partial_head_since(), None);
        // After a body, the next head is a later head too.
        f.feed(b"POST /d HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /e HTTP/1.1\r\n");
        assert!(s.partial_head_since().is_some());
        let woken = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async { tokio::time::timeout(Duration::from_millis(100), s.wake.notified()).await.is_ok() });
        assert!(woken);
    }

    #[test]
    fn flags_cl_plus_te_in_either_order() {
        assert!(run(&[b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]).0);
        assert!(run(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"]).0);
    }

    #[test]
    fn follows_bodies_to_the_next_head() {
        // A CL body whose bytes look like a head must not confuse it…
        let body = b"Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n";
        let first = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
        let (flag, off) = run(&[first.as_bytes(), body, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]);
        assert!(!flag && !off);
        // …nor chunked ones, split at awkward places.
        let (flag, off) = run(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r",
            b"\nabc",
            b"de\r\n0\r\n\r\nGET / HTTP/1.1\r\nContent-",
            b"Length: 0\r\n\r\n",
        ]);
        assert!(!flag && !off);
        // A later ambiguous request on the same connection is still caught.
        let (flag, _) =
            run(&[b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"]);
        assert!(flag);
    }

    #[test]
    fn the_same_verdict_however_the_reads_are_split() {
        // Two clean requests, then an ambiguous one: split at every byte boundary, and byte by
        // byte, the follower raises the flag exactly when the ambiguous head is complete.
        let clean = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 4\r\n\r\n\r\n\r\n".to_vec();
        let bad = b"POST /c HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let all = [clean.as_slice(), bad].concat();
        for cut in 0..=all.len() {
            assert!(run(&[&all[..cut], &all[cut..]]).0, "cut at {cut}");
            assert!(!run(&[&clean[..cut.min(clean.len())], &clean[cut.min(clean.len())..]]).0, "clean, cut at {cut}");
        }
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        assert!(run(&bytes).0);
        let clean_bytes: Vec<&[u8]> = clean.chunks(1).collect();
        assert_eq!(run(&clean_bytes), (false, false));
    }

    #[test]
    fn the_quick_look_agrees_with_the_full_parse() {
        let f = Framing::new(signals());
        let heads: &[&[u8]] = &[
            b"GET /v1/sora/generations/abc/ HTTP/1.1\r\nHost: x\r\nUser-Agent: h2load\r\nAuthorization: Bearer k\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Type: a/b\r\nConnection: keep-alive\r\nTE: trailers\r\n\r\n",
            b"POST / HTTP/1.1\r\nCONTENT-LENGTH: 7\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUPGRADE: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Lengthy: 5\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /content-length HTTP/1.1\r\nX-Note: transfer-encoding\r\n\r\n",
        ];
        let framing = |head: &[u8]| scan_head(head).0.is_some_and(|(_, framing)| framing);
        for head in heads {
            assert_eq!(
                format!("{:?}", f.after_head(head, framing(head))),
                format!("{:?}", f.parse_head(head)),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        assert!(!framing(heads[0]) && !framing(heads[1]) && !framing(heads[10]));
        // The ambiguous head raised the flag on the way, as before.
        assert!(f.signals.ambiguous.load(Ordering::Relaxed));
    }

    #[test]
    fn bare_line_feeds_and_a_repeated_transfer_encoding_are_ambiguous() {
        for head in [
            &b"GET / HTTP/1.1\nHost: x\n\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        ] {
            for step in [head.len(), 1] {
                let mut f = Framing::new(signals());
                for piece in head.chunks(step) {
                    f.feed(piece);
                }
                assert!(
                    f.signals.ambiguous.load(Ordering::Relaxed),
                    "{:?} in pieces of {step}",
                    String::from_utf8_lossy(head)
                );
            }
        }
        let mut f = Framing::new(signals());
        f.feed(b"\r\nGET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n");
        assert!(!f.signals.ambiguous.load(Ordering::Relaxed));
    }

    /// The two-pass answer the one-pass scan replaced: whether a header line of `head` names a
    /// framing header.
    fn names_framing(head: &[u8]) -> bool {
        memchr::memchr_iter(b'\n', head).any(|i| names_framing_at(&head[i + 1..]))
    }

    #[test]
    fn the_one_pass_scan_agrees_with_memmem_and_the_line_check() {
        // Every cut of heads and pipelined pairs, bare line feeds and near-terminators included.
        let samples: &[&[u8]] = &[
            b"GET /a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\r\nGET /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\ntransfer-ENCODING: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\nContent-Length: 4\n\r\n\r\n",
            b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: \r\r\n\n\r\nUpgrade: h2c\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgr\r\n\r\nade: x\r\n\r\n",
        ];
        for sample in samples {
            for cut in 0..=sample.len() {
                let data = &sample[..cut];
                let end = memchr::memmem::find(data, b"\r\n\r\n");
                let limit = end.map_or(data.len(), |e| e + 1);
                let bare = memchr::memchr_iter(b'\n', &data[..limit]).any(|j| j > 0 && data[j - 1] != b'\r');
                let expected =
                    if bare { (None, true) } else { (end.map(|end| (end, names_framing(&data[..end + 4]))), false) };
                assert_eq!(scan_head(data), expected, "{:?}", String::from_utf8_lossy(data));
            }
        }
    }

    #[test]
    fn stops_watching_what_it_does_not_follow() {
        assert!(run(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).1);
        assert!(run(&[b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"]).1);
        assert!(run(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]).1);
    }
}
