//! One-call HTTP for plugins (`notifyhub:http/client`): the request whole
//! in, the response whole out.
//!
//! Why it exists: through `wasi:http`, one webhook is about thirty calls
//! across the sandbox's boundary (fields, request, body, output stream,
//! future, pollable, response, input stream, each made, lifted and
//! dropped), and under load that machinery took 13 % of the daemon's CPU
//! samples, against 9.5 % for the guest's own code (`docs/profiling.md`,
//! "HTTP in one call"). A notification fits in memory both ways, so one
//! call carries it.
//!
//! This module only decodes the guest's request into an `http::Request`
//! (bounded: URL, headers, body) and the response back into the guest's
//! record. The policy, the allowlist, the request budget, the timeout and
//! the response cap, is [`OutboundHttp`]'s, the same path a `wasi:http`
//! request takes, so the two cannot drift apart.
//!
//! Must never: send a request the policy refuses, or let the guest set a
//! header the host owns (`host`, `content-length`, the connection's own).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Method};
use wasmtime_wasi_http::{DEFAULT_FORBIDDEN_HEADERS, Error as HttpError, WasiBody};

use super::http::OutboundHttp;
use crate::bindings::exchange::{HttpError as Refusal, Request, Response};

/// The largest request body one call takes (`wit/deps/notifyhub-http`);
/// larger ones stream through `wasi:http`. It keeps the call's copy across
/// the boundary well inside `MAX_GUEST_TRANSFER_BYTES`.
pub const MAX_REQUEST_BODY: usize = 512 * 1024;

/// The most a request's header names and values may take together, as
/// `wasi:http` bounds its fields (wasmtime-wasi-http's default).
pub const MAX_HEADER_BYTES: usize = 128 * 1024;

/// Sends `request` under `policy` and reads the whole response.
pub async fn send(policy: &mut OutboundHttp, request: Request) -> Result<Response, Refusal> {
    let request = decode(request).map_err(Refusal::Invalid)?;
    let transport = |e| Refusal::Transport(error_code(e));
    let head = policy.exchange(request).await.map_err(transport)?;
    read(head).await.map_err(transport)
}

/// The guest's request as hyper's, or what is wrong with it.
fn decode(request: Request) -> Result<http::Request<WasiBody>, String> {
    if request.body.len() > MAX_REQUEST_BODY {
        return Err(format!(
            "the body is {} bytes, over the {MAX_REQUEST_BODY} one call takes: \
             stream it through wasi:http",
            request.body.len()
        ));
    }
    let header_bytes: usize = request
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(format!(
            "the headers take {header_bytes} bytes, over the {MAX_HEADER_BYTES} a request may have"
        ));
    }
    let uri: http::Uri = request
        .url
        .parse()
        .map_err(|_| "the URL is not a valid absolute URL".to_string())?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => {}
        _ => return Err("the URL must be an absolute http:// or https:// URL".to_string()),
    }
    let method = method(request.method)?;
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in request.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a valid header name"))?;
        if name == http::header::CONTENT_LENGTH || DEFAULT_FORBIDDEN_HEADERS.contains(&name) {
            return Err(format!("the host sets the {name} header itself"));
        }
        let value = http::HeaderValue::from_bytes(&value)
            .map_err(|_| format!("the value of {name} is not a valid header value"))?;
        builder = builder.header(name, value);
    }
    let body = Full::new(Bytes::from(request.body))
        .map_err(|never| match never {})
        .boxed_unsync();
    builder
        .body(body)
        .map_err(|e| format!("the request cannot be built: {e}"))
}

fn method(method: Method) -> Result<http::Method, String> {
    Ok(match method {
        Method::Get => http::Method::GET,
        Method::Head => http::Method::HEAD,
        Method::Post => http::Method::POST,
        Method::Put => http::Method::PUT,
        Method::Delete => http::Method::DELETE,
        Method::Connect => http::Method::CONNECT,
        Method::Options => http::Method::OPTIONS,
        Method::Trace => http::Method::TRACE,
        Method::Patch => http::Method::PATCH,
        Method::Other(other) => http::Method::from_bytes(other.as_bytes())
            .map_err(|_| format!("{other:?} is not a valid HTTP method"))?,
    })
}

/// The response, its body read whole (the policy caps it), as the guest's.
async fn read(response: http::Response<WasiBody>) -> Result<Response, HttpError> {
    let (head, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response {
        status: head.status.as_u16(),
        headers: head
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
            .collect(),
        body: body.into(),
    })
}

