//! A pickle reader that rebuilds data and never runs code.
//!
//! Python's unpickler imports and calls whatever globals a pickle names, so
//! it must not be pointed at a file from the internet. This one knows the
//! opcodes that protocols 0-2 use for `None`, bools, ints, byte strings,
//! text, lists, tuples and dicts, plus the four globals a numpy array
//! reduces to; any other opcode or global is an error.
//!
//! Objects live in an arena and the stack and memo hold indices into it,
//! so a list that is memoised and then appended to is the same list when
//! fetched again, as in Python. Byte strings written with BINSTRING (what
//! Python 2 wrote for the official archive) borrow from the input, so a
//! 150 MB image array is never copied.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// Index of an object in [`Pickle`]'s arena.
pub(super) type Id = usize;

#[derive(Debug)]
pub(super) enum Value<'a> {
    None,
    Bool(bool),
    Int(i64),
    /// A Python 2 `str` or a Python 3 `bytes`.
    Bytes(Cow<'a, [u8]>),
    Text(Cow<'a, str>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(Global),
    /// A `numpy.dtype`, by its type string (`u1`, `<i8` ...).
    Dtype(String),
    /// An ndarray made by `_reconstruct`; empty until BUILD gives it its state.
    Array(Option<Array>),
}

impl Value<'_> {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Bytes(_) => "bytes",
            Value::Text(_) => "str",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Dtype(_) => "numpy.dtype",
            Value::Array(_) => "numpy.ndarray",
        }
    }
}

/// The only globals a pickle may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Global {
    /// `numpy.core.multiarray._reconstruct` (`numpy._core` since numpy 2).
    Reconstruct,
    Ndarray,
    Dtype,
    /// `_codecs.encode`: how Python 3 writes `bytes` at protocols below 3.
    Encode,
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Global> {
        match (module, name) {
            ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => {
                Some(Global::Reconstruct)
            }
            ("numpy", "ndarray") => Some(Global::Ndarray),
            ("numpy", "dtype") => Some(Global::Dtype),
            ("_codecs", "encode") => Some(Global::Encode),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub(super) struct Array {
    pub shape: Vec<usize>,
    pub dtype: String,
    pub fortran_order: bool,
    /// A [`Value::Bytes`] holding the elements.
    pub data: Id,
}

#[derive(Debug)]
pub(super) struct PickleError {
    /// Byte offset of the opcode at fault.
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "byte {}: {}", self.offset, self.message)
    }
}

/// A parsed pickle: the arena and the object STOP returned.
pub(super) struct Pickle<'a> {
    values: Vec<Value<'a>>,
    root: Id,
}

impl<'a> Pickle<'a> {
    pub(super) fn root(&self) -> Id {
        self.root
    }

    pub(super) fn get(&self, id: Id) -> &Value<'a> {
        &self.values[id]
    }

    /// The content of a byte string, or the UTF-8 of a text string: the
    /// official files hold Python 2 `str`, a re-pickled copy may hold `str`.
    pub(super) fn bytes(&self, id: Id) -> Option<&[u8]> {
        match &self.values[id] {
            Value::Bytes(b) => Some(b),
            Value::Text(t) => Some(t.as_bytes()),
            _ => None,
        }
    }

    pub(super) fn dict_get(&self, dict: Id, key: &[u8]) -> Option<Id> {
        match &self.values[dict] {
            Value::Dict(items) => items
                .iter()
                .find(|&&(k, _)| self.bytes(k) == Some(key))
                .map(|&(_, v)| v),
            _ => None,
        }
    }
}

pub(super) fn parse(input: &[u8]) -> Result<Pickle<'_>, PickleError> {
    let mut m = Machine {
        input,
        pos: 0,
        values: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    loop {
        let at = m.pos;
        let op = m.take(1).map_err(|e| e.at(at))?[0];
        match m.step(op) {
            Ok(Some(root)) => {
                return Ok(Pickle {
                    values: m.values,
                    root,
                })
            }
            Ok(None) => {}
            Err(e) => return Err(e.at(at)),
        }
    }
}

/// An error before its opcode's offset is attached.
struct Fault(String);

impl Fault {
    fn at(self, offset: usize) -> PickleError {
        PickleError {
            offset,
            message: self.0,
        }
    }
}

fn fault<T>(message: impl Into<String>) -> Result<T, Fault> {
    Err(Fault(message.into()))
}

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    values: Vec<Value<'a>>,
    stack: Vec<Id>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

