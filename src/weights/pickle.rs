//! A pickle reader that builds data and never runs code: the subset of Python's pickle protocols 2-5 that
//! `torch.save` writes for tensors and state dicts. The only globals it accepts are those a state dict needs
//! (an OrderedDict, PyTorch's tensor rebuilders and storage types, and `_codecs.encode` for bytes), as
//! `torch.load(weights_only=True)` does; any other global, a protocol-0 text opcode or an unknown opcode is an
//! error naming it, before anything of it is used.
use anyhow::{bail, ensure, Context, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use tch::Kind;

/// The callables a state dict's pickle names.
#[derive(Clone, Debug, PartialEq)]
pub enum Global {
    OrderedDict,
    /// torch._utils._rebuild_tensor_v2 (and the older _rebuild_tensor).
    RebuildTensor,
    /// torch._utils._rebuild_parameter: a Parameter around a tensor.
    RebuildParameter,
    /// A typed storage class such as torch.FloatStorage.
    StorageType(Kind),
    /// _codecs.encode: how protocol 2 writes a bytes object.
    Encode,
}

/// A tensor's place in the archive: storage `key` (the entry data/<key>) of `kind`, viewed at `offset` with
/// `size` and `stride` (in elements).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub key: String,
    pub kind: Kind,
    pub storage_numel: i64,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// Floats and bytes occur in a checkpoint's metadata; no tensor depends on their values.
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Value>),
    /// Lists and dicts are shared: the memo hands out the same object, as Python's does.
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Global),
    /// A storage named by a persistent id: ('storage', type, key, location, numel).
    Storage { key: String, kind: Kind, numel: i64 },
    Tensor(TensorRef),
}

impl Value {
    fn describe(&self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Bool(_) => "a bool",
            Self::Int(_) => "an int",
            Self::Float => "a float",
            Self::Str(_) => "a string",
            Self::Bytes => "bytes",
            Self::Tuple(_) => "a tuple",
            Self::List(_) => "a list",
            Self::Dict(_) => "a dict",
            Self::Global(_) => "a class or function",
            Self::Storage { .. } => "a storage",
            Self::Tensor(_) => "a tensor",
        }
    }

    fn int(&self, what: &str) -> Result<i64> {
        match self {
            Self::Int(i) => Ok(*i),
            Self::Bool(b) => Ok(*b as i64),
            other => bail!("{what} is {}, not an int", other.describe()),
        }
    }

    fn ints(&self, what: &str) -> Result<Vec<i64>> {
        match self {
            Self::Tuple(items) => items.iter().map(|v| v.int(what)).collect(),
            other => bail!("{what} is {}, not a tuple of ints", other.describe()),
        }
    }
}

/// The storage classes torch.save names, by their dtype.
fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

/// The accepted global `module.name`, or an error naming it.
fn global(module: &str, name: &str) -> Result<Global> {
    Ok(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("_codecs", "encode") => Global::Encode,
        ("torch", storage) if storage_kind(storage).is_some() => Global::StorageType(storage_kind(storage).unwrap_or(Kind::Float)),
        _ => bail!("the pickle names `{module}.{name}`, which is not part of a tensor or a state dict; refused (loading it could run code)"),
    })
}

/// Applies an accepted global to its arguments (REDUCE).
fn call(callable: &Global, args: Vec<Value>) -> Result<Value> {
    match callable {
        Global::OrderedDict => {
            ensure!(args.is_empty(), "OrderedDict called with {} arguments; a state dict's pickle gives none", args.len());
            Ok(Value::Dict(Rc::default()))
        }
        Global::RebuildTensor => {
            ensure!(args.len() >= 4, "a tensor rebuilt from {} arguments; it needs storage, offset, size and stride", args.len());
            let Value::Storage { key, kind, numel } = &args[0] else { bail!("a tensor's storage is {}", args[0].describe()) };
            let tensor = TensorRef {
                key: key.clone(),
                kind: *kind,
                storage_numel: *numel,
                offset: args[1].int("a tensor's storage offset")?,
                size: args[2].ints("a tensor's size")?,
                stride: args[3].ints("a tensor's stride")?,
            };
            ensure!(tensor.size.len() == tensor.stride.len(), "a tensor of {} dimensions has {} strides", tensor.size.len(), tensor.stride.len());
            Ok(Value::Tensor(tensor))
        }
        Global::RebuildParameter => match args.first() {
            Some(Value::Tensor(t)) => Ok(Value::Tensor(t.clone())),
            other => bail!("a parameter rebuilt around {}", other.map_or("nothing", Value::describe)),
        },
        Global::Encode => match args.as_slice() {
            [Value::Str(text), Value::Str(codec)] if codec == "latin1" => {
                ensure!(text.chars().all(|c| (c as u32) < 256), "_codecs.encode: a latin1 string with a character above 255");
                Ok(Value::Bytes)
            }
            _ => bail!("_codecs.encode called with other arguments than (text, 'latin1')"),
        },
        Global::StorageType(_) => bail!("a storage class called directly; storages come from the archive"),
    }
}

