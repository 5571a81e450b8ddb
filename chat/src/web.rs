//! The browser pages' static files: compiled into the binary (no build step, no CDN: they work
//! offline), or read from `--web-dir` on every request while working on them. The chat page's
//! files, and the operator's (`/pages.css`, `/logs.js`): those pages are drawn by the server
//! with no script or style inline, so a strict Content-Security-Policy holds for them too.

use std::path::PathBuf;

/// A static file: its path on the server, content type, and the copy compiled in.
struct Asset {
    path: &'static str,
    /// Part of the operator's pages (served wherever they are: the admin port included).
    operator: bool,
    file: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        operator: false,
        file: "chat.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../web/chat.html"),
    },
    Asset {
        path: "/chat.js",
        operator: false,
        file: "chat.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/chat.js"),
    },
    Asset {
        path: "/chat.css",
        operator: false,
        file: "chat.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/chat.css"),
    },
    Asset {
        path: "/pages.css",
        operator: true,
        file: "pages.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/pages.css"),
    },
    Asset {
        path: "/logs.js",
        operator: true,
        file: "logs.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/logs.js"),
    },
];

/// Where the pages come from.
#[derive(Debug, Clone, Default)]
pub struct Web {
    /// Read the files from here on each request instead of the copies compiled in.
    pub dir: Option<PathBuf>,
}

/// Whether `path` is one of the operator's pages' files (`/pages.css`, `/logs.js`).
pub fn is_operator_asset(path: &str) -> bool {
    ASSETS.iter().any(|a| a.operator && a.path == path)
}

impl Web {
    /// The content type and body of the static file at `path`, if there is one.
    pub fn asset(&self, path: &str) -> Option<(&'static str, String)> {
        let asset = ASSETS.iter().find(|a| a.path == path)?;
        let body = match &self.dir {
            Some(dir) => std::fs::read_to_string(dir.join(asset.file)).unwrap_or_else(|e| {
                tracing::warn!(error = %e, file = asset.file, "--web-dir: serving the compiled-in copy");
                asset.body.to_owned()
            }),
            None => asset.body.to_owned(),
        };
        Some((asset.content_type, body))
    }
}
