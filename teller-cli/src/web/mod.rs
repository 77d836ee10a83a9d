//! The web teller console (`teller-cli web`): a small HTTP server on loopback that
//! speaks the teller protocol to one branch, as the CLI does, and serves
//! server-rendered pages to a browser. The browser never talks to a branch.
//!
//! Each browser gets a *visit* (a random id in an HttpOnly, SameSite=Strict cookie)
//! holding a CSRF token and, once logged in, a [`Teller`] with the person's branch
//! session over the console's one connection. Every form carries the token; a money
//! form also carries the transfer id made when the form was shown, so a double click
//! or a resubmitted form asks about the same id and can never move money twice.

// A handler's early exit is the page to answer with: `Result<_, Response>` is the
// axum idiom, and a page is built once per request, so its size does not matter.
#![allow(clippy::result_large_err)]

mod admin;
mod bulk;
mod customer;
mod pages;
mod visits;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use wire::teller::{Role, TellerResponse};

use crate::money::RetryPolicy;
use crate::{Teller, TellerError};
pub use visits::{ANONYMOUS_VISITS_MAX, VISITS_MAX};
use visits::{Visit, Visitor, Visits};

/// What the console needs to run: a connected (not logged-in) teller and the retry
/// policy for money.
#[derive(Debug)]
pub struct WebConfig {
    pub teller: Teller,
    pub branch_name: String,
    pub policy: RetryPolicy,
}

/// The console's shared state.
#[derive(Debug)]
pub(crate) struct Web {
    teller: Teller,
    branch_name: String,
    policy: RetryPolicy,
    visits: Visits,
    /// The Host headers the console answers (a page of another site whose name was
    /// made to resolve to loopback sends its own name, and is refused).
    hosts: Vec<String>,
}

/// A form or query string, field by field.
pub(crate) type Fields = HashMap<String, String>;

/// Refuses listen addresses off loopback: the console serves plain HTTP, and a
/// password typed into it must not cross a network in clear text.
pub fn check_listen(addr: &SocketAddr) -> Result<(), TellerError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(TellerError::Usage(format!(
            "{addr} is not a loopback address: the console serves plain HTTP, so it listens \
             on 127.0.0.1 or ::1 only (run it on the teller's own machine)"
        )))
    }
}

/// The console's routes, ready to serve at `addr`.
pub fn router(config: WebConfig, addr: SocketAddr) -> Router {
    let names = config.teller.target.names();
    let web = Arc::new(Web {
        teller: config.teller,
        visits: Visits::new(&config.branch_name, names, config.policy.wait.as_secs()),
        branch_name: config.branch_name,
        policy: config.policy,
        hosts: vec![addr.to_string(), format!("localhost:{}", addr.port())],
    });
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
        .merge(customer::routes())
        .merge(admin::routes())
        .merge(bulk::routes())
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .fallback(not_found)
        .layer(middleware::from_fn(csrf))
        .layer(middleware::from_fn_with_state(web.clone(), visits::attach))
        .layer(middleware::from_fn_with_state(web.clone(), known_host))
        .layer(middleware::from_fn(security_headers))
        .with_state(web)
}

/// Most bytes of a form the console reads (a bulk payment's lines are the longest).
const FORM_BYTES_MAX: usize = 2 << 20;

/// Every request that may change something (anything but GET and HEAD) must carry the
/// visit's CSRF token in its form, checked here once for every handler: a form another
/// site made, or one from a page before a login, is refused and nothing is done.
async fn csrf(request: Request, next: Next) -> Response {
    use axum::http::Method;
    if [Method::GET, Method::HEAD].contains(request.method()) {
        return next.run(request).await;
    }
    // The static assets have no visit (and take no form): nothing to check against.
    let Some(visitor) = request.extensions().get::<Visitor>().cloned() else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, FORM_BYTES_MAX).await else {
        let v = visitor.lock().await;
        let why = "this form is larger than the console takes (2 MiB); nothing was done";
        let body = pages::problem_box("too_large", why);
        return pages::page(StatusCode::PAYLOAD_TOO_LARGE, &v, "Form too large", body);
    };
    let form: Fields = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    {
        let v = visitor.lock().await;
        if !v.form_is_ours(&form) {
            let why = "this form is out of date or did not come from this console; nothing \
                       was done. Open the page again and resend";
            let body = pages::problem_box("csrf", why);
            return pages::page(StatusCode::FORBIDDEN, &v, "Form expired", body);
        }
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// Serves the console on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: WebConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let mut config = config;
    // A login rides out a change of leaders within the money requests' wait.
    config.teller.set_failover_wait(config.policy.wait);
    axum::serve(listener, router(config, addr))
        .with_graceful_shutdown(stop)
        .await
}

