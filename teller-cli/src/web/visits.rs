//! Browser visits: the cookie that names one, its CSRF token, and the logged-in
//! teller it holds. Bounded in number and in idle time; a visit that goes (idle,
//! evicted or logged out) ends its branch session too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{Mutex as AsyncMutex, MutexGuard};
use wire::AccountNumber;
use wire::teller::Role;

use super::{Fields, Web};
use crate::Teller;
use crate::say::Names;

/// The cookie naming a visit.
const COOKIE: &str = "bankmate_visit";
/// At most this many logged-in visits are kept; a login past it ends the longest idle
/// one's. Only a login (a right password) makes a visit count here.
pub const VISITS_MAX: usize = 4_096;
/// At most this many visits without a login (a browser showing the login page); a new
/// one evicts the longest idle of these, never a logged-in visit, so a flood of
/// anonymous requests cannot log anybody out.
pub const ANONYMOUS_VISITS_MAX: usize = 4_096;
/// A visit unused this long is gone (and its branch session ended).
const VISIT_IDLE: Duration = Duration::from_secs(15 * 60);

/// One browser's visit.
#[derive(Debug)]
pub(crate) struct Visit {
    csrf: String,
    login: Option<Login>,
    branch: Arc<str>,
    names: Arc<Names>,
    /// How long a money request keeps trying, in seconds (shown while it does).
    wait_s: u64,
}

/// Who is logged in on a visit, and their teller (with its branch session).
#[derive(Debug)]
struct Login {
    teller: Teller,
    user: String,
    role: Role,
    accounts: Vec<AccountNumber>,
}

/// The visit of the request being answered (put there by [`attach`]).
#[derive(Debug, Clone)]
pub(crate) struct Visitor {
    id: String,
    visit: Arc<AsyncMutex<Visit>>,
}

#[derive(Debug)]
struct Slot {
    visit: Arc<AsyncMutex<Visit>>,
    last_seen: Instant,
    /// Whether the visit holds a login: it counts against [`VISITS_MAX`], else against
    /// [`ANONYMOUS_VISITS_MAX`].
    logged_in: bool,
}

/// Every live visit, by cookie value.
#[derive(Debug)]
pub(crate) struct Visits {
    slots: Mutex<HashMap<String, Slot>>,
    branch: Arc<str>,
    names: Arc<Names>,
    wait_s: u64,
}

/// Makes room for one more visit of kind `logged_in` in `slots`: removes (and ends)
/// the longest idle visit of that kind while that kind is at its bound.
fn make_room(slots: &mut HashMap<String, Slot>, logged_in: bool) {
    let max = if logged_in {
        VISITS_MAX
    } else {
        ANONYMOUS_VISITS_MAX
    };
    if slots.len() < max {
        return;
    }
    let same = slots.values().filter(|s| s.logged_in == logged_in).count();
    if same < max {
        return;
    }
    let oldest = slots
        .iter()
        .filter(|(_, s)| s.logged_in == logged_in)
        .min_by_key(|(_, s)| s.last_seen)
        .map(|(k, _)| k.clone());
    if let Some(old) = oldest.and_then(|k| slots.remove(&k)) {
        end_later(old.visit);
    }
}

/// 128 random bits in hex: visit ids and CSRF tokens.
fn token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Equal without telling, by its time, how much of a guess was right.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl Visit {
    fn new(branch: Arc<str>, names: Arc<Names>, wait_s: u64) -> Visit {
        Visit {
            csrf: token(),
            login: None,
            branch,
            names,
            wait_s,
        }
    }

    /// How long a money request keeps trying, in seconds.
    pub fn wait_s(&self) -> u64 {
        self.wait_s
    }

    /// The name of the branch the console is connected to.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// Branch names, for what people are told.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The token every form of this visit must send back.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether a form carries this visit's token: one that does not was not made by a
    /// page of this visit (another site's form, or a page from before a login).
    pub fn form_is_ours(&self, form: &Fields) -> bool {
        form.get("csrf").is_some_and(|t| same(t, &self.csrf))
    }

    pub fn role(&self) -> Option<Role> {
        self.login.as_ref().map(|l| l.role)
    }

    pub fn user(&self) -> Option<&str> {
        self.login.as_ref().map(|l| l.user.as_str())
    }

    /// The customer's accounts as of the login, or of the accounts page seen last.
    pub fn accounts(&self) -> &[AccountNumber] {
        self.login.as_ref().map_or(&[], |l| &l.accounts)
    }

    /// The customer's accounts as the branch has them now.
    pub fn set_accounts(&mut self, accounts: Vec<AccountNumber>) {
        if let Some(l) = self.login.as_mut() {
            l.accounts = accounts;
        }
    }

    pub fn teller_mut(&mut self) -> Option<&mut Teller> {
        self.login.as_mut().map(|l| &mut l.teller)
    }

    pub fn log_in(
        &mut self,
        teller: Teller,
        user: String,
        role: Role,
        accounts: Vec<AccountNumber>,
    ) {
        self.login = Some(Login {
            teller,
            user,
            role,
            accounts,
        });
    }

    /// Ends the branch session (if the branch can be told) and forgets the login.
    pub async fn log_out(&mut self) {
        if let Some(mut l) = self.login.take()
            && let Err(e) = l.teller.logout().await
        {
            eprintln!("web: the branch was not told of a logout: {e}");
        }
    }
}

