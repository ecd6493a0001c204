//! The log thread's logic: write records as they come, or keep them in a bounded memory buffer
//! while filesystems are frozen and write them, in order, once the last hold is gone.
//!
//! Pure (no thread, no channel, no clock): the thread in `super` feeds it, the tests too.

use std::collections::VecDeque;

use tracing::Level;

use super::ids;
use super::record::Record;

/// Where the log thread writes records (journald or stderr). Writing may block: only the log
/// thread ever calls it.
pub trait Sink: Send {
    /// Writes one record; failures are the sink's to swallow (there is nowhere to report them).
    fn write(&mut self, record: &Record);
}

/// How much the buffer kept while frozen may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// At most this many records.
    pub records: usize,
    /// At most about this many bytes (see [`Record::approx_bytes`]).
    pub bytes: usize,
}

/// The default bound: enough for a snapshot with chatty hooks, small next to the agent's memory.
pub const HELD_LIMITS: Limits = Limits {
    records: 2048,
    bytes: 1 << 20,
};

/// The log thread's state.
pub struct Relay<S> {
    sink: S,
    limits: Limits,
    held: VecDeque<Record>,
    held_bytes: usize,
    /// Records refused by the full buffer since the last [`Relay::settle`].
    held_dropped: u64,
}

impl<S: Sink> Relay<S> {
    /// A relay writing to `sink`, keeping at most `limits` while held.
    pub fn new(sink: S, limits: Limits) -> Relay<S> {
        Relay {
            sink,
            limits,
            held: VecDeque::new(),
            held_bytes: 0,
            held_dropped: 0,
        }
    }

    /// Handles one record: kept while `frozen`, else written (after anything kept before).
    pub fn record(&mut self, mut record: Record, frozen: bool, queue_dropped: u64) {
        if frozen {
            let size = record.approx_bytes();
            // The newest are dropped, not the oldest: the first records of a freeze say what
            // froze and how, and the thaw's own records come after the hold is gone.
            if self.held.len() >= self.limits.records || self.held_bytes + size > self.limits.bytes
            {
                self.held_dropped += 1;
            } else {
                record.delayed = true;
                self.held_bytes += size;
                self.held.push_back(record);
            }
            return;
        }
        self.settle(queue_dropped);
        self.sink.write(&record);
    }

    /// Writes what was kept, in order, then one warning with the number of records lost (to
    /// the full buffer, plus `queue_dropped` lost to the full queue), if any.
    pub fn settle(&mut self, queue_dropped: u64) {
        while let Some(r) = self.held.pop_front() {
            self.sink.write(&r);
        }
        self.held_bytes = 0;
        let lost = std::mem::take(&mut self.held_dropped) + queue_dropped;
        if lost > 0 {
            let message = format!(
                "{lost} log records were dropped (the log queue or the buffer kept while \
                 filesystems were frozen was full)"
            );
            self.sink.write(&Record::own(
                Level::WARN,
                message,
                Some(ids::LOG_RECORDS_DROPPED),
            ));
        }
    }

    /// How many records are kept right now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The sink, for the tests.
    #[cfg(test)]
    pub fn sink(&self) -> &S {
        &self.sink
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Vec<Record>);

    impl Sink for Collect {
        fn write(&mut self, record: &Record) {
            self.0.push(record.clone());
        }
    }

    fn rec(n: usize) -> Record {
        Record::own(Level::INFO, format!("r{n}"), None)
    }

    fn messages(r: &Relay<Collect>) -> Vec<String> {
        r.sink().0.iter().map(|r| r.message.clone()).collect()
    }

    #[test]
    fn records_pass_through_when_nothing_is_frozen() {
        let mut r = Relay::new(Collect::default(), HELD_LIMITS);
        r.record(rec(1), false, 0);
        r.record(rec(2), false, 0);
        assert_eq!(messages(&r), ["r1", "r2"]);
        assert!(r.sink().0.iter().all(|r| !r.delayed));
    }

    #[test]
    fn frozen_records_wait_and_come_out_first_and_in_order() {
        let mut r = Relay::new(Collect::default(), HELD_LIMITS);
        r.record(rec(1), true, 0);
        r.record(rec(2), true, 0);
        assert!(messages(&r).is_empty());
        assert_eq!(r.held(), 2);
        // The first record after the thaw comes after the kept ones.
        r.record(rec(3), false, 0);
        assert_eq!(messages(&r), ["r1", "r2", "r3"]);
        assert!(r.sink().0[0].delayed && r.sink().0[1].delayed && !r.sink().0[2].delayed);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn the_buffer_is_bounded_in_records_and_counts_what_it_drops() {
        let limits = Limits {
            records: 3,
            bytes: 1 << 20,
        };
        let mut r = Relay::new(Collect::default(), limits);
        for n in 0..10 {
            r.record(rec(n), true, 0);
        }
        assert_eq!(r.held(), 3);
        r.settle(0);
        let m = messages(&r);
        assert_eq!(&m[..3], ["r0", "r1", "r2"]);
        assert_eq!(m.len(), 4);
        assert!(m[3].starts_with("7 log records were dropped"), "{m:?}");
        assert_eq!(
            r.sink().0[3].known.message_id.as_deref(),
            Some(ids::LOG_RECORDS_DROPPED)
        );
        assert_eq!(r.sink().0[3].level, Level::WARN);
        // Counted once: the next settle says nothing.
        r.settle(0);
        assert_eq!(messages(&r).len(), 4);
    }

    #[test]
    fn the_buffer_is_bounded_in_bytes() {
        let one = rec(0).approx_bytes();
        let limits = Limits {
            records: 1000,
            bytes: one * 5 + one / 2,
        };
        let mut r = Relay::new(Collect::default(), limits);
        for n in 0..8 {
            r.record(rec(n), true, 0);
        }
        assert_eq!(r.held(), 5);
        r.settle(2);
        let m = messages(&r);
        assert_eq!(m.len(), 6);
        // The 3 refused by the buffer and the 2 lost to the full queue, in one warning.
        assert!(m[5].starts_with("5 log records were dropped"), "{m:?}");
    }

    #[test]
    fn queue_drops_are_reported_before_the_next_record() {
        let mut r = Relay::new(Collect::default(), HELD_LIMITS);
        r.record(rec(1), false, 4);
        let m = messages(&r);
        assert_eq!(m.len(), 2);
        assert!(m[0].starts_with("4 log records were dropped"));
        assert_eq!(m[1], "r1");
    }
}
