//! Places in the YAML text, for errors found after parsing (a hook's `pre:`, an `env` key).
//!
//! Rather than matching lines by hand, the locator walks the document again with the real YAML
//! parser and stops at the wanted node by raising an error there: serde_yaml attaches the
//! position of the node being read to the error, so flow style (`{name: x, pre: [...]}`),
//! quoting, comments and odd indentation all come out right.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, VariantAccess, Visitor};

use super::ConfigError;

/// One step of a path into the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// The value of this key of a mapping; as the last step, the key itself.
    Key(&'a str),
    /// This element of a sequence (0-based).
    Index(usize),
}

/// 1-based line and column of the node at `path` in `text`: the key itself when the last step
/// is a key, else the node (a sequence element, a mapping's first key). `None` when the text
/// does not parse or has no such node.
pub fn locate(text: &str, path: &[Step<'_>]) -> Option<(usize, usize)> {
    let de = serde_yaml::Deserializer::from_str(text);
    match (Probe { path }).deserialize(de) {
        Ok(()) => None,
        // The message may carry serde_yaml's path prefix (`hooks[0]: ...`).
        Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| (l.line(), l.column())),
        Err(_) => None,
    }
}

/// One config file: its name and text, the unit errors are reported against.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: PathBuf,
    pub text: String,
}

impl Source {
    pub fn new(file: &Path, text: impl Into<String>) -> Source {
        Source {
            file: file.to_path_buf(),
            text: text.into(),
        }
    }

