//! A vendor is one file under the core crate's dialects plus its registry line: outside
//! `core/src/dialect/` and the demo bots (`src/demo*`), no source file names a vendor.
//!
//! Unit-test fixtures (everything from a file's first line starting with `#[cfg(test)]`) may name
//! vendors, as may a documented compatibility alias marked with a trailing `// legacy key`.

use std::fs;
use std::path::{Path, PathBuf};

/// The vendors, lowercase.
const VENDORS: [&str; 7] = [
    "haptik",
    "csml",
    "rasa",
    "lex",
    "dialogflow",
    "directline",
    "botframework",
];

/// Source trees checked, relative to the repository root.
const ROOTS: [&str; 2] = ["src", "core/src"];

/// Paths left out, relative to the repository root: the dialects and the demo bots.
const EXEMPT: [&str; 2] = ["core/src/dialect/", "src/demo"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `line` names a vendor at the start of a word: after a non-letter (so `verify_x` and `x::`
/// count) or, for a capitalised name, after a lowercase letter (camel case). `lex` also needs a
/// non-lowercase letter after it, so `flex`, `duplex` and `lexical` are not vendors.
fn names_a_vendor(line: &str) -> bool {
    let b = line.as_bytes();
    VENDORS.iter().any(|v| {
        (0..b.len().saturating_sub(v.len() - 1)).any(|i| {
            let m = &b[i..i + v.len()];
            if !m.eq_ignore_ascii_case(v.as_bytes()) {
                return false;
            }
            let before = i.checked_sub(1).map(|j| b[j]);
            let starts = match before {
                None => true,
                Some(c) if !c.is_ascii_alphabetic() => true,
                Some(c) => c.is_ascii_lowercase() && m[0].is_ascii_uppercase(),
            };
            let after = b.get(i + v.len()).copied();
            let ends = *v != "lex" || !after.is_some_and(|c| c.is_ascii_lowercase());
            starts && ends
        })
    })
}

/// The `file:line: text` of each vendor name in a file's non-test lines.
fn hits(root: &Path, path: &Path) -> Vec<String> {
    let rel = path
        .strip_prefix(root)
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/");
    if EXEMPT.iter().any(|e| rel.starts_with(e)) {
        return Vec::new();
    }
    let text = fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .take_while(|(_, l)| !l.starts_with("#[cfg(test)]"))
        .filter(|(_, l)| !l.trim_end().ends_with("// legacy key") && names_a_vendor(l))
        .map(|(n, l)| format!("{rel}:{}: {}", n + 1, l.trim()))
        .collect()
}

#[test]
fn no_source_outside_the_dialects_names_a_vendor() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for r in ROOTS {
        rust_files(&root.join(r), &mut files);
    }
    files.sort();
    assert!(files.len() > 50, "found only {} source files", files.len());
    let found: Vec<String> = files.iter().flat_map(|f| hits(root, f)).collect();
    assert!(
        found.is_empty(),
        "{} line(s) outside core/src/dialect/ name a vendor:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn word_starts_only() {
    assert!(names_a_vendor("use crate::dialect::haptik;"));
    assert!(names_a_vendor("fn verify_csml()"));
    assert!(names_a_vendor("RawKind::LexMessage"));
    assert!(names_a_vendor("DemoBot::with_dialogflow"));
    assert!(names_a_vendor("Rasa's token"));
    assert!(names_a_vendor("AsyncHaptik"));
    assert!(!names_a_vendor("display:flex; duplex; lexical; Alex"));
    assert!(!names_a_vendor("evilexample.org"));
}
