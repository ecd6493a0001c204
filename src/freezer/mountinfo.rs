//! Parsing of /proc/self/mountinfo (proc(5)), with the kernel's octal escapes in paths.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::str::FromStr;

/// A block or anonymous device number, as `major:minor`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    /// A device number from its parts.
    pub const fn new(major: u32, minor: u32) -> Self {
        DevNum { major, minor }
    }

    /// Splits a kernel `dev_t` (as in `st_dev`) the way glibc's `major()`/`minor()` do.
    pub const fn from_dev_t(dev: u64) -> Self {
        // Casts are lossless: both masks keep at most 32 bits.
        let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
        let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
        DevNum {
            major: major as u32,
            minor: minor as u32,
        }
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// A string that is not a `major:minor` device number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid device number {0:?} (expected major:minor)")]
pub struct ParseDevNumError(pub String);

impl FromStr for DevNum {
    type Err = ParseDevNumError;

    /// Parses `major:minor`, as in mountinfo and sysfs `dev` files.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseDevNumError(s.to_owned());
        let (major, minor) = s.split_once(':').ok_or_else(bad)?;
        // u32::from_str accepts a leading '+', which the kernel never writes.
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(major) || !digits(minor) {
            return Err(bad());
        }
        Ok(DevNum {
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
        })
    }
}

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    /// The superblock's device number (the same for every bind mount of one filesystem).
    pub dev: DevNum,
    /// The root of the mount within its filesystem ("/" unless it is a bind of a subtree).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `ro`, `nosuid`, ...).
    pub mount_options: Vec<String>,
    pub fstype: String,
    /// The mount source (`/dev/vda1`, `server:/export`, `tmpfs`, ...), unescaped.
    pub source: String,
    /// Per-superblock options.
    pub super_options: Vec<String>,
}

impl MountInfo {
    /// Whether the filesystem (its superblock) is read-only, which makes FIFREEZE pointless.
    ///
    /// The per-mount `ro` is ignored on purpose: it says nothing about writes through other
    /// mounts of the same superblock, and under systemd's `ProtectSystem=strict` every mount of
    /// the daemon's namespace is `ro` while the filesystem is written to outside it.
    pub fn is_read_only(&self) -> bool {
        self.super_options.iter().any(|o| o == "ro")
    }
}

/// A mountinfo line that does not follow proc(5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mountinfo line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub kind: ParseErrorKind,
}

/// What is wrong with a mountinfo line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// Too short to hold the six fixed fields and the separator.
    #[error("too few fields ({found}, expected at least 10)")]
    TooFewFields { found: usize },
    /// No lone "-" ends the optional fields.
    #[error("no \"-\" separator after the optional fields")]
    MissingSeparator,
    /// Not exactly fstype, source and super options after the separator.
    #[error(
        "{found} fields after the \"-\" separator, expected 3 (fstype, source, super options)"
    )]
    FieldsAfterSeparator { found: usize },
    /// A mount id or parent id that is not a number.
    #[error("invalid {field} {value:?}")]
    BadNumber { field: &'static str, value: String },
    /// The third field is not `major:minor`.
    #[error(transparent)]
    BadDevNum(#[from] ParseDevNumError),
}

/// Parses the text of a mountinfo file.
pub fn parse(text: &str) -> Result<Vec<MountInfo>, ParseError> {
    parse_bytes(text.as_bytes())
}

/// Parses mountinfo as raw bytes: the kernel escapes only space, tab, newline and backslash,
/// so a path with non-UTF-8 bytes appears verbatim.
pub fn parse_bytes(bytes: &[u8]) -> Result<Vec<MountInfo>, ParseError> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(i, line)| parse_line(line).map_err(|kind| ParseError { line: i + 1, kind }))
        .collect()
}

