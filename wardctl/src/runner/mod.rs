//! The local mesh runner behind `wardctl up`: one Envoy per workload instance, the apps
//! behind them, and xds-server configuring the Envoys, all on loopback addresses.

pub mod admin_client;
pub mod commands;
pub mod inspect;
pub mod no_mesh_proxy;
pub mod objects;
pub mod state;
pub mod supervisor;
pub mod tools;
pub mod traffic;
