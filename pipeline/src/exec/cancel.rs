//! Cancellation as a token passed in: the binary's signal handling (or a
//! test, or a future `cancel` command) calls [`CancelToken::cancel`]; the
//! scheduler registers a waker that wakes its blocking receive, and kills
//! its children.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type Waker = Box<dyn Fn() + Send + Sync>;

#[derive(Clone, Default)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Cancels and runs every registered waker once; later calls do
    /// nothing.
    pub fn cancel(&self) {
        if self.inner.cancelled.swap(true, Ordering::SeqCst) {
            return;
        }
        for w in self.inner.wakers.lock().expect("not poisoned").iter() {
            w();
        }
    }

    /// Runs `f` on cancellation (at once if already cancelled).
    pub fn on_cancel(&self, f: impl Fn() + Send + Sync + 'static) {
        let mut wakers = self.inner.wakers.lock().expect("not poisoned");
        if self.is_cancelled() {
            drop(wakers);
            f();
            return;
        }
        wakers.push(Box::new(f));
    }
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CancelToken({})", self.is_cancelled())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn wakers_run_once_and_late_ones_at_once() {
        let t = CancelToken::new();
        let n = Arc::new(AtomicUsize::new(0));
        let m = Arc::clone(&n);
        t.on_cancel(move || {
            m.fetch_add(1, Ordering::SeqCst);
        });
        assert!(!t.is_cancelled());
        t.cancel();
        t.cancel();
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let m = Arc::clone(&n);
        t.on_cancel(move || {
            m.fetch_add(10, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 11);
    }
}
