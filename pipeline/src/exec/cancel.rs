//! Cancellation as a token passed in: the binary's signal handling (or a
//! test, or a future `cancel` command) calls [`CancelToken::cancel`]; the
//! scheduler registers a waker that wakes its blocking receive, and kills
//! its children.

use std::collections::BTreeMap;
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
    /// Registration number -> waker; a waker leaves with its [`Registration`].
    wakers: Mutex<(u64, BTreeMap<u64, Waker>)>,
}

/// Keeps a waker registered; dropping it unregisters the waker, so a
/// long run holds one per live stage, not one per stage it ever ran.
#[must_use = "the waker is unregistered when this is dropped"]
pub(crate) struct Registration {
    token: Option<CancelToken>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(t) = &self.token {
            t.inner
                .wakers
                .lock()
                .expect("not poisoned")
                .1
                .remove(&self.id);
        }
    }
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
        for w in self.inner.wakers.lock().expect("not poisoned").1.values() {
            w();
        }
    }

    /// Runs `f` on cancellation (at once if already cancelled), as long as
    /// the returned registration lives.
    pub(crate) fn on_cancel(&self, f: impl Fn() + Send + Sync + 'static) -> Registration {
        let mut wakers = self.inner.wakers.lock().expect("not poisoned");
        if self.is_cancelled() {
            drop(wakers);
            f();
            return Registration { token: None, id: 0 };
        }
        let (next, map) = &mut *wakers;
        *next += 1;
        map.insert(*next, Box::new(f));
        Registration {
            token: Some(self.clone()),
            id: *next,
        }
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
    fn wakers_run_once_dropped_ones_never_and_late_ones_at_once() {
        let t = CancelToken::new();
        let n = Arc::new(AtomicUsize::new(0));
        let m = Arc::clone(&n);
        let _kept = t.on_cancel(move || {
            m.fetch_add(1, Ordering::SeqCst);
        });
        let m = Arc::clone(&n);
        drop(t.on_cancel(move || {
            m.fetch_add(100, Ordering::SeqCst);
        }));
        assert!(!t.is_cancelled());
        t.cancel();
        t.cancel();
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let m = Arc::clone(&n);
        let _late = t.on_cancel(move || {
            m.fetch_add(10, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 11);
    }
}
