//! Output channels: every event line (Hubble flow records, host events, Falco alerts) goes to
//! each configured output — stdout, a rotated file, syslog (RFC 5424) or an HTTPS webhook.
//!
//! The interface is one JSON document and its [`EventKind`] ([`OutputLine`]). Producers send
//! lines into one channel; [`Outputs::run`] fans each line out to every output whose filter
//! accepts it. Each output owns a bounded queue and a task: when a queue is full the line is
//! dropped for that output only and counted, so a slow output never blocks the event path.
//! Every line offered to an output ends up in exactly one of `sensor_output_sent_total`,
//! `sensor_output_dropped_total` or `sensor_output_errors_total`.

mod file;
mod syslog;
mod webhook;

use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::output::JsonLines;

pub use syslog::SyslogAddress;
pub use webhook::WebhookUrl;

/// What an event line is: a Hubble flow record, a host event, or a Falco alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Flow,
    Host,
    Alert,
}

impl EventKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Flow => "flow",
            Self::Host => "host",
            Self::Alert => "alert",
        }
    }
}

/// One event: a single line (a JSON document, or a Falco text alert) with its kind and
/// priority. Built only through the constructors, which make the line safe for every
/// line-oriented output (see [`escape_line`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    pub kind: EventKind,
    /// The line, without its newline. Named for its usual content; a text alert is not JSON.
    pub json: String,
    /// The syslog severity of the event, and what `min_priority` filters on.
    pub priority: Priority,
}

impl OutputLine {
    /// A JSON document; its priority is read from it (see [`Self::priority_of`]).
    pub fn new(kind: EventKind, json: String) -> Self {
        let priority = Self::priority_of(kind, &json);
        Self { kind, json: escape_line(json, LineFormat::Json), priority }
    }

    /// A line whose priority the producer knows (an alert's rule priority, a host record's
    /// action); `format` says whether it is JSON or text.
    pub fn with_priority(
        kind: EventKind,
        line: String,
        format: LineFormat,
        priority: Priority,
    ) -> Self {
        Self { kind, json: escape_line(line, format), priority }
    }

    /// The event's priority read from its JSON: the Falco `priority` of an alert (`Warning`
    /// when absent or unknown); `Warning` for a dropped flow, and for a host event that was
    /// blocked, killed or would have been blocked; `Notice` for an audited one;
    /// `Informational` otherwise.
    pub fn priority_of(kind: EventKind, json: &str) -> Priority {
        match kind {
            EventKind::Alert => {
                #[derive(Deserialize)]
                struct Alert<'a> {
                    #[serde(borrow)]
                    priority: Option<std::borrow::Cow<'a, str>>,
                }
                serde_json::from_str::<Alert<'_>>(json)
                    .ok()
                    .and_then(|a| a.priority)
                    .and_then(|p| Priority::parse(&p))
                    .unwrap_or(Priority::Warning)
            }
            EventKind::Flow if json.contains(r#""verdict":"DROPPED""#) => Priority::Warning,
            // serde_json escapes quotes inside values: these cannot come from a field.
            EventKind::Host => ["blocked", "killed", "would_block", "audit"]
                .into_iter()
                .find(|a| json.contains(&format!(r#""action":"{a}""#)))
                .map_or(Priority::Informational, Priority::of_host_action),
            EventKind::Flow => Priority::Informational,
        }
    }

    /// The event's priority (syslog severity).
    pub const fn priority(&self) -> Priority {
        self.priority
    }
}

/// What a line holds, for [`escape_line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    Json,
    /// Falco's text alert (`rules_output: text`).
    Text,
}

/// Makes `line` one line that no field can split or use to drive a terminal: control
/// characters (C0 including `\n`, `\r` and ESC, DEL, C1) and the Unicode line and
/// paragraph separators U+2028/U+2029 are escaped.
///
/// - JSON stays JSON, with the same decoded values: serde_json already escapes C0; DEL, C1
///   and U+2028/9 become `\u007f`, `\u0085`, `\u2028` (they can only occur inside strings).
/// - Text: `\n`, `\r`, `\t` as those two-character escapes, other C0 and DEL as `\xHH`, C1
///   and U+2028/9 as `\uHHHH` (Falco 0.44 escapes control characters in its text outputs
///   too, falcosecurity/falco#3895). A backslash already in a value is left as it is.
pub fn escape_line(line: String, format: LineFormat) -> String {
    // Fast path: nothing that can need escaping (C1 is 0xC2 0x80..0x9F, U+2028/9 0xE2 ...).
    if !line.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2 || b == 0xe2) {
        return line;
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        let code = c as u32;
        let control =
            code < 0x20 || (0x7f..=0x9f).contains(&code) || code == 0x2028 || code == 0x2029;
        if !control {
            out.push(c);
            continue;
        }
        use std::fmt::Write as _;
        let _ = match (format, c) {
            (LineFormat::Text, '\n') => write!(out, "\\n"),
            (LineFormat::Text, '\r') => write!(out, "\\r"),
            (LineFormat::Text, '\t') => write!(out, "\\t"),
            (LineFormat::Text, _) if code <= 0x7f => write!(out, "\\x{code:02x}"),
            _ => write!(out, "\\u{code:04x}"),
        };
    }
    out
}

/// Falco's priorities, most severe first; the discriminant is the syslog severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

impl Priority {
    /// A host record's action: `blocked`, `killed` and `would_block` → `Warning` (the same
    /// event, stopped or not), `audit` → `Notice`, anything else (`observed`) →
    /// `Informational`.
    pub fn of_host_action(action: &str) -> Self {
        match action {
            "blocked" | "killed" | "would_block" => Self::Warning,
            "audit" => Self::Notice,
            _ => Self::Informational,
        }
    }

