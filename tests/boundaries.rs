//! The layers of docs/ARCHITECTURE.md, checked by reading the sources: which modules each
//! module may import (`crate::x` paths, `use crate::{x, …}` groups, `super::super::x`), which
//! crates and names it may use, and that the module graph these allow has no circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module of the library and the modules it may import, lowest layer first.
/// A module missing from this table, or an import outside its row, fails the test.
const LAYERS: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("merkle", &["model"]),
    ("status", &[]),
    ("store", &["model", "merkle"]),
    ("maildir", &["model", "store"]),
    ("sync", &["model", "merkle", "store"]),
    (
        "net",
        &["model", "merkle", "store", "sync", "status", "maildir"],
    ),
    (
        "daemon",
        &[
            "model", "merkle", "store", "sync", "net", "status", "maildir",
        ],
    ),
    (
        "cli",
        &[
            "model", "merkle", "store", "sync", "net", "status", "maildir", "daemon",
        ],
    ),
];

/// What pure code may not name: storage, async runtimes, HTTP, randomness, clocks, files and
/// sockets.
const IMPURE: &[&str] = &[
    "redb::",
    "use redb",
    "tokio",
    "hyper",
    "rand::",
    "SystemTime",
    "Instant",
    "std::fs",
    "std::net",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn collect(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read source");
            out.push((path.display().to_string(), text));
        }
    }
}

/// The files of one top-level module (`src/NAME/` and `src/NAME.rs`).
fn module_files(module: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let dir = src().join(module);
    if dir.is_dir() {
        collect(&dir, &mut files);
    }
    let file = src().join(format!("{module}.rs"));
    if let Ok(text) = std::fs::read_to_string(&file) {
        files.push((file.display().to_string(), text));
    }
    files
}

/// Source lines without comments (a line comment, or the tail after `//` outside a string is
/// close enough for `use` lines and paths).
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with("//"))
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules a file names: `crate::x`, and each name of a `use crate::{…}` group
/// (over several lines).
fn crate_modules(text: &str) -> BTreeSet<String> {
    let code: Vec<&str> = code_lines(text).collect();
    let code = code.join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = matching_brace(group);
            for item in top_level_items(&group[..end]) {
                let name = ident_at(item.trim());
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name = ident_at(after);
            if !name.is_empty() {
                found.insert(name);
            }
        }
        rest = after;
    }
    found
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

/// The comma-separated items of a `{…}` group, not splitting inside nested groups.
fn top_level_items(s: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&s[start..]);
    items
}

fn forbid(module: &str, words: &[&str], why: &str) {
    let files = module_files(module);
    assert!(!files.is_empty(), "no sources for src/{module}");
    for (path, text) in files {
        for line in code_lines(&text) {
            for word in words {
                assert!(
                    !line.contains(word),
                    "{path}: `{word}` is not allowed in src/{module} ({why}): {line}"
                );
            }
        }
    }
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = LAYERS
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    let declared: BTreeSet<String> = code_lines(&lib)
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').trim().to_string())
        .collect();
    let known: BTreeSet<String> = allowed.keys().map(|m| m.to_string()).collect();
    assert_eq!(
        declared, known,
        "src/lib.rs declares modules this test's LAYERS table does not place (or the reverse)"
    );
    for (module, deps) in &allowed {
        for (path, text) in module_files(module) {
            for used in crate_modules(&text) {
                if used == *module {
                    continue;
                }
                assert!(
                    deps.contains(used.as_str()),
                    "{path}: src/{module} may not import crate::{used} (allowed: {deps:?})"
                );
            }
            for line in code_lines(&text) {
                if let Some(at) = line.find("super::super::") {
                    let name = ident_at(&line[at + "super::super::".len()..]);
                    assert!(
                        !known.contains(&name) || deps.contains(name.as_str()),
                        "{path}: src/{module} may not reach {name} through super::super"
                    );
                }
            }
        }
    }
}

#[test]
fn the_layers_have_no_circle() {
    // Each row may name only rows above it: then no chain of imports can come back.
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    for (module, deps) in LAYERS {
        for dep in *deps {
            assert!(
                placed.contains(dep),
                "{module} imports {dep}, which is not in a lower layer"
            );
        }
        placed.insert(module);
    }
}

#[test]
fn model_merkle_and_status_are_pure() {
    forbid("model", IMPURE, "pure");
    forbid("merkle", IMPURE, "pure");
    forbid("status", IMPURE, "pure");
}

#[test]
fn only_the_store_imports_redb() {
    for (module, _) in LAYERS.iter().filter(|(m, _)| *m != "store") {
        forbid(module, &["redb::", "use redb"], "only src/store uses redb");
    }
    let main = std::fs::read_to_string(src().join("main.rs")).expect("main.rs");
    assert!(
        !main.contains("redb::") && !main.contains("use redb"),
        "main.rs must go through the store"
    );
}

#[test]
fn only_net_speaks_http_or_names_a_route() {
    for (module, _) in LAYERS.iter().filter(|(m, _)| *m != "net") {
        forbid(
            module,
            &[
                "hyper",
                "http_body",
                "StatusCode",
                "\"/v1/",
                "\"/status",
                "\"/metrics",
            ],
            "only src/net knows HTTP and its routes",
        );
    }
}

#[test]
fn the_session_does_no_io() {
    let files: Vec<_> = module_files("sync")
        .into_iter()
        .filter(|(path, _)| path.contains("session"))
        .collect();
    assert!(!files.is_empty(), "no session sources under src/sync");
    for (path, text) in files {
        for line in code_lines(&text) {
            for word in [
                "tokio",
                "std::fs",
                "std::net",
                "crate::net",
                "Store::",
                "&Store",
                "Store,",
                "Store}",
                "Store;",
                "Store>",
            ] {
                assert!(
                    !line.contains(word),
                    "{path}: the session reaches local state only through its trait, never `{word}`: {line}"
                );
            }
        }
    }
}

#[test]
fn the_reader_finds_imports_in_groups_and_paths() {
    let text = "use crate::{\n    model::{A, B},\n    store::Store,\n};\n// use crate::net;\nfn f() { crate::sync::run(); }\n";
    let found = crate_modules(text);
    let expect: BTreeSet<String> = ["model", "store", "sync"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, expect);
}

#[test]
fn maildirs_disk_layer_knows_nothing_of_the_store() {
    for (path, text) in module_files("maildir") {
        if path.ends_with("import.rs")
            || path.ends_with("export.rs")
            || path.ends_with("backend.rs")
        {
            continue;
        }
        assert!(
            !crate_modules(&text).contains("store"),
            "{path}: only maildir/import.rs, export.rs and backend.rs connect Maildir to the store"
        );
    }
}

#[test]
fn only_main_and_the_cli_use_anyhow() {
    for (module, _) in LAYERS.iter().filter(|(m, _)| *m != "cli") {
        forbid(
            module,
            &["anyhow"],
            "libraries return their own error types",
        );
    }
}

#[test]
fn only_the_command_line_prints() {
    // The layers below report progress and outcomes through callbacks and typed values
    // (`model::Progress`); src/cli renders them. Logs go through `tracing`.
    for (module, _) in LAYERS.iter().filter(|(m, _)| *m != "cli") {
        forbid(
            module,
            &[
                "println!",
                "print!(",
                "eprint",
                "stdout()",
                "stderr()",
                "IsTerminal",
                "indicatif",
            ],
            "only the command line prints",
        );
    }
}
