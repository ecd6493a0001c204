//! The files a config names.
//!
//! A hook command runs as root, so the contract wants it trustworthy: an absolute path to an
//! executable regular file owned by root and not writable by group or others, in directories
//! that are each owned by root and not writable by group or others unless sticky (like /tmp).
//!
//! Symlinks are followed the way the kernel does, one name at a time, and every directory a
//! name is looked up in is checked, on the way to the link and on the way from it: whoever can
//! write any of them could swap the file. A symlink in a shared sticky directory (like /tmp)
//! must itself be owned by root, since its owner may replace it there. The file that is finally
//! reached is checked itself.
//!
//! The HMAC key must be a regular file of at least 32 bytes, owned by root, with no permission
//! bits for group or others (0600 or 0400).
//!
//! The checks read the file system through [`Inspect`], so the rules are unit-tested on a
//! made-up tree as well as on real files.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// The smallest key the contract accepts, in bytes.
pub const MIN_KEY_LEN: u64 = 32;

/// Symlinks followed before giving up (the kernel's limit).
const MAX_LINKS: usize = 40;

/// What kind of node a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// The parts of `lstat` the rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`& 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub len: u64,
}

/// Read access to the file system.
pub trait Inspect {
    /// `lstat(2)`: a symlink is described, not followed.
    fn lstat(&self, path: &Path) -> io::Result<Stat>;
    /// `readlink(2)`.
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
    /// The names in a directory (without `.` and `..`), in no particular order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    /// A file's bytes.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
}

/// `stat(2)`: what `path` leads to after its symlinks (`None`: nothing, a dangling link, a
/// loop), with no trust rule applied.
pub fn follow(fs: &dyn Inspect, path: &Path) -> Option<Stat> {
    resolve(fs, path, false, &mut Vec::new()).map(|(_, st)| st)
}

/// The real file system.
pub struct Real;

