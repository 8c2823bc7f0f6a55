//! The codebase's shape, held by tests rather than by good intentions:
//!
//! - no source file over 1,000 lines outside the tests (a suite's file, a
//!   `tests.rs` module or anything under a `tests/` directory may be longer);
//! - no function over 120 lines, tests included, counted from its signature
//!   to its closing brace;
//! - every code name ARCHITECTURE.md puts in backticks still exists: a path
//!   is a file or directory of the tree, a Rust name (`Store`,
//!   `Session::run`, `take_for_host`) is defined in the tree's Rust code.
//!
//! The files are the ones git tracks (`git ls-files`), so a fresh clone and a
//! working checkout are judged alike; `fuzz/` is its own workspace and counts
//! too.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use syn::spanned::Spanned;
use syn::visit::Visit;

const MAX_FILE_LINES: usize = 1_000;
const MAX_FN_LINES: usize = 120;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Tracked files matching `pattern`, relative to the repository's root.
fn tracked(pattern: &str) -> Vec<String> {
    let out = Command::new("git")
        .args(["ls-files", "-z", "--", pattern])
        .current_dir(root())
        .output()
        .expect("git ls-files");
    assert!(out.status.success(), "git ls-files failed: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8 file names")
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn rust_files() -> Vec<(String, String)> {
    let files: Vec<(String, String)> = tracked("*.rs")
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(root().join(&p))
                .unwrap_or_else(|e| panic!("reading {p}: {e}"));
            (p, text)
        })
        .collect();
    assert!(files.len() > 50, "only {} Rust files found", files.len());
    files
}

/// A file that holds tests: a suite, a test module of its own, or anything in
/// a `tests/` directory (an integration test's shared module).
fn is_test_file(path: &str) -> bool {
    path.starts_with("tests/tests/")
        || path.contains("/tests/")
        || path.ends_with("/tests.rs")
        || path.ends_with("_tests.rs")
}

#[test]
fn no_source_file_over_1000_lines_outside_the_tests() {
    let mut over = Vec::new();
    for (path, text) in rust_files() {
        let lines = text.lines().count();
        if lines > MAX_FILE_LINES && !is_test_file(&path) {
            over.push(format!("{path}: {lines} lines"));
        }
    }
    assert!(
        over.is_empty(),
        "files over {MAX_FILE_LINES} lines (split them, or move a test module \
         to its own file):\n  {}",
        over.join("\n  ")
    );
}

/// Every function with a body, with the line its signature starts on and
/// the line its body ends on.
#[derive(Default)]
struct Functions {
    found: Vec<(String, usize, usize)>,
}

impl Functions {
    fn note(&mut self, name: String, sig: proc_macro2::Span, body: proc_macro2::Span) {
        self.found.push((name, sig.start().line, body.end().line));
    }
}

impl<'ast> Visit<'ast> for Functions {
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.note(f.sig.ident.to_string(), f.sig.span(), f.block.span());
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.note(f.sig.ident.to_string(), f.sig.span(), f.block.span());
        syn::visit::visit_impl_item_fn(self, f);
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(body) = &f.default {
            self.note(f.sig.ident.to_string(), f.sig.span(), body.span());
        }
        syn::visit::visit_trait_item_fn(self, f);
    }
}

fn functions(path: &str, text: &str) -> Vec<(String, usize, usize)> {
    let file = syn::parse_file(text).unwrap_or_else(|e| panic!("parsing {path}: {e}"));
    let mut v = Functions::default();
    v.visit_file(&file);
    v.found
}

#[test]
fn the_function_counter_measures_signature_to_closing_brace() {
    let text = "fn short() {}\n\nimpl X {\n    pub fn three(\n        a: u8,\n    ) {\n        let _ = a;\n    }\n}\n";
    let found = functions("example.rs", text);
    assert_eq!(
        found,
        vec![("short".to_owned(), 1, 1), ("three".to_owned(), 4, 8)]
    );
}

#[test]
fn no_function_over_120_lines() {
    let mut over = Vec::new();
    for (path, text) in rust_files() {
        for (name, start, end) in functions(&path, &text) {
            let lines = end + 1 - start;
            if lines > MAX_FN_LINES {
                over.push(format!("{path}:{start} {name}: {lines} lines"));
            }
        }
    }
    assert!(
        over.is_empty(),
        "functions over {MAX_FN_LINES} lines (split them into named steps):\n  {}",
        over.join("\n  ")
    );
}

/// The backticked spans of a Markdown text, outside fenced code blocks.
fn backticked(markdown: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut parts = line.split('`');
        parts.next();
        while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
            spans.push(inside.to_owned());
        }
        // An odd count leaves the last `inside` unpaired: not a span.
    }
    spans
}

/// What a backticked span names, if it names code.
#[derive(Debug, PartialEq, Eq)]
enum Name {
    /// A file or directory, relative to the repository's root.
    Path(String),
    /// A Rust item or path: each `::` segment must be defined.
    Rust(Vec<String>),
}

