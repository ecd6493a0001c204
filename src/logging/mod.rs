//! The agent's logs: `tracing` events go to journald (native protocol, with the fields operators
//! filter on) or to stderr as text, from one dedicated thread.
//!
//! Nothing that logs ever waits for the output: a capture layer turns each event into an owned
//! [`Record`] and offers it to a bounded queue (a full queue drops the record and counts it).
//! The log thread writes them; while a [`FrozenHold`] lives (from the freeze request to the end
//! of the thaw) it keeps them in a bounded memory buffer instead, because journald writes to
//! /var/log/journal and stderr may be a file, either of which may be on a frozen filesystem.
//! See docs/logging.md.

pub mod ids;
mod journal;
mod record;
mod relay;
mod text;

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tracing::Level;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use record::{Capture, Known, Record};
pub use relay::{Limits, Relay, Sink, HELD_LIMITS};
pub use text::format_line;

/// Records waiting for the log thread; beyond this they are dropped (and counted).
const QUEUE: usize = 4096;
/// How long [`LogGuard`] waits at exit for the log thread to write what is pending.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// Chooses the output: `auto` (the default), `journal` or `stderr`.
pub const TARGET_ENV: &str = "QUIESCE_LOG_TARGET";
/// The most verbose level written: `error`, `warn`, `info` (the default), `debug`, `trace`.
pub const LEVEL_ENV: &str = "QUIESCE_LOG_LEVEL";

/// Where records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// journald's native protocol (falls back to stderr when the socket does not answer).
    Journal,
    /// Text lines on stderr.
    Stderr,
}

enum Msg {
    /// Boxed: the bounded queue reserves its slots up front, so they stay small.
    Record(Box<Record>),
    /// The last hold is gone: write what was kept.
    Wake,
    /// Write everything pending, then answer.
    Flush(mpsc::Sender<()>),
}

struct Shared {
    tx: SyncSender<Msg>,
    /// Records the queue refused since the log thread last reported them.
    dropped: AtomicU64,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
/// Live [`FrozenHold`]s, process-wide.
static HOLDS: AtomicUsize = AtomicUsize::new(0);

/// Keeps log records in memory while it lives; take it before a freeze, drop it after the thaw.
#[must_use = "the hold ends when it is dropped"]
#[derive(Debug)]
pub struct FrozenHold(());

/// Starts holding log records in memory until the returned guard (and every other) is dropped.
pub fn hold_while_frozen() -> FrozenHold {
    HOLDS.fetch_add(1, Ordering::SeqCst);
    FrozenHold(())
}

impl Drop for FrozenHold {
    fn drop(&mut self) {
        if HOLDS.fetch_sub(1, Ordering::SeqCst) == 1 {
            if let Some(shared) = SHARED.get() {
                // A full queue needs no wake-up: the log thread is busy and sees the count.
                let _ = shared.tx.try_send(Msg::Wake);
            }
        }
    }
}

/// True while any [`FrozenHold`] lives.
pub fn held() -> bool {
    HOLDS.load(Ordering::SeqCst) > 0
}

/// Writes pending records at exit (see [`flush`]).
#[must_use = "pending records are flushed when the guard is dropped"]
#[derive(Debug)]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush(FLUSH_WAIT);
    }
}

/// Waits, at most `within`, until the log thread has written every record logged before the
/// call (records kept while frozen included); true when it did.
pub fn flush(within: Duration) -> bool {
    let Some(shared) = SHARED.get() else {
        return true;
    };
    let deadline = Instant::now() + within;
    let (ack, done) = mpsc::channel();
    let mut msg = Msg::Flush(ack);
    loop {
        match shared.tx.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                msg = m;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return false,
        }
    }
    done.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .is_ok()
}

