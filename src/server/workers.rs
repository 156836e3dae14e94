//! The async runtime the binary (and the benchmark's bare proxy) runs on.
//!
//! `TOKIO_WORKER_THREADS` workers, or one per core this process may use (its CPU affinity and
//! cgroup quota count). One worker gets tokio's single-threaded scheduler, an event loop like
//! one nginx worker: on one thread the multi-threaded scheduler's machinery for sharing work
//! between threads buys nothing and cost about a fifth more CPU per forwarded request.

/// The variable that sets the worker count.
pub const ENV: &str = "TOKIO_WORKER_THREADS";

/// Builds the runtime for `workers` (the variable's value, if set).
pub fn runtime(workers: Option<&str>) -> Result<tokio::runtime::Runtime, String> {
    let n = match workers.map(|v| v.trim().parse::<usize>()) {
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            return Err(format!("{ENV} must be a whole number of at least 1, got {:?}", workers.unwrap_or_default()))
        }
    };
    let mut builder = if n == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(n);
        b
    };
    builder.enable_all().build().map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// [`runtime`] for this process's environment.
pub fn runtime_from_env() -> Result<tokio::runtime::Runtime, String> {
    runtime(std::env::var(ENV).ok().as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_worker_is_the_single_threaded_scheduler_more_are_multi_threaded() {
        let rt = runtime(Some("1")).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        let rt = runtime(Some(" 3 ")).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(rt.metrics().num_workers(), 3);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(runtime(None).unwrap().metrics().num_workers(), cores);
    }

    #[test]
    fn anything_but_a_positive_whole_number_is_refused() {
        for bad in ["0", "", "two", "-1", "1.5"] {
            let e = runtime(Some(bad)).err().unwrap();
            assert!(e.starts_with("TOKIO_WORKER_THREADS must be a whole number of at least 1"), "{bad}: {e}");
        }
    }
}
