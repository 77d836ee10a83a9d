//! Helpers shared by more than one test binary: reading a node's metrics endpoint.
// Each test binary that includes this module uses only some of its helpers.
#![allow(dead_code)]

/// The status and body of a GET of `url`.
pub async fn fetch(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("the endpoint answers");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

/// The value of the sample named `series` (name and labels exactly as exposed), or 0.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}
