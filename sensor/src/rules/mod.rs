//! Falco-compatible rules over our host events: rule files ([`parse`]), the condition
//! language ([`condition`]), fields ([`fields`]), compiled conditions indexed by event type
//! ([`compile`]), alerts in Falco's JSON ([`output`]), hot reload ([`runtime`]) and the
//! interest the loaded rules feed to the kernel filter ([`Interest`]).

pub mod bench;
pub mod check;
pub mod compile;
pub mod condition;
pub mod dns;
pub mod fields;
pub mod output;
pub mod parse;
pub mod procfs;
pub mod runtime;
pub mod syscalls;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use self::{
    compile::{Defs, Node, Skip},
    condition::{Expr, Op},
    fields::{CLASSES, Class, Ctx, Dir, Users},
    parse::{Definitions, Origin, ParseError},
};
use crate::host::{process::ProcessTable, record::Enriched};

/// Falco's priorities, most severe first (the index is Falco's numeric value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Priority {
    Emergency = 0,
    Alert = 1,
    Critical = 2,
    Error = 3,
    Warning = 4,
    Notice = 5,
    Informational = 6,
    Debug = 7,
}

impl TryFrom<String> for Priority {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("unknown priority `{s}`"))
    }
}

impl Priority {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "emergency" => Self::Emergency,
            "alert" => Self::Alert,
            "critical" => Self::Critical,
            "error" => Self::Error,
            "warning" => Self::Warning,
            "notice" => Self::Notice,
            "informational" | "info" => Self::Informational,
            "debug" => Self::Debug,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Emergency => "Emergency",
            Self::Alert => "Alert",
            Self::Critical => "Critical",
            Self::Error => "Error",
            Self::Warning => "Warning",
            Self::Notice => "Notice",
            Self::Informational => "Informational",
            Self::Debug => "Debug",
        }
    }
}

#[derive(Debug)]
pub struct CompiledRule {
    pub name: String,
    pub priority: Priority,
    pub tags: Vec<String>,
    pub enabled: bool,
    pub condition: Node,
    /// The output template, prepared for alerts.
    pub output: output::Template,
    /// Bit per [`Class`] the condition can match.
    pub classes: fields::ClassMask,
    pub origin: Origin,
    /// `falcosecurity_falco_rules_matches_total` labels.
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub origin: Origin,
    pub reason: String,
    /// `skip-if-unknown-filter: true`: skipped without a warning.
    pub quiet: bool,
    /// Every construct that keeps the rule out (`field X`, `event type Y`, ...), not only the
    /// first ([`blockers`]).
    pub blockers: Vec<String>,
}

/// Which cgroups the rules need file and socket events from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cgroups {
    #[default]
    None,
    Containers,
    All,
}

/// What the loaded, enabled rules need the kernel to send: file opens under these path
/// prefixes, and file/socket events from these cgroups. Execs are always sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interest {
    pub prefixes: Vec<String>,
    pub cgroups: Cgroups,
    /// Syscall numbers of rule-named syscalls ([`syscalls::SPECS`]) the rules need, sorted;
    /// with [`sensor_common::host::RULE_FAILED_OPENS`] when a rule can match a failed open.
    pub syscalls: Vec<u32>,
}

#[derive(Debug)]
pub struct RuleSet {
    /// Every rule that compiled, enabled or not, in load order.
    pub rules: Vec<CompiledRule>,
    pub skipped: Vec<Skipped>,
    /// Enabled rules at or above the minimum priority, per event class, in load order.
    by_class: [Box<[u32]>; CLASSES],
    pub interest: Interest,
    /// Rules whose file condition could not be reduced to path prefixes.
    pub unscoped: Vec<String>,
    pub files: Vec<PathBuf>,
}

