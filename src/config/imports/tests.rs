//! The importers on a made-up file tree: the agents' layouts, what each skips, and every error
//! at its place.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::files::fake::Tree;
use crate::config::OnFailure;
use crate::freezer::protocol::ThawReason;

const MAIN: &str = "/etc/quiesce/config.yaml";
const LEGACY: &str = "/usr/sbin";

/// The usual tree with the three agents' folders.
fn tree() -> Tree {
    let mut t = Tree::new();
    for d in [
        "/etc/qemu",
        "/etc/qemu/fsfreeze-hook.d",
        "/etc/vmware-tools",
        "/etc/vmware-tools/backupScripts.d",
        "/etc/azure",
        "/usr/sbin",
        "/bin",
    ] {
        t.dir(d, 0o755, 0);
    }
    t.file("/bin/sh", 0o755, 0, 100);
    t
}

/// Loads the imports of the main file `yaml` on `t`.
fn load(yaml: &str, t: &Tree) -> Found {
    let c = Config::parse(Path::new(MAIN), yaml).unwrap();
    let src = Source::new(Path::new(MAIN), yaml);
    load_with_legacy(&c, &src, t, Path::new(LEGACY))
}

/// The errors as `file:line:column: message`.
fn errors(f: &Found) -> Vec<String> {
    f.errors.iter().map(|e| e.to_string()).collect()
}

fn names(f: &Found) -> Vec<&str> {
    f.hooks.iter().map(|h| h.name.as_str()).collect()
}

const QEMU: &str = "imports:\n  qemu_hook_dir: /etc/qemu/fsfreeze-hook.d\n";
const VMWARE: &str = "imports:\n  vmware_scripts_dir: /etc/vmware-tools/backupScripts.d\n";
const AZURE: &str =
    "imports:\n  azure_plugin_config: /etc/azure/VMSnapshotScriptPluginConfig.json\n";
const AZURE_JSON: &str = "/etc/azure/VMSnapshotScriptPluginConfig.json";

#[test]
fn qemu_runs_what_the_dispatcher_runs_in_its_order() {
    let mut t = tree();
    let d = "/etc/qemu/fsfreeze-hook.d";
    for (name, mode) in [
        ("20-app", 0o755),
        ("10-db", 0o700),
        ("B-upper", 0o755),
        ("05-old.rpmnew", 0o755),
        ("06-x.dpkg-old", 0o755),
        ("07-y.dpkg-dist", 0o755),
        ("08-z~", 0o755),
        ("09.sample", 0o755),
        (".hidden", 0o755),
        ("40-notexec", 0o644),
    ] {
        t.file(&format!("{d}/{name}"), mode, 0, 10);
    }
    t.dir(&format!("{d}/50-dir"), 0o755, 0);
    t.link(&format!("{d}/60-gone"), "/nowhere", 0);
    let f = load(QEMU, &t);
    assert!(f.errors.is_empty(), "{:?}", errors(&f));
    // Byte order: digits, then upper case, as strcmp and dash's glob sort.
    assert_eq!(names(&f), ["qemu:10-db", "qemu:20-app", "qemu:B-upper"]);
    let h = &f.hooks[0];
    assert_eq!(
        h.pre.as_deref().unwrap(),
        [format!("{d}/10-db"), "freeze".into()]
    );
    assert_eq!(
        h.post.as_deref().unwrap(),
        [format!("{d}/10-db"), "thaw".into()]
    );
    assert_eq!(h.on_failure, OnFailure::Continue);
    assert_eq!(h.timeout, Duration::from_secs(30));
    assert_eq!(h.post_if_freeze_failed, None);
    assert_eq!(h.source, Path::new(d));
    let note = &f.notes[0];
    assert_eq!(note.outcome, "3 hooks");
    let skipped: Vec<&str> = note.skipped.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        skipped,
        [
            "05-old.rpmnew",
            "06-x.dpkg-old",
            "07-y.dpkg-dist",
            "08-z~",
            "09.sample",
            "40-notexec",
            "50-dir",
            "60-gone"
        ]
    );
    assert!(note.skipped[0].1.contains("*.rpmnew"), "{:?}", note.skipped);
    assert!(note.skipped[5].1.starts_with("not executable (mode 0644)"));
}

