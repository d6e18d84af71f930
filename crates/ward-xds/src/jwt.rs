//! RequestAuthentication → Envoy's `jwt_authn` filter, for the native engine, built the way
//! Istio builds it: one provider per `jwtRules` entry and one requirement, any provider or no
//! token at all (`allow_missing`). So a request without a token passes on to RBAC with no
//! request principal, and a token that is malformed, badly signed, expired or from an issuer
//! no rule names is refused with 401 and `www-authenticate` (403 for another audience).
//!
//! A verified payload goes into the dynamic metadata as `envoy.filters.http.jwt_authn` /
//! `payload`, where the RBAC rules `rbac` builds for `requestPrincipals` and `request.auth.*`
//! look (`scope` and `permission` split into lists, as Istio asks).
//!
//! The keys are inline (xds-server fetches `jwksUri`s), so the configuration changes whenever
//! the keys do: it reaches the listener over ECDS, like the wasm filter's, and a key rotation
//! or a RequestAuthentication change never replaces (drains) a listener. Every inbound HTTP
//! listener of a native-engine sidecar has the filter, with no providers when no
//! RequestAuthentication applies (it then does nothing), so adding the first one does not
//! replace the listener either. A wasm-engine sidecar gets the resource too, with no
//! providers, for listeners still draining after a switch of engine.

use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider, jwt_requirement, requirement_rule, JwtAuthentication, JwtClaimToHeader,
    JwtHeader, JwtProvider, JwtRequirement, JwtRequirementOrList, RequirementRule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::google::protobuf::Empty;
use prost::Name;
use wasm_authz::jwt::{JwtRule, CLOCK_SKEW_SECONDS};

use crate::any;
use crate::route::prefix_match;
use ward_config::model::{Mesh, Workload};
use ward_snapshot::Resource;

/// The filter's name in the inbound HTTP connection manager and of its ECDS resource. It is
/// also the dynamic metadata namespace the RBAC rules read the payload from.
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";

/// Where a verified payload goes in the filter's dynamic metadata.
pub const PAYLOAD_METADATA_KEY: &str = "payload";

/// Claims holding space-delimited lists (OAuth scopes): matched as lists, as Istio does.
const SPACE_DELIMITED_CLAIMS: [&str; 2] = ["scope", "permission"];

/// Keys no token can match, for a rule that has none (never fetched, or an empty set).
/// Envoy refuses a provider without a valid key, which would NACK the whole configuration
/// and keep the old keys in force; like Istio, Ward gives such a provider a key nobody can
/// sign for instead (its private half was discarded when it was generated), so its tokens
/// are refused with 401.
const NO_KEYS_JWKS: &str = r#"{"keys":[{"kty":"RSA","alg":"RS256","use":"sig","kid":"ward-no-keys","e":"AQAB","n":"r3hLFXMz2FvPHkz4-dqnpRC46biYAW94VA1-jBydUjGeaZ1suKN9FU5y5UTpdypf1IULchGCMPT3jSOd4Hl2pRbJBft3UllmCBKdR15Qfq5OGPubaqf7WO-O-yNRxaIHw5PdK83KhBoN77Lkz1yotv9gFdTIUTsvwHpuYgOhDi--SZs3jTIRJ0iWXsZKGyjvT9PGC2P5Tg_diGh8-As_ONQ3lfeugaVPW6_oztqa-P9zLhEt-e3ag5YYhXtoLaQm_Vd2JfxF5GsLD2mxU57w_j9svT-E4Ryo_dTQfbb2TXovo4buZV--GfxFv-ciTbKWJN8FfO4GO-foKqnW-IH_nw"}]}"#;

/// `jwks`, or [`NO_KEYS_JWKS`] when it has no key at all.
fn usable_jwks(jwks: &str) -> &str {
    let has_keys = serde_json::from_str::<serde_json::Value>(jwks)
        .ok()
        .and_then(|v| Some(!v.get("keys")?.as_array()?.is_empty()))
        .unwrap_or(false);
    if has_keys {
        jwks
    } else {
        NO_KEYS_JWKS
    }
}

/// The filter as the listener names it: its configuration comes over ECDS.
pub fn discovered_filter() -> HttpFilter {
    crate::extension::discovered_filter(JWT_FILTER, JwtAuthentication::type_url())
}

