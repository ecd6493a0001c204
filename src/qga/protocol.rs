//! The QEMU guest agent protocol, pure: bytes in, requests out ([`Framer`], [`decode`]), the
//! commands quiesce serves ([`Command`]), and replies as bytes ([`Reply::encode`]). No IO.

use serde_json::{Map, Value};

/// The largest request kept; a longer one is answered [`Frame::TooLarge`] at once and skipped
/// to its end without being stored.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The byte that resets the stream: it discards a partial request (host to guest) and comes
/// before the reply of `guest-sync-delimited` (guest to host).
pub const DELIMITER: u8 = 0xFF;

/// What the framer cut out of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One complete JSON value (an object or an array), or a stray token outside one.
    Request(Vec<u8>),
    /// A request above [`MAX_REQUEST`]; the rest of it is skipped.
    TooLarge,
}

/// Cuts a byte stream into JSON values by counting brackets outside strings (what qemu's
/// json-streamer does), with a bounded buffer.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Open `{`/`[` of the value being read.
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Reading a token that is not inside brackets (e.g. `hello`, `123`).
    stray: bool,
    /// Skipping the rest of a request that was too large.
    skipping: bool,
}

impl Framer {
    /// A framer at the start of a stream.
    pub fn new() -> Framer {
        Framer::default()
    }

    /// Forgets any partial request (0xFF, or a new host on the port).
    pub fn reset(&mut self) {
        *self = Framer {
            buf: std::mem::take(&mut self.buf),
            ..Framer::default()
        };
        self.buf.clear();
        // A megabyte of garbage must not keep a megabyte.
        self.buf.shrink_to(4096);
    }

    /// True when no request is partly read.
    pub fn idle(&self) -> bool {
        self.buf.is_empty() && !self.skipping && self.depth == 0 && !self.stray
    }

    /// Feeds bytes; returns the frames they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == DELIMITER {
                self.reset();
                continue;
            }
            if self.stray {
                // A string outside brackets (`"a b{"`) is one token, as qemu's lexer reads it.
                if self.in_string {
                    self.keep(b, &mut out);
                    self.string_byte(b);
                    continue;
                }
                if b == b'"' {
                    self.keep(b, &mut out);
                    self.in_string = true;
                    continue;
                }
                if b.is_ascii_whitespace() || b == b'{' || b == b'[' {
                    self.stray = false;
                    if self.skipping {
                        self.skipping = false;
                    } else {
                        out.push(Frame::Request(std::mem::take(&mut self.buf)));
                    }
                    if b.is_ascii_whitespace() {
                        continue;
                    }
                } else {
                    self.keep(b, &mut out);
                    continue;
                }
            }
            if self.depth == 0 {
                match b {
                    b'{' | b'[' => {
                        self.depth = 1;
                        self.keep(b, &mut out);
                    }
                    _ if b.is_ascii_whitespace() => {}
                    _ => {
                        self.stray = true;
                        self.in_string = b == b'"';
                        self.keep(b, &mut out);
                    }
                }
                continue;
            }
            self.keep(b, &mut out);
            if self.in_string {
                self.string_byte(b);
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        if self.skipping {
                            self.skipping = false;
                        } else {
                            out.push(Frame::Request(std::mem::take(&mut self.buf)));
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Follows a byte inside a string: escapes, and the closing quote.
    fn string_byte(&mut self, b: u8) {
        if self.escaped {
            self.escaped = false;
        } else if b == b'\\' {
            self.escaped = true;
        } else if b == b'"' {
            self.in_string = false;
        }
    }

    /// Stores a byte of the current request, or skips it past the limit.
    fn keep(&mut self, b: u8, out: &mut Vec<Frame>) {
        if self.skipping {
            return;
        }
        if self.buf.len() >= MAX_REQUEST {
            out.push(Frame::TooLarge);
            self.buf.clear();
            self.buf.shrink_to(4096);
            self.skipping = true;
            return;
        }
        self.buf.push(b);
    }
}

/// A well-formed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub execute: String,
    pub arguments: Map<String, Value>,
    /// Echoed in the reply.
    pub id: Option<Value>,
}

