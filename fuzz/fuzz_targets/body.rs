//! Any bytes as the JSON body of every route that reads one: accepted, or a
//! 4xx problem with a stable code, never a panic. The same parsing the
//! property tests in src/http/handlers.rs exercise
//! (`authd::http::parse_request_body`).
#![no_main]

use authd::http::parse_request_body;
use libfuzzer_sys::fuzz_target;

const ROUTES: [&str; 5] = ["/register", "/login", "/password", "/refresh", "/logout"];

fuzz_target!(|data: &[u8]| {
    for route in ROUTES {
        if let Err(e) = parse_request_body(route, data) {
            let (status, code, _) = e.parts();
            assert!(status.is_client_error(), "{route}: {status}");
            assert!(
                matches!(code, "malformed_json" | "validation_failed"),
                "{route}: {code}"
            );
        }
    }
});
