//! `ward.control.v1.KeyRefresh/UnknownKey`: a sidecar's wasm filter saw a token whose `kid`
//! the keys it was given lack, and asks xds-server to fetch the issuer's `jwksUri` again
//! (keys rotated at the issuer). Served on the xDS port, so on a TLS xDS port only proxies
//! with a mesh certificate reach it; fetches are rate-limited by the caller of
//! [`KeyRefreshService::new`].

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// The request the wasm filter encodes by hand (`wasm_authz::KeyRefresh::encode_request`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct UnknownKeyRequest {
    #[prost(string, tag = "1")]
    pub issuer: String,
    #[prost(string, tag = "2")]
    pub kid: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UnknownKeyResponse {
    /// True if a fetch was started (false: the key is already known, or a fetch ran
    /// moments ago).
    #[prost(bool, tag = "1")]
    pub fetching: bool,
}

/// Decides what to do for (issuer, kid): Ok(true) if a fetch was started.
pub type OnUnknownKey = Arc<dyn Fn(&str, &str) -> Result<bool, Status> + Send + Sync>;

#[derive(Clone)]
pub struct KeyRefreshService {
    on_unknown_key: OnUnknownKey,
}

impl KeyRefreshService {
    pub fn new(on_unknown_key: OnUnknownKey) -> Self {
        KeyRefreshService { on_unknown_key }
    }
}

impl NamedService for KeyRefreshService {
    const NAME: &'static str = wasm_authz::KEY_REFRESH_SERVICE;
}

struct UnknownKey(OnUnknownKey);

impl UnaryService<UnknownKeyRequest> for UnknownKey {
    type Response = UnknownKeyResponse;
    type Future = BoxFuture<Response<UnknownKeyResponse>, Status>;

    fn call(&mut self, request: Request<UnknownKeyRequest>) -> Self::Future {
        let on_unknown_key = self.0.clone();
        Box::pin(async move {
            let UnknownKeyRequest { issuer, kid } = request.into_inner();
            let fetching = on_unknown_key(&issuer, &kid)?;
            Ok(Response::new(UnknownKeyResponse { fetching }))
        })
    }
}

impl Service<http::Request<Body>> for KeyRefreshService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = format!(
            "/{}/{}",
            wasm_authz::KEY_REFRESH_SERVICE,
            wasm_authz::KEY_REFRESH_METHOD
        );
        let handler = UnknownKey(self.on_unknown_key.clone());
        Box::pin(async move {
            if request.uri().path() != method {
                return Ok(Status::unimplemented(request.uri().path().to_string()).into_http());
            }
            let mut grpc =
                Grpc::new(ProstCodec::<UnknownKeyResponse, UnknownKeyRequest>::default());
            Ok(grpc.unary(handler, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn decodes_what_the_wasm_filter_encodes() {
        let refresh = wasm_authz::KeyRefresh {
            cluster: "ward-xds".into(),
            issuer: "testing@secure.istio.io".into(),
            kid: "k".repeat(200),
        };
        let decoded = UnknownKeyRequest::decode(&refresh.encode_request()[..]).unwrap();
        assert_eq!(decoded.issuer, refresh.issuer);
        assert_eq!(decoded.kid, refresh.kid);
    }
}
