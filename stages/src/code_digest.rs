// Code digests of the stage kinds, run by build.rs (and unit-tested as a
// test-only module of the crate). Kept free of crate imports for that reason.
//
// A kind's digest is a sha256 over the token streams of exactly the source
// files the registry lists for it (pipeline/src/registry.rs), so comments,
// doc comments, whitespace and formatting never count, and `#[cfg(test)]`
// and `#[test]` items are cut out before hashing. Every `.rs` file of the
// workspace's source roots must be in some kind's code, on the registry's
// NO_OUTPUT_EFFECT list, or compiled only for tests (reached only through a
// `#[cfg(test)] mod`): otherwise the build fails and names the file.
#![allow(dead_code)] // the crate's tests use only part of it

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;
use sha2::{Digest, Sha256};
use syn::visit_mut::VisitMut;

/// One kind's code digest and the files that went into it.
#[derive(Debug, Clone, PartialEq)]
pub struct KindCode {
    pub digest: String,
    /// Workspace-relative path -> sha256 of that file's token stream.
    pub files: BTreeMap<String, String>,
}

#[derive(Debug)]
pub enum CodeError {
    Io(PathBuf, std::io::Error),
    Parse(PathBuf, String),
    /// A registry entry that names no existing file or folder.
    Missing {
        kind: String,
        entry: String,
    },
    /// Sources no kind covers and the exemption list does not name.
    Unclassified(Vec<String>),
}

impl std::fmt::Display for CodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodeError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            CodeError::Parse(p, e) => write!(f, "{}: not parseable Rust: {e}", p.display()),
            CodeError::Missing { kind, entry } => write!(
                f,
                "pipeline/src/registry.rs: stage kind {kind} lists code {entry}, which does not exist"
            ),
            CodeError::Unclassified(files) => write!(
                f,
                "these source files are in no stage kind's code digest and not on the \
                 NO_OUTPUT_EFFECT list of pipeline/src/registry.rs: {}. Add each to the `code` \
                 of the kinds whose outputs it can change, or to NO_OUTPUT_EFFECT with the reason \
                 it cannot change any",
                files.join(", ")
            ),
        }
    }
}

/// The canonical token text of a source file: comments and formatting are
/// gone by tokenising; doc attributes and test-only items are removed.
pub fn canonical_tokens(text: &str, path: &Path) -> Result<String, CodeError> {
    let mut file =
        syn::parse_file(text).map_err(|e| CodeError::Parse(path.to_path_buf(), e.to_string()))?;
    StripTests.visit_file_mut(&mut file);
    let tokens = strip_docs(file.into_token_stream());
    Ok(tokens.to_string())
}

fn is_test_attr(a: &syn::Attribute) -> bool {
    if a.path().is_ident("test") {
        return true;
    }
    if !a.path().is_ident("cfg") {
        return false;
    }
    let Ok(list) = a.meta.require_list() else {
        return false;
    };
    let s = list.tokens.to_string();
    s == "test" || (s.starts_with("all (") && (s.contains("(test ,") || s.contains(", test")))
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(is_test_attr)
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item::*;
    match item {
        Const(i) => &i.attrs,
        Enum(i) => &i.attrs,
        ExternCrate(i) => &i.attrs,
        Fn(i) => &i.attrs,
        ForeignMod(i) => &i.attrs,
        Impl(i) => &i.attrs,
        Macro(i) => &i.attrs,
        Mod(i) => &i.attrs,
        Static(i) => &i.attrs,
        Struct(i) => &i.attrs,
        Trait(i) => &i.attrs,
        TraitAlias(i) => &i.attrs,
        Type(i) => &i.attrs,
        Union(i) => &i.attrs,
        Use(i) => &i.attrs,
        _ => &[],
    }
}

struct StripTests;