#[test]
fn vmware_runs_every_regular_file_legacy_first_and_fails_with_freeze_fail() {
    let mut t = tree();
    let d = "/etc/vmware-tools/backupScripts.d";
    for name in ["b-app", "a-db", ".hidden"] {
        t.file(&format!("{d}/{name}"), 0o755, 0, 10);
    }
    t.dir(&format!("{d}/sub"), 0o755, 0);
    t.file("/usr/sbin/post-thaw-script", 0o755, 0, 10);
    let f = load(VMWARE, &t);
    assert!(f.errors.is_empty(), "{:?}", errors(&f));
    assert_eq!(
        names(&f),
        [
            "vmware:/usr/sbin/post-thaw-script",
            "vmware:.hidden",
            "vmware:a-db",
            "vmware:b-app"
        ]
    );
    let legacy = &f.hooks[0];
    assert_eq!(legacy.pre, None, "no pre-freeze-script: no pre");
    assert_eq!(
        legacy.post_if_freeze_failed.as_deref().unwrap(),
        ["/usr/sbin/post-thaw-script", "freezeFail"]
    );
    let h = &f.hooks[2];
    assert_eq!(h.pre.as_deref().unwrap()[1], "freeze");
    assert_eq!(h.on_failure, OnFailure::Abort);
    // The post's argument follows the thaw reason.
    let arg = |r| h.post_for(r).unwrap()[1].clone();
    assert_eq!(arg(Some(ThawReason::Host)), "thaw");
    for r in [
        None,
        Some(ThawReason::Deadline),
        Some(ThawReason::Abort),
        Some(ThawReason::Shutdown),
        Some(ThawReason::Error),
    ] {
        assert_eq!(arg(r), "freezeFail", "{r:?}");
    }
    assert_eq!(
        f.notes[0].skipped,
        [(
            "sub".to_string(),
            "a directory (open-vm-tools does not recurse)".to_string()
        )]
    );
    assert!(f.notes[0].remarks[0].contains("legacy"), "{:?}", f.notes);
}

#[test]
fn missing_places_import_nothing_and_say_so() {
    let t = Tree::new();
    let f = load(
        "imports:\n  azure_plugin_config: /etc/azure/x.json\n  qemu_hook_dir: /etc/qemu/h.d\n  vmware_scripts_dir: /etc/vmware-tools/b.d\n",
        &t,
    );
    assert!(f.errors.is_empty(), "{:?}", errors(&f));
    assert!(f.hooks.is_empty());
    let outcomes: Vec<(&str, &str)> = f
        .notes
        .iter()
        .map(|n| (n.key, n.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("azure_plugin_config", "does not exist: imports nothing"),
            ("qemu_hook_dir", "does not exist: imports nothing"),
            ("vmware_scripts_dir", "does not exist: imports nothing"),
        ]
    );
}

#[test]
fn folder_errors_are_at_the_import_key() {
    let mut t = tree();
    let d = "/etc/qemu/fsfreeze-hook.d";
    t.file(&format!("{d}/10-open"), 0o775, 0, 10);
    t.file(&format!("{d}/20-user"), 0o755, 1000, 10);
    let yaml = format!("listen: 127.0.0.1:7380\n{QEMU}");
    let f = load(&yaml, &t);
    assert_eq!(
        errors(&f),
        [
            format!("{MAIN}:3:3: imports.qemu_hook_dir: qemu:10-open ({d}/10-open) is writable by group or others (mode 0775): chmod go-w {d}/10-open"),
            format!("{MAIN}:3:3: imports.qemu_hook_dir: qemu:20-user ({d}/20-user) is owned by uid 1000, not root: chown root {d}/20-user"),
        ]
    );
    // A folder others may write, a file where a folder should be, a relative path.
    let mut t = tree();
    t.dir("/etc/vmware-tools/backupScripts.d", 0o777, 0);
    t.file("/etc/vmware-tools/backupScripts.d/a", 0o755, 0, 1);
    let e = errors(&load(VMWARE, &t));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("which is writable by group or others and not sticky"),
        "{e:?}"
    );
    let mut t = tree();
    t.file("/etc/qemu/hookfile", 0o755, 0, 1);
    let e = errors(&load("imports: {qemu_hook_dir: /etc/qemu/hookfile}\n", &t));
    assert_eq!(e, [format!("{MAIN}:1:11: imports.qemu_hook_dir: /etc/qemu/hookfile is not a directory: name the folder of scripts, e.g. /etc/qemu/fsfreeze-hook.d")]);
    let e = Config::parse(Path::new(MAIN), "imports:\n  qemu_hook_dir: etc/qemu\n").unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "{MAIN}:2:3: imports.qemu_hook_dir: etc/qemu is not an absolute path"
        )),
        "{e}"
    );
    let e = Config::parse(Path::new(MAIN), "imports:\n  qemu_dir: /etc/qemu\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("2:3: imports: unknown field `qemu_dir`"),
        "{e}"
    );
}

