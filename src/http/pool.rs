//! Connection slots: whoever has no key cannot take the place of whoever has one.
//!
//! Every accepted connection starts *waiting* (not authenticated yet). Waiting connections are
//! few ([`MAX_WAITING`]) and capped per peer ([`MAX_WAITING_PER_PEER`]); when either limit is
//! passed, the oldest waiting connection (of that peer, then overall) is closed to make room,
//! so a new connection always gets its turn and a signed request, sent in one write, is read
//! and authenticated at once. A connection whose request has authenticated leaves the waiting
//! set for its own pool of [`MAX_AUTHENTICATED`] slots and can no longer be evicted; past that
//! pool it is answered 503. The accept loop never waits for a slot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Connections that have not authenticated yet, at most (the oldest is closed beyond).
pub const MAX_WAITING: usize = 32;
/// Waiting connections of one peer (an IP address, or one vsock CID), at most.
pub const MAX_WAITING_PER_PEER: usize = 16;
/// Connections whose request authenticated, served at once (long polls included).
pub const MAX_AUTHENTICATED: usize = 64;

struct Waiting {
    peer: String,
    evict: oneshot::Sender<()>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    waiting: BTreeMap<u64, Waiting>,
    authenticated: usize,
}

/// The slots of one listener.
#[derive(Default, Clone)]
pub struct Pool(Arc<Mutex<Inner>>);

/// One connection's place; freed on drop.
pub struct Slot {
    pool: Pool,
    id: u64,
    authenticated: bool,
}

impl Pool {
    /// A pool with no connection.
    pub fn new() -> Pool {
        Pool::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `peer` as waiting; the receiver fires when it is evicted.
    pub fn admit(&self, peer: &str) -> (Slot, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        let same_peer: Vec<u64> = inner
            .waiting
            .iter()
            .filter(|(_, w)| w.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        if same_peer.len() >= MAX_WAITING_PER_PEER {
            if let Some(w) = inner.waiting.remove(&same_peer[0]) {
                let _ = w.evict.send(());
            }
        }
        if inner.waiting.len() >= MAX_WAITING {
            if let Some((_, w)) = inner.waiting.pop_first() {
                let _ = w.evict.send(());
            }
        }
        inner.waiting.insert(
            id,
            Waiting {
                peer: peer.to_string(),
                evict: tx,
            },
        );
        (
            Slot {
                pool: self.clone(),
                id,
                authenticated: false,
            },
            rx,
        )
    }

    /// Waiting and authenticated connections (for tests).
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.waiting.len(), inner.authenticated)
    }
}

impl Slot {
    /// Moves the connection to the authenticated pool (it can no longer be evicted); false
    /// when that pool is full (the caller answers 503) or the connection was evicted already.
    pub fn promote(&mut self) -> bool {
        if self.authenticated {
            return true;
        }
        let mut inner = self.pool.lock();
        if inner.authenticated >= MAX_AUTHENTICATED || !inner.waiting.contains_key(&self.id) {
            return false;
        }
        // Dropping the eviction sender tells the connection task it is safe now.
        inner.waiting.remove(&self.id);
        inner.authenticated += 1;
        self.authenticated = true;
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.pool.lock();
        if self.authenticated {
            inner.authenticated -= 1;
        } else {
            inner.waiting.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_connection_makes_room() {
        let pool = Pool::new();
        let mut held = Vec::new();
        for i in 0..MAX_WAITING {
            held.push(pool.admit(&format!("10.0.0.{}", i % 8)));
        }
        assert_eq!(pool.counts(), (MAX_WAITING, 0));
        let (_new, _rx) = pool.admit("10.0.0.99");
        assert_eq!(pool.counts(), (MAX_WAITING, 0));
        assert_eq!(held[0].1.try_recv(), Ok(()), "the oldest was evicted");
        assert!(held[1].1.try_recv().is_err());
    }

    #[test]
    fn one_peer_evicts_its_own_oldest_first() {
        let pool = Pool::new();
        let mut other = pool.admit("10.0.0.1");
        let mut mine: Vec<_> = (0..MAX_WAITING_PER_PEER)
            .map(|_| pool.admit("10.0.0.2"))
            .collect();
        let _next = pool.admit("10.0.0.2");
        assert_eq!(mine[0].1.try_recv(), Ok(()));
        assert!(other.1.try_recv().is_err(), "another peer keeps its place");
        assert!(other.0.promote());
    }

    #[test]
    fn promoted_connections_are_safe_and_bounded() {
        let pool = Pool::new();
        let (mut slot, mut rx) = pool.admit("p");
        assert!(slot.promote());
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        for _ in 0..2 * MAX_WAITING {
            let _ = pool.admit("p");
        }
        assert_eq!(pool.counts(), (0, 1));
        let mut all: Vec<_> = (1..MAX_AUTHENTICATED)
            .map(|i| {
                let (mut s, _) = pool.admit(&format!("q{i}"));
                assert!(s.promote());
                s
            })
            .collect();
        let (mut late, _) = pool.admit("r");
        assert!(!late.promote(), "the authenticated pool is full");
        all.pop();
        assert!(late.promote());
        drop(slot);
        drop(all);
        drop(late);
        assert_eq!(pool.counts(), (0, 0));
    }
}
