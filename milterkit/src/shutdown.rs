//! How a shutdown reaches every connection of a server: one state they all read, and one waker
//! each keeps registered.
//!
//! A connection registers its task's waker once (again only if the waker changes) and reads the
//! state with one atomic load before every wait; a change stores the state, then wakes every
//! registered waker. Registering before reading, and storing before waking, means a connection
//! either sees the new state or is woken for it. This replaces a `tokio::sync::watch` channel,
//! whose receiver had to register and unregister with the channel at every wait: about 5,700
//! instructions per message (a tenth of the whole).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Waker};

/// Where a shutdown stands, as every connection sees it. Steps only go forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Shutdown {
    /// Serving.
    Running,
    /// No new connections; connection-level commands get the fail-safe; messages finish.
    Draining,
    /// Grace period over: idle connections close; others answer their next command with the
    /// fail-safe and close.
    Closing,
    /// Close now.
    Abandon,
}

impl Shutdown {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Shutdown::Running,
            1 => Shutdown::Draining,
            2 => Shutdown::Closing,
            _ => Shutdown::Abandon,
        }
    }
}

/// The server's end: changes the state and wakes the connections.
#[derive(Debug, Clone, Default)]
pub(crate) struct Signal {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: AtomicU8,
    wakers: Mutex<Wakers>,
}

#[derive(Debug, Default)]
struct Wakers {
    next_id: u64,
    by_id: HashMap<u64, Waker>,
}

impl Signal {
    /// Moves the state to `to` (never back) and wakes every connection.
    pub(crate) fn send(&self, to: Shutdown) {
        self.shared.state.fetch_max(to as u8, Ordering::SeqCst);
        let wakers = self
            .shared
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for waker in wakers.by_id.values() {
            waker.wake_by_ref();
        }
    }

    /// A connection's end, registered with no waker yet.
    pub(crate) fn subscribe(&self) -> Subscription {
        let mut wakers = self
            .shared
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        wakers.next_id += 1;
        Subscription {
            shared: Some(self.shared.clone()),
            id: wakers.next_id,
            waker: None,
        }
    }
}

/// A connection's end: the state, and its waker registered for changes.
#[derive(Debug)]
pub(crate) struct Subscription {
    /// `None` for a connection served on its own ([`Subscription::alone`]): always running.
    shared: Option<Arc<Shared>>,
    id: u64,
    /// The waker registered last (a copy), to skip registering the same one again.
    waker: Option<Waker>,
}

impl Subscription {
    /// For a connection no server shuts down (`serve_connection`): always running, nothing
    /// registered.
    pub(crate) fn alone() -> Self {
        Subscription {
            shared: None,
            id: 0,
            waker: None,
        }
    }

    /// The state now.
    pub(crate) fn state(&self) -> Shutdown {
        match &self.shared {
            Some(shared) => Shutdown::from_u8(shared.state.load(Ordering::SeqCst)),
            None => Shutdown::Running,
        }
    }

    /// Registers `cx`'s waker for changes (unless it is registered already), then reads the
    /// state: a change after this read wakes the task.
    pub(crate) fn poll_state(&mut self, cx: &Context<'_>) -> Shutdown {
        let Some(shared) = &self.shared else {
            return Shutdown::Running;
        };
        if !same_waker(&self.waker, cx) {
            let waker = cx.waker().clone();
            shared
                .wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .by_id
                .insert(self.id, waker.clone());
            self.waker = Some(waker);
        }
        self.state()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let (Some(shared), Some(_)) = (&self.shared, &self.waker) {
            let mut wakers = shared.wakers.lock().unwrap_or_else(PoisonError::into_inner);
            wakers.by_id.remove(&self.id);
            // Give back the room of a past crowd of connections.
            if wakers.by_id.capacity() > 64 && wakers.by_id.len() * 4 < wakers.by_id.capacity() {
                wakers.by_id.shrink_to_fit();
            }
        }
    }
}

/// True if `waker` was registered from `cx` (or one that wakes the same task).
pub(crate) fn same_waker(waker: &Option<Waker>, cx: &Context<'_>) -> bool {
    waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_change_wakes_every_registered_waker_once_and_only_goes_forward() {
        let signal = Signal::default();
        let counts: Vec<Arc<Count>> = (0..3)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        let mut subs: Vec<Subscription> = (0..3).map(|_| signal.subscribe()).collect();
        for (sub, count) in subs.iter_mut().zip(&counts) {
            let waker = Waker::from(count.clone());
            let cx = Context::from_waker(&waker);
            assert_eq!(sub.poll_state(&cx), Shutdown::Running);
            // The same waker again is not registered twice.
            assert_eq!(sub.poll_state(&cx), Shutdown::Running);
        }
        // A dropped subscription is woken no more.
        drop(subs.pop());
        signal.send(Shutdown::Closing);
        signal.send(Shutdown::Draining);
        let woken: Vec<usize> = counts.iter().map(|c| c.0.load(Ordering::SeqCst)).collect();
        assert_eq!(woken, [2, 2, 0]);
        assert!(subs.iter().all(|s| s.state() == Shutdown::Closing));
        assert_eq!(signal.subscribe().state(), Shutdown::Closing);
        assert!(signal.shared.wakers.lock().unwrap().by_id.len() == 2);
        drop(subs);
        assert!(signal.shared.wakers.lock().unwrap().by_id.is_empty());
    }
}
