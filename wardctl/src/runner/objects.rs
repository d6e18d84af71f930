//! The config directory as kubectl sees a cluster: a set of objects, each identified by kind,
//! namespace and name, whatever file it is written in. `wardctl apply -f` replaces an object
//! wherever it is defined (Istio's tasks apply a new `reviews` VirtualService over the one
//! `virtual-service-all-v1.yaml` wrote), `delete -f` removes it, `get` lists them.
//!
//! Files are edited document by document: the text of every other object is kept byte for
//! byte, comments included.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ward_config::yaml::{Node, Value};

/// Kinds without a namespace: their key has none, whatever the document says.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "GatewayClass",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// An object's identity: kind, namespace (`default` when unset, none for cluster-scoped
/// kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // kubectl's `virtualservice.networking.istio.io/reviews`, without the group.
        write!(f, "{}/{}", self.kind.to_ascii_lowercase(), self.name)?;
        if let Some(ns) = &self.namespace {
            write!(f, " (namespace {ns})")?;
        }
        Ok(())
    }
}

/// One YAML document of a file: its text as written, and its identity when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub key: Option<ObjectKey>,
    /// The 1-based line of the file where the document starts.
    pub line: usize,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn field<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    match &node.value {
        Value::Mapping(entries) => entries.iter().find(|(k, _, _)| k == key).map(|(_, _, n)| n),
        _ => None,
    }
}

fn key_of(node: &Node) -> Option<ObjectKey> {
    let kind = field(node, "kind")?.text()?.to_string();
    let metadata = field(node, "metadata");
    // Unnamed: a singleton such as Ward's MeshConfig, identified by its kind alone.
    let name = metadata
        .and_then(|m| field(m, "name"))
        .and_then(Node::text)
        .unwrap_or_default()
        .to_string();
    let namespace = if CLUSTER_SCOPED.contains(&kind.as_str()) {
        None
    } else {
        Some(
            metadata
                .and_then(|m| field(m, "namespace"))
                .and_then(Node::text)
                .unwrap_or("default")
                .to_string(),
        )
    };
    Some(ObjectKey {
        kind,
        namespace,
        name,
    })
}

/// A `---` line: the start of a new document.
fn is_separator(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
}

/// The documents of a file, in order, each with the text between its separators.
pub fn split(file: &str, text: &str) -> Result<Vec<Document>, ObjectsError> {
    let mut chunks: Vec<(usize, String)> = vec![(1, String::new())];
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if is_separator(line.trim_end_matches('\n')) {
            chunks.push((index + 2, String::new()));
        } else {
            chunks.last_mut().expect("one chunk").1.push_str(line);
        }
    }
    let mut documents = Vec::new();
    for (line, chunk) in chunks {
        let (nodes, _) =
            ward_config::yaml::parse_documents(&chunk).map_err(|e| ObjectsError::Parse {
                file: file.to_string(),
                message: format!(
                    "line {}, column {}: {}",
                    line + e.position.line - 1,
                    e.position.column,
                    e.message
                ),
            })?;
        let node = nodes.into_iter().find(|n| !n.is_null());
        if node.is_none() && chunk.trim().is_empty() {
            continue;
        }
        documents.push(Document {
            key: node.as_ref().and_then(key_of),
            line,
            text: chunk,
        });
    }
    Ok(documents)
}

/// The documents joined back into a file.
pub fn join(documents: &[Document]) -> String {
    let mut text = String::new();
    for (i, document) in documents.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&document.text);
        if !document.text.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

/// What to do to one file of the config directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileChange {
    Write(PathBuf, String),
    Remove(PathBuf),
}

/// The config directory's YAML files with their documents.
pub fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, Vec<Document>)>, ObjectsError> {
    let files = ward_config::yaml_files(dir).map_err(|source| ObjectsError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|source| ObjectsError::Read {
                path: path.clone(),
                source,
            })?;
            let documents = split(&path.display().to_string(), &text)?;
            Ok((path, documents))
        })
        .collect()
}

