//! Helpers for end-to-end tests that drive real xds-server, wardctl and Envoy processes.
