//! What validation reports: errors (an object breaks its own rules) and warnings (objects
//! disagree with each other), each with a stable code, a file position and a field path.
use std::{fmt, path::PathBuf};

use serde::Serialize;

use super::yaml::Mark;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The object is rejected; a config set with any error is not applied.
    Error,
    /// The set is applied; the affected server or route is left out of the Plan.
    Warning,
    /// Nothing is wrong; something is deliberately not acted on.
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

/// Stable diagnostic codes. Istio's analyzer codes where one means the same thing, `SLU`
/// codes for what is Sluice's own.
pub mod codes {
    /// A YAML or schema problem in one object (Istio's SchemaValidationError).
    pub const SCHEMA: &str = "IST0106";
    /// A referenced Gateway, host or subset does not exist (ReferencedResourceNotFound).
    pub const REFERENCE_NOT_FOUND: &str = "IST0101";
    /// A VirtualService host that no bound Gateway server exposes.
    pub const HOST_NOT_IN_GATEWAY: &str = "IST0132";
    /// Two servers claim the same port and host (ConflictingGateways).
    pub const CONFLICTING_GATEWAYS: &str = "IST0145";
    /// Two servers on one (bind, port) with different protocols.
    pub const CONFLICTING_PROTOCOLS: &str = "SLU0001";
    /// Rules for the `mesh` gateway: sidecar configuration Sluice does not act on.
    pub const MESH_ONLY: &str = "SLU0002";
    /// A route or server left out of the Plan because a warning applies to it.
    pub const LEFT_OUT: &str = "SLU0003";
    /// A DNS name that did not resolve (yet).
    pub const UNRESOLVED: &str = "SLU0004";
    /// An object whose `exportTo` does not reach the gateway's namespace.
    pub const NOT_EXPORTED: &str = "SLU0005";
}

/// Names an object: `Kind namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: &'static str,
    pub file: PathBuf,
    pub mark: Option<Mark>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
    /// Field path within the object (`spec.servers[1].port.protocol`); empty for the file.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(mark) = self.mark {
            write!(f, ":{mark}")?;
        }
        write!(f, ": {}: ", self.severity)?;
        if !self.path.is_empty() && !self.message.contains(&format!("`{}`", self.path)) {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        match &self.object {
            Some(object) => write!(f, " [{} {object}]", self.code),
            None => write!(f, " [{}]", self.code),
        }
    }
}
