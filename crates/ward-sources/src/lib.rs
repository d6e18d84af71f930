//! Where the mesh's inputs come from at run time, for the daemon and the local runner alike:
//! the config directory, watched with a debounce (`watch`), and the JWKS documents that
//! RequestAuthentications name by URI (`jwks`). Kubernetes discovery is the daemon's own
//! (it alone links kube-rs).

pub mod jwks;
pub mod watch;
