// Code digests of the stage kinds, run by build.rs (and unit-tested as a
// test-only module of the crate). Kept free of crate imports for that reason.
//
// Which files. A kind names its entry points in pipeline/src/registry.rs;
// its files are every file reachable from them through paths: `use` trees
// and every `a::b` path in code and in macro bodies, resolved over the
// workspace's module trees (`crate::`, `super::`, `self::`, a child module,
// a module imported by `use`, or a workspace crate such as `bsce_stages::`).
// The walk stops at files on the NO_OUTPUT_EFFECT list and at the entry
// points of the kind's other variants (a train stage covers its own
// method's loss only). `mod` lines only shape the tree: a module uses a
// child through a path, which is followed. Files reached only through
// `#[cfg(test)] mod` are test code, never followed. Every `.rs` file of the
// source roots must be reached by some kind, exempt, test-only, or hold
// nothing but `mod` and `use` lines: otherwise the build fails and names
// it.
//
// What is hashed: no path and no order, so code can move between the files
// of a kind (or into a new file) without moving a key. Each file is
// tokenised (comments, doc comments, formatting and test items gone); the
// digest is a sha256 over the sorted multiset of its top-level items
// (inline modules flattened), each with its visibility removed and every
// workspace path cut to what follows its modules (`crate::loss::icarl::x`
// and `super::icarl::x` are both `x`); then over the sorted set of `use`
// lines that can change meaning: imports from outside the workspace, and
// renames. A name defined by two different items of one kind (`loss` in
// icarl.rs and lucir.rs) is written with the digest of the item a path
// resolves to, so choosing the other one changes the digest. What this
// does not see: two items of one kind with one name and the same tokens are
// taken as one; moving an item whose name another item of the kind shares
// may need an import that changes the digest.
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
                "these source files are reached by no stage kind's entry points and are not on the \
                 NO_OUTPUT_EFFECT list of pipeline/src/registry.rs: {}. Use them from the code of \
                 the kinds whose outputs they can change (or name them as an entry point), or add \
                 them to NO_OUTPUT_EFFECT with the reason they cannot change any",
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

/// One kind (or kind:variant) to digest: its entry points (files, or
/// folders meaning every file in them), and the files its walk must not
/// enter (the other variants' entry points).
#[derive(Debug, Clone)]
pub struct KindSpec<'a> {
    pub name: String,
    pub entries: Vec<&'a str>,
    pub stop: Vec<&'a str>,
}

/// A `mod` declaration of a file: its path below the file's module, the
/// file holding it (None: inline), whether it is compiled only for tests.
struct Decl {
    segs: Vec<String>,
    file: Option<PathBuf>,
    test: bool,
}

fn module_decls(text: &str, path: &Path) -> Result<Vec<Decl>, CodeError> {
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
    collect_decls(&file.items, &base, dir, &[], false, &mut out);
    Ok(out)
}

fn collect_decls(
    items: &[syn::Item],
    base: &Path,
    file_dir: &Path,
    prefix: &[String],
    in_test: bool,
    out: &mut Vec<Decl>,
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
        let mut segs = prefix.to_vec();
        segs.push(name.clone());
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
                out.push(Decl {
                    segs,
                    file: Some(p),
                    test,
                });
            }
            Some((_, inner)) => {
                out.push(Decl {
                    segs: segs.clone(),
                    file: None,
                    test,
                });
                collect_decls(inner, &base.join(&name), file_dir, &segs, test, out);
            }
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

fn under(file: &str, entry: &str) -> bool {
    file == entry || file.starts_with(&format!("{}/", entry.trim_end_matches('/')))
}

/// A module: the crate root file it belongs to and its path in the crate.
type ModId = (String, Vec<String>);

/// The workspace's module trees (outside tests): where each module is.
#[derive(Default)]
struct Modules {
    /// Module -> the file holding it (an inline module: its parent's file).
    file_of: BTreeMap<ModId, String>,
    /// File -> the module it is.
    module_of: BTreeMap<String, ModId>,
    /// Library crates as code names them (`bsce_stages`) -> root file.
    crates: BTreeMap<String, String>,
    /// Files reached only through `#[cfg(test)] mod`.
    test_only: BTreeSet<String>,
}

/// The package name of the Cargo.toml in `dir`, as code spells it.
fn package_name(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(v) = line.strip_prefix("name") {
                let v = v.trim_start().strip_prefix('=')?.trim().trim_matches('"');
                return Some(v.replace('-', "_"));
            }
        }
    }
    None
}

