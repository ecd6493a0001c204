//! Reading the files: the main config, the `config.d/*.yaml` drop-ins, and the YAML errors
//! turned into `file:line:column: message`.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use super::locate::Source;
use super::{Config, ConfigError, Hook};

/// The folder of drop-ins next to the main file.
pub const DROP_IN_DIR: &str = "config.d";

/// Parses the main file (a blank one, or one with only comments, is the defaults).
pub fn parse_main(src: &Source) -> Result<Config, ConfigError> {
    if is_blank(&src.text) {
        return Ok(Config::default());
    }
    no_duplicate_keys(src)?;
    serde_yaml::from_str(&src.text).map_err(|e| yaml_error(src, &e))
}

/// Parses a drop-in: only `hooks` may be set (a blank file adds nothing).
pub fn parse_drop_in(src: &Source) -> Result<Vec<Hook>, ConfigError> {
    if is_blank(&src.text) {
        return Ok(Vec::new());
    }
    no_duplicate_keys(src)?;
    serde_yaml::from_str::<DropIn>(&src.text)
        .map(|d| d.hooks)
        .map_err(|e| yaml_error(src, &e))
}

/// The drop-ins of the main file at `main`, in lexical (byte) order: the `*.yaml` names in
/// `config.d/` next to it, hidden names (`.x.yaml`, as a shell glob skips them) left out. A
/// missing folder means none; an unreadable one is an error at the folder.
pub fn drop_in_files(main: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = drop_in_dir(main);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ConfigError {
                file: dir,
                line: 1,
                column: 1,
                message: format!("cannot read the drop-in folder: {e}"),
            })
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ConfigError {
            file: dir.clone(),
            line: 1,
            column: 1,
            message: format!("cannot read the drop-in folder: {e}"),
        })?;
        let name = entry.file_name();
        if is_drop_in_name(&name) {
            names.push(name);
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// `config.d` in the main file's folder.
pub fn drop_in_dir(main: &Path) -> PathBuf {
    main.parent().unwrap_or(Path::new("")).join(DROP_IN_DIR)
}

fn is_drop_in_name(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    bytes.len() > ".yaml".len() && bytes.ends_with(b".yaml") && !bytes.starts_with(b".")
}

fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    })
}

/// Refuses a key set twice in one mapping, at the second one. serde's own "duplicate field"
/// comes only once the mapping is read, so it would point at the mapping's start. Other
/// errors are left to the typed parse, which words them better.
fn no_duplicate_keys(src: &Source) -> Result<(), ConfigError> {
    match serde_yaml::Deserializer::from_str(&src.text).deserialize_any(NoDuplicates) {
        Err(e) if e.to_string().contains(DUPLICATE) => Err(yaml_error(src, &e)),
        _ => Ok(()),
    }
}

const DUPLICATE: &str = "duplicate key `";

/// Walks a whole document; see [`no_duplicate_keys`].
struct NoDuplicates;

impl<'de> Visitor<'de> for NoDuplicates {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged node (`!tag value`): its content is walked too.
        let (de::IgnoredAny, content) = data.variant()?;
        de::VariantAccess::newtype_variant_seed(content, Walk)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Walk)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while map.next_key_seed(UniqueKey(&mut seen))?.is_some() {
            map.next_value_seed(Walk)?;
        }
        Ok(())
    }
}

/// [`NoDuplicates`] as a seed.
struct Walk;

impl<'de> de::DeserializeSeed<'de> for Walk {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(NoDuplicates)
    }
}

/// A mapping key, refused while it is read when a string key repeats.
struct UniqueKey<'s>(&'s mut std::collections::HashSet<String>);

impl<'de> de::DeserializeSeed<'de> for UniqueKey<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKey<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.0.insert(v.to_string()) {
            Ok(())
        } else {
            Err(E::custom(format_args!(
                "{DUPLICATE}{v}`: it is set earlier in the same mapping"
            )))
        }
    }
    // Other keys: the typed parse refuses them where it matters.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(NoDuplicates)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(NoDuplicates)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        NoDuplicates.visit_enum(data)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        NoDuplicates.visit_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        NoDuplicates.visit_map(map)
    }
}

/// A serde_yaml error at its place; its own " at line L column C" is dropped from the message.
pub fn yaml_error(src: &Source, e: &serde_yaml::Error) -> ConfigError {
    let mut message = e.to_string();
    let (line, column) = match e.location() {
        Some(l) => {
            let suffix = format!(" at line {} column {}", l.line(), l.column());
            if let Some(at) = message.find(&suffix) {
                message.replace_range(at..at + suffix.len(), "");
            }
            (l.line(), l.column())
        }
        None => (1, 1),
    };
    src.error_at(line, column, message)
}

/// A drop-in file: `hooks` and nothing else.
struct DropIn {
    hooks: Vec<Hook>,
}

impl<'de> Deserialize<'de> for DropIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DropIn, D::Error> {
        d.deserialize_map(DropInVisitor)
    }
}

struct DropInVisitor;

impl<'de> Visitor<'de> for DropInVisitor {
    type Value = DropIn;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping with `hooks`, the only key a drop-in may set")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DropIn, A::Error> {
        let mut hooks = None;
        while let Some(DropInKey) = map.next_key()? {
            if hooks.is_some() {
                return Err(de::Error::duplicate_field("hooks"));
            }
            hooks = Some(map.next_value()?);
        }
        Ok(DropIn {
            hooks: hooks.unwrap_or_default(),
        })
    }
}

/// The one key of a drop-in; any other is refused while it is read, so at its own place.
struct DropInKey;

impl<'de> Deserialize<'de> for DropInKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DropInKey, D::Error> {
        d.deserialize_identifier(DropInKeyVisitor)
    }
}