impl Inspect for Real {
    fn lstat(&self, path: &Path) -> io::Result<Stat> {
        let md = std::fs::symlink_metadata(path)?;
        let t = md.file_type();
        let kind = if t.is_file() {
            Kind::File
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            Kind::Symlink
        } else {
            debug_assert!(
                t.is_block_device() || t.is_char_device() || t.is_fifo() || t.is_socket()
            );
            Kind::Other
        };
        Ok(Stat {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            len: md.len(),
        })
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::read_link(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// One thing wrong with a named file; [`Problem::message`] says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    NotAbsolute,
    /// This path, on the way or the file itself, does not exist.
    Missing {
        path: PathBuf,
    },
    /// A name is looked up in something that is not a directory.
    NotADirectory {
        path: PathBuf,
    },
    TooManyLinks,
    Unreadable {
        path: PathBuf,
        error: String,
    },
    DirOwner {
        dir: PathBuf,
        uid: u32,
    },
    DirWritable {
        dir: PathBuf,
        mode: u32,
    },
    /// A symlink in a shared sticky directory that its owner (not root) may replace.
    LinkOwner {
        link: PathBuf,
        uid: u32,
    },
    NotRegular {
        kind: Kind,
    },
    NotExecutable {
        mode: u32,
    },
    Owner {
        uid: u32,
    },
    /// A command writable by group or others.
    Writable {
        mode: u32,
    },
    /// A key with any permission bit for group or others.
    Shared {
        mode: u32,
    },
    TooShort {
        len: u64,
    },
    /// A file Azure wants private (its script config, its scripts) with bits for group or
    /// others.
    NotPrivate {
        mode: u32,
    },
    /// Azure's script config with an execute bit.
    ConfigExecutable {
        mode: u32,
    },
}

impl Problem {
    /// The whole message: `subject` names the setting and the path as written (`hook pg: pre
    /// /x/pg.sh`), `real` is where it led when that differs after symlinks.
    pub fn message(&self, subject: &str, written: &Path, real: Option<&Path>) -> String {
        let real_path = real.unwrap_or(written);
        // Problems of the file itself name the file it resolves to.
        let mut file = subject.to_string();
        if real_path != written {
            let _ = write!(file, " (a symlink to {})", real_path.display());
        }
        let r = real_path.display();
        match self {
            Problem::NotAbsolute => {
                format!("{subject} is not an absolute path: write the full path, starting with /")
            }
            Problem::Missing { path } if path == written => {
                format!("{subject} does not exist: install it there or correct the path")
            }
            Problem::Missing { path } => format!(
                "{subject}: {} does not exist: install it there or correct the path",
                path.display()
            ),
            Problem::NotADirectory { path } => {
                format!("{subject}: {} is not a directory", path.display())
            }
            Problem::TooManyLinks => format!("{subject}: too many levels of symbolic links"),
            Problem::Unreadable { path, error } => {
                format!("{subject}: cannot inspect {}: {error}", path.display())
            }
            Problem::DirOwner { dir, uid } => format!(
                "{subject} is under {0}, which is owned by uid {uid}, not root: chown root {0}",
                dir.display()
            ),
            Problem::DirWritable { dir, mode } => format!(
                "{subject} is under {0}, which is writable by group or others and not sticky (mode {mode:04o}): chmod go-w {0}",
                dir.display()
            ),
            Problem::LinkOwner { link, uid } => format!(
                "{subject} goes through the symlink {0} in a shared directory, owned by uid {uid}, not root: chown -h root {0}",
                link.display()
            ),
            Problem::NotRegular { kind } => format!(
                "{file} is not a regular file (it is {})",
                match kind {
                    Kind::Dir => "a directory",
                    Kind::Symlink => "a symlink",
                    Kind::Other | Kind::File => "a device, FIFO or socket",
                }
            ),
            Problem::NotExecutable { mode } => {
                format!("{file} is not executable (mode {mode:04o}): chmod u+x {r}")
            }
            Problem::Owner { uid } => {
                format!("{file} is owned by uid {uid}, not root: chown root {r}")
            }
            Problem::Writable { mode } => format!(
                "{file} is writable by group or others (mode {mode:04o}): chmod go-w {r}"
            ),
            Problem::Shared { mode } => format!(
                "{file} gives permissions to group or others (mode {mode:04o}): chmod 0600 {r}"
            ),
            Problem::NotPrivate { mode } => format!(
                "{file} gives permissions to group or others (mode {mode:04o}), which Azure's VMSnapshotLinux refuses too: chmod go= {r}"
            ),
            Problem::ConfigExecutable { mode } => format!(
                "{file} is executable (mode {mode:04o}), which Azure's VMSnapshotLinux refuses for its script config: chmod 0600 {r}"
            ),
            Problem::TooShort { len } => format!(
                "{file} holds {len} bytes, fewer than {MIN_KEY_LEN}: use a key of at least {MIN_KEY_LEN} random bytes"
            ),
        }
    }
}

/// What a check found: where the path led (when it could be followed) and what is wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    pub real: Option<PathBuf>,
    pub problems: Vec<Problem>,
}

/// Checks a hook command (argv[0]).
pub fn check_command(fs: &dyn Inspect, path: &Path) -> Checked {
    let mut problems = Vec::new();
    let Some((real, st)) = resolve(fs, path, true, &mut problems) else {
        return Checked {
            real: None,
            problems,
        };
    };
    if st.kind != Kind::File {
        problems.push(Problem::NotRegular { kind: st.kind });
    } else {
        if st.mode & 0o111 == 0 {
            problems.push(Problem::NotExecutable { mode: st.mode });
        }
        if st.uid != 0 {
            problems.push(Problem::Owner { uid: st.uid });
        }
        if st.mode & 0o022 != 0 {
            problems.push(Problem::Writable { mode: st.mode });
        }
    }
    Checked {
        real: Some(real),
        problems,
    }
}

/// How an imported file is checked (see [`check_imported`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// A script run with `sh` (Azure's): a command's rules without the execute bit, and
    /// Azure's own rule, no permission for group or others.
    ShScript,
    /// Azure's script config: root's, no permission for group or others, not executable.
    AzureConfig,
}

