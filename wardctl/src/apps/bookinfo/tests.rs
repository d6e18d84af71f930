//! The Bookinfo stand-ins wired together on loopback ports: through a recording test proxy
//! (standing in for the sidecar that `http_proxy` names, with Istio-style delay and abort
//! faults), and directly by the apps' own host and port env variables.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::outbound::{Outbound, Timeouts};
use super::*;
use crate::apps::tests::env;
use crate::apps::{image_repository, respond, stand_in_for, StandIn};

/// The app for `image` with `HOSTNAME` and `http_proxy` as the runner sets them.
fn app(image: &str, container_env: &[(&str, &str)], pod: &str, proxy: Option<SocketAddr>) -> App {
    let process_env = |name: &str| match name {
        "HOSTNAME" => Some(pod.to_string()),
        "http_proxy" => proxy.map(|p| format!("http://{p}")),
        _ => None,
    };
    App::for_image(&image_repository(image), &env(container_env), &process_env)
        .unwrap()
        .expect("a Bookinfo image")
}

async fn start(app: App) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(serve(app, listener));
    address
}

/// A request the proxy saw.
#[derive(Debug, Clone)]
struct Seen {
    /// `details:9080`, from the absolute-form target.
    authority: String,
    path: String,
    host: String,
    headers: HeaderMap,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Delay(Duration),
    Abort(u16),
}

/// The sidecar of the tests: takes absolute-form requests, records them, applies a fault if
/// one is set for the destination, and forwards to the service's loopback address.
#[derive(Default)]
struct Proxy {
    routes: Mutex<HashMap<String, SocketAddr>>,
    faults: Mutex<HashMap<String, Fault>>,
    seen: Mutex<Vec<Seen>>,
}

impl Proxy {
    fn seen(&self, authority: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.authority == authority)
            .cloned()
            .collect()
    }

    fn fault(&self, authority: &str, fault: Fault) {
        self.faults
            .lock()
            .unwrap()
            .insert(authority.to_string(), fault);
    }

    async fn forward(&self, request: Request<Incoming>) -> HttpResponse {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let mut headers = request.headers().clone();
        let host = headers
            .remove(hyper::header::HOST)
            .and_then(|h| h.to_str().ok().map(str::to_string))
            .unwrap_or_default();
        self.seen.lock().unwrap().push(Seen {
            authority: authority.clone(),
            path: path.clone(),
            host,
            headers: headers.clone(),
        });
        let fault = self.faults.lock().unwrap().get(&authority).copied();
        match fault {
            Some(Fault::Abort(code)) => {
                return respond(
                    StatusCode::from_u16(code).unwrap(),
                    "text/plain",
                    "fault filter abort",
                )
            }
            Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
            None => {}
        }
        let Some(target) = self.routes.lock().unwrap().get(&authority).copied() else {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "no healthy upstream",
            );
        };
        let url = format!("http://{target}{path}");
        match Outbound::default()
            .get(&url, &headers, Timeouts::both(Duration::from_secs(30)))
            .await
        {
            Ok(fetched) => respond(fetched.status, "application/json", fetched.body),
            Err(_) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "upstream reset",
            ),
        }
    }
}

