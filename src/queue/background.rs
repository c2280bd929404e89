//! Threads for the dispatcher's CPU work (parsing a delivery's payload, deciding triggers), run at a lower
//! scheduling priority than the rest of the service (`nice` 10, for these threads only).
//!
//! Under a flood of webhooks the CPU is shared between acknowledging deliveries (each sender waits for its
//! `202`, and GitHub gives up on it after ten seconds: a delivery not acknowledged is lost) and matching the
//! ones stored (which can wait: they are durable, and matched when the CPU frees up). On the same priority,
//! matching took more than half of the CPU and cut ingest to 0.58x. Here the kernel gives matching what the
//! webhook leaves, never nothing (a nice-10 thread keeps about a tenth of a contended CPU), and all of an
//! idle one.

use std::sync::{Mutex, OnceLock, mpsc};

use anyhow::{Result, anyhow};
use tokio::sync::oneshot;

type Work = Box<dyn FnOnce() + Send>;

/// The pool's queue; its threads start with the first work.
static POOL: OnceLock<Mutex<mpsc::Sender<Work>>> = OnceLock::new();

/// How much lower than the service's the pool's threads run.
const NICENESS: libc::c_int = 10;

/// Runs `work` on one of the pool's threads and returns what it returned; an error if it panicked.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (answer, answered) = oneshot::channel();
    let job: Work = Box::new(move || {
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let _ = answer.send(done);
    });
    pool()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|_| anyhow!("the dispatcher's threads stopped"))?;
    match answered.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(anyhow!("matching panicked")),
        Err(_) => Err(anyhow!("the dispatcher's threads stopped")),
    }
}

fn pool() -> &'static Mutex<mpsc::Sender<Work>> {
    POOL.get_or_init(|| {
        let (send, receive) = mpsc::channel::<Work>();
        let receive = std::sync::Arc::new(Mutex::new(receive));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        for i in 0..threads {
            let receive = receive.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("match-{i}"))
                .spawn(move || {
                    // On Linux a thread's nice value is its own: PRIO_PROCESS with 0 is this thread.
                    // SAFETY: get/setpriority read no memory of ours; a failure only leaves the priority.
                    unsafe {
                        let now = libc::getpriority(libc::PRIO_PROCESS, 0);
                        libc::setpriority(libc::PRIO_PROCESS, 0, (now + NICENESS).min(19));
                    }
                    loop {
                        let next = receive.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match next {
                            Ok(work) => work(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("starting a matching thread failed: {e}");
            }
        }
        Mutex::new(send)
    })
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn work_runs_at_a_lower_priority_and_a_panic_is_an_error() {
        let nice = super::run(|| {
            // SAFETY: getpriority reads no memory of ours.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
        })
        .await
        .unwrap();
        let ours = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(nice, (ours + super::NICENESS).min(19));
        let e = super::run(|| panic!("boom")).await.unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        assert_eq!(
            super::run(|| 2 + 2).await.unwrap(),
            4,
            "the pool survives a panic"
        );
    }
}
