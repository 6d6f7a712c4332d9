//! Key extraction from HTTP requests: each source, their order, and bad input.

use http::{HeaderName, Request};
use tower_hashring::{HttpKey, KeyExtractor, KeySource};

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

fn key(extractor: &HttpKey, request: &Request<()>) -> Option<String> {
    extractor.extract(request).map(|k| k.as_str().to_owned())
}

#[test]
fn path_pattern_matches_whole_paths_only() {
    let by_path = HttpKey::new().path("/connect/{userId}").unwrap();
    assert_eq!(key(&by_path, &get("/connect/42")), Some("42".into()));
    assert_eq!(key(&by_path, &get("/connect/42/")), Some("42".into()));
    assert_eq!(key(&by_path, &get("/connect/a%20b")), Some("a b".into()));
    assert_eq!(key(&by_path, &get("/connect/42?x=1")), Some("42".into()));
    assert_eq!(
        key(&by_path, &get("/connect/")),
        None,
        "empty segment is no key"
    );
    assert_eq!(key(&by_path, &get("/connect")), None);
    assert_eq!(key(&by_path, &get("/connect/42/extra")), None);
    assert_eq!(key(&by_path, &get("/other/42")), None);
    assert_eq!(
        key(&by_path, &get("/connect/%FF")),
        None,
        "not UTF-8 after decoding"
    );

    let trailing = HttpKey::new().path("/connect/{userId}/").unwrap();
    assert_eq!(key(&trailing, &get("/connect/42")), Some("42".into()));
    assert_eq!(key(&trailing, &get("/connect/42/")), Some("42".into()));

    let middle = HttpKey::new().path("/rooms/{room}/join").unwrap();
    assert_eq!(
        key(&middle, &get("/rooms/lobby/join")),
        Some("lobby".into())
    );
    assert_eq!(key(&middle, &get("/rooms/lobby/leave")), None);
}

#[test]
fn bad_path_patterns_say_why() {
    for (pattern, reason) in [
        ("connect/{id}", "must start with '/'"),
        ("/connect", "has no `{name}` placeholder segment"),
        ("/{a}/{b}", "has more than one `{name}` placeholder segment"),
    ] {
        let err = KeySource::path(pattern).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("key path pattern `{pattern}` {reason}")
        );
    }
}

#[test]
fn query_header_and_cookie_sources() {
    let query = HttpKey::new().query("userId");
    assert_eq!(
        key(&query, &get("/send?userId=7&message=hi")),
        Some("7".into())
    );
    assert_eq!(
        key(&query, &get("/send?message=hi&userId=a+b")),
        Some("a b".into())
    );
    assert_eq!(key(&query, &get("/send?userId=")), None);
    assert_eq!(key(&query, &get("/send")), None);

    let header = HttpKey::new().header(HeaderName::from_static("x-user-id"));
    let with_header = Request::get("/")
        .header("x-user-id", "u-9")
        .body(())
        .unwrap();
    assert_eq!(key(&header, &with_header), Some("u-9".into()));
    let not_text = Request::get("/")
        .header("x-user-id", &[0xFFu8][..])
        .body(())
        .unwrap();
    assert_eq!(key(&header, &not_text), None);

    let cookie = HttpKey::new().cookie("uid");
    let two_headers = Request::get("/")
        .header("cookie", "theme=dark")
        .header("cookie", "session=x; uid=\"55\"")
        .body(())
        .unwrap();
    assert_eq!(key(&cookie, &two_headers), Some("55".into()));
    let similar_name = Request::get("/")
        .header("cookie", "uidx=1")
        .body(())
        .unwrap();
    assert_eq!(key(&cookie, &similar_name), None);
}

#[test]
fn sources_are_tried_in_the_order_given() {
    let path_first = HttpKey::new()
        .path("/connect/{userId}")
        .unwrap()
        .query("userId");
    let query_first = HttpKey::new()
        .query("userId")
        .path("/connect/{userId}")
        .unwrap();
    let both = get("/connect/from-path?userId=from-query");
    assert_eq!(key(&path_first, &both), Some("from-path".into()));
    assert_eq!(key(&query_first, &both), Some("from-query".into()));
    assert_eq!(
        key(&path_first, &get("/connect?userId=q")),
        Some("q".into()),
        "falls through"
    );
    assert_eq!(path_first.sources().len(), 2);
}
