//! Rule outputs: `%field` substitution into text, and Falco's JSON alert (`time`, `rule`,
//! `priority`, `source`, `hostname`, `output`, `tags`, `output_fields` with typed values and
//! `null` when unknown).

use serde::Serialize;

use super::fields::{Ctx, Field, Val};

#[derive(Debug)]
pub enum Seg {
    Lit(String),
    /// The field and its name as written (the `output_fields` key).
    Field(Field, String),
}

/// Splits an output template; an unknown `%field` is returned as the error.
pub fn compile(template: &str) -> Result<Vec<Seg>, String> {
    let mut segs = Vec::new();
    let mut lit = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('%') {
        lit.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let (name, after) = if let Some(inner) = rest.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => (&inner[..end], &inner[end + 1..]),
                None => return Err(format!("%({inner}")),
            }
        } else {
            let mut end = 0;
            let bytes = rest.as_bytes();
            while end < bytes.len() {
                let b = bytes[end];
                if b == b'[' {
                    match rest[end..].find(']') {
                        Some(close) => end += close + 1,
                        None => break,
                    }
                    continue;
                }
                if !(b.is_ascii_alphanumeric() || b == b'.' || b == b'_') {
                    break;
                }
                end += 1;
            }
            // A name ends before a trailing dot (`%proc.name.`).
            let mut name = &rest[..end];
            while name.ends_with('.') {
                name = &name[..name.len() - 1];
            }
            (name, &rest[name.len()..])
        };
        if name.is_empty() {
            lit.push('%');
            rest = after;
            continue;
        }
        if name == "container.info" {
            // Falco's default for `%container.info`: the container's id and name.
            lit.push_str("container_id=");
            segs.push(Seg::Lit(std::mem::take(&mut lit)));
            segs.push(Seg::Field(Field::ContainerId, "container.id".to_owned()));
            segs.push(Seg::Lit(" container_name=".to_owned()));
            segs.push(Seg::Field(Field::ContainerName, "container.name".to_owned()));
            rest = after;
            continue;
        }
        let field = Field::parse(name).ok_or_else(|| name.to_owned())?;
        if !lit.is_empty() {
            segs.push(Seg::Lit(std::mem::take(&mut lit)));
        }
        segs.push(Seg::Field(field, name.to_owned()));
        rest = after;
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        segs.push(Seg::Lit(lit));
    }
    Ok(segs)
}

/// `HH:MM:SS.nnnnnnnnn` (UTC), as Falco prints `evt.time`.
pub fn clock_time(wall_ns: i128) -> String {
    let secs = wall_ns.div_euclid(1_000_000_000);
    let ns = wall_ns.rem_euclid(1_000_000_000);
    let day = secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}.{:09}", day / 3600, day % 3600 / 60, day % 60, ns)
}

/// RFC 3339 UTC with nanoseconds (`%FT%T.%09luZ`).
pub fn rfc3339(wall_ns: i128) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(wall_ns)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

#[derive(Debug, Serialize)]
pub struct Alert<'a> {
    pub hostname: &'a str,
    pub output: String,
    pub output_fields: serde_json::Map<String, serde_json::Value>,
    pub priority: &'static str,
    pub rule: &'a str,
    pub source: &'static str,
    /// Sorted as Falco keeps them (a `std::set<std::string>`: byte order, no duplicates).
    pub tags: Vec<&'a str>,
    pub time: String,
}

/// Renders a rule's output for an event: the text (with `<NA>` for unknown values) and the
/// typed fields.
pub fn render(
    segs: &[Seg],
    ctx: &Ctx<'_>,
    scratch: &mut String,
) -> (String, serde_json::Map<String, serde_json::Value>) {
    let mut text = String::new();
    let mut fields = serde_json::Map::new();
    for seg in segs {
        match seg {
            Seg::Lit(s) => text.push_str(s),
            Seg::Field(field, name) => {
                let (shown, json) = match ctx.get(field, scratch) {
                    Val::Str(s) => (s.to_owned(), serde_json::Value::from(s)),
                    Val::Int(i) if *field == Field::EvtTime => {
                        (clock_time(ctx.event.wall_ns), serde_json::Value::from(i))
                    }
                    Val::Int(i) => (i.to_string(), serde_json::Value::from(i)),
                    Val::Bool(b) => (b.to_string(), serde_json::Value::from(b)),
                    Val::Missing => ("<NA>".to_owned(), serde_json::Value::Null),
                };
                text.push_str(&shown);
                fields.insert(name.clone(), json);
            }
        }
    }
    // Falco's `output_fields` always carry the event time (nanoseconds since the epoch).
    fields
        .entry("evt.time")
        .or_insert_with(|| serde_json::Value::from(i64::try_from(ctx.event.wall_ns).unwrap_or(0)));
    (text, fields)
}

/// The alert for `rule` on the event in `ctx`.
pub fn alert<'a>(rule: &'a super::CompiledRule, ctx: &Ctx<'a>, scratch: &mut String) -> Alert<'a> {
    let (text, output_fields) = render(&rule.output, ctx, scratch);
    Alert {
        hostname: ctx.hostname,
        output: format!("{}: {} {}", clock_time(ctx.event.wall_ns), rule.priority.name(), text),
        output_fields,
        priority: rule.priority.name(),
        rule: &rule.name,
        source: "syscall",
        tags: {
            let mut tags: Vec<&str> = rule.tags.iter().map(String::as_str).collect();
            tags.sort_unstable();
            tags.dedup();
            tags
        },
        time: rfc3339(ctx.event.wall_ns),
    }
}

#[cfg(test)]
mod tests {
    use super::{super::Priority, *};

    #[test]
    fn templates_split_into_fields() {
        let segs = compile("Shell (user=%user.name %proc.aname[2]) in %container.id. 100%")
            .expect("compiles");
        let names: Vec<_> = segs
            .iter()
            .map(|s| match s {
                Seg::Lit(l) => format!("L{l}"),
                Seg::Field(_, n) => format!("F{n}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "LShell (user=",
                "Fuser.name",
                "L ",
                "Fproc.aname[2]",
                "L) in ",
                "Fcontainer.id",
                "L. 100%"
            ]
        );
        assert_eq!(compile("x %evt.buffer").expect_err("unknown"), "evt.buffer");
        assert_eq!(compile("%(proc.name)x").map(|s| s.len()).ok(), Some(2));
    }

    #[test]
    fn times_have_nanoseconds() {
        let ns = 1_777_629_600_123_456_789_i128;
        assert_eq!(rfc3339(ns), "2026-05-01T10:00:00.123456789Z");
        assert_eq!(clock_time(ns), "10:00:00.123456789");
        assert_eq!(Priority::parse("INFO").map(Priority::name), Some("Informational"));
    }
}
