//! Envoy bootstrap for one sidecar: who it is (node id and metadata), where its admin listens,
//! and where to fetch everything else (ADS at xds-server). Used by `xds-server bootstrap`,
//! by `wardctl up`, and later by Kubernetes injection.

use std::net::SocketAddr;

use serde_json::{json, Value};

use ward_config::model::{Instance, Mesh, Workload};
use ward_config::wellknown::{ADMIN_PORT, WASM_SHA256_METADATA, XDS_CLUSTER};
use ward_config::SpiffeId;
use ward_identity::BootstrapCredentials;

/// Which variant of the ADS protocol the proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AdsProtocol {
    /// Incremental xDS: only changed resources travel.
    #[default]
    Delta,
    /// State of the world: every response carries the full set of its type.
    Sotw,
}

#[derive(Debug, Clone)]
pub struct BootstrapParams {
    pub xds_address: SocketAddr,
    pub protocol: AdsProtocol,
    /// Mutual TLS to xds-server with these files; None for a plaintext xDS server.
    pub credentials: Option<BootstrapCredentials>,
    /// sha256 (hex) of the wasm module file this sidecar will load, computed by whoever
    /// starts it: xds-server serves only sidecars whose module is the one it pins.
    pub wasm_module_sha256: Option<String>,
}

/// sha256 (hex) of a file: the wasm module's pin.
pub fn file_sha256(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
}

/// The xDS cluster's TLS: the proxy's bootstrap credential, xds-server checked against the
/// trust bundle and its SPIFFE id; ALPN h2 for gRPC.
fn xds_transport_socket(credentials: &BootstrapCredentials) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "xds-server",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [ {
                    "certificate_chain": { "filename": credentials.files.cert_chain.display().to_string() },
                    "private_key": { "filename": credentials.files.private_key.display().to_string() }
                } ],
                "validation_context": {
                    "trusted_ca": { "filename": credentials.files.trust_bundle.display().to_string() },
                    "match_typed_subject_alt_names": [ {
                        "san_type": "URI",
                        "matcher": { "exact": credentials.server_identity.to_string() }
                    } ]
                }
            }
        }
    })
}

pub fn render(
    mesh: &Mesh,
    workload: &Workload,
    instance: &Instance,
    params: &BootstrapParams,
) -> Value {
    render_node(
        &ProxyNode {
            node_id: Mesh::node_id(workload, instance),
            workload: workload.name.clone(),
            namespace: workload.namespace.clone(),
            instance: instance.name.clone(),
            service_account: workload.service_account.clone(),
            identity: mesh.identity(workload),
            address: instance.address.to_string(),
            // Connections leave from the instance's own address, as from a pod IP.
            bind_upstream: true,
        },
        params,
    )
}

/// Who a sidecar is, as its bootstrap tells xds-server.
#[derive(Debug, Clone)]
pub struct ProxyNode {
    pub node_id: String,
    pub workload: String,
    pub namespace: String,
    pub instance: String,
    pub service_account: String,
    pub identity: SpiffeId,
    /// The instance's (pod's) IP; the admin listener binds here.
    pub address: String,
    /// Bind upstream connections to `address` (the local runner, where instances share a
    /// host); a pod has its own network namespace and needs no such thing.
    pub bind_upstream: bool,
}

impl ProxyNode {
    /// A Kubernetes pod's sidecar: node id `<pod>.<namespace>`, like the local runner's
    /// `<instance>.<namespace>`; the workload is the pod's owner (a Deployment's pods are
    /// named `<deployment>-<replicaset hash>-<suffix>`; the caller says which).
    pub fn pod(
        pod: &str,
        namespace: &str,
        workload: &str,
        service_account: &str,
        pod_ip: &str,
        trust_domain: &str,
    ) -> Self {
        ProxyNode {
            node_id: format!("{pod}.{namespace}"),
            workload: workload.to_string(),
            namespace: namespace.to_string(),
            instance: pod.to_string(),
            service_account: service_account.to_string(),
            identity: SpiffeId::new(trust_domain, namespace, service_account),
            address: pod_ip.to_string(),
            bind_upstream: false,
        }
    }
}