    /// Where `path` is, or failing that the nearest ancestor that is there (never the whole
    /// document: a setting left out is reported at 1:1).
    pub fn place(&self, path: &[Step<'_>]) -> (usize, usize) {
        (1..=path.len())
            .rev()
            .find_map(|n| locate(&self.text, &path[..n]))
            .unwrap_or((1, 1))
    }

    /// An error at [`Source::place`] of `path`.
    pub fn error(&self, path: &[Step<'_>], message: impl Into<String>) -> ConfigError {
        let (line, column) = self.place(path);
        self.error_at(line, column, message)
    }

    /// An error at a known place.
    pub fn error_at(&self, line: usize, column: usize, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// The message of the error that marks the place; never shown to anyone.
const FOUND: &str = "\u{1}quiesce-locate-found";

fn found<E: de::Error>() -> E {
    E::custom(FOUND)
}

/// Walks to the node at `path`; raises [`FOUND`] while reading it.
struct Probe<'p> {
    path: &'p [Step<'p>],
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// The visitor of [`Probe`]: with an empty path every node is the one (error); else it steps
/// into the mapping or sequence the path names, and anything else means "not here" (`Ok`).
impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.scalar()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<(), E> {
        self.scalar()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged node (`!tag value`): the tag comes as the variant, the node as its content,
        // which must be read (serde_yaml panics on a half-read tagged node).
        let (IgnoredAny, content) = data.variant()?;
        content.newtype_variant_seed(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(found());
        };
        let Step::Index(index) = *first else {
            return Ok(());
        };
        for _ in 0..index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Probe { path: rest })?;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(found());
        };
        let Step::Key(key) = *first else {
            return Ok(());
        };
        let seed = KeyProbe {
            key,
            last: rest.is_empty(),
        };
        while let Some(matched) = map.next_key_seed(seed)? {
            if matched {
                return map.next_value_seed(Probe { path: rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

impl Probe<'_> {
    fn scalar<E: de::Error>(&self) -> Result<(), E> {
        if self.path.is_empty() {
            Err(found())
        } else {
            Ok(())
        }
    }
}

/// Reads one mapping key: `true` when it is the wanted one; raises [`FOUND`] there when the
/// key itself is the place.
#[derive(Clone, Copy)]
struct KeyProbe<'k> {
    key: &'k str,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for KeyProbe<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyProbe<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match (v == self.key, self.last) {
            (true, true) => Err(found()),
            (matched, _) => Ok(matched),
        }
    }

    // Keys that are not strings are never the wanted one.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_ignored_any(IgnoredAny).map(|_| false)
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_ignored_any(IgnoredAny).map(|_| false)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<bool, A::Error> {
        IgnoredAny.visit_enum(data).map(|_| false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| false)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<bool, A::Error> {
        IgnoredAny.visit_map(map).map(|_| false)
    }
}

#[cfg(test)]
mod tests {
    use super::Step::{Index, Key};
    use super::*;

    const TEXT: &str = "\
# a comment with pre: in it
listen: 127.0.0.1:7380
freeze:
  timeout: 10s
hooks:
  - name: a
    timeout: 5s
    pre: [/a, pre]
  -   name: b
      post:
        - /b
        - post
  - {name: c, pre: [/c], env: {X: y, \"Q\": z}}
  - name: d
    env:
      A: 1
";

    #[test]
    fn finds_keys_in_block_style() {
        assert_eq!(locate(TEXT, &[Key("listen")]), Some((2, 1)));
        assert_eq!(locate(TEXT, &[Key("freeze"), Key("timeout")]), Some((4, 3)));
        assert_eq!(
            locate(TEXT, &[Key("hooks"), Index(0), Key("timeout")]),
            Some((7, 5))
        );
        assert_eq!(
            locate(TEXT, &[Key("hooks"), Index(0), Key("pre")]),
            Some((8, 5))
        );
        assert_eq!(
            locate(TEXT, &[Key("hooks"), Index(1), Key("post")]),
            Some((10, 7))
        );
        assert_eq!(
            locate(TEXT, &[Key("hooks"), Index(3), Key("env"), Key("A")]),
            Some((16, 7))
        );
    }

    #[test]
    fn finds_sequence_elements_and_hooks() {
        // A hook is its mapping, which starts at its first key.
        assert_eq!(locate(TEXT, &[Key("hooks"), Index(0)]), Some((6, 5)));
        assert_eq!(locate(TEXT, &[Key("hooks"), Index(1)]), Some((9, 7)));
        assert_eq!(
            locate(TEXT, &[Key("hooks"), Index(1), Key("post"), Index(1)]),
            Some((12, 11))
        );
        assert_eq!(
            locate(TEXT, &[Key("hooks"), Index(0), Key("pre"), Index(1)]),
            Some((8, 15))
        );
    }

    #[test]
    fn finds_keys_in_flow_style() {
        assert_eq!(locate(TEXT, &[Key("hooks"), Index(2)]), Some((13, 5)));
        assert_eq!(
            locate(TEXT, &[Key("hooks"), Index(2), Key("pre")]),
            Some((13, 15))
        );
        assert_eq!(
            locate(TEXT, &[Key("hooks"), Index(2), Key("env"), Key("Q")]),
            Some((13, 38))
        );
    }

    #[test]
    fn the_root_and_what_is_not_there() {
        assert_eq!(locate(TEXT, &[]), Some((2, 1)));
        assert_eq!(locate(TEXT, &[Key("state_dir")]), None);
        assert_eq!(locate(TEXT, &[Key("hooks"), Index(9)]), None);
        assert_eq!(locate(TEXT, &[Key("hooks"), Key("x")]), None);
        assert_eq!(locate(TEXT, &[Key("listen"), Key("x")]), None);
        assert_eq!(locate(TEXT, &[Key("hooks"), Index(0), Key("env")]), None);
        assert_eq!(locate("", &[Key("listen")]), None);
        assert_eq!(locate("a: [\nb: x\n", &[Key("b")]), None);
        // The text is read as a stream: what comes after the place does not matter.
        assert_eq!(locate("a: [unclosed", &[Key("a")]), Some((1, 1)));
    }

    #[test]
    fn tagged_nodes_are_stepped_into() {
        let text = "hooks: !t\n  - name: a\n    pre: !x [/a]\n";
        assert_eq!(locate(text, &[Key("hooks"), Index(0)]), Some((2, 5)));
        assert_eq!(
            locate(text, &[Key("hooks"), Index(0), Key("pre")]),
            Some((3, 5))
        );
        assert_eq!(
            locate(text, &[Key("hooks"), Index(0), Key("pre"), Index(0)]),
            Some((3, 14))
        );
        // Found by the fuzzer: a tagged sequence made serde_yaml panic when left half-read.
        let text = "hooks:\n  !---\n- name: other\n   R@/hooks/ok.sh]\n";
        assert_eq!(locate(text, &[Key("hooks"), Index(0), Key("pre")]), None);
        assert_eq!(locate(text, &[Key("hooks"), Index(0)]), Some((3, 3)));
    }

    #[test]
    fn odd_keys_are_skipped() {
        let text = "1: x\n? [a, b]\n: y\ntrue: z\n~: n\n\"pre\": w\n";
        assert_eq!(locate(text, &[Key("pre")]), Some((6, 1)));
    }

    #[test]
    fn place_falls_back_to_the_nearest_ancestor() {
        let s = Source::new(Path::new("/c.yaml"), TEXT);
        assert_eq!(s.place(&[Key("hooks"), Index(0), Key("env")]), (6, 5));
        assert_eq!(s.place(&[Key("auth"), Key("key_file")]), (1, 1));
        assert_eq!(s.place(&[Key("freeze"), Key("max_timeout")]), (3, 1));
        assert_eq!(Source::new(Path::new("/c"), "").place(&[Key("x")]), (1, 1));
        let e = s.error(&[Key("freeze"), Key("timeout")], "too long");
        assert_eq!(e.to_string(), "/c.yaml:4:3: too long");
    }
}
