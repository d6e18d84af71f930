//! productpage's HTML: the product page (`templates/productpage.html`), the index with its
//! service table (`templates/index.html` with json2html), and Werkzeug's error pages.
//!
//! The markup is Ward's own; what a reader or a test looks for is the real one's: the title,
//! the signed-in user and "Sign out", the book details table, per review the stars (filled
//! ones as `<svg id="glyphicon glyphicon-star">`, in a `text-<color>-500` element, then empty
//! ones up to five), the rating's error text, the quote, the reviewer, "Reviews served by:
//! <podname>", and the error texts when a service failed. Values print as Jinja prints them
//! (autoescaped, Python's `str()` for non-strings, nothing for a missing key).

use std::fmt::Write;

use crate::apps::python_value::PyValue;

use super::html_escape;

/// The real page draws `range(stars)` stars; past this many it would be a memory exhaustion
/// (ratings accepts any number by POST), not a page.
const MAX_STARS: i128 = 10_000;

/// A service's answer as productpage holds it: the status and the parsed JSON (or its own
/// `{"error": …}`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: PyValue,
}

/// What the real template cannot render either (Jinja raises; Flask answers 500).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("a rating's stars are not an integer")]
pub(super) struct RenderError;

/// The product as the page shows it.
pub(super) struct Product<'a> {
    pub(super) title: &'a str,
    pub(super) description_html: &'a str,
}

fn get<'a>(value: Option<&'a PyValue>, key: &str) -> Option<&'a PyValue> {
    match value? {
        PyValue::Dict(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        _ => None,
    }
}

/// Python's truthiness; a missing value (Jinja's Undefined) is false.
fn truthy(value: Option<&PyValue>) -> bool {
    match value {
        None | Some(PyValue::None) => false,
        Some(PyValue::Bool(b)) => *b,
        Some(PyValue::Int(i)) => *i != 0,
        Some(PyValue::Float(x)) => *x != 0.0,
        Some(PyValue::Str(s)) => !s.is_empty(),
        Some(PyValue::List(items)) => !items.is_empty(),
        Some(PyValue::Dict(entries)) => !entries.is_empty(),
    }
}

/// `{{ value }}`: `str()` of the value, escaped; empty if missing.
fn show(value: Option<&PyValue>) -> String {
    match value {
        None => String::new(),
        Some(value) => html_escape(&py_str(value)),
    }
}

/// Python's `str()`: the text itself for a string, `repr()` otherwise.
fn py_str(value: &PyValue) -> String {
    match value {
        PyValue::Str(s) => s.clone(),
        other => other.repr(),
    }
}

const FILLED_STAR: &str = r#"<svg id="glyphicon glyphicon-star" class="h-5 w-5 flex-none" viewBox="0 0 20 20" fill="currentColor" aria-hidden="true"><polygon points="10,1 12.7,7 19.5,7.4 14.3,11.8 15.9,18.6 10,15 4.1,18.6 5.7,11.8 0.5,7.4 7.3,7"/></svg>"#;
const EMPTY_STAR: &str = r#"<svg class="h-5 w-5 flex-none" viewBox="0 0 20 20" fill="none" stroke="currentColor" stroke-width="1.2" aria-hidden="true"><polygon points="10,1 12.7,7 19.5,7.4 14.3,11.8 15.9,18.6 10,15 4.1,18.6 5.7,11.8 0.5,7.4 7.3,7"/></svg>"#;

/// `/productpage`. `user` is the session's user (`""` when signed out).
pub(super) fn product_page(
    product: &Product,
    user: &str,
    details: &Answer,
    reviews: &Answer,
) -> Result<String, RenderError> {
    let mut out = String::new();
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1.0\">\n\
         <title>Simple Bookstore App</title>\n</head>\n<body>\n",
    );
    write_nav(&mut out, user);
    write_sign_in_dialog(&mut out);
    let _ = write!(
        out,
        "<section class=\"container mt-8 mx-auto px-4\">\n\
         <h1 class=\"text-5xl font-bold tracking-tight text-blue-900\">{}</h1>\n\
         <p class=\"mt-6 text-xl leading-8 text-gray-600\">{}</p>\n\
         <p class=\"mt-6\"><a href=\"https://istio.io\" target=\"_blank\">Learn more about Istio \
         <span aria-hidden=\"true\">→</span></a></p>\n</section>\n",
        html_escape(product.title),
        // Trusted HTML of the product itself, rendered unescaped like the template does.
        product.description_html
    );
    write_details(&mut out, details);
    write_reviews(&mut out, reviews)?;
    out.push_str("</body>\n</html>\n");
    Ok(out)
}