impl Modules {
    fn build(ws: &Path, roots: &[&str]) -> Result<Modules, CodeError> {
        let mut m = Modules::default();
        let mut reached_in_test: Vec<PathBuf> = Vec::new();
        for root in roots {
            let dir = ws.join(root);
            for crate_root in ["lib.rs", "main.rs"] {
                let p = dir.join(crate_root);
                if !p.exists() {
                    continue;
                }
                let id = rel(ws, &p);
                if crate_root == "lib.rs" {
                    if let Some(name) = dir.parent().and_then(package_name) {
                        m.crates.insert(name, id.clone());
                    }
                }
                let mut stack = vec![(p, Vec::<String>::new())];
                while let Some((file, path)) = stack.pop() {
                    let f = rel(ws, &file);
                    if m.module_of.contains_key(&f) {
                        continue;
                    }
                    m.module_of.insert(f.clone(), (id.clone(), path.clone()));
                    m.file_of.insert((id.clone(), path.clone()), f.clone());
                    let text = std::fs::read_to_string(&file)
                        .map_err(|e| CodeError::Io(file.clone(), e))?;
                    for d in module_decls(&text, &file)? {
                        let mut child = path.clone();
                        child.extend(d.segs.iter().cloned());
                        match d.file {
                            Some(p) if d.test => reached_in_test.push(p),
                            Some(p) if p.exists() => stack.push((p, child)),
                            Some(_) => {}
                            None if d.test => {}
                            None => {
                                m.file_of.insert((id.clone(), child), f.clone());
                            }
                        }
                    }
                }
            }
        }
        // Test modules' own children are test-only too.
        while let Some(p) = reached_in_test.pop() {
            let f = rel(ws, &p);
            if m.module_of.contains_key(&f) || !m.test_only.insert(f) {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(&p) {
                reached_in_test.extend(module_decls(&text, &p)?.into_iter().filter_map(|d| d.file));
            }
        }
        Ok(m)
    }

    fn is_module(&self, krate: &str, path: &[String]) -> bool {
        self.file_of
            .contains_key(&(krate.to_string(), path.to_vec()))
    }
}

/// What one file's paths are resolved against.
struct Scope<'a> {
    modules: &'a Modules,
    /// The file's own module.
    here: ModId,
    /// Modules the file imports by name (`use crate::loss;`).
    aliases: BTreeMap<String, ModId>,
}

impl Scope<'_> {
    /// A path as written: the module it reaches inside the workspace and the
    /// index of its first segment past the modules; None when it starts
    /// outside (std, tch, a local name).
    fn resolve(&self, segs: &[String]) -> Option<(ModId, usize)> {
        let (krate, here) = &self.here;
        let first = segs.first()?;
        let (mut module, mut i): (ModId, usize) = if first == "crate" {
            ((krate.clone(), vec![]), 1)
        } else if first == "super" {
            let k = segs.iter().take_while(|s| *s == "super").count();
            if k > here.len() {
                return None;
            }
            ((krate.clone(), here[..here.len() - k].to_vec()), k)
        } else if first == "self" {
            ((krate.clone(), here.clone()), 1)
        } else if let Some(root) = self.modules.crates.get(first) {
            ((root.clone(), vec![]), 1)
        } else if let Some(m) = self.aliases.get(first) {
            (m.clone(), 1)
        } else {
            let mut child = here.clone();
            child.push(first.clone());
            if !self.modules.is_module(krate, &child) {
                return None;
            }
            ((krate.clone(), child), 1)
        };
        while i < segs.len() {
            let mut next = module.1.clone();
            next.push(segs[i].clone());
            if !self.modules.is_module(&module.0, &next) {
                break;
            }
            module.1 = next;
            i += 1;
        }
        Some((module, i))
    }

    fn file(&self, m: &ModId) -> Option<&String> {
        self.modules.file_of.get(m)
    }
}

/// One leaf of a `use` tree.
struct UsePath {
    segs: Vec<String>,
    rename: Option<String>,
    glob: bool,
}

fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<UsePath>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => out.push(use_leaf(prefix, &n.ident, None)),
        syn::UseTree::Rename(r) => out.push(use_leaf(prefix, &r.ident, Some(r.rename.to_string()))),
        syn::UseTree::Glob(_) => out.push(UsePath {
            segs: prefix.clone(),
            rename: None,
            glob: true,
        }),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_paths(t, prefix, out);
            }
        }
    }
}

/// `prefix::ident` (`use a::b::{self}` imports the module b itself).
fn use_leaf(prefix: &[String], ident: &proc_macro2::Ident, rename: Option<String>) -> UsePath {
    let mut segs = prefix.to_vec();
    if ident != "self" {
        segs.push(ident.to_string());
    }
    UsePath {
        segs,
        rename,
        glob: false,
    }
}

