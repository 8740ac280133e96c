//! The refresh-token cookie: `HttpOnly`, `Path` = `BASE_PATH` (`/` for a
//! `__Host-` name), `Secure` and `SameSite` as configured, `Max-Age` = what
//! is left of the token's usable life. A removal carries the same attributes,
//! or a browser would ignore it for a `__Host-` cookie.

use axum_extra::extract::cookie::{Cookie, SameSite as CookieSameSite};

use crate::config::{CookieSettings, SameSite};

pub fn refresh_cookie(
    settings: &CookieSettings,
    value: String,
    max_age_secs: i64,
) -> Cookie<'static> {
    build(settings, value, time::Duration::seconds(max_age_secs))
}

pub fn removal_cookie(settings: &CookieSettings) -> Cookie<'static> {
    build(settings, String::new(), time::Duration::ZERO)
}

fn build(settings: &CookieSettings, value: String, max_age: time::Duration) -> Cookie<'static> {
    Cookie::build((settings.name.clone(), value))
        .http_only(true)
        .secure(settings.secure)
        .path(settings.path.clone())
        .same_site(match settings.same_site {
            SameSite::Strict => CookieSameSite::Strict,
            SameSite::Lax => CookieSameSite::Lax,
            SameSite::None => CookieSameSite::None,
        })
        .max_age(max_age)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CookieSettings {
        CookieSettings {
            name: "__Host-authd_rt".into(),
            secure: true,
            same_site: SameSite::Strict,
            path: "/".into(),
        }
    }

    #[test]
    fn attributes() {
        let c = refresh_cookie(&settings(), "tok".into(), 604800).to_string();
        for part in [
            "__Host-authd_rt=tok",
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=604800",
        ] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
        assert!(!c.contains("Domain"), "{c}");
    }

    #[test]
    fn the_path_is_the_base_path_except_for_a_host_cookie() {
        use crate::config::cookie_path;
        assert_eq!(cookie_path("__Host-authd_rt", "/auth/v1"), "/");
        assert_eq!(cookie_path("__Secure-authd_rt", "/auth/v1"), "/auth/v1");
        assert_eq!(cookie_path("authd_rt", "/"), "/");
        let c = refresh_cookie(
            &CookieSettings {
                name: "__Secure-authd_rt".into(),
                path: cookie_path("__Secure-authd_rt", "/auth/v1"),
                ..settings()
            },
            "tok".into(),
            60,
        )
        .to_string();
        assert!(c.contains("Path=/auth/v1"), "{c}");
    }

    #[test]
    fn removal_keeps_the_attributes() {
        let c = removal_cookie(&settings()).to_string();
        for part in ["__Host-authd_rt=", "Secure", "Path=/", "Max-Age=0"] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
    }
}
