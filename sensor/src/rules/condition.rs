//! Falco's condition language: a lexer and a precedence-climbing (Pratt) parser into an AST.
//! Macros and lists are resolved later ([`super::compile`]); here a bare name is a macro
//! reference and a value may name a list.
//!
//! Grammar: `expr := or; or := and ("or" and)*; and := not ("and" not)*;
//! not := "not" not | "(" expr ")" | check | macro; check := FIELD OP [value | "(" values ")"]`.

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Intersects,
    Pmatch,
    StartsWith,
    EndsWith,
    Contains,
    IContains,
    Glob,
    IGlob,
    Exists,
    /// Bytes (the value is hex) contained in the field's raw bytes.
    BContains,
    /// Bytes (the value is hex) at the start of the field's raw bytes.
    BStartsWith,
    Regex,
    /// Parsed so the rule can be skipped with a clear reason; not evaluated.
    Unsupported(&'static str),
}

impl Op {
    fn word(word: &str) -> Option<Self> {
        Some(match word {
            "in" => Self::In,
            "intersects" => Self::Intersects,
            "pmatch" => Self::Pmatch,
            "startswith" => Self::StartsWith,
            "endswith" => Self::EndsWith,
            "contains" => Self::Contains,
            "icontains" => Self::IContains,
            "glob" => Self::Glob,
            "exists" => Self::Exists,
            "regex" => Self::Regex,
            "bcontains" => Self::BContains,
            "bstartswith" => Self::BStartsWith,
            "iglob" => Self::IGlob,
            _ => return None,
        })
    }

    /// Operators whose right-hand side is a parenthesised list.
    pub const fn takes_list(self) -> bool {
        matches!(self, Self::In | Self::Intersects | Self::Pmatch)
    }
}

/// Right-hand side of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    None,
    One(String),
    /// Items as written; an unquoted item may name a list.
    List(Vec<Item>),
    /// Another field (`val(proc.pname)`, or a transformer over a field such as
    /// `tolower(proc.pname)`), written as in the condition.
    Field(String),
    /// A construct we parse but do not evaluate (`oneof (...)`): the rule is skipped.
    Unsupported(String),
}

/// Falco's field transformers (`tolower(proc.name)`).
pub const TRANSFORMERS: &[&str] = &["tolower", "toupper", "b64", "basename", "len"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub text: String,
    pub quoted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Check { field: String, op: Op, value: Value },
    Macro(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct SyntaxError {
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    LParen,
    RParen,
    Comma,
    /// `=`, `==`, `!=`, `<`, `<=`, `>`, `>=`.
    Cmp(Op),
    /// A bare word: keyword, field, macro name or unquoted value.
    Word(String),
    Quoted(String),
}

/// Whether the token just lexed puts the lexer in value position: after a comparison or a
/// word operator, a bare value is Falco's `BareStr` (`[^ \b\t\n\r(),="']+`), so `evt.dir=<`
/// and `proc.args contains 2>&1` are one value each.
fn expects_value(tok: Option<&(usize, Tok)>) -> bool {
    match tok {
        Some((_, Tok::Cmp(_))) => true,
        Some((_, Tok::Word(w))) => Op::word(w).is_some_and(|op| op != Op::Exists),
        _ => false,
    }
}

fn lex(text: &str) -> Result<Vec<(usize, Tok)>, SyntaxError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if expects_value(out.last())
            && !matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'(' | b')' | b',' | b'"' | b'\'')
        {
            while i < bytes.len()
                && !matches!(
                    bytes[i],
                    b' ' | 8 | b'\t' | b'\n' | b'\r' | b'(' | b')' | b',' | b'=' | b'"' | b'\''
                )
            {
                i += 1;
            }
            if i == start {
                // `=` right after an operator (`a == = b`): let the normal path report it.
                i += 1;
                out.push((start, Tok::Cmp(Op::Eq)));
                continue;
            }
            out.push((start, Tok::Word(text[start..i].to_owned())));
            continue;
        }
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push((start, Tok::LParen));
                i += 1;
            }
            b')' => {
                out.push((start, Tok::RParen));
                i += 1;
            }
            b',' => {
                out.push((start, Tok::Comma));
                i += 1;
            }
            b'=' | b'!' | b'<' | b'>' => {
                let next = bytes.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    (b'=', Some(b'=')) => (Op::Eq, 2),
                    (b'=', _) => (Op::Eq, 1),
                    (b'!', Some(b'=')) => (Op::Ne, 2),
                    (b'<', Some(b'=')) => (Op::Le, 2),
                    (b'<', _) => (Op::Lt, 1),
                    (b'>', Some(b'=')) => (Op::Ge, 2),
                    (b'>', _) => (Op::Gt, 1),
                    _ => {
                        return Err(SyntaxError {
                            column: start + 1,
                            message: "unexpected `!`".into(),
                        });
                    }
                };
                out.push((start, Tok::Cmp(op)));
                i += len;
            }
            b'"' | b'\'' => {
                let (value, end) = quoted(text, start)?;
                i = end;
                out.push((start, Tok::Quoted(value)));
            }
            _ => {
                // A word runs to whitespace, a parenthesis, a comma or a comparison; a
                // `[...]` argument (proc.aname[2], k8s.pod.label[app]) belongs to it.
                while i < bytes.len() {
                    let b = bytes[i];
                    if b == b'[' {
                        match text[i..].find(']') {
                            Some(end) => i += end + 1,
                            None => {
                                return Err(SyntaxError {
                                    column: i + 1,
                                    message: "unterminated `[`".into(),
                                });
                            }
                        }
                        continue;
                    }
                    if matches!(
                        b,
                        b' ' | b'\t' | b'\n' | b'\r' | b'(' | b')' | b',' | b'=' | b'<' | b'>'
                    ) || (b == b'!' && bytes.get(i + 1) == Some(&b'='))
                    {
                        break;
                    }
                    i += 1;
                }
                out.push((start, Tok::Word(text[start..i].to_owned())));
            }
        }
    }
    Ok(out)
}

