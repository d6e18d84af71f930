//! The ADS service on the wire: gRPC framing of requests and responses, without tonic's
//! generated server.
//!
//! Why by hand: tonic encodes every response into a buffer owned by the stream and never
//! shrinks it, so each connected proxy kept a buffer as large as the largest message it was
//! ever sent (a 1,000-service route configuration: ~0.5 MB per proxy). Here a response is a
//! list of byte pieces, most of them the resources' own encodings shared by every proxy
//! ([`Resource::delta_entry`]); the body hands them to h2 as they are, and nothing outlives
//! the frame that carried it.
//!
//! Requests are decoded here too ([`Requests`]): tonic's `Streaming` keeps a decode buffer as
//! large as the largest request the stream ever carried (an EDS subscription to 1,000
//! clusters: ~6 KB per proxy, kept for the life of the stream).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use http_body::Frame;
use prost::Message;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::Status;

use super::AdsServer;
use ward_snapshot::{Resource, RESPONSE_RESOURCES};

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Largest xDS request accepted.
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
/// Pieces smaller than this are copied together into one DATA frame; larger ones go to h2
/// as they are (shared, not copied).
const COALESCE_BELOW: usize = 4 * 1024;
/// Size of a frame made of coalesced small pieces.
const FRAME_BYTES: usize = 16 * 1024;

/// An encoded response message: its pieces concatenated are the protobuf encoding.
///
/// Protobuf lets a message be the concatenation of encodings of its parts (repeated fields
/// append), so the head (version, type URL, nonce, removals) is encoded per response and the
/// resources are appended as the entries they were encoded into once.
#[derive(Debug, Default)]
pub struct EncodedMessage {
    pieces: Vec<Bytes>,
    /// Small pieces waiting to become one piece.
    small: Vec<u8>,
    len: usize,
}

impl EncodedMessage {
    fn head(message: &impl Message) -> Self {
        let small = message.encode_to_vec();
        EncodedMessage {
            len: small.len(),
            small,
            pieces: Vec::new(),
        }
    }

    /// A delta response: the head without resources, then each resource's shared entry.
    pub fn delta<'r>(
        head: DeltaDiscoveryResponse,
        resources: impl IntoIterator<Item = &'r Resource>,
    ) -> Self {
        debug_assert!(head.resources.is_empty());
        let mut message = Self::head(&head);
        for resource in resources {
            message.push_shared(resource.delta_entry());
        }
        message.finish()
    }

    /// A state-of-the-world response: each resource is an `Any` of `resources`.
    pub fn sotw<'r>(
        head: DiscoveryResponse,
        resources: impl IntoIterator<Item = &'r Resource>,
    ) -> Self {
        use prost::encoding::{encode_key, encode_varint, WireType};
        debug_assert!(head.resources.is_empty());
        let mut message = Self::head(&head);
        for resource in resources {
            let any = resource.any_bytes();
            let mut key = Vec::with_capacity(6);
            encode_key(RESPONSE_RESOURCES, WireType::LengthDelimited, &mut key);
            encode_varint(any.len() as u64, &mut key);
            message.push_small(&key);
            message.push_shared(any);
        }
        message.finish()
    }

    fn push_small(&mut self, bytes: &[u8]) {
        self.small.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    fn push_shared(&mut self, bytes: Bytes) {
        self.len += bytes.len();
        if bytes.len() < COALESCE_BELOW {
            self.small.extend_from_slice(&bytes);
            if self.small.len() >= FRAME_BYTES {
                self.flush_small();
            }
            return;
        }
        self.flush_small();
        self.pieces.push(bytes);
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            self.pieces
                .push(Bytes::from(std::mem::take(&mut self.small)));
        }
    }

    fn finish(mut self) -> Self {
        self.flush_small();
        self
    }

    /// Length of the encoded message.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The gRPC frame: compression flag, big-endian length, then the message pieces.
    fn into_frame_pieces(self) -> impl Iterator<Item = Bytes> {
        let mut prefix = BytesMut::with_capacity(5);
        prefix.put_u8(0);
        prefix.put_u32(self.len as u32);
        std::iter::once(prefix.freeze()).chain(self.pieces)
    }
}

pub type ResponseSender = mpsc::Sender<Result<EncodedMessage, Status>>;

/// The streaming response body: gRPC messages from a stream task, then the trailers that
/// end the call (`grpc-status` 0 when the task ends, the task's status if it fails).
struct ResponseBody {
    messages: mpsc::Receiver<Result<EncodedMessage, Status>>,
    pending: VecDeque<Bytes>,
    done: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(piece) = self.pending.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let status = match self.messages.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(message))) => {
                let mut pieces = message.into_frame_pieces();
                let first = pieces.next().expect("a frame has a prefix");
                self.pending.extend(pieces);
                return Poll::Ready(Some(Ok(Frame::data(first))));
            }
            Poll::Ready(Some(Err(status))) => status,
            Poll::Ready(None) => Status::ok(""),
        };
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(e) = status.add_header(&mut trailers) {
            tracing::warn!(error = %e, "could not encode the stream's final status");
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_empty()
    }
}