async fn start_proxy() -> (Arc<Proxy>, SocketAddr) {
    let proxy = Arc::new(Proxy::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let handler = {
        let proxy = proxy.clone();
        move |request: Request<Incoming>| {
            let proxy = proxy.clone();
            async move { proxy.forward(request).await }
        }
    };
    tokio::spawn(crate::apps::serve_http(listener, handler));
    (proxy, address)
}

/// Bookinfo with one reviews version, every call through the proxy.
struct Mesh {
    proxy: Arc<Proxy>,
    productpage: SocketAddr,
    reviews: SocketAddr,
}

async fn mesh(reviews_version: &str) -> Mesh {
    let (proxy, proxy_address) = start_proxy().await;
    let via = Some(proxy_address);
    let details = start(app(
        "registry.istio.io/release/examples-bookinfo-details-v1",
        &[],
        "details-v1-pod",
        via,
    ))
    .await;
    let ratings = start(app(
        "docker.io/istio/examples-bookinfo-ratings-v1:1.20.3",
        &[],
        "ratings-v1-pod",
        via,
    ))
    .await;
    let reviews = start(app(
        &format!("istio/examples-bookinfo-reviews-{reviews_version}"),
        &[("LOG_DIR", "/tmp/logs")],
        &format!("reviews-{reviews_version}-pod"),
        via,
    ))
    .await;
    let productpage = start(app(
        "istio/examples-bookinfo-productpage-v1",
        &[],
        "productpage-v1-pod",
        via,
    ))
    .await;
    {
        let mut routes = proxy.routes.lock().unwrap();
        routes.insert("details:9080".into(), details);
        routes.insert("ratings:9080".into(), ratings);
        routes.insert("reviews:9080".into(), reviews);
    }
    Mesh {
        proxy,
        productpage,
        reviews,
    }
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.1 request on a fresh connection, read until the server closes it.
async fn call(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: bookinfo\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 20 s")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    Answer {
        status: head.split(' ').nth(1).unwrap().parse().unwrap(),
        head: head.to_string(),
        body: body.to_string(),
    }
}

async fn get(address: SocketAddr, path: &str) -> Answer {
    call(address, "GET", path, &[], "").await
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).map(|v| v.to_str().unwrap())
}

const STAR: &str = r#"id="glyphicon glyphicon-star""#;
const DETAILS_JSON: &str = r#"{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"}"#;

#[test]
fn the_bookinfo_yaml_images_have_stand_ins() {
    let listen: SocketAddr = "127.0.0.9:9080".parse().unwrap();
    let none: &[String] = &[];
    // The images of samples/bookinfo/platform/kube/bookinfo.yaml, and the other registry.
    for image in [
        "registry.istio.io/release/examples-bookinfo-details-v1:1.20.3",
        "registry.istio.io/release/examples-bookinfo-ratings-v1:1.20.3",
        "registry.istio.io/release/examples-bookinfo-reviews-v1:1.20.3",
        "registry.istio.io/release/examples-bookinfo-reviews-v2:1.20.3",
        "registry.istio.io/release/examples-bookinfo-reviews-v3:1.20.3",
        "registry.istio.io/release/examples-bookinfo-productpage-v1:1.20.3",
        "docker.io/istio/examples-bookinfo-reviews-v2:1.18.0",
        "istio/examples-bookinfo-productpage-v1",
    ] {
        let stand_in = stand_in_for(image, none, none, &env(&[("LOG_DIR", "/tmp/logs")]), listen);
        assert!(
            matches!(stand_in, Ok(Some(StandIn::Bookinfo { listen: l, .. })) if l == listen),
            "{image}: {stand_in:?}"
        );
    }
    for image in [
        "istio/examples-bookinfo-mongodb:1.20.3",
        "istio/examples-bookinfo-details-v2:1.20.3",
        "istio/examples-bookinfo-reviews-v4",
    ] {
        assert_eq!(
            stand_in_for(image, none, none, &[], listen).unwrap(),
            None,
            "{image}"
        );
    }
}

#[test]
fn reviews_versions_and_env_overrides() {
    let proxy: SocketAddr = "10.0.0.7:15001".parse().unwrap();
    let reviews = |image: &str, container_env: &[(&str, &str)]| match app(
        image,
        container_env,
        "reviews-pod",
        Some(proxy),
    ) {
        App::Reviews(settings) => settings,
        other => panic!("{other:?}"),
    };
    let v1 = reviews("istio/examples-bookinfo-reviews-v1", &[]);
    assert!(!v1.ratings_enabled);
    let v2 = reviews("istio/examples-bookinfo-reviews-v2", &[]);
    assert!(v2.ratings_enabled);
    assert_eq!(v2.star_color, "black");
    assert_eq!(v2.ratings_service, "http://ratings:9080/ratings");
    assert_eq!(v2.pod_name.as_deref(), Some("reviews-pod"));
    assert_eq!(v2.cluster_name, None);
    assert_eq!(v2.outbound.proxy.as_deref(), Some("10.0.0.7:15001"));
    let v3 = reviews("istio/examples-bookinfo-reviews-v3", &[]);
    assert_eq!(v3.star_color, "red");
    let custom = reviews(
        "istio/examples-bookinfo-reviews-v1",
        &[
            ("ENABLE_RATINGS", "TRUE"),
            ("STAR_COLOR", "blue"),
            ("SERVICES_DOMAIN", "svc"),
            ("RATINGS_HOSTNAME", "ratings-canary"),
            ("RATINGS_SERVICE_PORT", "8080"),
            ("CLUSTER_NAME", "east"),
            ("HOSTNAME", "from-the-pod-spec"),
        ],
    );
    assert!(custom.ratings_enabled);
    assert_eq!(custom.star_color, "blue");
    assert_eq!(
        custom.ratings_service,
        "http://ratings-canary.svc:8080/ratings"
    );
    assert_eq!(custom.cluster_name.as_deref(), Some("east"));
    assert_eq!(custom.pod_name.as_deref(), Some("from-the-pod-spec"));
    let off = reviews(
        "istio/examples-bookinfo-reviews-v3",
        &[("ENABLE_RATINGS", "yes")],
    );
    assert!(!off.ratings_enabled, "Boolean.valueOf(\"yes\") is false");
}