/// Checks a file an import names, with the same directory walk as a hook command.
pub fn check_imported(fs: &dyn Inspect, path: &Path, kind: Imported) -> Checked {
    let mut problems = Vec::new();
    let Some((real, st)) = resolve(fs, path, true, &mut problems) else {
        return Checked {
            real: None,
            problems,
        };
    };
    if st.kind != Kind::File {
        problems.push(Problem::NotRegular { kind: st.kind });
    } else {
        if st.uid != 0 {
            problems.push(Problem::Owner { uid: st.uid });
        }
        if st.mode & 0o077 != 0 {
            problems.push(Problem::NotPrivate { mode: st.mode });
        }
        if kind == Imported::AzureConfig && st.mode & 0o100 != 0 {
            problems.push(Problem::ConfigExecutable { mode: st.mode });
        }
    }
    Checked {
        real: Some(real),
        problems,
    }
}

/// Checks the HMAC key file, with the same directory walk as a hook command: whoever can
/// write a directory on the way could swap the key.
pub fn check_key(fs: &dyn Inspect, path: &Path) -> Checked {
    let mut problems = Vec::new();
    let Some((real, st)) = resolve(fs, path, true, &mut problems) else {
        return Checked {
            real: None,
            problems,
        };
    };
    if st.kind != Kind::File {
        problems.push(Problem::NotRegular { kind: st.kind });
    } else {
        if st.len < MIN_KEY_LEN {
            problems.push(Problem::TooShort { len: st.len });
        }
        if st.uid != 0 {
            problems.push(Problem::Owner { uid: st.uid });
        }
        if st.mode & 0o077 != 0 {
            problems.push(Problem::Shared { mode: st.mode });
        }
    }
    Checked {
        real: Some(real),
        problems,
    }
}

/// A piece of a path still to walk.
enum Part {
    Root,
    Parent,
    Name(OsString),
}

fn parts(path: &Path) -> impl DoubleEndedIterator<Item = Part> + '_ {
    path.components().filter_map(|c| match c {
        Component::RootDir => Some(Part::Root),
        Component::ParentDir => Some(Part::Parent),
        Component::Normal(n) => Some(Part::Name(n.to_os_string())),
        Component::CurDir | Component::Prefix(_) => None,
    })
}

/// Follows `path` one name at a time, as the kernel does, to the real path and its `lstat`.
/// With `trust`, every directory a name is looked up in must be owned by root and not
/// writable by group or others unless sticky, and a symlink in a shared sticky directory must
/// be owned by root. Problems that stop the walk return `None`; the others are only noted.
fn resolve(
    fs: &dyn Inspect,
    path: &Path,
    trust: bool,
    problems: &mut Vec<Problem>,
) -> Option<(PathBuf, Stat)> {
    if !path.is_absolute() {
        problems.push(Problem::NotAbsolute);
        return None;
    }
    let lstat = |p: &Path, problems: &mut Vec<Problem>| match fs.lstat(p) {
        Ok(st) => Some(st),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            problems.push(Problem::Missing {
                path: p.to_path_buf(),
            });
            None
        }
        Err(e) => {
            problems.push(Problem::Unreadable {
                path: p.to_path_buf(),
                error: e.to_string(),
            });
            None
        }
    };
    // Pending parts, next one last.
    let mut pending: Vec<Part> = parts(path).rev().collect();
    // The directory reached so far: a real path, free of symlinks, so `..` is a plain pop.
    let mut cur = PathBuf::from("/");
    let mut dirs: HashMap<PathBuf, Stat> = HashMap::new();
    let mut reported: HashSet<PathBuf> = HashSet::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        let name = match part {
            Part::Root => {
                cur = PathBuf::from("/");
                continue;
            }
            Part::Parent => {
                cur.pop();
                continue;
            }
            Part::Name(name) => name,
        };
        let dir = match dirs.get(&cur) {
            Some(st) => *st,
            None => {
                let st = lstat(&cur, problems)?;
                dirs.insert(cur.clone(), st);
                st
            }
        };
        if dir.kind != Kind::Dir {
            problems.push(Problem::NotADirectory { path: cur });
            return None;
        }
        let shared = dir.mode & 0o022 != 0;
        let sticky = dir.mode & 0o1000 != 0;
        if trust && reported.insert(cur.clone()) {
            if dir.uid != 0 {
                problems.push(Problem::DirOwner {
                    dir: cur.clone(),
                    uid: dir.uid,
                });
            }
            if shared && !sticky {
                problems.push(Problem::DirWritable {
                    dir: cur.clone(),
                    mode: dir.mode,
                });
            }
        }
        let next = cur.join(&name);
        let st = lstat(&next, problems)?;
        match st.kind {
            Kind::Symlink => {
                links += 1;
                if links > MAX_LINKS {
                    problems.push(Problem::TooManyLinks);
                    return None;
                }
                if trust && shared && sticky && st.uid != 0 {
                    problems.push(Problem::LinkOwner {
                        link: next.clone(),
                        uid: st.uid,
                    });
                }
                let target = match fs.read_link(&next) {
                    Ok(t) => t,
                    Err(e) => {
                        problems.push(Problem::Unreadable {
                            path: next,
                            error: e.to_string(),
                        });
                        return None;
                    }
                };
                // A relative target continues from the link's directory, `cur`.
                let rest: Vec<Part> = parts(&target).collect();
                pending.extend(rest.into_iter().rev());
            }
            Kind::Dir => {
                dirs.insert(next.clone(), st);
                cur = next;
            }
            Kind::File | Kind::Other => {
                if pending
                    .iter()
                    .any(|p| matches!(p, Part::Name(_) | Part::Parent))
                {
                    problems.push(Problem::NotADirectory { path: next });
                    return None;
                }
                return Some((next, st));
            }
        }
    }
    // The path ends at a directory (`/`, `/x/..`, a link to a directory).
    let st = match dirs.get(&cur) {
        Some(st) => *st,
        None => lstat(&cur, problems)?,
    };
    Some((cur, st))
}