#[test]
fn a_vmware_script_must_be_executable_as_open_vm_tools_runs_it() {
    let mut t = tree();
    t.file("/etc/vmware-tools/backupScripts.d/a", 0o644, 0, 1);
    let e = errors(&load(VMWARE, &t));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains(
            "vmware:a (/etc/vmware-tools/backupScripts.d/a) is not executable (mode 0644)"
        ),
        "{e:?}"
    );
}

const SAMPLE: &str = r#"{
    "pluginName" : "ScriptRunner",
    "preScriptLocation" : "/etc/azure/pre.sh",
    "postScriptLocation" : "/etc/azure/post.sh",
    "preScriptParams" : ["CACHE", "", 7],
    "postScriptParams" : [],
    "preScriptNoOfRetries" : 2,
    "postScriptNoOfRetries" : 1,
    "timeoutInSeconds" : 45,
    "continueBackupOnFailure" : false,
    "fsFreezeEnabled" : true,
    "ScriptsExecutionPollTimeSeconds" : 3
}
"#;

fn azure_tree(json: &str) -> Tree {
    let mut t = tree();
    t.text(AZURE_JSON, 0o600, 0, json);
    t.file("/etc/azure/pre.sh", 0o700, 0, 10);
    t.file("/etc/azure/post.sh", 0o600, 0, 10);
    t
}

#[test]
fn azure_fields_mean_what_they_mean_there() {
    let f = load(AZURE, &azure_tree(SAMPLE));
    assert!(f.errors.is_empty(), "{:?}", errors(&f));
    assert_eq!(names(&f), ["azure:ScriptRunner"]);
    let h = &f.hooks[0];
    assert_eq!(
        h.pre.as_deref().unwrap(),
        ["/bin/sh", "/etc/azure/pre.sh", "CACHE", "", "7"]
    );
    assert_eq!(
        h.post.as_deref().unwrap(),
        ["/bin/sh", "/etc/azure/post.sh"]
    );
    assert_eq!(h.timeout, Duration::from_secs(45));
    assert_eq!(h.on_failure, OnFailure::Abort);
    assert_eq!((h.pre_retries, h.post_retries), (2, 1));
    assert_eq!(h.source, Path::new(AZURE_JSON));
    assert_eq!(f.freeze_off_by, None);
    assert!(f.notes[0].remarks[0].contains("ScriptsExecutionPollTimeSeconds is ignored"));

    // The defaults of ScriptRunner, Azure's own sample's fields, fsFreezeEnabled false.
    let minimal = r#"{"preScriptLocation": "/etc/azure/pre.sh", "postScriptLocation": "/etc/azure/post.sh",
        "fsFreezeEnabled": false, "appName": "x", "timeout": 10}"#;
    let f = load(AZURE, &azure_tree(minimal));
    assert!(f.errors.is_empty(), "{:?}", errors(&f));
    let h = &f.hooks[0];
    assert_eq!(h.timeout, Duration::from_secs(10));
    assert_eq!(h.on_failure, OnFailure::Continue);
    assert_eq!((h.pre_retries, h.post_retries), (0, 0));
    assert_eq!(
        f.freeze_off_by.as_deref(),
        Some("fsFreezeEnabled is false in /etc/azure/VMSnapshotScriptPluginConfig.json")
    );
    // Azure cuts the timeout at 1800 s.
    let f = load(AZURE, &azure_tree(&SAMPLE.replace("45", "5000")));
    assert_eq!(f.hooks[0].timeout, Duration::from_secs(1800));
}