#[test]
fn unsupported_configurations_fail_loudly() {
    let fails = |image: &str, pairs: &[(&str, &str)]| {
        App::for_image(image, &env(pairs), &|_: &str| None).unwrap_err()
    };
    assert!(matches!(
        fails(
            "istio/examples-bookinfo-ratings-v1",
            &[("SERVICE_VERSION", "v2")]
        ),
        AppError::BadEnv {
            name: "SERVICE_VERSION",
            ..
        }
    ));
    assert!(matches!(
        fails(
            "istio/examples-bookinfo-details-v1",
            &[("ENABLE_EXTERNAL_BOOK_SERVICE", "true")]
        ),
        AppError::BadEnv {
            name: "ENABLE_EXTERNAL_BOOK_SERVICE",
            ..
        }
    ));
}

#[tokio::test]
async fn details_answers_like_webrick() {
    let details = start(App::Details).await;
    let answer = get(details, "/details/0").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, DETAILS_JSON);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let answer = get(details, "/details/0x10").await;
    assert!(answer.body.starts_with(r#"{"id":16,"#), "{}", answer.body);
    for path in ["/details/abc", "/details", "/details/1.5"] {
        let answer = get(details, path).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (400, r#"{"error":"please provide numeric product id"}"#),
            "{path}"
        );
    }
    let answer = get(details, "/health").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"status":"Details is healthy"}"#)
    );
    for path in ["/", "/detailsx/0", "/ratings/0"] {
        assert_eq!(get(details, path).await.status, 404, "{path}");
    }
}

#[tokio::test]
async fn ratings_get_post_and_health() {
    let ratings = start(App::Ratings(ratings::Settings {
        mode: ratings::Mode::Normal,
    }))
    .await;
    let answer = get(ratings, "/ratings/0").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#)
    );
    assert_eq!(
        get(ratings, "/ratings/12?x=1").await.body,
        r#"{"id":12,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#
    );
    let posted = call(
        ratings,
        "POST",
        "/ratings/1",
        &[("Content-Type", "application/json")],
        r#"{"Reviewer1": 1, "Reviewer2": 2}"#,
    )
    .await;
    assert_eq!(
        (posted.status, posted.body.as_str()),
        (200, r#"{"id":1,"ratings":{"Reviewer1":1,"Reviewer2":2}}"#)
    );
    assert_eq!(get(ratings, "/ratings/1").await.body, posted.body);
    assert_eq!(
        get(ratings, "/ratings/0").await.body,
        r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#,
        "other ids keep the defaults"
    );
    let answer = get(ratings, "/ratings/abc").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (400, r#"{"error":"please provide numeric product ID"}"#)
    );
    let answer = call(ratings, "POST", "/ratings/1", &[], "{not json").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (400, r#"{"error":"please provide valid ratings JSON"}"#)
    );
    let answer = get(ratings, "/health").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"status":"Ratings is healthy"}"#)
    );
    let answer = get(ratings, "/ratings").await;
    assert_eq!((answer.status, answer.body.as_str()), (404, ""));
}