impl VisitMut for StripTests {
    fn visit_file_mut(&mut self, f: &mut syn::File) {
        f.items.retain(|i| !is_test(item_attrs(i)));
        syn::visit_mut::visit_file_mut(self, f);
    }
    fn visit_item_mod_mut(&mut self, m: &mut syn::ItemMod) {
        if let Some((_, items)) = &mut m.content {
            items.retain(|i| !is_test(item_attrs(i)));
        }
        syn::visit_mut::visit_item_mod_mut(self, m);
    }
    fn visit_item_impl_mut(&mut self, i: &mut syn::ItemImpl) {
        i.items.retain(|ii| {
            !is_test(match ii {
                syn::ImplItem::Const(x) => &x.attrs,
                syn::ImplItem::Fn(x) => &x.attrs,
                syn::ImplItem::Type(x) => &x.attrs,
                syn::ImplItem::Macro(x) => &x.attrs,
                _ => &[],
            })
        });
        syn::visit_mut::visit_item_impl_mut(self, i);
    }
    fn visit_block_mut(&mut self, b: &mut syn::Block) {
        b.stmts
            .retain(|s| !matches!(s, syn::Stmt::Item(i) if is_test(item_attrs(i))));
        syn::visit_mut::visit_block_mut(self, b);
    }
}

/// Removes `#[doc = ...]` and `#![doc = ...]` (what `///` and `//!` become).
fn strip_docs(ts: TokenStream) -> TokenStream {
    let tokens: Vec<TokenTree> = ts.into_iter().collect();
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if let TokenTree::Punct(p) = &tokens[i] {
            if p.as_char() == '#' {
                let bang =
                    matches!(tokens.get(i + 1), Some(TokenTree::Punct(q)) if q.as_char() == '!');
                let g = if bang { i + 2 } else { i + 1 };
                if let Some(TokenTree::Group(group)) = tokens.get(g) {
                    let first = group.stream().into_iter().next();
                    if group.delimiter() == Delimiter::Bracket
                        && matches!(&first, Some(TokenTree::Ident(id)) if id == "doc")
                    {
                        i = g + 1;
                        continue;
                    }
                }
            }
        }
        out.push(match &tokens[i] {
            TokenTree::Group(g) => {
                let mut ng = proc_macro2::Group::new(g.delimiter(), strip_docs(g.stream()));
                ng.set_span(g.span());
                TokenTree::Group(ng)
            }
            t => t.clone(),
        });
        i += 1;
    }
    out.into_iter().collect()
}

/// `mod x;` declarations of a file (also inside inline modules), with
/// whether each is compiled only for tests.
fn module_decls(text: &str, path: &Path) -> Result<Vec<(PathBuf, bool)>, CodeError> {
    let file =
        syn::parse_file(text).map_err(|e| CodeError::Parse(path.to_path_buf(), e.to_string()))?;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let dir = path.parent().unwrap_or(Path::new("."));
    // Children of lib.rs, main.rs and mod.rs live beside them; of foo.rs in foo/.
    let base = if matches!(name, "lib" | "main" | "mod") {
        dir.to_path_buf()
    } else {
        dir.join(name)
    };
    let mut out = Vec::new();
    collect_decls(&file.items, &base, dir, false, &mut out);
    Ok(out)
}

fn collect_decls(
    items: &[syn::Item],
    base: &Path,
    file_dir: &Path,
    in_test: bool,
    out: &mut Vec<(PathBuf, bool)>,
) {
    for item in items {
        let syn::Item::Mod(m) = item else { continue };
        let test = in_test || is_test(&m.attrs);
        let explicit = m.attrs.iter().find_map(|a| {
            if !a.path().is_ident("path") {
                return None;
            }
            match &a.meta {
                syn::Meta::NameValue(nv) => match &nv.value {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) => Some(s.value()),
                    _ => None,
                },
                _ => None,
            }
        });
        let name = m.ident.to_string();
        match &m.content {
            None => {
                let p = match explicit {
                    Some(p) => file_dir.join(p),
                    None => {
                        let flat = base.join(format!("{name}.rs"));
                        if flat.exists() {
                            flat
                        } else {
                            base.join(&name).join("mod.rs")
                        }
                    }
                };
                out.push((p, test));
            }
            Some((_, inner)) => collect_decls(inner, &base.join(&name), file_dir, test, out),
        }
    }
}

