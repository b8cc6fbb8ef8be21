//! Configuration: YAML text -> raw serde types ([`raw`]) -> validated
//! [`Config`] ([`resolve`]). Every user error is a [`ConfigError`] carrying
//! file:line:column and the key path.

pub(crate) mod defaults;
pub mod executor;
pub(crate) mod locate;
pub mod presets;
pub(crate) mod raw;
pub(crate) mod resolve;

pub use raw::{Classifier, ExecutorName, MemorySelection, MethodPreset, Network};
pub use resolve::{
    Config, DatasetDef, DatasetSource, Experiment, MethodDef, OrderDef, SettingDef, TableDef,
    ValDef, DEFAULT_LATEX_TEMPLATE, DEFAULT_MARKDOWN_TEMPLATE,
};

use std::fmt;
use std::path::{Path, PathBuf};

use crate::catalog::StageCatalog;
use locate::{Locator, Position};

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub position: Option<Position>,
    /// Dotted key path (`experiments.quick.orders[1]`); empty for the file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(p) = self.position {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses and resolves a config file.
pub fn load(path: &Path, catalog: &dyn StageCatalog) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        position: None,
        path: String::new(),
        message: format!("cannot read config: {e}"),
    })?;
    let file = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    parse(&text, &file, catalog)
}

/// Parses and resolves config text; `file` is where it came from (for
/// messages and for paths relative to the config).
pub fn parse(text: &str, file: &Path, catalog: &dyn StageCatalog) -> Result<Config, ConfigError> {
    let locator = Locator::new(text);
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let raw: raw::RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.into_inner();
        let position = inner
            .location()
            .map(|l| Position {
                line: l.line(),
                column: l.column(),
            })
            .or_else(|| locator.find(&path));
        let message = with_suggestion(&strip_location(&strip_path(&inner.to_string(), &path)));
        ConfigError {
            file: file.to_path_buf(),
            position,
            path,
            message,
        }
    })?;
    resolve::resolve(raw, file, &locator, catalog)
}

/// serde_yaml appends " at line L column C"; we print the position first.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// serde_yaml prefixes some messages with (part of) the key path; we print
/// the path once, in front.
fn strip_path(msg: &str, path: &str) -> String {
    match msg.split_once(": ") {
        Some((prefix, rest)) if !prefix.is_empty() && path.starts_with(prefix) => rest.to_string(),
        _ => msg.to_string(),
    }
}

/// Adds "did you mean" to serde's unknown field / variant messages.
fn with_suggestion(msg: &str) -> String {
    let Some(rest) = msg
        .strip_prefix("unknown field `")
        .or_else(|| msg.strip_prefix("unknown variant `"))
    else {
        return msg.to_string();
    };
    let Some(end) = rest.find('`') else {
        return msg.to_string();
    };
    let got = &rest[..end];
    let candidates: Vec<&str> = rest[end + 1..].split('`').skip(1).step_by(2).collect();
    match did_you_mean(got, candidates.iter().copied()) {
        Some(s) => format!("{msg}; did you mean `{s}`?"),
        None => msg.to_string(),
    }
}

/// The closest candidate, if it is close enough to be a typo.
pub fn did_you_mean<'a>(got: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::damerau_levenshtein(got, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
