//! reviews (`LibertyRestEndpoint.java`, JAX-RS on Open Liberty): `/reviews/<int id>` lists two
//! reviews, with star ratings from the ratings service when `ENABLE_RATINGS` is true (v2: black
//! stars, v3: red), `/health`. The JSON is the real one's hand-built text, spacing included;
//! `podname` is `HOSTNAME` and `clustername` is `CLUSTER_NAME`, `"null"` when unset.
//!
//! The ratings call forwards the propagated headers and waits 10 s for black stars, 2.5 s for
//! any other color (the connection and the read each); any failure or non-200 shows
//! "Ratings service is currently unavailable" instead of stars.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use tracing::warn;

use super::outbound::{Outbound, Timeouts};
use super::{bare, headers, percent_decode, service_url, HttpResponse};
use crate::apps::respond;

const REVIEWER1_TEXT: &str =
    "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!";
const REVIEWER2_TEXT: &str = "Absolutely fun and entertaining. The play lacks thematic depth \
                              when compared to other plays by Shakespeare.";

/// Java's sentinel for "no rating", kept because a rating of -1 reads as unavailable there too.
const NO_RATING: i32 = -1;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub(super) ratings_enabled: bool,
    pub(super) star_color: String,
    /// `http://ratings:9080/ratings`, the id appended.
    pub(super) ratings_service: String,
    pub(super) pod_name: Option<String>,
    pub(super) cluster_name: Option<String>,
    pub(super) outbound: Outbound,
}

impl Settings {
    /// `default_ratings` and `default_color` are the image's (`ENABLE_RATINGS`, `STAR_COLOR` in
    /// its Dockerfile); the pod's env overrides them.
    pub(super) fn from_env(
        env: &[(String, String)],
        process_env: &dyn Fn(&str) -> Option<String>,
        default_ratings: bool,
        default_color: &str,
        outbound: Outbound,
    ) -> Self {
        Settings {
            // `Boolean.valueOf`: "true" in any case, anything else false.
            ratings_enabled: super::container_env(env, "ENABLE_RATINGS")
                .map_or(default_ratings, |v| v.eq_ignore_ascii_case("true")),
            star_color: super::container_env(env, "STAR_COLOR")
                .unwrap_or(default_color)
                .to_string(),
            ratings_service: format!(
                "{}/ratings",
                service_url(env, "RATINGS_HOSTNAME", "ratings", "RATINGS_SERVICE_PORT")
            ),
            pod_name: super::container_env(env, "HOSTNAME")
                .map(str::to_string)
                .or_else(|| process_env("HOSTNAME")),
            cluster_name: super::container_env(env, "CLUSTER_NAME").map(str::to_string),
            outbound,
        }
    }

    fn ratings_timeout(&self) -> Duration {
        if self.star_color == "black" {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(2500)
        }
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = HttpResponse> + Send>>;

pub(super) fn handler(
    settings: Settings,
) -> impl Fn(Request<Incoming>) -> ResponseFuture + Clone + Send + Sync + 'static {
    let settings = Arc::new(settings);
    move |request| {
        let settings = settings.clone();
        Box::pin(async move { handle(request, &settings).await })
    }
}

async fn handle(request: Request<Incoming>, settings: &Settings) -> HttpResponse {
    let path = request.uri().path();
    // JAX-RS matches a trailing slash too.
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    // `None` for `/health`, the id's path segment for `/reviews/{productId}`.
    let review_segment = if path == "/health" {
        None
    } else {
        match path.strip_prefix("/reviews/") {
            Some(segment) if !segment.is_empty() && !segment.contains('/') => Some(segment),
            _ => return bare(StatusCode::NOT_FOUND),
        }
    };
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = bare(StatusCode::METHOD_NOT_ALLOWED);
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("HEAD,GET,OPTIONS"),
        );
        return response;
    }
    let Some(segment) = review_segment else {
        return json(r#"{"status": "Reviews is healthy"}"#.to_string());
    };
    // `@PathParam int`: a value that does not convert is a 404.
    let Ok(product_id) = percent_decode(segment).parse::<i32>() else {
        return bare(StatusCode::NOT_FOUND);
    };
    let (stars1, stars2) = if settings.ratings_enabled {
        match ratings(settings, product_id, request.headers()).await {
            Ok(stars) => stars,
            // An unexpected ratings body throws past the app's handler in Java: a 500.
            Err(problem) => {
                warn!(%problem, "ratings answered 200 with an unusable body");
                return bare(StatusCode::INTERNAL_SERVER_ERROR);
            }
        }
    } else {
        (NO_RATING, NO_RATING)
    };
    json(body(settings, product_id, stars1, stars2))
}

fn json(body: String) -> HttpResponse {
    respond(StatusCode::OK, "application/json", body)
}