/// Every `.rs` file under `roots`, workspace-relative, sorted.
fn all_sources(ws: &Path, roots: &[&str]) -> Result<BTreeSet<String>, CodeError> {
    let mut out = BTreeSet::new();
    for root in roots {
        let dir = ws.join(root);
        if !dir.exists() {
            continue;
        }
        for entry in walkdir::WalkDir::new(&dir) {
            let entry = entry.map_err(|e| CodeError::Io(dir.clone(), e.into()))?;
            if entry.file_type().is_file() && entry.path().extension().is_some_and(|e| e == "rs") {
                out.insert(rel(ws, entry.path()));
            }
        }
    }
    Ok(out)
}

fn rel(ws: &Path, p: &Path) -> String {
    p.strip_prefix(ws)
        .unwrap_or(p)
        .to_string_lossy()
        .replace('\\', "/")
}

/// Files compiled outside tests, reached through the module trees of the
/// crate roots that exist under `roots` (`lib.rs`, `main.rs`).
fn compiled_files(ws: &Path, roots: &[&str]) -> Result<BTreeSet<String>, CodeError> {
    let mut compiled = BTreeSet::new();
    let mut stack: Vec<PathBuf> = Vec::new();
    for root in roots {
        for crate_root in ["lib.rs", "main.rs"] {
            let p = ws.join(root).join(crate_root);
            if p.exists() {
                stack.push(p);
            }
        }
    }
    while let Some(p) = stack.pop() {
        if !compiled.insert(rel(ws, &p)) {
            continue;
        }
        let text = std::fs::read_to_string(&p).map_err(|e| CodeError::Io(p.clone(), e))?;
        for (child, test) in module_decls(&text, &p)? {
            if !test && child.exists() {
                stack.push(child);
            }
        }
    }
    Ok(compiled)
}

fn under(file: &str, entry: &str) -> bool {
    file == entry || file.starts_with(&format!("{}/", entry.trim_end_matches('/')))
}

