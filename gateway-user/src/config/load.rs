//! Loading config: files and directories of multi-document YAML holding Istio
//! `networking.istio.io` objects, turned into typed objects. Problems become diagnostics
//! with file, line, column and field path; loading continues past them so one run reports
//! everything.
use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{
    de::{self, FieldError},
    diagnostic::{Diagnostic, ObjectRef, Severity, codes},
    model::{
        DestinationRuleSpec, Envelope, GatewaySpec, Metadata, ServiceEntrySpec, VirtualServiceSpec,
        unsupported_fields,
    },
    yaml::{self, Node},
};

/// The API versions Istio serves for the kinds Sluice reads.
pub const API_VERSIONS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];
/// The kinds Sluice reads.
pub const KINDS: &[&str] = &[
    "Gateway",
    "VirtualService",
    "ServiceEntry",
    "DestinationRule",
];
/// The namespace of an object that names none, as `kubectl apply` would place it.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "spec")]
pub enum Spec {
    Gateway(GatewaySpec),
    VirtualService(VirtualServiceSpec),
    ServiceEntry(ServiceEntrySpec),
    DestinationRule(DestinationRuleSpec),
}

/// Where an object was written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Source {
    pub file: PathBuf,
    /// Zero-based YAML document index in the file.
    pub document: usize,
    /// Index in a `kind: List` document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
}

/// One typed object, with its YAML tree kept for positions.
#[derive(Debug, Clone, Serialize)]
pub struct Object {
    pub source: Source,
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub metadata: Metadata,
    #[serde(flatten)]
    pub spec: Spec,
    #[serde(skip)]
    pub node: Node,
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self.spec {
            Spec::Gateway(_) => "Gateway",
            Spec::VirtualService(_) => "VirtualService",
            Spec::ServiceEntry(_) => "ServiceEntry",
            Spec::DestinationRule(_) => "DestinationRule",
        }
    }

    pub fn namespace(&self) -> &str {
        self.metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn reference(&self) -> ObjectRef {
        ObjectRef {
            kind: self.kind().into(),
            namespace: self.namespace().into(),
            name: self.name().into(),
        }
    }

    /// A diagnostic about the field at `path` of this object.
    pub fn diagnostic(
        &self,
        severity: Severity,
        code: &'static str,
        path: &str,
        message: String,
    ) -> Diagnostic {
        Diagnostic {
            severity,
            code,
            file: self.source.file.clone(),
            mark: Some(self.node.mark_of(path)),
            object: Some(self.reference()),
            path: path.to_owned(),
            message,
        }
    }
}

/// Everything one load found.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub sources: Vec<PathBuf>,
    pub objects: Vec<Object>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Loads every object under `paths`; directories are searched recursively for `*.yaml` and
/// `*.yml` in name order.
pub fn load(paths: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded::default();
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files, &mut loaded.diagnostics);
    }
    for file in files {
        match fs::read_to_string(&file) {
            Ok(text) => parse_file(&file, &text, &mut loaded),
            Err(e) => loaded
                .diagnostics
                .push(file_error(&file, None, format!("cannot read: {e}"))),
        }
        loaded.sources.push(file);
    }
    loaded
}

fn file_error(path: &Path, mark: Option<yaml::Mark>, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        code: codes::SCHEMA,
        file: path.to_owned(),
        mark,
        object: None,
        path: String::new(),
        message,
    }
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>, diagnostics: &mut Vec<Diagnostic>) {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => return diagnostics.push(file_error(path, None, format!("cannot read: {e}"))),
    };
    if !meta.is_dir() {
        return files.push(path.to_owned());
    }
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) => {
            return diagnostics.push(file_error(
                path,
                None,
                format!("cannot list directory: {e}"),
            ));
        }
    };
    let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    children.sort();
    for child in children {
        let is_yaml = matches!(
            child.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if child.is_dir() || is_yaml {
            collect_files(&child, files, diagnostics);
        }
    }
}

