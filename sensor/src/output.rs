//! JSON lines on stdout, and the Hubble flow record shapes.

use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

/// Writes one JSON document per line.
pub struct JsonLines<W> {
    writer: W,
    line: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> JsonLines<W> {
    pub const fn new(writer: W) -> Self {
        Self { writer, line: Vec::new() }
    }

    /// Buffers `record`; call [`Self::flush`] after a batch.
    pub async fn write<T: Serialize>(&mut self, record: &T) -> std::io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)?;
        self.line.push(b'\n');
        self.writer.write_all(&self.line).await
    }

    /// Writes an already serialised document as one line.
    pub async fn write_raw(&mut self, json: &str) -> std::io::Result<()> {
        self.line.clear();
        self.line.extend_from_slice(json.as_bytes());
        self.line.push(b'\n');
        self.writer.write_all(&self.line).await
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush().await
    }
}

// ---- Hubble flow records ---------------------------------------------------------------------

/// `{"flow": {...}, "node_name": ..., "time": ...}` as `hubble observe -o json` prints it.
#[derive(Debug, Serialize)]
pub struct FlowRecord {
    pub flow: HubbleFlow,
    pub node_name: String,
    pub time: String,
}

#[derive(Debug, Serialize)]
pub struct HubbleFlow {
    pub time: String,
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_reason_desc: Option<&'static str>,
    #[serde(rename = "IP")]
    pub ip: HubbleIp,
    pub l4: serde_json::Value,
    pub source: HubbleEndpoint,
    pub destination: HubbleEndpoint,
    #[serde(rename = "Type")]
    pub flow_type: &'static str,
    pub node_name: String,
    pub event_type: HubbleEventType,
    pub traffic_direction: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_match_type: Option<u8>,
    pub is_reply: bool,
    pub interface: HubbleInterface,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingress_allowed_by: Vec<HubblePolicy>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress_allowed_by: Vec<HubblePolicy>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingress_denied_by: Vec<HubblePolicy>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress_denied_by: Vec<HubblePolicy>,
    #[serde(rename = "Summary", skip_serializing_if = "String::is_empty")]
    pub summary: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HubblePolicy {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub struct HubbleIp {
    pub source: String,
    pub destination: String,
    #[serde(rename = "ipVersion")]
    pub ip_version: &'static str,
}

#[derive(Debug, Default, Serialize)]
pub struct HubbleEndpoint {
    #[serde(rename = "ID", skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct HubbleEventType {
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_type: Option<u8>,
}

#[derive(Debug, Serialize)]
pub struct HubbleInterface {
    pub index: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_document_per_line() {
        let mut out = JsonLines::new(Vec::new());
        out.write(&serde_json::json!({"a": 1})).await.expect("write");
        out.write(&serde_json::json!({"b": "x\ny"})).await.expect("write");
        let text = String::from_utf8(out.writer).expect("utf8");
        assert_eq!(text, "{\"a\":1}\n{\"b\":\"x\\ny\"}\n");
    }
}
