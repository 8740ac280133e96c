//! Any text as an email address, for registration and for a login lookup:
//! never a panic; an accepted address is its own canonical form and what the
//! lookup finds. The same properties src/domain/email.rs tests with proptest.
#![no_main]

use authd::domain::Email;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let lookup = Email::canonical_lookup(raw);
    if let Ok(email) = Email::parse(raw) {
        assert!(email.as_str().chars().count() <= 254);
        assert_eq!(Email::parse(email.as_str()).as_ref(), Ok(&email));
        assert_eq!(lookup.as_ref(), Some(&email));
    }
});