/// `kubectl apply -f`: the applied file (`text`, split into `applied`) goes to `target` as
/// written, so lines in messages match the user's file; every object it names is taken out of
/// the other files it was written in (a file left empty is removed). Objects of `target` the
/// applied file does not name stay in it, after the applied text.
pub fn apply_changes(
    existing: &[(PathBuf, Vec<Document>)],
    target: &Path,
    text: &str,
    applied: &[Document],
) -> Vec<FileChange> {
    let keys: Vec<&ObjectKey> = applied.iter().filter_map(|d| d.key.as_ref()).collect();
    let mut changes = Vec::new();
    let mut target_text = text.to_string();
    for (path, documents) in existing {
        let kept: Vec<Document> = documents
            .iter()
            .filter(|d| d.key.as_ref().is_none_or(|k| !keys.contains(&k)))
            .filter(|d| d.key.is_some() || path != target)
            .cloned()
            .collect();
        if path == target {
            if !kept.is_empty() {
                if !target_text.ends_with('\n') {
                    target_text.push('\n');
                }
                target_text.push_str("---\n");
                target_text.push_str(&join(&kept));
            }
        } else if kept.len() != documents.len() {
            changes.push(if kept.iter().all(|d| d.key.is_none()) {
                FileChange::Remove(path.clone())
            } else {
                FileChange::Write(path.clone(), join(&kept))
            });
        }
    }
    changes.push(FileChange::Write(target.to_path_buf(), target_text));
    changes
}

/// `kubectl delete -f`: every object the documents name is taken out of the file it is in.
/// Returns the changes and the objects found nowhere.
pub fn delete_changes(
    existing: &[(PathBuf, Vec<Document>)],
    deleted: &[Document],
) -> (Vec<FileChange>, Vec<ObjectKey>) {
    let keys: Vec<&ObjectKey> = deleted.iter().filter_map(|d| d.key.as_ref()).collect();
    let mut changes = Vec::new();
    let mut found = Vec::new();
    for (path, documents) in existing {
        let kept: Vec<Document> = documents
            .iter()
            .filter(|d| match &d.key {
                Some(k) if keys.contains(&k) => {
                    found.push(k.clone());
                    false
                }
                _ => true,
            })
            .cloned()
            .collect();
        if kept.len() != documents.len() {
            changes.push(if kept.iter().all(|d| d.key.is_none()) {
                FileChange::Remove(path.clone())
            } else {
                FileChange::Write(path.clone(), join(&kept))
            });
        }
    }
    let missing = keys
        .into_iter()
        .filter(|k| !found.contains(k))
        .cloned()
        .collect();
    (changes, missing)
}

/// The config directory's sources (file name, text) after `changes`.
pub fn sources_after(
    existing: &[(PathBuf, Vec<Document>)],
    changes: &[FileChange],
) -> Vec<(String, String)> {
    let mut sources: BTreeMap<PathBuf, String> = existing
        .iter()
        .map(|(path, documents)| (path.clone(), join(documents)))
        .collect();
    for change in changes {
        match change {
            FileChange::Write(path, text) => {
                sources.insert(path.clone(), text.clone());
            }
            FileChange::Remove(path) => {
                sources.remove(path);
            }
        }
    }
    sources
        .into_iter()
        .map(|(path, text)| (path.display().to_string(), text))
        .collect()
}