#[tokio::test]
async fn ratings_faulty_mode_fails_about_half() {
    let ratings = start(App::Ratings(ratings::Settings {
        mode: ratings::Mode::Faulty,
    }))
    .await;
    let mut failures = 0;
    for _ in 0..100 {
        let answer = get(ratings, "/ratings/0").await;
        if answer.status == 503 {
            assert_eq!(answer.body, r#"{"error":"Service unavailable"}"#);
            failures += 1;
        }
    }
    assert!((15..=85).contains(&failures), "{failures} of 100");
}

#[tokio::test]
async fn reviews_json_per_version() {
    let v1 = mesh("v1").await;
    let answer = get(v1.reviews, "/reviews/0").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        r#"{"id": "0","podname": "reviews-v1-pod","clustername": "null","reviews": [{  "reviewer": "Reviewer1",  "text": "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"},{  "reviewer": "Reviewer2",  "text": "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare."}]}"#
    );
    assert!(
        v1.proxy.seen("ratings:9080").is_empty(),
        "v1 never calls ratings"
    );

    let v3 = mesh("v3").await;
    let answer = get(v3.reviews, "/reviews/0").await;
    let parsed: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(parsed["podname"], "reviews-v3-pod");
    assert_eq!(
        parsed["reviews"][0]["rating"],
        serde_json::json!({"stars": 5, "color": "red"})
    );
    assert_eq!(
        parsed["reviews"][1]["rating"],
        serde_json::json!({"stars": 4, "color": "red"})
    );
    let seen = v3.proxy.seen("ratings:9080");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/ratings/0");
    assert_eq!(seen[0].host, "ratings:9080");
    assert_eq!(header(&seen[0], "accept"), Some("application/json"));

    for (path, status) in [
        ("/health", 200),
        ("/reviews/abc", 404),
        ("/reviews/99999999999", 404),
        ("/", 404),
    ] {
        assert_eq!(get(v3.reviews, path).await.status, status, "{path}");
    }
    assert_eq!(
        get(v3.reviews, "/health").await.body,
        r#"{"status": "Reviews is healthy"}"#
    );
}

#[tokio::test]
async fn product_page_per_reviews_version() {
    for (version, stars, color) in [
        ("v1", 0, None),
        ("v2", 9, Some("black")),
        ("v3", 9, Some("red")),
    ] {
        let mesh = mesh(version).await;
        let page = get(mesh.productpage, "/productpage?u=normal").await;
        assert_eq!(page.status, 200, "{version}");
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let body = &page.body;
        assert!(body.contains("<title>Simple Bookstore App</title>"));
        assert!(body.contains("The Comedy of Errors"));
        assert!(
            body.contains("<b>William Shakespeare's</b>"),
            "unescaped HTML"
        );
        assert!(body.contains("Book Details"));
        for value in ["1234567890", "PublisherA", "200", "paperback", "English"] {
            assert!(
                body.contains(&format!("<td>{value}</td>")),
                "{version}: {value}"
            );
        }
        assert!(body.contains("Book Reviews"));
        assert!(body.contains("An extremely entertaining play by Shakespeare."));
        assert!(body.contains("Reviewer2"));
        assert!(
            body.contains(&format!("Reviews served by: reviews-{version}-pod")),
            "{version}"
        );
        assert!(!body.contains("on cluster"), "no CLUSTER_NAME");
        assert_eq!(body.matches(STAR).count(), stars, "{version}");
        match color {
            Some(color) => assert!(body.contains(&format!("text-{color}-500")), "{version}"),
            None => assert!(!body.contains("text-black-500") && !body.contains("text-red-500")),
        }
        assert!(body.contains("Sign in"));
        assert!(!body.contains("Sign out"));
        assert!(!body.contains("unavailable"), "{version}");
    }
}