/// The ECDS resource for a sidecar: its RequestAuthentications' rules, keys inline, when
/// `verifies` (the native engine); otherwise no rules.
pub fn extension_config(mesh: &Mesh, workload: &Workload, verifies: bool) -> Resource {
    let rules = if verifies {
        mesh.jwt_rules_for(workload)
    } else {
        Vec::new()
    };
    Resource::new(
        ward_snapshot::EXTENSION_CONFIG,
        JWT_FILTER,
        &TypedExtensionConfig {
            name: JWT_FILTER.to_string(),
            typed_config: Some(any(&jwt_authentication(&rules))),
        },
    )
}

/// The filter's configuration for these rules (none: a filter that checks nothing).
pub fn jwt_authentication(rules: &[JwtRule]) -> JwtAuthentication {
    if rules.is_empty() {
        return JwtAuthentication::default();
    }
    let names: Vec<String> = (0..rules.len()).map(provider_name).collect();
    let mut requirements: Vec<JwtRequirement> = names
        .iter()
        .map(|name| requirement(jwt_requirement::RequiresType::ProviderName(name.clone())))
        .collect();
    requirements.push(requirement(jwt_requirement::RequiresType::AllowMissing(
        Empty {},
    )));
    JwtAuthentication {
        providers: names.into_iter().zip(rules.iter().map(provider)).collect(),
        rules: vec![RequirementRule {
            r#match: Some(prefix_match("/")),
            requirement_type: Some(requirement_rule::RequirementType::Requires(requirement(
                jwt_requirement::RequiresType::RequiresAny(JwtRequirementOrList { requirements }),
            ))),
        }],
        // As Istio: a CORS preflight carries no credentials, so no token is looked at (the
        // policies still decide, without a principal).
        bypass_cors_preflight: true,
        ..Default::default()
    }
}

/// Istio's provider names: `origins-<index of the rule>`.
fn provider_name(index: usize) -> String {
    format!("origins-{index}")
}

fn requirement(requires: jwt_requirement::RequiresType) -> JwtRequirement {
    JwtRequirement {
        requires_type: Some(requires),
    }
}