/// What a file's paths lead to, the same for every kind: computed once.
struct Links {
    /// The workspace files its paths and `use` trees reach.
    reached: BTreeSet<String>,
    /// The files defining the types its `impl` blocks are for: by the
    /// impl's path, or by the `use` that brings the name in (a local type
    /// is the file's own).
    impl_targets: BTreeSet<String>,
    /// (name, identity) of each named item: a digest of its tokens with
    /// workspace paths cut, so the same item anywhere has one identity.
    identities: Vec<(String, String)>,
}

fn links_of(modules: &Modules, f: &str, parsed: &Parsed) -> Links {
    let plain: Naming = &|_, name| name.to_string();
    let scope = scope_of(modules, f, parsed);
    let mut reached = BTreeSet::new();
    let mut identities = Vec::new();
    for (name, ts) in &parsed.items {
        let text = rewrite(ts.clone(), &scope, plain, &mut reached).to_string();
        if let Some(name) = name {
            identities.push((
                name.clone(),
                hex::encode(Sha256::digest(text))[..16].to_string(),
            ));
        }
    }
    for u in &parsed.uses {
        if let Some(t) = scope
            .resolve(&u.segs)
            .and_then(|(m, _)| scope.file(&m).cloned())
        {
            reached.insert(t);
        }
    }
    let impl_targets = parsed
        .impls
        .iter()
        .filter_map(|segs| {
            let path = match segs.as_slice() {
                [name] => parsed
                    .uses
                    .iter()
                    .find(|u| !u.glob && u.rename.as_ref().or(u.segs.last()) == Some(name))?
                    .segs
                    .clone(),
                _ => segs.clone(),
            };
            scope
                .resolve(&path)
                .and_then(|(m, _)| scope.file(&m).cloned())
        })
        .collect();
    Links {
        reached,
        impl_targets,
        identities,
    }
}

/// A source file as the digest sees it.
struct Parsed {
    /// Top-level items (inline modules flattened, `mod x;` and `use`
    /// left out): the name it defines, if any, and its tokens.
    items: Vec<(Option<String>, TokenStream)>,
    uses: Vec<UsePath>,
    /// The types this file's `impl` blocks are for, as written: an impl
    /// reaches its type's users without any path to its file.
    impls: Vec<Vec<String>>,
    /// sha256 of the file's canonical tokens (what `explain` lists).
    tokens_sha256: String,
}

fn item_name(item: &syn::Item) -> Option<String> {
    use syn::Item::*;
    Some(match item {
        Const(i) => i.ident.to_string(),
        Enum(i) => i.ident.to_string(),
        Fn(i) => i.sig.ident.to_string(),
        Macro(i) => i.ident.as_ref()?.to_string(),
        Static(i) => i.ident.to_string(),
        Struct(i) => i.ident.to_string(),
        Trait(i) => i.ident.to_string(),
        Type(i) => i.ident.to_string(),
        Union(i) => i.ident.to_string(),
        _ => return None,
    })
}

fn flatten(items: Vec<syn::Item>, parsed: &mut Parsed) {
    for item in items {
        match item {
            syn::Item::Mod(m) => {
                if let Some((_, inner)) = m.content {
                    flatten(inner, parsed);
                }
            }
            syn::Item::Use(u) => use_paths(&u.tree, &mut Vec::new(), &mut parsed.uses),
            other => {
                if let syn::Item::Impl(i) = &other {
                    if let syn::Type::Path(t) = &*i.self_ty {
                        parsed.impls.push(
                            t.path
                                .segments
                                .iter()
                                .map(|x| x.ident.to_string())
                                .collect(),
                        );
                    }
                }
                let name = item_name(&other);
                parsed
                    .items
                    .push((name, strip_docs(other.into_token_stream())));
            }
        }
    }
}

fn parse(ws: &Path, f: &str) -> Result<Parsed, CodeError> {
    let p = ws.join(f);
    let text = std::fs::read_to_string(&p).map_err(|e| CodeError::Io(p.clone(), e))?;
    let mut file =
        syn::parse_file(&text).map_err(|e| CodeError::Parse(p.clone(), e.to_string()))?;
    StripTests.visit_file_mut(&mut file);
    let tokens_sha256 = hex::encode(Sha256::digest(
        strip_docs(file.to_token_stream()).to_string(),
    ));
    let mut parsed = Parsed {
        items: Vec::new(),
        uses: Vec::new(),
        impls: Vec::new(),
        tokens_sha256,
    };
    flatten(file.items, &mut parsed);
    Ok(parsed)
}