/// Kubernetes' and Istio's names for a kind as `kubectl get` takes them: singular, plural,
/// short names, any case. None for a word that is no kind Ward knows.
pub fn kind_named(word: &str) -> Option<&'static str> {
    const KINDS: &[(&str, &[&str])] = &[
        ("Deployment", &["deploy"]),
        ("Service", &["svc"]),
        ("ServiceAccount", &["sa"]),
        ("Pod", &["po"]),
        ("Namespace", &["ns"]),
        ("ConfigMap", &["cm"]),
        ("VirtualService", &["vs"]),
        ("DestinationRule", &["dr"]),
        ("Gateway", &["gw"]),
        ("ServiceEntry", &["se"]),
        ("Sidecar", &[]),
        ("PeerAuthentication", &["pa"]),
        ("AuthorizationPolicy", &["ap"]),
        ("RequestAuthentication", &["ra"]),
        ("ServiceProfile", &["sp"]),
        ("HTTPRoute", &[]),
        ("GRPCRoute", &[]),
        ("TrafficRoute", &[]),
        ("MeshConfig", &[]),
    ];
    let word = word.to_ascii_lowercase();
    let word = word.split('.').next().unwrap_or_default();
    KINDS.iter().find_map(|(kind, short)| {
        let lower = kind.to_ascii_lowercase();
        (word == lower
            || word == format!("{lower}s")
            || word == format!("{lower}es")
            || short.contains(&word))
        .then_some(*kind)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_V1: &str = "# routes\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: ratings\nspec:\n  hosts: [ratings]\n";

    fn key(kind: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind: kind.into(),
            namespace: Some("default".into()),
            name: name.into(),
        }
    }

    #[test]
    fn splits_documents_keeping_their_text_and_lines() {
        let documents = split("all.yaml", ALL_V1).unwrap();
        assert_eq!(documents.len(), 2);
        assert_eq!(documents[0].key, Some(key("VirtualService", "reviews")));
        assert_eq!(documents[1].key, Some(key("VirtualService", "ratings")));
        assert_eq!(documents[1].line, 9);
        assert!(documents[0].text.starts_with("# routes\n"));
        assert_eq!(join(&documents), ALL_V1);
    }

    #[test]
    fn apply_replaces_an_object_in_the_file_that_defined_it() {
        let dir = PathBuf::from("/c");
        let existing = vec![(dir.join("all.yaml"), split("all.yaml", ALL_V1).unwrap())];
        let new_reviews = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  namespace: default\nspec:\n  hosts: [reviews]\n";
        let applied = split("test-v2.yaml", new_reviews).unwrap();
        let changes = apply_changes(&existing, &dir.join("test-v2.yaml"), new_reviews, &applied);
        let FileChange::Write(path, text) = &changes[0] else {
            panic!("{changes:?}")
        };
        assert_eq!(path, &dir.join("all.yaml"));
        assert!(text.contains("name: ratings") && !text.contains("name: reviews"));
        assert_eq!(
            changes[1],
            FileChange::Write(dir.join("test-v2.yaml"), new_reviews.to_string())
        );
        // Applying both back empties the second file.
        let existing = sources_after(&existing, &changes);
        let existing: Vec<_> = existing
            .iter()
            .map(|(f, t)| (PathBuf::from(f), split(f, t).unwrap()))
            .collect();
        let applied = split("all.yaml", ALL_V1).unwrap();
        let changes = apply_changes(&existing, &dir.join("all.yaml"), ALL_V1, &applied);
        assert!(changes.contains(&FileChange::Remove(dir.join("test-v2.yaml"))));
    }

    #[test]
    fn delete_removes_objects_and_names_the_missing_ones() {
        let dir = PathBuf::from("/c");
        let existing = vec![(dir.join("all.yaml"), split("all.yaml", ALL_V1).unwrap())];
        let gone = "kind: VirtualService\nmetadata:\n  name: ratings\n---\nkind: DestinationRule\nmetadata:\n  name: ratings\n";
        let (changes, missing) = delete_changes(&existing, &split("x.yaml", gone).unwrap());
        assert_eq!(missing, vec![key("DestinationRule", "ratings")]);
        let FileChange::Write(_, text) = &changes[0] else {
            panic!("{changes:?}")
        };
        assert!(text.contains("name: reviews") && !text.contains("name: ratings"));
    }

    #[test]
    fn an_unnamed_singleton_replaces_the_one_before_it() {
        let dir = PathBuf::from("/c");
        let engine = |e: &str| {
            format!("apiVersion: ward.dev/v1alpha1\nkind: MeshConfig\nspec:\n  authorizationEngine: {e}\n")
        };
        let existing = vec![(
            dir.join("mesh.yaml"),
            split("mesh.yaml", &engine("wasm")).unwrap(),
        )];
        let applied = split("mesh.yaml", &engine("native")).unwrap();
        let changes = apply_changes(
            &existing,
            &dir.join("mesh.yaml"),
            &engine("native"),
            &applied,
        );
        assert_eq!(
            changes,
            [FileChange::Write(dir.join("mesh.yaml"), engine("native"))]
        );
    }

    #[test]
    fn the_applied_file_is_written_as_given() {
        // Kubernetes manifests often start with `---`: lines in messages must still match.
        let text = format!("---\n{ALL_V1}");
        let applied = split("x.yaml", &text).unwrap();
        assert_eq!(applied[0].line, 2);
        let changes = apply_changes(&[], Path::new("/c/x.yaml"), &text, &applied);
        assert_eq!(changes, [FileChange::Write("/c/x.yaml".into(), text)]);
    }

    #[test]
    fn knows_kinds_by_kubectl_names() {
        assert_eq!(kind_named("vs"), Some("VirtualService"));
        assert_eq!(kind_named("virtualservices"), Some("VirtualService"));
        assert_eq!(
            kind_named("destinationrules.networking.istio.io"),
            Some("DestinationRule")
        );
        assert_eq!(kind_named("deploy"), Some("Deployment"));
        assert_eq!(kind_named("svc"), Some("Service"));
        assert_eq!(kind_named("frobs"), None);
    }
}