/// The bootstrap of one sidecar.
pub fn render_node(node: &ProxyNode, params: &BootstrapParams) -> Value {
    let api_type = match params.protocol {
        AdsProtocol::Delta => "DELTA_GRPC",
        AdsProtocol::Sotw => "GRPC",
    };
    let ads_source = json!({ "ads": {}, "resource_api_version": "V3" });
    let mut bootstrap = json!({
        "node": {
            "id": node.node_id,
            "cluster": format!("{}.{}", node.workload, node.namespace),
            "metadata": {
                "WORKLOAD_NAME": node.workload,
                "NAMESPACE": node.namespace,
                "INSTANCE": node.instance,
                "SERVICE_ACCOUNT": node.service_account,
                "IDENTITY": node.identity.to_string(),
                "INSTANCE_IPS": node.address,
            }
        },
        "admin": {
            "address": { "socket_address": { "address": node.address, "port_value": ADMIN_PORT } }
        },
        // The retry budget's gauges (`wasmcustom.ward.retry_budget.<service>.<name>`) carry
        // the service as a tag, so Prometheus sees
        // `envoy_wasmcustom_ward_retry_budget_retries{ward_service="…"}`.
        "stats_config": {
            "stats_tags": [ {
                "tag_name": "ward_service",
                "regex": r"^wasmcustom\.ward\.retry_budget\.((.+)\.)[a-z]+$"
            } ]
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [ { "envoy_grpc": { "cluster_name": XDS_CLUSTER } } ]
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": {
            "clusters": [ {
                "name": XDS_CLUSTER,
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {
                            // Notice a dead xDS server within seconds, not at the TCP timeout.
                            "connection_keepalive": { "interval": "5s", "timeout": "3s" }
                        } }
                    }
                },
                "load_assignment": {
                    "cluster_name": XDS_CLUSTER,
                    "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": { "socket_address": {
                        "address": params.xds_address.ip().to_string(),
                        "port_value": params.xds_address.port()
                    } } } } ] } ]
                }
            } ]
        }
    });
    if node.bind_upstream {
        // Connections leave from the instance's own address, as from a pod IP, so
        // destinations see the real source. Set here, not per cluster, so clusters stay
        // shared by all proxies.
        bootstrap["cluster_manager"] = json!({
            "upstream_bind_config": {
                "source_address": { "address": node.address, "port_value": 0 }
            }
        });
    }
    if let Some(sha256) = &params.wasm_module_sha256 {
        bootstrap["node"]["metadata"][WASM_SHA256_METADATA] = sha256.as_str().into();
    }
    if let Some(credentials) = &params.credentials {
        bootstrap["static_resources"]["clusters"][0]["transport_socket"] =
            xds_transport_socket(credentials);
    }
    bootstrap
}

/// Points a bootstrap's xDS cluster at a DNS name (a Kubernetes Service) instead of an IP.
pub fn use_xds_hostname(bootstrap: &mut Value, host: &str, port: u16) {
    let cluster = &mut bootstrap["static_resources"]["clusters"][0];
    cluster["type"] = "STRICT_DNS".into();
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] =
        json!({ "socket_address": { "address": host, "port_value": port } });
}

/// A workload instance the mesh does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindInstanceError {
    #[error("no workload {namespace}/{workload} in the mesh (known: {})", known.join(", "))]
    NoWorkload {
        namespace: String,
        workload: String,
        known: Vec<String>,
    },
    #[error("workload {namespace}/{workload} has {replicas} replica(s); instance {index} does not exist")]
    NoInstance {
        namespace: String,
        workload: String,
        replicas: usize,
        index: u32,
    },
}

/// Finds `workload` (in `namespace`) and its instance `index` in the mesh.
pub fn find_instance<'a>(
    mesh: &'a Mesh,
    namespace: &str,
    workload: &str,
    index: u32,
) -> Result<(&'a Workload, &'a Instance), FindInstanceError> {
    let w = mesh
        .workload(namespace, workload)
        .ok_or_else(|| FindInstanceError::NoWorkload {
            namespace: namespace.to_string(),
            workload: workload.to_string(),
            known: mesh
                .workloads
                .iter()
                .map(|w| format!("{}/{}", w.namespace, w.name))
                .collect(),
        })?;
    let i = w
        .instances
        .iter()
        .find(|i| i.index == index)
        .ok_or_else(|| FindInstanceError::NoInstance {
            namespace: namespace.to_string(),
            workload: workload.to_string(),
            replicas: w.instances.len(),
            index,
        })?;
    Ok((w, i))
}
