//! Background tasks that never silently vanish: a panic is logged, counted
//! (`tollgate_task_panics_total{task}`) and the task started again after a pause, so one absurd
//! input cannot stop the reconciler, the signal handler or a worker until the next restart.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::metrics::Metrics;

/// The pause before a panicked task starts again: long enough that a task panicking on every
/// run does not spin, short enough that its work resumes within a pass.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// Runs `make()` in its own task and starts it again whenever it panics; ends when a run returns.
pub fn supervise<F, Fut>(name: &'static str, metrics: Arc<Metrics>, make: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    let panic = e.into_panic();
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-text panic".into());
                    metrics.task_panicked(name);
                    tracing::error!(task = name, panic = %why, "background task panicked; restarting it");
                    tokio::time::sleep(RESTART_AFTER).await;
                }
                // Cancelled: the runtime is shutting down.
                Err(_) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_and_counted() {
        let runs = Arc::new(AtomicU32::new(0));
        let metrics = Arc::new(Metrics::new());
        let r = runs.clone();
        let done = supervise("test", metrics.clone(), move || {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("absurd input");
                }
            }
        });
        done.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let text = metrics
            .render(&crate::store::embedded::EmbeddedStore::memory(), crate::upstream::circuit::State::Closed)
            .await;
        assert!(text.contains("tollgate_task_panics_total{task=\"test\"} 2"), "{text}");
    }
}