/// Computes every kind's code digest and checks that no source is left
/// unclassified. `kinds` is (name, code entries); `exempt` the
/// NO_OUTPUT_EFFECT entries.
pub fn kind_digests(
    ws: &Path,
    roots: &[&str],
    kinds: &[(&str, &[&str])],
    exempt: &[&str],
) -> Result<BTreeMap<String, KindCode>, CodeError> {
    let sources = all_sources(ws, roots)?;
    let compiled = compiled_files(ws, roots)?;
    // A file only compiled for tests (reached only via #[cfg(test)] mod)
    // cannot change outputs; an orphan (reached by nothing) must still be
    // classified, since the next `mod` line would compile it.
    let test_only: BTreeSet<&String> = {
        let mut reached_in_test = BTreeSet::new();
        for f in &compiled {
            let p = ws.join(f);
            let text = std::fs::read_to_string(&p).map_err(|e| CodeError::Io(p.clone(), e))?;
            for (child, test) in module_decls(&text, &p)? {
                if test {
                    reached_in_test.insert(rel(ws, &child));
                }
            }
        }
        // Test modules' own children are test-only too.
        let mut stack: Vec<String> = reached_in_test.iter().cloned().collect();
        while let Some(f) = stack.pop() {
            let p = ws.join(&f);
            if let Ok(text) = std::fs::read_to_string(&p) {
                for (child, _) in module_decls(&text, &p)? {
                    let c = rel(ws, &child);
                    if reached_in_test.insert(c.clone()) {
                        stack.push(c);
                    }
                }
            }
        }
        sources
            .iter()
            .filter(|f| reached_in_test.contains(*f) && !compiled.contains(*f))
            .collect()
    };
    let exempt_file = |f: &str| exempt.iter().any(|e| under(f, e));
    let mut token_cache: BTreeMap<String, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut covered: BTreeSet<String> = BTreeSet::new();
    for (kind, entries) in kinds {
        let mut files = BTreeMap::new();
        for entry in *entries {
            if !ws.join(entry).exists() {
                return Err(CodeError::Missing {
                    kind: kind.to_string(),
                    entry: entry.to_string(),
                });
            }
            let is_dir = ws.join(entry).is_dir();
            for f in sources.iter().filter(|f| under(f, entry)) {
                // A folder entry leaves out test-only and exempt files; a
                // file named exactly is always in.
                if is_dir && (test_only.contains(f) || exempt_file(f)) {
                    continue;
                }
                let digest = match token_cache.get(f) {
                    Some(d) => d.clone(),
                    None => {
                        let p = ws.join(f);
                        let text =
                            std::fs::read_to_string(&p).map_err(|e| CodeError::Io(p.clone(), e))?;
                        let d = hex::encode(Sha256::digest(canonical_tokens(&text, &p)?));
                        token_cache.insert(f.clone(), d.clone());
                        d
                    }
                };
                files.insert(f.clone(), digest);
                covered.insert(f.clone());
            }
        }
        let mut h = Sha256::new();
        for (f, d) in &files {
            // The path is in: moving code between files of one kind is
            // rare, and a file of the same tokens under another name is a
            // different module.
            h.update(f.as_bytes());
            h.update([0]);
            h.update(d.as_bytes());
            h.update([0]);
        }
        out.insert(
            kind.to_string(),
            KindCode {
                digest: hex::encode(h.finalize()),
                files,
            },
        );
    }
    let unclassified: Vec<String> = sources
        .iter()
        .filter(|f| !covered.contains(*f) && !test_only.contains(f) && !exempt_file(f))
        .cloned()
        .collect();
    if !unclassified.is_empty() {
        return Err(CodeError::Unclassified(unclassified));
    }
    Ok(out)
}

