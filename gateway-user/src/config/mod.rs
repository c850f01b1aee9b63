//! The config front end: load Istio objects from YAML (with positions), validate each object
//! on its own, and hand the valid ones to `compile`, which checks them against each other.
pub mod de;
pub mod diagnostic;
pub mod digests;
pub mod load;
pub mod model;
pub mod names;
pub mod validate;
pub mod visibility;
pub mod yaml;

use std::{collections::HashMap, path::PathBuf};

pub use diagnostic::{Diagnostic, ObjectRef, Severity};
pub use load::{Loaded, Object, Spec, load};

/// A loaded and validated config set: the objects without errors, and every diagnostic.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    pub sources: Vec<PathBuf>,
    pub objects: Vec<Object>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn count(&self, severity: Severity) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count()
    }
}

/// Loads `paths` and validates every object on its own. Only objects without any error are
/// kept; every diagnostic is.
pub fn check(paths: &[PathBuf]) -> Checked {
    check_loaded(load(paths))
}

/// [`check`] for one document text, as if read from `file`.
pub fn check_text(file: &str, text: &str) -> Checked {
    let mut loaded = Loaded {
        sources: vec![PathBuf::from(file)],
        ..Loaded::default()
    };
    load::parse_file(std::path::Path::new(file), text, &mut loaded);
    check_loaded(loaded)
}

fn check_loaded(loaded: Loaded) -> Checked {
    let mut checked = Checked {
        sources: loaded.sources,
        objects: Vec::new(),
        diagnostics: loaded.diagnostics,
    };
    let mut seen: HashMap<ObjectRef, (PathBuf, yaml::Mark)> = HashMap::new();
    let mut candidates = Vec::new();
    for object in loaded.objects {
        let reference = object.reference();
        if let Some((file, mark)) = seen.get(&reference) {
            let message = format!(
                "{reference} is defined twice; the first definition is at {}:{mark}",
                file.display()
            );
            checked.diagnostics.push(object.diagnostic(
                Severity::Error,
                diagnostic::codes::SCHEMA,
                "metadata.name",
                message,
            ));
            continue;
        }
        seen.insert(reference, (object.source.file.clone(), object.node.mark));
        checked.diagnostics.extend(validate::validate(&object));
        candidates.push(object);
    }
    let failed: Vec<ObjectRef> = checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .filter_map(|d| d.object.clone())
        .collect();
    checked.objects = candidates
        .into_iter()
        .filter(|o| !failed.contains(&o.reference()))
        .collect();
    checked.diagnostics.sort_by(|a, b| {
        (&a.file, a.mark.map(|m| (m.line, m.column)))
            .cmp(&(&b.file, b.mark.map(|m| (m.line, m.column))))
    });
    checked
}
