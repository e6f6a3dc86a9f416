//! Rule outputs: `%field` substitution into text, and Falco's JSON alert (`time`, `rule`,
//! `priority`, `source`, `hostname`, `output`, `tags`, `output_fields` with typed values and
//! `null` when unknown).

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
    let mut out = String::with_capacity(18);
    push_clock_time(&mut out, wall_ns);
    out
}

/// Appends [`clock_time`] to `out`.
fn push_clock_time(out: &mut String, wall_ns: i128) {
    let secs = wall_ns.div_euclid(1_000_000_000);
    let ns = wall_ns.rem_euclid(1_000_000_000) as u32;
    let day = secs.rem_euclid(86_400) as u32;
    push_digits(out, day / 3600, 2);
    out.push(':');
    push_digits(out, day % 3600 / 60, 2);
    out.push(':');
    push_digits(out, day % 60, 2);
    out.push('.');
    push_digits(out, ns, 9);
}

/// Appends `v` in decimal, zero-padded to `width` digits (at most 10).
fn push_digits(out: &mut String, mut v: u32, width: usize) {
    let mut buf = [b'0'; 10];
    let mut i = buf.len();
    while v > 0 && i > 0 {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let start = (buf.len() - width.min(buf.len())).min(i);
    out.extend(buf[start..].iter().map(|&b| char::from(b)));
}

/// RFC 3339 UTC with nanoseconds (`%FT%T.%09luZ`).
pub fn rfc3339(wall_ns: i128) -> String {
    let mut out = String::with_capacity(30);
    push_rfc3339(&mut out, wall_ns);
    out
}

/// Appends [`rfc3339`] to `out`. Years 1970..=9999 are formatted here (no allocation); other
/// times through the `time` crate.
fn push_rfc3339(out: &mut String, wall_ns: i128) {
    const MAX_NS: i128 = 253_402_300_800 * 1_000_000_000; // 10000-01-01
    if !(0..MAX_NS).contains(&wall_ns) {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(wall_ns)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let _ = std::fmt::Write::write_fmt(
            out,
            format_args!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.nanosecond()
            ),
        );
        return;
    }
    let secs = (wall_ns / 1_000_000_000) as i64;
    let (year, month, day) = civil_from_days(secs / 86_400);
    push_digits(out, year as u32, 4);
    out.push('-');
    push_digits(out, month, 2);
    out.push('-');
    push_digits(out, day, 2);
    out.push('T');
    push_clock_time(out, wall_ns);
    out.push('Z');
}

/// Days since 1970-01-01 → (year, month, day) of the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Whether any byte of `w` is a control character, `"` or `\` (SWAR: the high bit of each
/// byte of the result marks one).
#[inline]
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below_space = w.wrapping_sub(ONES * 0x20);
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    ((below_space | zero(quote) | zero(backslash)) & !w & HIGHS) != 0
}