impl Default for RuleSet {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            skipped: Vec::new(),
            by_class: std::array::from_fn(|_| Box::default()),
            interest: Interest::default(),
            unscoped: Vec::new(),
            files: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Rule files of `paths` (files as given; directories: their `*.yaml`/`*.yml`, sorted).
pub fn rule_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, RulesError> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|source| RulesError::Read { path: path.clone(), source })?;
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Reads and compiles the rule files in order.
pub fn load(paths: &[PathBuf], min_priority: Priority) -> Result<RuleSet, RulesError> {
    let files = rule_files(paths)?;
    let mut defs = Definitions::default();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .map_err(|source| RulesError::Read { path: file.clone(), source })?;
        defs.load(file, &text)?;
    }
    let mut set = RuleSet::build(&defs, min_priority);
    set.files = files;
    Ok(set)
}

/// Falco's label-name rules for `tag_<tag>`.
fn label_name(tag: &str) -> String {
    tag.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

impl RuleSet {
    /// Compiles loaded definitions; rules that cannot compile are listed in `skipped`.
    pub fn build(defs: &Definitions, min_priority: Priority) -> Self {
        let lists = flatten_lists(defs);
        let macros: HashMap<String, Expr> = defs
            .macros
            .iter()
            .filter_map(|(name, m)| Some((name.clone(), condition::parse(&m.condition).ok()?)))
            .collect();
        let compile_defs = Defs { lists: &lists, macros: &macros };
        let mut set = Self::default();
        let mut by_class: [Vec<u32>; CLASSES] = std::array::from_fn(|_| Vec::new());
        for def in &defs.rules {
            match compile_rule(def, &compile_defs) {
                Ok(rule) => {
                    if rule.enabled && rule.priority <= min_priority {
                        let index = set.rules.len() as u32;
                        for class in Class::ALL {
                            if rule.classes & class.bit() != 0 {
                                by_class[class as usize].push(index);
                            }
                        }
                        set.add_interest(&rule);
                    }
                    set.rules.push(rule);
                }
                Err(reason) => set.skipped.push(Skipped {
                    name: def.name.clone(),
                    origin: def.origin.clone(),
                    blockers: blockers(def, &compile_defs, &reason),
                    reason: reason.to_string(),
                    quiet: def.skip_if_unknown_filter,
                }),
            }
        }
        set.by_class = by_class.map(Vec::into_boxed_slice);
        set.interest.prefixes.sort();
        set.interest.prefixes.dedup();
        set.interest.syscalls.sort_unstable();
        set
    }

    fn add_interest(&mut self, rule: &CompiledRule) {
        const KERNEL_FILTERED: fields::ClassMask = Class::Open.bit()
            | Class::Unlink.bit()
            | Class::Rename.bit()
            | Class::Bind.bit()
            | Class::Connect.bit();
        // A rule that names no event type (all classes) does not turn on every syscall.
        let syscall_classes = if rule.classes == fields::ALL_CLASSES {
            0
        } else {
            rule.classes & !(KERNEL_FILTERED | Class::Exec.bit() | Class::Exit.bit())
        };
        for spec in syscalls::SPECS {
            if syscall_classes & spec.class.bit() != 0 && !self.interest.syscalls.contains(&spec.nr)
            {
                self.interest.syscalls.push(spec.nr);
            }
        }
        if rule.classes & (KERNEL_FILTERED | syscall_classes) == 0 {
            return;
        }
        let cgroups = if compile::needs_container(&rule.condition) {
            Cgroups::Containers
        } else {
            Cgroups::All
        };
        self.interest.cgroups = self.interest.cgroups.max(cgroups);
        if rule.classes & Class::Open.bit() != 0 {
            // A failed open matches such a rule in Falco unless it requires success.
            if !compile::excludes_failed_opens(&rule.condition)
                && !self.interest.syscalls.contains(&sensor_common::host::RULE_FAILED_OPENS)
            {
                self.interest.syscalls.push(sensor_common::host::RULE_FAILED_OPENS);
            }
            match compile::path_prefixes(&rule.condition) {
                Some(prefixes) if !prefixes.is_empty() => {
                    self.interest.prefixes.extend(prefixes.into_iter().map(|p| {
                        let p = if p.is_empty() { "/".to_owned() } else { p };
                        let mut cut = p.len().min(sensor_common::host::PATH_KEY_LEN - 1);
                        while !p.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        p[..cut].to_owned()
                    }));
                }
                _ => {
                    self.interest.prefixes.push("/".to_owned());
                    self.unscoped.push(rule.name.clone());
                }
            }
        }
    }

    /// Rules that would run (enabled, at or above the minimum priority).
    pub fn active(&self) -> usize {
        let mut seen = vec![false; self.rules.len()];
        for list in &self.by_class {
            for &i in list.iter() {
                seen[i as usize] = true;
            }
        }
        seen.into_iter().filter(|s| *s).count()
    }

    /// The first rule (in load order) that matches, as Falco's `rule_matching: first`.
    pub fn first_match(&self, ctx: &Ctx<'_>, scratch: &mut String) -> Option<&CompiledRule> {
        self.by_class[ctx.class as usize]
            .iter()
            .map(|&i| &self.rules[i as usize])
            .find(|rule| compile::eval(&rule.condition, ctx, scratch))
    }
}

/// Every list with the lists it names replaced by their items, wherever in the files those
/// are defined (Falco pastes list references after loading all files). A list that names
/// itself, directly or through others, keeps the name as an item.
fn flatten_lists(defs: &Definitions) -> HashMap<String, Vec<String>> {
    let raw: HashMap<&str, &Vec<String>> =
        defs.lists.iter().map(|(name, def)| (name.as_str(), &def.items)).collect();
    fn expand<'a>(
        name: &'a str,
        raw: &HashMap<&'a str, &'a Vec<String>>,
        stack: &mut Vec<&'a str>,
        out: &mut Vec<String>,
    ) {
        stack.push(name);
        for item in raw.get(name).map(|v| v.as_slice()).unwrap_or_default() {
            if raw.contains_key(item.as_str()) && !stack.contains(&item.as_str()) {
                expand(item, raw, stack, out);
            } else {
                out.push(item.clone());
            }
        }
        stack.pop();
    }
    defs.lists
        .iter()
        .map(|(name, _)| {
            let mut items = Vec::new();
            expand(name, &raw, &mut Vec::new(), &mut items);
            (name.clone(), items)
        })
        .collect()
}

