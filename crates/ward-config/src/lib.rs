//! Ward's first stage: a file or directory of multi-document, Kubernetes-style YAML → the
//! mesh model (`model::Mesh`). Every error and every ignored field names its file, line,
//! column and dotted field path; all errors are collected, not just the first. Pure data and
//! files: no async runtime, no Envoy types, no Kubernetes client.
//!
//! - `model`: the resolved mesh every later crate consumes.
//! - `wellknown`: names and ports the crates share; `spiffe`: `SpiffeId`.
//! - `yaml`: a positioned YAML tree (duplicate keys refused, YAML 1.2 core schema scalars).
//! - `decode`: typed access that reports wrong types and every key left unread.
//! - `names`: Kubernetes' name rules.
//! - `kinds`: the Kubernetes and Ward kinds understood; `istio`: Istio's; `authz`: Istio's
//!   AuthorizationPolicy; `virtual_service`: Istio's VirtualService; `linkerd`: Linkerd's
//!   ServiceProfile and Service annotations.
//! - `resolve`: checks across documents, and the resolved `Mesh`; `placement`: the loopback
//!   address plan for Deployment replicas outside Kubernetes.
//! - `diagnostic`: `Diagnostic`, `ConfigError` and the per-file collector.

mod authz;
mod decode;
mod diagnostic;
mod istio;
mod kinds;
mod kuma;
mod linkerd;
mod names;
mod placement;
mod resolve;
mod virtual_service;
pub mod yaml;

pub mod model;
pub mod spiffe;
pub mod wellknown;

use std::path::{Path, PathBuf};

pub use authz::JwtRuleSpec;
pub use diagnostic::{ConfigError, Diagnostic};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use wellknown::{DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN};

use crate::model::Mesh;

#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub mesh: Mesh,
    /// Everything accepted but not acted on, or accepted against Kubernetes' rules.
    pub warnings: Vec<Diagnostic>,
}

/// Loads a YAML file, or every file [`yaml_files`] lists in a directory.
pub fn load_path(path: &Path) -> Result<LoadedConfig, ConfigError> {
    load_sources(&read_sources(path)?)
}

/// The (name, text) sources of a file or directory, as [`load_sources`] takes them.
pub fn read_sources(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| ConfigError::Io { path, error }
    };
    let metadata = std::fs::metadata(path).map_err(io(path))?;
    let files = if metadata.is_dir() {
        yaml_files(path).map_err(io(path))?
    } else {
        vec![path.to_path_buf()]
    };
    let sources = files
        .into_iter()
        .map(|file: PathBuf| {
            let text = std::fs::read_to_string(&file).map_err(io(&file))?;
            Ok((file.display().to_string(), text))
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(sources)
}

/// The `*.yaml`/`*.yml` files of `dir` a mesh is loaded from, sorted by name: not recursive,
/// hidden files skipped (editors and `wardctl apply` write temporaries there).
pub fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let file = entry?.path();
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or(".");
        let yaml = matches!(
            file.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if yaml && !name.starts_with('.') && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads one file's text; `file_name` is what diagnostics call it.
pub fn load_str(file_name: &str, text: &str) -> Result<LoadedConfig, ConfigError> {
    load_sources(&[(file_name.to_string(), text.to_string())])
}

/// Loads (file name, text) pairs as one configuration.
pub fn load_sources(sources: &[(String, String)]) -> Result<LoadedConfig, ConfigError> {
    let mut findings = resolve::Findings::default();
    let mut documents = Vec::new();
    let mut complete = true;
    for (file, text) in sources {
        let mut report = diagnostic::Report::new(file);
        match yaml::parse_documents(text) {
            Err(problem) => {
                report.error(problem.position, &problem.field, problem.message);
                complete = false;
            }
            Ok((nodes, problems)) => {
                for problem in problems {
                    report.error(problem.position, &problem.field, problem.message);
                }
                for node in &nodes {
                    let errors_before = report.errors.len();
                    match kinds::decode_document(node, &mut report) {
                        kinds::Decoded::Document(document) => documents.push(resolve::Located {
                            file: file.clone(),
                            document: *document,
                            clean: report.errors.len() == errors_before,
                        }),
                        kinds::Decoded::Skipped => {}
                        kinds::Decoded::Failed => complete = false,
                    }
                }
            }
        }
        findings.errors.extend(report.errors);
        findings.warnings.extend(report.warnings);
    }
    let mesh = resolve::resolve(documents, complete, &mut findings);

    // Read in file order, top to bottom, whichever check found what.
    let order = |d: &Diagnostic| {
        let file = sources.iter().position(|(f, _)| *f == d.file);
        (file, d.line, d.column)
    };
    let (mut errors, mut warnings) = (findings.errors, findings.warnings);
    errors.sort_by_key(order);
    warnings.sort_by_key(order);
    if errors.is_empty() {
        Ok(LoadedConfig { mesh, warnings })
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod traffic_tests;