/// Refuses a request whose Host is not the console's own address (DNS rebinding:
/// another site's page must not use the console as its way to the branches).
async fn known_host(State(web): State<Arc<Web>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    match host {
        Some(h) if web.hosts.iter().any(|k| k == h) => next.run(request).await,
        _ => (
            StatusCode::MISDIRECTED_REQUEST,
            "this console answers only at its own address",
        )
            .into_response(),
    }
}

/// Headers on every answer: pages are never cached, framed or allowed to load
/// anything but the console's own script and style sheet.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut r = next.run(request).await;
    let h = r.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    r
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/app.css"))
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn not_found(visitor: Visitor) -> Response {
    let v = visitor.lock().await;
    let body = pages::problem_box("not_found", "there is no such page");
    pages::page(StatusCode::NOT_FOUND, &v, "Not found", body)
}

async fn home(visitor: Visitor) -> Response {
    let v = visitor.lock().await;
    match v.role() {
        None => Redirect::to("/login").into_response(),
        Some(Role::Admin) => Redirect::to("/admin/accounts").into_response(),
        Some(Role::Customer) => Redirect::to("/accounts").into_response(),
    }
}

async fn login_form(State(web): State<Arc<Web>>, visitor: Visitor) -> Response {
    let v = visitor.lock().await;
    pages::login(StatusCode::OK, &v, &web.branch_name, None, "")
}

/// Logs in at the branch; on success the visit gets a new id and a new CSRF token (a
/// cookie planted before the login is worth nothing after it).
async fn login(
    State(web): State<Arc<Web>>,
    visitor: Visitor,
    axum::Form(form): axum::Form<Fields>,
) -> Response {
    let mut v = visitor.lock().await;
    let field = |k: &str| form.get(k).map(|s| s.trim()).unwrap_or_default();
    let (user, password) = (
        field("user"),
        form.get("password").cloned().unwrap_or_default(),
    );
    let otp = Some(field("otp")).filter(|s| !s.is_empty());
    // A login on a visit that is logged in replaces that login: end its session first.
    v.log_out().await;
    let mut teller = web.teller.share();
    match teller.login_with_code(user, &password, otp).await {
        Ok(TellerResponse::LoggedIn { role, accounts, .. }) => {
            let numbers = accounts.iter().map(|a| a.number).collect();
            v.log_in(teller, user.to_owned(), role, numbers);
            let id = web.visits.rotate(&visitor, &mut v);
            let mut r = Redirect::to("/").into_response();
            visits::set_cookie(&mut r, &id);
            r
        }
        Ok(other) => pages::login(
            StatusCode::BAD_GATEWAY,
            &v,
            &web.branch_name,
            Some(&TellerError::unexpected("login", &other)),
            user,
        ),
        Err(e) => pages::login(pages::status_of(&e), &v, &web.branch_name, Some(&e), user),
    }
}

/// Ends the branch session, then the visit's login.
async fn logout(State(web): State<Arc<Web>>, visitor: Visitor) -> Response {
    let mut v = visitor.lock().await;
    v.log_out().await;
    web.visits.logged_out(&visitor);
    Redirect::to("/login").into_response()
}

/// The logged-in visit's teller, or the answer that sends the browser to log in.
pub(crate) fn logged_in(v: &mut Visit) -> Result<&mut Teller, Response> {
    v.teller_mut()
        .ok_or_else(|| Redirect::to("/login").into_response())
}