#[tokio::test]
async fn login_makes_end_user_flow_and_logout_ends_it() {
    let mesh = mesh("v2").await;
    let login = call(
        mesh.productpage,
        "POST",
        "/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Referer", "http://bookinfo/productpage"),
        ],
        "username=jason&passwd=whatever",
    )
    .await;
    assert_eq!(login.status, 302);
    assert_eq!(
        login.header("location"),
        Some("http://bookinfo/productpage")
    );
    let set_cookie = login.header("set-cookie").expect("a session cookie");
    assert!(set_cookie.ends_with("; HttpOnly; Path=/"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("session="), "{cookie}");

    let page = call(
        mesh.productpage,
        "GET",
        "/productpage",
        &[("Cookie", &cookie)],
        "",
    )
    .await;
    assert!(page.body.contains(">jason</p>"), "the user's name");
    assert!(page.body.contains("Sign out"));
    assert_eq!(page.header("vary"), Some("Cookie"));
    for authority in ["details:9080", "reviews:9080", "ratings:9080"] {
        let seen = mesh.proxy.seen(authority);
        assert_eq!(seen.len(), 1, "{authority}");
        assert_eq!(header(&seen[0], "end-user"), Some("jason"), "{authority}");
        // The cookie goes along too, as in the real list.
        assert_eq!(
            header(&seen[0], "cookie"),
            Some(cookie.as_str()),
            "{authority}"
        );
    }

    let logout = call(
        mesh.productpage,
        "GET",
        "/logout",
        &[
            ("Cookie", &cookie),
            ("Referer", "http://bookinfo/productpage"),
        ],
        "",
    )
    .await;
    assert_eq!(logout.status, 302);
    assert_eq!(
        logout.header("location"),
        Some("http://bookinfo/productpage")
    );
    assert_eq!(
        logout.header("set-cookie"),
        Some("session=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; HttpOnly; Path=/")
    );
    let page = call(
        mesh.productpage,
        "GET",
        "/productpage",
        &[("Cookie", &cookie)],
        "",
    )
    .await;
    assert!(!page.body.contains("jason"));
    assert!(page.body.contains("Sign in"));
    let seen = mesh.proxy.seen("details:9080");
    assert_eq!(seen.len(), 2);
    assert_eq!(header(&seen[1], "end-user"), None, "logged out");

    // Without a Referer the stand-in goes back to the page; a GET login is refused.
    let login = call(
        mesh.productpage,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "username=tester",
    )
    .await;
    assert_eq!(login.header("location"), Some("/productpage"));
    let refused = get(mesh.productpage, "/login").await;
    assert_eq!(refused.status, 405);
    assert_eq!(refused.header("allow"), Some("OPTIONS, POST"));
}

