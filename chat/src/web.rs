//! The browser pages' static files: compiled into the binary (no build step, no CDN: they work
//! offline), or read from `--web-dir` on every request while working on them.

use std::path::PathBuf;

/// A static file: its path on the server, content type, and the copy compiled in.
struct Asset {
    path: &'static str,
    file: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        file: "chat.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../web/chat.html"),
    },
    Asset {
        path: "/chat.js",
        file: "chat.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/chat.js"),
    },
    Asset {
        path: "/chat.css",
        file: "chat.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/chat.css"),
    },
];

/// Where the pages come from.
#[derive(Debug, Clone, Default)]
pub struct Web {
    /// Read the files from here on each request instead of the copies compiled in.
    pub dir: Option<PathBuf>,
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