/// An error reply: qemu's class (`GenericError`, `CommandNotFound`) and description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub class: &'static str,
    pub desc: String,
}

impl Error {
    /// `GenericError` with `desc`.
    pub fn generic(desc: impl Into<String>) -> Error {
        Error {
            class: "GenericError",
            desc: desc.into(),
        }
    }

    /// `CommandNotFound` for a command nobody serves.
    pub fn not_found(name: &str) -> Error {
        Error {
            class: "CommandNotFound",
            desc: format!("The command {name} has not been found"),
        }
    }

    /// `CommandNotFound` for a command refused while frozen (qemu-ga's words).
    pub fn frozen(name: &str) -> Error {
        Error {
            class: "CommandNotFound",
            desc: format!("Command {name} has been disabled: the agent is in frozen state"),
        }
    }
}

/// One reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub body: Result<Value, Error>,
    pub id: Option<Value>,
    /// `guest-sync-delimited`: 0xFF comes first.
    pub delimited: bool,
}

impl Reply {
    /// A successful reply to `req`.
    pub fn ok(req: &Request, value: Value) -> Reply {
        Reply {
            body: Ok(value),
            id: req.id.clone(),
            delimited: false,
        }
    }

    /// An error reply to `req`.
    pub fn err(req: &Request, e: Error) -> Reply {
        Reply {
            body: Err(e),
            id: req.id.clone(),
            delimited: false,
        }
    }

    /// An error reply to input that was no request (no id to echo).
    pub fn bad_input(e: Error) -> Reply {
        Reply {
            body: Err(e),
            id: None,
            delimited: false,
        }
    }

    /// One line of compact JSON ending in `\n`, after 0xFF when delimited.
    pub fn encode(&self) -> Vec<u8> {
        let mut obj = Map::new();
        match &self.body {
            Ok(v) => {
                obj.insert("return".into(), v.clone());
            }
            Err(e) => {
                let mut err = Map::new();
                err.insert("class".into(), Value::String(e.class.into()));
                err.insert("desc".into(), Value::String(e.desc.clone()));
                obj.insert("error".into(), Value::Object(err));
            }
        }
        if let Some(id) = &self.id {
            obj.insert("id".into(), id.clone());
        }
        let mut out = Vec::new();
        if self.delimited {
            out.push(DELIMITER);
        }
        // serde_json's compact form escapes control characters, so `\n` ends the line only.
        out.extend_from_slice(
            serde_json::to_string(&Value::Object(obj))
                .unwrap_or_default()
                .as_bytes(),
        );
        out.push(b'\n');
        out
    }
}

/// Checks a frame the way qemu's QMP dispatcher does: a JSON object with `execute` (a string),
/// optional `arguments` (an object) and optional `id`, nothing else.
pub fn decode(frame: &[u8]) -> Result<Request, Reply> {
    let value: Value = serde_json::from_slice(frame).map_err(|e| {
        Reply::bad_input(Error::generic(format!(
            "JSON parse error, {}",
            parse_error(&e)
        )))
    })?;
    let Value::Object(mut obj) = value else {
        return Err(Reply::bad_input(Error::generic(
            "QMP input must be a JSON object",
        )));
    };
    let id = obj.remove("id");
    let fail = |desc: String| Reply {
        body: Err(Error::generic(desc)),
        id: id.clone(),
        delimited: false,
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "execute" | "arguments"))
    {
        return Err(fail(format!("QMP input member '{k}' is unexpected")));
    }
    let execute = match obj.remove("execute") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(fail("QMP input member 'execute' must be a string".into())),
        None => return Err(fail("QMP input lacks member 'execute'".into())),
    };
    let arguments = match obj.remove("arguments") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(fail(
                "QMP input member 'arguments' must be an object".into(),
            ))
        }
    };
    Ok(Request {
        execute,
        arguments,
        id,
    })
}

