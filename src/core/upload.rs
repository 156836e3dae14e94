//! The paid path's body phase: buffering a request body fairly.
//!
//! Memory for bodies is reserved as bytes arrive (or all at once when Content-Length says how
//! much is coming), against two budgets: the gateway's total (`max_buffered_body_bytes`, 503
//! when full) and the tenant's share of it (`max_buffered_body_bytes_per_tenant`, and at most
//! `max_uploads_per_tenant` bodies in progress; 429 past either). So a tenant that opens
//! uploads and never finishes them only ever blocks itself. An upload slower than
//! `min_upload_bytes_per_sec` after its first 5 s is ended with 408, so stalled uploads do not
//! hold their reservation until the request deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::policy::scan::{BodyScan, Marks};
use crate::server::framing::ChunkWatch;

/// Accounting unit of the total budget: 1 KiB per semaphore permit.
const UNIT: usize = 1024;
/// Reservations for bodies of unknown length grow in steps of this.
const STEP: usize = 256 * 1024;
/// The minimum upload rate applies after this long.
pub const SLOW_UPLOAD_GRACE: Duration = Duration::from_secs(5);

/// Why a body could not be buffered.
#[derive(Debug, PartialEq, Eq)]
pub enum UploadError {
    /// Over the cap (by Content-Length or by bytes received).
    TooLarge,
    /// The client went away or sent a broken body.
    Broken(String),
    /// Slower than the minimum rate after the grace period.
    TooSlow,
    /// The tenant's share of body memory, or of concurrent uploads, is in use.
    TenantBusy,
    /// The gateway's body memory is in use.
    Busy,
}

#[derive(Default)]
struct TenantUse {
    bytes: AtomicUsize,
    uploads: AtomicUsize,
}

/// The budgets; one per gateway.
pub struct Uploads {
    total: Semaphore,
    total_units: usize,
    per_tenant_bytes: usize,
    per_tenant_uploads: usize,
    min_rate: u64,
    tenants: Mutex<HashMap<Arc<str>, Arc<TenantUse>>>,
}

/// One body's reservation; everything is given back on drop.
pub struct Reservation<'a> {
    uploads: &'a Uploads,
    tenant: Arc<TenantUse>,
    permit: Option<SemaphorePermit<'a>>,
    bytes: usize,
    /// Counted among the tenant's uploads in progress until its body is read; its bytes stay
    /// reserved until the request is done with them.
    uploading: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.tenant.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        self.done_uploading();
    }
}

