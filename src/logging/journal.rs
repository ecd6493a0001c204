//! The journald output: each [`Record`] is re-emitted as a `tracing` event into a private
//! dispatcher whose only layer is `tracing_journald`, which encodes the native protocol and
//! sends the datagram (or a memfd for a large one).
//!
//! The relay's events use callsites made here, one per (target, level): the original target
//! stays the journal's `TARGET`, and since they have no file or line `tracing_journald` adds no
//! `CODE_FILE`/`CODE_LINE` of the relay; the original ones go in as plain fields instead.

use std::collections::HashMap;
use std::io;
use std::sync::OnceLock;

use tracing::callsite::{Callsite, Identifier};
use tracing::field::{FieldSet, Value};
use tracing::metadata::Kind;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Level, Metadata};
use tracing_subscriber::layer::SubscriberExt;

use super::record::Record;
use super::relay::Sink;

/// The fields of every journal record we send, in the order of the values below.
const FIELDS: &[&str] = &[
    "message",
    "MESSAGE_ID",
    "QUIESCE_SNAPSHOT_ID",
    "QUIESCE_PHASE",
    "QUIESCE_MOUNT",
    "QUIESCE_HOOK",
    "QUIESCE_RCU",
    "QUIESCE_LOGGED_AT",
    "CODE_FILE",
    "CODE_LINE",
];

/// A callsite of the relay: its metadata is set once, right after it gets its address.
struct Site {
    meta: OnceLock<Metadata<'static>>,
}

impl Callsite for Site {
    fn set_interest(&self, _: Interest) {}

    fn metadata(&self) -> &Metadata<'_> {
        self.meta.get().expect("a relay site has its metadata")
    }
}

/// One site per (target, level). Targets are the `&'static str` of our callsites, so there are
/// as many as there are modules that log: the leak is bounded.
fn make_site(target: &'static str, level: Level) -> &'static Site {
    let site: &'static Site = Box::leak(Box::new(Site {
        meta: OnceLock::new(),
    }));
    let meta = Metadata::new(
        "quiesce log record",
        target,
        level,
        None,
        None,
        None,
        FieldSet::new(FIELDS, Identifier(site)),
        Kind::EVENT,
    );
    let _ = site.meta.set(meta);
    site
}

/// Sends records to journald.
pub struct Journal {
    dispatch: Dispatch,
    sites: HashMap<(&'static str, Level), &'static Site>,
}

impl Journal {
    /// Connects to `/run/systemd/journal/socket`; fails when nothing listens there. Sends an
    /// empty datagram to check, which may block on a stuck journald: call it on the log thread.
    pub fn connect() -> io::Result<Journal> {
        let layer = tracing_journald::layer()?
            .with_field_prefix(None)
            .with_syslog_identifier("quiesce".into());
        Ok(Journal {
            dispatch: Dispatch::new(tracing_subscriber::registry().with(layer)),
            sites: HashMap::new(),
        })
    }
}

impl Sink for Journal {
    fn write(&mut self, r: &Record) {
        let site = *self
            .sites
            .entry((r.target, r.level))
            .or_insert_with(|| make_site(r.target, r.level));
        let meta: &'static Metadata<'static> =
            site.meta.get().expect("a relay site has its metadata");
        let message = r.message_with_other_fields();
        let k = &r.known;
        let logged_at = r
            .delayed
            .then(|| humantime::format_rfc3339_micros(r.time).to_string());
        let line = r.line.map(u64::from);
        let values: [Option<&dyn Value>; 10] = [
            Some(&message as &dyn Value),
            opt(&k.message_id),
            opt(&k.snapshot_id),
            opt(&k.phase),
            opt(&k.mount),
            opt(&k.hook),
            opt(&k.rcu),
            opt(&logged_at),
            r.file.as_ref().map(|f| f as &dyn Value),
            line.as_ref().map(|l| l as &dyn Value),
        ];
        let fields = meta.fields();
        let set = fields.value_set_all(&values);
        self.dispatch.event(&Event::new(meta, &set));
    }
}

/// A field that may be absent: `tracing_journald` writes nothing for `None`.
fn opt(v: &Option<String>) -> Option<&dyn Value> {
    v.as_ref().map(|s| s as &dyn Value)
}
