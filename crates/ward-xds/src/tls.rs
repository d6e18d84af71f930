//! Mutual TLS in Envoy terms: the SDS secrets of a proxy (`default`: its certificate and key,
//! `ROOTCA`: the trust bundle, Istio's names), the server side of an inbound listener by
//! PeerAuthentication mode, and the client side of outbound clusters (auto mTLS, secure
//! naming, DestinationRule `tls`).

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::{
    data_source, transport_socket, DataSource, Metadata, TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    listener_filter, FilterChain, FilterChainMatch, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, secret, subject_alt_name_matcher, tls_parameters,
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use envoy_types::pb::google::protobuf::{value, BoolValue, Struct, Value};

use crate::{ads_config_source, any};
use ward_config::model::{ClientTls, ClientTlsMode, Mesh, MtlsMode, Workload};
use ward_identity::IssuedCertificate;
use ward_snapshot::{Resource, ResourceLayer};

/// SDS name of a proxy's own certificate and key (Istio's).
pub const CERTIFICATE_SECRET: &str = "default";
/// SDS name of the trust bundle (Istio's).
pub const TRUST_BUNDLE_SECRET: &str = "ROOTCA";
/// Endpoint metadata that selects the mTLS transport socket (Istio's auto mTLS key).
const TLS_MODE_KEY: &str = "tlsMode";
const TLS_MODE_ISTIO: &str = "istio";
const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

fn inline(text: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.to_string())),
        ..Default::default()
    })
}

fn file(path: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    })
}

/// The two SDS secrets of one proxy.
pub fn secret_layer(cert: &IssuedCertificate, trust_bundle_pem: &str) -> Arc<ResourceLayer> {
    let certificate = Secret {
        name: CERTIFICATE_SECRET.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&cert.cert_chain_pem),
            private_key: inline(&cert.private_key_pem),
            ..Default::default()
        })),
    };
    let bundle = Secret {
        name: TRUST_BUNDLE_SECRET.to_string(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(trust_bundle_pem),
                ..Default::default()
            },
        )),
    };
    ResourceLayer::new([
        Resource::new(ward_snapshot::SECRET, CERTIFICATE_SECRET, &certificate),
        Resource::new(ward_snapshot::SECRET, TRUST_BUNDLE_SECRET, &bundle),
    ])
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads_config_source()),
    }
}

fn tls_socket<M: prost::Message + prost::Name>(context: &M) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(context))),
    }
}