#[tokio::test]
async fn trace_headers_propagate_like_the_real_apps() {
    let mesh = mesh("v3").await;
    let page = call(
        mesh.productpage,
        "GET",
        "/productpage",
        &[
            ("x-request-id", "34eeb41d-d267-9e49-8b84-dde403fc5b72"),
            ("x-b3-traceid", "80f198ee56343ba8"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
            ("x-b3-sampled", "1"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("sw8", "40c7fdf104e3de67"),
            ("user-agent", "curl/8.10.1"),
            ("end-user", "spoofed"),
            ("x-custom", "not forwarded"),
        ],
        "",
    )
    .await;
    assert_eq!(page.status, 200);
    let details = &mesh.proxy.seen("details:9080")[0];
    let reviews = &mesh.proxy.seen("reviews:9080")[0];
    let ratings = &mesh.proxy.seen("ratings:9080")[0];
    assert_eq!(details.host, "details:9080");
    assert_eq!(details.path, "/details/0");
    assert_eq!(reviews.path, "/reviews/0");
    for seen in [details, reviews, ratings] {
        let who = &seen.authority;
        assert_eq!(
            header(seen, "x-request-id"),
            Some("34eeb41d-d267-9e49-8b84-dde403fc5b72"),
            "{who}"
        );
        // OpenTelemetry writes the 64-bit trace id as 128 bits.
        assert_eq!(
            header(seen, "x-b3-traceid"),
            Some("000000000000000080f198ee56343ba8"),
            "{who}"
        );
        assert_eq!(
            header(seen, "x-b3-spanid"),
            Some("e457b5a2e4d86bd1"),
            "{who}"
        );
        assert_eq!(header(seen, "x-b3-sampled"), Some("1"), "{who}");
        assert_eq!(header(seen, "x-b3-parentspanid"), None, "{who}");
        assert!(header(seen, "traceparent").is_some(), "{who}");
        assert_eq!(
            header(seen, "tracestate"),
            Some("congo=t61rcWkgMzE"),
            "{who}"
        );
        assert_eq!(header(seen, "sw8"), Some("40c7fdf104e3de67"), "{who}");
        assert_eq!(header(seen, "user-agent"), Some("curl/8.10.1"), "{who}");
        assert_eq!(
            header(seen, "end-user"),
            None,
            "{who}: not from the request"
        );
        assert_eq!(header(seen, "x-custom"), None, "{who}");
    }

    // Without a User-Agent, `requests`' own; and no B3 headers are made up.
    get(mesh.productpage, "/productpage").await;
    let details = &mesh.proxy.seen("details:9080")[1];
    assert_eq!(
        header(details, "user-agent"),
        Some("python-requests/2.32.3")
    );
    assert_eq!(header(details, "x-b3-traceid"), None);
    assert_eq!(header(details, "x-request-id"), None);
}

#[tokio::test]
async fn unavailable_services_show_the_real_texts() {
    let mesh = mesh("v2").await;
    mesh.proxy.fault("ratings:9080", Fault::Abort(500));
    let page = get(mesh.productpage, "/productpage").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.body
            .matches("Ratings service is currently unavailable")
            .count(),
        2
    );
    assert_eq!(page.body.matches(STAR).count(), 0);
    assert!(page.body.contains("Book Details"));

    mesh.proxy.fault("details:9080", Fault::Abort(503));
    mesh.proxy.fault("reviews:9080", Fault::Abort(503));
    let page = get(mesh.productpage, "/productpage").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Error fetching product details"));
    assert!(page
        .body
        .contains("Sorry, product details are currently unavailable for this book."));
    assert!(page.body.contains("Error fetching product reviews"));
    assert!(page
        .body
        .contains("Sorry, product reviews are currently unavailable for this book."));
    assert_eq!(
        mesh.proxy.seen("details:9080").len(),
        2,
        "details: no retry"
    );
    assert_eq!(
        mesh.proxy.seen("reviews:9080").len(),
        3,
        "reviews: one retry"
    );

    let api = get(mesh.productpage, "/api/v1/products/0").await;
    assert_eq!(api.status, 503, "the upstream's status");
    assert_eq!(
        api.body,
        r#"{"error": "Sorry, product details are currently unavailable for this book."}"#
    );
}

#[tokio::test]
async fn a_service_nobody_listens_on_is_unavailable() {
    // Direct connections (no proxy), to ports that refuse.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port().to_string();
    drop(closed);
    let productpage = start(app(
        "istio/examples-bookinfo-productpage-v1",
        &[
            ("DETAILS_HOSTNAME", "127.0.0.1"),
            ("DETAILS_SERVICE_PORT", &port),
            ("REVIEWS_HOSTNAME", "127.0.0.1"),
            ("REVIEWS_SERVICE_PORT", &port),
        ],
        "productpage",
        None,
    ))
    .await;
    let page = get(productpage, "/productpage").await;
    assert_eq!(page.status, 200);
    assert!(page
        .body
        .contains("Sorry, product details are currently unavailable for this book."));
    assert!(page
        .body
        .contains("Sorry, product reviews are currently unavailable for this book."));
}

#[tokio::test]
async fn wired_directly_by_env_without_a_proxy() {
    let details = start(app("istio/examples-bookinfo-details-v1", &[], "d", None)).await;
    let ratings = start(app("istio/examples-bookinfo-ratings-v1", &[], "r", None)).await;
    let ratings_port = ratings.port().to_string();
    let reviews = start(app(
        "istio/examples-bookinfo-reviews-v3",
        &[
            ("RATINGS_HOSTNAME", "127.0.0.1"),
            ("RATINGS_SERVICE_PORT", &ratings_port),
        ],
        "reviews-v3-direct",
        None,
    ))
    .await;
    let (details_port, reviews_port) = (details.port().to_string(), reviews.port().to_string());
    let productpage = start(app(
        "istio/examples-bookinfo-productpage-v1",
        &[
            ("DETAILS_HOSTNAME", "127.0.0.1"),
            ("DETAILS_SERVICE_PORT", &details_port),
            ("REVIEWS_HOSTNAME", "127.0.0.1"),
            ("REVIEWS_SERVICE_PORT", &reviews_port),
        ],
        "productpage",
        None,
    ))
    .await;
    let page = get(productpage, "/productpage").await;
    assert!(page.body.contains("<td>PublisherA</td>"));
    assert!(page.body.contains("Reviews served by: reviews-v3-direct"));
    assert_eq!(page.body.matches(STAR).count(), 9);
    assert!(page.body.contains("text-red-500"));
}

#[tokio::test]
async fn api_index_health_and_errors() {
    let mesh = mesh("v2").await;
    let products = get(mesh.productpage, "/api/v1/products").await;
    assert_eq!(products.header("content-type"), Some("application/json"));
    assert!(products
        .body
        .starts_with(r#"[{"id": 0, "title": "The Comedy of Errors", "descriptionHtml": "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: "#));

    let product = get(mesh.productpage, "/api/v1/products/0").await;
    assert_eq!(product.status, 200);
    assert_eq!(
        product.body,
        r#"{"id": 0, "author": "William Shakespeare", "year": 1595, "type": "paperback", "pages": 200, "publisher": "PublisherA", "language": "English", "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"}"#,
        "details' key order, Python's separators"
    );
    let ratings = get(mesh.productpage, "/api/v1/products/0/ratings").await;
    assert_eq!(
        ratings.body,
        r#"{"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}"#
    );
    let reviews = get(mesh.productpage, "/api/v1/products/0/reviews").await;
    assert!(reviews
        .body
        .starts_with(r#"{"id": "0", "podname": "reviews-v2-pod", "clustername": "null", "reviews": [{"reviewer": "Reviewer1", "#));
    assert!(reviews
        .body
        .contains(r#""rating": {"stars": 5, "color": "black"}"#));
    let bad = get(mesh.productpage, "/api/v1/products/abc").await;
    assert_eq!(bad.status, 400, "details' status for a bad id");
    assert_eq!(
        bad.body,
        r#"{"error": "Sorry, product details are currently unavailable for this book."}"#
    );

    let index = get(mesh.productpage, "/").await;
    assert!(index
        .body
        .contains("Hello! This is a simple bookstore application consisting of three services"));
    assert!(index
        .body
        .contains("<td>http://reviews:9080</td><td>reviews</td>"));
    assert!(index.body.contains("href=\"/productpage?u=test\""));
    let health = get(mesh.productpage, "/health").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, "Product page is healthy")
    );
    let missing = get(mesh.productpage, "/nope").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("<title>404 Not Found</title>"));
    let metrics = get(mesh.productpage, "/metrics").await;
    assert!(metrics
        .body
        .contains("request_result_total{destination_app=\"details\",response_code=\"200\"} 1.0"));
}

/// Istio's fault-injection task: a 7 s delay on ratings. reviews v2 waits up to 10 s, so
/// productpage (3 s, one retry) gives up on reviews after 6 s; v3 waits 2.5 s and shows the
/// reviews without stars.
#[tokio::test]
async fn ratings_delay_hits_the_real_timeouts() {
    let (v2, v3) = tokio::join!(mesh("v2"), mesh("v3"));
    v2.proxy
        .fault("ratings:9080", Fault::Delay(Duration::from_secs(7)));
    v3.proxy
        .fault("ratings:9080", Fault::Delay(Duration::from_secs(7)));
    let timed = |address: SocketAddr| async move {
        let started = Instant::now();
        let page = get(address, "/productpage").await;
        (page, started.elapsed())
    };
    let ((v2_page, v2_took), (v3_page, v3_took)) =
        tokio::join!(timed(v2.productpage), timed(v3.productpage));

    assert!(v2_page
        .body
        .contains("Sorry, product reviews are currently unavailable for this book."));
    assert!(v2_page.body.contains("Book Details"));
    assert!(
        v2_took >= Duration::from_secs(6) && v2_took < Duration::from_secs(7),
        "{v2_took:?}"
    );
    assert_eq!(v2.proxy.seen("reviews:9080").len(), 2, "one retry");

    assert!(v3_page.body.contains("Book Reviews"));
    assert_eq!(
        v3_page
            .body
            .matches("Ratings service is currently unavailable")
            .count(),
        2
    );
    assert!(
        v3_took >= Duration::from_millis(2500) && v3_took < Duration::from_secs(3),
        "{v3_took:?}"
    );
    assert_eq!(v3.proxy.seen("reviews:9080").len(), 1);
}