/// Appends `s` as a JSON string (quotes included), escaped as `serde_json` escapes it.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    // Plain text (the usual case) is copied eight bytes at a time.
    let mut clean = 0;
    while clean + 8 <= bytes.len() {
        let mut word = [0_u8; 8];
        word.copy_from_slice(&bytes[clean..clean + 8]);
        if needs_escape(u64::from_le_bytes(word)) {
            break;
        }
        clean += 8;
    }
    out.push_str(&s[..clean]);
    let mut start = clean;
    for (i, &b) in bytes.iter().enumerate().skip(clean) {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// A rule's output, ready to render: the template's segments, the distinct fields in
/// `output_fields` order (byte order of their names, `evt.time` always among them), and the
/// rule's constant JSON members (`priority` to the opening quote of `time`).
#[derive(Debug)]
pub struct Template {
    pub segs: Vec<Seg>,
    /// Per [`Seg`]: for a field, its index in `fields`.
    seg_fields: Vec<usize>,
    fields: Vec<OutField>,
    tail: String,
}

#[derive(Debug)]
struct OutField {
    field: Field,
    /// `"name":`, JSON-escaped.
    key: String,
}

impl Template {
    /// Prepares `segs` (from [`compile`]) for a rule's alerts.
    pub fn new(segs: Vec<Seg>, rule: &str, priority: super::Priority, tags: &[String]) -> Self {
        let mut names: Vec<(&str, &Field)> = segs
            .iter()
            .filter_map(|s| match s {
                Seg::Field(f, n) => Some((n.as_str(), f)),
                Seg::Lit(_) => None,
            })
            .collect();
        // Falco's `output_fields` always carry the event time (nanoseconds since the epoch).
        names.push(("evt.time", &Field::EvtTime));
        names.sort_by(|a, b| a.0.cmp(b.0));
        names.dedup_by(|a, b| a.0 == b.0);
        let fields: Vec<OutField> = names
            .iter()
            .map(|(name, field)| {
                let mut key = String::new();
                push_json_str(&mut key, name);
                key.push(':');
                OutField { field: (*field).clone(), key }
            })
            .collect();
        let seg_fields = segs
            .iter()
            .map(|s| match s {
                Seg::Field(_, n) => names.binary_search_by(|(k, _)| (*k).cmp(n)).unwrap_or(0),
                Seg::Lit(_) => 0,
            })
            .collect();
        let mut tail = String::from("\"priority\":");
        push_json_str(&mut tail, priority.name());
        tail.push_str(",\"rule\":");
        push_json_str(&mut tail, rule);
        tail.push_str(",\"source\":\"syscall\",\"tags\":[");
        // Sorted as Falco keeps them (a `std::set<std::string>`: byte order, no duplicates).
        let mut sorted: Vec<&str> = tags.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        for (i, tag) in sorted.iter().enumerate() {
            if i > 0 {
                tail.push(',');
            }
            push_json_str(&mut tail, tag);
        }
        tail.push_str("],\"time\":\"");
        Self { segs, seg_fields, fields, tail }
    }
}

/// Reusable buffers for rendering alerts (one set per evaluator).
#[derive(Debug, Default)]
pub struct Buffers {
    fields_json: String,
    /// Each field's text form, back to back; `ranges` says where.
    values: String,
    ranges: Vec<(usize, usize)>,
}

/// The alert for `rule` on the event in `ctx`: Falco's JSON (`hostname`, `output`,
/// `output_fields` with typed values and `null` when unknown, `priority`, `rule`, `source`,
/// `tags`, `time`, in that order) and the text form (`HH:MM:SS.ns: Priority output`, `<NA>`
/// for unknown values). Each field is read once; only the two returned strings are allocated.
pub fn alert(
    rule: &super::CompiledRule,
    ctx: &Ctx<'_>,
    scratch: &mut String,
    buf: &mut Buffers,
) -> (String, String) {
    use std::fmt::Write as _;
    let t = &rule.output;
    buf.fields_json.clear();
    buf.values.clear();
    buf.ranges.clear();
    for (i, f) in t.fields.iter().enumerate() {
        if i > 0 {
            buf.fields_json.push(',');
        }
        buf.fields_json.push_str(&f.key);
        let start = buf.values.len();
        match ctx.get(&f.field, scratch) {
            Val::Str(s) => {
                push_json_str(&mut buf.fields_json, s);
                buf.values.push_str(s);
            }
            Val::Int(v) => {
                let _ = write!(buf.fields_json, "{v}");
                if f.field == Field::EvtTime {
                    push_clock_time(&mut buf.values, ctx.event.wall_ns);
                } else {
                    let _ = write!(buf.values, "{v}");
                }
            }
            Val::Bool(b) => {
                let s = if b { "true" } else { "false" };
                buf.fields_json.push_str(s);
                buf.values.push_str(s);
            }
            Val::Missing => {
                buf.fields_json.push_str("null");
                buf.values.push_str("<NA>");
            }
        }
        buf.ranges.push((start, buf.values.len()));
    }
    let mut text = String::with_capacity(32 + t.segs.len() * 16 + buf.values.len());
    push_clock_time(&mut text, ctx.event.wall_ns);
    text.push_str(": ");
    text.push_str(rule.priority.name());
    text.push(' ');
    for (seg, &i) in t.segs.iter().zip(&t.seg_fields) {
        match seg {
            Seg::Lit(s) => text.push_str(s),
            Seg::Field(..) => {
                let (a, b) = buf.ranges[i];
                text.push_str(&buf.values[a..b]);
            }
        }
    }
    let mut json = String::with_capacity(
        64 + ctx.hostname.len() + text.len() * 2 + buf.fields_json.len() + t.tail.len(),
    );
    json.push_str("{\"hostname\":");
    push_json_str(&mut json, ctx.hostname);
    json.push_str(",\"output\":");
    push_json_str(&mut json, &text);
    json.push_str(",\"output_fields\":{");
    json.push_str(&buf.fields_json);
    json.push_str("},");
    json.push_str(&t.tail);
    push_rfc3339(&mut json, ctx.event.wall_ns);
    json.push_str("\"}");
    (json, text)
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
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let samples = [
            "a plain text longer than one word: /usr/bin/python3 -c print",
            "0123456789abcde\"after a quote in the second word",
            "01234567\u{1f}890123456789\\0123\u{7f}\u{80}éé 01234567",
            "plain",
            "q\"uote",
            "back\\slash",
            "tab\tnl\ncr\r",
            "\u{1}\u{1f}\u{8}\u{c}",
            "é ✓ \u{7f}",
            "",
        ];
        for s in samples {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).expect("json"), "{s:?}");
        }
    }

    #[test]
    fn fast_times_agree_with_the_time_crate() {
        let reference = |ns: i128| {
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(ns).expect("in range");
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
        };
        // Every day boundary and leap rule over four centuries, plus odd nanoseconds.
        let mut ns: i128 = 0;
        while ns < 253_402_300_799 * 1_000_000_000 {
            assert_eq!(rfc3339(ns), reference(ns), "{ns}");
            ns += 86_399_999_999_999 + 7_919;
        }
        assert_eq!(rfc3339(-1), reference(-1));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn times_have_nanoseconds() {
        let ns = 1_777_629_600_123_456_789_i128;
        assert_eq!(rfc3339(ns), "2026-05-01T10:00:00.123456789Z");
        assert_eq!(clock_time(ns), "10:00:00.123456789");
        assert_eq!(Priority::parse("INFO").map(Priority::name), Some("Informational"));
    }
}
