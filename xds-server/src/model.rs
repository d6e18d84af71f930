//! The resolved mesh model: what the loader (files today, the Kubernetes API later) produces
//! and what translation consumes. Pure data, no I/O; every value is already validated.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Where a resource came from, so later stages can still point at the user's file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceRef {
    pub file: String,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    /// SPIFFE trust domain, `cluster.local` unless MeshConfig says otherwise.
    pub trust_domain: String,
    /// Namespace whose policies apply mesh-wide (Istio's `istio-system`).
    pub root_namespace: String,
    pub namespaces: Vec<String>,
    pub service_accounts: Vec<ServiceAccount>,
    /// One per Deployment, sorted by (namespace, name).
    pub workloads: Vec<Workload>,
    /// Sorted by (namespace, name).
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub name: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub replicas: u32,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub containers: Vec<Container>,
    /// Instances (replicas), index 0..replicas, with their addresses.
    pub instances: Vec<Instance>,
    pub source: SourceRef,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: u16,
    /// `TCP` unless set.
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `<workload>-<index>`, like a pod name.
    pub name: String,
    pub index: u32,
    /// The sidecar's address: inbound listeners bind here on each container port.
    pub address: Ipv4Addr,
    /// The app's private address, reachable only through the sidecar.
    pub app_address: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    /// (namespace, name) of the workloads the selector matches.
    pub backends: Vec<(String, String)>,
    pub source: SourceRef,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    /// Resolved to a number (named targetPorts are looked up in the backends' containers).
    pub target_port: u16,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

impl Mesh {
    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` for a workload.
    pub fn identity(&self, workload: &Workload) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, workload.namespace, workload.service_account
        )
    }

    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Workload> {
        self.workloads
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
    }

    /// The node id a sidecar uses: `<instance>.<namespace>`, e.g. `exam-scheduler-0.default`.
    pub fn node_id(workload: &Workload, instance: &Instance) -> String {
        format!("{}.{}", instance.name, workload.namespace)
    }

    /// Finds the workload and instance behind a node id.
    pub fn instance_by_node_id(&self, node_id: &str) -> Option<(&Workload, &Instance)> {
        self.workloads.iter().find_map(|w| {
            w.instances
                .iter()
                .find(|i| Self::node_id(w, i) == node_id)
                .map(|i| (w, i))
        })
    }

    pub fn services_of<'a>(&'a self, workload: &'a Workload) -> impl Iterator<Item = &'a Service> {
        self.services.iter().filter(move |s| {
            s.backends
                .iter()
                .any(|(ns, n)| *ns == workload.namespace && *n == workload.name)
        })
    }

    /// Ports a workload's sidecar accepts traffic on: declared container ports and every
    /// targetPort of a Service that selects it (Kubernetes does not require the former).
    pub fn inbound_ports(&self, workload: &Workload) -> Vec<u16> {
        let mut ports: Vec<u16> = workload
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().map(|p| p.container_port))
            .chain(
                self.services_of(workload)
                    .flat_map(|s| s.ports.iter().map(|p| p.target_port)),
            )
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}