impl<'a> Machine<'a> {
    /// Runs one opcode; returns the root object at STOP.
    fn step(&mut self, op: u8) -> Result<Option<Id>, Fault> {
        match op {
            b'\x80' => {
                let version = self.take(1)?[0];
                if version > 2 {
                    return fault(format!(
                        "pickle protocol {version}; this reader handles protocols 0-2 \
                         (the official archive uses 2)"
                    ));
                }
            }
            b'.' => return self.pop().map(Some),
            b'(' => self.marks.push(self.stack.len()),
            b'N' => self.push(Value::None),
            b'\x88' => self.push(Value::Bool(true)),
            b'\x89' => self.push(Value::Bool(false)),
            b'I' => {
                // Protocols 0 and 1 spell bools as INT 01 and 00.
                let value = match self.line()? {
                    b"00" => Value::Bool(false),
                    b"01" => Value::Bool(true),
                    text => Value::Int(parse_decimal(text)?),
                };
                self.push(value);
            }
            b'K' => {
                let v = self.take(1)?[0];
                self.push(Value::Int(v.into()));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.array()?);
                self.push(Value::Int(v.into()));
            }
            b'J' => {
                let v = i32::from_le_bytes(self.array()?);
                self.push(Value::Int(v.into()));
            }
            b'S' => {
                let line = self.line()?;
                self.push(Value::Bytes(Cow::Owned(unquote_repr(line)?)));
            }
            b'T' => {
                let len = i32::from_le_bytes(self.array()?);
                let len = usize::try_from(len)
                    .or_else(|_| fault(format!("BINSTRING has negative length {len}")))?;
                let b = self.take(len)?;
                self.push(Value::Bytes(Cow::Borrowed(b)));
            }
            b'U' => {
                let len = self.take(1)?[0];
                let b = self.take(len.into())?;
                self.push(Value::Bytes(Cow::Borrowed(b)));
            }
            b'V' => {
                let line = self.line()?;
                self.push(Value::Text(Cow::Owned(raw_unicode_unescape(line)?)));
            }
            b'X' => {
                let len = u32::from_le_bytes(self.array()?) as usize;
                let b = self.take(len)?;
                let text = std::str::from_utf8(b)
                    .or_else(|e| fault(format!("BINUNICODE is not valid UTF-8: {e}")))?;
                self.push(Value::Text(Cow::Borrowed(text)));
            }
            b']' => self.push(Value::List(Vec::new())),
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Value::List(items));
            }
            b')' => self.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items));
            }
            b'\x85' | b'\x86' | b'\x87' => {
                let n = usize::from(op - b'\x84');
                if self.above_mark() < n {
                    return fault(format!(
                        "TUPLE{n} with {} items on the stack",
                        self.above_mark()
                    ));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(Value::Tuple(items));
            }
            b'}' => self.push(Value::Dict(Vec::new())),
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.push(Value::Dict(pairs));
            }
            b'a' => {
                let item = self.pop()?;
                self.append(vec![item])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.append(items)?;
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.set_items(vec![(key, value)])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.set_items(pairs)?;
            }
            b'p' => {
                let index = parse_decimal(self.line()?)?;
                self.put(index as u64)?;
            }
            b'q' => {
                let index = self.take(1)?[0];
                self.put(index.into())?;
            }
            b'r' => {
                let index = u32::from_le_bytes(self.array()?);
                self.put(index.into())?;
            }
            b'g' => {
                let index = parse_decimal(self.line()?)?;
                self.get(index as u64)?;
            }
            b'h' => {
                let index = self.take(1)?[0];
                self.get(index.into())?;
            }
            b'j' => {
                let index = u32::from_le_bytes(self.array()?);
                self.get(index.into())?;
            }
            b'c' => {
                let module = text_line(self.line()?)?;
                let name = text_line(self.line()?)?;
                let global = Global::resolve(module, name).ok_or_else(|| {
                    Fault(format!(
                        "global {module}.{name} is not allowed: this reader only rebuilds numpy \
                         arrays (numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype) \
                         and byte strings (_codecs.encode)"
                    ))
                })?;
                self.push(Value::Global(global));
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let value = self.reduce(callable, args)?;
                self.push(value);
            }
            b'b' => {
                let state = self.pop()?;
                let target = self.top()?;
                self.build(target, state)?;
            }
            _ => {
                return fault(format!(
                    "opcode {op:#04x} ({:?}) is not supported: this reader accepts what \
                     protocols 0-2 write for dicts, lists, tuples, strings, ints and numpy arrays",
                    char::from(op)
                ))
            }
        }
        Ok(None)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Fault> {
        let input: &'a [u8] = self.input;
        match input.get(self.pos..).and_then(|rest| rest.get(..n)) {
            Some(b) => {
                self.pos += n;
                Ok(b)
            }
            None => fault(format!(
                "the pickle ends {} bytes in, {} bytes short of what the opcode needs",
                input.len(),
                self.pos + n - input.len()
            )),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Fault> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    /// The bytes up to the next newline, which is consumed.
    fn line(&mut self) -> Result<&'a [u8], Fault> {
        let input: &'a [u8] = self.input;
        let rest = &input[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) => {
                self.pos += n + 1;
                Ok(&rest[..n])
            }
            None => fault("the pickle ends inside a text argument (no newline)"),
        }
    }

    fn push(&mut self, value: Value<'a>) {
        self.stack.push(self.values.len());
        self.values.push(value);
    }

    /// How many objects lie above the last MARK; nothing may reach below it.
    fn above_mark(&self) -> usize {
        self.stack.len() - self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Id, Fault> {
        let top = self.top()?;
        self.stack.pop();
        Ok(top)
    }

    fn top(&self) -> Result<Id, Fault> {
        match self.above_mark() {
            0 => fault("needs an object but the stack is empty above the last MARK"),
            _ => Ok(self.stack[self.stack.len() - 1]),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, Fault> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| Fault("needs a MARK but there is none".into()))?;
        Ok(self.stack.split_off(mark))
    }

    fn append(&mut self, items: Vec<Id>) -> Result<(), Fault> {
        let target = self.top()?;
        match &mut self.values[target] {
            Value::List(list) => {
                list.extend(items);
                Ok(())
            }
            other => fault(format!("appends to a {}; expected a list", other.kind())),
        }
    }

    fn set_items(&mut self, pairs: Vec<(Id, Id)>) -> Result<(), Fault> {
        let target = self.top()?;
        match &mut self.values[target] {
            Value::Dict(dict) => {
                dict.extend(pairs);
                Ok(())
            }
            other => fault(format!("sets items of a {}; expected a dict", other.kind())),
        }
    }

    fn put(&mut self, index: u64) -> Result<(), Fault> {
        let top = self.top()?;
        self.memo.insert(index, top);
        Ok(())
    }

    fn get(&mut self, index: u64) -> Result<(), Fault> {
        let id = *self.memo.get(&index).ok_or_else(|| {
            Fault(format!(
                "fetches memo entry {index}, which was never stored"
            ))
        })?;
        self.stack.push(id);
        Ok(())
    }

    fn tuple(&self, id: Id, what: &str) -> Result<&[Id], Fault> {
        match &self.values[id] {
            Value::Tuple(items) => Ok(items),
            other => fault(format!("{what} is a {}; expected a tuple", other.kind())),
        }
    }

    fn text_or_bytes(&self, id: Id, what: &str) -> Result<&[u8], Fault> {
        match &self.values[id] {
            Value::Bytes(b) => Ok(b),
            Value::Text(t) => Ok(t.as_bytes()),
            other => fault(format!("{what} is a {}; expected a string", other.kind())),
        }
    }

    fn reduce(&self, callable: Id, args: Id) -> Result<Value<'a>, Fault> {
        let global = match &self.values[callable] {
            Value::Global(g) => *g,
            other => {
                return fault(format!(
                    "REDUCE calls a {}; expected an allowed global",
                    other.kind()
                ))
            }
        };
        let args = self.tuple(args, "REDUCE's arguments")?;
        match (global, args) {
            (Global::Encode, &[text, encoding]) => {
                let encoding = self.text_or_bytes(encoding, "_codecs.encode's encoding")?;
                if !matches!(encoding, b"latin1" | b"latin-1") {
                    return fault(format!(
                        "_codecs.encode to {:?}; expected latin1, which is how Python 3 \
                         pickles bytes",
                        String::from_utf8_lossy(encoding)
                    ));
                }
                let Value::Text(text) = &self.values[text] else {
                    return fault(format!(
                        "_codecs.encode of a {}; expected a str",
                        self.values[text].kind()
                    ));
                };
                let bytes = text
                    .chars()
                    .map(u8::try_from)
                    .collect::<Result<Vec<u8>, _>>()
                    .or_else(|_| fault("_codecs.encode of a str with characters above U+00FF"))?;
                Ok(Value::Bytes(Cow::Owned(bytes)))
            }
            (Global::Reconstruct, &[class, _shape, _typecode]) => match &self.values[class] {
                Value::Global(Global::Ndarray) => Ok(Value::Array(None)),
                other => fault(format!(
                    "_reconstruct of a {}; expected numpy.ndarray",
                    other.kind()
                )),
            },
            (Global::Dtype, &[code, ..]) => {
                let code = self.text_or_bytes(code, "numpy.dtype's type string")?;
                Ok(Value::Dtype(String::from_utf8_lossy(code).into_owned()))
            }
            (global, args) => fault(format!(
                "REDUCE calls {global:?} with {} arguments; expected what numpy's own \
                 pickles pass",
                args.len()
            )),
        }
    }

    fn build(&mut self, target: Id, state: Id) -> Result<(), Fault> {
        match &self.values[target] {
            // The state holds byte order, field names and flags; the reader
            // of the array accepts only single-byte plain dtypes, for which
            // none of them matter.
            Value::Dtype(_) => Ok(()),
            Value::Array(None) => {
                let array = self.array_state(state)?;
                self.values[target] = Value::Array(Some(array));
                Ok(())
            }
            other => fault(format!(
                "BUILD on a {}; only numpy arrays and dtypes take a state",
                other.kind()
            )),
        }
    }

    /// numpy's `ndarray.__setstate__((version, shape, dtype, is_fortran, data))`.
    fn array_state(&self, state: Id) -> Result<Array, Fault> {
        let &[version, shape, dtype, fortran, data] = self.tuple(state, "the ndarray state")?
        else {
            return fault("the ndarray state is not (version, shape, dtype, is_fortran, data)");
        };
        if !matches!(self.values[version], Value::Int(1)) {
            return fault("the ndarray state has a version other than 1");
        }
        let shape = self
            .tuple(shape, "the ndarray shape")?
            .iter()
            .map(|&d| match self.values[d] {
                Value::Int(n) if n >= 0 => Ok(n as usize),
                ref other => fault(format!(
                    "the ndarray shape holds a {}; expected non-negative ints",
                    other.kind()
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let Value::Dtype(dtype) = &self.values[dtype] else {
            return fault(format!(
                "the ndarray dtype is a {}; expected a numpy.dtype",
                self.values[dtype].kind()
            ));
        };
        let fortran_order = match self.values[fortran] {
            Value::Bool(b) => b,
            Value::Int(n) => n != 0,
            ref other => {
                return fault(format!("the ndarray's is_fortran is a {}", other.kind()));
            }
        };
        if !matches!(self.values[data], Value::Bytes(_)) {
            return fault(format!(
                "the ndarray data is a {}; expected raw bytes (an object array cannot be read)",
                self.values[data].kind()
            ));
        }
        Ok(Array {
            shape,
            dtype: dtype.clone(),
            fortran_order,
            data,
        })
    }
}

fn pairs(items: Vec<Id>) -> Result<Vec<(Id, Id)>, Fault> {
    if items.len() % 2 != 0 {
        return fault(format!(
            "{} items for a dict; expected key, value pairs",
            items.len()
        ));
    }
    Ok(items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect())
}

fn text_line(line: &[u8]) -> Result<&str, Fault> {
    std::str::from_utf8(line).or_else(|_| fault("a global's name is not UTF-8"))
}

fn parse_decimal(text: &[u8]) -> Result<i64, Fault> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            Fault(format!(
                "{:?} is not a decimal int",
                String::from_utf8_lossy(text)
            ))
        })
}