fn is_colon(t: Option<&TokenTree>, joint: bool) -> bool {
    matches!(t, Some(TokenTree::Punct(p)) if p.as_char() == ':'
        && (!joint || p.spacing() == proc_macro2::Spacing::Joint))
}

/// What to write for an item a workspace path names: its name, or for a
/// name two items of the kind define, its name and the digest of the one
/// it resolves to.
type Naming<'a> = &'a dyn Fn(&str, &str) -> String;

/// Cuts every workspace path in `ts` to what follows its modules, drops
/// visibility, and records the files the paths reach in `reached`.
fn rewrite(
    ts: TokenStream,
    scope: &Scope,
    naming: Naming,
    reached: &mut BTreeSet<String>,
) -> TokenStream {
    let tokens: Vec<TokenTree> = ts.into_iter().collect();
    let mut out: Vec<TokenTree> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let after_colons =
            i >= 2 && is_colon(tokens.get(i - 2), true) && is_colon(tokens.get(i - 1), false);
        match &tokens[i] {
            TokenTree::Ident(id) if id == "pub" => {
                // `pub`, `pub(crate)`, `pub(super)`, `pub(in path)`.
                i += 1;
                if let Some(TokenTree::Group(g)) = tokens.get(i) {
                    let first = g.stream().into_iter().next();
                    if g.delimiter() == Delimiter::Parenthesis
                        && matches!(&first, Some(TokenTree::Ident(x)) if x == "crate" || x == "super" || x == "self" || x == "in")
                    {
                        i += 1;
                    }
                }
                continue;
            }
            TokenTree::Ident(id) if !after_colons => {
                let mut segs = vec![id.to_string()];
                let mut j = i + 1;
                while is_colon(tokens.get(j), true)
                    && is_colon(tokens.get(j + 1), false)
                    && matches!(tokens.get(j + 2), Some(TokenTree::Ident(_)))
                {
                    if let Some(TokenTree::Ident(next)) = tokens.get(j + 2) {
                        segs.push(next.to_string());
                    }
                    j += 3;
                }
                let resolved = if segs.len() > 1 {
                    scope.resolve(&segs)
                } else {
                    None
                };
                match resolved {
                    Some((module, k)) => {
                        if let Some(f) = scope.file(&module) {
                            reached.insert(f.clone());
                        }
                        if k == segs.len() {
                            // Only modules (a path into a group or a glob
                            // follows): keep the last name.
                            out.push(TokenTree::Ident(proc_macro2::Ident::new(
                                &segs[k - 1],
                                proc_macro2::Span::call_site(),
                            )));
                        } else {
                            let file = scope.file(&module).map(String::as_str).unwrap_or("");
                            for (n, seg) in segs[k..].iter().enumerate() {
                                if n > 0 {
                                    out.extend(colons());
                                }
                                let name = if n == 0 {
                                    naming(file, seg)
                                } else {
                                    seg.clone()
                                };
                                out.push(TokenTree::Ident(proc_macro2::Ident::new(
                                    &name,
                                    proc_macro2::Span::call_site(),
                                )));
                            }
                        }
                        i = j;
                    }
                    None => {
                        out.push(tokens[i].clone());
                        i += 1;
                    }
                }
            }
            TokenTree::Group(g) => {
                let mut ng = proc_macro2::Group::new(
                    g.delimiter(),
                    rewrite(g.stream(), scope, naming, reached),
                );
                ng.set_span(g.span());
                out.push(TokenTree::Group(ng));
                i += 1;
            }
            t => {
                out.push(t.clone());
                i += 1;
            }
        }
    }
    out.into_iter().collect()
}

fn colons() -> [TokenTree; 2] {
    let mut a = proc_macro2::Punct::new(':', proc_macro2::Spacing::Joint);
    a.set_span(proc_macro2::Span::call_site());
    [
        TokenTree::Punct(a),
        TokenTree::Punct(proc_macro2::Punct::new(':', proc_macro2::Spacing::Alone)),
    ]
}

fn scope_of<'a>(modules: &'a Modules, file: &str, parsed: &Parsed) -> Scope<'a> {
    let here = modules
        .module_of
        .get(file)
        .cloned()
        .unwrap_or_else(|| (file.to_string(), vec![]));
    let mut scope = Scope {
        modules,
        here,
        aliases: BTreeMap::new(),
    };
    let mut aliases = BTreeMap::new();
    for u in parsed.uses.iter().filter(|u| !u.glob) {
        if let Some((m, k)) = scope.resolve(&u.segs) {
            if k == u.segs.len() {
                let name = u.rename.clone().or_else(|| m.1.last().cloned());
                if let Some(name) = name {
                    aliases.insert(name, m);
                }
            }
        }
    }
    scope.aliases = aliases;
    scope
}

