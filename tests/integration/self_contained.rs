//! The repository is self-contained: no tracked file reads or cites anything beside it, so a
//! clone with nothing next to it builds, tests and reads on its own. The contracts are in
//! `docs/contract.md` and the HMAC known-answer vectors in `tests/fixtures/vectors/`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Text that would point outside the repository. Assembled at run time so that this file does
/// not match itself.
fn forbidden() -> Vec<String> {
    let up = "..";
    let design = concat!("DES", "IGN");
    vec![
        format!("{up}/shared"),
        format!("{design}.md"),
        format!("{design} section"),
        format!("{design} 5"),
        format!("{design} 6"),
    ]
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// Every tracked file, as `git ls-files` lists it; outside a git checkout (a source archive),
/// every file under the root but build output and private data.
fn repository_files(root: &Path) -> Vec<PathBuf> {
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success());
    match listed {
        Some(out) => out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
            .collect(),
        None => {
            let mut files = Vec::new();
            walk(root, &mut files);
            files
        }
    }
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !(name.starts_with('.') || name == "target") {
                walk(&path, files);
            }
        } else {
            files.push(path);
        }
    }
}

#[test]
fn no_tracked_file_points_outside_the_repository() {
    let root = repository_root();
    let patterns = forbidden();
    let files = repository_files(&root);
    assert!(!files.is_empty(), "no files found under {}", root.display());
    let mut found = Vec::new();
    for file in &files {
        // Binary files and files deleted from the work tree but still tracked are skipped.
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            if patterns.iter().any(|p| line.contains(p.as_str())) {
                let rel = file.strip_prefix(&root).unwrap_or(file);
                found.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "files that point outside the repository (cite docs/contract.md instead):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_known_answer_vectors_are_in_the_repository() {
    let dir = repository_root().join("tests/fixtures/vectors");
    for name in ["hmac-v1.json", "hmac-v2.json"] {
        let path = dir.join(name);
        assert!(path.is_file(), "{} is missing", path.display());
    }
}