struct DropInKeyVisitor;

impl Visitor<'_> for DropInKeyVisitor {
    type Value = DropInKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`hooks`, the only key a drop-in may set")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<DropInKey, E> {
        if v == "hooks" {
            Ok(DropInKey)
        } else {
            Err(E::custom(format_args!(
                "only `hooks` may be set in a drop-in, not `{v}` (other settings belong in the main config file)"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> Source {
        Source::new(Path::new("/etc/quiesce/config.d/10-x.yaml"), text)
    }

    #[test]
    fn blank_files_are_the_defaults_or_nothing() {
        for text in ["", "\n", "# only\n  # comments\n\n"] {
            assert_eq!(parse_main(&src(text)).unwrap(), Config::default());
            assert!(parse_drop_in(&src(text)).unwrap().is_empty());
        }
    }

    #[test]
    fn a_drop_in_adds_hooks() {
        let hooks = parse_drop_in(&src("hooks:\n  - name: a\n    pre: [/a]\n")).unwrap();
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].name, "a");
        assert!(parse_drop_in(&src("hooks: []\n")).unwrap().is_empty());
    }

    #[test]
    fn a_drop_in_refuses_other_keys_at_their_place() {
        let e = parse_drop_in(&src("hooks: []\nfreeze:\n  enabled: false\n")).unwrap_err();
        assert_eq!((e.line, e.column), (2, 1), "{e}");
        assert_eq!(
            e.message,
            "only `hooks` may be set in a drop-in, not `freeze` (other settings belong in the main config file)"
        );
        let e = parse_drop_in(&src("{hooks: [], listen: x}")).unwrap_err();
        assert_eq!((e.line, e.column), (1, 13), "{e}");
        let e = parse_drop_in(&src("hooks: []\nhooks: []\n")).unwrap_err();
        assert_eq!((e.line, e.column), (2, 1), "{e}");
        assert_eq!(
            e.message,
            "duplicate key `hooks`: it is set earlier in the same mapping"
        );
        let e = parse_drop_in(&src("- name: a\n")).unwrap_err();
        assert!(e.message.contains("only key a drop-in may set"), "{e}");
    }

    #[test]
    fn hook_errors_in_a_drop_in_keep_their_place() {
        let e = parse_drop_in(&src(
            "hooks:\n  - name: a\n    pre: [/a]\n    tiemout: 5s\n",
        ))
        .unwrap_err();
        assert_eq!((e.line, e.column), (4, 5), "{e}");
        assert!(
            e.message.starts_with("hooks[0]: unknown field `tiemout`"),
            "{e}"
        );
    }

    #[test]
    fn yaml_errors_lose_their_own_place_suffix() {
        let e = parse_main(&src("listen: [\n")).unwrap_err();
        assert!(!e.message.contains(" at line "), "{e}");
        let e = parse_main(&src("freeze:\n  timeout: 10\n")).unwrap_err();
        assert_eq!((e.line, e.column), (2, 12), "{e}");
        assert_eq!(
            e.message,
            "freeze.timeout: duration \"10\" has no unit (use ms, s, m or h, e.g. \"10s\")"
        );
    }

    #[test]
    fn duplicate_keys_at_the_second_one() {
        let e = parse_main(&src(
            "hooks:\n  - name: a\n    pre: [/a]\n    env: {A: x, B: y}\n    pre: [/b]\n",
        ))
        .unwrap_err();
        assert_eq!((e.line, e.column), (5, 5), "{e}");
        assert_eq!(
            e.message,
            "hooks[0]: duplicate key `pre`: it is set earlier in the same mapping"
        );
        let e = parse_main(&src("freeze: {enabled: true}\nhooks: []\nfreeze: {}\n")).unwrap_err();
        assert_eq!((e.line, e.column), (3, 1), "{e}");
        let e = parse_main(&src("hooks: !t\n  - !m {name: a, name: b}\n")).unwrap_err();
        assert_eq!((e.line, e.column), (2, 18), "{e}");
        // The same key in different mappings is fine.
        parse_main(&src(
            "hooks: [{name: a, pre: [/a]}, {name: b, pre: [/b]}]\n",
        ))
        .unwrap();
        // Syntax errors are still the parser's.
        let e = parse_main(&src("freeze:\n  enabled: true\n bad: [\n")).unwrap_err();
        assert!(!e.message.contains("duplicate"), "{e}");
    }

    #[test]
    fn drop_in_names() {
        for good in ["a.yaml", "10-postgres.yaml", "x.y.yaml"] {
            assert!(is_drop_in_name(OsStr::new(good)), "{good}");
        }
        for bad in [
            ".yaml",
            ".hidden.yaml",
            "a.yml",
            "a.yaml~",
            "a.yaml.dpkg-old",
            "a",
        ] {
            assert!(!is_drop_in_name(OsStr::new(bad)), "{bad}");
        }
        assert_eq!(
            drop_in_dir(Path::new("/etc/quiesce/config.yaml")),
            Path::new("/etc/quiesce/config.d")
        );
        assert_eq!(drop_in_dir(Path::new("c.yaml")), Path::new("config.d"));
    }

    #[test]
    fn drop_in_files_in_byte_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.yaml");
        assert!(drop_in_files(&main).unwrap().is_empty());
        let d = dir.path().join("config.d");
        std::fs::create_dir(&d).unwrap();
        for n in [
            "b.yaml", "B.yaml", "a.yaml", "10.yaml", "2.yaml", ".h.yaml", "z.yml",
        ] {
            std::fs::write(d.join(n), "").unwrap();
        }
        let names: Vec<_> = drop_in_files(&main)
            .unwrap()
            .into_iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10.yaml", "2.yaml", "B.yaml", "a.yaml", "b.yaml"]);
    }
}