/// Decodes a protocol 0 STRING argument: the `repr` of a byte string.
fn unquote_repr(line: &[u8]) -> Result<Vec<u8>, Fault> {
    let inner = match line {
        [q @ (b'\'' | b'"'), inner @ .., end] if end == q => inner,
        _ => return fault("STRING argument is not a quoted string"),
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut rest = inner;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some((&e, tail)) = rest.split_first() else {
            return fault("STRING argument ends with a lone backslash");
        };
        rest = tail;
        out.push(match e {
            b'\\' | b'\'' | b'"' => e,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'x' => {
                let hex = rest
                    .get(..2)
                    .ok_or_else(|| Fault("STRING argument ends inside \\x".into()))?;
                rest = &rest[2..];
                u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("?"), 16)
                    .or_else(|_| fault("STRING argument has a bad \\x escape"))?
            }
            _ => {
                return fault(format!(
                    "STRING argument has escape \\{}, which repr() never writes",
                    char::from(e)
                ))
            }
        });
    }
    Ok(out)
}

/// Decodes a protocol 0 UNICODE argument (Python's raw-unicode-escape):
/// bytes are Latin-1 characters except `\uXXXX` and `\UXXXXXXXX`.
fn raw_unicode_unescape(line: &[u8]) -> Result<String, Fault> {
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let digits = match (line[i], line.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            (b, _) => {
                out.push(char::from(b));
                i += 1;
                continue;
            }
        };
        let hex = line
            .get(i + 2..i + 2 + digits)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32)
            .ok_or_else(|| Fault("UNICODE argument has a bad \\u escape".into()))?;
        out.push(hex);
        i += 2 + digits;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(input: &[u8]) -> String {
        match parse(input) {
            Ok(_) => panic!("{input:?} parsed"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn memoised_list_is_shared_after_appends() {
        // [x, x] where x = [1] was memoised empty and appended to afterwards.
        let p = parse(b"\x80\x02](]q\x00K\x01ah\x00e.").unwrap();
        let Value::List(outer) = p.get(p.root()) else {
            panic!()
        };
        assert_eq!(outer[0], outer[1]);
        let Value::List(inner) = p.get(outer[0]) else {
            panic!()
        };
        assert!(matches!(p.get(inner[0]), Value::Int(1)));
    }

    #[test]
    fn long_memo_indices_and_empty_tuples_parse() {
        // (7, (), 7) with 7 memoised at index 256, as past 256 memo entries.
        let p = parse(b"\x80\x02K\x07r\x00\x01\x00\x00)j\x00\x01\x00\x00\x87.").unwrap();
        let Value::Tuple(items) = p.get(p.root()) else {
            panic!()
        };
        assert_eq!(items[0], items[2]);
        assert!(matches!(p.get(items[1]), Value::Tuple(t) if t.is_empty()));
    }

    #[test]
    fn protocol_zero_strings_are_unescaped() {
        let p = parse(b"(S'a\\'\\\\\\x00\\xff\\n'\nV\\u00e9\\U0001F600\\x\nt.").unwrap();
        let Value::Tuple(items) = p.get(p.root()) else {
            panic!()
        };
        assert_eq!(p.bytes(items[0]), Some(&b"a'\\\x00\xff\n"[..]));
        assert_eq!(p.bytes(items[1]), Some("é😀\\x".as_bytes()));
    }

    #[test]
    fn disallowed_global_is_rejected_by_name() {
        let err = parse_err(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.");
        assert!(
            err.starts_with("byte 2: global os.system is not allowed"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_opcode_and_protocol_are_rejected() {
        let err = parse_err(b"\x80\x02G?\xf0\x00\x00\x00\x00\x00\x00.");
        assert!(
            err.contains("byte 2: opcode 0x47 ('G') is not supported"),
            "{err}"
        );
        let err = parse_err(b"\x80\x04\x95\x00.");
        assert!(err.contains("pickle protocol 4"), "{err}");
    }

    #[test]
    fn malformed_streams_are_errors_not_panics() {
        for (input, expected) in [
            (
                &b"\x80\x02T\x05\x00\x00\x00ab"[..],
                "byte 2: the pickle ends 9 bytes in, 3 bytes short",
            ),
            (
                b"\x80\x02h\x07.",
                "fetches memo entry 7, which was never stored",
            ),
            (b"\x80\x02(.", "stack is empty above the last MARK"),
            (b"\x80\x02K\x01K\x02e.", "needs a MARK"),
            (b"\x80\x02K\x01(K\x02e.", "appends to a int"),
            (b"\x80\x02}(K\x01u.", "1 items for a dict"),
            (b"I12", "no newline"),
            (b"\x80\x02K\x01", "the pickle ends 4 bytes in"),
        ] {
            let err = parse_err(input);
            assert!(err.contains(expected), "{input:?}: {err}");
        }
    }
}