fn write_nav(out: &mut String, user: &str) {
    out.push_str(
        "<nav class=\"bg-gray-800\">\n<div class=\"container mx-auto flex h-16 items-center \
         justify-between px-4\">\n<a href=\"#\" class=\"text-white px-3 py-2 text-lg \
         font-medium\" aria-current=\"page\">BookInfo Sample</a>\n",
    );
    if user.is_empty() {
        out.push_str(
            "<button type=\"button\" id=\"sign-in-button\" class=\"rounded-md bg-blue-600 \
             px-3.5 py-2.5 text-sm font-semibold text-white\">Sign in</button>\n",
        );
    } else {
        let _ = write!(
            out,
            "<div class=\"ml-4\">\n<p class=\"text-base font-medium text-gray-50\">{}</p>\n\
             <a href=\"logout\" class=\"text-xs font-medium text-gray-400\">Sign out</a>\n</div>\n",
            html_escape(user)
        );
    }
    out.push_str("</div>\n</nav>\n");
}

fn write_sign_in_dialog(out: &mut String) {
    out.push_str(
        "<dialog id=\"dialog\" class=\"border rounded-md shadow-xl\">\n\
         <h2 class=\"text-2xl font-bold\">Sign in to BookInfo</h2>\n\
         <form method=\"post\" action=\"login\" name=\"login_form\">\n\
         <label for=\"username\">Username</label>\n\
         <input id=\"username\" name=\"username\" required>\n\
         <label for=\"password\">Password</label>\n\
         <input id=\"password\" name=\"passwd\" type=\"password\" required>\n\
         <button type=\"submit\">Sign in</button>\n</form>\n\
         <button id=\"close-dialog\" type=\"button\">Close</button>\n</dialog>\n\
         <script>\n\
         document.addEventListener(\"DOMContentLoaded\", function () {\n\
         \x20 var dialog = document.getElementById(\"dialog\");\n\
         \x20 var open = document.getElementById(\"sign-in-button\");\n\
         \x20 if (open) { open.addEventListener(\"click\", function () { dialog.showModal(); }); }\n\
         \x20 document.getElementById(\"close-dialog\").addEventListener(\"click\", function () \
         { dialog.close(); });\n\
         });\n</script>\n",
    );
}

fn write_details(out: &mut String, details: &Answer) {
    out.push_str("<section class=\"container mt-8 mx-auto px-4 py-10\">\n");
    let body = Some(&details.body);
    if details.status == 200 {
        let _ = write!(
            out,
            "<h4 class=\"text-3xl font-semibold\">Book Details</h4>\n\
             <table class=\"min-w-full divide-y divide-gray-300\">\n<thead>\n<tr>\
             <th scope=\"col\">ISBN-10</th><th scope=\"col\">Publisher</th>\
             <th scope=\"col\">Pages</th><th scope=\"col\">Type</th>\
             <th scope=\"col\">Language</th></tr>\n</thead>\n<tbody>\n<tr>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n</tbody>\n</table>\n",
            show(get(body, "ISBN-10")),
            show(get(body, "publisher")),
            show(get(body, "pages")),
            show(get(body, "type")),
            show(get(body, "language")),
        );
    } else {
        out.push_str("<p class=\"text-2xl text-red-500\">Error fetching product details</p>\n");
        if truthy(body) {
            let _ = writeln!(
                out,
                "<p class=\"text-lg text-gray-600\">{}</p>",
                show(get(body, "error"))
            );
        }
    }
    out.push_str("</section>\n");
}

