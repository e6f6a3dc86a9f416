//! AST + macros + lists → a compiled condition: field ids resolved, right-hand sides parsed to
//! their field's type, sets hashed, globs compiled. Evaluation walks it without allocating.
//! Also derived here: the event classes a condition can match (for the per-class index) and
//! the file path prefixes and cgroups it needs to see (for the kernel filter).

use std::collections::{HashMap, HashSet};

use super::{
    condition::{Expr, Item, Op, Value},
    fields::{ALL_CLASSES, Class, Ctx, Field, MAX_ANCESTORS, Type, Val},
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
    /// `evt.type` against a set of classes.
    Class(u16),
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
    Int(Op, i64),
    IntIn(Box<[i64]>),
    Bool(bool),
}

#[derive(Debug)]
pub enum StrSet {
    Small(Box<[Box<str>]>),
    Hashed(HashSet<Box<str>>),
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

    /// The items of a list value with list names replaced by their items.
    fn items(&self, items: &[Item]) -> Vec<String> {
        let mut out = Vec::new();
        for item in items {
            match self.lists.get(&item.text) {
                Some(list) if !item.quoted => out.extend(list.iter().cloned()),
                _ => out.push(item.text.clone()),
            }
        }
        out
    }
}

/// Compiles an expanded condition.
pub fn compile(expr: &Expr, defs: &Defs<'_>) -> Result<Node, Skip> {
    Ok(match expr {
        Expr::And(v) => Node::And(v.iter().map(|e| compile(e, defs)).collect::<Result<_, _>>()?),
        Expr::Or(v) => Node::Or(v.iter().map(|e| compile(e, defs)).collect::<Result<_, _>>()?),
        Expr::Not(e) => Node::Not(Box::new(compile(e, defs)?)),
        Expr::Macro(name) => return Err(Skip::UnknownMacro(name.clone())),
        Expr::Check { field, op, value } => check(field, *op, value, defs)?,
    })
}

fn check(name: &str, op: Op, value: &Value, defs: &Defs<'_>) -> Result<Node, Skip> {
    if let Op::Unsupported(word) = op {
        return Err(Skip::Operator(word.to_owned()));
    }
    let field = Field::parse(name).ok_or_else(|| Skip::UnknownField(name.to_owned()))?;
    let values: Vec<String> = match value {
        Value::None => Vec::new(),
        Value::One(v) => vec![v.clone()],
        Value::List(items) => defs.items(items),
    };
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
        Type::Str => match op {
            Op::Eq => Test::StrEq(one()?.into()),
            Op::Ne => Test::StrNe(one()?.into()),
            Op::In | Op::Intersects => Test::StrIn(StrSet::new(values)),
            Op::StartsWith => Test::StartsWith(one()?.into()),
            Op::EndsWith => Test::EndsWith(one()?.into()),
            Op::Contains => Test::Contains(one()?.into()),
            Op::IContains => Test::IContains(one()?.to_ascii_lowercase().into()),
            Op::Glob => Test::Glob(glob_of(one()?)?),
            Op::Pmatch => {
                let (globs, prefixes): (Vec<String>, Vec<String>) =
                    values.into_iter().partition(|v| v.contains(['*', '?', '[']));
                Test::Pmatch(
                    prefixes.into_iter().map(|p| p.trim_end_matches('/').into()).collect(),
                    globs.iter().map(|g| glob_of(g)).collect::<Result<_, _>>()?,
                )
            }
            _ => return Err(Skip::Operator(format!("{op:?} on string field `{name}`"))),
        },
    };
    Ok(Node::Test(field, test))
}

fn glob_of(pattern: &str) -> Result<glob::Pattern, Skip> {
    glob::Pattern::new(pattern).map_err(|e| Skip::BadValue(format!("glob {pattern:?}: {e}")))
}

/// The classes a condition can match (Falco's event-type analysis): `and` intersects, `or`
/// unites, and anything not about evt.type allows every class.
pub fn classes(node: &Node) -> u16 {
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
        (Test::Pmatch(prefixes, globs), Val::Str(s)) => {
            prefixes.iter().any(|p| {
                s.strip_prefix(&**p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || p.is_empty())
            }) || globs.iter().any(|g| {
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
