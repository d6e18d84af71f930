//! The operator's tooling, apart from the control plane: the local mesh runner behind
//! `wardctl up` (`runner`), the built-in stand-ins for the labs' container images (`apps`),
//! `wardctl check` (`check`), the benches (`bench`: xDS at scale, HTTP load, retry budgets),
//! and the loopback port picker the runner, the benches and the end-to-end tests share.
//! It links the control plane's crates it needs (config, identity, xds, ads) but not the
//! daemon, so it builds without kube-rs.

pub mod accept;
pub mod apps;
pub mod bench;
pub mod check;
pub mod loopback_port;
pub mod runner;
