//! Maps key paths (`datasets.synth.synthetic.classes`, `experiments.q.orders[1]`)
//! to their line and column in the YAML text, so errors found after serde
//! (unknown references, invalid values) still point at the file position.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Locator {
    positions: HashMap<String, Position>,
}

impl Locator {
    pub(crate) fn new(text: &str) -> Locator {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // A syntax error is reported by serde with its own position; the
        // locator then knows only what it saw before it.
        let _ = parser.load(&mut builder, false);
        Locator {
            positions: builder.positions,
        }
    }

    /// The position of `path`, or of its nearest ancestor that has one.
    pub(crate) fn find(&self, path: &str) -> Option<Position> {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.positions.get(&p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }
}

enum Frame {
    Map {
        path: String,
        next_is_key: bool,
        key: Option<String>,
    },
    Seq {
        path: String,
        index: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    positions: HashMap<String, Position>,
}

impl Builder {
    /// The path of the value that starts now, advancing the parent frame.
    fn value_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
            Some(Frame::Map {
                path,
                next_is_key,
                key,
            }) => {
                if *next_is_key {
                    None
                } else {
                    *next_is_key = true;
                    let k = key.take().unwrap_or_default();
                    Some(if path.is_empty() {
                        k
                    } else {
                        format!("{path}.{k}")
                    })
                }
            }
        }
    }

    fn record(&mut self, path: &str, mark: Marker) {
        self.positions.entry(path.to_string()).or_insert(Position {
            line: mark.line(),
            column: mark.col() + 1,
        });
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map {
                    path,
                    next_is_key: true,
                    key,
                }) = self.stack.last_mut()
                {
                    let full = if path.is_empty() {
                        value.clone()
                    } else {
                        format!("{path}.{value}")
                    };
                    *key = Some(value);
                    if let Some(Frame::Map { next_is_key, .. }) = self.stack.last_mut() {
                        *next_is_key = false;
                    }
                    self.record(&full, mark);
                } else if let Some(p) = self.value_path() {
                    self.record(&p, mark);
                }
            }
            Event::MappingStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.record(&path, mark);
                self.stack.push(Frame::Map {
                    path,
                    next_is_key: true,
                    key: None,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.record(&path, mark);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.value_path();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_items() {
        let text = "datasets:\n  synth:\n    synthetic: {classes: 10}\nexperiments:\n  q:\n    orders: [a, b]\n    settings:\n      - s1\n      - s2\n";
        let loc = Locator::new(text);
        assert_eq!(
            loc.find("datasets.synth"),
            Some(Position { line: 2, column: 3 })
        );
        assert_eq!(
            loc.find("datasets.synth.synthetic.classes"),
            Some(Position {
                line: 3,
                column: 17
            })
        );
        assert_eq!(
            loc.find("experiments.q.orders[1]"),
            Some(Position {
                line: 6,
                column: 17
            })
        );
        assert_eq!(
            loc.find("experiments.q.settings[1]"),
            Some(Position { line: 9, column: 9 })
        );
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(
            loc.find("experiments.q.nope"),
            Some(Position { line: 5, column: 3 })
        );
    }
}