fn compile_rule(def: &parse::RuleDef, defs: &Defs<'_>) -> Result<CompiledRule, Skip> {
    if def.source != "syscall" {
        return Err(Skip::Source(def.source.clone()));
    }
    let parsed =
        condition::parse(&def.condition).map_err(|e| Skip::BadValue(format!("condition: {e}")))?;
    let with_exceptions = add_exceptions(parsed, &def.exceptions)?;
    let expanded = defs.expand(&with_exceptions, 0)?;
    let node = compile::compile(&expanded, defs)?;
    let classes = compile::classes(&node);
    if classes == 0 {
        let mut names = Vec::new();
        compile::unknown_types(&node, &mut names);
        names.dedup();
        return Err(Skip::NoEventType(if names.is_empty() {
            "contradictory types".into()
        } else {
            names.join(", ")
        }));
    }
    let segs =
        output::compile(&def.output).map_err(|f| Skip::UnknownField(format!("{f} (in output)")))?;
    let mut labels = vec![
        ("rule_name".to_owned(), def.name.clone()),
        ("priority".to_owned(), (def.priority as u8).to_string()),
        ("source".to_owned(), def.source.clone()),
    ];
    for tag in &def.tags {
        labels.push((format!("tag_{}", label_name(tag)), "true".to_owned()));
    }
    Ok(CompiledRule {
        name: def.name.clone(),
        priority: def.priority,
        tags: def.tags.clone(),
        enabled: def.enabled,
        condition: node,
        output: output::Template::new(segs, &def.name, def.priority, &def.tags),
        classes,
        origin: def.origin.clone(),
        labels,
    })
}

