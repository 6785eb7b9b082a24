//! Lectern's browser client: one page with three views (student, instructor, projector) as
//! plain ES modules, embedded in the binary at compile time so that a node serves its own
//! client and starts without Node.js or a bundler.
//!
//! The gateway serves [`INDEX_HTML`] at `/` and every [`asset`] under `/static/`. The client
//! speaks the public contract only (ARCHITECTURE.md, "Client contract"): Socket.IO over
//! WebSocket, falling back to SSE + POST, then to long-polling; an offline queue of commands
//! with client-chosen ids. `static/vendor/socket.io.esm.min.js` is the official
//! `socket.io-client` browser bundle (MIT), copied from the npm package pinned in
//! `tests/js/package-lock.json` (only its source-map comment removed).

/// The page every view starts from (`GET /`).
pub const INDEX_HTML: &str = include_str!("../static/index.html");

/// A static file: its media type and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// The `Content-Type` to serve it with.
    pub content_type: &'static str,
    /// The file.
    pub body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Every file under `/static/`, by its path below it.
const ASSETS: &[(&str, Asset)] = &[
    (
        "app.js",
        Asset {
            content_type: JS,
            body: include_bytes!("../static/app.js"),
        },
    ),
    (
        "conn.js",
        Asset {
            content_type: JS,
            body: include_bytes!("../static/conn.js"),
        },
    ),
    (
        "model.js",
        Asset {
            content_type: JS,
            body: include_bytes!("../static/model.js"),
        },
    ),
    (
        "style.css",
        Asset {
            content_type: CSS,
            body: include_bytes!("../static/style.css"),
        },
    ),
    (
        "vendor/socket.io.esm.min.js",
        Asset {
            content_type: JS,
            body: include_bytes!("../static/vendor/socket.io.esm.min.js"),
        },
    ),
    (
        "vendor/socket.io-client.LICENSE",
        Asset {
            content_type: TEXT,
            body: include_bytes!("../static/vendor/socket.io-client.LICENSE"),
        },
    ),
];

/// The static file at `path` (below `/static/`), if there is one. Only the fixed names above
/// match: no path is ever joined onto a directory, so `..` cannot reach anything else.
pub fn asset(path: &str) -> Option<Asset> {
    ASSETS.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

/// The paths of every static file, for tests and listings.
pub fn asset_paths() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|(p, _)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `/static/…` file the page and the modules import exists.
    #[test]
    fn every_referenced_file_is_embedded() {
        let mut sources = vec![INDEX_HTML.to_owned()];
        for p in asset_paths().filter(|p| p.ends_with(".js") && !p.starts_with("vendor/")) {
            sources.push(String::from_utf8_lossy(asset(p).expect("listed").body).into_owned());
        }
        let mut seen = 0;
        for src in &sources {
            for (i, _) in src.match_indices("/static/") {
                let rest = &src[i + "/static/".len()..];
                let end = rest.find(['"', '\'', '`', ')']).unwrap_or(rest.len());
                let path = &rest[..end];
                assert!(asset(path).is_some(), "/static/{path} is not embedded");
                seen += 1;
            }
        }
        assert!(seen >= 3, "the page references its modules and stylesheet");
    }

    #[test]
    fn unknown_and_traversing_paths_are_not_found() {
        assert_eq!(asset("../Cargo.toml"), None);
        assert_eq!(asset("vendor/../app.js"), None);
        assert_eq!(asset(""), None);
        assert!(asset("app.js").is_some_and(|a| a.content_type.starts_with("text/javascript")));
    }
}
