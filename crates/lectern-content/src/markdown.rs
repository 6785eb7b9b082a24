//! Lesson Markdown to safe HTML, on the server.
//!
//! pulldown-cmark renders CommonMark (with tables and strikethrough); ammonia then keeps only
//! an allowlist of elements and attributes (no script, no event handler, no `javascript:` URL,
//! no style), plus `<audio>`, `<video>`, `<source>` and `<track>` so a lesson can embed its
//! recordings. Every relative URL (an image, a link to a PDF, a video's `src`) goes through
//! the caller's resolver, which names the stored blob (`/content/{sha256}.{ext}`); a relative
//! URL the resolver does not know is dropped, so a rendered lesson never points at a path that
//! does not exist on the node.

use std::borrow::Cow;
use std::collections::HashSet;

use pulldown_cmark::{Options, Parser, html};

/// Elements added to ammonia's default allowlist, with the attributes they may carry.
const MEDIA_TAGS: &[(&str, &[&str])] = &[
    ("audio", &["src", "controls", "preload"]),
    (
        "video",
        &["src", "controls", "preload", "poster", "width", "height"],
    ),
    ("source", &["src", "type"]),
    ("track", &["src", "kind", "srclang", "label", "default"]),
];

/// Attributes whose value is a URL that may be relative.
const URL_ATTRIBUTES: &[&str] = &["src", "href", "poster"];

/// Renders `markdown` to sanitized HTML. `resolve` maps a relative URL as the author wrote it
/// (`img/diagram.png`) to the URL to serve, or `None` to drop it.
pub fn render(
    markdown: &str,
    resolve: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> String {
    let mut options = Options::empty();
    options.insert(Options::ENABLE_TABLES);
    options.insert(Options::ENABLE_STRIKETHROUGH);
    let mut unsafe_html = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut unsafe_html, Parser::new_ext(markdown, options));

    clean(&unsafe_html, resolve)
}

/// Sanitizes HTML with the same allowlist as [`render`], dropping every relative URL: what a
/// node checks an uploaded lesson rendering against (HTML that is not already a fixpoint of
/// this function was not made by [`render`], or was edited after).
pub fn sanitize_html(html: &str) -> String {
    clean(html, |_| None)
}

fn clean(
    unsafe_html: &str,
    resolve: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> String {
    let mut builder = ammonia::Builder::default();
    builder.add_tags(MEDIA_TAGS.iter().map(|(t, _)| *t));
    for (tag, attrs) in MEDIA_TAGS {
        builder.add_tag_attributes(*tag, attrs.iter().copied());
    }
    builder.link_rel(Some("noopener noreferrer"));
    builder.attribute_filter(move |_element, attribute, value| {
        if !URL_ATTRIBUTES.contains(&attribute) || !is_relative(value) {
            return Some(Cow::Borrowed(value));
        }
        resolve(value).map(Cow::Owned)
    });
    builder.clean(unsafe_html).to_string()
}

/// The relative URLs a lesson references (images, links, media), as written: what a
/// publisher must find beside the lesson and store as blobs.
pub fn relative_urls(markdown: &str) -> Vec<String> {
    use std::sync::{Arc, Mutex};
    let found = Arc::new(Mutex::new((Vec::new(), HashSet::new())));
    let sink = Arc::clone(&found);
    render(markdown, move |url: &str| {
        // The sanitizer calls back on this thread only; the lock is never contended.
        let mut found = sink.lock().unwrap_or_else(|p| p.into_inner());
        let (list, seen) = &mut *found;
        if seen.insert(url.to_owned()) {
            list.push(url.to_owned());
        }
        None
    });
    let mut found = found.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut found.0)
}

