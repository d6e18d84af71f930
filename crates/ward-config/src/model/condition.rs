//! Linkerd's route conditions (`all`, `any`, `not` over methods and path regexes) in
//! disjunctive normal form: Envoy's route matches are conjunctions, so a condition becomes
//! one route per alternative. The loader bounds the expansion; the translation uses it.

use super::RequestMatch;

/// Conjunctions a route's condition may expand to (Envoy matches conjunctions; `any` and
/// `not` over `all` become several routes).
pub const MAX_ALTERNATIVES: usize = 64;

/// A condition's atom: a method or a path regex, possibly negated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Atom {
    Method(String, bool),
    Path(String, bool),
}

/// `condition` in disjunctive normal form: any of these conjunctions.
pub fn alternatives(condition: &RequestMatch) -> Vec<Vec<Atom>> {
    fn expand(m: &RequestMatch, negated: bool) -> Vec<Vec<Atom>> {
        let product = |parts: Vec<Vec<Vec<Atom>>>| {
            parts.into_iter().fold(vec![Vec::new()], |acc, part| {
                let mut out = Vec::new();
                for left in &acc {
                    for right in &part {
                        if out.len() > MAX_ALTERNATIVES {
                            return out;
                        }
                        let mut both = left.clone();
                        both.extend(right.iter().cloned());
                        out.push(both);
                    }
                }
                out
            })
        };
        let union = |parts: Vec<Vec<Vec<Atom>>>| parts.into_iter().flatten().collect();
        match m {
            RequestMatch::Method(method) => vec![vec![Atom::Method(method.clone(), negated)]],
            RequestMatch::PathRegex(regex) => vec![vec![Atom::Path(regex.clone(), negated)]],
            RequestMatch::Not(inner) => expand(inner, !negated),
            // not (a and b) = not a or not b; not (a or b) = not a and not b.
            RequestMatch::All(items) | RequestMatch::Any(items) => {
                let parts = items.iter().map(|i| expand(i, negated)).collect();
                if matches!(m, RequestMatch::All(_)) != negated {
                    product(parts)
                } else {
                    union(parts)
                }
            }
        }
    }
    expand(condition, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(m: &str) -> RequestMatch {
        RequestMatch::Method(m.into())
    }
    fn path(p: &str) -> RequestMatch {
        RequestMatch::PathRegex(p.into())
    }

    #[test]
    fn all_is_one_conjunction() {
        let m = RequestMatch::All(vec![method("GET"), path("^/aura$")]);
        assert_eq!(
            alternatives(&m),
            vec![vec![
                Atom::Method("GET".into(), false),
                Atom::Path("^/aura$".into(), false)
            ]]
        );
    }

    #[test]
    fn any_becomes_several_routes_and_not_follows_de_morgan() {
        let m = RequestMatch::Any(vec![method("GET"), method("HEAD")]);
        assert_eq!(alternatives(&m).len(), 2);
        let not_all =
            RequestMatch::Not(Box::new(RequestMatch::All(vec![method("GET"), path("/a")])));
        assert_eq!(
            alternatives(&not_all),
            vec![
                vec![Atom::Method("GET".into(), true)],
                vec![Atom::Path("/a".into(), true)]
            ]
        );
        let not_any =
            RequestMatch::Not(Box::new(RequestMatch::Any(vec![method("GET"), path("/a")])));
        assert_eq!(
            alternatives(&not_any),
            vec![vec![
                Atom::Method("GET".into(), true),
                Atom::Path("/a".into(), true)
            ]]
        );
    }
}
