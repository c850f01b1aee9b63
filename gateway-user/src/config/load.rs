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

/// The largest config file read (a Kubernetes ConfigMap holds at most 1 MiB).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// The most files one load reads.
pub const MAX_FILES: usize = 10_000;
/// The deepest directory nesting searched below a config path.
const MAX_DIRECTORY_DEPTH: usize = 32;

/// Loads every object under `paths`; directories are searched recursively for `*.yaml` and
/// `*.yml` in name order, leaving out hidden entries (a name starting with a dot: a mounted
/// ConfigMap's `..data` and `..<timestamp>` directories, which the visible names link into,
/// so each file is read once). Only regular files are read, up to [`MAX_FILE_BYTES`] each;
/// a FIFO, socket or device is an error, never a wait.
pub fn load(paths: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded::default();
    let mut files = Vec::new();
    for path in paths {
        let mut walk = Walk {
            files: &mut files,
            diagnostics: &mut loaded.diagnostics,
            ancestors: Vec::new(),
        };
        walk.visit(path);
    }
    if files.len() > MAX_FILES {
        let message = format!(
            "{} config files found; at most {MAX_FILES} are read",
            files.len()
        );
        loaded
            .diagnostics
            .push(file_error(&files[MAX_FILES], None, message));
        files.truncate(MAX_FILES);
    }
    for file in files {
        match read_config_file(&file) {
            Ok(text) => parse_file(&file, &text, &mut loaded),
            Err(message) => loaded.diagnostics.push(file_error(&file, None, message)),
        }
        loaded.sources.push(file);
    }
    loaded
}

/// Reads a config file: a regular file (opened without blocking, so a FIFO put in its
/// place cannot wedge the reader), of at most [`MAX_FILE_BYTES`], in UTF-8.
fn read_config_file(path: &Path) -> Result<String, String> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "not a regular file ({}); config files must be regular files",
            file_type_name(&meta.file_type())
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text: invalid byte at offset {}",
            e.utf8_error().valid_up_to()
        )
    })
}

fn too_big(size: u64) -> String {
    format!("{size} bytes: larger than the {MAX_FILE_BYTES}-byte limit for a config file")
}

fn file_type_name(kind: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
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

/// A search of one config path for files.
struct Walk<'a> {
    files: &'a mut Vec<PathBuf>,
    diagnostics: &'a mut Vec<Diagnostic>,
    /// The directories being searched, as (device, inode): one seen again is a loop.
    ancestors: Vec<(u64, u64)>,
}

impl Walk<'_> {
    fn error(&mut self, path: &Path, message: String) {
        self.diagnostics.push(file_error(path, None, message));
    }

    fn visit(&mut self, path: &Path) {
        use std::os::unix::fs::MetadataExt as _;
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) => return self.error(path, format!("cannot read: {e}")),
        };
        if !meta.is_dir() {
            return self.files.push(path.to_owned());
        }
        if self.files.len() > MAX_FILES {
            return;
        }
        let id = (meta.dev(), meta.ino());
        if self.ancestors.contains(&id) {
            let message = "directory loop: this directory contains itself (a symbolic link to an ancestor); it is not searched again".to_owned();
            return self.error(path, message);
        }
        if self.ancestors.len() >= MAX_DIRECTORY_DEPTH {
            let message = format!(
                "directories nested deeper than {MAX_DIRECTORY_DEPTH} levels are not searched"
            );
            return self.error(path, message);
        }
        let entries = match fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) => return self.error(path, format!("cannot list directory: {e}")),
        };
        let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        children.sort();
        self.ancestors.push(id);
        for child in children {
            let hidden = child
                .file_name()
                .is_some_and(|name| name.as_encoded_bytes().starts_with(b"."));
            let is_yaml = matches!(
                child.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            );
            if !hidden && (is_yaml || child.is_dir()) {
                self.visit(&child);
            }
        }
        self.ancestors.pop();
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    const GATEWAY: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n";

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
    }

    fn write(path: &Path, text: &str) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
        }
        fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    fn messages(loaded: &Loaded) -> Vec<String> {
        loaded
            .diagnostics
            .iter()
            .map(|d| format!("{}: {}", d.file.display(), d.message))
            .collect()
    }

    /// A Kubernetes ConfigMap volume: the visible names link through `..data` into a
    /// timestamped directory. Each object is read once, from its visible name.
    #[test]
    fn a_configmap_volume_is_read_once() {
        let root = dir();
        let stamp = root.path().join("..2026_12_07_18_00_00.000000001");
        write(&stamp.join("gateway.yaml"), GATEWAY);
        symlink(
            stamp.file_name().unwrap_or_default(),
            root.path().join("..data"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        symlink("..data/gateway.yaml", root.path().join("gateway.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let loaded = load(&[root.path().to_owned()]);
        assert!(loaded.diagnostics.is_empty(), "{:?}", messages(&loaded));
        assert_eq!(loaded.objects.len(), 1);
        assert_eq!(loaded.sources, [root.path().join("gateway.yaml")]);
    }

    #[test]
    fn a_fifo_is_refused_without_waiting() {
        let root = dir();
        let fifo = root.path().join("wedge.yaml");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        write(&root.path().join("gateway.yaml"), GATEWAY);
        let started = std::time::Instant::now();
        let loaded = load(&[root.path().to_owned()]);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(loaded.objects.len(), 1);
        let all = messages(&loaded);
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(
            all[0].contains("wedge.yaml: not a regular file (a FIFO)"),
            "{all:?}"
        );
        // Named directly, too.
        let loaded = load(std::slice::from_ref(&fifo));
        assert!(messages(&loaded)[0].contains("not a regular file"));
    }

    #[test]
    fn symlink_loops_and_oversized_files_are_errors() {
        let root = dir();
        write(&root.path().join("a/gateway.yaml"), GATEWAY);
        symlink("..", root.path().join("a/up")).unwrap_or_else(|e| panic!("{e}"));
        symlink("self.yaml", root.path().join("self.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let big = "# padding\n".repeat((MAX_FILE_BYTES / 10 + 1) as usize);
        write(&root.path().join("big.yaml"), &big);
        let loaded = load(&[root.path().to_owned()]);
        assert_eq!(loaded.objects.len(), 1);
        let all = messages(&loaded).join("\n");
        assert!(all.contains("a/up: directory loop"), "{all}");
        assert!(all.contains("self.yaml: cannot read"), "{all}");
        assert!(
            all.contains("big.yaml: 4194310 bytes: larger than"),
            "{all}"
        );
    }

    #[test]
    fn a_billion_laughs_file_is_an_error_at_its_line() {
        let mut text = String::from("a0: &a0 [lol]\n");
        for level in 1..=9 {
            let aliases = vec![format!("*a{}", level - 1); 10].join(", ");
            text += &format!("a{level}: &a{level} [{aliases}]\n");
        }
        let mut loaded = Loaded::default();
        parse_file(Path::new("laughs.yaml"), &text, &mut loaded);
        assert_eq!(loaded.diagnostics.len(), 1);
        let shown = loaded.diagnostics[0].to_string();
        assert!(shown.contains("laughs.yaml:"), "{shown}");
        assert!(shown.contains("expands to more than"), "{shown}");
    }
}