/// Every construct of a skipped rule we do not support: unknown fields (an index such as
/// `[/proc*]` dropped) in its condition, exceptions and output, event types we do not observe,
/// undefined macros; `reason` (why compilation stopped) when none of those is found.
fn blockers(def: &parse::RuleDef, defs: &Defs<'_>, reason: &Skip) -> Vec<String> {
    fn walk(expr: &Expr, defs: &Defs<'_>, depth: usize, out: &mut Vec<String>) {
        match expr {
            Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| walk(e, defs, depth, out)),
            Expr::Not(e) => walk(e, defs, depth, out),
            Expr::Macro(name) => match defs.macros.get(name) {
                Some(body) if depth < 64 => walk(body, defs, depth + 1, out),
                Some(_) => {}
                None => out.push(format!("macro `{name}`")),
            },
            Expr::Check { field, op, value } => {
                if let Op::Unsupported(word) = op {
                    out.push(format!("operator `{word}`"));
                }
                for name in std::iter::once(field.as_str()).chain(match value {
                    condition::Value::Field(rhs) => Some(rhs.as_str()),
                    _ => None,
                }) {
                    if let Err(skip) = compile::field_ref(name) {
                        out.push(match skip {
                            Skip::UnknownField(f) => {
                                format!("field `{}`", f.split('[').next().unwrap_or(&f))
                            }
                            other => other.to_string(),
                        });
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(parsed) = condition::parse(&def.condition) {
        walk(&parsed, defs, 0, &mut out);
    }
    for exc in &def.exceptions {
        for field in &exc.fields {
            if compile::field_ref(field).is_err() {
                out.push(format!("field `{}`", field.split('[').next().unwrap_or(field)));
            }
        }
    }
    if let Err(f) = output::compile(&def.output) {
        out.push(format!("field `{}` (output)", f.split('[').next().unwrap_or(&f)));
    }
    if let Skip::NoEventType(names) = reason {
        out.extend(names.split(", ").map(|t| format!("event type `{t}`")));
    }
    if out.is_empty() {
        out.push(reason.to_string());
    }
    out.sort();
    out.dedup();
    out
}

/// `cond and not (exception1 or exception2 ...)`, each value tuple one alternative.
fn add_exceptions(cond: Expr, exceptions: &[parse::Exception]) -> Result<Expr, Skip> {
    let mut alternatives = Vec::new();
    for exc in exceptions {
        let op_of = |comp: &str| -> Result<Op, Skip> {
            let parsed = condition::parse(&format!("x.y {comp} z"))
                .or_else(|_| condition::parse(&format!("x.y {comp} (z)")))
                .map_err(|_| {
                    Skip::BadValue(format!("exception `{}`: bad comp `{comp}`", exc.name))
                })?;
            match parsed {
                Expr::Check { op, .. } => Ok(op),
                _ => Err(Skip::BadValue(format!("exception `{}`: bad comp `{comp}`", exc.name))),
            }
        };
        if exc.single {
            if exc.values.is_empty() {
                continue;
            }
            let op = op_of(exc.comps.first().map_or("in", String::as_str))?;
            let items = exc
                .values
                .iter()
                .filter_map(|v| match parse::exception_value(v) {
                    Some(condition::Value::One(text)) => {
                        Some(vec![condition::Item { text, quoted: false }])
                    }
                    Some(condition::Value::List(items)) => Some(items),
                    _ => None,
                })
                .flatten()
                .collect();
            let value = if op.takes_list() {
                condition::Value::List(items)
            } else {
                match items.into_iter().next() {
                    Some(i) => condition::Value::One(i.text),
                    None => continue,
                }
            };
            alternatives.push(Expr::Check { field: exc.fields[0].clone(), op, value });
            continue;
        }
        for tuple in &exc.values {
            let serde_yaml_ng::Value::Sequence(values) = tuple else {
                return Err(Skip::BadValue(format!(
                    "exception `{}`: each value must be a list of {} items",
                    exc.name,
                    exc.fields.len()
                )));
            };
            if values.len() != exc.fields.len() {
                return Err(Skip::BadValue(format!(
                    "exception `{}`: {} values for {} fields",
                    exc.name,
                    values.len(),
                    exc.fields.len()
                )));
            }
            let mut checks = Vec::new();
            for ((field, comp), value) in exc.fields.iter().zip(&exc.comps).zip(values) {
                let op = op_of(comp)?;
                let value = match (parse::exception_value(value), op.takes_list()) {
                    (Some(condition::Value::One(text)), true) => {
                        condition::Value::List(vec![condition::Item { text, quoted: false }])
                    }
                    (Some(v), _) => v,
                    (None, _) => {
                        return Err(Skip::BadValue(format!("exception `{}`: bad value", exc.name)));
                    }
                };
                checks.push(Expr::Check { field: field.clone(), op, value });
            }
            alternatives.push(Expr::And(checks));
        }
    }
    if alternatives.is_empty() {
        return Ok(cond);
    }
    Ok(Expr::And(vec![cond, Expr::Not(Box::new(Expr::Or(alternatives)))]))
}

pub struct Match<'r> {
    pub rule: &'r CompiledRule,
    /// Falco's JSON alert.
    pub json: String,
    /// The text form: `HH:MM:SS.ns: Priority output`.
    pub text: String,
}

/// Per-reader evaluation state: scratch space and the user name cache.
pub struct Evaluator {
    scratch: String,
    buffers: output::Buffers,
    pub users: Users,
    pub hostname: String,
    /// Events seen so far (Falco's `evt.num` of the next one is this + 1).
    events: u64,
}

impl Evaluator {
    pub fn new(hostname: String) -> Self {
        Self::with_users(hostname, Users::default())
    }

    pub fn with_users(hostname: String, users: Users) -> Self {
        Self {
            scratch: String::with_capacity(256),
            buffers: output::Buffers::default(),
            users,
            hostname,
            events: 0,
        }
    }

    /// The first matching rule for `event`, with its Falco JSON alert and the text form.
    pub fn evaluate<'r>(
        &mut self,
        set: &'r RuleSet,
        event: &Enriched,
        processes: &ProcessTable,
    ) -> Option<Match<'r>> {
        let class = Class::of(event)?;
        self.events += 1;
        if set.by_class[class as usize].is_empty() {
            return None;
        }
        self.users.prepare(event.header.uid);
        // A rule-named syscall is Falco's enter event, then its exit event.
        let dirs: &[Dir] = if class.is_syscall() { &[Dir::Enter, Dir::Exit] } else { &[Dir::Exit] };
        let (rule, ctx) = dirs.iter().find_map(|&dir| {
            let ctx = Ctx {
                event,
                class,
                processes,
                users: &self.users,
                hostname: &self.hostname,
                num: self.events,
                dir,
            };
            set.first_match(&ctx, &mut self.scratch).map(|rule| (rule, ctx))
        })?;
        let (json, text) = output::alert(rule, &ctx, &mut self.scratch, &mut self.buffers);
        Some(Match { rule, json, text })
    }

    /// Whether any rule matches (the benchmark's path: no alert is built).
    pub fn matches(&mut self, set: &RuleSet, event: &Enriched, processes: &ProcessTable) -> bool {
        let Some(class) = Class::of(event) else { return false };
        self.events += 1;
        let dirs: &[Dir] = if class.is_syscall() { &[Dir::Enter, Dir::Exit] } else { &[Dir::Exit] };
        dirs.iter().any(|&dir| {
            let ctx = Ctx {
                event,
                class,
                processes,
                users: &self.users,
                hostname: &self.hostname,
                num: self.events,
                dir,
            };
            set.first_match(&ctx, &mut self.scratch).is_some()
        })
    }
}

/// Loads text as if it were one file (tests and the benchmark).
pub fn from_text(file: &Path, text: &str, min: Priority) -> Result<RuleSet, ParseError> {
    let mut defs = Definitions::default();
    defs.load(file, text)?;
    Ok(RuleSet::build(&defs, min))
}

#[cfg(test)]
mod tests;