/// Relative to the lesson: no scheme, not absolute, not a fragment or a query alone.
fn is_relative(url: &str) -> bool {
    let url = url.trim();
    if url.is_empty() || url.starts_with(['/', '#', '?']) {
        return false;
    }
    // A scheme is letters, digits, `+`, `-`, `.` before the first `:` (RFC 3986), and comes
    // before any `/`, `?` or `#`.
    match url.find([':', '/', '?', '#']) {
        Some(i) if url.as_bytes()[i] == b':' => !url[..i]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_lessons_are_a_fixpoint_of_the_sanitizer_and_raw_html_is_not() {
        let md = "# T\n\n![d](img/diagram.png) <video src=\"clip.webm\" controls></video>\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n[x](https://example.org)";
        let html = render(md, resolve);
        assert_eq!(sanitize_html(&html), html);
        let raw = "<p onclick=\"steal()\">hi</p><script>steal()</script>";
        assert_ne!(sanitize_html(raw), raw);
        assert!(!sanitize_html(raw).contains("script"));
    }

    fn resolve(url: &str) -> Option<String> {
        match url {
            "img/diagram.png" => Some("/content/aaaa.png".into()),
            "clip.webm" => Some("/content/bbbb.webm".into()),
            "notes.pdf" => Some("/content/cccc.pdf".into()),
            _ => None,
        }
    }

    #[test]
    fn markdown_renders_with_assets_pointing_at_their_blobs() {
        let html = render(
            "# Week 1\n\nSee ![the diagram](img/diagram.png) and [the notes](notes.pdf).\n\n\
             | a | b |\n|---|---|\n| 1 | 2 |\n\n<video src=\"clip.webm\" controls></video>\n",
            resolve,
        );
        assert!(html.contains("<h1>Week 1</h1>"), "{html}");
        assert!(html.contains("src=\"/content/aaaa.png\""), "{html}");
        assert!(html.contains("href=\"/content/cccc.pdf\""), "{html}");
        assert!(html.contains("<table>"), "{html}");
        assert!(
            html.contains("<video src=\"/content/bbbb.webm\" controls"),
            "{html}"
        );
    }

    #[test]
    fn scripts_handlers_and_dangerous_urls_are_removed() {
        let html = render(
            "<script>alert(1)</script>\n\n<img src=\"x.png\" onerror=\"alert(2)\">\n\n\
             [click](javascript:alert(3)) <a href=\"data:text/html,<script>\">d</a> \
             <iframe src=\"https://evil.example\"></iframe> <b style=\"color:red\">bold</b>",
            resolve,
        );
        for bad in [
            "<script",
            "alert(",
            "onerror",
            "javascript:",
            "data:",
            "<iframe",
            "style=",
        ] {
            assert!(!html.contains(bad), "{bad} survived: {html}");
        }
        assert!(html.contains("<b>bold</b>"), "{html}");
    }

    #[test]
    fn unknown_relative_urls_are_dropped_and_absolute_ones_kept() {
        let html = render(
            "![missing](nope.png) [web](https://example.edu/x) [top](#top) [abs](/api/courses)",
            resolve,
        );
        assert!(!html.contains("nope.png"), "{html}");
        assert!(html.contains("href=\"https://example.edu/x\""), "{html}");
        assert!(html.contains("rel=\"noopener noreferrer\""), "{html}");
        assert!(html.contains("href=\"#top\""), "{html}");
        assert!(html.contains("href=\"/api/courses\""), "{html}");
    }

    #[test]
    fn relative_urls_are_listed_once_in_order() {
        let urls = relative_urls(
            "![a](img/a.png) ![b](b.png) ![a again](img/a.png) [pdf](notes.pdf) [web](https://x.y)\n\n\
             <audio src=\"talk.ogg\" controls></audio>",
        );
        assert_eq!(urls, ["img/a.png", "b.png", "notes.pdf", "talk.ogg"]);
    }

    #[test]
    fn relative_detection() {
        for rel in [
            "a.png",
            "img/a.png",
            "./a.png",
            "../a.png",
            "a:b/c",
            "my file.png",
        ] {
            // "a:b/c" has a scheme-shaped prefix, so it is not relative.
            assert_eq!(is_relative(rel), rel != "a:b/c", "{rel}");
        }
        for abs in [
            "/x",
            "#f",
            "?q",
            "https://x",
            "mailto:a@b",
            "JavaScript:alert(1)",
            "",
        ] {
            assert!(!is_relative(abs), "{abs}");
        }
    }
}
