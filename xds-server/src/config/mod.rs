//! Config loading and validation: a file or directory of multi-document YAML → the mesh
//! model. Every error and every ignored field names its file, line, column and field.
//!
//! - `yaml`: a positioned YAML tree (duplicate keys refused).
//! - `decode`: typed access that reports what it could not use.
//! - `kinds`: the Kubernetes and Ward kinds understood.
//! - `resolve`: cross-document checks and the resolved `Mesh`.

mod decode;
mod kinds;
mod resolve;
mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::model::Mesh;

/// One located message about the user's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field, e.g. `spec.template.spec.containers[0].ports[0].containerPort`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub mesh: Mesh,
    pub warnings: Vec<Diagnostic>,
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads a YAML file, or every `*.yaml`/`*.yml` file of a directory (sorted, not recursive).
pub fn load_path(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(io)?;
    let mut sources = Vec::new();
    if metadata.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let hidden = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                let yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
                yaml && !hidden && p.is_file()
            })
            .collect();
        files.sort();
        for file in files {
            let text = read(&file)?;
            sources.push((file.display().to_string(), text));
        }
    } else {
        sources.push((path.display().to_string(), read(path)?));
    }
    load_sources(&sources)
}

pub fn load_str(file_name: &str, text: &str) -> Result<LoadedConfig, ConfigError> {
    load_sources(&[(file_name.to_string(), text.to_string())])
}

/// Loads (file name, text) pairs as one configuration.
pub fn load_sources(sources: &[(String, String)]) -> Result<LoadedConfig, ConfigError> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut documents = Vec::new();
    for (file, text) in sources {
        let mut report = decode::Report::new(file);
        match yaml::parse_documents(text) {
            Err(problem) => report.error(problem.position, &problem.field, problem.message),
            Ok((nodes, problems)) => {
                for problem in problems {
                    report.error(problem.position, &problem.field, problem.message);
                }
                for node in &nodes {
                    if let Some(document) = kinds::decode_document(node, &mut report) {
                        documents.push(resolve::Located {
                            file: file.clone(),
                            document,
                        });
                    }
                }
            }
        }
        errors.extend(report.errors);
        warnings.extend(report.warnings);
    }
    let mesh = resolve::resolve(documents, &mut errors, &mut warnings);
    if errors.is_empty() {
        Ok(LoadedConfig { mesh, warnings })
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

#[cfg(test)]
mod tests;