/// A made-up file tree for tests.
#[cfg(test)]
pub mod fake {
    use super::*;

    /// A made-up tree: path → (stat, link target), and the files' contents.
    #[derive(Default)]
    pub struct Tree(
        HashMap<PathBuf, (Stat, Option<PathBuf>)>,
        HashMap<PathBuf, Vec<u8>>,
    );

    impl Tree {
        /// The usual root-owned system tree with a hook in /etc/quiesce/hooks.
        pub fn new() -> Tree {
            let mut t = Tree::default();
            for d in [
                "/",
                "/etc",
                "/etc/quiesce",
                "/etc/quiesce/hooks",
                "/usr",
                "/usr/bin",
            ] {
                t.dir(d, 0o755, 0);
            }
            t.dir("/tmp", 0o1777, 0);
            t.file("/etc/quiesce/hooks/pg.sh", 0o755, 0, 100);
            t
        }
        pub fn dir(&mut self, p: &str, mode: u32, uid: u32) -> &mut Tree {
            self.put(p, Kind::Dir, mode, uid, 0, None)
        }
        pub fn file(&mut self, p: &str, mode: u32, uid: u32, len: u64) -> &mut Tree {
            self.put(p, Kind::File, mode, uid, len, None)
        }
        /// A regular file with these contents.
        pub fn text(&mut self, p: &str, mode: u32, uid: u32, text: &str) -> &mut Tree {
            self.1.insert(PathBuf::from(p), text.as_bytes().to_vec());
            self.file(p, mode, uid, text.len() as u64)
        }
        pub fn link(&mut self, p: &str, target: &str, uid: u32) -> &mut Tree {
            self.put(p, Kind::Symlink, 0o777, uid, 0, Some(target))
        }
        pub fn put(
            &mut self,
            p: &str,
            kind: Kind,
            mode: u32,
            uid: u32,
            len: u64,
            target: Option<&str>,
        ) -> &mut Tree {
            let st = Stat {
                kind,
                mode,
                uid,
                len,
            };
            self.0
                .insert(PathBuf::from(p), (st, target.map(PathBuf::from)));
            self
        }
    }