    /// Falco's names, case-insensitive (`Info` is accepted for `Informational`).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
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

    pub const fn severity(self) -> u8 {
        self as u8
    }
}

impl TryFrom<String> for Priority {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        Self::parse(&name).ok_or_else(|| {
            format!(
                "unknown priority {name:?}: expected one of emergency, alert, critical, error, \
                 warning, notice, informational, debug"
            )
        })
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

// ---- configuration -----------------------------------------------------------------------

/// One entry of `outputs:`, written as `- <type>: {fields}` (see [`deserialize_list`]).
/// Externally tagged, so that the YAML parser reports unknown fields and bad values with
/// their line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputConfig {
    Stdout(StdoutConfig),
    File(FileConfig),
    Syslog(SyslogConfig),
    Webhook(WebhookConfig),
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    pub name: Option<String>,
    pub types: Option<BTreeSet<EventKind>>,
    pub min_priority: Option<Priority>,
    pub queue_size: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub name: Option<String>,
    pub types: Option<BTreeSet<EventKind>>,
    pub min_priority: Option<Priority>,
    pub queue_size: Option<usize>,
    pub path: PathBuf,
    /// Rotate before a line would take the file past this size (MiB; fractions allowed).
    #[serde(default = "default_max_size_mb")]
    pub max_size_mb: f64,
    /// Rotated files kept: `path.1` (newest) … `path.N`.
    #[serde(default = "default_max_files")]
    pub max_files: u32,
}

const fn default_max_size_mb() -> f64 {
    100.0
}
const fn default_max_files() -> u32 {
    5
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    pub name: Option<String>,
    pub types: Option<BTreeSet<EventKind>>,
    pub min_priority: Option<Priority>,
    pub queue_size: Option<usize>,
    /// `udp://host:port`, `tcp://host:port` or `unix:///path` (a datagram socket, as
    /// `/dev/log`).
    pub address: SyslogAddress,
    #[serde(default)]
    pub facility: syslog::FacilityName,
    #[serde(default = "default_app_name")]
    pub app_name: String,
}

fn default_app_name() -> String {
    "sensor".to_owned()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: Option<String>,
    pub types: Option<BTreeSet<EventKind>>,
    pub min_priority: Option<Priority>,
    pub queue_size: Option<usize>,
    pub url: WebhookUrl,
    #[serde(default)]
    pub tls: TlsConfig,
    /// Per attempt: connect, TLS handshake, request and response.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts after the first one fails.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one (capped at 30 s).
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
}

const fn default_timeout_ms() -> u64 {
    5000
}
const fn default_retries() -> u32 {
    3
}
const fn default_backoff_ms() -> u64 {
    200
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM bundle of the CAs to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate (signatures are still checked). Never in production.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

pub const DEFAULT_QUEUE_SIZE: usize = 4096;

/// Reads `outputs:` with each entry as a one-key map (`- file: {...}`) rather than a YAML tag.
pub fn deserialize_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<OutputConfig>>, D::Error> {
    serde_yaml_ng::with::singleton_map_recursive::deserialize(d)
}

impl OutputConfig {
    fn common(&self) -> (&Option<String>, &Option<BTreeSet<EventKind>>, Option<Priority>, usize) {
        let (name, types, min, queue) = match self {
            Self::Stdout(c) => (&c.name, &c.types, c.min_priority, c.queue_size),
            Self::File(c) => (&c.name, &c.types, c.min_priority, c.queue_size),
            Self::Syslog(c) => (&c.name, &c.types, c.min_priority, c.queue_size),
            Self::Webhook(c) => (&c.name, &c.types, c.min_priority, c.queue_size),
        };
        let default_queue =
            if matches!(self, Self::Webhook(_)) { 1024 } else { DEFAULT_QUEUE_SIZE };
        (name, types, min, queue.unwrap_or(default_queue))
    }

    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Stdout(_) => "stdout",
            Self::File(_) => "file",
            Self::Syslog(_) => "syslog",
            Self::Webhook(_) => "webhook",
        }
    }
}

