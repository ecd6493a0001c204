//! A hook's output, in bounded memory: the last bytes for the report, the first lines for the log.

use std::collections::VecDeque;

/// Lines longer than this are logged in pieces, so one endless line cannot grow the buffer.
const LINE_MAX: usize = 2048;
/// At most this many lines of one run go to the log.
const LOG_LINES_MAX: usize = 500;
/// At most this many bytes of one run go to the log.
const LOG_BYTES_MAX: usize = 64 * 1024;

/// What [`Capture`] hands to the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LogItem<'a> {
    /// One output line (without its newline).
    Line(&'a str),
    /// The log cap was reached: nothing more of this run is logged.
    Truncated,
}

/// Keeps the tail of a byte stream and cuts it into log lines, both bounded.
#[derive(Debug)]
pub(crate) struct Capture {
    tail: VecDeque<u8>,
    tail_max: usize,
    total: u64,
    line: Vec<u8>,
    logged_lines: usize,
    logged_bytes: usize,
    log_closed: bool,
}

impl Capture {
    /// Keeps the last `tail_max` bytes.
    pub fn new(tail_max: usize) -> Self {
        Capture {
            tail: VecDeque::with_capacity(tail_max),
            tail_max,
            total: 0,
            line: Vec::new(),
            logged_lines: 0,
            logged_bytes: 0,
            log_closed: false,
        }
    }

    /// Adds a chunk of output; complete lines go to `log` until the log cap.
    pub fn push(&mut self, chunk: &[u8], log: &mut impl FnMut(LogItem<'_>)) {
        self.total += chunk.len() as u64;
        if chunk.len() >= self.tail_max {
            self.tail.clear();
            self.tail.extend(&chunk[chunk.len() - self.tail_max..]);
        } else {
            self.tail.extend(chunk);
            let excess = self.tail.len().saturating_sub(self.tail_max);
            self.tail.drain(..excess);
        }
        if self.log_closed {
            return;
        }
        for piece in chunk.split_inclusive(|&b| b == b'\n') {
            let (body, ended) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            let mut body = body;
            while self.line.len() + body.len() > LINE_MAX {
                let take = LINE_MAX - self.line.len();
                self.line.extend_from_slice(&body[..take]);
                body = &body[take..];
                self.emit(log);
                if self.log_closed {
                    return;
                }
            }
            self.line.extend_from_slice(body);
            if ended {
                self.emit(log);
                if self.log_closed {
                    return;
                }
            }
        }
    }

    /// Logs a last line that had no newline.
    pub fn finish(&mut self, log: &mut impl FnMut(LogItem<'_>)) {
        if !self.log_closed && !self.line.is_empty() {
            self.emit(log);
        }
    }

    fn emit(&mut self, log: &mut impl FnMut(LogItem<'_>)) {
        if self.logged_lines >= LOG_LINES_MAX || self.logged_bytes >= LOG_BYTES_MAX {
            self.log_closed = true;
            self.line = Vec::new();
            log(LogItem::Truncated);
            return;
        }
        let bytes = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        log(LogItem::Line(&String::from_utf8_lossy(bytes)));
        self.logged_lines += 1;
        self.logged_bytes += self.line.len() + 1;
        self.line.clear();
    }

    /// Total bytes seen.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The kept tail as text. When the stream was cut, a multi-byte character cut at the front
    /// is dropped rather than shown as a replacement character.
    pub fn tail_text(&self) -> String {
        let (a, b) = self.tail.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        let mut start = 0;
        if self.total > self.tail.len() as u64 {
            while start < 3 && bytes.get(start).is_some_and(|&b| b & 0xC0 == 0x80) {
                start += 1;
            }
        }
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]], tail: usize) -> (Capture, Vec<String>) {
        let mut c = Capture::new(tail);
        let mut lines = Vec::new();
        let mut log = |item: LogItem<'_>| {
            lines.push(match item {
                LogItem::Line(l) => l.to_owned(),
                LogItem::Truncated => "<truncated>".to_owned(),
            })
        };
        for chunk in chunks {
            c.push(chunk, &mut log);
        }
        c.finish(&mut log);
        (c, lines)
    }

    #[test]
    fn lines_across_chunks() {
        let (c, lines) = run(&[b"a\nb", b"c\r\n", b"\nlast"], 100);
        assert_eq!(lines, ["a", "bc", "", "last"]);
        assert_eq!(c.tail_text(), "a\nbc\r\n\nlast");
        assert_eq!(c.total(), 11);
    }

    #[test]
    fn tail_keeps_the_last_bytes_whatever_the_chunking() {
        let data: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        for size in [1, 7, 100, 4096, 5000, 10_000] {
            let chunks: Vec<&[u8]> = data.chunks(size).collect();
            let (c, _) = run(&chunks, 4096);
            assert_eq!(
                c.tail_text().as_bytes(),
                &data[data.len() - 4096..],
                "chunk {size}"
            );
            assert_eq!(c.total(), 10_000);
        }
    }

    #[test]
    fn cut_character_is_dropped_not_mangled() {
        // "é" is two bytes; a 5-byte tail of "xé1234" starts inside it.
        let (c, _) = run(&["xé1234".as_bytes()], 5);
        assert_eq!(c.tail_text(), "1234");
        let (c, _) = run(&["é1234".as_bytes()], 6);
        assert_eq!(c.tail_text(), "é1234");
    }

    #[test]
    fn log_is_capped() {
        let many = "line\n".repeat(LOG_LINES_MAX + 50);
        let (_, lines) = run(&[many.as_bytes()], 4096);
        assert_eq!(lines.len(), LOG_LINES_MAX + 1);
        assert_eq!(lines.last().unwrap(), "<truncated>");

        let long = vec![b'x'; LOG_BYTES_MAX * 2];
        let (_, lines) = run(&[&long], 4096);
        assert!(lines[..lines.len() - 1].iter().all(|l| l.len() == LINE_MAX));
        assert_eq!(lines.last().unwrap(), "<truncated>");
        let logged: usize = lines.iter().map(|l| l.len()).sum();
        assert!(logged <= LOG_BYTES_MAX + LINE_MAX + 16);
    }
}