/// The ADS gRPC service, to add to a tonic server.
#[derive(Clone, Debug)]
pub struct AdsService {
    server: AdsServer,
}

impl AdsService {
    pub fn new(server: AdsServer) -> Self {
        AdsService { server }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

/// The gRPC messages of a request body, decoded as `T`.
///
/// Between messages nothing is kept: the buffer is released once it holds no partial
/// message, so a stream costs nothing for the requests it has read. Requests are small and
/// rare (ACKs, subscription changes), so allocating per request costs little.
pub struct Requests<T> {
    body: Body,
    buffer: BytesMut,
    decodes: std::marker::PhantomData<fn() -> T>,
}

/// gRPC's message prefix: a compression flag and a big-endian length.
const MESSAGE_PREFIX_BYTES: usize = 5;

impl<T: Message + Default> Requests<T> {
    pub fn new(body: Body) -> Self {
        Requests {
            body,
            buffer: BytesMut::new(),
            decodes: std::marker::PhantomData,
        }
    }

    /// The next request; None once the client has ended its side of the stream.
    ///
    /// Cancel-safe (used in `select!`): bytes read are kept in `self` before any other await.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        use http_body_util::BodyExt;
        loop {
            if let Some(message) = self.decode_buffered()? {
                return Ok(Some(message));
            }
            match self.body.frame().await {
                None if self.buffer.is_empty() => return Ok(None),
                None => {
                    return Err(Status::invalid_argument(
                        "the request stream ended inside a message",
                    ))
                }
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// A whole message from the buffer, if it holds one.
    fn decode_buffered(&mut self) -> Result<Option<T>, Status> {
        let Some(prefix) = self.buffer.get(..MESSAGE_PREFIX_BYTES) else {
            return Ok(None);
        };
        if prefix[0] != 0 {
            return Err(Status::unimplemented(
                "compressed xDS requests are not supported",
            ));
        }
        let len = u32::from_be_bytes(prefix[1..].try_into().expect("four bytes")) as usize;
        if len > MAX_REQUEST_BYTES {
            return Err(Status::resource_exhausted(format!(
                "an xDS request of {len} bytes; at most {MAX_REQUEST_BYTES} are accepted"
            )));
        }
        let whole = MESSAGE_PREFIX_BYTES + len;
        if self.buffer.len() < whole {
            self.buffer.reserve(whole - self.buffer.len());
            return Ok(None);
        }
        let message = T::decode(&self.buffer[MESSAGE_PREFIX_BYTES..whole])
            .map_err(|e| Status::invalid_argument(format!("decoding an xDS request: {e}")))?;
        if self.buffer.len() == whole {
            self.buffer = BytesMut::new();
        } else {
            self.buffer.advance(whole);
        }
        Ok(Some(message))
    }
}

impl Service<http::Request<Body>> for AdsService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let path = parts.uri.path().to_string();
            let drain = parts
                .extensions
                .get::<crate::drain::ConnectionDrain>()
                .map(|d| d.0.clone());
            let request = tonic::Request::from_http(http::Request::from_parts(parts, ()));
            let (tx, rx) = mpsc::channel(16);
            let opened = match path.as_str() {
                SOTW_PATH => {
                    server
                        .open::<crate::sotw::SotwStream>(request, Requests::new(body), tx, drain)
                        .await
                }
                DELTA_PATH => {
                    server
                        .open::<crate::delta::DeltaStream>(request, Requests::new(body), tx, drain)
                        .await
                }
                other => Err(Status::unimplemented(format!("no such method: {other}"))),
            };
            Ok(match opened {
                Ok(()) => {
                    let body = ResponseBody {
                        messages: rx,
                        pending: VecDeque::new(),
                        done: false,
                    };
                    http::Response::builder()
                        .header(http::header::CONTENT_TYPE, "application/grpc")
                        .body(Body::new(body))
                        .expect("a valid response head")
                }
                Err(status) => status.into_http(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use ward_snapshot::CLUSTER;

    fn cluster(name: &str, padding: usize) -> Resource {
        let cluster = Cluster {
            name: name.to_string(),
            alt_stat_name: "x".repeat(padding),
            ..Default::default()
        };
        Resource::new(CLUSTER, name, &cluster)
    }

    fn concatenated(message: EncodedMessage) -> Vec<u8> {
        let pieces: Vec<Bytes> = message.into_frame_pieces().collect();
        let all: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(all[0], 0, "not compressed");
        let len = u32::from_be_bytes(all[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, all.len() - 5, "the prefix gives the message length");
        all[5..].to_vec()
    }

    #[test]
    fn pieced_responses_decode_as_the_messages_they_stand_for() {
        // Small and large resources, so both coalesced and shared pieces occur.
        let resources = [
            cluster("a", 10),
            cluster("b", 3 * COALESCE_BELOW),
            cluster("c", 100),
        ];
        let delta = EncodedMessage::delta(
            DeltaDiscoveryResponse {
                system_version_info: "v1".into(),
                type_url: CLUSTER.into(),
                nonce: "7".into(),
                removed_resources: vec!["gone".into()],
                ..Default::default()
            },
            &resources,
        );
        let decoded = DeltaDiscoveryResponse::decode(&concatenated(delta)[..]).unwrap();
        assert_eq!(decoded.nonce, "7");
        assert_eq!(decoded.removed_resources, vec!["gone".to_string()]);
        let names: Vec<_> = decoded.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        for (sent, resource) in decoded.resources.iter().zip(&resources) {
            assert_eq!(sent.version, resource.version);
            assert_eq!(sent.resource.as_ref(), Some(&resource.any()));
        }

        let sotw = EncodedMessage::sotw(
            DiscoveryResponse {
                version_info: "v1".into(),
                type_url: CLUSTER.into(),
                nonce: "8".into(),
                ..Default::default()
            },
            &resources,
        );
        let decoded = DiscoveryResponse::decode(&concatenated(sotw)[..]).unwrap();
        assert_eq!(decoded.version_info, "v1");
        let clusters: Vec<_> = decoded
            .resources
            .iter()
            .map(|any| Cluster::decode(&any.value[..]).unwrap().name)
            .collect();
        assert_eq!(clusters, ["a", "b", "c"]);
    }

    /// A request body delivered in the given pieces (as HTTP/2 DATA frames would cut it).
    fn body_of(pieces: Vec<Vec<u8>>) -> Body {
        let frames = pieces
            .into_iter()
            .map(|p| Ok::<_, Status>(Frame::data(Bytes::from(p))));
        Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames.collect::<Vec<_>>(),
        )))
    }

    fn framed(message: &impl Message) -> Vec<u8> {
        let encoded = message.encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        framed.extend_from_slice(&encoded);
        framed
    }

    fn ack(nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            response_nonce: nonce.into(),
            resource_names_subscribe: (0..200).map(|i| format!("cluster-{i}")).collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn requests_decode_across_frames_and_keep_no_buffer_between_them() {
        let (one, two, three) = (framed(&ack("1")), framed(&ack("2")), framed(&ack("3")));
        // One message cut in three frames, then two messages and a half in one frame.
        let mut both = two.clone();
        both.extend_from_slice(&three[..7]);
        let pieces = vec![
            one[..3].to_vec(),
            one[3..100].to_vec(),
            one[100..].to_vec(),
            both,
            three[7..].to_vec(),
        ];
        let mut requests = Requests::<DeltaDiscoveryRequest>::new(body_of(pieces));
        for nonce in ["1", "2", "3"] {
            let request = requests.message().await.unwrap().expect("a request");
            assert_eq!(request, ack(nonce));
            if nonce != "2" {
                assert_eq!(requests.buffer.capacity(), 0, "nothing kept after {nonce}");
            }
        }
        assert!(requests.message().await.unwrap().is_none(), "the end");
    }

    #[tokio::test]
    async fn malformed_requests_end_the_stream_with_a_status() {
        let mut compressed = framed(&ack("1"));
        compressed[0] = 1;
        let mut too_large = vec![0];
        too_large.extend_from_slice(&(MAX_REQUEST_BYTES as u32 + 1).to_be_bytes());
        let cut = framed(&ack("1"))[..20].to_vec();
        for (pieces, code, words) in [
            (vec![compressed], tonic::Code::Unimplemented, "compressed"),
            (vec![too_large], tonic::Code::ResourceExhausted, "at most"),
            (
                vec![cut],
                tonic::Code::InvalidArgument,
                "ended inside a message",
            ),
            (
                vec![vec![0, 0, 0, 0, 2, 0xff, 0xff]],
                tonic::Code::InvalidArgument,
                "decoding",
            ),
        ] {
            let mut requests = Requests::<DeltaDiscoveryRequest>::new(body_of(pieces));
            let status = requests.message().await.unwrap_err();
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(words), "{status:?}");
        }
    }

    #[test]
    fn large_resources_are_shared_not_copied() {
        let big = cluster("big", 3 * COALESCE_BELOW);
        let message = EncodedMessage::delta(DeltaDiscoveryResponse::default(), [&big]);
        let entry = big.delta_entry();
        assert!(
            message
                .pieces
                .iter()
                .any(|p| p.as_ptr() == entry.as_ptr() && p.len() == entry.len()),
            "the resource's own bytes are a piece of the response"
        );
    }
}