/// Checks `outputs` and gives each its metric label: its `name`, else its type, else (when
/// several share a type) `type-N` with N its position in the list.
pub fn resolve_names(outputs: &[OutputConfig]) -> Result<Vec<String>, String> {
    let mut names = Vec::with_capacity(outputs.len());
    for (i, output) in outputs.iter().enumerate() {
        let (name, _, _, queue) = output.common();
        if queue == 0 {
            return Err(format!("outputs[{i}]: queue_size must be at least 1"));
        }
        match output {
            OutputConfig::File(c)
                if !c.max_size_mb.is_finite() || c.max_size_mb <= 0.0 || c.max_files == 0 =>
            {
                return Err(format!(
                    "outputs[{i}] (file): max_size_mb must be > 0 and max_files >= 1"
                ));
            }
            OutputConfig::Webhook(c) if c.timeout_ms == 0 => {
                return Err(format!("outputs[{i}] (webhook): timeout_ms must be > 0"));
            }
            _ => {}
        }
        let shared = outputs.iter().filter(|o| o.kind() == output.kind()).count() > 1;
        let label = match name {
            Some(n) if n.is_empty() => return Err(format!("outputs[{i}]: name is empty")),
            Some(n) => n.clone(),
            None if shared => format!("{}-{i}", output.kind()),
            None => output.kind().to_owned(),
        };
        if names.contains(&label) {
            return Err(format!("outputs[{i}]: output name {label:?} used twice"));
        }
        names.push(label);
    }
    Ok(names)
}

// ---- metrics -----------------------------------------------------------------------------

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputLabels {
    pub output: String,
}

/// Per-output delivery counters.
#[derive(Debug, Clone, Default)]
pub struct OutputMetrics {
    pub sent: Family<OutputLabels, Counter>,
    pub dropped: Family<OutputLabels, Counter>,
    pub errors: Family<OutputLabels, Counter>,
    pub retries: Family<OutputLabels, Counter>,
}

impl OutputMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sensor_output_sent",
            "Event lines delivered, by output",
            self.sent.clone(),
        );
        registry.register(
            "sensor_output_dropped",
            "Event lines dropped because the output's queue was full, by output",
            self.dropped.clone(),
        );
        registry.register(
            "sensor_output_errors",
            "Event lines that could not be delivered (write, connection, TLS or HTTP error after \
             all retries), by output",
            self.errors.clone(),
        );
        registry.register(
            "sensor_output_retries",
            "Webhook delivery attempts after a failed one, by output",
            self.retries.clone(),
        );
    }

    fn counters(&self, name: &str) -> Counters {
        let labels = OutputLabels { output: name.to_owned() };
        Counters {
            sent: self.sent.get_or_create(&labels).clone(),
            dropped: self.dropped.get_or_create(&labels).clone(),
            errors: self.errors.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
        }
    }
}