/// Reads and parses /proc/self/mountinfo.
pub fn read_self() -> std::io::Result<Vec<MountInfo>> {
    let bytes = std::fs::read("/proc/self/mountinfo")?;
    parse_bytes(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn parse_line(line: &[u8]) -> Result<MountInfo, ParseErrorKind> {
    // Split on single spaces, not runs of whitespace: an empty source shows up as two
    // adjacent spaces and must stay an (empty) field.
    let fields: Vec<&[u8]> = line
        .strip_suffix(b"\r")
        .unwrap_or(line)
        .split(|&b| b == b' ')
        .collect();
    if fields.len() < 7 {
        return Err(ParseErrorKind::TooFewFields {
            found: fields.len(),
        });
    }
    // The optional fields start at index 6; a mount point of "-" (index 4) must not count.
    let sep = 6 + fields[6..]
        .iter()
        .position(|f| *f == b"-")
        .ok_or(ParseErrorKind::MissingSeparator)?;
    let tail = &fields[sep + 1..];
    if tail.len() != 3 {
        return Err(ParseErrorKind::FieldsAfterSeparator { found: tail.len() });
    }
    let dev = std::str::from_utf8(fields[2])
        .map_err(|_| ParseDevNumError(String::from_utf8_lossy(fields[2]).into_owned()))?
        .parse::<DevNum>()?;
    Ok(MountInfo {
        mount_id: parse_number("mount id", fields[0])?,
        parent_id: parse_number("parent id", fields[1])?,
        dev,
        root: unescape_path(fields[3]),
        mount_point: unescape_path(fields[4]),
        mount_options: split_options(fields[5]),
        fstype: unescape_string(tail[0]),
        source: unescape_string(tail[1]),
        super_options: split_options(tail[2]),
    })
}

fn parse_number(field: &'static str, raw: &[u8]) -> Result<u32, ParseErrorKind> {
    let bad = || ParseErrorKind::BadNumber {
        field,
        value: String::from_utf8_lossy(raw).into_owned(),
    };
    if raw.is_empty() || !raw.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    std::str::from_utf8(raw)
        .map_err(|_| bad())?
        .parse()
        .map_err(|_| bad())
}

/// Options are split before unescaping, so that an escaped comma (`\054`, which
/// seq_show_option writes inside values) stays inside its option.
fn split_options(raw: &[u8]) -> Vec<String> {
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == b',').map(unescape_string).collect()
}

fn unescape_path(raw: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(raw)))
}