impl Reservation<'_> {
    fn done_uploading(&mut self) {
        if std::mem::replace(&mut self.uploading, false) {
            self.tenant.uploads.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Grows the reservation to cover `total` bytes.
    fn cover(&mut self, total: usize) -> Result<(), UploadError> {
        if total <= self.bytes {
            return Ok(());
        }
        // Streaming bodies reserve ahead in steps (fewer atomic operations), never past the
        // tenant's share because of the rounding.
        let want = total.div_ceil(STEP).saturating_mul(STEP).min(self.uploads.per_tenant_bytes).max(total);
        let extra = want - self.bytes;
        let before = self.tenant.bytes.fetch_add(extra, Ordering::AcqRel);
        if before + extra > self.uploads.per_tenant_bytes {
            self.tenant.bytes.fetch_sub(extra, Ordering::AcqRel);
            return Err(UploadError::TenantBusy);
        }
        let units = (want.div_ceil(UNIT) - self.bytes.div_ceil(UNIT)).min(self.uploads.total_units) as u32;
        match self.uploads.total.try_acquire_many(units) {
            Ok(p) => {
                match &mut self.permit {
                    Some(existing) => existing.merge(p),
                    None => self.permit = Some(p),
                }
                self.bytes = want;
                Ok(())
            }
            Err(_) => {
                self.tenant.bytes.fetch_sub(extra, Ordering::AcqRel);
                Err(UploadError::Busy)
            }
        }
    }
}

// === impl Uploads ===

impl Uploads {
    /// Budgets of `total` bytes, `per_tenant_bytes` and `per_tenant_uploads` per tenant, and a
    /// minimum rate (0: none).
    pub fn new(total: usize, per_tenant_bytes: usize, per_tenant_uploads: usize, min_rate: u64) -> Uploads {
        let units = (total / UNIT).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Uploads {
            total: Semaphore::new(units),
            total_units: units,
            per_tenant_bytes: per_tenant_bytes.max(1),
            per_tenant_uploads: per_tenant_uploads.max(1),
            min_rate,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Starts one upload for `tenant`; 429 when it already has its share of uploads going.
    pub fn begin(&self, tenant: &Arc<str>) -> Result<Reservation<'_>, UploadError> {
        let usage = self.tenants.lock().unwrap_or_else(|p| p.into_inner()).entry(tenant.clone()).or_default().clone();
        if usage.uploads.fetch_add(1, Ordering::AcqRel) >= self.per_tenant_uploads {
            usage.uploads.fetch_sub(1, Ordering::AcqRel);
            return Err(UploadError::TenantBusy);
        }
        Ok(Reservation { uploads: self, tenant: usage, permit: None, bytes: 0, uploading: true })
    }

    /// Reads a body of at most `limit` bytes into one buffer, reserving memory as it goes, and
    /// hands each chunk to a `BodyScan` while it is in cache (see `policy::scan`).
    pub async fn read<B>(
        &self,
        r: &mut Reservation<'_>,
        body: B,
        declared: Option<u64>,
        chunks: Option<&ChunkWatch>,
        limit: usize,
    ) -> Result<(Bytes, Option<Marks>), UploadError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let mut scan = BodyScan::new();
        let out = self.read_inner(r, body, declared, chunks, limit, &mut scan).await;
        r.done_uploading();
        Ok((out?, scan.finish()))
    }

    async fn read_inner<B>(
        &self,
        r: &mut Reservation<'_>,
        body: B,
        declared: Option<u64>,
        chunks: Option<&ChunkWatch>,
        limit: usize,
        scan: &mut BodyScan,
    ) -> Result<Bytes, UploadError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(UploadError::TooLarge);
        }
        if let Some(n) = declared {
            r.cover(n as usize)?;
        }
        let started = Instant::now();
        // One allocation of the right size when the client said how much is coming.
        let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
        let mut body = std::pin::pin!(body);
        loop {
            // By when the next byte must have arrived to keep up the minimum rate.
            let due = if self.min_rate == 0 {
                None
            } else {
                let secs = (buf.len() as f64 + 1.0) / self.min_rate as f64;
                Some(started + SLOW_UPLOAD_GRACE.max(Duration::from_secs_f64(secs)))
            };
            let next = match due {
                Some(due) => match tokio::time::timeout_at(due, body.frame()).await {
                    Ok(f) => f,
                    Err(_) => return Err(UploadError::TooSlow),
                },
                None => body.frame().await,
            };
            let Some(frame) = next else { break };
            let frame = frame.map_err(|e| UploadError::Broken(e.to_string()))?;
            // A chunk header that declares more than the cap: 413 now, not after the bytes.
            if chunks.is_some_and(|c| c.largest() > limit as u64) {
                return Err(UploadError::TooLarge);
            }
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(UploadError::TooLarge);
                }
                r.cover(buf.len() + data.len())?;
                buf.extend_from_slice(&data);
                scan.feed(&buf, data.len());
            }
        }
        Ok(buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn chunks(parts: Vec<&'static [u8]>) -> impl http_body::Body<Data = Bytes, Error = std::convert::Infallible> {
        let frames = parts.into_iter().map(|p| Ok(http_body::Frame::data(Bytes::from_static(p))));
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn t(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[tokio::test]
    async fn reads_whole_bodies_and_caps_them() {
        let u = Uploads::new(1 << 20, 1 << 20, 4, 0);
        let mut r = u.begin(&t("a")).unwrap();
        assert_eq!(&u.read(&mut r, chunks(vec![b"ab", b"cd"]), None, None, 4).await.unwrap().0[..], b"abcd");
        let mut r = u.begin(&t("a")).unwrap();
        assert_eq!(u.read(&mut r, chunks(vec![b"ab", b"cde"]), None, None, 4).await.err(), Some(UploadError::TooLarge));
        let mut r = u.begin(&t("a")).unwrap();
        assert_eq!(u.read(&mut r, chunks(vec![]), Some(5), None, 4).await.err(), Some(UploadError::TooLarge));
    }

    #[tokio::test]
    async fn one_tenant_cannot_take_another_tenants_share() {
        // 4 MiB in all, 1 MiB per tenant, 2 uploads per tenant.
        let u = Uploads::new(4 << 20, 1 << 20, 2, 0);
        let mut a1 = u.begin(&t("a")).unwrap();
        a1.cover(1 << 20).unwrap();
        let mut a2 = u.begin(&t("a")).unwrap();
        assert_eq!(a2.cover(1), Err(UploadError::TenantBusy), "a's bytes are used up");
        assert!(matches!(u.begin(&t("a")), Err(UploadError::TenantBusy)), "a's uploads are used up");
        let mut b = u.begin(&t("b")).unwrap();
        b.cover(1 << 20).unwrap();
        drop(a1);
        a2.cover(512 * 1024).unwrap();
        assert_eq!(u.total.available_permits(), (4 << 20) / UNIT - 1024 - 512);
    }

    #[tokio::test]
    async fn the_total_still_bounds_everyone() {
        let u = Uploads::new(1 << 20, 1 << 20, 8, 0);
        let mut a = u.begin(&t("a")).unwrap();
        a.cover(768 * 1024).unwrap();
        let mut b = u.begin(&t("b")).unwrap();
        assert_eq!(b.cover(512 * 1024), Err(UploadError::Busy));
        drop(a);
        b.cover(512 * 1024).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_upload_ends_after_the_grace() {
        let u = Uploads::new(1 << 20, 1 << 20, 8, 16_384);
        let mut r = u.begin(&t("a")).unwrap();
        let stalled = StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, std::convert::Infallible>,
        >());
        let started = Instant::now();
        assert_eq!(u.read(&mut r, stalled, None, None, 1 << 20).await.err(), Some(UploadError::TooSlow));
        assert_eq!(started.elapsed(), SLOW_UPLOAD_GRACE);
    }
}
