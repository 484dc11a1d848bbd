//! The web client: one page (`web/index.html`, plain HTML, CSS and JavaScript) built into
//! the binary at compile time, so there is no build step and nothing to deploy beside it.
//!
//! The page talks to the WebSocket listener, which has a port of its own; the server fills
//! that port in when it starts (the page's `__WS_PORT__` placeholder).

/// The page as written, with the placeholder still in it.
const TEMPLATE: &str = include_str!("../web/index.html");

/// The page for a server whose WebSocket listener is on `ws_port`.
pub fn page(ws_port: u16) -> String {
    TEMPLATE.replace("__WS_PORT__", &ws_port.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_port_is_filled_in() {
        let page = super::page(9999);
        assert!(!page.contains("__WS_PORT__"));
        assert!(page.contains("9999"));
    }
}
