//! The capture side: a `tracing` layer that turns each event, with the fields of its spans, into
//! an owned [`Record`] that another thread can write later, in whatever form its output needs.

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record as SpanValues};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The fields operators filter on, resolved from the event and its spans (the innermost wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// `QUIESCE_SNAPSHOT_ID`: from a `snapshot_id` (or `snapshot`) field.
    pub snapshot_id: Option<String>,
    /// `QUIESCE_PHASE`: `pre`, `freeze`, `thaw`, `post`.
    pub phase: Option<String>,
    /// `QUIESCE_MOUNT`: a mount point.
    pub mount: Option<String>,
    /// `QUIESCE_HOOK`: a hook's name.
    pub hook: Option<String>,
    /// `QUIESCE_RCU`: what became of RCU grace periods for a freeze (`expedited`,
    /// `already_expedited`, `unavailable`).
    pub rcu: Option<String>,
    /// `MESSAGE_ID`: one of [`super::ids`].
    pub message_id: Option<String>,
}

impl Known {
    /// The slot a field of this name fills, if it is a known one.
    fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        match name {
            // `snapshot` is what the callback client calls it.
            "snapshot_id" | "snapshot" => Some(&mut self.snapshot_id),
            "phase" => Some(&mut self.phase),
            "mount" => Some(&mut self.mount),
            "hook" => Some(&mut self.hook),
            "rcu" => Some(&mut self.rcu),
            "message_id" => Some(&mut self.message_id),
            _ => None,
        }
    }

    /// True for the field names that have a journal field of their own.
    pub fn is_known(name: &str) -> bool {
        Known::default().slot(name).is_some()
    }
}