/// Parses one file's documents into objects; `kind: List` documents contribute their items.
pub fn parse_file(path: &Path, text: &str, loaded: &mut Loaded) {
    let documents = match yaml::parse_documents(text) {
        Ok(documents) => documents,
        Err(e) => {
            let message = format!("invalid YAML: {}", e.message);
            return loaded
                .diagnostics
                .push(file_error(path, Some(e.mark), message));
        }
    };
    for (document, node) in documents.into_iter().enumerate() {
        if node.get("kind").and_then(Node::as_str) == Some("List") {
            let Some(yaml::Value::Sequence(items)) = node.get("items").map(|n| &n.value) else {
                let message = "kind List needs an `items` list".to_owned();
                loaded
                    .diagnostics
                    .push(file_error(path, Some(node.mark), message));
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                let source = Source {
                    file: path.to_owned(),
                    document,
                    item: Some(i),
                };
                typed_object(source, item.clone(), loaded);
            }
        } else {
            typed_object(
                Source {
                    file: path.to_owned(),
                    document,
                    item: None,
                },
                node,
                loaded,
            );
        }
    }
}

fn typed_object(source: Source, node: Node, loaded: &mut Loaded) {
    let text = |key: &str| node.get(key).and_then(Node::as_str).map(str::to_owned);
    let envelope_error = |field: &str, message: String| Diagnostic {
        mark: Some(node.mark_of(field)),
        path: field.to_owned(),
        ..file_error(&source.file, None, message)
    };
    let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
        let missing = if text("apiVersion").is_none() {
            "apiVersion"
        } else {
            "kind"
        };
        return loaded
            .diagnostics
            .push(envelope_error(missing, format!("`{missing}` is required")));
    };
    if !KINDS.contains(&kind.as_str()) {
        let message = format!(
            "kind {kind:?} is not supported; expected one of {}",
            KINDS.join(", ")
        );
        return loaded.diagnostics.push(envelope_error("kind", message));
    }
    if !API_VERSIONS.contains(&api_version.as_str()) {
        let message = format!(
            "apiVersion {api_version:?} is not served for {kind}; expected one of {}",
            API_VERSIONS.join(", ")
        );
        return loaded
            .diagnostics
            .push(envelope_error("apiVersion", message));
    }
    let (result, errors) = match kind.as_str() {
        "Gateway" => typed::<GatewaySpec>(&node, Spec::Gateway),
        "VirtualService" => typed::<VirtualServiceSpec>(&node, Spec::VirtualService),
        "ServiceEntry" => typed::<ServiceEntrySpec>(&node, Spec::ServiceEntry),
        _ => typed::<DestinationRuleSpec>(&node, Spec::DestinationRule),
    };
    let name = node
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Node::as_str);
    let namespace = node
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Node::as_str);
    let reference = ObjectRef {
        kind: kind.clone(),
        namespace: namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned(),
        name: name.unwrap_or("<unnamed>").to_owned(),
    };
    for FieldError {
        path,
        mark,
        message,
    } in errors
    {
        loaded.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            code: codes::SCHEMA,
            file: source.file.clone(),
            mark: Some(mark),
            object: Some(reference.clone()),
            path,
            message,
        });
    }
    if name.is_none_or(str::is_empty) {
        loaded.diagnostics.push(Diagnostic {
            object: Some(reference.clone()),
            ..envelope_error("metadata.name", "`metadata.name` is required".into())
        });
        return;
    }
    // Kept even with field errors, so validation can report its other problems too; `check`
    // drops every object that has an error.
    if let Some((metadata, spec)) = result {
        loaded.objects.push(Object {
            source,
            api_version,
            metadata,
            spec,
            node,
        });
    }
}

fn typed<S: serde::de::DeserializeOwned>(
    node: &Node,
    wrap: fn(S) -> Spec,
) -> (Option<(Metadata, Spec)>, Vec<FieldError>) {
    let (envelope, mut errors) = de::from_node::<Envelope<Option<S>>>(node, unsupported_fields);
    let result = envelope.and_then(|e| match e.spec {
        Some(spec) => Some((e.metadata, wrap(spec))),
        None => {
            errors.push(FieldError {
                path: "spec".into(),
                mark: node.mark,
                message: "`spec` is required".into(),
            });
            None
        }
    });
    (result, errors)
}