/// Versions of `names` in a Cargo.lock text ("name@version", in order).
pub fn locked_versions(lock: &str, names: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in lock.lines() {
        let line = line.trim();
        if line == "[[package]]" {
            current = None;
        } else if let Some(n) = line.strip_prefix("name = ") {
            current = Some(n.trim_matches('"').to_string());
        } else if let Some(v) = line.strip_prefix("version = ") {
            if let Some(n) = current.as_deref().filter(|n| names.contains(n)) {
                out.push((n.to_string(), v.trim_matches('"').to_string()));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(s: &str) -> String {
        canonical_tokens(s, Path::new("x.rs")).unwrap()
    }

    #[test]
    fn comments_docs_formatting_and_tests_do_not_count() {
        let base = tokens("pub fn loss(x: f64) -> f64 { x * 0.5 }\n");
        let edited = tokens(
            "//! Module docs.\n\
             /// The loss.\n\
             pub fn loss(x:f64)->f64{\n    // a comment\n    x*0.5 /* inline */\n}\n\
             #[cfg(test)]\nmod tests { #[test] fn t() { assert_eq!(super::loss(2.0), 1.0); } }\n\
             #[test]\nfn loose() {}\n",
        );
        assert_eq!(base, edited);
        assert_ne!(base, tokens("pub fn loss(x: f64) -> f64 { x * 0.25 }\n"));
        assert_ne!(
            base,
            tokens("pub fn loss(x: f64) -> f64 { println!(\"x\"); x * 0.5 }\n")
        );
    }

    #[test]
    fn test_items_inside_impls_and_blocks_are_cut() {
        let base = tokens("impl A { fn f(&self) {} }");
        assert_eq!(
            base,
            tokens("impl A { fn f(&self) {} #[cfg(test)] fn helper() {} }")
        );
        assert_eq!(
            tokens("fn f() { let a = 1; }"),
            tokens("fn f() { #[cfg(test)] fn g() {} let a = 1; }")
        );
        // cfg(not(test)) is real code.
        assert_ne!(
            tokens("fn f() {}"),
            tokens("fn f() {} #[cfg(not(test))] fn g() {}")
        );
    }

    fn workspace(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    const LIB: &str = "pub mod a;\nmod cli;\n#[cfg(test)]\nmod tests;\n";

    fn digests(ws: &Path) -> Result<BTreeMap<String, KindCode>, CodeError> {
        kind_digests(
            ws,
            &["k/src"],
            &[
                ("one", &["k/src/lib.rs", "k/src/a"]),
                ("two", &["k/src/lib.rs"]),
            ],
            &["k/src/cli.rs"],
        )
    }

    #[test]
    fn kinds_cover_their_files_and_test_files_are_out() {
        let ws = workspace(&[
            ("k/src/lib.rs", LIB),
            (
                "k/src/a/mod.rs",
                "pub fn f() -> u8 { 1 }\n#[cfg(test)] mod t;\n",
            ),
            ("k/src/a/t.rs", "fn helper() {}"),
            ("k/src/cli.rs", "fn main() {}"),
            ("k/src/tests.rs", "fn case() {}"),
        ]);
        let d = digests(ws.path()).unwrap();
        assert_eq!(
            d["one"].files.keys().collect::<Vec<_>>(),
            vec!["k/src/a/mod.rs", "k/src/lib.rs"]
        );
        assert_ne!(d["one"].digest, d["two"].digest);
        // Editing a test-only file or the exempt CLI changes nothing.
        std::fs::write(ws.path().join("k/src/tests.rs"), "fn case2() {}").unwrap();
        std::fs::write(ws.path().join("k/src/a/t.rs"), "fn helper2() {}").unwrap();
        std::fs::write(ws.path().join("k/src/cli.rs"), "fn main() { run() }").unwrap();
        assert_eq!(digests(ws.path()).unwrap(), d);
        // Editing covered code changes only the kinds that cover it.
        std::fs::write(ws.path().join("k/src/a/mod.rs"), "pub fn f() -> u8 { 2 }").unwrap();
        let e = digests(ws.path()).unwrap();
        assert_ne!(e["one"].digest, d["one"].digest);
        assert_eq!(e["two"].digest, d["two"].digest);
    }

    #[test]
    fn an_unclassified_source_fails_and_is_named() {
        let ws = workspace(&[
            ("k/src/lib.rs", LIB),
            ("k/src/a/mod.rs", "pub fn f() {}"),
            ("k/src/cli.rs", "fn main() {}"),
            ("k/src/tests.rs", ""),
            ("k/src/stray.rs", "pub fn g() {}"),
        ]);
        match digests(ws.path()) {
            Err(CodeError::Unclassified(files)) => assert_eq!(files, vec!["k/src/stray.rs"]),
            other => panic!("{other:?}"),
        }
        let msg = digests(ws.path()).unwrap_err().to_string();
        assert!(
            msg.contains("k/src/stray.rs") && msg.contains("NO_OUTPUT_EFFECT"),
            "{msg}"
        );
    }

    #[test]
    fn a_registry_entry_that_does_not_exist_is_an_error() {
        let ws = workspace(&[("k/src/lib.rs", "")]);
        let err = kind_digests(ws.path(), &["k/src"], &[("one", &["k/src/gone.rs"])], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("one") && err.contains("k/src/gone.rs"),
            "{err}"
        );
    }

    #[test]
    fn locked_versions_reads_cargo_lock() {
        let lock = "[[package]]\nname = \"image\"\nversion = \"0.25.10\"\n\n[[package]]\nname = \"other\"\nversion = \"1.0.0\"\n";
        assert_eq!(
            locked_versions(lock, &["image"]),
            vec![("image".to_string(), "0.25.10".to_string())]
        );
    }
}