/// The guest-facing code of an error [`OutboundHttp`] or hyper gave.
/// `wasmtime-wasi-http` keeps its own conversion private; the cases here
/// are the ones the policy and the client produce, the rest keep their
/// description.
fn error_code(error: HttpError) -> ErrorCode {
    match error {
        HttpError::HttpRequestDenied => ErrorCode::HttpRequestDenied,
        HttpError::ConnectionRefused => ErrorCode::ConnectionRefused,
        HttpError::ConnectionReadTimeout => ErrorCode::ConnectionReadTimeout,
        HttpError::ConnectionTerminated => ErrorCode::ConnectionTerminated,
        HttpError::HttpProtocolError => ErrorCode::HttpProtocolError,
        HttpError::HttpRequestBodySize(size) => ErrorCode::HttpRequestBodySize(size),
        HttpError::HttpResponseBodySize(size) => ErrorCode::HttpResponseBodySize(size),
        HttpError::HttpResponseIncomplete => ErrorCode::HttpResponseIncomplete,
        HttpError::Hyper(e) => ErrorCode::from(e),
        other => ErrorCode::InternalError(Some(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::sandbox::allowlist::AllowList;
    use crate::sandbox::http::Transport;
    use crate::sandbox::recorder::{CannedAnswer, Recorder};

    fn policy(transport: Transport, allow: &[&str], budget: u32) -> OutboundHttp {
        OutboundHttp::new(
            transport,
            Arc::new(AllowList::parse(allow).unwrap()),
            "test".into(),
            Duration::from_secs(5),
            1 << 20,
            budget,
        )
    }

    #[tokio::test]
    async fn one_call_goes_through_the_policy_and_comes_back_whole() {
        let recorder = Arc::new(Recorder::new(CannedAnswer {
            status: 429,
            headers: vec![("Retry-After".into(), "3".into())],
            body: "slow down".into(),
            ..CannedAnswer::default()
        }));
        let mut http = policy(Transport::Recorder(recorder.clone()), &["a.example"], 1);
        let to = |host: &str| {
            request(
                &format!("https://{host}/hook?k=v"),
                &[("content-type", b"application/json")],
                2,
            )
        };
        let response = send(&mut http, to("a.example")).await.unwrap();
        assert_eq!(response.status, 429);
        assert_eq!(
            response.headers,
            [("retry-after".to_string(), b"3".to_vec())]
        );
        assert_eq!(response.body, b"slow down");
        let sent = recorder.requests();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (sent[0].method.as_str(), sent[0].url.as_str()),
            ("POST", "https://a.example/hook?k=v")
        );
        assert_eq!(sent[0].body, "xx");
        assert!(
            sent[0]
                .headers
                .contains(&("content-type".into(), "application/json".into())),
            "{:?}",
            sent[0].headers
        );

        // The task's budget of one request is spent: the next is refused
        // before it is recorded, as a `wasi:http` request would be.
        let refused = send(&mut http, to("a.example")).await;
        assert!(
            matches!(
                refused,
                Err(Refusal::Transport(ErrorCode::HttpRequestDenied))
            ),
            "{refused:?}"
        );
        assert_eq!(recorder.requests().len(), 1);
    }

    #[tokio::test]
    async fn a_host_outside_the_allowlist_is_denied_without_a_connection() {
        // Nothing listens on this port: reaching it would be a connection
        // error, not a denial.
        let mut http = policy(Transport::Network(Arc::default()), &["a.example"], 8);
        let denied = send(&mut http, request("http://127.0.0.1:9/", &[], 0)).await;
        assert!(
            matches!(
                denied,
                Err(Refusal::Transport(ErrorCode::HttpRequestDenied))
            ),
            "{denied:?}"
        );
        let invalid = send(
            &mut http,
            request("http://a.example/", &[("host", b"b")], 0),
        )
        .await;
        assert!(matches!(invalid, Err(Refusal::Invalid(_))), "{invalid:?}");
    }

    fn request(url: &str, headers: &[(&str, &[u8])], body: usize) -> Request {
        Request {
            method: Method::Post,
            url: url.to_string(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
            body: vec![b'x'; body],
        }
    }

    #[test]
    fn a_request_is_decoded_as_given() {
        let decoded = decode(request(
            "https://hooks.example.com/services/T0/B0?x=1",
            &[
                ("content-type", b"application/json"),
                ("x-a", b"1"),
                ("x-a", b"2"),
            ],
            MAX_REQUEST_BODY,
        ))
        .unwrap();
        assert_eq!(decoded.method(), http::Method::POST);
        assert_eq!(
            decoded.uri().to_string(),
            "https://hooks.example.com/services/T0/B0?x=1"
        );
        let values: Vec<_> = decoded.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        use http_body::Body;
        assert_eq!(
            decoded.body().size_hint().exact(),
            Some(MAX_REQUEST_BODY as u64)
        );
    }

    #[test]
    fn what_cannot_be_sent_is_refused_before_anything_is() {
        let refused = |r: Request| decode(r).expect_err("refused");
        let too_big = refused(request("http://a.example/", &[], MAX_REQUEST_BODY + 1));
        assert!(too_big.contains("stream it through wasi:http"), "{too_big}");
        for url in ["ftp://a.example/", "/relative", "http:///path", "not a url"] {
            let e = refused(request(url, &[], 0));
            assert!(e.contains("URL"), "{url}: {e}");
        }
        for owned in [
            "host",
            "Content-Length",
            "connection",
            "transfer-encoding",
            "upgrade",
        ] {
            let e = refused(request("http://a.example/", &[(owned, b"1")], 0));
            assert!(e.contains("the host sets"), "{owned}: {e}");
        }
        let e = refused(request("http://a.example/", &[("bad name", b"1")], 0));
        assert!(e.contains("not a valid header name"), "{e}");
        let e = refused(request("http://a.example/", &[("x-a", b"line\nbreak")], 0));
        assert!(e.contains("not a valid header value"), "{e}");
        let big = vec![b'v'; MAX_HEADER_BYTES / 2];
        let e = refused(request(
            "http://a.example/",
            &[("x-a", &big), ("x-b", &big)],
            0,
        ));
        assert!(e.contains("over the 131072 a request may have"), "{e}");
        let mut bad_method = request("http://a.example/", &[], 0);
        bad_method.method = Method::Other("GE T".into());
        assert!(refused(bad_method).contains("not a valid HTTP method"));
    }
}