fn write_reviews(out: &mut String, reviews: &Answer) -> Result<(), RenderError> {
    out.push_str(
        "<section class=\"bg-blue-600/5 py-12\">\n<div class=\"container mx-auto px-4\">\n",
    );
    let body = Some(&reviews.body);
    if reviews.status != 200 {
        out.push_str("<p class=\"text-2xl text-red-500\">Error fetching product reviews</p>\n");
        if truthy(body) {
            let _ = writeln!(
                out,
                "<p class=\"text-lg text-gray-600\">{}</p>",
                show(get(body, "error"))
            );
        }
        out.push_str("</div>\n</section>\n");
        return Ok(());
    }
    out.push_str(
        "<h4 class=\"text-3xl font-semibold\">Book Reviews</h4>\n\
         <div class=\"flex flex-col md:flex-row\">\n",
    );
    let items = match get(body, "reviews") {
        Some(PyValue::List(items)) => items.as_slice(),
        _ => &[],
    };
    let podname = show(get(body, "podname"));
    let cluster = get(body, "clustername");
    for review in items {
        let review = Some(review);
        out.push_str("<section class=\"px-6 py-12 sm:py-8 lg:px-8\">\n");
        let rating = get(review, "rating");
        if truthy(rating) {
            let stars = get(rating, "stars");
            if truthy(stars) {
                let filled = match stars {
                    Some(PyValue::Int(n)) => *n,
                    Some(PyValue::Bool(b)) => i128::from(*b),
                    _ => return Err(RenderError),
                };
                let filled = filled.clamp(0, MAX_STARS);
                let color = show(get(rating, "color"));
                // The class is the real page's; the inline color shows it without Tailwind.
                let _ = writeln!(
                    out,
                    "<div class=\"flex gap-x-1 text-{color}-500\" style=\"color: {color}\">"
                );
                for _ in 0..filled {
                    out.push_str(FILLED_STAR);
                    out.push('\n');
                }
                for _ in filled..5 {
                    out.push_str(EMPTY_STAR);
                    out.push('\n');
                }
                out.push_str("</div>\n");
            } else if truthy(get(rating, "error")) {
                let _ = writeln!(
                    out,
                    "<p class=\"text-red-500\">{}</p>",
                    show(get(rating, "error"))
                );
            }
        }
        let _ = write!(
            out,
            "<blockquote class=\"mt-10 text-xl font-semibold leading-8\">\n<p>\"{}\"</p>\n\
             </blockquote>\n<div class=\"mt-4 text-sm leading-6\">\n\
             <div class=\"font-semibold text-gray-900\">{}</div>\n\
             <div class=\"mt-0.5 text-gray-600 font-mono\">Reviews served by: {}",
            show(get(review, "text")),
            show(get(review, "reviewer")),
            podname,
        );
        // `{% if reviews.clustername != "null" %}`: a missing name is not "null" either.
        if !matches!(cluster, Some(PyValue::Str(name)) if name == "null") {
            let _ = write!(out, " on cluster <div>{}</div>", show(cluster));
        }
        out.push_str("</div>\n</div>\n</section>\n");
    }
    out.push_str("</div>\n</div>\n</section>\n");
    Ok(())
}

/// `/` and `/index.html`: the greeting, the service table, the two links.
pub(super) fn index(service_table: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Simple Bookstore App</title>\n<style>\n\
         table {{ color: #333; background: white; border: 1px solid grey; font-size: 12pt; \
         border-collapse: collapse; width: 100%; }}\n\
         table thead th {{ color: #fff; background: #466BB0; }}\n\
         table th, table td {{ padding: .5em; border: 1px solid lightgrey; }}\n\
         </style>\n</head>\n<body>\n<div class=\"mx-auto px-4\">\n\
         <h3 class=\"text-2xl\">Hello! This is a simple bookstore application consisting of \
         three services as shown below</h3>\n{service_table}\n\
         <p>Click on one of the links below to auto generate a request to the backend as a real \
         user or a tester</p>\n<ul>\n\
         <li><a href=\"/productpage?u=normal\">Normal user</a></li>\n\
         <li><a href=\"/productpage?u=test\">Test user</a></li>\n</ul>\n</div>\n</body>\n</html>\n"
    )
}

/// json2html's `convert` (clubbing lists of like objects into one table, escaping text) with
/// the index's table attributes.
pub(super) fn json2html(value: &PyValue) -> String {
    let mut out = String::new();
    write_json2html(value, &mut out);
    out
}

const TABLE: &str = "<table class=\"table table-condensed table-bordered table-hover\">";

fn write_json2html(value: &PyValue, out: &mut String) {
    match value {
        PyValue::Dict(entries) if entries.is_empty() => {}
        PyValue::Dict(entries) => {
            out.push_str(TABLE);
            out.push_str("<tr>");
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str("</tr><tr>");
                }
                let _ = write!(out, "<th>{}</th><td>", html_escape(key));
                write_json2html(value, out);
                out.push_str("</td>");
            }
            out.push_str("</tr></table>");
        }
        PyValue::List(items) if items.is_empty() => {}
        PyValue::List(items) => match common_keys(items) {
            Some(keys) => {
                out.push_str(TABLE);
                // json2html does not escape the column headers.
                let _ = write!(
                    out,
                    "<thead><tr><th>{}</th></tr></thead><tbody>",
                    keys.join("</th><th>")
                );
                for item in items {
                    out.push_str("<tr><td>");
                    for (i, key) in keys.iter().enumerate() {
                        if i > 0 {
                            out.push_str("</td><td>");
                        }
                        if let Some(cell) = get(Some(item), key) {
                            write_json2html(cell, out);
                        }
                    }
                    out.push_str("</td></tr>");
                }
                out.push_str("</tbody></table>");
            }
            None => {
                out.push_str("<ul><li>");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str("</li><li>");
                    }
                    write_json2html(item, out);
                }
                out.push_str("</li></ul>");
            }
        },
        PyValue::Str(s) => out.push_str(&html_escape(s)),
        other => out.push_str(&other.repr()),
    }
}