fn parse_error(e: &serde_json::Error) -> String {
    // serde_json says "... at line 1 column 12": the position means nothing on a stream.
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The commands quiesce serves itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Sync {
        id: i64,
        delimited: bool,
    },
    Ping,
    Info,
    FreezeStatus,
    /// `guest-fsfreeze-freeze` (`None`) or `guest-fsfreeze-freeze-list` (its mount points,
    /// `None` when it names none).
    Freeze {
        mountpoints: Option<Vec<String>>,
    },
    Thaw,
}

/// Every command quiesce serves, as `guest-info` lists them.
pub const SERVED: [&str; 8] = [
    "guest-sync",
    "guest-sync-delimited",
    "guest-ping",
    "guest-info",
    "guest-fsfreeze-status",
    "guest-fsfreeze-freeze",
    "guest-fsfreeze-freeze-list",
    "guest-fsfreeze-thaw",
];

/// The commands answered while frozen (qemu-ga's frozen-mode allowlist, as the contract
/// lists it); every other one, served or relayed, is refused.
pub fn allowed_while_frozen(name: &str) -> bool {
    matches!(
        name,
        "guest-sync"
            | "guest-sync-delimited"
            | "guest-ping"
            | "guest-info"
            | "guest-fsfreeze-status"
            | "guest-fsfreeze-thaw"
    )
}

/// The command of a request: `Ok(None)` for one quiesce does not serve (relayed or
/// CommandNotFound), `Err` for bad arguments (qemu-ga's words).
pub fn command(req: &Request) -> Result<Option<Command>, Error> {
    let args = &req.arguments;
    let only = |allowed: &[&str]| -> Result<(), Error> {
        match args.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(Error::generic(format!("Parameter '{k}' is unexpected"))),
            None => Ok(()),
        }
    };
    let cmd = match req.execute.as_str() {
        name @ ("guest-sync" | "guest-sync-delimited") => {
            only(&["id"])?;
            let id = match args.get("id") {
                None => return Err(Error::generic("Parameter 'id' is missing")),
                Some(v) => v.as_i64().ok_or_else(|| {
                    Error::generic("Invalid parameter type for 'id', expected: integer")
                })?,
            };
            Command::Sync {
                id,
                delimited: name == "guest-sync-delimited",
            }
        }
        "guest-ping" => {
            only(&[])?;
            Command::Ping
        }
        "guest-info" => {
            only(&[])?;
            Command::Info
        }
        "guest-fsfreeze-status" => {
            only(&[])?;
            Command::FreezeStatus
        }
        "guest-fsfreeze-freeze" => {
            only(&[])?;
            Command::Freeze { mountpoints: None }
        }
        "guest-fsfreeze-freeze-list" => {
            only(&["mountpoints"])?;
            let mountpoints = match args.get("mountpoints") {
                None | Some(Value::Null) => None,
                Some(Value::Array(items)) => Some(
                    items
                        .iter()
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| {
                            Error::generic(
                                "Invalid parameter type for 'mountpoints[0]', expected: string",
                            )
                        })?,
                ),
                Some(_) => {
                    return Err(Error::generic(
                        "Invalid parameter type for 'mountpoints', expected: array",
                    ))
                }
            };
            Command::Freeze { mountpoints }
        }
        "guest-fsfreeze-thaw" => {
            only(&[])?;
            Command::Thaw
        }
        _ => return Ok(None),
    };
    Ok(Some(cmd))
}

/// `guest-info`'s answer: quiesce's commands (all enabled), then those of the relayed
/// qemu-ga that quiesce does not serve itself.
pub fn info(version: &str, relayed: &[Value]) -> Value {
    let mut list: Vec<Value> = SERVED
        .iter()
        .map(|name| serde_json::json!({"name": name, "enabled": true, "success-response": true}))
        .collect();
    for c in relayed {
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        if !name.is_empty() && !SERVED.contains(&name) {
            list.push(c.clone());
        }
    }
    serde_json::json!({"version": version, "supported_commands": list})
}