/// `getJsonResponse`: the same text, byte for byte, with the strings JSON-escaped.
pub(super) fn body(settings: &Settings, product_id: i32, stars1: i32, stars2: i32) -> String {
    let quoted = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let or_null = |s: &Option<String>| quoted(s.as_deref().unwrap_or("null"));
    let rating = |stars: i32| {
        if !settings.ratings_enabled {
            String::new()
        } else if stars != NO_RATING {
            format!(
                r#", "rating": {{"stars": {stars}, "color": {}}}"#,
                quoted(&settings.star_color)
            )
        } else {
            r#", "rating": {"error": "Ratings service is currently unavailable"}"#.to_string()
        }
    };
    format!(
        r#"{{"id": "{product_id}","podname": {},"clustername": {},"reviews": [{{  "reviewer": "Reviewer1",  "text": "{REVIEWER1_TEXT}"{}}},{{  "reviewer": "Reviewer2",  "text": "{REVIEWER2_TEXT}"{}}}]}}"#,
        or_null(&settings.pod_name),
        or_null(&settings.cluster_name),
        rating(stars1),
        rating(stars2),
    )
}

/// Reviewer1's and Reviewer2's stars from ratings, [`NO_RATING`] where the call failed or the
/// answer lacks one; `Err` where Java's parsing would throw.
async fn ratings(
    settings: &Settings,
    product_id: i32,
    incoming: &HeaderMap,
) -> Result<(i32, i32), String> {
    let url = format!("{}/{product_id}", settings.ratings_service);
    let fetched = settings
        .outbound
        .get(
            &url,
            &headers::from_reviews(incoming),
            Timeouts::both(settings.ratings_timeout()),
        )
        .await;
    let fetched = match fetched {
        Ok(fetched) if fetched.status == StatusCode::OK => fetched,
        Ok(fetched) => {
            warn!(%url, status = %fetched.status, "ratings unavailable");
            return Ok((NO_RATING, NO_RATING));
        }
        Err(e) => {
            warn!(error = %e, "ratings unavailable");
            return Ok((NO_RATING, NO_RATING));
        }
    };
    let answer: serde_json::Value =
        serde_json::from_slice(&fetched.body).map_err(|e| format!("not JSON: {e}"))?;
    let object = answer
        .as_object()
        .ok_or_else(|| "not a JSON object".to_string())?;
    let Some(ratings) = object.get("ratings") else {
        return Ok((NO_RATING, NO_RATING));
    };
    let ratings = ratings
        .as_object()
        .ok_or_else(|| "`ratings` is not an object".to_string())?;
    let stars = |reviewer: &str| match ratings.get(reviewer) {
        None => Ok(NO_RATING),
        Some(value) => java_int_value(value).ok_or_else(|| format!("{reviewer} is not a number")),
    };
    Ok((stars("Reviewer1")?, stars("Reviewer2")?))
}

/// `JsonObject.getInt`: a number's `intValue()` (fraction dropped, low 32 bits kept).
fn java_int_value(value: &serde_json::Value) -> Option<i32> {
    let number = value.as_number()?;
    #[allow(clippy::cast_possible_truncation)]
    let low_bits = if let Some(i) = number.as_i64() {
        i as i32
    } else if let Some(u) = number.as_u64() {
        u as i32
    } else {
        number.as_f64()?.trunc() as i64 as i32
    };
    Some(low_bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(enabled: bool, color: &str) -> Settings {
        Settings {
            ratings_enabled: enabled,
            star_color: color.to_string(),
            ratings_service: "http://ratings:9080/ratings".to_string(),
            pod_name: Some("reviews-v2-abc".to_string()),
            cluster_name: None,
            outbound: Outbound::default(),
        }
    }

    #[test]
    fn body_is_the_java_text() {
        assert_eq!(
            body(&settings(false, "black"), 0, NO_RATING, NO_RATING),
            format!(
                r#"{{"id": "0","podname": "reviews-v2-abc","clustername": "null","reviews": [{{  "reviewer": "Reviewer1",  "text": "{REVIEWER1_TEXT}"}},{{  "reviewer": "Reviewer2",  "text": "{REVIEWER2_TEXT}"}}]}}"#
            )
        );
        let with_stars = body(&settings(true, "red"), 7, 5, NO_RATING);
        assert!(
            with_stars.contains(r#"refreshing!", "rating": {"stars": 5, "color": "red"}},{"#),
            "{with_stars}"
        );
        assert!(
            with_stars.ends_with(
                r#"Shakespeare.", "rating": {"error": "Ratings service is currently unavailable"}}]}"#
            ),
            "{with_stars}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&with_stars).unwrap();
        assert_eq!(parsed["id"], "7");
    }

    #[test]
    fn timeouts_follow_the_star_color() {
        assert_eq!(
            settings(true, "black").ratings_timeout(),
            Duration::from_secs(10)
        );
        assert_eq!(
            settings(true, "red").ratings_timeout(),
            Duration::from_millis(2500)
        );
    }

    #[test]
    fn int_value_truncates_like_java() {
        let int = |text: &str| java_int_value(&serde_json::from_str(text).unwrap());
        assert_eq!(int("4"), Some(4));
        assert_eq!(int("4.9"), Some(4));
        assert_eq!(int("4294967301"), Some(5));
        assert_eq!(int(r#""4""#), None);
    }
}