/// The first object's keys if every item is an object with exactly those keys.
fn common_keys(items: &[PyValue]) -> Option<Vec<&str>> {
    let PyValue::Dict(first) = items.first()? else {
        return None;
    };
    let keys: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    for item in items {
        let PyValue::Dict(entries) = item else {
            return None;
        };
        if entries.len() != keys.len() || keys.iter().any(|k| get(Some(item), k).is_none()) {
            return None;
        }
    }
    Some(keys)
}

/// Werkzeug's HTML for an HTTP error.
pub(super) fn werkzeug_error(code: u16, name: &str, description: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=en>\n<title>{code} {name}</title>\n<h1>{name}</h1>\n\
         <p>{description}</p>\n"
    )
}

/// Werkzeug's redirect page.
pub(super) fn redirect_page(location: &str) -> String {
    let location = html_escape(location);
    format!(
        "<!doctype html>\n<html lang=en>\n<title>Redirecting...</title>\n\
         <h1>Redirecting...</h1>\n<p>You should be redirected automatically to the target URL: \
         <a href=\"{location}\">{location}</a>. If not, click the link.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, endpoint: &str, children: Vec<PyValue>) -> PyValue {
        PyValue::Dict(vec![
            ("name".into(), PyValue::Str(name.into())),
            ("endpoint".into(), PyValue::Str(endpoint.into())),
            ("children".into(), PyValue::List(children)),
        ])
    }

    #[test]
    fn json2html_clubs_like_objects() {
        let tree = node(
            "http://details:9080",
            "details",
            vec![
                node("http://details:9080", "details", vec![]),
                node(
                    "http://reviews:9080",
                    "reviews",
                    vec![node("http://ratings:9080", "ratings", vec![])],
                ),
            ],
        );
        let t = TABLE;
        let head = "<thead><tr><th>name</th><th>endpoint</th><th>children</th></tr></thead>";
        assert_eq!(
            json2html(&tree),
            format!(
                "{t}<tr><th>name</th><td>http://details:9080</td></tr><tr><th>endpoint</th>\
                 <td>details</td></tr><tr><th>children</th><td>{t}{head}<tbody>\
                 <tr><td>http://details:9080</td><td>details</td><td></td></tr>\
                 <tr><td>http://reviews:9080</td><td>reviews</td><td>{t}{head}<tbody>\
                 <tr><td>http://ratings:9080</td><td>ratings</td><td></td></tr></tbody></table>\
                 </td></tr></tbody></table></td></tr></table>"
            )
        );
    }

    #[test]
    fn json2html_lists_and_scalars() {
        let value: PyValue =
            serde_json::from_str(r#"{"a": [1, "<b>", null], "b": true, "c": {}}"#).unwrap();
        assert_eq!(
            json2html(&value),
            format!(
                "{TABLE}<tr><th>a</th><td><ul><li>1</li><li>&lt;b&gt;</li><li>None</li></ul>\
                 </td></tr><tr><th>b</th><td>True</td></tr><tr><th>c</th><td></td></tr></table>"
            )
        );
    }

    #[test]
    fn values_print_like_jinja() {
        let value: PyValue =
            serde_json::from_str(r#"{"s": "a<'\"&", "n": 200, "f": 1.0, "l": [1, "x"]}"#).unwrap();
        let body = Some(&value);
        assert_eq!(show(get(body, "s")), "a&lt;&#39;&#34;&amp;");
        assert_eq!(show(get(body, "n")), "200");
        assert_eq!(show(get(body, "f")), "1.0");
        assert_eq!(show(get(body, "l")), "[1, &#39;x&#39;]");
        assert_eq!(show(get(body, "missing")), "");
        assert!(!truthy(get(body, "missing")));
    }

    #[test]
    fn float_stars_cannot_render() {
        let reviews = Answer {
            status: 200,
            body: serde_json::from_str(r#"{"reviews": [{"rating": {"stars": 2.5}}]}"#).unwrap(),
        };
        let product = Product {
            title: "t",
            description_html: "d",
        };
        let details = Answer {
            status: 200,
            body: PyValue::Dict(vec![]),
        };
        assert_eq!(
            product_page(&product, "", &details, &reviews),
            Err(RenderError)
        );
    }
}
