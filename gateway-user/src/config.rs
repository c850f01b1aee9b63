//! Loading config files: files and directories of multi-document YAML holding Istio
//! `networking.istio.io` objects. This is the untyped layer: it finds the documents, checks
//! their envelope (apiVersion, kind, metadata.name) and reports errors with file and line.
use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_yaml::Value;

/// The kinds Sluice reads, all in the `networking.istio.io` group.
pub const KINDS: &[&str] = &[
    "Gateway",
    "VirtualService",
    "ServiceEntry",
    "DestinationRule",
];
/// The API versions Istio serves for those kinds.
pub const API_VERSIONS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// One object read from a config file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Object {
    /// File it came from.
    pub source: PathBuf,
    /// Zero-based index of its YAML document in that file.
    pub document: usize,
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    /// The whole object as written.
    pub body: Value,
}

/// Every object of a config, in file order, then document order.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConfigSet {
    pub sources: Vec<PathBuf>,
    pub objects: Vec<Object>,
}

/// A problem in one place of one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => {
                write!(
                    f,
                    "{}:{line}:{column}: {}",
                    self.path.display(),
                    self.message
                )
            }
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// All errors of one load, reported together.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Loads every object under `paths`; directories are searched recursively for `*.yaml` and
/// `*.yml` in name order. Every error is collected, not just the first.
pub fn load(paths: &[PathBuf]) -> Result<ConfigSet, ConfigErrors> {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files, &mut errors);
    }
    let mut set = ConfigSet::default();
    for file in files {
        match fs::read_to_string(&file) {
            Ok(text) => parse_file(&file, &text, &mut set.objects, &mut errors),
            Err(e) => errors.push(error(&file, None, format!("cannot read: {e}"))),
        }
        set.sources.push(file);
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn error(path: &Path, position: Option<(usize, usize)>, message: String) -> ConfigError {
    ConfigError {
        path: path.to_owned(),
        position,
        message,
    }
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<ConfigError>) {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => return errors.push(error(path, None, format!("cannot read: {e}"))),
    };
    if !meta.is_dir() {
        return files.push(path.to_owned());
    }
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) => return errors.push(error(path, None, format!("cannot list directory: {e}"))),
    };
    let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    children.sort();
    for child in children {
        let is_yaml = matches!(
            child.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if child.is_dir() || is_yaml {
            collect_files(&child, files, errors);
        }
    }
}

/// Parses one file's documents into objects; `kind: List` documents contribute their items.
pub fn parse_file(path: &Path, text: &str, out: &mut Vec<Object>, errors: &mut Vec<ConfigError>) {
    for (document, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match Value::deserialize(de) {
            Ok(value) => value,
            Err(e) => {
                let position = e.location().map(|l| (l.line(), l.column()));
                errors.push(error(path, position, format!("invalid YAML: {e}")));
                // The deserializer cannot resume after a syntax error.
                return;
            }
        };
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        let items = match value.get("kind").and_then(Value::as_str) {
            Some("List") => match value.get("items").and_then(Value::as_sequence) {
                Some(items) => items.clone(),
                None => {
                    errors.push(doc_error(
                        path,
                        document,
                        "kind List needs an `items` sequence",
                    ));
                    continue;
                }
            },
            _ => vec![value],
        };
        for item in items {
            match object(path, document, item) {
                Ok(object) => out.push(object),
                Err(e) => errors.push(e),
            }
        }
    }
}

fn doc_error(path: &Path, document: usize, message: &str) -> ConfigError {
    error(path, None, format!("document {}: {message}", document + 1))
}

fn object(path: &Path, document: usize, body: Value) -> Result<Object, ConfigError> {
    let field = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_owned);
    let api_version =
        field("apiVersion").ok_or_else(|| doc_error(path, document, "`apiVersion` is required"))?;
    let kind = field("kind").ok_or_else(|| doc_error(path, document, "`kind` is required"))?;
    if !KINDS.contains(&kind.as_str()) {
        return Err(doc_error(
            path,
            document,
            &format!(
                "kind {kind:?} is not supported; expected one of {}",
                KINDS.join(", ")
            ),
        ));
    }
    if !API_VERSIONS.contains(&api_version.as_str()) {
        return Err(doc_error(
            path,
            document,
            &format!(
                "apiVersion {api_version:?} is not supported for {kind}; expected one of {}",
                API_VERSIONS.join(", ")
            ),
        ));
    }
    let metadata = body.get("metadata");
    let meta_str = |name: &str| metadata.and_then(|m| m.get(name)).and_then(Value::as_str);
    let name = meta_str("name")
        .ok_or_else(|| {
            doc_error(
                path,
                document,
                &format!("{kind}: `metadata.name` is required"),
            )
        })?
        .to_owned();
    let namespace = meta_str("namespace").map(str::to_owned);
    Ok(Object {
        source: path.to_owned(),
        document,
        api_version,
        kind,
        name,
        namespace,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<Object>, Vec<ConfigError>) {
        let (mut objects, mut errors) = (Vec::new(), Vec::new());
        parse_file(Path::new("gw.yaml"), text, &mut objects, &mut errors);
        (objects, errors)
    }

    const GATEWAY: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: edge\n  namespace: ns\nspec: {}\n";

    #[test]
    fn reads_every_document_and_list_items() {
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1beta1\n  kind: VirtualService\n  metadata: {name: vs}\n";
        let (objects, errors) = parse(&format!("{GATEWAY}---\n{list}---\n"));
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<_> = objects
            .iter()
            .map(|o| (o.kind.as_str(), o.name.as_str(), o.document))
            .collect();
        assert_eq!(names, [("Gateway", "edge", 0), ("VirtualService", "vs", 1)]);
        assert_eq!(objects[0].namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn syntax_errors_carry_file_line_and_column() {
        let (_, errors) = parse("kind: Gateway\nmetadata:\n  name: [unclosed\n");
        assert_eq!(errors.len(), 1);
        let text = errors[0].to_string();
        assert!(text.starts_with("gw.yaml:"), "{text}");
        assert!(
            errors[0].position.is_some_and(|(line, _)| line >= 3),
            "{text}"
        );
    }

    #[test]
    fn envelope_errors_name_the_document_and_field() {
        let cases = [
            (
                "kind: Gateway\nmetadata: {name: a}\n",
                "document 1: `apiVersion` is required",
            ),
            (
                "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {}\n",
                "Gateway: `metadata.name` is required",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n",
                "kind \"Service\" is not supported",
            ),
            (
                "apiVersion: networking.istio.io/v2\nkind: Gateway\nmetadata: {name: a}\n",
                "apiVersion \"networking.istio.io/v2\" is not supported",
            ),
        ];
        for (text, want) in cases {
            let (objects, errors) = parse(text);
            assert!(objects.is_empty(), "{text}");
            assert_eq!(errors.len(), 1, "{text}");
            assert!(
                errors[0].to_string().contains(want),
                "{} lacks {want}",
                errors[0]
            );
        }
    }

    #[test]
    fn directories_are_searched_for_yaml_in_name_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
            }
            fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
        };
        write("b.yaml", &GATEWAY.replace("edge", "b"));
        write("a/x.yml", &GATEWAY.replace("edge", "a"));
        write("notes.txt", "not yaml");
        let set = load(&[dir.path().to_owned()]).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<_> = set.objects.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn all_errors_are_reported_together() {
        let err = load(&[
            PathBuf::from("/nonexistent/one"),
            PathBuf::from("/nonexistent/two"),
        ])
        .err()
        .unwrap_or_else(|| panic!("missing files accepted"));
        assert_eq!(err.0.len(), 2);
    }
}
