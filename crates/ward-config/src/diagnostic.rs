//! Located messages about the user's config, the error type, and the per-file collector the
//! decoders write into.

use std::fmt;
use std::path::PathBuf;

use crate::yaml::Position;

/// One located message about the user's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// Dotted path of the field, e.g. `spec.template.spec.containers[0].ports[0].containerPort`;
    /// empty when the message is about a whole document or file.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    /// `FILE:LINE:COLUMN: FIELD: MESSAGE` (the `FIELD: ` part only when there is a field).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is in the message, not the error chain: an `anyhow` report with its
    /// causes (`{:#}`) then says it once.
    #[error("reading {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Every problem found, not just the first, one per line when displayed.
    #[error("{}", lines(.0))]
    Invalid(Vec<Diagnostic>),
}

fn lines(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Collects the errors and warnings of one file.
pub struct Report<'f> {
    pub file: &'f str,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl<'f> Report<'f> {
    pub fn new(file: &'f str) -> Self {
        Report {
            file,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn diagnostic(&self, at: Position, field: &str, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.to_string(),
            line: at.line,
            column: at.column,
            field: field.to_string(),
            message,
        }
    }

    pub fn error(&mut self, at: Position, field: &str, message: impl Into<String>) {
        let d = self.diagnostic(at, field, message.into());
        self.errors.push(d);
    }

    pub fn warn(&mut self, at: Position, field: &str, message: impl Into<String>) {
        let d = self.diagnostic(at, field, message.into());
        self.warnings.push(d);
    }
}
