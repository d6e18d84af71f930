//! Kubernetes' name rules. Ward puts names into Envoy resource names, node ids and SPIFFE
//! ids, so a name Kubernetes would refuse is refused here too, before it breaks something
//! further down.

/// Which rule a name follows, as Kubernetes assigns them per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// RFC 1123 label: Namespaces, container names.
    Label,
    /// RFC 1035 label (starts with a letter): Services, which become DNS names.
    ServiceName,
    /// RFC 1123 subdomain: Deployments, ServiceAccounts.
    Subdomain,
    /// IANA service name: port names.
    PortName,
}

fn label_ok(s: &str) -> bool {
    let bytes = s.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// None if `name` follows `rule`, otherwise what the rule asks for.
pub fn check(rule: Rule, name: &str) -> Option<&'static str> {
    let ok = match rule {
        Rule::Label => label_ok(name),
        Rule::ServiceName => label_ok(name) && name.as_bytes()[0].is_ascii_lowercase(),
        Rule::Subdomain => name.len() <= 253 && name.split('.').all(label_ok),
        Rule::PortName => {
            name.len() <= 15
                && label_ok(name)
                && !name.contains("--")
                && name.bytes().any(|b| b.is_ascii_lowercase())
        }
    };
    if ok {
        return None;
    }
    Some(match rule {
        Rule::Label => {
            "lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters (RFC 1123 label)"
        }
        Rule::ServiceName => {
            "lowercase letters, digits and '-', starting with a letter and ending with a letter or digit, at most 63 characters (RFC 1035 label)"
        }
        Rule::Subdomain => {
            "'.'-separated parts of lowercase letters, digits and '-', each starting and ending with a letter or digit, at most 253 characters (RFC 1123 subdomain)"
        }
        Rule::PortName => {
            "lowercase letters, digits and '-', with at least one letter, no '--', not starting or ending with '-', at most 15 characters (IANA service name)"
        }
    })
}

/// A SPIFFE trust domain: lowercase letters, digits, '.', '-' and '_'.
pub fn trust_domain_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert_eq!(check(Rule::Label, "exam-scheduler"), None);
        assert!(check(Rule::Label, "Exam").is_some());
        assert!(check(Rule::Label, "a.b").is_some());
        assert!(check(Rule::Label, "-a").is_some());
        assert_eq!(check(Rule::Subdomain, "a.b-c"), None);
        assert!(check(Rule::Subdomain, "a..b").is_some());
        assert!(check(Rule::ServiceName, "1abc").is_some());
        assert_eq!(check(Rule::PortName, "http"), None);
        assert!(check(Rule::PortName, "8080").is_some());
        assert!(check(Rule::PortName, "a--b").is_some());
        assert!(check(Rule::PortName, "a-very-long-port-name").is_some());
        assert!(trust_domain_ok("cluster.local"));
        assert!(!trust_domain_ok("spiffe://x"));
    }
}
