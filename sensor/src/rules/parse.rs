//! Falco rule files: a YAML list of `rule`, `macro`, `list` and `required_engine_version`
//! items. Several files load in order into one [`Definitions`]: a later item with the same name
//! replaces the earlier one, or changes it key by key with `override: {key: append|replace}`
//! (or the older `append: true`). Errors name FILE:LINE.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

use serde_yaml_ng::{Mapping, Value as Yaml};

use super::{Priority, condition};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ParseError {
    pub origin: Origin,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct ListDef {
    pub items: Vec<String>,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct MacroDef {
    pub condition: String,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    pub name: String,
    /// One field (values are a flat list) or several (values are tuples).
    pub fields: Vec<String>,
    pub single: bool,
    pub comps: Vec<String>,
    pub values: Vec<Yaml>,
}

#[derive(Debug, Clone)]
pub struct RuleDef {
    pub name: String,
    pub desc: String,
    pub condition: String,
    pub output: String,
    pub priority: Priority,
    pub tags: Vec<String>,
    pub enabled: bool,
    pub exceptions: Vec<Exception>,
    pub source: String,
    pub skip_if_unknown_filter: bool,
    pub origin: Origin,
}

/// Everything loaded so far, in definition order.
#[derive(Debug, Default, Clone)]
pub struct Definitions {
    pub lists: Vec<(String, ListDef)>,
    pub macros: Vec<(String, MacroDef)>,
    pub rules: Vec<RuleDef>,
    pub required_engine_version: Option<String>,
}

const RULE_KEYS: &[&str] = &[
    "rule",
    "desc",
    "condition",
    "output",
    "priority",
    "tags",
    "enabled",
    "exceptions",
    "source",
    "skip-if-unknown-filter",
    "warn_evttypes",
    "append",
    "override",
    "capture",
    "capture_duration",
];
const APPENDABLE: &[&str] = &["condition", "output", "desc", "tags", "exceptions"];
const REPLACEABLE: &[&str] = &[
    "condition",
    "output",
    "desc",
    "priority",
    "tags",
    "exceptions",
    "enabled",
    "warn_evttypes",
    "skip-if-unknown-filter",
];

/// The line of each top-level `- ` item (column 0), in order.
fn item_lines(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("- ") || *l == "-")
        .map(|(i, _)| i + 1)
        .collect()
}

impl Definitions {
    /// Loads one file's text on top of what is defined.
    pub fn load(&mut self, file: &Path, text: &str) -> Result<(), ParseError> {
        let at = |line| Origin { file: file.to_owned(), line };
        if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            return Ok(());
        }
        let doc: Yaml = serde_yaml_ng::from_str(text).map_err(|e| ParseError {
            origin: at(e.location().map_or(1, |l| l.line())),
            message: e.to_string(),
        })?;
        let items = match doc {
            Yaml::Sequence(items) => items,
            Yaml::Null => return Ok(()),
            _ => {
                return Err(ParseError {
                    origin: at(1),
                    message: "a rules file is a YAML list of rule, macro and list items".into(),
                });
            }
        };
        // Block-style files put each item at column 0: that gives every item its line.
        let lines = item_lines(text);
        let lines_match = lines.len() == items.len();
        for (i, item) in items.into_iter().enumerate() {
            let origin = at(if lines_match { lines[i] } else { 1 });
            let Yaml::Mapping(map) = item else {
                return Err(ParseError { origin, message: "item is not a mapping".into() });
            };
            let mut item = Item { map, origin };
            if item.has("rule") {
                self.rule(&mut item)?;
            } else if item.has("macro") {
                self.macro_(&mut item)?;
            } else if item.has("list") {
                self.list(&mut item)?;
            } else if item.has("required_engine_version") {
                self.required_engine_version =
                    Some(item.string("required_engine_version")?.unwrap_or_default());
            } else if item.has("required_plugin_versions") {
                // No plugins: nothing to check.
            } else {
                return Err(item.error(
                    "unknown item: expected `rule`, `macro`, `list` or `required_engine_version`",
                ));
            }
        }
        Ok(())
    }

    fn list(&mut self, item: &mut Item) -> Result<(), ParseError> {
        let name = item.string("list")?.unwrap_or_default();
        let items = item.strings("items")?;
        let mode = item.modes(&["items"], &["items"])?;
        let existing = self.lists.iter_mut().find(|(n, _)| *n == name);
        match (existing, mode.get("items").copied()) {
            (Some((_, def)), Some(Mode::Append)) => def.items.extend(items.unwrap_or_default()),
            (None, Some(_)) => {
                return Err(item.error(format!("list `{name}` to override is not defined earlier")));
            }
            (existing, _) => {
                let items =
                    items.ok_or_else(|| item.error(format!("list `{name}`: missing `items`")))?;
                let def = ListDef { items, origin: item.origin.clone() };
                match existing {
                    Some((_, old)) => *old = def,
                    None => self.lists.push((name, def)),
                }
            }
        }
        Ok(())
    }

    fn macro_(&mut self, item: &mut Item) -> Result<(), ParseError> {
        let name = item.string("macro")?.unwrap_or_default();
        let cond = item.string("condition")?;
        let mode = item.modes(&["condition"], &["condition"])?;
        if let Some(c) = &cond
            && mode.get("condition") != Some(&Mode::Append)
        {
            condition::parse(c)
                .map_err(|e| item.error(format!("macro `{name}`: condition: {e}")))?;
        }
        let existing = self.macros.iter_mut().find(|(n, _)| *n == name);
        match (existing, mode.get("condition").copied()) {
            (Some((_, def)), Some(Mode::Append)) => {
                def.condition = format!("{} {}", def.condition, cond.unwrap_or_default());
                condition::parse(&def.condition)
                    .map_err(|e| item.error(format!("macro `{name}` after append: {e}")))?;
            }
            (None, Some(_)) => {
                return Err(
                    item.error(format!("macro `{name}` to override is not defined earlier"))
                );
            }
            (existing, _) => {
                let condition =
                    cond.ok_or_else(|| item.error(format!("macro `{name}`: missing `condition`")))?;
                let def = MacroDef { condition, origin: item.origin.clone() };
                match existing {
                    Some((_, old)) => *old = def,
                    None => self.macros.push((name, def)),
                }
            }
        }
        Ok(())
    }

    fn rule(&mut self, item: &mut Item) -> Result<(), ParseError> {
        let name = item.string("rule")?.unwrap_or_default();
        for key in item.map.keys() {
            let key = key.as_str().unwrap_or("");
            if !RULE_KEYS.contains(&key) {
                return Err(item.error(format!("rule `{name}`: unknown key `{key}`")));
            }
        }
        let modes = item.modes(APPENDABLE, REPLACEABLE)?;
        let condition = item.string("condition")?;
        // An appended fragment (`and ...`) is checked once joined.
        if let Some(c) = &condition
            && modes.get("condition") != Some(&Mode::Append)
        {
            condition::parse(c)
                .map_err(|e| item.error(format!("rule `{name}`: condition: {e}")))?;
        }
        let output = item.string("output")?;
        let desc = item.string("desc")?;
        let priority = match item.string("priority")? {
            Some(p) => Some(
                Priority::parse(&p)
                    .ok_or_else(|| item.error(format!("rule `{name}`: unknown priority `{p}`")))?,
            ),
            None => None,
        };
        let tags = item.strings("tags")?;
        let enabled = item.bool("enabled")?;
        let exceptions = item.exceptions(&name)?;
        let source = item.string("source")?;
        let skip = item.bool("skip-if-unknown-filter")?;
        let existing = self.rules.iter().position(|r| r.name == name);
        let changes = condition.is_some()
            || output.is_some()
            || desc.is_some()
            || priority.is_some()
            || tags.is_some()
            || exceptions.is_some();

        let Some(index) = existing.filter(|_| !modes.is_empty() || !changes) else {
            if !modes.is_empty() {
                return Err(item.error(format!("rule `{name}` to override is not defined earlier")));
            }
            if existing.is_none() && !changes && enabled.is_some() {
                return Err(item
                    .error(format!("rule `{name}` to enable or disable is not defined earlier")));
            }
            // A new rule, or a full redefinition (which keeps the original position).
            let missing = |key| item.error(format!("rule `{name}`: missing `{key}`"));
            let def = RuleDef {
                name: name.clone(),
                desc: desc.ok_or_else(|| missing("desc"))?,
                condition: condition.ok_or_else(|| missing("condition"))?,
                output: output.ok_or_else(|| missing("output"))?,
                priority: priority.ok_or_else(|| missing("priority"))?,
                tags: tags.unwrap_or_default(),
                enabled: enabled.unwrap_or(true),
                exceptions: exceptions.unwrap_or_default(),
                source: source.unwrap_or_else(|| "syscall".into()),
                skip_if_unknown_filter: skip.unwrap_or(false),
                origin: item.origin.clone(),
            };
            match existing {
                Some(i) => self.rules[i] = def,
                None => self.rules.push(def),
            }
            return Ok(());
        };
        let rule = &mut self.rules[index];
        let mode = |key: &str| modes.get(key).copied().unwrap_or(Mode::Replace);
        if let Some(c) = condition {
            rule.condition = match mode("condition") {
                Mode::Append => format!("{} {c}", rule.condition),
                Mode::Replace => c,
            };
            condition::parse(&rule.condition)
                .map_err(|e| item.error(format!("rule `{name}` after append: {e}")))?;
        }
        if let Some(o) = output {
            rule.output = match mode("output") {
                Mode::Append => format!("{} {o}", rule.output),
                Mode::Replace => o,
            };
        }
        if let Some(d) = desc {
            rule.desc = match mode("desc") {
                Mode::Append => format!("{} {d}", rule.desc),
                Mode::Replace => d,
            };
        }
        if let Some(p) = priority {
            rule.priority = p;
        }
        if let Some(t) = tags {
            match mode("tags") {
                Mode::Append => rule.tags.extend(t),
                Mode::Replace => rule.tags = t,
            }
        }
        if let Some(e) = enabled {
            rule.enabled = e;
        }
        if let Some(s) = skip {
            rule.skip_if_unknown_filter = s;
        }
        if let Some(new) = exceptions {
            match mode("exceptions") {
                Mode::Replace => rule.exceptions = new,
                Mode::Append => {
                    for exc in new {
                        match rule.exceptions.iter_mut().find(|e| e.name == exc.name) {
                            Some(old) => old.values.extend(exc.values),
                            None => rule.exceptions.push(exc),
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Append,
    Replace,
}

struct Item {
    map: Mapping,
    origin: Origin,
}

impl Item {
    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError { origin: self.origin.clone(), message: message.into() }
    }

    fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    fn string(&self, key: &str) -> Result<Option<String>, ParseError> {
        match self.map.get(key) {
            None | Some(Yaml::Null) => Ok(None),
            Some(Yaml::String(s)) => Ok(Some(s.clone())),
            Some(Yaml::Number(n)) => Ok(Some(n.to_string())),
            Some(Yaml::Bool(b)) => Ok(Some(b.to_string())),
            Some(_) => Err(self.error(format!("`{key}` must be a string"))),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ParseError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Yaml::Null) => Ok(Some(Vec::new())),
            Some(Yaml::Sequence(items)) => items
                .iter()
                .map(|v| {
                    scalar(v).ok_or_else(|| self.error(format!("`{key}` items must be strings")))
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(_) => Err(self.error(format!("`{key}` must be a list"))),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ParseError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Yaml::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.error(format!("`{key}` must be true or false"))),
        }
    }

    /// `override:` (or the deprecated `append: true`): the mode per key.
    fn modes(
        &self,
        append: &[&str],
        replace: &[&str],
    ) -> Result<HashMap<String, Mode>, ParseError> {
        let mut modes = HashMap::new();
        if self.bool("append")? == Some(true) {
            for key in append {
                if self.has(key) {
                    modes.insert((*key).to_owned(), Mode::Append);
                }
            }
            if modes.is_empty() {
                // `append: true` with nothing to append still refers to an earlier item.
                modes.insert(String::new(), Mode::Append);
            }
        }
        match self.map.get("override") {
            None => {}
            Some(Yaml::Mapping(m)) => {
                for (k, v) in m {
                    let key = k.as_str().unwrap_or("").to_owned();
                    let mode = match v.as_str() {
                        Some("append") if append.contains(&key.as_str()) => Mode::Append,
                        Some("replace") if replace.contains(&key.as_str()) => Mode::Replace,
                        Some(other) => {
                            return Err(self.error(format!(
                                "override of `{key}` with `{other}` is not allowed"
                            )));
                        }
                        None => {
                            return Err(self.error(format!(
                                "override of `{key}`: expected append or replace"
                            )));
                        }
                    };
                    if !self.has(&key) {
                        return Err(self.error(format!(
                            "override names `{key}`, which the item does not set"
                        )));
                    }
                    if modes.insert(key.clone(), mode).is_some() {
                        return Err(self.error(format!("`{key}` is both appended and replaced")));
                    }
                }
            }
            Some(_) => {
                return Err(self.error("`override` must be a mapping of key: append|replace"));
            }
        }
        Ok(modes)
    }

    fn exceptions(&self, rule: &str) -> Result<Option<Vec<Exception>>, ParseError> {
        let Some(value) = self.map.get("exceptions") else { return Ok(None) };
        let Yaml::Sequence(list) = value else {
            return Err(self.error(format!("rule `{rule}`: `exceptions` must be a list")));
        };
        let mut out = Vec::new();
        for exc in list {
            let Yaml::Mapping(m) = exc else {
                return Err(self.error(format!("rule `{rule}`: an exception must be a mapping")));
            };
            let name = m
                .get("name")
                .and_then(scalar)
                .ok_or_else(|| self.error(format!("rule `{rule}`: exception without a `name`")))?;
            let (fields, single) = match m.get("fields") {
                Some(Yaml::String(f)) => (vec![f.clone()], true),
                Some(Yaml::Sequence(fs)) => (fs.iter().filter_map(scalar).collect(), false),
                None => (Vec::new(), false),
                Some(_) => {
                    return Err(
                        self.error(format!("rule `{rule}`: exception `{name}`: bad `fields`"))
                    );
                }
            };
            let comps = match m.get("comps") {
                Some(Yaml::String(c)) => vec![c.clone()],
                Some(Yaml::Sequence(cs)) => cs.iter().filter_map(scalar).collect(),
                _ if single => vec!["in".to_owned()],
                _ => vec!["=".to_owned(); fields.len()],
            };
            if !single && comps.len() != fields.len() {
                return Err(self.error(format!(
                    "rule `{rule}`: exception `{name}`: {} fields but {} comps",
                    fields.len(),
                    comps.len()
                )));
            }
            let values = match m.get("values") {
                Some(Yaml::Sequence(v)) => v.clone(),
                None | Some(Yaml::Null) => Vec::new(),
                Some(_) => {
                    return Err(self.error(format!(
                        "rule `{rule}`: exception `{name}`: `values` must be a list"
                    )));
                }
            };
            out.push(Exception { name, fields, single, comps, values });
        }
        Ok(Some(out))
    }
}

fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The exception values as condition text items (a nested list becomes `(a, b)`).
pub fn exception_value(v: &Yaml) -> Option<condition::Value> {
    match v {
        Yaml::Sequence(items) => Some(condition::Value::List(
            items
                .iter()
                .filter_map(scalar)
                .map(|text| condition::Item { text, quoted: false })
                .collect(),
        )),
        other => scalar(other).map(condition::Value::One),
    }
}