#[test]
fn azure_errors_have_their_place_in_the_json() {
    let err = |json: &str| {
        let f = load(AZURE, &azure_tree(json));
        assert!(f.hooks.is_empty());
        errors(&f)
    };
    let j = AZURE_JSON;
    // Malformed JSON.
    let e = err("{\n  \"preScriptLocation\": \"/etc/azure/pre.sh\",\n}\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(&format!("{j}:3:1: trailing comma")),
        "{e:?}"
    );
    // A wrong type.
    let e = err(&SAMPLE.replace(
        "\"continueBackupOnFailure\" : false",
        "\"continueBackupOnFailure\" : \"no\"",
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(&format!(
            "{j}:10:36: invalid type: string \"no\", expected a boolean"
        )),
        "{e:?}"
    );
    let e = err(&SAMPLE.replace("7]", "true]"));
    assert!(e[0].contains("expected a string (or an integer)"), "{e:?}");
    // An unknown field.
    let e = err(&SAMPLE.replace("\"fsFreezeEnabled\"", "\"fsFreezeEnable\""));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(&format!("{j}:11:5: unknown field `fsFreezeEnable`")),
        "{e:?}"
    );
    // A missing field, a missing script, an empty one, a relative one.
    let e = err("{\"preScriptLocation\": \"/etc/azure/pre.sh\"}");
    assert!(e[0].contains("missing field `postScriptLocation`"), "{e:?}");
    let e = err(&SAMPLE.replace("/etc/azure/post.sh", "/etc/azure/gone.sh"));
    assert_eq!(e, [format!("{j}:4:5: postScriptLocation /etc/azure/gone.sh does not exist: install it there or correct the path")]);
    let e = err(&SAMPLE.replace("/etc/azure/pre.sh", ""));
    assert!(
        e[0].starts_with(&format!("{j}:3:5: preScriptLocation is empty")),
        "{e:?}"
    );
    let e = err(&SAMPLE.replace("/etc/azure/pre.sh", "pre.sh"));
    assert!(
        e[0].starts_with(&format!(
            "{j}:3:5: preScriptLocation \"pre.sh\" is not an absolute path"
        )),
        "{e:?}"
    );
    // Zero timeout, too many retries.
    let e = err(&SAMPLE.replace("45", "0"));
    assert!(
        e[0].starts_with(&format!("{j}:9:5: timeoutInSeconds must be above 0")),
        "{e:?}"
    );
    let e = err(&SAMPLE.replace(
        "\"preScriptNoOfRetries\" : 2",
        "\"preScriptNoOfRetries\" : 11",
    ));
    assert!(
        e[0].starts_with(&format!("{j}:7:5: preScriptNoOfRetries is 11")),
        "{e:?}"
    );
    let e = err(&SAMPLE.replace(
        "\"preScriptNoOfRetries\" : 2",
        "\"preScriptNoOfRetries\" : -1",
    ));
    assert!(
        e[0].starts_with(&format!("{j}:7:31: invalid value: integer `-1`")),
        "{e:?}"
    );
}

#[test]
fn azure_permission_rules_on_top_of_ours() {
    // A script readable by others: Azure refuses it, so does the import.
    let mut t = azure_tree(SAMPLE);
    t.file("/etc/azure/pre.sh", 0o744, 0, 10);
    let e = errors(&load(AZURE, &t));
    assert_eq!(e, [format!("{AZURE_JSON}:3:5: preScriptLocation /etc/azure/pre.sh gives permissions to group or others (mode 0744), which Azure's VMSnapshotLinux refuses too: chmod go= /etc/azure/pre.sh")]);
    let mut t = azure_tree(SAMPLE);
    t.file("/etc/azure/post.sh", 0o700, 1000, 10);
    let e = errors(&load(AZURE, &t));
    assert!(
        e[0].contains("post.sh is owned by uid 1000, not root"),
        "{e:?}"
    );
    // The config itself: 0600, root's, not executable; errors at the import key.
    for (mode, uid, want) in [
        (0o644, 0, "gives permissions to group or others (mode 0644)"),
        (0o700, 0, "is executable (mode 0700)"),
        (0o600, 1000, "is owned by uid 1000, not root"),
    ] {
        let mut t = azure_tree(SAMPLE);
        t.text(AZURE_JSON, mode, uid, SAMPLE);
        let e = errors(&load(AZURE, &t));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(&format!(
                "{MAIN}:2:3: imports.azure_plugin_config: Azure's script config {AZURE_JSON}"
            )),
            "{e:?}"
        );
        assert!(e[0].contains(want), "{e:?}");
    }
    // 0400 is what Azure accepts too.
    let mut t = azure_tree(SAMPLE);
    t.text(AZURE_JSON, 0o400, 0, SAMPLE);
    assert!(load(AZURE, &t).errors.is_empty());
}

#[test]
fn the_three_in_the_contracts_order_and_names_stay_unique() {
    let mut t = azure_tree(SAMPLE);
    t.file("/etc/qemu/fsfreeze-hook.d/q", 0o755, 0, 1);
    t.file("/etc/vmware-tools/backupScripts.d/v", 0o755, 0, 1);
    // Written in another order: the contract's order holds.
    let yaml = format!(
        "imports:\n  vmware_scripts_dir: /etc/vmware-tools/backupScripts.d\n  qemu_hook_dir: /etc/qemu/fsfreeze-hook.d\n  azure_plugin_config: {AZURE_JSON}\n"
    );
    let f = load(&yaml, &t);
    assert_eq!(names(&f), ["azure:ScriptRunner", "qemu:q", "vmware:v"]);
    let yaml = format!("hooks: [{{name: \"qemu:q\", pre: [/bin/sh]}}]\n{yaml}");
    let e = errors(&load(&yaml, &t));
    assert_eq!(e, [format!("{MAIN}:4:3: imports.qemu_hook_dir: the imported hook qemu:q has the name of a hook in {MAIN}: rename that hook")]);
}