/// The string quoted at `start` (by `"` or `'`) and the index after its closing quote.
///
/// Escapes as libsinsp's `unescape_str`: `\b \f \n \r \t \\ \/`, the string's own quote,
/// `\ ` (kept as a backslash, for rules written before escaping was checked), plus `\xHH`
/// (one byte, hex). Any other escape, or the other quote escaped, is an error as in Falco.
pub fn quoted(text: &str, start: usize) -> Result<(String, usize), SyntaxError> {
    let bytes = text.as_bytes();
    let quote = bytes[start];
    let mut out: Vec<u8> = Vec::new();
    let mut i = start + 1;
    let err = |at: usize, message: String| SyntaxError { column: at + 1, message };
    loop {
        match bytes.get(i) {
            None => return Err(err(start, "unterminated string".into())),
            Some(&b) if b == quote => {
                i += 1;
                break;
            }
            Some(b'\\') => {
                let Some(&e) = bytes.get(i + 1) else {
                    return Err(err(start, "unterminated string".into()));
                };
                i += 2;
                match e {
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b' ' | b'\\' => out.push(b'\\'),
                    b'/' => out.push(b'/'),
                    b'"' | b'\'' if e == quote => out.push(e),
                    b'"' | b'\'' => {
                        return Err(err(
                            i - 2,
                            format!(
                                "invalid \\{} escape in a {}-quoted string",
                                e as char, quote as char
                            ),
                        ));
                    }
                    b'x' => {
                        let hex = text
                            .get(i..i + 2)
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                            .ok_or_else(|| err(i - 2, "`\\x` needs two hex digits".into()))?;
                        out.push(hex);
                        i += 2;
                    }
                    other => {
                        return Err(err(
                            i - 2,
                            format!("unsupported string escape sequence: \\{}", other as char),
                        ));
                    }
                }
            }
            Some(&b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok((String::from_utf8_lossy(&out).into_owned(), i))
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    len: usize,
}

/// Parses a condition.
pub fn parse(text: &str) -> Result<Expr, SyntaxError> {
    let toks = lex(text)?;
    let mut p = Parser { toks, pos: 0, len: text.len() };
    if p.toks.is_empty() {
        return Err(SyntaxError { column: 1, message: "empty condition".into() });
    }
    let expr = p.expr(0)?;
    if let Some((col, tok)) = p.toks.get(p.pos) {
        return Err(SyntaxError {
            column: col + 1,
            message: format!("unexpected {} after a complete condition", describe(tok)),
        });
    }
    Ok(expr)
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::Comma => "`,`".into(),
        Tok::Cmp(op) => format!("operator {op:?}"),
        Tok::Word(w) => format!("`{w}`"),
        Tok::Quoted(q) => format!("string {q:?}"),
    }
}

/// Binding power of the infix boolean operators.
fn infix(tok: &Tok) -> Option<(u8, bool)> {
    match tok {
        Tok::Word(w) if w == "or" => Some((1, false)),
        Tok::Word(w) if w == "and" => Some((2, true)),
        _ => None,
    }
}

impl Parser {
    fn column(&self) -> usize {
        self.toks.get(self.pos).map_or(self.len, |(c, _)| *c) + 1
    }

    fn error(&self, message: impl Into<String>) -> SyntaxError {
        SyntaxError { column: self.column(), message: message.into() }
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn next(&mut self) -> Option<Tok> {
        let tok = self.toks.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        tok
    }

    fn expr(&mut self, min_bp: u8) -> Result<Expr, SyntaxError> {
        let mut lhs = self.prefix()?;
        while let Some((bp, is_and)) = self.peek().and_then(infix) {
            if bp < min_bp {
                break;
            }
            self.pos += 1;
            let rhs = self.expr(bp + 1)?;
            lhs = match (lhs, is_and) {
                (Expr::And(mut v), true) => {
                    v.push(rhs);
                    Expr::And(v)
                }
                (Expr::Or(mut v), false) => {
                    v.push(rhs);
                    Expr::Or(v)
                }
                (l, true) => Expr::And(vec![l, rhs]),
                (l, false) => Expr::Or(vec![l, rhs]),
            };
        }
        Ok(lhs)
    }

    fn prefix(&mut self) -> Result<Expr, SyntaxError> {
        match self.next() {
            Some(Tok::LParen) => {
                let inner = self.expr(0)?;
                match self.next() {
                    Some(Tok::RParen) => Ok(inner),
                    _ => {
                        self.pos -= 1;
                        Err(self.error("expected `)`"))
                    }
                }
            }
            Some(Tok::Word(w)) if w == "not" => Ok(Expr::Not(Box::new(self.expr(3)?))),
            Some(Tok::Word(w)) if w == "and" || w == "or" => {
                self.pos -= 1;
                Err(self.error(format!("`{w}` needs a condition on its left")))
            }
            Some(Tok::Word(name)) => self.check_or_macro(name),
            Some(tok) => {
                self.pos -= 1;
                Err(self.error(format!("expected a condition, found {}", describe(&tok))))
            }
            None => Err(self.error("condition ends too early")),
        }
    }

    /// A field, or a transformer over one (`tolower(proc.name)`), as written: the name was
    /// just read; a transformer's `(` is next.
    fn field_expr(&mut self, name: String) -> Result<String, SyntaxError> {
        if !(TRANSFORMERS.contains(&name.as_str()) || name == "val")
            || self.peek() != Some(&Tok::LParen)
        {
            return Ok(name);
        }
        self.pos += 1;
        let inner = match self.next() {
            Some(Tok::Word(w)) => self.field_expr(w)?,
            _ => {
                self.pos -= 1;
                return Err(self.error(format!("expected a field inside `{name}(`")));
            }
        };
        match self.next() {
            Some(Tok::RParen) => Ok(format!("{name}({inner})")),
            _ => {
                self.pos -= 1;
                Err(self.error(format!("expected `)` closing `{name}(`")))
            }
        }
    }

    fn check_or_macro(&mut self, name: String) -> Result<Expr, SyntaxError> {
        let name = if TRANSFORMERS.contains(&name.as_str()) && self.peek() == Some(&Tok::LParen) {
            self.field_expr(name)?
        } else {
            name
        };
        let op = match self.peek() {
            Some(Tok::Cmp(op)) => Some(*op),
            Some(Tok::Word(w)) => Op::word(w),
            _ => None,
        };
        let Some(op) = op else {
            // A field needs an operator; anything else is a macro name.
            if name.contains('.') {
                return Err(self.error(format!("expected an operator after field `{name}`")));
            }
            return Ok(Expr::Macro(name));
        };
        self.pos += 1;
        let value =
            match op {
                Op::Exists => Value::None,
                _ if self.peek() == Some(&Tok::LParen) => {
                    self.pos += 1;
                    Value::List(self.items()?)
                }
                _ => match self.next() {
                    Some(Tok::Word(w)) if self.peek() == Some(&Tok::LParen) => {
                        if w == "val" || TRANSFORMERS.contains(&w.as_str()) {
                            let text = self.field_expr(w)?;
                            Value::Field(text.strip_prefix("val(").map_or(text.clone(), |t| {
                                t.strip_suffix(')').unwrap_or(t).to_owned()
                            }))
                        } else {
                            // A list modifier (`startswith oneof (a, b)`): parsed, not evaluated.
                            self.pos += 1;
                            self.items()?;
                            Value::Unsupported(format!("`{w} (...)` after `{name}`"))
                        }
                    }
                    Some(Tok::Word(w)) if op.takes_list() => {
                        // `in list_name` without parentheses.
                        Value::List(vec![Item { text: w, quoted: false }])
                    }
                    Some(Tok::Word(w)) => Value::One(w),
                    Some(Tok::Quoted(q)) => Value::One(q),
                    _ => {
                        self.pos -= 1;
                        return Err(self.error(format!("expected a value after `{name}` {op:?}")));
                    }
                },
            };
        Ok(Expr::Check { field: name, op, value })
    }

    fn items(&mut self) -> Result<Vec<Item>, SyntaxError> {
        let mut items = Vec::new();
        loop {
            match self.next() {
                Some(Tok::RParen) if items.is_empty() => return Ok(items),
                Some(Tok::Word(w)) => items.push(Item { text: w, quoted: false }),
                Some(Tok::Quoted(q)) => items.push(Item { text: q, quoted: true }),
                _ => {
                    self.pos -= 1;
                    return Err(self.error("expected a list item"));
                }
            }
            match self.next() {
                Some(Tok::Comma) => {}
                Some(Tok::RParen) => return Ok(items),
                _ => {
                    self.pos -= 1;
                    return Err(self.error("expected `,` or `)` in a list"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(field: &str, op: Op, value: &str) -> Expr {
        Expr::Check { field: field.into(), op, value: Value::One(value.into()) }
    }

    #[test]
    fn precedence_and_binds_tighter_than_or_not_tightest() {
        let e = parse("a or not b and proc.name=sh").expect("parses");
        assert_eq!(
            e,
            Expr::Or(vec![
                Expr::Macro("a".into()),
                Expr::And(vec![
                    Expr::Not(Box::new(Expr::Macro("b".into()))),
                    check("proc.name", Op::Eq, "sh"),
                ]),
            ])
        );
    }

    #[test]
    fn lists_quotes_brackets_and_word_operators() {
        let e = parse(
            "(proc.aname[2] in (bash, 'my sh', shell_binaries)) and fd.name pmatch (/etc) and \
             proc.cmdline contains \"a \\\"b\" and k8s.pod.label[app]!=web and fd.name exists",
        )
        .expect("parses");
        let Expr::And(parts) = e else { panic!("and") };
        assert_eq!(parts.len(), 5);
        assert_eq!(
            parts[0],
            Expr::Check {
                field: "proc.aname[2]".into(),
                op: Op::In,
                value: Value::List(vec![
                    Item { text: "bash".into(), quoted: false },
                    Item { text: "my sh".into(), quoted: true },
                    Item { text: "shell_binaries".into(), quoted: false },
                ]),
            }
        );
        assert_eq!(parts[2], check("proc.cmdline", Op::Contains, "a \"b"));
        assert_eq!(parts[3], check("k8s.pod.label[app]", Op::Ne, "web"));
        assert_eq!(
            parts[4],
            Expr::Check { field: "fd.name".into(), op: Op::Exists, value: Value::None }
        );
    }

    #[test]
    fn comparisons_without_spaces() {
        let e = parse("user.uid>=1000 and proc.pid<5 and fd.sport!=80").expect("parses");
        assert_eq!(
            e,
            Expr::And(vec![
                check("user.uid", Op::Ge, "1000"),
                check("proc.pid", Op::Lt, "5"),
                check("fd.sport", Op::Ne, "80"),
            ])
        );
    }

    #[test]
    fn syntax_errors_have_columns() {
        let err = parse("proc.name = sh and (fd.name = x").expect_err("unbalanced");
        assert!(err.message.contains("`)`"), "{err}");
        let err = parse("proc.name sh").expect_err("no operator");
        assert_eq!(err.column, 11, "{err}");
        let err = parse("and x").expect_err("leading and");
        assert_eq!(err.column, 1);
        assert!(parse("proc.name = 'x").is_err());
        assert!(parse("").is_err());
        assert!(parse("a b").is_err());
    }
}