/// Installs the logger for this process: the capture layer as the global subscriber and the log
/// thread. Keep the guard until the end of `main`. A second call changes nothing.
pub fn init() -> LogGuard {
    let mut notes = Vec::new();
    let level = match std::env::var(LEVEL_ENV) {
        Ok(v) => v.parse::<LevelFilter>().unwrap_or_else(|_| {
            notes.push(format!("{LEVEL_ENV}={v:?} is not a level; using info"));
            LevelFilter::INFO
        }),
        Err(_) => LevelFilter::INFO,
    };
    let output = match std::env::var(TARGET_ENV).as_deref() {
        Ok("journal") => Output::Journal,
        Ok("stderr") => Output::Stderr,
        Ok("auto") | Err(_) => auto_output(),
        Ok(other) => {
            notes.push(format!(
                "{TARGET_ENV}={other:?} is not auto, journal or stderr; using auto"
            ));
            auto_output()
        }
    };
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    if SHARED
        .set(Shared {
            tx,
            dropped: AtomicU64::new(0),
        })
        .is_err()
    {
        return LogGuard(());
    }
    let ansi = std::io::stderr().is_terminal();
    let spawned = std::thread::Builder::new()
        .name("quiesce-log".into())
        .spawn(move || log_thread(rx, output, ansi));
    if let Err(e) = spawned {
        eprintln!("quiesce: cannot start the log thread ({e}); logging is off");
        return LogGuard(());
    }
    let _ = tracing_subscriber::registry()
        .with(level)
        .with(Capture::new(submit))
        .try_init();
    for note in notes {
        tracing::warn!("{note}");
    }
    LogGuard(())
}

/// Offers a record to the log thread; never waits.
///
/// A record logged while a hold lives is marked delayed here, not only when the log thread
/// keeps it: the hold may end before the log thread takes the record from the queue (the thaw
/// logs "thawed" and then drops the hold at once), and such a record was still not written
/// when it was logged.
fn submit(mut record: Record) {
    if held() {
        record.delayed = true;
    }
    if let Some(shared) = SHARED.get() {
        if shared.tx.try_send(Msg::Record(Box::new(record))).is_err() {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// journald when systemd connected our stderr to the journal (it says so in `JOURNAL_STREAM`,
/// as device:inode of that stream); stderr otherwise, so that a terminal, a test harness or a
/// redirect sees the text it expects.
fn auto_output() -> Output {
    if stderr_is_journal() {
        Output::Journal
    } else {
        Output::Stderr
    }
}

fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

fn log_thread(rx: Receiver<Msg>, output: Output, ansi: bool) {
    let sink: Box<dyn Sink> = match output {
        Output::Stderr => Box::new(text::Stderr { ansi }),
        // Connecting sends a probe datagram, which may block: here, never in `init`.
        Output::Journal => match journal::Journal::connect() {
            Ok(j) => Box::new(j),
            Err(e) => {
                let mut s = text::Stderr { ansi };
                s.write(&Record::own(
                    Level::WARN,
                    format!("journald is not reachable ({e}); logging to stderr"),
                    None,
                ));
                Box::new(s)
            }
        },
    };
    let mut relay = Relay::new(sink, HELD_LIMITS);
    let queue_dropped = || {
        SHARED
            .get()
            .map_or(0, |s| s.dropped.swap(0, Ordering::Relaxed))
    };
    while let Ok(msg) = rx.recv() {
        let frozen = held();
        match msg {
            // Counted drops are only taken when they can be reported.
            Msg::Record(r) if frozen => relay.record(*r, true, 0),
            Msg::Record(r) => relay.record(*r, false, queue_dropped()),
            Msg::Wake if frozen => {}
            Msg::Wake => relay.settle(queue_dropped()),
            // The process is ending: what was kept is written even if a hold is left.
            Msg::Flush(ack) => {
                relay.settle(queue_dropped());
                let _ = ack.send(());
            }
        }
    }
}

impl Sink for Box<dyn Sink> {
    fn write(&mut self, record: &Record) {
        (**self).write(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_nest_and_the_last_one_ends_the_hold() {
        // The only unit test that takes holds: the count is ours to check.
        assert!(!held());
        let a = hold_while_frozen();
        let b = hold_while_frozen();
        drop(a);
        assert!(held());
        drop(b);
        assert!(!held());
    }

    #[test]
    fn flush_without_a_logger_returns_at_once() {
        // Unit tests install no logger: nothing to wait for.
        assert!(flush(Duration::from_millis(10)));
    }
}
