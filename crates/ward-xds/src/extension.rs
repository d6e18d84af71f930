//! Filters configured over ECDS: Ward's wasm filters (`ward-authz` inbound,
//! `ward-retry-budget` outbound) and the discovered-filter stubs the listeners name.

use envoy_types::pb::envoy::config::core::v3::BackoffStrategy;
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::config::core::v3::{
    AsyncDataSource, ExtensionConfigSource, TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter,
};
use envoy_types::pb::envoy::extensions::wasm::v3::{
    FailurePolicy, PluginConfig, ReloadConfig, VmConfig,
};
use envoy_types::pb::google::protobuf::StringValue;
use prost::Name;
use ward_config::model::{Mesh, Workload};
use ward_snapshot::Resource;

use crate::{ads_config_source, any, duration_ms, TranslateOptions};

/// The name of the wasm filter in every inbound HTTP connection manager, and of its ECDS
/// resource.
pub const WASM_FILTER: &str = "ward-authz";

/// Whether this sidecar's AuthorizationPolicies are enforced by the wasm filter rather than
/// by RBAC ([`Mesh::wasm_authorizes`]) and the proxies have the module (without it, RBAC
/// and `jwt_authn` enforce the same policies and tokens, so nothing fails open).
pub(crate) fn wasm_enforces(mesh: &Mesh, workload: &Workload, options: &TranslateOptions) -> bool {
    options.wasm_module.is_some() && mesh.wasm_authorizes(workload)
}

/// The wasm filter's configuration for one sidecar, delivered over ECDS: a change (a policy,
/// a new version) reaches the next request without touching the listener, so no connection
/// is drained.
pub(crate) fn wasm_extension_config(
    mesh: &Mesh,
    workload: &Workload,
    module_path: &str,
    options: &TranslateOptions,
) -> Resource {
    let mut configuration = serde_json::json!({
        "workload": workload.name,
        "namespace": workload.namespace,
        "identity": mesh.identity(workload).to_string(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    if wasm_enforces(mesh, workload, options) {
        let policies = mesh.authorization_policies_for(workload);
        let jwt_rules = mesh.jwt_rules_for(workload);
        configuration["authorization"] =
            serde_json::json!({ "policies": policies, "jwtRules": jwt_rules });
        if jwt_rules.iter().any(|rule| rule.jwks_uri.is_some()) {
            // Keys rotated at the issuer: the filter asks xds-server to fetch them again.
            configuration["authorization"]["keyRefreshCluster"] =
                ward_config::wellknown::XDS_CLUSTER.into();
        }
    }
    Resource::new(
        ward_snapshot::EXTENSION_CONFIG,
        WASM_FILTER,
        &TypedExtensionConfig {
            name: WASM_FILTER.to_string(),
            typed_config: Some(any(&wasm_config(module_path, configuration.to_string()))),
        },
    )
}

/// The name of the wasm filter in the outbound HTTP connection manager, and of its ECDS
/// resource.
pub const RETRY_BUDGET_FILTER: &str = "ward-retry-budget";

/// The outbound wasm filter's configuration for one sidecar: the retry budgets of the
/// destinations with a ServiceProfile.
pub(crate) fn retry_budget_extension_config(
    mesh: &Mesh,
    workload: &Workload,
    module_path: &str,
    outbound: &serde_json::Value,
) -> Resource {
    let configuration = serde_json::json!({
        "workload": workload.name,
        "namespace": workload.namespace,
        "identity": mesh.identity(workload).to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        "outbound": outbound,
    });
    let mut wasm = wasm_config(module_path, configuration.to_string());
    if let Some(plugin) = wasm.config.as_mut() {
        // Its own root context in the same VM (and the same shared data).
        plugin.name = RETRY_BUDGET_FILTER.to_string();
        plugin.root_id = RETRY_BUDGET_FILTER.to_string();
    }
    Resource::new(
        ward_snapshot::EXTENSION_CONFIG,
        RETRY_BUDGET_FILTER,
        &TypedExtensionConfig {
            name: RETRY_BUDGET_FILTER.to_string(),
            typed_config: Some(any(&wasm)),
        },
    )
}

/// An HTTP filter as the listener names it: its config, of `type_url`, comes over ECDS
/// under `name` (the wasm filters, `jwt_authn`).
pub(crate) fn discovered_filter(name: &str, type_url: String) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::ConfigDiscovery(
            ExtensionConfigSource {
                config_source: Some(ads_config_source()),
                type_urls: vec![type_url],
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// A wasm filter as the listener names it.
pub(crate) fn wasm_discovered_filter(name: &str) -> HttpFilter {
    discovered_filter(name, Wasm::type_url())
}

/// The `ward-authz` wasm filter, loaded from `module_path`, with a `wasm_authz::FilterConfig`
/// as JSON.
pub fn wasm_http_filter(module_path: &str, configuration: String) -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.wasm".to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&wasm_config(
            module_path,
            configuration,
        )))),
        ..Default::default()
    }
}

/// The `ward-authz` plugin: the module at `module_path`, fail closed, with `configuration`.
///
/// Failure policy `FAIL_RELOAD`: when the VM fails at run time (a panic), the request that
/// hit it and every request until a new VM is up are refused with 503, never passed on
/// unchecked; a new VM then serves (backoff from 1 s to 30 s between reloads). With
/// `FAIL_CLOSED` one request that makes the module panic would refuse all traffic until
/// the next config change. Envoy counts each reload (`wasm.<plugin>.vm_reload`), which
/// `wardctl status` shows.
fn wasm_config(module_path: &str, configuration: String) -> Wasm {
    Wasm {
        config: Some(PluginConfig {
            name: "ward-authz".to_string(),
            root_id: "ward-authz".to_string(),
            vm: Some(envoy_types::pb::envoy::extensions::wasm::v3::plugin_config::Vm::VmConfig(
                VmConfig {
                    vm_id: "ward-authz".to_string(),
                    runtime: "envoy.wasm.runtime.v8".to_string(),
                    code: Some(AsyncDataSource {
                        specifier: Some(
                            envoy_types::pb::envoy::config::core::v3::async_data_source::Specifier::Local(
                                DataSource {
                                    specifier: Some(data_source::Specifier::Filename(
                                        module_path.to_string(),
                                    )),
                                    ..Default::default()
                                },
                            ),
                        ),
                    }),
                    ..Default::default()
                },
            )),
            configuration: Some(any(&StringValue {
                value: configuration,
            })),
            // Fail closed: if the module fails, requests are refused, never let through.
            failure_policy: FailurePolicy::FailReload as i32,
            reload_config: Some(ReloadConfig {
                backoff: Some(BackoffStrategy {
                    base_interval: Some(duration_ms(1_000)),
                    max_interval: Some(duration_ms(30_000)),
                }),
            }),
            ..Default::default()
        }),
    }
}