/// The machine that reads the opcodes.
struct Machine<'a> {
    data: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    /// The stack below each MARK.
    marks: Vec<Vec<Value>>,
    memo: HashMap<u64, Value>,
}

/// Reads the pickle `data` into the object it describes; storages are named by their persistent ids.
pub fn read(data: &[u8]) -> Result<Value> {
    let mut m = Machine { data, at: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() };
    loop {
        let at = m.at;
        let op = m.take(1)?[0];
        if let Some(value) = m.step(op).with_context(|| format!("pickle opcode 0x{op:02x} at byte {at}"))? {
            return Ok(value);
        }
    }
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.data.len()).context("the pickle ends early: truncated?")?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn uint(&mut self, n: usize) -> Result<u64> {
        let mut buf = [0u8; 8];
        buf[..n].copy_from_slice(self.take(n)?);
        Ok(u64::from_le_bytes(buf))
    }

    fn len(&mut self, n: usize) -> Result<usize> {
        let len = self.uint(n)?;
        usize::try_from(len).ok().filter(|&l| l <= self.data.len()).context("a length longer than the pickle")
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.at..];
        let end = rest.iter().position(|&b| b == b'\n').context("a GLOBAL name without its newline")?;
        let line = String::from_utf8(rest[..end].to_vec()).context("a GLOBAL name that is not UTF-8")?;
        self.at += end + 1;
        Ok(line)
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().context("the pickle pops an empty stack")
    }

    /// The items pushed since the last MARK, the stack restored below them.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let below = self.marks.pop().context("the pickle closes a MARK it never opened")?;
        Ok(std::mem::replace(&mut self.stack, below))
    }

    fn top(&mut self) -> Result<&mut Value> {
        self.stack.last_mut().context("the pickle works on an empty stack")
    }

    fn push_str(&mut self, n: usize) -> Result<()> {
        let len = self.len(n)?;
        let text = std::str::from_utf8(self.take(len)?).context("a string that is not UTF-8")?.to_string();
        self.stack.push(Value::Str(text));
        Ok(())
    }

    fn push_bytes(&mut self, n: usize) -> Result<()> {
        let len = self.len(n)?;
        self.take(len)?;
        self.stack.push(Value::Bytes);
        Ok(())
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let value = self.stack.last().context("the pickle memoizes an empty stack")?.clone();
        self.memo.insert(key, value);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<()> {
        let value = self.memo.get(&key).with_context(|| format!("the pickle reads memo {key}, which it never wrote"))?.clone();
        self.stack.push(value);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        ensure!(items.len().is_multiple_of(2), "SETITEMS with an odd number of items");
        let Value::Dict(dict) = self.top()? else { bail!("SETITEM(S) on something that is not a dict") };
        let dict = dict.clone();
        let mut dict = dict.borrow_mut();
        let mut items = items.into_iter();
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            dict.push((k, v));
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        let Value::List(list) = self.top()? else { bail!("APPEND(S) on something that is not a list") };
        list.borrow_mut().extend(items);
        Ok(())
    }

    /// One opcode; Some(the result) at STOP.
    fn step(&mut self, op: u8) -> Result<Option<Value>> {
        match op {
            0x80 => {
                let protocol = self.take(1)?[0];
                ensure!(protocol <= 5, "pickle protocol {protocol} is newer than 5");
            }
            0x95 => {
                self.take(8)?;
            } // FRAME: a length hint.
            b'.' => return Ok(Some(self.pop()?)),
            b'(' => self.marks.push(std::mem::take(&mut self.stack)),
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.top()?.clone();
                self.stack.push(top);
            }
            b'}' => self.stack.push(Value::Dict(Rc::default())),
            b']' => self.stack.push(Value::List(Rc::default())),
            b')' => self.stack.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                ensure!(self.stack.len() >= n, "TUPLE{n} on a stack of {}", self.stack.len());
                let items = self.stack.split_off(self.stack.len() - n);
                self.stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::List(Rc::new(RefCell::new(items))));
            }
            b'd' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Dict(Rc::default()));
                self.set_items(items)?;
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
                let (v, k) = (self.pop()?, self.pop()?);
                self.set_items(vec![k, v])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)?;
            }
            b'J' => {
                let v = i32::from_le_bytes(self.take(4)?.try_into()?);
                self.stack.push(Value::Int(v as i64));
            }
            b'K' => {
                let v = self.uint(1)?;
                self.stack.push(Value::Int(v as i64));
            }
            b'M' => {
                let v = self.uint(2)?;
                self.stack.push(Value::Int(v as i64));
            }
            0x8a => {
                let n = self.len(1)?;
                ensure!(n <= 8, "an integer of {n} bytes, beyond 64 bits");
                let bytes = self.take(n)?;
                let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
                buf[..n].copy_from_slice(bytes);
                self.stack.push(Value::Int(i64::from_le_bytes(buf)));
            }
            b'G' => {
                self.take(8)?;
                self.stack.push(Value::Float);
            }
            b'N' => self.stack.push(Value::None),
            0x88 => self.stack.push(Value::Bool(true)),
            0x89 => self.stack.push(Value::Bool(false)),
            b'X' => self.push_str(4)?,
            0x8c => self.push_str(1)?,
            0x8d => self.push_str(8)?,
            b'B' => self.push_bytes(4)?,
            b'C' => self.push_bytes(1)?,
            0x8e => self.push_bytes(8)?,
            // Python 2 strings (BINSTRING, SHORT_BINSTRING): bytes read as latin1.
            b'T' | b'U' => {
                let len = self.len(if op == b'T' { 4 } else { 1 })?;
                let text = self.take(len)?.iter().map(|&b| b as char).collect();
                self.stack.push(Value::Str(text));
            }
            b'q' => {
                let key = self.uint(1)?;
                self.memo_put(key)?;
            }
            b'r' => {
                let key = self.uint(4)?;
                self.memo_put(key)?;
            }
            0x94 => {
                let key = self.memo.len() as u64;
                self.memo_put(key)?;
            }
            b'h' => {
                let key = self.uint(1)?;
                self.memo_get(key)?;
            }
            b'j' => {
                let key = self.uint(4)?;
                self.memo_get(key)?;
            }
            b'c' => {
                let (module, name) = (self.line()?, self.line()?);
                self.stack.push(Value::Global(global(&module, &name)?));
            }
            0x93 => {
                let (name, module) = (self.pop()?, self.pop()?);
                let (Value::Str(module), Value::Str(name)) = (module, name) else { bail!("STACK_GLOBAL on values that are not names") };
                self.stack.push(Value::Global(global(&module, &name)?));
            }
            b'R' => {
                let (args, callable) = (self.pop()?, self.pop()?);
                let (Value::Global(callable), Value::Tuple(args)) = (callable, args) else { bail!("REDUCE on something other than an accepted class and a tuple") };
                self.stack.push(call(&callable, args)?);
            }
            b'b' => {
                // BUILD: a state for the object below. An OrderedDict's is its attributes (a state dict's
                // `_metadata`), which are not tensors: dropped.
                let state = self.pop()?;
                match (self.top()?, &state) {
                    (Value::Dict(_), Value::Dict(_) | Value::None) => {}
                    (target, _) => bail!("BUILD of {} with {}: not part of a state dict", target.describe(), state.describe()),
                }
            }
            b'Q' => {
                let id = self.pop()?;
                self.stack.push(storage(id)?);
            }
            other => bail!("opcode 0x{other:02x} ('{}') is not one torch.save writes for tensors and state dicts; refused", other as char),
        }
        Ok(None)
    }
}

/// A persistent id ('storage', storage type, key, location, numel) as the storage it names.
fn storage(id: Value) -> Result<Value> {
    let Value::Tuple(parts) = id else { bail!("a persistent id that is {}, not a storage tuple", id.describe()) };
    match parts.as_slice() {
        [Value::Str(tag), Value::Global(Global::StorageType(kind)), Value::Str(key), _location, numel] if tag == "storage" => {
            let numel = numel.int("a storage's size")?;
            ensure!(numel >= 0, "a storage of {numel} elements");
            Ok(Value::Storage { key: key.clone(), kind: *kind, numel })
        }
        _ => bail!("a persistent id that is not ('storage', type, key, location, size)"),
    }
}