/// The mesh's own certificate, and the peer checked against the trust bundle (and, on the
/// client side, against the identities allowed to serve the destination).
fn mesh_tls_context(peer_identities: &[String]) -> CommonTlsContext {
    let default_validation_context = CertificateValidationContext {
        match_typed_subject_alt_names: peer_identities
            .iter()
            .map(|id| SubjectAltNameMatcher {
                san_type: subject_alt_name_matcher::SanType::Uri as i32,
                matcher: Some(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact(id.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    CommonTlsContext {
        // TLS 1.3 where both ends speak it (Envoy's client default stops at 1.2).
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv12 as i32,
            tls_maximum_protocol_version: tls_parameters::TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        tls_certificate_sds_secret_configs: vec![sds(CERTIFICATE_SECRET)],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(default_validation_context),
                    validation_context_sds_secret_config: Some(sds(TRUST_BUNDLE_SECRET)),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

/// Server side of mesh mTLS: a client certificate from the mesh's CA is required; any mesh
/// identity is accepted here (authorization policies decide who may do what).
fn downstream_mtls() -> TransportSocket {
    tls_socket(&DownstreamTlsContext {
        common_tls_context: Some(mesh_tls_context(&[])),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    })
}

/// What an inbound listener needs for its mTLS mode: listener filters and filter chains,
/// each chain running `filters`. `probes`: the filters serving the kubelet's probes of this
/// port, which STRICT keeps serving in plaintext (everything else plaintext is refused).
pub fn inbound_chains(
    mode: MtlsMode,
    filters: Vec<envoy_types::pb::envoy::config::listener::v3::Filter>,
    probes: Option<Vec<envoy_types::pb::envoy::config::listener::v3::Filter>>,
) -> (Vec<ListenerFilter>, Vec<FilterChain>) {
    let plaintext = |name: &str, transport: &str| FilterChain {
        name: name.to_string(),
        filters: filters.clone(),
        filter_chain_match: (!transport.is_empty()).then(|| FilterChainMatch {
            transport_protocol: transport.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mtls = |transport: &str| FilterChain {
        name: "mtls".to_string(),
        filters: filters.clone(),
        filter_chain_match: (!transport.is_empty()).then(|| FilterChainMatch {
            transport_protocol: transport.to_string(),
            ..Default::default()
        }),
        transport_socket: Some(downstream_mtls()),
        ..Default::default()
    };
    // The TLS inspector tells a TLS ClientHello from plaintext on the same port.
    let inspector = || {
        vec![ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".to_string(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        }]
    };
    match (mode, probes) {
        (MtlsMode::Disable, _) => (Vec::new(), vec![plaintext("plaintext", "")]),
        (MtlsMode::Strict, None) => (Vec::new(), vec![mtls("")]),
        (MtlsMode::Strict, Some(probes)) => (
            inspector(),
            vec![
                mtls("tls"),
                FilterChain {
                    filters: probes,
                    ..plaintext("probes", "raw_buffer")
                },
            ],
        ),
        (MtlsMode::Permissive | MtlsMode::Unset, _) => (
            inspector(),
            vec![mtls("tls"), plaintext("plaintext", "raw_buffer")],
        ),
    }
}

/// How an outbound cluster talks to its endpoints.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterTls {
    /// Istio's auto mTLS: mTLS to endpoints whose sidecar accepts it, plaintext to those
    /// whose PeerAuthentication says DISABLE.
    Auto,
    /// DestinationRule ISTIO_MUTUAL: always mTLS with the mesh's certificates.
    IstioMutual,
    /// DestinationRule DISABLE.
    Plaintext,
    /// DestinationRule SIMPLE or MUTUAL, with files on the proxy.
    Origination(ClientTls),
}

/// How a cluster talks to its endpoints, from its traffic policy's `tls`.
pub fn cluster_tls(tls: Option<&ClientTls>) -> ClusterTls {
    match tls {
        None => ClusterTls::Auto,
        Some(tls) => match tls.mode {
            ClientTlsMode::IstioMutual => ClusterTls::IstioMutual,
            ClientTlsMode::Disable => ClusterTls::Plaintext,
            ClientTlsMode::Simple | ClientTlsMode::Mutual => ClusterTls::Origination(tls.clone()),
        },
    }
}

/// SNI of mesh mTLS connections, Istio's form: `outbound_.<port>_._.<fqdn>`.
pub fn mesh_sni(port: u16, fqdn: &str) -> String {
    format!("outbound_.{port}_._.{fqdn}")
}

fn upstream_mesh_mtls(identities: &[String], sni: String) -> TransportSocket {
    tls_socket(&UpstreamTlsContext {
        common_tls_context: Some(mesh_tls_context(identities)),
        sni,
        ..Default::default()
    })
}

fn upstream_origination(tls: &ClientTls) -> TransportSocket {
    let mut common = CommonTlsContext::default();
    if let (Some(cert), Some(key)) = (&tls.client_certificate, &tls.private_key) {
        common.tls_certificates = vec![TlsCertificate {
            certificate_chain: file(cert),
            private_key: file(key),
            ..Default::default()
        }];
    }
    if !tls.insecure_skip_verify {
        let validation = CertificateValidationContext {
            trusted_ca: tls.ca_certificates.as_deref().and_then(file),
            match_typed_subject_alt_names: tls
                .subject_alt_names
                .iter()
                .map(|san| SubjectAltNameMatcher {
                    san_type: if san.contains("://") {
                        subject_alt_name_matcher::SanType::Uri
                    } else {
                        subject_alt_name_matcher::SanType::Dns
                    } as i32,
                    matcher: Some(StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Exact(san.clone())),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        common.validation_context_type =
            Some(common_tls_context::ValidationContextType::ValidationContext(validation));
    }
    tls_socket(&UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: tls.sni.clone().unwrap_or_default(),
        ..Default::default()
    })
}

/// The cluster's transport socket and transport socket matches for `tls`. `identities` are
/// the SPIFFE ids allowed to serve the destination (secure naming).
pub fn cluster_transport(
    tls: &ClusterTls,
    identities: &[String],
    sni: String,
) -> (Option<TransportSocket>, Vec<TransportSocketMatch>) {
    match tls {
        ClusterTls::Plaintext => (None, Vec::new()),
        ClusterTls::IstioMutual => (Some(upstream_mesh_mtls(identities, sni)), Vec::new()),
        ClusterTls::Origination(tls) => (Some(upstream_origination(tls)), Vec::new()),
        ClusterTls::Auto => (
            None,
            vec![TransportSocketMatch {
                name: format!("{TLS_MODE_KEY}-{TLS_MODE_ISTIO}"),
                r#match: Some(tls_mode_struct()),
                transport_socket: Some(upstream_mesh_mtls(identities, sni)),
            }],
        ),
    }
}

fn tls_mode_struct() -> Struct {
    Struct {
        fields: HashMap::from([(
            TLS_MODE_KEY.to_string(),
            Value {
                kind: Some(value::Kind::StringValue(TLS_MODE_ISTIO.to_string())),
            },
        )]),
    }
}

/// Endpoint metadata marking an endpoint whose sidecar accepts mTLS on `port` (one key per
/// map, so the encoding, and with it the resource version, is stable). A pod without Ward's
/// sidecar has none: clients reach it in plaintext, as Istio does for pods without its
/// `security.istio.io/tlsMode: istio` label.
pub fn endpoint_metadata(mesh: &Mesh, workload: &Workload, port: u16) -> Option<Metadata> {
    let mtls = workload.sidecar && mesh.effective_mtls(workload, port).mode != MtlsMode::Disable;
    mtls.then(|| Metadata {
        filter_metadata: HashMap::from([(TRANSPORT_SOCKET_MATCH.to_string(), tls_mode_struct())]),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Message;

    fn exam_lab(extra: &[(&str, &str)]) -> Mesh {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/exam-lab");
        let mut sources: Vec<(String, String)> =
            ["exam-scheduler", "professor-tools", "student-portal"]
                .iter()
                .map(|n| {
                    let path = format!("{dir}/{n}.yaml");
                    (path.clone(), std::fs::read_to_string(path).unwrap())
                })
                .collect();
        sources.extend(extra.iter().map(|(f, t)| (f.to_string(), t.to_string())));
        ward_config::load_sources(&sources).unwrap().mesh
    }

    fn scheduler_cluster(mesh: &Mesh) -> Cluster {
        let (snapshots, _) = crate::mesh_snapshots(mesh, &Default::default(), None, |_, _| None);
        let (_, snapshot) = &snapshots[0];
        let set = snapshot.set(ward_snapshot::CLUSTER).unwrap();
        let resource = set
            .get("outbound|80||exam-scheduler.default.svc.cluster.local")
            .unwrap();
        Cluster::decode(resource.any().value.as_slice()).unwrap()
    }

    fn upstream(socket: &TransportSocket) -> UpstreamTlsContext {
        match &socket.config_type {
            Some(transport_socket::ConfigType::TypedConfig(any)) => {
                UpstreamTlsContext::decode(any.value.as_slice()).unwrap()
            }
            None => panic!("no config"),
        }
    }

    fn accepted_sans(context: &UpstreamTlsContext) -> Vec<String> {
        match &context
            .common_tls_context
            .as_ref()
            .unwrap()
            .validation_context_type
        {
            Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) => c
                .default_validation_context
                .as_ref()
                .unwrap()
                .match_typed_subject_alt_names
                .iter()
                .map(|m| match &m.matcher.as_ref().unwrap().match_pattern {
                    Some(string_matcher::MatchPattern::Exact(s)) => s.clone(),
                    other => panic!("{other:?}"),
                })
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn clients_accept_only_the_identities_behind_the_service() {
        let mesh = exam_lab(&[]);
        let cluster = scheduler_cluster(&mesh);
        // Auto mTLS: plaintext unless the endpoint says its sidecar takes mTLS.
        assert!(cluster.transport_socket.is_none());
        let matched = &cluster.transport_socket_matches[0];
        let tls = upstream(matched.transport_socket.as_ref().unwrap());
        assert_eq!(
            accepted_sans(&tls),
            vec!["spiffe://cluster.local/ns/default/sa/exam-scheduler-sa"]
        );
        assert_eq!(
            tls.sni,
            "outbound_.80_._.exam-scheduler.default.svc.cluster.local"
        );
        let names: Vec<&str> = tls
            .common_tls_context
            .as_ref()
            .unwrap()
            .tls_certificate_sds_secret_configs
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, vec![CERTIFICATE_SECRET]);
    }

    #[test]
    fn destination_rule_tls_modes_override_auto_mtls() {
        let rule = |mode: &str| {
            format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: s\nspec:\n  host: exam-scheduler.default.svc.cluster.local\n  trafficPolicy:\n    tls:\n      mode: {mode}\n")
        };
        let mesh = exam_lab(&[("dr.yaml", &rule("ISTIO_MUTUAL"))]);
        let cluster = scheduler_cluster(&mesh);
        assert!(cluster.transport_socket_matches.is_empty());
        let tls = upstream(cluster.transport_socket.as_ref().unwrap());
        assert_eq!(
            accepted_sans(&tls),
            vec!["spiffe://cluster.local/ns/default/sa/exam-scheduler-sa"]
        );
        let mesh = exam_lab(&[("dr.yaml", &rule("DISABLE"))]);
        let cluster = scheduler_cluster(&mesh);
        assert!(cluster.transport_socket.is_none() && cluster.transport_socket_matches.is_empty());
    }
}