/// One log event, owned: everything the outputs need, nothing borrowed from the emitter.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it was logged.
    pub time: SystemTime,
    /// Its level (journal PRIORITY).
    pub level: Level,
    /// The module that logged it (journal TARGET).
    pub target: &'static str,
    /// Where the event was written in our source (journal `CODE_FILE`/`CODE_LINE`).
    pub file: Option<&'static str>,
    /// The source line, with `file`.
    pub line: Option<u32>,
    /// The formatted message (journal MESSAGE, before the other fields are appended).
    pub message: String,
    /// The fields with a journal field of their own.
    pub known: Known,
    /// The event's own fields other than `message` and `message_id`, in order, as raw text.
    pub fields: Vec<(&'static str, String)>,
    /// The span context as the text output shows it: `snapshot{snapshot_id=…}:hook{…}`.
    pub spans: String,
    /// Span fields that are not known ones (the journal output puts them in the message).
    pub span_fields: Vec<(&'static str, String)>,
    /// Set when the record was logged while filesystems were frozen: kept in memory, or at
    /// least written only after the thaw.
    pub delayed: bool,
}

impl Record {
    /// A record made by the logging edge itself (no source location, no span).
    pub fn own(level: Level, message: String, message_id: Option<&str>) -> Record {
        Record {
            time: SystemTime::now(),
            level,
            target: "quiesce::logging",
            file: None,
            line: None,
            message,
            known: Known {
                message_id: message_id.map(str::to_owned),
                ..Known::default()
            },
            fields: Vec::new(),
            spans: String::new(),
            span_fields: Vec::new(),
            delayed: false,
        }
    }

    /// The message followed by the fields that have no journal field of their own, as
    /// ` key=value`: what the journal's MESSAGE says.
    pub fn message_with_other_fields(&self) -> String {
        let mut out = self.message.clone();
        let others = self
            .fields
            .iter()
            .filter(|(k, _)| !Known::is_known(k))
            .chain(self.span_fields.iter());
        for (k, v) in others {
            let _ = write!(out, " {k}={}", render(v));
        }
        out
    }

    /// About how many bytes of memory this record holds (for the frozen-buffer bound).
    pub fn approx_bytes(&self) -> usize {
        let pairs =
            |p: &[(&str, String)]| -> usize { p.iter().map(|(k, v)| k.len() + v.len() + 32).sum() };
        let k = &self.known;
        let known = [&k.snapshot_id, &k.phase, &k.mount, &k.hook, &k.message_id]
            .iter()
            .map(|v| v.as_ref().map_or(0, |s| s.len()))
            .sum::<usize>();
        std::mem::size_of::<Record>()
            + self.message.len()
            + self.spans.len()
            + known
            + pairs(&self.fields)
            + pairs(&self.span_fields)
    }
}

/// A field value as text: bare when it is one word, quoted (Rust string syntax) otherwise, so that a
/// line of `key=value` pairs stays parseable.
pub fn render(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=');
    if plain {
        value.to_owned()
    } else {
        format!("{value:?}")
    }
}

/// Collects a value set into an optional message and `(name, text)` pairs.
#[derive(Default)]
struct Collect {
    message: Option<String>,
    pairs: Vec<(&'static str, String)>,
}

impl Collect {
    fn put(&mut self, field: &Field, text: String) {
        if field.name() == "message" {
            self.message = Some(text);
            return;
        }
        match self.pairs.iter_mut().find(|(k, _)| *k == field.name()) {
            Some(slot) => slot.1 = text,
            None => self.pairs.push((field.name(), text)),
        }
    }
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

/// A span's fields, kept in its extensions from creation on.
struct SpanFields(Vec<(&'static str, String)>);

/// The capture layer: each event becomes a [`Record`] handed to `emit`, which must not block.
pub struct Capture<F> {
    emit: F,
}

impl<F> Capture<F>
where
    F: Fn(Record) + Send + Sync + 'static,
{
    /// A layer that hands each record to `emit`.
    pub fn new(emit: F) -> Capture<F> {
        Capture { emit }
    }
}

impl<S, F> Layer<S> for Capture<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    F: Fn(Record) + Send + Sync + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut c = Collect::default();
        attrs.record(&mut c);
        span.extensions_mut().insert(SpanFields(c.pairs));
    }

    fn on_record(&self, id: &Id, values: &SpanValues<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        let Some(fields) = ext.get_mut::<SpanFields>() else {
            return;
        };
        let mut c = Collect {
            message: None,
            pairs: std::mem::take(&mut fields.0),
        };
        values.record(&mut c);
        fields.0 = c.pairs;
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut known = Known::default();
        let mut spans = String::new();
        let mut span_fields = Vec::new();
        for span in ctx
            .event_scope(event)
            .into_iter()
            .flat_map(|s| s.from_root())
        {
            if !spans.is_empty() {
                spans.push(':');
            }
            spans.push_str(span.name());
            let ext = span.extensions();
            let Some(SpanFields(pairs)) = ext.get::<SpanFields>() else {
                continue;
            };
            spans.push('{');
            for (i, (k, v)) in pairs.iter().enumerate() {
                if i > 0 {
                    spans.push(' ');
                }
                let _ = write!(spans, "{k}={}", render(v));
                match known.slot(k) {
                    Some(slot) => *slot = Some(v.clone()),
                    None => span_fields.push((*k, v.clone())),
                }
            }
            spans.push('}');
        }
        let mut c = Collect::default();
        event.record(&mut c);
        let mut fields = Vec::with_capacity(c.pairs.len());
        for (k, v) in c.pairs {
            if let Some(slot) = known.slot(k) {
                *slot = Some(v.clone());
            }
            // The id is for machines: the text output leaves it out.
            if k != "message_id" {
                fields.push((k, v));
            }
        }
        (self.emit)(Record {
            time: SystemTime::now(),
            level: *meta.level(),
            target: meta.target(),
            file: meta.file(),
            line: meta.line(),
            message: c.message.unwrap_or_default(),
            known,
            fields,
            spans,
            span_fields,
            delayed: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn capture(f: impl FnOnce()) -> Vec<Record> {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let subscriber = tracing_subscriber::registry()
            .with(Capture::new(move |r| sink.lock().unwrap().push(r)));
        tracing::subscriber::with_default(subscriber, f);
        let out = got.lock().unwrap().clone();
        out
    }

    #[test]
    fn an_event_keeps_its_message_fields_and_location() {
        let recs = capture(|| {
            tracing::warn!(
                message_id = "abc",
                count = 3,
                note = "two words",
                "hello {}",
                42
            )
        });
        assert_eq!(recs.len(), 1);
        let r = &recs[0];
        assert_eq!(r.level, Level::WARN);
        assert_eq!(r.message, "hello 42");
        assert_eq!(r.known.message_id.as_deref(), Some("abc"));
        assert_eq!(
            r.fields,
            vec![("count", "3".to_owned()), ("note", "two words".to_owned())]
        );
        assert!(r.file.unwrap().ends_with("record.rs"));
        assert!(r.line.is_some());
        assert!(r.target.starts_with("quiesce::logging"));
        assert_eq!(
            r.message_with_other_fields(),
            "hello 42 count=3 note=\"two words\""
        );
    }

    #[test]
    fn span_fields_merge_root_to_leaf_and_the_event_wins() {
        let recs = capture(|| {
            let outer = tracing::info_span!("snapshot", snapshot_id = "s1", phase = "outer");
            let _o = outer.enter();
            let inner = tracing::info_span!("hook", hook = "db", phase = "pre", extra = 7);
            let _i = inner.enter();
            tracing::info!("line one");
            tracing::info!(mount = "/data", phase = "freeze", "line two");
        });
        assert_eq!(recs.len(), 2);
        let k = &recs[0].known;
        assert_eq!(k.snapshot_id.as_deref(), Some("s1"));
        assert_eq!(k.phase.as_deref(), Some("pre"));
        assert_eq!(k.hook.as_deref(), Some("db"));
        assert_eq!(k.mount, None);
        assert_eq!(
            recs[0].spans,
            "snapshot{snapshot_id=s1 phase=outer}:hook{hook=db phase=pre extra=7}"
        );
        assert_eq!(recs[0].message_with_other_fields(), "line one extra=7");
        let k = &recs[1].known;
        assert_eq!(
            (k.phase.as_deref(), k.mount.as_deref()),
            (Some("freeze"), Some("/data"))
        );
    }

    #[test]
    fn recorded_span_values_and_quoted_values_come_out_raw() {
        let recs = capture(|| {
            let span = tracing::info_span!("snapshot", snapshot_id = tracing::field::Empty);
            span.record("snapshot_id", "late id");
            let _e = span.enter();
            tracing::info!(mount = "/mnt/a b", "x");
        });
        let k = &recs[0].known;
        assert_eq!(k.snapshot_id.as_deref(), Some("late id"));
        assert_eq!(k.mount.as_deref(), Some("/mnt/a b"));
        assert_eq!(recs[0].spans, "snapshot{snapshot_id=\"late id\"}");
    }

    #[test]
    fn the_size_estimate_grows_with_the_content() {
        let small = Record::own(Level::INFO, "a".into(), None);
        let big = Record::own(Level::INFO, "a".repeat(10_000), None);
        assert!(big.approx_bytes() >= small.approx_bytes() + 9_999);
    }
}
