//! AST + macros + lists → a compiled condition: field ids resolved, right-hand sides parsed to
//! their field's type, sets hashed, globs compiled. Evaluation walks it without allocating.
//! Also derived here: the event classes a condition can match (for the per-class index) and
//! the file path prefixes and cgroups it needs to see (for the kernel filter).

use std::collections::{HashMap, HashSet};

use super::{
    condition::{Expr, Item, Op, Value},
    fields::{ALL_CLASSES, Class, ClassMask, Ctx, Field, MAX_ANCESTORS, Type, Val},
};

/// Why a rule cannot be compiled; the rule is skipped, the rest loads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("unknown field `{0}`")]
    UnknownField(String),
    #[error("no event type we observe: evt.type only names {0}")]
    NoEventType(String),
    #[error("undefined macro `{0}`")]
    UnknownMacro(String),
    #[error("operator `{0}` is not supported")]
    Operator(String),
    #[error("{0}")]
    BadValue(String),
    #[error("source `{0}` is not supported (only syscall)")]
    Source(String),
}

#[derive(Debug)]
pub enum Node {
    And(Box<[Node]>),
    Or(Box<[Node]>),
    Not(Box<Node>),
    Const(bool),
    Test(Field, Test),
    /// A test on a transformed field (`tolower(proc.name) = bash`).
    Xform(Field, Box<[Transform]>, Test),
    /// A field compared with another field (`proc.name = val(proc.pname)`).
    FieldCmp {
        lhs: (Field, Box<[Transform]>),
        op: Op,
        rhs: (Field, Box<[Transform]>),
    },
    /// `evt.type` against a set of classes.
    Class(ClassMask),
    /// `evt.type` naming only events we do not observe: never matches.
    UnknownTypes(Box<[String]>),
}

#[derive(Debug)]
pub enum Test {
    Exists,
    StrEq(Box<str>),
    StrNe(Box<str>),
    StrIn(StrSet),
    StartsWith(Box<str>),
    EndsWith(Box<str>),
    Contains(Box<str>),
    /// Needle already lower case (ASCII).
    IContains(Box<str>),
    Glob(glob::Pattern),
    /// Path prefixes (`/etc` matches `/etc` and `/etc/x`, not `/etc_x`) and globs.
    Pmatch(Box<[Box<str>]>, Box<[glob::Pattern]>),
    IGlob(glob::Pattern),
    Int(Op, i64),
    IntIn(Box<[i64]>),
    Bool(bool),
    /// Raw bytes (from hex) contained in / at the start of the value.
    BContains(Box<[u8]>),
    BStartsWith(Box<[u8]>),
    /// Anchored at both ends, as libsinsp's RE2 `ANCHOR_BOTH`.
    Regex(regex::Regex),
    /// An address field against networks: `=`/`in` hold when one contains the address.
    Net(bool, Box<[Cidr]>),
    /// `fd.*ip.name` against host names: holds when the address is one the names resolve
    /// to (resolved in the background, as Falco's DNS manager does).
    Dns(Box<[Box<str>]>),
}

/// Falco's field transformers, applied in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    ToLower,
    ToUpper,
    /// Base64-decode (the value unchanged when it is not base64).
    B64,
    /// The last path component.
    Basename,
}

impl Transform {
    /// Writes the transformed `src` into `out` (without allocating for ASCII text, the
    /// usual case).
    fn apply_into(self, src: &str, out: &mut String) {
        out.clear();
        match self {
            Self::ToLower if src.is_ascii() => {
                out.extend(src.bytes().map(|c| char::from(c.to_ascii_lowercase())));
            }
            Self::ToUpper if src.is_ascii() => {
                out.extend(src.bytes().map(|c| char::from(c.to_ascii_uppercase())));
            }
            Self::Basename => {
                let trimmed = src.trim_end_matches('/');
                out.push_str(trimmed.rsplit('/').next().unwrap_or(trimmed));
            }
            _ => out.push_str(&self.apply(src)),
        }
    }

    fn apply(self, s: &str) -> String {
        match self {
            Self::ToLower => s.to_lowercase(),
            Self::ToUpper => s.to_uppercase(),
            Self::B64 => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_else(|| s.to_owned())
            }
            Self::Basename => {
                let trimmed = s.trim_end_matches('/');
                trimmed.rsplit('/').next().unwrap_or(trimmed).to_owned()
            }
        }
    }
}

