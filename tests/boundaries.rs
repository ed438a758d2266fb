//! The module boundaries of docs/ARCHITECTURE.md, checked by reading the sources' `use` lines
//! and paths: the model, the tree and the status module are pure; only the store touches redb;
//! the store and the model import nothing from sync, net or the daemon, and net not the daemon.

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read source");
            out.push((path.display().to_string(), text));
        }
    }
}

fn check(module: &str, forbidden: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(module);
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(!files.is_empty(), "no sources under {}", root.display());
    for (path, text) in files {
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for word in forbidden {
                assert!(
                    !line.contains(word),
                    "{path}: `{word}` is not allowed in src/{module}: {line}"
                );
            }
        }
    }
}

#[test]
fn model_and_merkle_are_pure() {
    let impure = [
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
    check("model", &impure);
    check("merkle", &impure);
}

#[test]
fn only_the_store_imports_redb() {
    check("maildir", &["redb::", "use redb"]);
    let main = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/main.rs"))
        .expect("main.rs");
    assert!(
        !main.contains("redb::") && !main.contains("use redb"),
        "main.rs must go through the store"
    );
}

#[test]
fn status_is_pure_and_imports_only_downward() {
    check(
        "status",
        &[
            "redb::",
            "use redb",
            "tokio",
            "hyper",
            "rand::",
            "SystemTime",
            "Instant",
            "std::fs",
            "std::net",
            "crate::store",
            "crate::daemon",
            "crate::net",
            "crate::sync",
        ],
    );
}

#[test]
fn store_and_model_import_neither_sync_nor_net_and_net_not_the_daemon() {
    let above_store = [
        "crate::sync",
        "crate::net",
        "crate::daemon",
        "crate::status",
    ];
    check("store", &above_store);
    check("model", &above_store);
    check("model", &["crate::store", "crate::merkle"]);
    check("net", &["crate::daemon"]);
}
