//! Email addresses: one canonical form per mailbox (NFKC + full case folding),
//! and a registration policy that refuses addresses which could pass for
//! someone else's (look-alike scripts, quoted local parts, IP literals).

use std::fmt;

use caseless::Caseless;
use unicode_normalization::UnicodeNormalization;
use unicode_security::{
    GeneralSecurityProfile, RestrictionLevel, RestrictionLevelDetection, skeleton,
};

/// RFC 5321's limit on a forward path, in characters of the canonical form.
const MAX_CHARS: usize = 254;
/// Bound on the raw input before any Unicode work: 254 characters of at most
/// 4 bytes each. Anything longer can never fold to a storable address.
const MAX_RAW_BYTES: usize = MAX_CHARS * 4;
/// RFC 5321, 4.5.3.1.1 (octets).
const MAX_LOCAL_PART_BYTES: usize = 64;

/// A valid email address in canonical form, so that uniqueness holds across
/// case, width and compatibility variants: trimmed, NFKC-normalised and
/// case-folded (for ASCII: lower-cased), with an internationalised domain in
/// its ASCII (`xn--`) form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

/// Why an address was refused; each message names the rule (it becomes the
/// API's `validation_failed` detail).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmailError {
    #[error("email must not be empty")]
    Empty,
    #[error("email must be at most {MAX_CHARS} characters")]
    TooLong,
    #[error("email must not contain control characters")]
    ControlCharacter,
    #[error("email is not a valid address: {0}")]
    Invalid(&'static str),
    #[error("email local part must not be quoted")]
    QuotedLocalPart,
    #[error("email domain must be a domain name, not an IP address")]
    IpLiteral,
    #[error("email domain must contain a dot (like example.com)")]
    DomainWithoutDot,
    #[error("email domain is not a valid domain name")]
    InvalidDomain,
    #[error("email contains a character that is not allowed in addresses (U+{0:04X})")]
    DisallowedCharacter(u32),
    #[error("email mixes characters from different scripts")]
    MixedScript,
    #[error("email uses look-alike characters that imitate a plain ASCII address")]
    Confusable,
}

impl Email {
    /// A new address (registration): canonical form, then the policy.
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let canonical = canonical(raw)?;
        let (local, domain) = canonical
            .rsplit_once('@')
            .ok_or(EmailError::Invalid("it has no @"))?;
        check_local_part(local)?;
        check_domain(domain)?;
        // The grammar of RFC 5322 as a last word, with everything above already
        // narrower than it; refusing here means a rule above has a gap.
        let options = email_address::Options::default()
            .without_domain_literal()
            .without_display_text()
            .with_required_tld();
        email_address::EmailAddress::parse_with_options(&canonical, options)
            .map_err(|_| EmailError::Invalid("it does not follow RFC 5322"))?;
        Ok(Self(canonical))
    }

    /// The canonical form for a login lookup, without the registration policy
    /// (so addresses stored under older rules still match). `None` when the
    /// input can never be a stored address — empty, over-long, or holding a
    /// control character such as NUL, which the database would refuse — and
    /// the caller treats that exactly like an unknown email.
    pub fn canonical_lookup(raw: &str) -> Option<Self> {
        canonical(raw).ok().map(Self)
    }

    /// Rebuild from a value the store holds (already canonical).
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// NFKC, full case folding (CaseFolding.txt C + F), NFKC again (folding can
/// leave a string unnormalised), trimmed, and a non-ASCII domain in its
/// A-label form. On ASCII this is exactly trim + lower-case, the form every existing
/// row was stored in.
fn canonical(raw: &str) -> Result<String, EmailError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(EmailError::Empty);
    }
    if trimmed.len() > MAX_RAW_BYTES {
        return Err(EmailError::TooLong);
    }
    if trimmed.chars().any(char::is_control) {
        return Err(EmailError::ControlCharacter);
    }
    let folded: String = trimmed.chars().nfkc().default_case_fold().nfkc().collect();
    // Compatibility forms can decompose to a space (U+00A8 → " \u{308}").
    let mut folded = folded.trim().to_owned();
    if folded.is_empty() {
        return Err(EmailError::Empty);
    }
    if let Some((local, domain)) = folded.rsplit_once('@')
        && !domain.is_ascii()
        && let Ok(ascii) = idna::domain_to_ascii_strict(domain)
    {
        folded = format!("{local}@{ascii}");
    }
    if folded.chars().count() > MAX_CHARS {
        return Err(EmailError::TooLong);
    }
    Ok(folded)
}