fn classify(span: &str) -> Option<Name> {
    let s = span.trim();
    let looks_like_path = s.contains('/')
        && !s.contains(' ')
        && !s.starts_with('/')
        && !s.starts_with('.')
        && !s.contains("://")
        && !s.contains('{')
        && !s.contains('*');
    if looks_like_path {
        return Some(Name::Path(s.trim_end_matches('/').to_owned()));
    }
    let s = s.strip_suffix("()").unwrap_or(s);
    let segments: Vec<&str> = s.split("::").collect();
    let identifier = |seg: &&str| {
        let mut chars = seg.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if !segments.iter().all(identifier) {
        return None;
    }
    // A plain lowercase word with no `_` is prose or a command (`sqlite`,
    // `root`); a code name has a `::`, a `_`, or an upper-case letter.
    let codeish =
        segments.len() > 1 || s.contains('_') || s.chars().any(|c| c.is_ascii_uppercase());
    if !codeish || s.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        // ALL_CAPS is mostly environment variables and SQL words: skipped.
        return None;
    }
    Some(Name::Rust(
        segments.into_iter().map(str::to_owned).collect(),
    ))
}

#[test]
fn spans_are_classified_as_paths_rust_names_or_prose() {
    assert_eq!(
        classify("cc-listener/src/store/"),
        Some(Name::Path("cc-listener/src/store".into()))
    );
    assert_eq!(
        classify("Session::run"),
        Some(Name::Rust(vec!["Session".into(), "run".into()]))
    );
    assert_eq!(
        classify("take_for_host()"),
        Some(Name::Rust(vec!["take_for_host".into()]))
    );
    assert_eq!(classify("sqlite"), None);
    assert_eq!(classify("CC_LOG"), None);
    assert_eq!(classify("PRAGMA user_version"), None);
    assert_eq!(classify("/etc/cron.d/croncommander"), None);
    assert_eq!(classify("postgres://…"), None);
    assert_eq!(classify(".te/.fc/.if"), None);
}

/// Every name the tree's code uses: identifiers of the Rust code (in
/// definitions, uses and macro bodies), words of its string literals (wire
/// message types, SQL tables, JSON fields), and words of the tracked files
/// that are code in another language (SQL, JavaScript, the SELinux policy,
/// shell). Markdown does not count: a name only prose still mentions is gone.
#[derive(Default)]
struct Defined {
    names: BTreeSet<String>,
}

impl Defined {
    fn words(&mut self, text: &str) {
        for w in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !w.is_empty() {
                self.names.insert(w.to_owned());
            }
        }
    }
}

impl<'ast> Visit<'ast> for Defined {
    fn visit_ident(&mut self, i: &'ast proc_macro2::Ident) {
        self.names.insert(i.to_string());
    }

    fn visit_lit_str(&mut self, s: &'ast syn::LitStr) {
        self.words(&s.value());
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        // Names inside macro bodies (`tokio::select!`, `maud::html!`) count.
        for token in m.tokens.clone() {
            collect_idents(token, &mut self.names);
        }
        syn::visit::visit_macro(self, m);
    }
}

fn collect_idents(tree: proc_macro2::TokenTree, names: &mut BTreeSet<String>) {
    match tree {
        proc_macro2::TokenTree::Ident(i) => {
            names.insert(i.to_string());
        }
        proc_macro2::TokenTree::Group(g) => {
            for t in g.stream() {
                collect_idents(t, names);
            }
        }
        proc_macro2::TokenTree::Literal(l) => {
            let text = l.to_string();
            if text.starts_with('"') || text.starts_with("r#") || text.starts_with("r\"") {
                for w in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if !w.is_empty() {
                        names.insert(w.to_owned());
                    }
                }
            }
        }
        proc_macro2::TokenTree::Punct(_) => {}
    }
}

#[test]
fn every_code_name_in_architecture_md_exists() {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut defined = Defined::default();
    for (path, text) in rust_files() {
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"));
        defined.visit_file(&file);
    }
    let files: BTreeSet<String> = tracked(".").into_iter().collect();
    for path in &files {
        let other_code = [
            ".sql", ".js", ".te", ".fc", ".if", ".sh", ".service", ".css",
        ]
        .iter()
        .any(|ext| path.ends_with(ext));
        if other_code {
            let text = std::fs::read_to_string(root().join(path)).unwrap_or_default();
            defined.words(&text);
        }
    }
    // A path is written from the root (`cc-listener/src/store`) or from the
    // directory the text is about (`ui/app.js` in the listener's section).
    let exists = |p: &str| {
        let dir = format!("{p}/");
        let suffix = format!("/{p}");
        let suffix_dir = format!("/{p}/");
        files.iter().any(|f| {
            f == p || f.starts_with(&dir) || f.ends_with(&suffix) || f.contains(&suffix_dir)
        })
    };
    let mut missing = Vec::new();
    let mut checked = 0;
    for span in backticked(&doc) {
        match classify(&span) {
            Some(Name::Path(p)) => {
                checked += 1;
                if !exists(&p) {
                    missing.push(format!("`{span}`: no such file or directory"));
                }
            }
            Some(Name::Rust(segments)) => {
                checked += 1;
                let gone: Vec<&String> = segments
                    .iter()
                    .filter(|s| !defined.names.contains(s.as_str()))
                    .collect();
                if !gone.is_empty() {
                    missing.push(format!("`{span}`: no Rust code names {gone:?}"));
                }
            }
            None => {}
        }
    }
    assert!(
        checked > 100,
        "only {checked} code names checked: is the classifier right?"
    );
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names code that is not in the tree:\n  {}",
        missing.join("\n  ")
    );
}