/// Answers one frame when the answer needs nothing but the protocol: malformed input, bad
/// arguments, sync, ping, refusals while frozen. `Err(request, command)` is left to the shell
/// (the agent's commands and relayed ones).
pub fn answer_locally(frame: &Frame, frozen: bool) -> Result<Reply, (Request, Option<Command>)> {
    let bytes = match frame {
        Frame::TooLarge => {
            return Ok(Reply::bad_input(Error::generic(format!(
                "request larger than {MAX_REQUEST} bytes: discarded up to its end"
            ))))
        }
        Frame::Request(b) => b,
    };
    let req = match decode(bytes) {
        Ok(r) => r,
        Err(reply) => return Ok(reply),
    };
    if frozen && !allowed_while_frozen(&req.execute) {
        return Ok(Reply::err(&req, Error::frozen(&req.execute)));
    }
    match command(&req) {
        Err(e) => Ok(Reply::err(&req, e)),
        Ok(Some(Command::Sync { id, delimited })) => Ok(Reply {
            body: Ok(Value::from(id)),
            id: req.id.clone(),
            delimited,
        }),
        Ok(Some(Command::Ping)) => Ok(Reply::ok(&req, Value::Object(Map::new()))),
        Ok(cmd) => Err((req, cmd)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&[u8]]) -> Vec<Frame> {
        let mut f = Framer::new();
        chunks.iter().flat_map(|c| f.push(c)).collect()
    }

    fn req(s: &str) -> Frame {
        Frame::Request(s.as_bytes().to_vec())
    }

    fn line(frame: &Frame, frozen: bool) -> String {
        let reply = answer_locally(frame, frozen).expect("answered locally");
        String::from_utf8_lossy(&reply.encode()).into_owned()
    }

    #[test]
    fn several_requests_in_one_write_and_one_across_writes() {
        assert_eq!(
            frames(&[b"{\"execute\":\"guest-ping\"}\n{\"execute\":\"guest-sync\",\"arguments\":{\"id\":1}}"]),
            [
                req("{\"execute\":\"guest-ping\"}"),
                req("{\"execute\":\"guest-sync\",\"arguments\":{\"id\":1}}")
            ]
        );
        assert_eq!(
            frames(&[b"{\"execute\":\"gu", b"est-ping\"", b"}"]),
            [req("{\"execute\":\"guest-ping\"}")]
        );
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        assert_eq!(
            frames(&[br#"{"execute":"x}{\"]","id":"a\\"}"#]),
            [req(r#"{"execute":"x}{\"]","id":"a\\"}"#)]
        );
    }

    #[test]
    fn ff_discards_a_partial_request() {
        assert_eq!(
            frames(&[
                b"{\"execute\":\"guest-pi",
                b"\xff",
                b"{\"execute\":\"guest-ping\"}"
            ]),
            [req("{\"execute\":\"guest-ping\"}")]
        );
        // Also inside a string, and alone.
        assert_eq!(frames(&[b"{\"a\":\"\xff{}"]), [req("{}")]);
        assert!(frames(&[b"\xff\xff"]).is_empty());
    }

    #[test]
    fn stray_tokens_are_frames_of_their_own() {
        assert_eq!(
            frames(&[b"hello\n123 {}"]),
            [req("hello"), req("123"), req("{}")]
        );
        assert_eq!(frames(&[b"abc{}"]), [req("abc"), req("{}")]);
        assert_eq!(
            frames(&[b"\"a {\\\" b\" {}"]),
            [req("\"a {\\\" b\""), req("{}")]
        );
    }

    #[test]
    fn a_megabyte_of_garbage_costs_nothing_lasting() {
        let mut f = Framer::new();
        let mut got = f.push(b"{\"execute\":\"");
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..16 {
            got.extend(f.push(&chunk));
        }
        assert_eq!(got, [Frame::TooLarge]);
        assert!(
            f.buf.capacity() <= MAX_REQUEST + 4096,
            "{}",
            f.buf.capacity()
        );
        // The oversized request ends; the next one is served.
        got = f.push(b"\"}{\"execute\":\"guest-ping\"}");
        assert_eq!(got, [req("{\"execute\":\"guest-ping\"}")]);
        // Without a closing brace, 0xFF ends the skipping.
        let mut f = Framer::new();
        f.push(b"{");
        assert_eq!(f.push(&vec![b'['; 2 * MAX_REQUEST]), [Frame::TooLarge]);
        assert_eq!(
            f.push(b"\xff{\"execute\":\"guest-ping\"}"),
            [req("{\"execute\":\"guest-ping\"}")]
        );
        // A token without brackets is cut at the limit too.
        let mut f = Framer::new();
        assert_eq!(f.push(&vec![b'x'; 16 * MAX_REQUEST]), [Frame::TooLarge]);
        assert!(f.buf.capacity() <= MAX_REQUEST + 4096);
        assert_eq!(f.push(b" {}"), [req("{}")]);
    }

    #[test]
    fn replies_are_one_compact_line_with_the_id() {
        let f = req(r#"{"execute":"guest-ping","id":"abc"}"#);
        assert_eq!(line(&f, false), "{\"id\":\"abc\",\"return\":{}}\n");
        let f = req(r#"{"execute":"guest-sync","arguments":{"id":123}}"#);
        assert_eq!(line(&f, false), "{\"return\":123}\n");
        let f = req(r#"{"execute":"guest-sync-delimited","arguments":{"id":-7}}"#);
        let reply = answer_locally(&f, false).unwrap().encode();
        assert_eq!(reply, b"\xff{\"return\":-7}\n");
        // A newline inside a string is escaped: still one line.
        let f = req("{\"execute\":\"guest-ping\",\"id\":\"a\\nb\"}");
        assert_eq!(line(&f, false).matches('\n').count(), 1);
    }

    #[test]
    fn malformed_input_gets_qemu_ga_s_errors() {
        for (input, desc) in [
            ("{\"execute\":}", "JSON parse error"),
            ("hello", "JSON parse error"),
            ("123", "QMP input must be a JSON object"),
            ("[1,2]", "QMP input must be a JSON object"),
            ("{\"foo\":1}", "QMP input member 'foo' is unexpected"),
            (
                "{\"execute\":1}",
                "QMP input member 'execute' must be a string",
            ),
            ("{}", "QMP input lacks member 'execute'"),
            (
                "{\"execute\":\"guest-ping\",\"arguments\":[]}",
                "QMP input member 'arguments' must be an object",
            ),
            (
                "{\"execute\":\"guest-sync\",\"arguments\":{}}",
                "Parameter 'id' is missing",
            ),
            (
                "{\"execute\":\"guest-sync\",\"arguments\":{\"id\":\"a\"}}",
                "Invalid parameter type for 'id', expected: integer",
            ),
            (
                "{\"execute\":\"guest-ping\",\"arguments\":{\"x\":1}}",
                "Parameter 'x' is unexpected",
            ),
        ] {
            let out = line(&req(input), false);
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["error"]["class"], "GenericError", "{input}: {out}");
            let got = v["error"]["desc"].as_str().unwrap();
            assert!(got.starts_with(desc), "{input}: {got}");
        }
        assert!(line(&Frame::TooLarge, false).contains("GenericError"));
    }

    #[test]
    fn frozen_mode_refuses_all_but_the_allowlist() {
        let f = req(r#"{"execute":"guest-get-osinfo","id":1}"#);
        assert_eq!(
            line(&f, true),
            "{\"error\":{\"class\":\"CommandNotFound\",\"desc\":\"Command guest-get-osinfo has been disabled: the agent is in frozen state\"},\"id\":1}\n"
        );
        let f = req(r#"{"execute":"guest-fsfreeze-freeze"}"#);
        assert!(line(&f, true).contains("frozen state"));
        let f = req(r#"{"execute":"guest-ping"}"#);
        assert_eq!(line(&f, true), "{\"return\":{}}\n");
        for name in ["guest-info", "guest-fsfreeze-status", "guest-fsfreeze-thaw"] {
            let f = req(&format!("{{\"execute\":\"{name}\"}}"));
            assert!(answer_locally(&f, true).is_err(), "{name} is for the shell");
        }
    }

    #[test]
    fn commands_and_their_arguments() {
        let r = |s: &str| decode(s.as_bytes()).unwrap();
        assert_eq!(
            command(&r(r#"{"execute":"guest-fsfreeze-freeze","arguments":{}}"#)).unwrap(),
            Some(Command::Freeze { mountpoints: None })
        );
        assert_eq!(
            command(&r(
                r#"{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":["/a","/b"]}}"#
            ))
            .unwrap(),
            Some(Command::Freeze {
                mountpoints: Some(vec!["/a".into(), "/b".into()])
            })
        );
        assert!(command(&r(
            r#"{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":[1]}}"#
        ))
        .is_err());
        assert_eq!(
            command(&r(r#"{"execute":"guest-get-osinfo"}"#)).unwrap(),
            None
        );
        assert_eq!(
            command(&r(r#"{"execute":"guest-fsfreeze-thaw","arguments":{}}"#)).unwrap(),
            Some(Command::Thaw)
        );
    }

    #[test]
    fn info_lists_served_then_relayed_commands() {
        let relayed = vec![
            serde_json::json!({"name": "guest-fsfreeze-freeze", "enabled": false, "success-response": true}),
            serde_json::json!({"name": "guest-get-osinfo", "enabled": true, "success-response": true}),
        ];
        let v = info("1.2.3", &relayed);
        let names: Vec<&str> = v["supported_commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), SERVED.len() + 1);
        assert_eq!(names.last(), Some(&"guest-get-osinfo"));
        assert!(v["supported_commands"][5]["enabled"].as_bool().unwrap());
    }

    /// A small deterministic generator (splitmix64): random streams without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = self.0;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random streams of the bytes that matter (brackets, quotes, escapes, 0xFF, spaces,
    /// letters), some long enough to pass the limit: however they are cut into writes, the
    /// frames are the same, the buffer stays bounded, and every frame gets exactly one reply
    /// line.
    #[test]
    fn framing_does_not_depend_on_how_the_stream_is_cut() {
        const ALPHABET: &[u8] = b"{}[]\"\\\xff :,ax1\n";
        let mut rng = Rng(7);
        for round in 0..300 {
            let len = if round % 50 == 0 {
                3 * MAX_REQUEST
            } else {
                rng.below(400)
            };
            let stream: Vec<u8> = (0..len)
                .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                .collect();
            let whole = Framer::new().push(&stream);
            let mut f = Framer::new();
            let mut cut = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len().min(5000));
                cut.extend(f.push(&rest[..n]));
                assert!(f.buf.len() <= MAX_REQUEST);
                rest = &rest[n..];
            }
            assert_eq!(cut, whole, "round {round}");
            for frame in &whole {
                let line = match answer_locally(frame, round % 2 == 0) {
                    Ok(reply) => reply.encode(),
                    Err((req, _)) => Reply::ok(&req, Value::Null).encode(),
                };
                let body = line.strip_prefix(&[DELIMITER][..]).unwrap_or(&line);
                assert_eq!(body.iter().filter(|&&b| b == b'\n').count(), 1);
                assert!(body.ends_with(b"}\n"));
                assert!(!body.contains(&DELIMITER));
            }
        }
    }
}
