//! The plain stderr output, for runs without a journal: one line per record, in about the form
//! `tracing_subscriber::fmt` prints (time, level, span context, message, fields).

use std::fmt::Write as _;
use std::io::Write;

use tracing::Level;

use super::record::{render, Record};
use super::relay::Sink;

/// Writes records to stderr as text, with colours only on a terminal.
pub struct Stderr {
    pub ansi: bool,
}

impl Sink for Stderr {
    fn write(&mut self, record: &Record) {
        let line = format_line(record, self.ansi);
        // Nowhere to report a failed write to stderr.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// One record as a line of text (newline included).
pub fn format_line(r: &Record, ansi: bool) -> String {
    let time = humantime::format_rfc3339_micros(r.time);
    let level = match r.level {
        Level::ERROR => ("ERROR", "\x1b[31m"),
        Level::WARN => (" WARN", "\x1b[33m"),
        Level::INFO => (" INFO", "\x1b[32m"),
        Level::DEBUG => ("DEBUG", "\x1b[34m"),
        _ => ("TRACE", "\x1b[35m"),
    };
    let mut out = String::with_capacity(96 + r.message.len());
    if ansi {
        let _ = write!(out, "\x1b[2m{time}\x1b[0m {}{}\x1b[0m ", level.1, level.0);
    } else {
        let _ = write!(out, "{time} {} ", level.0);
    }
    if !r.spans.is_empty() {
        out.push_str(&r.spans);
        out.push_str(": ");
    }
    out.push_str(&r.message);
    for (k, v) in &r.fields {
        let _ = write!(out, " {k}={}", render(v));
    }
    if r.delayed {
        // The time above is when it happened; say why it shows up late.
        out.push_str(" (kept while frozen)");
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_time_level_spans_message_and_fields() {
        let mut r = Record::own(Level::WARN, "hook failed".into(), Some("x"));
        r.spans = "snapshot{snapshot_id=abc}:hook{hook=db phase=pre}".into();
        r.fields = vec![("duration_ms", "12".into()), ("why", "exit 1".into())];
        let line = format_line(&r, false);
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{line}");
        assert_eq!(
            rest,
            " WARN snapshot{snapshot_id=abc}:hook{hook=db phase=pre}: hook failed \
             duration_ms=12 why=\"exit 1\"\n"
        );
        assert!(format_line(&r, true).contains("\x1b[33m"));
    }
}