    impl Inspect for Tree {
        fn lstat(&self, path: &Path) -> io::Result<Stat> {
            self.0
                .get(path)
                .map(|e| e.0)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
        fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
            self.0
                .get(path)
                .and_then(|e| e.1.clone())
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
        }
        fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
            match super::follow(self, path) {
                Some(st) if st.kind == Kind::Dir => {}
                Some(_) => return Err(io::Error::from(io::ErrorKind::NotADirectory)),
                None => return Err(io::Error::from(io::ErrorKind::NotFound)),
            }
            Ok(self
                .0
                .keys()
                .filter(|p| p.parent() == Some(path) && p.as_path() != path)
                .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
                .collect())
        }
        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            self.1
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Tree;
    use super::*;

    fn command(t: &Tree, p: &str) -> Vec<Problem> {
        check_command(t, Path::new(p)).problems
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn a_good_hook_passes() {
        let t = Tree::new();
        let c = check_command(&t, Path::new("/etc/quiesce/hooks/pg.sh"));
        assert_eq!(c.problems, []);
        assert_eq!(c.real.unwrap(), p("/etc/quiesce/hooks/pg.sh"));
        // `.` and `..` are walked like the kernel does.
        assert_eq!(command(&t, "/etc/./quiesce/../quiesce/hooks/pg.sh"), []);
        assert_eq!(command(&t, "/../etc/quiesce/hooks/pg.sh"), []);
    }

    #[test]
    fn a_hook_in_sticky_tmp_passes() {
        let mut t = Tree::new();
        t.dir("/tmp/t", 0o700, 0).file("/tmp/t/h", 0o700, 0, 1);
        assert_eq!(command(&t, "/tmp/t/h"), []);
    }

    #[test]
    fn relative_and_missing_paths() {
        let t = Tree::new();
        assert_eq!(command(&t, "pg.sh"), [Problem::NotAbsolute]);
        assert_eq!(command(&t, "./hooks/pg.sh"), [Problem::NotAbsolute]);
        assert_eq!(
            command(&t, "/etc/quiesce/hooks/nope.sh"),
            [Problem::Missing {
                path: p("/etc/quiesce/hooks/nope.sh")
            }]
        );
        assert_eq!(
            command(&t, "/opt/x/y.sh"),
            [Problem::Missing { path: p("/opt") }]
        );
        assert_eq!(
            command(&t, "/etc/quiesce/hooks/pg.sh/x"),
            [Problem::NotADirectory {
                path: p("/etc/quiesce/hooks/pg.sh")
            }]
        );
    }

    #[test]
    fn the_file_itself() {
        let mut t = Tree::new();
        t.file("/etc/quiesce/hooks/a", 0o644, 0, 1)
            .file("/etc/quiesce/hooks/b", 0o775, 0, 1)
            .file("/etc/quiesce/hooks/c", 0o757, 0, 1)
            .file("/etc/quiesce/hooks/d", 0o755, 65534, 1)
            .file("/etc/quiesce/hooks/e", 0o100, 0, 1)
            .file("/etc/quiesce/hooks/f", 0o666, 1000, 1)
            .put("/etc/quiesce/hooks/g", Kind::Other, 0o755, 0, 0, None);
        assert_eq!(
            command(&t, "/etc/quiesce/hooks/a"),
            [Problem::NotExecutable { mode: 0o644 }]
        );
        assert_eq!(
            command(&t, "/etc/quiesce/hooks/b"),
            [Problem::Writable { mode: 0o775 }]
        );
        assert_eq!(
            command(&t, "/etc/quiesce/hooks/c"),
            [Problem::Writable { mode: 0o757 }]
        );
        assert_eq!(
            command(&t, "/etc/quiesce/hooks/d"),
            [Problem::Owner { uid: 65534 }]
        );
        assert_eq!(command(&t, "/etc/quiesce/hooks/e"), []);
        assert_eq!(
            command(&t, "/etc/quiesce/hooks/f"),
            [
                Problem::NotExecutable { mode: 0o666 },
                Problem::Owner { uid: 1000 },
                Problem::Writable { mode: 0o666 }
            ]
        );
        assert_eq!(
            command(&t, "/etc/quiesce/hooks/g"),
            [Problem::NotRegular { kind: Kind::Other }]
        );
        assert_eq!(
            command(&t, "/etc/quiesce/hooks"),
            [Problem::NotRegular { kind: Kind::Dir }]
        );
        assert_eq!(command(&t, "/"), [Problem::NotRegular { kind: Kind::Dir }]);
    }

    #[test]
    fn every_directory_on_the_way() {
        let mut t = Tree::new();
        t.dir("/etc/quiesce/hooks", 0o775, 0);
        assert_eq!(
            command(&t, "/etc/quiesce/hooks/pg.sh"),
            [Problem::DirWritable {
                dir: p("/etc/quiesce/hooks"),
                mode: 0o775
            }]
        );
        let mut t = Tree::new();
        t.dir("/etc", 0o755, 1000).dir("/", 0o757, 0);
        assert_eq!(
            command(&t, "/etc/quiesce/hooks/pg.sh"),
            [
                Problem::DirWritable {
                    dir: p("/"),
                    mode: 0o757
                },
                Problem::DirOwner {
                    dir: p("/etc"),
                    uid: 1000
                },
            ]
        );
        // Sticky does not excuse a directory that is not root's.
        let mut t = Tree::new();
        t.dir("/tmp", 0o1777, 1000).file("/tmp/h", 0o755, 0, 1);
        assert_eq!(
            command(&t, "/tmp/h"),
            [Problem::DirOwner {
                dir: p("/tmp"),
                uid: 1000
            }]
        );
    }

    #[test]
    fn symlinks_are_followed_and_both_sides_checked() {
        let mut t = Tree::new();
        t.dir("/opt", 0o755, 0)
            .dir("/opt/pg", 0o775, 0)
            .file("/opt/pg/hook", 0o755, 0, 1)
            .link("/usr/bin/pg-hook", "../../opt/pg/hook", 0);
        let c = check_command(&t, Path::new("/usr/bin/pg-hook"));
        assert_eq!(c.real.unwrap(), p("/opt/pg/hook"));
        assert_eq!(
            c.problems,
            [Problem::DirWritable {
                dir: p("/opt/pg"),
                mode: 0o775
            }]
        );
        // The directory holding the link counts too.
        let mut t = Tree::new();
        t.dir("/srv", 0o777, 0)
            .link("/srv/hooks", "/etc/quiesce/hooks", 0)
            .link("/usr/bin/x", "/srv/hooks/pg.sh", 0);
        assert_eq!(
            command(&t, "/usr/bin/x"),
            [Problem::DirWritable {
                dir: p("/srv"),
                mode: 0o777
            }]
        );
        // A link to a directory in the middle of the path.
        let mut t = Tree::new();
        t.link("/etc/quiesce/h", "hooks", 0);
        assert_eq!(command(&t, "/etc/quiesce/h/pg.sh"), []);
    }

    #[test]
    fn links_in_sticky_directories_must_be_roots() {
        let mut t = Tree::new();
        t.link("/tmp/l", "/etc/quiesce/hooks/pg.sh", 1000);
        assert_eq!(
            command(&t, "/tmp/l"),
            [Problem::LinkOwner {
                link: p("/tmp/l"),
                uid: 1000
            }]
        );
        t.link("/tmp/l", "/etc/quiesce/hooks/pg.sh", 0);
        assert_eq!(command(&t, "/tmp/l"), []);
        // Outside shared directories a link's owner cannot change it: no matter.
        t.link("/usr/bin/l", "/etc/quiesce/hooks/pg.sh", 1000);
        assert_eq!(command(&t, "/usr/bin/l"), []);
    }

    #[test]
    fn link_loops_and_dangling_links() {
        let mut t = Tree::new();
        t.link("/usr/bin/a", "b", 0).link("/usr/bin/b", "a", 0);
        assert_eq!(command(&t, "/usr/bin/a"), [Problem::TooManyLinks]);
        t.link("/usr/bin/d", "/nowhere/x", 0);
        assert_eq!(
            command(&t, "/usr/bin/d"),
            [Problem::Missing {
                path: p("/nowhere")
            }]
        );
    }

    #[test]
    fn the_key() {
        let mut t = Tree::new();
        t.file("/etc/quiesce/k1", 0o600, 0, 32)
            .file("/etc/quiesce/k2", 0o400, 0, 64)
            .file("/etc/quiesce/k3", 0o644, 0, 32)
            .file("/etc/quiesce/k4", 0o600, 0, 31)
            .file("/etc/quiesce/k5", 0o600, 1000, 32)
            .file("/etc/quiesce/k6", 0o640, 0, 32)
            .link("/etc/quiesce/k7", "k1", 0);
        let key = |p: &str| check_key(&t, Path::new(p)).problems;
        assert_eq!(key("/etc/quiesce/k1"), []);
        assert_eq!(key("/etc/quiesce/k2"), []);
        assert_eq!(key("/etc/quiesce/k3"), [Problem::Shared { mode: 0o644 }]);
        assert_eq!(key("/etc/quiesce/k4"), [Problem::TooShort { len: 31 }]);
        assert_eq!(key("/etc/quiesce/k5"), [Problem::Owner { uid: 1000 }]);
        assert_eq!(key("/etc/quiesce/k6"), [Problem::Shared { mode: 0o640 }]);
        assert_eq!(key("/etc/quiesce/k7"), []);
        assert_eq!(
            key("/etc/quiesce/none"),
            [Problem::Missing {
                path: p("/etc/quiesce/none")
            }]
        );
        assert_eq!(
            key("/etc/quiesce"),
            [Problem::NotRegular { kind: Kind::Dir }]
        );
        // The key's directories are walked like a hook's: whoever writes one could swap the key.
        t.dir("/etc/quiesce", 0o777, 1000);
        assert_eq!(
            check_key(&t, Path::new("/etc/quiesce/k1")).problems,
            [
                Problem::DirOwner {
                    dir: p("/etc/quiesce"),
                    uid: 1000
                },
                Problem::DirWritable {
                    dir: p("/etc/quiesce"),
                    mode: 0o777
                }
            ]
        );
    }

    #[test]
    fn messages_say_what_to_do() {
        let w = Path::new("/etc/quiesce/hooks/pg.sh");
        let s = "hook postgres: pre /etc/quiesce/hooks/pg.sh";
        assert_eq!(
            Problem::Writable { mode: 0o775 }.message(s, w, Some(w)),
            "hook postgres: pre /etc/quiesce/hooks/pg.sh is writable by group or others (mode 0775): chmod go-w /etc/quiesce/hooks/pg.sh"
        );
        assert_eq!(
            Problem::Owner { uid: 65534 }.message(s, w, Some(Path::new("/opt/pg"))),
            "hook postgres: pre /etc/quiesce/hooks/pg.sh (a symlink to /opt/pg) is owned by uid 65534, not root: chown root /opt/pg"
        );
        assert_eq!(
            Problem::DirWritable {
                dir: p("/etc/quiesce/hooks"),
                mode: 0o2775
            }
            .message(s, w, None),
            "hook postgres: pre /etc/quiesce/hooks/pg.sh is under /etc/quiesce/hooks, which is writable by group or others and not sticky (mode 2775): chmod go-w /etc/quiesce/hooks"
        );
        assert_eq!(
            Problem::Missing { path: w.into() }.message(s, w, None),
            "hook postgres: pre /etc/quiesce/hooks/pg.sh does not exist: install it there or correct the path"
        );
        assert_eq!(
            Problem::NotExecutable { mode: 0o644 }.message(s, w, Some(w)),
            "hook postgres: pre /etc/quiesce/hooks/pg.sh is not executable (mode 0644): chmod u+x /etc/quiesce/hooks/pg.sh"
        );
    }

    #[test]
    fn real_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("h");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o754)).unwrap();
        let st = Real.lstat(&f).unwrap();
        assert_eq!((st.kind, st.mode, st.len), (Kind::File, 0o754, 10));
        std::os::unix::fs::symlink("h", dir.path().join("l")).unwrap();
        assert_eq!(
            Real.lstat(&dir.path().join("l")).unwrap().kind,
            Kind::Symlink
        );
        assert_eq!(Real.read_link(&dir.path().join("l")).unwrap(), p("h"));
        assert_eq!(Real.lstat(dir.path()).unwrap().kind, Kind::Dir);
        assert_eq!(
            Real.lstat(Path::new("/dev/null")).unwrap().kind,
            Kind::Other
        );
    }
}
