//! Finding a process's descendants through /proc (parent pid, process group, zombie state).

use std::collections::HashMap;
use std::fs;

/// The fields of `/proc/PID/stat` the helper needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcEntry {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    /// Already dead, waiting to be reaped: signals are pointless.
    pub zombie: bool,
}

/// Parses one `/proc/PID/stat` line. The command name sits in parentheses and may itself hold
/// spaces and parentheses, so the fields are counted from the last `)`.
pub(crate) fn parse_stat(line: &str) -> Option<ProcEntry> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    let mut rest = line.get(close + 1..)?.split_ascii_whitespace();
    let state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some(ProcEntry {
        pid,
        ppid,
        pgrp,
        zombie: state == "Z" || state == "X",
    })
}

/// Every process visible in /proc. Processes that vanish while being read are skipped.
pub(crate) fn scan() -> Vec<ProcEntry> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(is_pid))
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| parse_stat(&s))
        .collect()
}

fn is_pid(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}

/// The descendants of `root` (not `root` itself), following parent pids.
pub(crate) fn descendants(root: i32, procs: &[ProcEntry]) -> Vec<ProcEntry> {
    let mut children: HashMap<i32, Vec<&ProcEntry>> = HashMap::new();
    for p in procs {
        // pid 0's "children" are the kernel's roots; a self-loop would never end.
        if p.pid != p.ppid {
            children.entry(p.ppid).or_default().push(p);
        }
    }
    let mut found = Vec::new();
    let mut todo = vec![root];
    while let Some(parent) = todo.pop() {
        for child in children.get(&parent).into_iter().flatten() {
            found.push(**child);
            todo.push(child.pid);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_names() {
        let e = parse_stat("1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 0 0").unwrap();
        assert_eq!(
            e,
            ProcEntry {
                pid: 1234,
                ppid: 1,
                pgrp: 1234,
                zombie: false
            }
        );
        let z = parse_stat("77 (sh) Z 12 70 70 0").unwrap();
        assert!(z.zombie);
        assert_eq!((z.ppid, z.pgrp), (12, 70));
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("12 (x) S").is_none());
    }

    #[test]
    fn walks_the_tree_below_root_only() {
        let p = |pid, ppid| ProcEntry {
            pid,
            ppid,
            pgrp: pid,
            zombie: false,
        };
        let procs = [p(1, 0), p(10, 1), p(11, 10), p(12, 11), p(13, 10), p(20, 1)];
        let mut d: Vec<i32> = descendants(10, &procs).iter().map(|e| e.pid).collect();
        d.sort();
        assert_eq!(d, vec![11, 12, 13]);
        assert!(descendants(20, &procs).is_empty());
    }

    #[test]
    fn sees_this_test_process_and_its_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let d = descendants(me, &scan());
        let found = d.iter().any(|e| e.pid == child.id() as i32);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found);
    }
}