impl Visitor {
    pub async fn lock(&self) -> MutexGuard<'_, Visit> {
        self.visit.lock().await
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = StatusCode;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Visitor>()
            .cloned()
            .ok_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// Ends `visit`'s branch session in the background (a visit that was dropped).
fn end_later(visit: Arc<AsyncMutex<Visit>>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move { visit.lock().await.log_out().await });
    }
}

impl Visits {
    pub fn new(branch: &str, names: Names, wait_s: u64) -> Visits {
        Visits {
            slots: Mutex::default(),
            branch: branch.into(),
            names: Arc::new(names),
            wait_s,
        }
    }

    /// The live visit named by `id`, or a new one (true).
    fn find_or_create(&self, id: Option<&str>) -> (Visitor, bool) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = id {
            match slots.get_mut(id) {
                Some(s) if s.last_seen.elapsed() < VISIT_IDLE => {
                    s.last_seen = Instant::now();
                    let visit = s.visit.clone();
                    return (
                        Visitor {
                            id: id.to_owned(),
                            visit,
                        },
                        false,
                    );
                }
                Some(_) => {
                    if let Some(old) = slots.remove(id) {
                        end_later(old.visit);
                    }
                }
                None => {}
            }
        }
        make_room(&mut slots, false);
        let visit = Visit::new(self.branch.clone(), self.names.clone(), self.wait_s);
        let visitor = Visitor {
            id: token(),
            visit: Arc::new(AsyncMutex::new(visit)),
        };
        slots.insert(
            visitor.id.clone(),
            Slot {
                visit: visitor.visit.clone(),
                last_seen: Instant::now(),
                logged_in: false,
            },
        );
        (visitor, true)
    }

    /// After a login: gives `visitor`'s visit a new id and a new CSRF token, and
    /// counts it among the logged-in visits; returns the new id.
    pub fn rotate(&self, visitor: &Visitor, visit: &mut Visit) -> String {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.remove(&visitor.id);
        make_room(&mut slots, true);
        let id = token();
        slots.insert(
            id.clone(),
            Slot {
                visit: visitor.visit.clone(),
                last_seen: Instant::now(),
                logged_in: true,
            },
        );
        visit.csrf = token();
        id
    }

    /// After a logout: the visit counts among those without a login again.
    pub fn logged_out(&self, visitor: &Visitor) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get_mut(&visitor.id) {
            s.logged_in = false;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Sets the visit cookie: not readable by scripts, never sent by another site's page.
pub(crate) fn set_cookie(r: &mut Response, id: &str) {
    let value = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict");
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
}

/// Middleware: finds (or makes) the request's visit and hands it to the handler; a
/// new visit's cookie goes with the answer.
pub(crate) async fn attach(
    State(web): State<Arc<Web>>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with("/static/") {
        return next.run(request).await;
    }
    let (visitor, fresh) = web.visits.find_or_create(cookie(request.headers(), COOKIE));
    request.extensions_mut().insert(visitor.clone());
    let mut r = next.run(request).await;
    if fresh && !r.headers().contains_key(header::SET_COOKIE) {
        set_cookie(&mut r, &visitor.id);
    }
    r.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visits_are_bounded_and_a_known_cookie_finds_its_visit() {
        let visits = Visits::new("b1", Names::default(), 30);
        let (first, fresh) = visits.find_or_create(None);
        assert!(fresh);
        let (again, fresh) = visits.find_or_create(Some(&first.id));
        assert!(!fresh);
        assert!(Arc::ptr_eq(&first.visit, &again.visit));
        let (other, fresh) = visits.find_or_create(Some("not-a-visit"));
        assert!(
            fresh && other.id != "not-a-visit",
            "ids are never chosen by the browser"
        );
        for _ in 0..ANONYMOUS_VISITS_MAX + 10 {
            visits.find_or_create(None);
        }
        assert_eq!(visits.len(), ANONYMOUS_VISITS_MAX);
    }

    #[tokio::test]
    async fn anonymous_visits_never_evict_a_logged_in_one() {
        let visits = Visits::new("b1", Names::default(), 30);
        let (person, _) = visits.find_or_create(None);
        let id = {
            let mut v = person.lock().await;
            visits.rotate(&person, &mut v)
        };
        for _ in 0..ANONYMOUS_VISITS_MAX * 2 {
            visits.find_or_create(None);
        }
        let (again, fresh) = visits.find_or_create(Some(&id));
        assert!(!fresh && Arc::ptr_eq(&again.visit, &person.visit));
        assert_eq!(visits.len(), ANONYMOUS_VISITS_MAX + 1);
        // Logged-in visits have their own bound: the longest idle one goes.
        let mut ids = vec![id];
        for _ in 0..VISITS_MAX {
            let (next, _) = visits.find_or_create(None);
            let mut v = next.lock().await;
            ids.push(visits.rotate(&next, &mut v));
        }
        assert!(
            visits.find_or_create(Some(&ids[0])).1,
            "the oldest login went"
        );
        assert!(!visits.find_or_create(Some(&ids[VISITS_MAX])).1);
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; bankmate_visit=abc; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