/// An IPv4 or IPv6 network (`10.0.0.0/8`; a bare address is a host network).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, p.parse().ok()?),
            None => {
                let addr: std::net::IpAddr = text.parse().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if matches!(addr, std::net::IpAddr::V4(_)) { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map_or(V6(v6), V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (V4(net), V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (V6(net), V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// A field reference as written (`proc.name`, `tolower(proc.name)`): the field and the
/// transformers to apply, innermost first.
pub fn field_ref(text: &str) -> Result<(Field, Vec<Transform>), Skip> {
    let mut transforms = Vec::new();
    let mut rest = text.trim();
    while let Some(open) = rest.find('(') {
        let name = &rest[..open];
        let t = match name {
            "tolower" => Transform::ToLower,
            "toupper" => Transform::ToUpper,
            "b64" => Transform::B64,
            "basename" => Transform::Basename,
            "val" => {
                rest = rest[open + 1..].strip_suffix(')').unwrap_or(&rest[open + 1..]);
                continue;
            }
            other => return Err(Skip::Operator(format!("transformer `{other}()`"))),
        };
        transforms.push(t);
        rest = rest[open + 1..].strip_suffix(')').unwrap_or(&rest[open + 1..]);
    }
    transforms.reverse();
    let field = Field::parse(rest).ok_or_else(|| Skip::UnknownField(rest.to_owned()))?;
    if !transforms.is_empty() && field.kind() != Type::Str {
        return Err(Skip::Operator(format!("transformer on non-string field `{rest}`")));
    }
    Ok((field, transforms))
}

#[derive(Debug)]
pub enum StrSet {
    Small(Box<[Box<str>]>),
    Hashed(HashSet<Box<str>, std::hash::BuildHasherDefault<FxHasher>>),
}

/// The Fx hash (rustc's): fast on short keys such as process names. The sets are built from
/// rule files, not from event data, so flooding one bucket would take the rule author.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let (words, rest) = bytes.as_chunks::<8>();
        for w in words {
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(*w)).wrapping_mul(K);
        }
        for &b in rest {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl StrSet {
    fn new(items: Vec<String>) -> Self {
        if items.len() <= 8 {
            Self::Small(items.into_iter().map(String::into_boxed_str).collect())
        } else {
            Self::Hashed(items.into_iter().map(String::into_boxed_str).collect())
        }
    }

    fn contains(&self, s: &str) -> bool {
        match self {
            Self::Small(items) => items.iter().any(|i| &**i == s),
            Self::Hashed(set) => set.contains(s),
        }
    }
}

/// What compilation reads: lists (already flattened) and parsed macros.
pub struct Defs<'a> {
    pub lists: &'a HashMap<String, Vec<String>>,
    pub macros: &'a HashMap<String, Expr>,
}

const MAX_MACRO_DEPTH: usize = 64;

impl Defs<'_> {
    /// Replaces macro references by their conditions.
    pub fn expand(&self, expr: &Expr, depth: usize) -> Result<Expr, Skip> {
        Ok(match expr {
            Expr::And(v) => {
                Expr::And(v.iter().map(|e| self.expand(e, depth)).collect::<Result<_, _>>()?)
            }
            Expr::Or(v) => {
                Expr::Or(v.iter().map(|e| self.expand(e, depth)).collect::<Result<_, _>>()?)
            }
            Expr::Not(e) => Expr::Not(Box::new(self.expand(e, depth)?)),
            Expr::Macro(name) => {
                let body = self.macros.get(name).ok_or_else(|| Skip::UnknownMacro(name.clone()))?;
                if depth >= MAX_MACRO_DEPTH {
                    return Err(Skip::BadValue(format!(
                        "macro `{name}` expands too deep (a cycle?)"
                    )));
                }
                self.expand(body, depth + 1)?
            }
            Expr::Check { .. } => expr.clone(),
        })
    }

    /// The items of a list value with list names replaced by their items. A list's items
    /// are pasted into the condition as Falco does, so a YAML item written `'"(systemd)"'`
    /// is the quoted string `(systemd)`.
    fn items(&self, items: &[Item]) -> Vec<String> {
        let mut out = Vec::new();
        for item in items {
            match self.lists.get(&item.text) {
                Some(list) if !item.quoted => out.extend(list.iter().map(|i| unquote_item(i))),
                _ => out.push(item.text.clone()),
            }
        }
        out
    }
}

/// A list item as the condition lexer reads it: a quoted item loses its quotes and escapes.
pub fn unquote_item(item: &str) -> String {
    let t = item.trim();
    let b = t.as_bytes();
    if b.len() >= 2
        && (b[0] == b'"' || b[0] == b'\'')
        && b[b.len() - 1] == b[0]
        && let Ok((text, end)) = super::condition::quoted(t, 0)
        && end == t.len()
    {
        return text;
    }
    item.to_owned()
}

/// Whether evaluating the node may read `/proc` (or do other per-event system calls).
fn costly(node: &Node) -> bool {
    match node {
        Node::And(v) | Node::Or(v) => v.iter().any(costly),
        Node::Not(n) => costly(n),
        Node::Test(f, _) | Node::Xform(f, _, _) => f.reads_proc(),
        Node::FieldCmp { lhs, rhs, .. } => lhs.0.reads_proc() || rhs.0.reads_proc(),
        Node::Const(_) | Node::Class(_) | Node::UnknownTypes(_) => false,
    }
}

/// A rough cost of evaluating the node, to order the operands of `and` and `or`: event type
/// tests first, then plain comparisons, sets, string searches and patterns, transformed
/// fields and ancestors, and tests that read `/proc` last.
fn cost(node: &Node) -> u32 {
    match node {
        Node::Const(_) | Node::Class(_) | Node::UnknownTypes(_) => 0,
        Node::Not(n) => cost(n),
        Node::And(v) | Node::Or(v) => v.iter().map(cost).max().unwrap_or(0) + 1,
        _ if costly(node) => 100,
        Node::Test(Field::ProcAname(None), _) => 8,
        Node::Test(Field::ProcAname(Some(n)), _) if *n >= 2 => 6,
        Node::Xform(..) | Node::FieldCmp { .. } => 6,
        Node::Test(_, test) => match test {
            Test::Exists | Test::StrEq(_) | Test::StrNe(_) | Test::Int(..) | Test::Bool(_) => 1,
            Test::StrIn(_) | Test::IntIn(_) | Test::StartsWith(_) | Test::EndsWith(_) => 2,
            Test::Contains(_) | Test::IContains(_) | Test::BContains(_) | Test::BStartsWith(_) => 3,
            Test::Pmatch(..) | Test::Glob(_) | Test::IGlob(_) | Test::Net(..) => 4,
            Test::Regex(_) | Test::Dns(_) => 5,
        },
    }
}

/// Compiles an expanded condition. Nested `and`s (and `or`s) are flattened, and the operands
/// ordered by [`cost`]: cheap and selective tests first, tests that read `/proc` last (tests
/// have no side effects, so the order does not change the result, only how much runs).
pub fn compile(expr: &Expr, defs: &Defs<'_>) -> Result<Node, Skip> {
    Ok(match expr {
        Expr::And(v) => {
            let mut nodes = Vec::with_capacity(v.len());
            for e in v {
                match compile(e, defs)? {
                    Node::And(inner) => nodes.extend(inner.into_vec()),
                    n => nodes.push(n),
                }
            }
            nodes.sort_by_key(cost);
            if nodes.len() == 1 {
                return Ok(nodes.remove(0));
            }
            Node::And(nodes.into_boxed_slice())
        }
        Expr::Or(v) => {
            let mut nodes = Vec::with_capacity(v.len());
            for e in v {
                match compile(e, defs)? {
                    Node::Or(inner) => nodes.extend(inner.into_vec()),
                    n => nodes.push(n),
                }
            }
            nodes.sort_by_key(cost);
            if nodes.len() == 1 {
                return Ok(nodes.remove(0));
            }
            Node::Or(nodes.into_boxed_slice())
        }
        Expr::Not(e) => Node::Not(Box::new(compile(e, defs)?)),
        Expr::Macro(name) => return Err(Skip::UnknownMacro(name.clone())),
        Expr::Check { field, op, value } => check(field, *op, value, defs)?,
    })
}

fn check(name: &str, op: Op, value: &Value, defs: &Defs<'_>) -> Result<Node, Skip> {
    if let Op::Unsupported(word) = op {
        return Err(Skip::Operator(word.to_owned()));
    }
    if let Value::Unsupported(what) = value {
        return Err(Skip::Operator(what.clone()));
    }
    let (field, transforms) = field_ref(name)?;
    if let Value::Field(rhs) = value {
        let (rfield, rtransforms) = field_ref(rhs)?;
        if !matches!(
            op,
            Op::Eq
                | Op::Ne
                | Op::Lt
                | Op::Le
                | Op::Gt
                | Op::Ge
                | Op::Contains
                | Op::StartsWith
                | Op::EndsWith
                | Op::IContains
        ) {
            return Err(Skip::Operator(format!("{op:?} with a field on the right")));
        }
        let lkind = if transforms.is_empty() { field.kind() } else { Type::Str };
        let rkind = if rtransforms.is_empty() { rfield.kind() } else { Type::Str };
        if lkind != rkind {
            return Err(Skip::BadValue(format!("`{name}` and `{rhs}` have different types")));
        }
        return Ok(Node::FieldCmp {
            lhs: (field, transforms.into_boxed_slice()),
            op,
            rhs: (rfield, rtransforms.into_boxed_slice()),
        });
    }
    let values: Vec<String> = match value {
        Value::None | Value::Field(_) | Value::Unsupported(_) => Vec::new(),
        Value::One(v) => vec![v.clone()],
        Value::List(items) => defs.items(items),
    };
    if !transforms.is_empty() {
        let test = str_test(name, op, value, values)?;
        return Ok(Node::Xform(field, transforms.into_boxed_slice(), test));
    }
    let one = || -> Result<&str, Skip> {
        match (value, values.as_slice()) {
            (Value::One(_), [v]) => Ok(v.as_str()),
            _ => Err(Skip::BadValue(format!("`{name}` {op:?} needs a single value"))),
        }
    };
    if op == Op::Exists {
        return Ok(Node::Test(field, Test::Exists));
    }
    if field == Field::EvtType {
        let mut mask = 0;
        let mut unknown = Vec::new();
        for v in &values {
            match Class::of_name(v) {
                Some(c) => mask |= c.bit(),
                None => unknown.push(v.clone()),
            }
        }
        let node = match op {
            Op::Eq | Op::In | Op::Intersects => Node::Class(mask),
            Op::Ne => Node::Not(Box::new(Node::Class(mask))),
            _ => return Err(Skip::Operator(format!("evt.type {op:?}"))),
        };
        if mask == 0 && matches!(op, Op::Eq | Op::In | Op::Intersects) {
            // Keep the names so the rule can be skipped if nothing else can match.
            return Ok(Node::UnknownTypes(unknown.into_boxed_slice()));
        }
        return Ok(node);
    }
    let test = match field.kind() {
        Type::Int => {
            let int = |v: &str| {
                v.parse::<i64>()
                    .map_err(|_| Skip::BadValue(format!("`{name}` is a number; `{v}` is not")))
            };
            match op {
                Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => Test::Int(op, int(one()?)?),
                Op::In | Op::Intersects => {
                    Test::IntIn(values.iter().map(|v| int(v)).collect::<Result<_, _>>()?)
                }
                _ => return Err(Skip::Operator(format!("{op:?} on number field `{name}`"))),
            }
        }
        Type::Bool => match (op, one()?) {
            (Op::Eq, "true") => Test::Bool(true),
            (Op::Eq, "false") | (Op::Ne, "true") => Test::Bool(false),
            (Op::Ne, "false") => Test::Bool(true),
            (_, v) => {
                return Err(Skip::BadValue(format!("`{name}` {op:?} {v}: expected true or false")));
            }
        },
        Type::Str => str_test(name, op, value, values)?,
        Type::Net => {
            let nets = values
                .iter()
                .map(|v| {
                    Cidr::parse(v)
                        .ok_or_else(|| Skip::BadValue(format!("`{name}`: `{v}` is not a network")))
                })
                .collect::<Result<Box<[_]>, _>>()?;
            match op {
                Op::Eq | Op::In | Op::Intersects => Test::Net(true, nets),
                Op::Ne => Test::Net(false, nets),
                _ => return Err(Skip::Operator(format!("{op:?} on network field `{name}`"))),
            }
        }
        Type::Dns => match op {
            Op::Eq | Op::In | Op::Intersects => {
                let names: Box<[Box<str>]> =
                    values.into_iter().map(String::into_boxed_str).collect();
                super::dns::watch(&names);
                Test::Dns(names)
            }
            _ => return Err(Skip::Operator(format!("{op:?} on host-name field `{name}`"))),
        },
    };
    Ok(Node::Test(field, test))
}

/// A string test for `op` and its value(s).
fn str_test(name: &str, op: Op, value: &Value, values: Vec<String>) -> Result<Test, Skip> {
    let one = || -> Result<&str, Skip> {
        match (value, values.as_slice()) {
            (Value::One(_), [v]) => Ok(v.as_str()),
            _ => Err(Skip::BadValue(format!("`{name}` {op:?} needs a single value"))),
        }
    };
    Ok(match op {
        Op::Eq => Test::StrEq(one()?.into()),
        Op::Ne => Test::StrNe(one()?.into()),
        Op::In | Op::Intersects => Test::StrIn(StrSet::new(values)),
        Op::StartsWith => Test::StartsWith(one()?.into()),
        Op::EndsWith => Test::EndsWith(one()?.into()),
        Op::Contains => Test::Contains(one()?.into()),
        Op::IContains => Test::IContains(one()?.to_ascii_lowercase().into()),
        Op::Glob => Test::Glob(glob_of(one()?)?),
        Op::IGlob => Test::IGlob(glob_of(&one()?.to_lowercase())?),
        Op::BContains => Test::BContains(hex_bytes(name, one()?)?),
        Op::BStartsWith => Test::BStartsWith(hex_bytes(name, one()?)?),
        Op::Regex => Test::Regex(
            regex::Regex::new(&format!("^(?:{})$", one()?))
                .map_err(|e| Skip::BadValue(format!("`{name}` regex: {e}")))?,
        ),
        Op::Pmatch => {
            let (globs, prefixes): (Vec<String>, Vec<String>) =
                values.into_iter().partition(|v| v.contains(['*', '?', '[']));
            Test::Pmatch(
                prefixes.into_iter().map(|p| p.trim_end_matches('/').into()).collect(),
                globs.iter().map(|g| glob_of(g)).collect::<Result<_, _>>()?,
            )
        }
        _ => return Err(Skip::Operator(format!("{op:?} on string field `{name}`"))),
    })
}

/// `bcontains` / `bstartswith` values: hex digits, two per byte.
fn hex_bytes(name: &str, hex: &str) -> Result<Box<[u8]>, Skip> {
    let bad = || Skip::BadValue(format!("`{name}`: `{hex}` is not an even number of hex digits"));
    if hex.len() % 2 != 0 || hex.is_empty() {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(bad))
        .collect()
}

fn glob_of(pattern: &str) -> Result<glob::Pattern, Skip> {
    glob::Pattern::new(pattern).map_err(|e| Skip::BadValue(format!("glob {pattern:?}: {e}")))
}

/// The classes a condition can match (Falco's event-type analysis): `and` intersects, `or`
/// unites, and anything not about evt.type allows every class.
pub fn classes(node: &Node) -> ClassMask {
    match node {
        Node::Class(mask) => *mask,
        Node::UnknownTypes(_) => 0,
        Node::And(v) => v.iter().fold(ALL_CLASSES, |m, n| m & classes(n)),
        Node::Or(v) => v.iter().fold(0, |m, n| m | classes(n)),
        _ => ALL_CLASSES,
    }
}

/// Event type names a condition used that we do not observe.
pub fn unknown_types(node: &Node, out: &mut Vec<String>) {
    match node {
        Node::And(v) | Node::Or(v) => v.iter().for_each(|n| unknown_types(n, out)),
        Node::Not(n) => unknown_types(n, out),
        Node::UnknownTypes(names) => out.extend(names.iter().cloned()),
        _ => {}
    }
}

/// Path prefixes a file event must be under for the condition to hold, when the condition
/// says so through fd.name / fd.directory (`startswith`, `=`, `in`, `pmatch`, `glob`).
pub fn path_prefixes(node: &Node) -> Option<Vec<String>> {
    match node {
        Node::Test(Field::FdName, test) => match test {
            Test::StrEq(v) | Test::StartsWith(v) => Some(vec![v.to_string()]),
            Test::StrIn(StrSet::Small(items)) => {
                Some(items.iter().map(|i| i.to_string()).collect())
            }
            Test::StrIn(StrSet::Hashed(items)) => {
                Some(items.iter().map(|i| i.to_string()).collect())
            }
            Test::Pmatch(prefixes, globs) => Some(
                prefixes
                    .iter()
                    .map(|p| p.to_string())
                    .chain(globs.iter().map(|g| glob_prefix(g.as_str())))
                    .collect(),
            ),
            Test::Glob(g) => Some(vec![glob_prefix(g.as_str())]),
            _ => None,
        },
        Node::Test(Field::FdDirectory, test) => match test {
            Test::StrEq(v) => Some(vec![dir_prefix(v)]),
            Test::StartsWith(v) => Some(vec![v.to_string()]),
            Test::StrIn(StrSet::Small(items)) => {
                Some(items.iter().map(|i| dir_prefix(i)).collect())
            }
            Test::StrIn(StrSet::Hashed(items)) => {
                Some(items.iter().map(|i| dir_prefix(i)).collect())
            }
            _ => None,
        },
        // Any one constraining conjunct is enough; take the narrowest-looking (most bytes).
        Node::And(v) => v
            .iter()
            .filter_map(path_prefixes)
            .max_by_key(|p| p.iter().map(String::len).min().unwrap_or(0)),
        Node::Or(v) => {
            let mut all = Vec::new();
            for n in v.iter() {
                if classes(n) & Class::Open.bit() == 0 {
                    continue; // a branch that cannot be an open needs no path
                }
                all.extend(path_prefixes(n)?);
            }
            Some(all)
        }
        _ => None,
    }
}

fn dir_prefix(dir: &str) -> String {
    if dir.ends_with('/') { dir.to_owned() } else { format!("{dir}/") }
}

fn glob_prefix(pattern: &str) -> String {
    let end = pattern.find(['*', '?', '[']).unwrap_or(pattern.len());
    pattern[..end].to_owned()
}

/// Whether the condition is false for every failed open: a conjunct requires a descriptor
/// (`fd.num >= 0`, `fd.num > -1`, `evt.rawres >= 0`) or success (`evt.res = SUCCESS`), or
/// every alternative that can be an open does.
pub fn excludes_failed_opens(node: &Node) -> bool {
    let non_negative = |op: &Op, v: i64| match op {
        Op::Ge | Op::Eq => v >= 0,
        Op::Gt => v >= -1,
        _ => false,
    };
    match node {
        Node::Test(Field::FdNum | Field::EvtRawres, Test::Int(op, v)) => non_negative(op, *v),
        Node::Test(Field::FdNum | Field::EvtRawres, Test::IntIn(vs)) => vs.iter().all(|v| *v >= 0),
        Node::Test(Field::EvtRes, Test::StrEq(v)) => &**v == "SUCCESS",
        Node::And(v) => v.iter().any(excludes_failed_opens),
        Node::Or(v) => {
            v.iter().all(|n| classes(n) & Class::Open.bit() == 0 || excludes_failed_opens(n))
        }
        _ => false,
    }
}

/// Whether the condition only holds in containers (`container.id != host`, or a container
/// field compared to a value, in a conjunct).
pub fn needs_container(node: &Node) -> bool {
    match node {
        Node::Test(Field::ContainerId | Field::ContainerFullId, Test::StrNe(v)) => &**v == "host",
        Node::Test(Field::K8sNsName | Field::K8sPodName | Field::K8sPodLabel(_), t) => {
            !matches!(t, Test::StrNe(_))
        }
        Node::And(v) => v.iter().any(needs_container),
        Node::Or(v) => !v.is_empty() && v.iter().all(needs_container),
        _ => false,
    }
}

/// Evaluates a compiled condition.
pub fn eval(node: &Node, ctx: &Ctx<'_>, scratch: &mut String) -> bool {
    match node {
        Node::And(v) => v.iter().all(|n| eval(n, ctx, scratch)),
        Node::Or(v) => v.iter().any(|n| eval(n, ctx, scratch)),
        Node::Not(n) => !eval(n, ctx, scratch),
        Node::Const(b) => *b,
        Node::Class(mask) => mask & ctx.class.bit() != 0,
        Node::UnknownTypes(_) => false,
        Node::Test(Field::ProcAname(None), test) => {
            (1..=MAX_ANCESTORS).any(|n| match ctx.ancestor(n) {
                Some((comm, _)) if !comm.is_empty() => test_val(test, Val::Str(comm)),
                _ => false,
            })
        }
        Node::Test(field, test) => test_val(test, ctx.get(field, scratch)),
        Node::Xform(field, transforms, test) => match ctx.get(field, scratch) {
            Val::Str(s) => XFORM.with_borrow_mut(|[a, b, _]| {
                test_val(test, Val::Str(transformed(s, transforms, a, b)))
            }),
            other => test_val(test, other),
        },
        Node::FieldCmp { lhs, op, rhs } => field_cmp(ctx, lhs, *op, rhs, scratch),
    }
}

thread_local! {
    /// Buffers for transformed values and field comparisons: two for transforming, one for
    /// the left-hand value of a comparison (evaluation allocates only while they grow).
    static XFORM: std::cell::RefCell<[String; 3]> = const {
        std::cell::RefCell::new([String::new(), String::new(), String::new()])
    };
}

/// `s` with `transforms` applied in order, built in `a` and `b`.
fn transformed<'b>(
    s: &str,
    transforms: &[Transform],
    a: &'b mut String,
    b: &'b mut String,
) -> &'b str {
    a.clear();
    a.push_str(s);
    for t in transforms {
        t.apply_into(a, b);
        std::mem::swap(a, b);
    }
    a.as_str()
}

/// A field value for field-to-field comparisons (a string is kept in a buffer).
enum Owned {
    Str,
    Int(i64),
    Bool(bool),
}

/// The value of `field` with `transforms` applied; a string is left in `a` (`b` is spare).
fn owned(
    ctx: &Ctx<'_>,
    (field, transforms): &(Field, Box<[Transform]>),
    scratch: &mut String,
    a: &mut String,
    b: &mut String,
) -> Option<Owned> {
    Some(match ctx.get(field, scratch) {
        Val::Str(s) => {
            transformed(s, transforms, a, b);
            Owned::Str
        }
        Val::Int(i) => Owned::Int(i),
        Val::Bool(b) => Owned::Bool(b),
        Val::Missing => return None,
    })
}

fn field_cmp(
    ctx: &Ctx<'_>,
    lhs: &(Field, Box<[Transform]>),
    op: Op,
    rhs: &(Field, Box<[Transform]>),
    scratch: &mut String,
) -> bool {
    XFORM.with_borrow_mut(|[a, b, left]| {
        let Some(l) = owned(ctx, lhs, scratch, a, b) else { return false };
        std::mem::swap(a, left);
        owned(ctx, rhs, scratch, a, b).is_some_and(|r| compare(&l, left, op, &r, a))
    })
}

/// `l op r`; `ls` and `rs` hold the strings of [`Owned::Str`] values.
fn compare(l: &Owned, ls: &str, op: Op, r: &Owned, rs: &str) -> bool {
    match (l, r) {
        (Owned::Str, Owned::Str) => {
            let (l, r) = (ls, rs);
            match op {
                Op::Eq => l == r,
                Op::Ne => l != r,
                Op::Contains => l.contains(r),
                Op::IContains => l.to_lowercase().contains(&r.to_lowercase()),
                Op::StartsWith => l.starts_with(r),
                Op::EndsWith => l.ends_with(r),
                Op::Lt => l < r,
                Op::Le => l <= r,
                Op::Gt => l > r,
                Op::Ge => l >= r,
                _ => false,
            }
        }
        (Owned::Int(l), Owned::Int(r)) => match op {
            Op::Eq => l == r,
            Op::Ne => l != r,
            Op::Lt => l < r,
            Op::Le => l <= r,
            Op::Gt => l > r,
            Op::Ge => l >= r,
            _ => false,
        },
        (Owned::Bool(l), Owned::Bool(r)) => match op {
            Op::Eq => l == r,
            Op::Ne => l != r,
            _ => false,
        },
        _ => false,
    }
}

fn test_val(test: &Test, val: Val<'_>) -> bool {
    match (test, val) {
        (Test::Exists, v) => v != Val::Missing,
        (_, Val::Missing) => false,
        (Test::StrEq(want), Val::Str(s)) => s == &**want,
        (Test::StrNe(want), Val::Str(s)) => s != &**want,
        (Test::StrIn(set), Val::Str(s)) => set.contains(s),
        (Test::StartsWith(p), Val::Str(s)) => s.starts_with(&**p),
        (Test::EndsWith(p), Val::Str(s)) => s.ends_with(&**p),
        (Test::Contains(p), Val::Str(s)) => s.contains(&**p),
        (Test::IContains(p), Val::Str(s)) => icontains(s, p),
        (Test::Glob(g), Val::Str(s)) => g.matches(s),
        (Test::IGlob(g), Val::Str(s)) => g.matches(&s.to_lowercase()),
        (Test::BContains(b), Val::Str(s)) => {
            s.as_bytes().windows(b.len().max(1)).any(|w| w == &**b)
        }
        (Test::BStartsWith(b), Val::Str(s)) => s.as_bytes().starts_with(b),
        (Test::Regex(r), Val::Str(s)) => r.is_match(s),
        (Test::Net(want, nets), Val::Str(s)) => match s.parse::<std::net::IpAddr>() {
            Ok(ip) => nets.iter().any(|n| n.contains(ip)) == *want,
            Err(_) => false,
        },
        (Test::Dns(names), Val::Str(s)) => match s.parse::<std::net::IpAddr>() {
            Ok(ip) => super::dns::any_resolves_to(names, ip),
            Err(_) => false,
        },
        (Test::Pmatch(prefixes, globs), Val::Str(s)) => {
            prefixes.iter().any(|p| {
                s.strip_prefix(&**p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || p.is_empty())
            }) || globs.iter().any(|g| {
                // Any match (of the path or an ancestor) starts with the literal prefix.
                let pattern = g.as_str();
                let literal = &pattern[..pattern.find(['*', '?', '[']).unwrap_or(pattern.len())];
                if !s.starts_with(literal) {
                    return false;
                }
                g.matches_with(
                    s,
                    glob::MatchOptions { require_literal_separator: true, ..Default::default() },
                ) || path_ancestors(s).any(|a| {
                    g.matches_with(
                        a,
                        glob::MatchOptions {
                            require_literal_separator: true,
                            ..Default::default()
                        },
                    )
                })
            })
        }
        (Test::Int(op, want), Val::Int(v)) => match op {
            Op::Eq => v == *want,
            Op::Ne => v != *want,
            Op::Lt => v < *want,
            Op::Le => v <= *want,
            Op::Gt => v > *want,
            Op::Ge => v >= *want,
            _ => false,
        },
        (Test::IntIn(set), Val::Int(v)) => set.contains(&v),
        (Test::Bool(want), Val::Bool(b)) => b == *want,
        _ => false,
    }
}

/// `/a/b/c` → `/a/b`, `/a`.
fn path_ancestors(s: &str) -> impl Iterator<Item = &str> {
    let mut end = s.len();
    std::iter::from_fn(move || {
        let i = s[..end].rfind('/')?;
        if i == 0 {
            return None;
        }
        end = i;
        Some(&s[..i])
    })
}

/// ASCII case-insensitive substring test without allocating.
fn icontains(haystack: &str, lower_needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), lower_needle.as_bytes());
    if n.is_empty() {
        return true;
    }
    h.windows(n.len()).any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icontains_and_pmatch() {
        assert!(icontains("Hello World", "o wor"));
        assert!(!icontains("Hello", "xyz"));
        let t = Test::Pmatch(Box::new(["/etc".into()]), Box::new([]));
        assert!(test_val(&t, Val::Str("/etc/passwd")));
        assert!(test_val(&t, Val::Str("/etc")));
        assert!(!test_val(&t, Val::Str("/etc_x")));
        let g = Test::Pmatch(
            Box::new([]),
            Box::new([glob::Pattern::new("/home/*/.ssh").expect("glob")]),
        );
        assert!(test_val(&g, Val::Str("/home/al/.ssh/id_rsa")));
        assert!(!test_val(&g, Val::Str("/home/al/x/.ssh/id_rsa")));
    }

    #[test]
    fn missing_values_fail_every_test_but_exists_is_false() {
        assert!(!test_val(&Test::StrNe("x".into()), Val::Missing));
        assert!(!test_val(&Test::Exists, Val::Missing));
        assert!(test_val(&Test::Exists, Val::Int(0)));
        assert!(test_val(&Test::Int(Op::Ge, 5), Val::Int(5)));
        assert!(!test_val(&Test::Int(Op::Lt, 5), Val::Int(5)));
    }
}
