//! The browser client's files: the page at `/` and its modules and stylesheet under
//! `/static/`, all embedded in the binary by `lectern-web`. The page itself needs no token to
//! load; everything it shows comes over the authenticated transports.
//!
//! Caching: every file is also served under a fingerprinted name (`app.{hash}.js`, the hash
//! of its bytes) with `Cache-Control: public, max-age=31536000, immutable`, so browsers and
//! the CDN keep it until the node serves different bytes. Only the page at `/` is revalidated
//! (`no-cache`): it names the fingerprinted stylesheet and entry module, and carries an import
//! map sending every `/static/….js` import to its fingerprinted name, so the modules import
//! each other by their plain names and need no rewriting. The plain names still answer, with
//! `no-cache`, for anything that asks for them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::error::AppError;

/// The page (and a file asked for by its plain name) is revalidated on every load: a stale
/// client after a node upgrade would speak an old contract.
const CACHE_CONTROL: &str = "no-cache";

/// A fingerprinted file never changes under its name.
const CACHE_CONTROL_IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Hex digits of the SHA-256 kept in a fingerprinted name (64 bits: collisions between two
/// versions of one file are not a practical concern).
const FINGERPRINT_HEX_LEN: usize = 16;

/// The page with fingerprinted references, and the fingerprinted names, made once.
struct Fingerprinted {
    index_html: String,
    /// Fingerprinted path below `/static/` → the asset.
    assets: HashMap<String, lectern_web::Asset>,
}

static FILES: LazyLock<Fingerprinted> = LazyLock::new(fingerprint);

fn fingerprint() -> Fingerprinted {
    let mut assets = HashMap::new();
    let mut import_map = String::new();
    let mut html = lectern_web::INDEX_HTML.to_owned();
    for path in lectern_web::asset_paths() {
        // Invariant: asset_paths lists only embedded files.
        let asset = lectern_web::asset(path).expect("asset_paths names embedded files");
        let hashed = fingerprinted_name(path, asset.body);
        if path.ends_with(".js") {
            let sep = if import_map.is_empty() { "" } else { ",\n    " };
            let _ = write!(import_map, "{sep}\"/static/{path}\": \"/static/{hashed}\"");
        }
        for attr in ["href", "src"] {
            html = html.replace(
                &format!("{attr}=\"/static/{path}\""),
                &format!("{attr}=\"/static/{hashed}\""),
            );
        }
        assets.insert(hashed, asset);
    }
    let map = format!(
        "<script type=\"importmap\">\n{{\"imports\": {{\n    {import_map}\n}}}}\n</script>\n"
    );
    // The import map must come before the first module script.
    let at = html.find("<script type=\"module\"").unwrap_or(html.len());
    html.insert_str(at, &map);
    Fingerprinted {
        index_html: html,
        assets,
    }
}

/// `app.js` → `app.{hash}.js`; `vendor/x.min.js` → `vendor/x.min.{hash}.js`.
fn fingerprinted_name(path: &str, body: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(body);
    let mut hash = String::with_capacity(FINGERPRINT_HEX_LEN);
    for b in &digest[..FINGERPRINT_HEX_LEN / 2] {
        let _ = write!(hash, "{b:02x}");
    }
    let file_start = path.rfind('/').map_or(0, |i| i + 1);
    match path[file_start..].rfind('.') {
        Some(dot) => {
            let dot = file_start + dot;
            format!("{}.{hash}{}", &path[..dot], &path[dot..])
        }
        None => format!("{path}.{hash}"),
    }
}

/// `GET /`.
pub(crate) async fn index() -> Response {
    let mut r = Html(FILES.index_html.as_str()).into_response();
    set_common_headers(&mut r, CACHE_CONTROL);
    r
}

/// The `/static/…` routes (mounted next to the gateway's own, see `Gateway::new`).
pub(crate) fn routes() -> Router {
    Router::new().route("/static/{*path}", get(asset))
}

async fn asset(Path(path): Path<String>) -> Response {
    let (a, cache_control) = match FILES.assets.get(&path) {
        Some(a) => (*a, CACHE_CONTROL_IMMUTABLE),
        None => match lectern_web::asset(&path) {
            Some(a) => (a, CACHE_CONTROL),
            None => {
                return AppError::new(StatusCode::NOT_FOUND, "not_found", "no such file")
                    .into_response();
            }
        },
    };
    let mut r = a.body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    set_common_headers(&mut r, cache_control);
    r
}

fn set_common_headers(r: &mut Response, cache_control: &'static str) {
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The token travels in the page's query string: keep it out of Referer headers.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprinted_names_keep_the_extension_and_change_with_the_bytes() {
        let a = fingerprinted_name("app.js", b"one");
        let b = fingerprinted_name("app.js", b"two");
        assert!(a.starts_with("app.") && a.ends_with(".js"), "{a}");
        assert_eq!(a.len(), "app..js".len() + FINGERPRINT_HEX_LEN);
        assert_ne!(a, b);
        let v = fingerprinted_name("vendor/socket.io.esm.min.js", b"x");
        assert!(
            v.starts_with("vendor/socket.io.esm.min.") && v.ends_with(".js"),
            "{v}"
        );
    }

    /// The page names only fingerprinted files, and its import map covers every module, so no
    /// plain (revalidated) name is fetched by a browser that loads the page.
    #[test]
    fn the_page_references_only_fingerprinted_files() {
        let html = &FILES.index_html;
        for path in lectern_web::asset_paths() {
            assert!(
                !html.contains(&format!("\"/static/{path}\"")) || path.ends_with(".js"),
                "{path} is referenced by its plain name"
            );
        }
        let map_at = html.find("type=\"importmap\"").expect("an import map");
        let module_at = html.find("type=\"module\"").expect("a module script");
        assert!(map_at < module_at, "the import map comes first");
        for (hashed, _) in FILES.assets.iter().filter(|(p, _)| p.ends_with(".js")) {
            assert!(
                html.contains(&format!("\"/static/{hashed}\"")),
                "{hashed} is not mapped"
            );
        }
        assert!(html.contains("<link rel=\"stylesheet\" href=\"/static/style."));
    }
}