/// RFC 5322 atext besides letters and digits.
const ATEXT_SYMBOLS: &str = "!#$%&'*+-/=?^_`{|}~";

fn check_local_part(local: &str) -> Result<(), EmailError> {
    if local.is_empty() {
        return Err(EmailError::Invalid("the part before @ is empty"));
    }
    if local.starts_with('"') {
        return Err(EmailError::QuotedLocalPart);
    }
    if local.len() > MAX_LOCAL_PART_BYTES {
        return Err(EmailError::Invalid(
            "the part before @ is longer than 64 bytes",
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(EmailError::Invalid(
            "dots in the part before @ must separate words",
        ));
    }
    for c in local.chars() {
        let ok = if c.is_ascii() {
            c.is_ascii_alphanumeric() || c == '.' || ATEXT_SYMBOLS.contains(c)
        } else {
            true // judged by `check_unicode`
        };
        if !ok {
            return Err(EmailError::Invalid(
                "the part before @ has a character outside RFC 5322 atext",
            ));
        }
    }
    check_unicode(local)
}

fn check_domain(domain: &str) -> Result<(), EmailError> {
    if domain.is_empty() {
        return Err(EmailError::Invalid("the domain is empty"));
    }
    if domain.starts_with('[') {
        return Err(EmailError::IpLiteral);
    }
    if !domain.is_ascii() {
        // `canonical` already converted every valid internationalised domain.
        return Err(EmailError::InvalidDomain);
    }
    if !domain.contains('.') {
        return Err(EmailError::DomainWithoutDot);
    }
    // No top-level domain is numeric: this is a dotted IPv4 address.
    if domain
        .rsplit('.')
        .next()
        .is_some_and(|tld| !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(EmailError::IpLiteral);
    }
    // Strict UTS #46: letters, digits and hyphens only, label and name
    // lengths, hyphen placement, and well-formed `xn--` labels.
    if idna::domain_to_ascii_strict(domain).ok().as_deref() != Some(domain) {
        return Err(EmailError::InvalidDomain);
    }
    // An `xn--` label is displayed decoded by mail clients and browsers, so its
    // Unicode form must pass the same look-alike rules as a local part.
    let (unicode, decoded) = idna::domain_to_unicode(domain);
    if decoded.is_err() {
        return Err(EmailError::InvalidDomain);
    }
    unicode.split('.').try_for_each(check_unicode)
}

/// UTS #39 for a part that is not plain ASCII: every character has Identifier
/// Status "Allowed" (no invisible, symbol or obsolete characters), the scripts
/// form at most a "highly restrictive" set (one script, or Latin with
/// Han/Kana/Hangul as CJK writing uses), and the confusable skeleton is not
/// plain ASCII — a part that merely looks like an ASCII address (Cyrillic
/// "аррӏе", dotless "alıce") is refused, not folded onto it.
fn check_unicode(part: &str) -> Result<(), EmailError> {
    if part.is_ascii() {
        return Ok(());
    }
    if let Some(c) = part
        .chars()
        .find(|c| !c.is_ascii() && !c.identifier_allowed())
    {
        return Err(EmailError::DisallowedCharacter(u32::from(c)));
    }
    // ASCII symbols (`+`, `.`, `-`) are not identifier characters; they carry
    // no script and would otherwise make every part "unrestricted".
    let letters: String = part
        .chars()
        .filter(|c| !c.is_ascii() || c.is_ascii_alphanumeric())
        .collect();
    if !letters
        .as_str()
        .check_restriction_level(RestrictionLevel::HighlyRestrictive)
    {
        return Err(EmailError::MixedScript);
    }
    if skeleton(part).all(|c| c.is_ascii()) {
        return Err(EmailError::Confusable);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> String {
        Email::parse(raw)
            .unwrap_or_else(|e| panic!("{raw:?} should parse: {e}"))
            .0
    }

    #[test]
    fn plain_ascii_is_trimmed_and_lower_cased_as_before() {
        assert_eq!(parsed("  Ada@Example.COM "), "ada@example.com");
        assert_eq!(
            parsed("a.b+tag@sub.example.co.uk"),
            "a.b+tag@sub.example.co.uk"
        );
        assert_eq!(parsed("o'hara_x-y@example.org"), "o'hara_x-y@example.org");
        assert_eq!(Email::parse("   "), Err(EmailError::Empty));
        assert!(matches!(
            Email::parse("no-at-sign"),
            Err(EmailError::Invalid(_))
        ));
        assert!(matches!(
            Email::parse("a@b@c.com"),
            Err(EmailError::Invalid(_))
        ));
        assert!(matches!(
            Email::parse("a..b@example.com"),
            Err(EmailError::Invalid(_))
        ));
        assert!(matches!(
            Email::parse("a b@example.com"),
            Err(EmailError::Invalid(_))
        ));
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&long), Err(EmailError::TooLong));
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(matches!(
            Email::parse(&long_local),
            Err(EmailError::Invalid(_))
        ));
    }

    /// Every row stored before this policy was `trim().to_lowercase()` of an
    /// ASCII address; the new canonical form must leave all of them unchanged.
    #[test]
    fn canonical_form_of_ascii_is_lower_case() {
        for b in 0x20u8..0x7f {
            let s = format!("x{}y@example.com", b as char);
            assert_eq!(canonical(&s).unwrap(), s.to_lowercase(), "{s:?}");
        }
    }

    #[test]
    fn canonical_form_is_idempotent_for_every_assigned_plane() {
        // Planes 4-13 are unassigned and 15-16 private use (no decomposition,
        // no case); skipping them keeps this test at a few seconds.
        let planes = (0..=0x3FFFFu32).chain(0xE0000..=0xEFFFF);
        for c in planes.filter_map(char::from_u32) {
            // Controls and spaces alone are refused; everything else folds.
            let Ok(once) = canonical(&c.to_string()) else {
                continue;
            };
            assert_eq!(
                canonical(&once).as_deref(),
                Ok(once.as_str()),
                "U+{:04X}",
                u32::from(c)
            );
        }
    }

    #[test]
    fn fullwidth_and_compatibility_forms_fold_onto_ascii() {
        assert_eq!(parsed("ａlice@example.com"), "alice@example.com");
        assert_eq!(
            parsed("ＡＬＩＣＥ@ｅｘａｍｐｌｅ．ｃｏｍ"),
            "alice@example.com"
        );
        // Full case folding, not `to_lowercase`: ß folds to ss, ﬁ to fi.
        assert_eq!(parsed("STRAẞE@example.com"), "strasse@example.com");
        assert_eq!(parsed("ﬁle@example.com"), "file@example.com");
    }

    #[test]
    fn look_alikes_of_an_ascii_address_are_refused() {
        // Cyrillic а among Latin letters.
        assert_eq!(
            Email::parse("аlice@example.com"),
            Err(EmailError::MixedScript)
        );
        // Latin dotless ı: one script, but its skeleton is "alice".
        assert_eq!(
            Email::parse("alıce@example.com"),
            Err(EmailError::Confusable)
        );
        // All-Cyrillic "аррӏе": one script, a whole-script look-alike.
        assert_eq!(
            Email::parse("аррӏе@example.com"),
            Err(EmailError::Confusable)
        );
        assert_eq!(
            Email::parse("alice@exаmple.com"),
            Err(EmailError::MixedScript)
        );
        assert_eq!(
            Email::parse("alice@xn--exmple-4nf.com"),
            Err(EmailError::MixedScript),
            "the A-label of exаmple.com"
        );
        assert_eq!(
            Email::parse("alice@xn--80ak6aa92e.com"),
            Err(EmailError::Confusable),
            "the A-label of аррӏе.com"
        );
    }

    #[test]
    fn invisible_and_symbol_characters_are_refused() {
        assert_eq!(
            Email::parse("al\u{200B}ice@example.com"),
            Err(EmailError::DisallowedCharacter(0x200B))
        );
        assert_eq!(
            Email::parse("al\u{AD}ice@example.com"),
            Err(EmailError::DisallowedCharacter(0xAD))
        );
        assert_eq!(
            Email::parse("alice@xn--ls8h.la"),
            Err(EmailError::DisallowedCharacter(0x1F4A9)),
            "an emoji domain"
        );
    }

    #[test]
    fn single_script_international_addresses_are_accepted() {
        assert_eq!(parsed("José@example.com"), "josé@example.com");
        assert_eq!(parsed("Müller@Example.com"), "müller@example.com");
        assert_eq!(parsed("иван@example.com"), "иван@example.com");
        assert_eq!(parsed("田中taro@example.jp"), "田中taro@example.jp");
        // A Unicode domain is stored (and looked up) in its A-label form.
        assert_eq!(parsed("ada@Bücher.de"), "ada@xn--bcher-kva.de");
        assert_eq!(parsed("ada@xn--bcher-kva.de"), "ada@xn--bcher-kva.de");
        assert_eq!(
            Email::canonical_lookup("ADA@BÜCHER.DE").unwrap().as_str(),
            "ada@xn--bcher-kva.de"
        );
        assert_eq!(
            Email::parse("ivan+иван@example.com"),
            Err(EmailError::MixedScript)
        );
    }

    #[test]
    fn quoted_local_parts_ip_literals_and_dotless_domains_are_refused() {
        assert_eq!(
            Email::parse("\"al ice\"@example.com"),
            Err(EmailError::QuotedLocalPart)
        );
        assert_eq!(
            Email::parse("\"al@ice\"@example.com"),
            Err(EmailError::QuotedLocalPart)
        );
        assert_eq!(
            Email::parse("alice@[127.0.0.1]"),
            Err(EmailError::IpLiteral)
        );
        assert_eq!(Email::parse("alice@[IPv6:::1]"), Err(EmailError::IpLiteral));
        assert_eq!(Email::parse("alice@127.0.0.1"), Err(EmailError::IpLiteral));
        assert_eq!(
            Email::parse("alice@localhost"),
            Err(EmailError::DomainWithoutDot)
        );
        assert_eq!(
            Email::parse("alice@-example.com"),
            Err(EmailError::InvalidDomain)
        );
        assert_eq!(
            Email::parse("alice@exa_mple.com"),
            Err(EmailError::InvalidDomain)
        );
    }

    #[test]
    fn control_characters_are_refused_and_never_looked_up() {
        for raw in [
            "alice@example.com\u{0}",
            "al\u{0}ice@example.com",
            "alice\u{7}@example.com",
            "alice@example.com\u{85}x",
        ] {
            assert_eq!(
                Email::parse(raw),
                Err(EmailError::ControlCharacter),
                "{raw:?}"
            );
            assert_eq!(Email::canonical_lookup(raw), None, "{raw:?}");
        }
        assert_eq!(Email::canonical_lookup(""), None);
        assert_eq!(Email::canonical_lookup(&"a".repeat(255)), None);
        assert_eq!(Email::canonical_lookup(&"ａ".repeat(300)), None);
    }

    #[test]
    fn lookup_finds_what_registration_stored() {
        for raw in [
            "Ada@Example.COM",
            "ａlice@example.com",
            "ＡＬＩＣＥ@example.com",
            "Müller@Bücher.de",
            "x+y@example.org",
        ] {
            assert_eq!(
                Email::canonical_lookup(raw),
                Some(Email::parse(raw).unwrap()),
                "{raw:?}"
            );
        }
        // Looked up as typed (folded), refused for registration: an address
        // stored under the old rules still logs in.
        assert_eq!(
            Email::canonical_lookup(" Bob@LocalHost ").unwrap().as_str(),
            "bob@localhost"
        );
    }

    #[test]
    fn every_refusal_names_its_rule() {
        let cases = [
            ("\"q\"@example.com", "quoted"),
            ("a@[127.0.0.1]", "IP address"),
            ("a@localhost", "dot"),
            ("аlice@example.com", "scripts"),
            ("alıce@example.com", "look-alike"),
            ("a\u{0}@example.com", "control"),
            ("a\u{200B}b@example.com", "U+200B"),
        ];
        for (raw, rule) in cases {
            let message = Email::parse(raw).unwrap_err().to_string();
            assert!(message.contains(rule), "{raw:?}: {message}");
        }
    }

    use proptest::prelude::*;

    /// Addresses and near-addresses: ASCII atext, any Unicode, look-alikes,
    /// padding, dots and hyphens where they may or may not go.
    fn addressish() -> impl Strategy<Value = String> {
        let local = prop_oneof![
            "[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]{0,70}",
            "\\PC{1,24}",
            "[a-zа-яα-ωß0-9.]{1,20}",
        ];
        let domain = prop_oneof![
            "([a-zA-Z0-9-]{1,20}\\.){0,3}[a-zA-Z]{2,6}",
            "([a-zа-яα-ω0-9-]{1,12}\\.){1,2}[a-zа-я]{2,6}",
            "xn--[a-z0-9-]{1,20}\\.[a-z]{2,4}",
            "\\[[0-9.:]{1,20}\\]",
            "\\PC{1,24}",
        ];
        (" {0,2}", local, "@{1,2}", domain, " {0,2}")
            .prop_map(|(a, l, at, d, b)| format!("{a}{l}{at}{d}{b}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Never a panic. An accepted address is its own canonical form (a
        /// login typed as stored finds it), at most 254 characters, without
        /// controls, and what a login lookup of the raw input finds.
        #[test]
        fn accepted_addresses_are_canonical_and_found_by_lookup(
            raw in prop_oneof![addressish(), any::<String>(), "\\PC{0,1100}"],
        ) {
            match Email::parse(&raw) {
                Ok(email) => {
                    let canonical = email.as_str();
                    prop_assert!(canonical.chars().count() <= MAX_CHARS);
                    prop_assert!(!canonical.chars().any(char::is_control));
                    prop_assert_eq!(Email::parse(canonical), Ok(email.clone()));
                    prop_assert_eq!(Email::canonical_lookup(&raw), Some(email.clone()));
                    prop_assert_eq!(Email::canonical_lookup(canonical), Some(email.clone()));
                }
                Err(e) => {
                    // The refusal names a rule; it never repeats the input.
                    let message = e.to_string();
                    prop_assert!(message.starts_with("email "), "{}", message);
                    if raw.trim().chars().count() >= 12 {
                        prop_assert!(!message.contains(raw.trim()), "{}", message);
                    }
                }
            }
            // A lookup never panics either, and finds only a storable form.
            if let Some(found) = Email::canonical_lookup(&raw) {
                prop_assert!(found.as_str().chars().count() <= MAX_CHARS);
                prop_assert!(!found.as_str().chars().any(char::is_control));
            }
        }
    }
}