/// One output's counters, resolved once.
#[derive(Debug, Clone)]
pub struct Counters {
    pub sent: Counter,
    pub dropped: Counter,
    pub errors: Counter,
    pub retries: Counter,
}

// ---- fan-out -----------------------------------------------------------------------------

struct Route {
    name: String,
    types: Option<BTreeSet<EventKind>>,
    min_priority: Option<Priority>,
    queue: mpsc::Sender<Arc<OutputLine>>,
    counters: Counters,
}

impl Route {
    fn accepts(&self, line: &OutputLine) -> bool {
        if self.types.as_ref().is_some_and(|t| !t.contains(&line.kind)) {
            return false;
        }
        match self.min_priority {
            Some(min) if line.kind == EventKind::Alert => line.priority() <= min,
            _ => true,
        }
    }
}

/// The running outputs: one bounded queue and one task per output.
pub struct Outputs {
    routes: Vec<Route>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Outputs {
    /// Opens every output (files, TLS settings) and starts its task. Errors name the output.
    pub fn start(
        configs: &[OutputConfig],
        node_name: &str,
        metrics: &OutputMetrics,
    ) -> Result<Self, std::io::Error> {
        let names = resolve_names(configs).map_err(std::io::Error::other)?;
        let mut routes = Vec::new();
        let mut tasks = Vec::new();
        for (config, name) in configs.iter().zip(names) {
            let (_, types, min_priority, queue_size) = config.common();
            let (tx, rx) = mpsc::channel(queue_size);
            let counters = metrics.counters(&name);
            let err =
                |e: std::io::Error| std::io::Error::new(e.kind(), format!("output {name}: {e}"));
            let task = match config {
                OutputConfig::Stdout(_) => tokio::spawn(run_stdout(rx, counters.clone())),
                OutputConfig::File(c) => {
                    let writer = file::RotatingFile::open(c).map_err(err)?;
                    let counters = counters.clone();
                    tokio::task::spawn_blocking(move || writer.run(rx, &counters))
                }
                OutputConfig::Syslog(c) => {
                    let sender = syslog::SyslogSender::new(c, node_name).map_err(err)?;
                    tokio::spawn(sender.run(rx, counters.clone()))
                }
                OutputConfig::Webhook(c) => {
                    let sender = webhook::Webhook::new(c).map_err(err)?;
                    tokio::spawn(sender.run(rx, counters.clone()))
                }
            };
            tracing::info!(output = %name, r#type = config.kind(), queue_size, "output started");
            routes.push(Route { name, types: types.clone(), min_priority, queue: tx, counters });
            tasks.push(task);
        }
        Ok(Self { routes, tasks })
    }

    /// Hands each line to every output that wants it, never waiting: a full queue drops the
    /// line for that output (counted). Returns when every producer is gone.
    pub async fn run(self, mut lines: mpsc::Receiver<OutputLine>) -> std::io::Result<()> {
        while let Some(line) = lines.recv().await {
            let line = Arc::new(line);
            for route in &self.routes {
                if !route.accepts(&line) {
                    continue;
                }
                match route.queue.try_send(Arc::clone(&line)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        route.counters.dropped.inc();
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        route.counters.errors.inc();
                        tracing::error!(output = %route.name, "output task stopped");
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The default output list: stdout only.
pub fn default_outputs() -> Vec<OutputConfig> {
    vec![OutputConfig::Stdout(StdoutConfig::default())]
}

async fn run_stdout(mut rx: mpsc::Receiver<Arc<OutputLine>>, counters: Counters) {
    let mut out = JsonLines::new(tokio::io::stdout());
    let mut pending = 0_u64;
    while let Some(line) = rx.recv().await {
        match out.write_raw(&line.json).await {
            Ok(()) => pending += 1,
            Err(_) => {
                counters.errors.inc();
            }
        }
        if rx.is_empty() {
            match out.flush().await {
                Ok(()) => counters.sent.inc_by(pending),
                Err(_) => counters.errors.inc_by(pending),
            };
            pending = 0;
        }
    }
}

/// Exponential backoff: `base`, `2·base`, `4·base`, … capped at 30 s.
fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1_u32 << attempt.min(16)).min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<OutputConfig>, String> {
        #[derive(Deserialize)]
        struct List {
            #[serde(deserialize_with = "deserialize_list")]
            outputs: Option<Vec<OutputConfig>>,
        }
        let indented: String = yaml.lines().map(|l| format!("  {l}\n")).collect();
        serde_yaml_ng::from_str::<List>(&format!("outputs:\n{indented}"))
            .map(|l| l.outputs.unwrap_or_default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn parses_every_output_type() {
        let outputs = parse(
            "- stdout: {types: [flow, host]}\n\
             - file: {path: /var/log/sensor.json, max_size_mb: 0.5, max_files: 3}\n\
             - syslog: {address: 'tcp://127.0.0.1:6514', facility: local3, app_name: s}\n\
             - webhook:\n    url: https://siem.example:8443/in\n    tls: {ca_file: /ca.pem}\n    \
             retries: 5\n    min_priority: warning\n    types: [alert]\n",
        )
        .expect("valid");
        assert_eq!(outputs.len(), 4);
        assert_eq!(
            resolve_names(&outputs).expect("names"),
            ["stdout", "file", "syslog", "webhook"]
        );
        let OutputConfig::Webhook(w) = &outputs[3] else { panic!("webhook") };
        assert_eq!((w.retries, w.timeout_ms, w.backoff_ms), (5, 5000, 200));
        assert_eq!(w.min_priority, Some(Priority::Warning));
        let OutputConfig::Syslog(s) = &outputs[2] else { panic!("syslog") };
        assert_eq!(s.address, SyslogAddress::Tcp("127.0.0.1:6514".into()));
        assert_eq!(s.facility.0.code(), 19);
    }

    #[test]
    fn unknown_fields_and_bad_values_name_their_line() {
        let err =
            parse("- stdout: {}\n- file:\n    path: /x\n    max_size: 3\n").expect_err("typo");
        assert!(err.contains("max_size") && err.contains("line 5"), "{err}");
        let err = parse("- syslog:\n    address: http://x:1\n").expect_err("scheme");
        assert!(err.contains("line 3") && err.contains("udp://"), "{err}");
        let err = parse("- webhook: {url: 'ftp://x'}\n").expect_err("scheme");
        assert!(err.contains("http"), "{err}");
        let err = parse("- kafka: {}\n").expect_err("type");
        assert!(err.contains("kafka"), "{err}");
        let err = parse("- stdout: {min_priority: loud}\n").expect_err("priority");
        assert!(err.contains("loud"), "{err}");
    }

    #[test]
    fn names_are_unique_and_defaulted_by_position() {
        let outputs = parse(
            "- stdout: {}\n- file: {path: /a}\n- file: {path: /b, name: b}\n- file: {path: /c}\n",
        )
        .expect("valid");
        assert_eq!(resolve_names(&outputs).expect("names"), ["stdout", "file-1", "b", "file-3"]);
        let outputs = parse("- stdout: {name: x}\n- file: {path: /a, name: x}\n").expect("valid");
        assert!(resolve_names(&outputs).expect_err("dup").contains("twice"));
        let outputs = parse("- file: {path: /a, max_files: 0}\n").expect("valid");
        assert!(resolve_names(&outputs).is_err());
    }

    #[test]
    fn priority_comes_from_the_event() {
        let alert = |p: &str| {
            OutputLine::new(EventKind::Alert, format!(r#"{{"rule":"r","priority":"{p}"}}"#))
        };
        assert_eq!(alert("Critical").priority(), Priority::Critical);
        assert_eq!(alert("Informational").priority(), Priority::Informational);
        assert_eq!(OutputLine::new(EventKind::Alert, "{}".into()).priority(), Priority::Warning);
        let flow = |v: &str| {
            OutputLine::new(EventKind::Flow, format!(r#"{{"flow":{{"verdict":"{v}"}}}}"#))
        };
        assert_eq!(flow("FORWARDED").priority(), Priority::Informational);
        assert_eq!(flow("DROPPED").priority(), Priority::Warning);
        let host = |a: &str| {
            OutputLine::new(EventKind::Host, format!(r#"{{"process_file":{{"action":"{a}"}}}}"#))
        };
        assert_eq!(host("blocked").priority(), Priority::Warning);
        assert_eq!(host("killed").priority(), Priority::Warning);
        assert_eq!(host("would_block").priority(), Priority::Warning);
        assert_eq!(host("audit").priority(), Priority::Notice);
        assert_eq!(host("observed").priority(), Priority::Informational);
        // A value cannot pose as the action: serde_json escapes its quotes.
        let path = serde_json::json!({"process_file": {"path": r#""action":"killed""#, "action": "observed"}});
        let line = OutputLine::new(EventKind::Host, path.to_string());
        assert_eq!(line.priority(), Priority::Informational);
        let text = OutputLine::with_priority(
            EventKind::Alert,
            "12:00:00.000000000: Critical x".into(),
            LineFormat::Text,
            Priority::Critical,
        );
        assert_eq!(text.priority(), Priority::Critical);
    }

    #[test]
    fn control_characters_are_escaped_and_json_stays_json() {
        let name =
            "x\n12:00:00.000000000: Critical FAKE\r\t\u{1b}[31m\u{7f}\u{85}\u{2028}\u{0}é✓\\";
        let text = escape_line(format!("alert file={name}"), LineFormat::Text);
        assert_eq!(
            text,
            "alert file=x\\n12:00:00.000000000: Critical FAKE\\r\\t\\x1b[31m\\x7f\\u0085\\u2028\\x00é✓\\"
        );
        assert!(!text.chars().any(char::is_control));
        let json = serde_json::json!({"path": name}).to_string();
        let escaped = escape_line(json, LineFormat::Json);
        assert!(!escaped.chars().any(|c| c.is_control() || c == '\u{2028}'), "{escaped}");
        let back: serde_json::Value = serde_json::from_str(&escaped).expect("still JSON");
        assert_eq!(back["path"], name, "the decoded value is unchanged");
        let plain = "nothing to escape: é ✓ \u{2027}".to_owned();
        assert_eq!(escape_line(plain.clone(), LineFormat::Text), plain);
    }

    #[test]
    fn filters_by_type_and_alert_priority() {
        let (tx, _rx) = mpsc::channel(1);
        let route = Route {
            name: "w".into(),
            types: Some([EventKind::Alert, EventKind::Flow].into()),
            min_priority: Some(Priority::Error),
            queue: tx,
            counters: OutputMetrics::default().counters("w"),
        };
        let alert = |p: &str| OutputLine::new(EventKind::Alert, format!(r#"{{"priority":"{p}"}}"#));
        assert!(route.accepts(&alert("Critical")));
        assert!(route.accepts(&alert("Error")));
        assert!(!route.accepts(&alert("Warning")));
        assert!(route.accepts(&OutputLine::new(EventKind::Flow, "{}".into())));
        assert!(!route.accepts(&OutputLine::new(EventKind::Host, "{}".into())));
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        let metrics = OutputMetrics::default();
        let (tx, rx) = mpsc::channel(2);
        let counters = metrics.counters("slow");
        let outputs = Outputs {
            routes: vec![Route {
                name: "slow".into(),
                types: None,
                min_priority: None,
                queue: tx,
                counters: counters.clone(),
            }],
            tasks: Vec::new(),
        };
        let (lines_tx, lines_rx) = mpsc::channel(16);
        for i in 0..10 {
            lines_tx
                .send(OutputLine::new(EventKind::Host, format!("{{\"i\":{i}}}")))
                .await
                .expect("send");
        }
        drop(lines_tx);
        outputs.run(lines_rx).await.expect("run");
        assert_eq!(counters.dropped.get(), 8);
        drop(rx);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_millis(100);
        assert_eq!(backoff(base, 0), base);
        assert_eq!(backoff(base, 3), Duration::from_millis(800));
        assert_eq!(backoff(base, 40), Duration::from_secs(30));
    }
}