/// Computes every kind's code digest and checks that every source is
/// reached by some kind, exempt or test-only.
pub fn kind_digests(
    ws: &Path,
    roots: &[&str],
    kinds: &[KindSpec],
    exempt: &[&str],
) -> Result<BTreeMap<String, KindCode>, CodeError> {
    let sources = all_sources(ws, roots)?;
    let modules = Modules::build(ws, roots)?;
    let exempt_file = |f: &str| exempt.iter().any(|e| under(f, e));
    let mut cache: BTreeMap<String, Parsed> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut covered: BTreeSet<String> = BTreeSet::new();
    let mut links: BTreeMap<String, Links> = BTreeMap::new();
    // Parses `f` and follows its paths, once for every kind.
    let load = |f: &str,
                cache: &mut BTreeMap<String, Parsed>,
                links: &mut BTreeMap<String, Links>|
     -> Result<(), CodeError> {
        if !cache.contains_key(f) {
            cache.insert(f.to_string(), parse(ws, f)?);
        }
        if !links.contains_key(f) {
            links.insert(f.to_string(), links_of(&modules, f, &cache[f]));
        }
        Ok(())
    };
    for kind in kinds {
        // Entry points: files, or every file of a folder (bar test-only and
        // exempt ones; a file named exactly is always in).
        let mut entries = Vec::new();
        for entry in &kind.entries {
            if !ws.join(entry).exists() {
                return Err(CodeError::Missing {
                    kind: kind.name.clone(),
                    entry: entry.to_string(),
                });
            }
            let is_dir = ws.join(entry).is_dir();
            for f in sources.iter().filter(|f| under(f, entry)) {
                if !is_dir || !(modules.test_only.contains(f) || exempt_file(f)) {
                    entries.push(f.clone());
                }
            }
        }
        let stopped = |f: &str| kind.stop.iter().any(|s| under(f, s));
        // The walk: paths first, then the files holding impls of the types
        // it reached, until nothing new.
        let mut files: BTreeSet<String> = BTreeSet::new();
        let mut stack = entries;
        loop {
            while let Some(f) = stack.pop() {
                if !files.insert(f.clone()) {
                    continue;
                }
                load(&f, &mut cache, &mut links)?;
                for t in links[&f].reached.iter().cloned() {
                    let skip = t == f
                        || files.contains(&t)
                        || stopped(&t)
                        || exempt_file(&t)
                        || modules.test_only.contains(&t);
                    if !skip {
                        stack.push(t);
                    }
                }
            }
            let mut more = Vec::new();
            for f in &sources {
                if files.contains(f)
                    || stopped(f)
                    || exempt_file(f)
                    || modules.test_only.contains(f)
                    || !modules.module_of.contains_key(f)
                {
                    continue;
                }
                load(f, &mut cache, &mut links)?;
                let joins = links[f].impl_targets.iter().any(|t| files.contains(t));
                if joins {
                    more.push(f.clone());
                }
            }
            if more.is_empty() {
                break;
            }
            stack = more;
        }
        // Each item's identity: its tokens with plain names.
        let mut identity: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut by_name: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in &files {
            for (name, id) in &links[f].identities {
                by_name.entry(name.clone()).or_default().insert(id.clone());
                identity.insert((f.clone(), name.clone()), id.clone());
            }
        }
        let ambiguous = |name: &str| by_name.get(name).is_some_and(|ids| ids.len() > 1);
        let naming = |file: &str, name: &str| -> String {
            match identity.get(&(file.to_string(), name.to_string())) {
                Some(id) if ambiguous(name) => format!("{name}__{id}"),
                _ => name.to_string(),
            }
        };
        let mut items: Vec<String> = Vec::new();
        let mut uses: BTreeSet<String> = BTreeSet::new();
        for f in &files {
            let parsed = &cache[f];
            let scope = scope_of(&modules, f, parsed);
            for (_, ts) in &parsed.items {
                items.push(rewrite(ts.clone(), &scope, &naming, &mut BTreeSet::new()).to_string());
            }
            for u in &parsed.uses {
                let rename = u
                    .rename
                    .as_ref()
                    .map(|r| format!(" as {r}"))
                    .unwrap_or_default();
                match scope.resolve(&u.segs) {
                    None => {
                        let glob = if u.glob { "::*" } else { "" };
                        uses.insert(format!("{}{glob}{rename}", u.segs.join("::")));
                    }
                    // Modules and globs of the workspace only bring names
                    // into scope; the paths that use them are cut anyway.
                    Some((_, k)) if k == u.segs.len() || u.glob => {}
                    Some((m, k)) => {
                        let file = scope.file(&m).map(String::as_str).unwrap_or("");
                        let name = &u.segs[k];
                        if ambiguous(name) || !rename.is_empty() {
                            uses.insert(format!("{}{rename}", naming(file, name)));
                        }
                    }
                }
            }
        }
        items.sort();
        let mut h = Sha256::new();
        h.update(b"items\0");
        for item in &items {
            h.update(item.as_bytes());
            h.update([0]);
        }
        h.update(b"uses\0");
        for u in &uses {
            h.update(u.as_bytes());
            h.update([0]);
        }
        covered.extend(files.iter().cloned());
        out.insert(
            kind.name.clone(),
            KindCode {
                digest: hex::encode(h.finalize()),
                files: files
                    .iter()
                    .map(|f| (f.clone(), cache[f].tokens_sha256.clone()))
                    .collect(),
            },
        );
    }
    // A file of `mod` and `use` lines only (a crate root, a folder's
    // mod.rs) has no code of its own to classify.
    let mut unclassified = Vec::new();
    for f in &sources {
        if covered.contains(f) || modules.test_only.contains(f) || exempt_file(f) {
            continue;
        }
        if !cache.contains_key(f) {
            cache.insert(f.clone(), parse(ws, f)?);
        }
        if !cache[f].items.is_empty() {
            unclassified.push(f.clone());
        }
    }
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
            write(d.path(), p, text);
        }
        d
    }

    fn write(ws: &Path, p: &str, text: &str) {
        let p = ws.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn kind<'a>(name: &str, entries: &[&'a str], stop: &[&'a str]) -> KindSpec<'a> {
        KindSpec {
            name: name.into(),
            entries: entries.to_vec(),
            stop: stop.to_vec(),
        }
    }

    const LIB: &str = "pub mod a;\npub mod b;\nmod cli;\n#[cfg(test)]\nmod tests;\n";

    fn digests(ws: &Path) -> Result<BTreeMap<String, KindCode>, CodeError> {
        kind_digests(
            ws,
            &["k/src"],
            &[
                kind("one", &["k/src/a"], &[]),
                kind("two", &["k/src/b.rs"], &[]),
            ],
            &["k/src/cli.rs"],
        )
    }

    fn files(d: &BTreeMap<String, KindCode>, k: &str) -> Vec<String> {
        d[k].files.keys().cloned().collect()
    }

    #[test]
    fn kinds_cover_what_their_entry_points_reach_and_test_files_are_out() {
        let ws = workspace(&[
            ("k/Cargo.toml", "[package]\nname = \"k-core\"\n"),
            ("k/src/lib.rs", LIB),
            (
                "k/src/a/mod.rs",
                "pub fn f() -> u8 { crate::b::g() + 1 }\n#[cfg(test)] mod t;\n",
            ),
            ("k/src/a/t.rs", "fn helper() { crate::c::h() }"),
            ("k/src/b.rs", "pub fn g() -> u8 { 1 }"),
            ("k/src/cli.rs", "fn main() {}"),
            ("k/src/tests.rs", "fn case() {}"),
        ]);
        let d = digests(ws.path()).unwrap();
        assert_eq!(files(&d, "one"), vec!["k/src/a/mod.rs", "k/src/b.rs"]);
        assert_eq!(files(&d, "two"), vec!["k/src/b.rs"]);
        // Editing a test-only file or the exempt CLI changes nothing.
        write(ws.path(), "k/src/tests.rs", "fn case2() {}");
        write(ws.path(), "k/src/a/t.rs", "fn helper2() {}");
        write(ws.path(), "k/src/cli.rs", "fn main() { run() }");
        assert_eq!(digests(ws.path()).unwrap(), d);
        // Editing covered code changes only the kinds that reach it.
        write(
            ws.path(),
            "k/src/a/mod.rs",
            "pub fn f() -> u8 { crate::b::g() + 2 }\n#[cfg(test)] mod t;\n",
        );
        let e = digests(ws.path()).unwrap();
        assert_ne!(e["one"].digest, d["one"].digest);
        assert_eq!(e["two"].digest, d["two"].digest);
    }

    /// A kind of three files: the stage, its losses, and a helper module.
    fn stage_ws() -> tempfile::TempDir {
        workspace(&[
            ("k/Cargo.toml", "[package]\nname = \"k-core\"\n"),
            (
                "k/src/lib.rs",
                "pub mod stage;\npub mod loss;\npub mod util;\nmod cli;\n",
            ),
            ("k/src/cli.rs", "fn main() {}"),
            (
                "k/src/stage.rs",
                "use std::fmt::Write;\nuse crate::loss::{self, Weights};\nuse crate::util::clamp;\n\
                 pub fn train(x: f64) -> f64 { let w = Weights::new(); clamp(loss::icarl::loss(x) * w.0) }\n\
                 pub(crate) fn scale(x: f64) -> f64 { x * 0.5 }\n",
            ),
            (
                "k/src/loss/mod.rs",
                "pub mod icarl;\npub mod lucir;\npub struct Weights(pub f64);\n\
                 impl Weights { pub fn new() -> Self { Weights(2.0) } }\n",
            ),
            (
                "k/src/loss/icarl.rs",
                "pub fn loss(x: f64) -> f64 { super::super::stage::scale(x) + 1.0 }",
            ),
            ("k/src/loss/lucir.rs", "pub fn loss(x: f64) -> f64 { x - 1.0 }"),
            ("k/src/util.rs", "pub fn clamp(x: f64) -> f64 { x.min(9.0) }"),
        ])
    }

    fn stage_digest(ws: &Path) -> KindCode {
        kind_digests(
            ws,
            &["k/src"],
            // `all` covers what `train` leaves out (lucir.rs).
            &[
                kind("train", &["k/src/stage.rs"], &[]),
                kind("all", &["k/src"], &[]),
            ],
            &["k/src/cli.rs", "k/src/lib.rs"],
        )
        .unwrap()
        .remove("train")
        .unwrap()
    }

    #[test]
    fn moving_code_between_files_of_a_kind_keeps_its_digest_and_a_token_edit_moves_it() {
        let ws = stage_ws();
        let before = stage_digest(ws.path());
        assert_eq!(
            before.files.keys().collect::<Vec<_>>(),
            vec![
                "k/src/loss/icarl.rs",
                "k/src/loss/mod.rs",
                "k/src/stage.rs",
                "k/src/util.rs"
            ]
        );
        // `scale` moves from stage.rs to util.rs (made pub, imported, called
        // by another path), and the items of stage.rs swap places.
        write(
            ws.path(),
            "k/src/stage.rs",
            "use crate::util::clamp;\nuse crate::loss::{self, Weights};\nuse std::fmt::Write;\n\
             pub fn train(x: f64) -> f64 { let w = Weights::new(); clamp(loss::icarl::loss(x) * w.0) }\n",
        );
        write(
            ws.path(),
            "k/src/util.rs",
            "pub fn scale(x: f64) -> f64 { x * 0.5 }\npub fn clamp(x: f64) -> f64 { x.min(9.0) }",
        );
        write(
            ws.path(),
            "k/src/loss/icarl.rs",
            "use crate::util;\npub fn loss(x: f64) -> f64 { util::scale(x) + 1.0 }",
        );
        let moved = stage_digest(ws.path());
        assert_eq!(moved.digest, before.digest);
        assert_ne!(
            moved.files, before.files,
            "per-file digests still show the move"
        );
        // Into a new file: the same.
        write(
            ws.path(),
            "k/src/util.rs",
            "pub fn clamp(x: f64) -> f64 { x.min(9.0) }",
        );
        write(
            ws.path(),
            "k/src/scaling.rs",
            "pub fn scale(x: f64) -> f64 { x * 0.5 }",
        );
        write(
            ws.path(),
            "k/src/lib.rs",
            "pub mod stage;\npub mod loss;\npub mod util;\npub mod scaling;\nmod cli;\n",
        );
        write(
            ws.path(),
            "k/src/loss/icarl.rs",
            "pub fn loss(x: f64) -> f64 { crate::scaling::scale(x) + 1.0 }",
        );
        let new_file = stage_digest(ws.path());
        assert!(new_file.files.contains_key("k/src/scaling.rs"));
        assert_eq!(new_file.digest, before.digest);
        // One token edited: moved.
        write(
            ws.path(),
            "k/src/scaling.rs",
            "pub fn scale(x: f64) -> f64 { x * 0.25 }",
        );
        assert_ne!(stage_digest(ws.path()).digest, before.digest);
    }

    #[test]
    fn calling_the_other_of_two_items_of_one_name_moves_the_digest() {
        let ws = stage_ws();
        // Both losses in the kind (the stage names both).
        let both = "use crate::loss::{self, Weights};\nuse crate::util::clamp;\n\
             pub fn train(x: f64) -> f64 { let w = Weights::new(); clamp(loss::icarl::loss(x) * w.0 + loss::lucir::loss(0.0)) }\n\
             pub(crate) fn scale(x: f64) -> f64 { x * 0.5 }\n";
        write(ws.path(), "k/src/stage.rs", both);
        let a = stage_digest(ws.path());
        write(
            ws.path(),
            "k/src/stage.rs",
            &both.replace("loss::icarl::loss(x)", "loss::lucir::loss(x)"),
        );
        let b = stage_digest(ws.path());
        assert_ne!(a.digest, b.digest);
        // As an import: `use ...::icarl::loss` against `...::lucir::loss`.
        let imported = |m: &str| {
            format!(
                "use crate::loss::Weights;\nuse crate::loss::{m}::loss;\nuse crate::util::clamp;\n\
                 pub fn train(x: f64) -> f64 {{ let w = Weights::new(); clamp(loss(x) * w.0 + crate::loss::lucir::loss(0.0) + crate::loss::icarl::loss(0.0)) }}\n\
                 pub(crate) fn scale(x: f64) -> f64 {{ x * 0.5 }}\n"
            )
        };
        write(ws.path(), "k/src/stage.rs", &imported("icarl"));
        let c = stage_digest(ws.path());
        write(ws.path(), "k/src/stage.rs", &imported("lucir"));
        assert_ne!(stage_digest(ws.path()).digest, c.digest);
    }

    #[test]
    fn a_new_file_used_from_a_covered_file_joins_the_kind() {
        let ws = stage_ws();
        let before = stage_digest(ws.path());
        assert!(!before.files.contains_key("k/src/spec.rs"));
        write(
            ws.path(),
            "k/src/lib.rs",
            "pub mod stage;\npub mod loss;\npub mod util;\npub mod spec;\nmod cli;\n",
        );
        write(ws.path(), "k/src/spec.rs", "pub const LIMIT: f64 = 9.0;");
        write(
            ws.path(),
            "k/src/util.rs",
            "use crate::spec::LIMIT;\npub fn clamp(x: f64) -> f64 { x.min(LIMIT) }",
        );
        let after = stage_digest(ws.path());
        assert!(
            after.files.contains_key("k/src/spec.rs"),
            "{:?}",
            after.files
        );
        assert_ne!(after.digest, before.digest);
        // Through a macro body and a workspace crate's name too.
        write(
            ws.path(),
            "k/src/util.rs",
            "pub fn clamp(x: f64) -> f64 { assert!(x < k_core::spec::LIMIT); x }",
        );
        assert!(stage_digest(ws.path()).files.contains_key("k/src/spec.rs"));
    }

    #[test]
    fn an_impl_in_another_file_joins_the_kind_of_its_type() {
        let ws = stage_ws();
        write(
            ws.path(),
            "k/src/lib.rs",
            "pub mod stage;\npub mod loss;\npub mod util;\npub mod display;\nmod cli;\n",
        );
        write(
            ws.path(),
            "k/src/display.rs",
            "impl std::fmt::Display for crate::loss::Weights { fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result { write!(f, \"{}\", self.0) } }",
        );
        assert!(stage_digest(ws.path())
            .files
            .contains_key("k/src/display.rs"));
    }

    #[test]
    fn a_variant_covers_its_own_entry_points_only() {
        let ws = stage_ws();
        let d = kind_digests(
            ws.path(),
            &["k/src"],
            &[
                kind(
                    "t:icarl",
                    &["k/src/stage.rs", "k/src/loss/icarl.rs"],
                    &["k/src/loss/lucir.rs"],
                ),
                kind(
                    "t:lucir",
                    &["k/src/stage.rs", "k/src/loss/lucir.rs"],
                    &["k/src/loss/icarl.rs"],
                ),
            ],
            &["k/src/cli.rs", "k/src/lib.rs"],
        )
        .unwrap();
        assert!(!files(&d, "t:icarl").contains(&"k/src/loss/lucir.rs".to_string()));
        assert!(files(&d, "t:lucir").contains(&"k/src/loss/lucir.rs".to_string()));
        assert!(!files(&d, "t:lucir").contains(&"k/src/loss/icarl.rs".to_string()));
    }

    #[test]
    fn an_unclassified_source_fails_and_is_named() {
        let ws = workspace(&[
            ("k/src/lib.rs", LIB),
            ("k/src/a/mod.rs", "pub fn f() {}"),
            ("k/src/b.rs", "pub fn g() {}"),
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
        let err = kind_digests(
            ws.path(),
            &["k/src"],
            &[kind("one", &["k/src/gone.rs"], &[])],
            &[],
        )
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
