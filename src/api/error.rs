//! The JSON body of every refused request (`4xx`/`5xx`), on `/v1` and `/cluster` alike:
//! `{"error": {"code", "message", "field"?, "details"?}}`.

use serde::{Deserialize, Serialize};

/// A refusal, as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was refused.
    pub error: ErrorInfo,
}

/// What was refused and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Short machine-readable code (`conflict`, `not_found`, `unavailable`...), also the
    /// metrics label.
    pub code: String,
    /// What is wrong and what to do, for a person.
    pub message: String,
    /// The offending request field, when one is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Machine-readable details (the current fencing token, the leader's address...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorBody {
    /// A refusal with `code` and `message` only.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorInfo {
                code: code.into(),
                message: message.into(),
                field: None,
                details: None,
            },
        }
    }
}