fn provider(rule: &JwtRule) -> JwtProvider {
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token,
        // Empty lists: Envoy's defaults, `Authorization: Bearer` and `access_token`, which
        // are Istio's too.
        from_headers: rule
            .from_headers
            .iter()
            .map(|(name, prefix)| JwtHeader {
                name: name.clone(),
                value_prefix: prefix.clone(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        forward_payload_header: rule.output_payload_to_header.clone().unwrap_or_default(),
        payload_in_metadata: PAYLOAD_METADATA_KEY.to_string(),
        normalize_payload_in_metadata: Some(jwt_provider::NormalizePayload {
            space_delimited_claims: SPACE_DELIMITED_CLAIMS.map(String::from).to_vec(),
        }),
        clock_skew_seconds: CLOCK_SKEW_SECONDS as u32,
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|(header, claim)| JwtClaimToHeader {
                header_name: header.clone(),
                claim_name: claim.clone(),
                ..Default::default()
            })
            .collect(),
        jwks_source_specifier: Some(jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(
                usable_jwks(&rule.jwks).to_string(),
            )),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From JSON, as the wasm filter gets it: fields added later take their defaults.
    fn rule(issuer: &str) -> JwtRule {
        serde_json::from_value(serde_json::json!({
            "issuer": issuer,
            "audiences": ["a"],
            "jwks": r#"{"keys":[]}"#,
            "fromHeaders": [["x-jwt", "Bearer "]],
            "fromParams": ["token"],
            "forwardOriginalToken": true,
            "outputPayloadToHeader": "x-payload",
            "outputClaimToHeaders": [["x-sub", "sub"]],
        }))
        .unwrap()
    }

    #[test]
    fn one_provider_per_rule_any_of_them_or_no_token() {
        let config = jwt_authentication(&[rule("one"), rule("two")]);
        let providers: Vec<(&str, &str)> = {
            let mut p: Vec<_> = config
                .providers
                .iter()
                .map(|(name, p)| (name.as_str(), p.issuer.as_str()))
                .collect();
            p.sort();
            p
        };
        assert_eq!(providers, [("origins-0", "one"), ("origins-1", "two")]);
        let provider = &config.providers["origins-0"];
        assert_eq!(provider.audiences, ["a"]);
        assert_eq!(provider.from_headers[0].name, "x-jwt");
        assert_eq!(provider.from_headers[0].value_prefix, "Bearer ");
        assert_eq!(provider.from_params, ["token"]);
        assert!(provider.forward);
        assert_eq!(provider.forward_payload_header, "x-payload");
        assert_eq!(provider.claim_to_headers[0].header_name, "x-sub");
        assert_eq!(provider.claim_to_headers[0].claim_name, "sub");
        assert_eq!(provider.payload_in_metadata, "payload");
        assert_eq!(provider.clock_skew_seconds, 60);
        let Some(jwt_provider::JwksSourceSpecifier::LocalJwks(jwks)) =
            &provider.jwks_source_specifier
        else {
            panic!("keys are inline: {provider:?}");
        };
        // No keys: one nobody can sign for, not an empty set Envoy would refuse.
        assert_eq!(
            jwks.specifier,
            Some(data_source::Specifier::InlineString(
                NO_KEYS_JWKS.to_string()
            ))
        );
        let Some(requirement_rule::RequirementType::Requires(JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::RequiresAny(any)),
        })) = &config.rules[0].requirement_type
        else {
            panic!("{config:?}");
        };
        let kinds: Vec<String> = any
            .requirements
            .iter()
            .map(|r| match &r.requires_type {
                Some(jwt_requirement::RequiresType::ProviderName(name)) => name.clone(),
                Some(jwt_requirement::RequiresType::AllowMissing(_)) => "allow_missing".into(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["origins-0", "origins-1", "allow_missing"]);
        assert!(config.bypass_cors_preflight);
    }

    #[test]
    fn keys_are_passed_inline_as_they_are() {
        let jwks = r#"{"keys":[{"kty":"RSA","kid":"k","e":"AQAB","n":"xAE7"}]}"#;
        assert_eq!(usable_jwks(jwks), jwks);
        assert_eq!(usable_jwks("not json"), NO_KEYS_JWKS);
        let no_keys: serde_json::Value = serde_json::from_str(NO_KEYS_JWKS).unwrap();
        assert_eq!(no_keys["keys"][0]["kid"], "ward-no-keys");
    }

    /// The providers of `engine`'s sidecar for httpbin, which a RequestAuthentication covers;
    /// None if it has no `jwt_authn` resource.
    fn providers(engine: &str) -> Option<usize> {
        use prost::Message;
        let yaml = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: httpbin}}\n\
             spec:\n  selector: {{matchLabels: {{app: httpbin}}}}\n  template:\n    \
             metadata: {{labels: {{app: httpbin}}}}\n    spec:\n      containers: \
             [{{name: httpbin, image: hashicorp/http-echo, ports: [{{containerPort: 8000}}]}}]\n\
             ---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\n\
             metadata: {{name: jwt}}\nspec:\n  jwtRules:\n  - issuer: i\n    \
             jwks: '{{\"keys\":[]}}'\n---\napiVersion: ward.dev/v1alpha1\nkind: MeshConfig\n\
             spec: {{authorizationEngine: {engine}}}\n"
        );
        let mesh = ward_config::load_sources(&[("mesh.yaml".to_string(), yaml)])
            .unwrap()
            .mesh;
        let options = crate::TranslateOptions {
            wasm_module: Some("/ward/wasm_authz.wasm".to_string()),
        };
        let (snapshots, _) = crate::mesh_snapshots(&mesh, &options, None, |_, _| None);
        let resource = snapshots[0]
            .1
            .set(ward_snapshot::EXTENSION_CONFIG)?
            .get(JWT_FILTER)?
            .clone();
        let config = TypedExtensionConfig::decode(resource.any().value.as_slice()).unwrap();
        let jwt = JwtAuthentication::decode(config.typed_config.unwrap().value.as_slice()).unwrap();
        Some(jwt.providers.len())
    }

    #[test]
    fn the_native_engine_verifies_and_the_wasm_engine_keeps_an_empty_filter() {
        assert_eq!(providers("native"), Some(1));
        // Still there: a listener draining after the switch names it.
        assert_eq!(providers("wasm"), Some(0));
    }

    #[test]
    fn no_rules_no_providers_and_no_requirement() {
        assert_eq!(jwt_authentication(&[]), JwtAuthentication::default());
    }
}