fn unescape_string(raw: &[u8]) -> String {
    // The struct keeps fstype, source and options as String; non-UTF-8 bytes there come
    // from network shares or odd labels, never from the /dev paths the rules look at.
    match String::from_utf8(unescape(raw)) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Decodes `\ooo` octal escapes; anything else (including `\` followed by something
/// that is not three octal digits, or a value above 0o377) is kept as it is.
fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' {
            if let Some(byte) = raw.get(i + 1..i + 4).and_then(octal_byte) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

fn octal_byte(digits: &[u8]) -> Option<u8> {
    let mut value: u32 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        value = value * 8 + u32::from(d - b'0');
    }
    u8::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    const DEBIAN_VM: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mountinfo/debian-vm.txt"
    ));
    const ESCAPES: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mountinfo/escapes.txt"
    ));
    const OPTIONAL_FIELDS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mountinfo/optional-fields.txt"
    ));
    const TOO_FEW_FIELDS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mountinfo/malformed-too-few-fields.txt"
    ));
    const NO_SEPARATOR: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mountinfo/malformed-no-separator.txt"
    ));
    const BAD_DEV: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mountinfo/malformed-bad-dev.txt"
    ));

    fn find<'a>(mounts: &'a [MountInfo], mount_point: &str) -> &'a MountInfo {
        mounts
            .iter()
            .find(|m| m.mount_point == Path::new(mount_point))
            .unwrap_or_else(|| panic!("{mount_point} not in the table"))
    }

    #[test]
    fn debian_vm_table() {
        let mounts = parse(DEBIAN_VM).unwrap();
        assert_eq!(mounts.len(), DEBIAN_VM.lines().count());

        let root = find(&mounts, "/");
        assert_eq!(root.mount_id, 29);
        assert_eq!(root.parent_id, 1);
        assert_eq!(root.dev, DevNum::new(254, 1));
        assert_eq!(root.root, Path::new("/"));
        assert_eq!(root.mount_options, ["rw", "relatime"]);
        assert_eq!(root.fstype, "ext4");
        assert_eq!(root.source, "/dev/vda1");
        assert_eq!(root.super_options, ["rw", "errors=remount-ro"]);
        assert!(!root.is_read_only());

        let efi = find(&mounts, "/boot/efi");
        assert_eq!(efi.fstype, "vfat");
        assert_eq!(efi.dev, DevNum::new(254, 15));
        assert!(efi.super_options.contains(&"iocharset=ascii".to_owned()));

        let home = find(&mounts, "/home");
        assert_eq!(home.dev, DevNum::new(253, 0));
        assert_eq!(home.source, "/dev/mapper/vg0-home");
        assert_eq!(home.fstype, "xfs");

        assert_eq!(find(&mounts, "/proc").fstype, "proc");
        assert_eq!(find(&mounts, "/sys/fs/cgroup").fstype, "cgroup2");
        assert_eq!(find(&mounts, "/dev/pts").fstype, "devpts");
        assert_eq!(find(&mounts, "/dev/mqueue").fstype, "mqueue");
        assert_eq!(find(&mounts, "/run").fstype, "tmpfs");

        let nfs = find(&mounts, "/srv/nfs");
        assert_eq!(nfs.fstype, "nfs4");
        assert_eq!(nfs.source, "fileserver.example.com:/export/shared");
        assert_eq!(nfs.dev.major, 0);

        let sshfs = find(&mounts, "/mnt/remote");
        assert_eq!(sshfs.fstype, "fuse.sshfs");
        assert_eq!(sshfs.source, "alice@build:/home/alice");

        let overlay = find(&mounts, "/var/lib/docker/overlay2/4f1c2a9e0b7d/merged");
        assert_eq!(overlay.fstype, "overlay");
        assert!(overlay
            .super_options
            .iter()
            .any(|o| o.starts_with("lowerdir=")));

        let snap = find(&mounts, "/snap/core22/1380");
        assert_eq!(snap.fstype, "squashfs");
        assert_eq!(snap.dev, DevNum::new(7, 0));
        assert!(snap.is_read_only());
    }

    #[test]
    fn escapes() {
        let mounts = parse(ESCAPES).unwrap();
        assert_eq!(mounts.len(), 4);

        assert_eq!(mounts[0].mount_point, Path::new("/mnt/my disk"));
        assert_eq!(mounts[0].source, "/dev/disk/by-label/my disk");

        assert_eq!(
            mounts[1].mount_point.as_os_str(),
            OsStr::from_bytes(b"/mnt/back\\slash\nnewline")
        );
        assert_eq!(mounts[1].root, Path::new("/sub\tdir"));

        // Multi-byte characters appear verbatim; an escape may decode to a non-UTF-8 byte.
        assert_eq!(
            mounts[2].mount_point.as_os_str(),
            OsStr::from_bytes(b"/mnt/caf\xc3\xa9 \xff")
        );

        // An empty source (mount -t tmpfs "" /mnt/empty-source) is two adjacent spaces.
        assert_eq!(mounts[3].source, "");
        assert_eq!(mounts[3].fstype, "tmpfs");
        assert_eq!(mounts[3].super_options, ["rw", "size=1024k"]);
    }

    #[test]
    fn raw_non_utf8_bytes() {
        let line = b"40 29 254:3 / /mnt/\xff\xfe rw - ext4 /dev/vdc rw\n";
        let mounts = parse_bytes(line).unwrap();
        assert_eq!(
            mounts[0].mount_point.as_os_str(),
            OsStr::from_bytes(b"/mnt/\xff\xfe")
        );
    }

    #[test]
    fn unescape_edge_cases() {
        assert_eq!(unescape(br"a\040b"), b"a b");
        assert_eq!(unescape(br"\134\134"), b"\\\\");
        assert_eq!(unescape(br"\011\012"), b"\t\n");
        // Not three octal digits: kept verbatim.
        assert_eq!(unescape(br"a\04"), br"a\04");
        assert_eq!(unescape(br"a\089"), br"a\089");
        assert_eq!(unescape(br"end\"), br"end\");
        // Above one byte: kept verbatim.
        assert_eq!(unescape(br"\777"), br"\777");
        assert_eq!(unescape(br"\377"), b"\xff");
    }

    #[test]
    fn optional_field_counts() {
        let mounts = parse(OPTIONAL_FIELDS).unwrap();
        let points: Vec<&Path> = mounts.iter().map(|m| m.mount_point.as_path()).collect();
        assert_eq!(
            points,
            [
                Path::new("/zero"),
                Path::new("/one"),
                Path::new("/two"),
                Path::new("/three"),
                Path::new("-"),
            ]
        );
        for m in &mounts {
            assert_eq!(m.fstype, "ext4");
            assert_eq!(m.source, "/dev/vdb1");
            assert_eq!(m.super_options, ["rw"]);
        }
    }

    #[test]
    fn too_few_fields() {
        let err = parse(TOO_FEW_FIELDS).unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(err.kind, ParseErrorKind::TooFewFields { found: 5 });
    }

    #[test]
    fn no_separator() {
        let err = parse(NO_SEPARATOR).unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(err.kind, ParseErrorKind::MissingSeparator);
    }

    #[test]
    fn bad_dev_number() {
        let err = parse(BAD_DEV).unwrap_err();
        assert_eq!(err.line, 4);
        assert_eq!(
            err.kind,
            ParseErrorKind::BadDevNum(ParseDevNumError("254-1".to_owned()))
        );
        assert_eq!(
            err.to_string(),
            "mountinfo line 4: invalid device number \"254-1\" (expected major:minor)"
        );
    }

    #[test]
    fn other_malformed_lines() {
        let kind = |text: &str| parse(text).unwrap_err().kind;
        assert_eq!(
            kind("x 1 8:1 / / rw - ext4 /dev/sda1 rw"),
            ParseErrorKind::BadNumber {
                field: "mount id",
                value: "x".to_owned()
            }
        );
        assert_eq!(
            kind("1 -1 8:1 / / rw - ext4 /dev/sda1 rw"),
            ParseErrorKind::BadNumber {
                field: "parent id",
                value: "-1".to_owned()
            }
        );
        assert_eq!(
            kind("1 1 8:1 / / rw - ext4 /dev/sda1"),
            ParseErrorKind::FieldsAfterSeparator { found: 2 }
        );
        assert_eq!(
            kind("1 1 8:1 / / rw - ext4 /dev/sda1 rw extra"),
            ParseErrorKind::FieldsAfterSeparator { found: 4 }
        );
        assert!(matches!(
            kind("1 1 8:+1 / / rw - ext4 /dev/sda1 rw"),
            ParseErrorKind::BadDevNum(_)
        ));
        assert!(matches!(
            kind("1 1 8: / / rw - ext4 /dev/sda1 rw"),
            ParseErrorKind::BadDevNum(_)
        ));
    }

    #[test]
    fn blank_lines_and_line_numbers() {
        let text = "\n1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\n2 1 8:2 / /b rw - ext4\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.line, 4);
        assert_eq!(parse("").unwrap(), []);
    }

    #[test]
    fn read_only() {
        let mut m = parse("1 0 8:1 / / rw - ext4 /dev/sda1 rw")
            .unwrap()
            .remove(0);
        assert!(!m.is_read_only());
        // A read-only mount of a writable superblock (ProtectSystem=strict, `mount -o bind,ro`)
        // is still written through other mounts: it counts as writable.
        m.mount_options = vec!["ro".into(), "relatime".into()];
        assert!(!m.is_read_only());
        m.mount_options = vec!["rw".into()];
        m.super_options = vec!["ro".into()];
        assert!(m.is_read_only());
        // Only the exact option counts, not an option that merely starts with "ro".
        m.super_options = vec!["rw".into(), "rootcontext=x".into()];
        assert!(!m.is_read_only());
    }

    #[test]
    fn dev_num() {
        assert_eq!(DevNum::new(8, 1).to_string(), "8:1");
        assert_eq!("253:12".parse::<DevNum>().unwrap(), DevNum::new(253, 12));
        assert!("253".parse::<DevNum>().is_err());
        assert!(":1".parse::<DevNum>().is_err());
        assert!("1:2:3".parse::<DevNum>().is_err());
        // Old 16-bit layout and the split layout for large numbers.
        assert_eq!(DevNum::from_dev_t(0x0801), DevNum::new(8, 1));
        assert_eq!(DevNum::from_dev_t(0xfe00), DevNum::new(254, 0));
        assert_eq!(DevNum::from_dev_t(0x0011_0300), DevNum::new(259, 0x100));
        // glibc's makedev(), the inverse.
        let makedev = |major: u64, minor: u64| {
            ((major & 0xfff) << 8)
                | ((major & !0xfff) << 32)
                | (minor & 0xff)
                | ((minor & !0xff) << 12)
        };
        for (major, minor) in [
            (0, 0),
            (254, 1),
            (0x1234_5abc, 0x0def_0123),
            (u32::MAX, u32::MAX),
        ] {
            assert_eq!(
                DevNum::from_dev_t(makedev(major.into(), minor.into())),
                DevNum::new(major, minor)
            );
        }
    }

    #[test]
    fn read_self_parses() {
        // Reading is harmless; every Linux process has a mount table with a root.
        let mounts = read_self().unwrap();
        assert!(mounts.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
